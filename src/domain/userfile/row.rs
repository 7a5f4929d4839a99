//! One row: its fields, parsed and checked into a [`UserRow`], or every problem
//! with it, each naming its column. Reasons never quote a refresh token.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use zeroize::Zeroizing;

use super::{Column, Fields};
use crate::domain::spec::is_tag;
use crate::domain::{EmailAddress, IdError, Region, UserId, VerificationState};

/// Whether a file may leave out `region` and `verification_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Both are required, as columns and in every row (the directory import).
    Refused,
    /// Left out (no column, or an empty field), they are `intl` and `UNVERIFIED`
    /// (the sandbox's seed files).
    Defaulted,
}

impl Missing {
    /// Whether a file must have column `c`.
    pub fn requires(self, c: Column) -> bool {
        match c {
            Column::UserId | Column::Email => true,
            Column::Region | Column::VerificationState => self == Missing::Refused,
            _ => false,
        }
    }
}

/// A valid row. `Debug` hides the refresh token.
#[derive(Clone)]
pub struct UserRow {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// A BCP 47 tag such as `en-GB`, normalised (`en_gb` is `en-GB`).
    pub locale: Option<String>,
    /// An IANA time zone such as `Europe/London`.
    pub timezone: Option<String>,
    pub region: Region,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub verification_state: VerificationState,
    pub rejected_at: Option<DateTime<Utc>>,
    pub signed_up_at: Option<DateTime<Utc>>,
    /// Without repeats.
    pub tags: Vec<String>,
    /// The user's current Baanx refresh token, when known.
    pub refresh_token: Option<Zeroizing<String>>,
    /// When the directory knew the state to be true.
    pub state_as_of: Option<DateTime<Utc>>,
    /// A valid access token and when it expires (both or neither).
    pub access_token: Option<(Zeroizing<String>, DateTime<Utc>)>,
}

impl fmt::Debug for UserRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRow")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("region", &self.region)
            .field("verification_state", &self.verification_state)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("state_as_of", &self.state_as_of)
            .field("access_token", &self.access_token.as_ref().map(|(_, exp)| ("[REDACTED]", exp)))
            .finish_non_exhaustive()
    }
}

/// Everything wrong with a row, in column order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblems(pub Vec<(Column, String)>);

impl RowProblems {
    /// The first problem: its column and what is wrong.
    pub fn first(&self) -> (Column, &str) {
        self.0.first().map_or((Column::UserId, "not valid"), |(c, why)| (*c, why.as_str()))
    }
}

/// `column: why` for each problem, `; `-separated.
impl fmt::Display for RowProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (c, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {why}", c.name())?;
        }
        Ok(())
    }
}

const MAX_NAME_CHARS: usize = 200;
const MAX_TOKEN_LEN: usize = 4096;
const MAX_QUOTED: usize = 80;

/// `value` in quotes for a message, cut short when long.
fn quoted(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_QUOTED).collect();
        format!("{head:?}… ({} characters)", value.chars().count())
    }
}

