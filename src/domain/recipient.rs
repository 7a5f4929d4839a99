//! The person a message is for, as a claim read them: every field parsed once, by
//! the claim's row mapper (`store::targets::claims`), and carried as is to the
//! channel (`engine::ports::Outgoing`, `notify::Message`).

use std::fmt;

use chrono_tz::Tz;

use super::ids::{EmailAddress, Region, UserId, VerificationState};
use super::locale::Locale;

/// A user's time zone as stored: an IANA zone, or a text that names none. The text
/// is kept, not dropped: a send window and a message's dates are read in the
/// campaign's zone instead, and a run counts each such fallback
/// (`reverify_timezone_fallbacks_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeZone {
    /// A zone chrono-tz knows (`Europe/London`).
    Iana(Tz),
    /// A text that is no IANA zone (`Mars/Olympus`, blank), as stored.
    Unknown(String),
}

impl TimeZone {
    /// Reads a stored zone (white space around it ignored). Never fails: a text
    /// that names no zone is [`TimeZone::Unknown`].
    pub fn parse(s: &str) -> Self {
        s.trim().parse::<Tz>().map_or_else(|_| Self::Unknown(s.to_owned()), Self::Iana)
    }

    /// The zone, when it is one.
    pub fn tz(&self) -> Option<Tz> {
        match self {
            Self::Iana(tz) => Some(*tz),
            Self::Unknown(_) => None,
        }
    }

    /// The text: the IANA name, or the unknown text as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Iana(tz) => tz.name(),
            Self::Unknown(s) => s,
        }
    }
}

impl From<&str> for TimeZone {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<String> for TimeZone {
    fn from(s: String) -> Self {
        Self::parse(&s)
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a message is for: the user's id, address, names, locale, zone, region and
/// verification state, each in its domain type.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// A BCP 47 tag such as `en-GB`, passed to templates and webhooks as stored.
    pub locale: Option<Locale>,
    /// An IANA zone such as `Europe/London`; a missing or unknown one is read as the
    /// campaign's zone (UTC when that is unknown too).
    pub time_zone: Option<TimeZone>,
    pub region: Region,
    pub verification_state: VerificationState,
}

impl Recipient {
    /// The locale tag, as stored.
    pub fn locale_tag(&self) -> Option<&str> {
        self.locale.as_ref().map(Locale::as_str)
    }

    /// The user's zone when it is a known one.
    pub fn zone(&self) -> Option<Tz> {
        self.time_zone.as_ref().and_then(TimeZone::tz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_known_and_unknown() {
        assert_eq!(TimeZone::parse(" Europe/Berlin "), TimeZone::Iana(Tz::Europe__Berlin));
        assert_eq!(TimeZone::parse("Mars/Olympus"), TimeZone::Unknown("Mars/Olympus".into()));
        assert_eq!(TimeZone::parse("Mars/Olympus").as_str(), "Mars/Olympus");
        assert_eq!(TimeZone::parse("").tz(), None);
    }
}
