//! Identifiers and enumerations, parsed once at the edge so that an invalid value
//! cannot exist further in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value could not be parsed. The message names the value's kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("user id {0:?} is not a UUID")]
    UserId(String),
    #[error("email address {0:?} is not valid: {1}")]
    Email(String, &'static str),
    #[error("locale {0:?} is not a locale tag like en-GB")]
    Locale(String),
    #[error("region {0:?} is not one of intl, us")]
    Region(String),
    #[error("verification state {0:?} is not one of UNVERIFIED, PENDING, VERIFIED, REJECTED")]
    State(String),
    #[error(
        "campaign name {0:?} is not valid: use 1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit"
    )]
    CampaignName(String),
}

/// A Baanx user id (a UUID), kept in its canonical lower-case hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Parses a UUID in any of its usual spellings.
    ///
    /// # Errors
    /// [`IdError::UserId`] when `s` is not a UUID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        uuid::Uuid::parse_str(s.trim())
            .map(|u| Self(u.hyphenated().to_string()))
            .map_err(|_| IdError::UserId(s.to_owned()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

/// An email address checked for the shape a mail server will accept:
/// one `@`, a non-empty local part, a domain of dot-separated labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses and trims an address.
    ///
    /// # Errors
    /// [`IdError::Email`] with the reason.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let bad = |why| Err(IdError::Email(s.to_owned(), why));
        if t.len() > 254 {
            return bad("longer than 254 characters");
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contains white space or a control character");
        }
        let Some((local, domain)) = t.rsplit_once('@') else {
            return bad("no '@'");
        };
        if local.is_empty() || local.len() > 64 {
            return bad("the part before '@' must be 1-64 characters");
        }
        if local.contains('@') || local.contains(['<', '>', '(', ')', ',', ';', ':', '"', '[', ']', '\\']) {
            return bad("the part before '@' has a character that needs quoting");
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return bad("misplaced '.' before '@'");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return bad("the domain has no '.'");
        }
        for label in labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-');
            if !ok {
                return bad("the domain is not a host name");
            }
        }
        Ok(Self(t.to_owned()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

/// The Baanx backend a user lives on; `us` users need `x-us-env: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Intl,
    Us,
}

impl Region {
    /// All regions, in a stable order.
    pub const ALL: [Region; 2] = [Region::Intl, Region::Us];

    /// The stored and printed spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Intl => "intl",
            Region::Us => "us",
        }
    }
}

impl FromStr for Region {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "intl" | "international" => Ok(Region::Intl),
            "us" => Ok(Region::Us),
            _ => Err(IdError::Region(s.to_owned())),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user's identity-verification state, as `GET /v1/user` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VerificationState {
    Unverified,
    Pending,
    Verified,
    Rejected,
}

impl VerificationState {
    /// All states, in a stable order.
    pub const ALL: [VerificationState; 4] = [
        VerificationState::Unverified,
        VerificationState::Pending,
        VerificationState::Verified,
        VerificationState::Rejected,
    ];

    /// The stored and printed spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationState::Unverified => "UNVERIFIED",
            VerificationState::Pending => "PENDING",
            VerificationState::Verified => "VERIFIED",
            VerificationState::Rejected => "REJECTED",
        }
    }
}

impl FromStr for VerificationState {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "UNVERIFIED" => Ok(VerificationState::Unverified),
            "PENDING" => Ok(VerificationState::Pending),
            "VERIFIED" => Ok(VerificationState::Verified),
            "REJECTED" => Ok(VerificationState::Rejected),
            _ => Err(IdError::State(s.to_owned())),
        }
    }
}

impl fmt::Display for VerificationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A campaign's name: 1-64 of `[a-z0-9_-]`, starting with a letter or digit,
/// so that it is safe in file names, metrics labels and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CampaignName(String);

impl CampaignName {
    /// Parses a name.
    ///
    /// # Errors
    /// [`IdError::CampaignName`] when it breaks the rule above.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok { Ok(Self(s.to_owned())) } else { Err(IdError::CampaignName(s.to_owned())) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CampaignName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CampaignName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<CampaignName> for String {
    fn from(n: CampaignName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_is_canonical_uuid() {
        let id = UserId::parse(" 6F9619FF-8B86-D011-B42D-00C04FC964FF ").unwrap();
        assert_eq!(id.as_str(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("user-1").is_err());
    }

    #[test]
    fn email_shapes() {
        for good in ["a@example.com", "first.last+tag@mail.example.co.uk", " x@y.io "] {
            assert!(EmailAddress::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a@-example.com",
            "a..b@example.com",
            "a@example..com",
            "a,b@example.com",
            "a@b@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_and_states_round_trip() {
        for r in Region::ALL {
            assert_eq!(r.as_str().parse::<Region>().unwrap(), r);
        }
        assert!("eu".parse::<Region>().is_err());
        for s in VerificationState::ALL {
            assert_eq!(s.as_str().parse::<VerificationState>().unwrap(), s);
        }
        assert_eq!("pending".parse::<VerificationState>().unwrap(), VerificationState::Pending);
        assert!("DONE".parse::<VerificationState>().is_err());
    }

    #[test]
    fn campaign_names() {
        assert!(CampaignName::parse("kyc-refresh-q4").is_ok());
        assert!(CampaignName::parse("2026_q1").is_ok());
        for bad in ["", "-x", "Upper", "a b", "a/b", &"x".repeat(65)] {
            assert!(CampaignName::parse(bad).is_err(), "{bad}");
        }
    }
}