fn field(fields: &Fields, c: Column) -> Option<&str> {
    fields[c as usize].as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Parses one row, or says everything that is wrong with it. `missing` says
/// whether `region` and `verification_state` may be left out.
///
/// # Errors
/// [`RowProblems`], each naming its column.
pub fn parse_fields(fields: &Fields, missing: Missing) -> Result<UserRow, RowProblems> {
    let mut errors: Vec<(Column, String)> = Vec::new();
    let mut err = |c: Column, why: String| errors.push((c, why));

    let user_id = match field(fields, Column::UserId) {
        None => {
            err(Column::UserId, "missing".into());
            None
        }
        Some(v) => UserId::parse(v).map_err(|_| err(Column::UserId, format!("{} is not a UUID", quoted(v)))).ok(),
    };
    let email = match field(fields, Column::Email) {
        None => {
            err(Column::Email, "missing".into());
            None
        }
        Some(v) => EmailAddress::parse(v)
            .map_err(|e| {
                let why = match e {
                    IdError::Email(_, why) => why,
                    _ => "not valid",
                };
                err(Column::Email, format!("{} is not an email address: {why}", quoted(v)));
            })
            .ok(),
    };
    let region = match field(fields, Column::Region) {
        None if missing == Missing::Defaulted => Some(Region::Intl),
        None => {
            err(Column::Region, "missing (intl or us)".into());
            None
        }
        Some(v) => {
            v.parse::<Region>().map_err(|_| err(Column::Region, format!("{} is not one of intl, us", quoted(v)))).ok()
        }
    };
    let state = match field(fields, Column::VerificationState) {
        None if missing == Missing::Defaulted => Some(VerificationState::Unverified),
        None => {
            err(Column::VerificationState, "missing".into());
            None
        }
        Some(v) => v
            .parse::<VerificationState>()
            .map_err(|_| {
                err(
                    Column::VerificationState,
                    format!("{} is not one of UNVERIFIED, PENDING, VERIFIED, REJECTED", quoted(v)),
                )
            })
            .ok(),
    };
    let mut name = |c: Column| -> Option<String> {
        let v = field(fields, c)?;
        if v.chars().count() > MAX_NAME_CHARS {
            err(c, format!("longer than {MAX_NAME_CHARS} characters"));
            None
        } else if v.chars().any(char::is_control) {
            err(c, format!("{} contains a control character", quoted(v)));
            None
        } else {
            // Stored as plain text, formula-looking or not: nothing here evaluates it,
            // and CSV output neutralises it (see `spreadsheet_safe`).
            Some(v.to_owned())
        }
    };
    let first_name = name(Column::FirstName);
    let last_name = name(Column::LastName);
    let locale = field(fields, Column::Locale).and_then(|v| {
        parse_locale(v).ok_or_else(|| err(Column::Locale, format!("{} is not a locale like en-GB", quoted(v)))).ok()
    });
    let timezone = field(fields, Column::Timezone).and_then(|v| {
        v.parse::<Tz>()
            .map(|tz| tz.name().to_owned())
            .map_err(|_| err(Column::Timezone, format!("{} is not an IANA time zone like Europe/London", quoted(v))))
            .ok()
    });
    let country = field(fields, Column::Country).and_then(|v| {
        if v.len() == 2 && v.chars().all(|c| c.is_ascii_alphabetic()) {
            Some(v.to_ascii_uppercase())
        } else {
            err(Column::Country, format!("{} is not an ISO 3166-1 alpha-2 code like GB", quoted(v)));
            None
        }
    });
    let mut time = |c: Column| -> Option<DateTime<Utc>> {
        let v = field(fields, c)?;
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| err(c, format!("{} is not an RFC 3339 time like 2026-01-31T09:00:00Z", quoted(v))))
            .ok()
    };
    let rejected_at = time(Column::RejectedAt);
    let signed_up_at = time(Column::SignedUpAt);
    let state_as_of = time(Column::StateAsOf);
    let access_expires_at = time(Column::AccessTokenExpiresAt);
    let mut tags: Vec<String> = Vec::new();
    for t in field(fields, Column::Tags).unwrap_or("").split(';').map(str::trim).filter(|t| !t.is_empty()) {
        if !is_tag(t) {
            err(Column::Tags, format!("{} is not a tag: use 1-64 of A-Z a-z 0-9 . _ : -", quoted(t)));
        } else if !tags.iter().any(|x| x == t) {
            tags.push(t.to_owned());
        }
    }
    let mut token = |c: Column| {
        field(fields, c).and_then(|v| {
            // Never quote a token in a message, not even a malformed one.
            if v.len() > MAX_TOKEN_LEN {
                err(c, format!("longer than {MAX_TOKEN_LEN} bytes"));
                None
            } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
                err(c, "contains a character a token cannot have (space, control or non-ASCII)".into());
                None
            } else {
                Some(Zeroizing::new(v.to_owned()))
            }
        })
    };
    let refresh_token = token(Column::RefreshToken);
    let access = token(Column::AccessToken);
    let access_token = match (access, access_expires_at) {
        (Some(t), Some(exp)) => Some((t, exp)),
        (None, None) => None,
        (Some(_), None) if field(fields, Column::AccessTokenExpiresAt).is_none() => {
            err(Column::AccessToken, "has no access_token_expires_at: an access token needs its expiry".into());
            None
        }
        (None, Some(_)) if field(fields, Column::AccessToken).is_none() => {
            err(Column::AccessTokenExpiresAt, "given without an access_token".into());
            None
        }
        // the other field was bad, and is reported
        _ => None,
    };
    match (user_id, email, region, state) {
        (Some(user_id), Some(email), Some(region), Some(verification_state)) if errors.is_empty() => Ok(UserRow {
            user_id,
            email,
            first_name,
            last_name,
            locale,
            timezone,
            region,
            country,
            verification_state,
            rejected_at,
            signed_up_at,
            tags,
            refresh_token,
            state_as_of,
            access_token,
        }),
        _ => Err(RowProblems(errors)),
    }
}

