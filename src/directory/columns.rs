//! The columns of a user directory file and how each field is parsed.
//!
//! A row comes in as one optional text per [`Column`] (absent column, empty field
//! and JSON `null` all mean "none") and leaves as a [`Draft`]: a `UserUpsert` whose
//! every field is valid, plus the refresh token in plain text, which the caller
//! seals at once. Reasons never quote a refresh token.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use zeroize::Zeroizing;

use crate::domain::spec::is_tag;
use crate::domain::{EmailAddress, Region, UserId, VerificationState};
use crate::store::users::UserUpsert;

/// Every column a file may have, in the documented order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    UserId,
    Email,
    FirstName,
    LastName,
    Locale,
    Timezone,
    Region,
    Country,
    VerificationState,
    RejectedAt,
    RefreshToken,
    Tags,
    SignedUpAt,
}

/// How many columns there are.
pub const COLUMN_COUNT: usize = 13;

impl Column {
    /// All columns, in order; `Column::X as usize` is the index.
    pub const ALL: [Column; COLUMN_COUNT] = [
        Column::UserId,
        Column::Email,
        Column::FirstName,
        Column::LastName,
        Column::Locale,
        Column::Timezone,
        Column::Region,
        Column::Country,
        Column::VerificationState,
        Column::RejectedAt,
        Column::RefreshToken,
        Column::Tags,
        Column::SignedUpAt,
    ];

    /// The header name.
    pub fn name(self) -> &'static str {
        match self {
            Column::UserId => "user_id",
            Column::Email => "email",
            Column::FirstName => "first_name",
            Column::LastName => "last_name",
            Column::Locale => "locale",
            Column::Timezone => "timezone",
            Column::Region => "region",
            Column::Country => "country",
            Column::VerificationState => "verification_state",
            Column::RejectedAt => "rejected_at",
            Column::RefreshToken => "refresh_token",
            Column::Tags => "tags",
            Column::SignedUpAt => "signed_up_at",
        }
    }

    /// Columns a file must have: the ones a user row cannot do without.
    pub fn required(self) -> bool {
        matches!(self, Column::UserId | Column::Email | Column::Region | Column::VerificationState)
    }

    /// The column with this header name (exact, after trimming).
    pub fn from_name(name: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.name() == name.trim())
    }
}

/// The names of every column, for messages.
pub fn column_list() -> String {
    Column::ALL.map(Column::name).join(", ")
}

/// One row's fields, indexed by `Column as usize`.
pub type Fields = [Option<String>; COLUMN_COUNT];

/// A valid row before its token is sealed.
pub struct Draft {
    /// `token` is always `None` here.
    pub user: UserUpsert,
    pub refresh_token: Option<Zeroizing<String>>,
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

/// Parses one row, or says everything that is wrong with it (`; `-separated, each
/// part naming its column).
///
/// # Errors
/// The reasons, as text for the import report.
pub fn parse_fields(fields: &Fields) -> Result<Draft, String> {
    let mut errors: Vec<String> = Vec::new();
    let mut err = |c: Column, why: String| errors.push(format!("{}: {why}", c.name()));

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
                    crate::domain::IdError::Email(_, why) => why,
                    _ => "not valid",
                };
                err(Column::Email, format!("{} is not an email address: {why}", quoted(v)));
            })
            .ok(),
    };
    let region = match field(fields, Column::Region) {
        None => {
            err(Column::Region, "missing (intl or us)".into());
            None
        }
        Some(v) => {
            v.parse::<Region>().map_err(|_| err(Column::Region, format!("{} is not one of intl, us", quoted(v)))).ok()
        }
    };
    let state = match field(fields, Column::VerificationState) {
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
    let mut tags: Vec<String> = Vec::new();
    for t in field(fields, Column::Tags).unwrap_or("").split(';').map(str::trim).filter(|t| !t.is_empty()) {
        if !is_tag(t) {
            err(Column::Tags, format!("{} is not a tag: use 1-64 of A-Z a-z 0-9 . _ : -", quoted(t)));
        } else if !tags.iter().any(|x| x == t) {
            tags.push(t.to_owned());
        }
    }
    let refresh_token = field(fields, Column::RefreshToken).and_then(|v| {
        // Never quote a token in a message, not even a malformed one.
        if v.len() > MAX_TOKEN_LEN {
            err(Column::RefreshToken, format!("longer than {MAX_TOKEN_LEN} bytes"));
            None
        } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
            err(Column::RefreshToken, "contains a character a token cannot have (space, control or non-ASCII)".into());
            None
        } else {
            Some(Zeroizing::new(v.to_owned()))
        }
    });
    match (user_id, email, region, state) {
        (Some(user_id), Some(email), Some(region), Some(verification_state)) if errors.is_empty() => Ok(Draft {
            user: UserUpsert {
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
                tags,
                signed_up_at,
                token: None,
            },
            refresh_token,
        }),
        _ => Err(errors.join("; ")),
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
        let d = parse_fields(&row(&r)).unwrap();
        assert_eq!(d.user.user_id.as_str(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(d.user.locale.as_deref(), Some("en-GB"));
        assert_eq!(d.user.country.as_deref(), Some("GB"));
        assert_eq!(d.user.tags, vec!["vip".to_owned(), "beta".to_owned()]);
        assert_eq!(d.user.rejected_at.unwrap().to_rfc3339(), "2026-01-31T08:00:00+00:00");
        assert_eq!(d.user.first_name.as_deref(), Some("=cmd|' /C calc'!A0"));
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
        let why = parse_fields(&r).err().unwrap();
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
    fn a_bad_token_is_never_quoted() {
        let mut r = good();
        r.push((Column::RefreshToken, "secret token with spaces"));
        let why = parse_fields(&row(&r)).err().unwrap();
        assert!(why.starts_with("refresh_token: contains") && !why.contains("secret"), "{why}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let mut r = good();
        let long = "x".repeat(10_000);
        r[1] = (Column::Email, long.as_str());
        let why = parse_fields(&row(&r)).err().unwrap();
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