/// A BCP 47 tag as used for message language: a 2-3 letter language, then optional
/// subtags of 2-8 letters or digits (`en`, `en-GB`, `zh-Hant-TW`, `es-419`).
/// `en_GB` is accepted and stored as `en-GB`.
fn parse_locale(v: &str) -> Option<String> {
    let norm = v.replace('_', "-");
    let mut parts = norm.split('-');
    let lang = parts.next()?;
    if !(2..=3).contains(&lang.len()) || !lang.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut out = lang.to_ascii_lowercase();
    for p in parts {
        if !(2..=8).contains(&p.len()) || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        out.push('-');
        // region subtags are upper case by convention
        if p.len() == 2 { out.push_str(&p.to_ascii_uppercase()) } else { out.push_str(p) }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(Column, &str)]) -> Fields {
        let mut f: Fields = Default::default();
        for (c, v) in pairs {
            f[*c as usize] = Some((*v).to_owned());
        }
        f
    }

    fn good() -> Vec<(Column, &'static str)> {
        vec![
            (Column::UserId, "6F9619FF-8B86-D011-B42D-00C04FC964FF"),
            (Column::Email, "ann@example.com"),
            (Column::Region, "intl"),
            (Column::VerificationState, "rejected"),
        ]
    }

    #[test]
    fn a_minimal_row_parses_and_normalises() {
        let mut r = good();
        r.extend([
            (Column::Locale, "en_gb"),
            (Column::Country, "gb"),
            (Column::Tags, " vip ; beta;;vip"),
            (Column::RejectedAt, "2026-01-31T09:00:00+01:00"),
            (Column::FirstName, "=cmd|' /C calc'!A0"),
            (Column::RefreshToken, "rt_abc.DEF-123"),
        ]);
        let d = parse_fields(&row(&r), Missing::Refused).unwrap();
        assert_eq!(d.user_id.as_str(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(d.locale.as_deref(), Some("en-GB"));
        assert_eq!(d.country.as_deref(), Some("GB"));
        assert_eq!(d.tags, vec!["vip".to_owned(), "beta".to_owned()]);
        assert_eq!(d.rejected_at.unwrap().to_rfc3339(), "2026-01-31T08:00:00+00:00");
        assert_eq!(d.first_name.as_deref(), Some("=cmd|' /C calc'!A0"));
        assert_eq!(d.refresh_token.as_deref().map(String::as_str), Some("rt_abc.DEF-123"));
    }

    #[test]
    fn every_problem_is_named() {
        let r = row(&[
            (Column::Email, "not-an-email"),
            (Column::Region, "eu"),
            (Column::VerificationState, "DONE"),
            (Column::Timezone, "Mars/Olympus"),
            (Column::RejectedAt, "yesterday"),
            (Column::Tags, "ok;bad tag"),
            (Column::Locale, "english"),
            (Column::FirstName, "a\u{7}b"),
        ]);
        let why = parse_fields(&r, Missing::Refused).err().unwrap().to_string();
        for part in [
            "user_id: missing",
            "email: \"not-an-email\" is not an email address: no '@'",
            "region: \"eu\" is not one of intl, us",
            "verification_state: \"DONE\" is not one of",
            "timezone: \"Mars/Olympus\" is not an IANA time zone",
            "rejected_at: \"yesterday\" is not an RFC 3339 time",
            "tags: \"bad tag\" is not a tag",
            "locale: \"english\" is not a locale",
            "first_name: \"a\\u{7}b\" contains a control character",
        ] {
            assert!(why.contains(part), "{part} in {why}");
        }
    }

    #[test]
    fn region_and_state_are_defaulted_only_when_asked() {
        let r = row(&good()[..2]);
        let d = parse_fields(&r, Missing::Defaulted).unwrap();
        assert_eq!((d.region, d.verification_state), (Region::Intl, VerificationState::Unverified));
        let why = parse_fields(&r, Missing::Refused).err().unwrap().to_string();
        assert_eq!(why, "region: missing (intl or us); verification_state: missing");
        assert!(Missing::Refused.requires(Column::Region) && !Missing::Defaulted.requires(Column::Region));
    }

    #[test]
    fn a_bad_token_is_never_quoted() {
        let mut r = good();
        r.push((Column::RefreshToken, "secret token with spaces"));
        let why = parse_fields(&row(&r), Missing::Refused).err().unwrap().to_string();
        assert!(why.starts_with("refresh_token: contains") && !why.contains("secret"), "{why}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let mut r = good();
        let long = "x".repeat(10_000);
        r[1] = (Column::Email, long.as_str());
        let why = parse_fields(&row(&r), Missing::Refused).err().unwrap().to_string();
        assert!(why.len() < 300 && why.contains("(10000 characters)"), "{why}");
    }

    #[test]
    fn locales() {
        assert_eq!(parse_locale("zh-Hant-TW").as_deref(), Some("zh-Hant-TW"));
        assert_eq!(parse_locale("es-419").as_deref(), Some("es-419"));
        assert_eq!(parse_locale("EN").as_deref(), Some("en"));
        for bad in ["e", "en-", "en-G", "en GB", "1n-GB"] {
            assert!(parse_locale(bad).is_none(), "{bad}");
        }
    }
}
