//! The user import format: CSV (or JSON Lines) rows of Baanx users with their refresh
//! tokens.
//!
//! One format serves both sides of a demo: the sandbox loads it with `--seed FILE` and
//! writes it with `--export-users FILE`, and the worker's users importer reads the same
//! file, so both hold the same users. Reading reports every bad row with its line and
//! field, and a caller that wants a partial import (keep the good rows) can use
//! [`read_rows`]; [`read_users`] refuses the whole file on the first bad row.

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{EmailAddress, Region, UserId, VerificationState};

/// The CSV header, in order.
pub const HEADER: [&str; 12] = [
    "user_id",
    "email",
    "first_name",
    "last_name",
    "locale",
    "timezone",
    "region",
    "country",
    "verification_state",
    "rejected_at",
    "refresh_token",
    "tags",
];

/// One user of the import format. `Debug` hides the refresh token.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub first_name: String,
    pub last_name: String,
    /// A BCP 47 tag such as `en-GB`.
    pub locale: String,
    /// An IANA time zone such as `Europe/London`.
    pub timezone: String,
    pub region: Region,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    pub verification_state: VerificationState,
    pub rejected_at: Option<DateTime<Utc>>,
    /// The user's current Baanx refresh token, when known.
    pub refresh_token: Option<String>,
    pub tags: Vec<String>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("region", &self.region)
            .field("verification_state", &self.verification_state)
            .field("rejected_at", &self.rejected_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// Why a user file (or one of its rows) could not be read. Each names the file and,
/// when it applies, the line and the field.
#[derive(Debug, thiserror::Error)]
pub enum UserFileError {
    /// The I/O error is part of the message (not a `source`), so it is printed once.
    #[error("{file}: {error}")]
    Io { file: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Syntax { file: String, line: u64, message: String },
    #[error("{file}:{line}: field {field}: {message}")]
    Field { file: String, line: u64, field: &'static str, message: String },
    #[error("{file}: the header must be {expected}, found {found}")]
    Header { file: String, expected: String, found: String },
    #[error("{file}:{line}: user {user_id} appears twice (first on line {first})")]
    Duplicate { file: String, line: u64, first: u64, user_id: String },
}

/// The raw row, as CSV and JSON Lines spell it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    user_id: String,
    email: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    locale: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    verification_state: String,
    #[serde(default)]
    rejected_at: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    /// CSV: `;`-separated. JSON Lines: the same string, or an array.
    #[serde(default)]
    tags: Tags,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(untagged)]
enum Tags {
    #[default]
    None,
    Joined(String),
    List(Vec<String>),
}

/// A row's line number and what it parsed to, for the caller's report.
pub type Row = (u64, Result<UserRecord, UserFileError>);

/// Reads every row of a file (CSV, or JSON Lines when the name ends in `.jsonl`),
/// keeping bad rows as errors so that a caller can keep the good ones.
///
/// # Errors
/// [`UserFileError`] when the file cannot be read at all or its header is wrong.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, UserFileError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| UserFileError::Io { file: name.clone(), error })?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl")) {
        read_jsonl(std::io::BufReader::new(file), &name)
    } else {
        read_csv(file, &name)
    }
}

/// Reads a whole file, refusing it at the first bad row or duplicate user.
///
/// # Errors
/// [`UserFileError`] naming the file, line and field.
pub fn read_users(path: &Path) -> Result<Vec<UserRecord>, UserFileError> {
    let rows = read_rows(path)?;
    let name = path.display().to_string();
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let rec = row?;
        if let Some(first) = seen.insert(rec.user_id.clone(), line) {
            return Err(UserFileError::Duplicate { file: name, line, first, user_id: rec.user_id.to_string() });
        }
        out.push(rec);
    }
    Ok(out)
}

/// Reads CSV rows from any reader; `name` is used in errors.
///
/// # Errors
/// [`UserFileError::Header`] or [`UserFileError::Syntax`] when the file as a whole is
/// unusable; row errors are returned inside the vector.
pub fn read_csv<R: Read>(reader: R, name: &str) -> Result<Vec<Row>, UserFileError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| UserFileError::Syntax { file: name.to_owned(), line: 1, message: e.to_string() })?
        .clone();
    let found: Vec<&str> = headers.iter().collect();
    let required = ["user_id", "email"];
    let unknown = found.iter().find(|h| !HEADER.contains(h));
    if unknown.is_some() || required.iter().any(|r| !found.contains(r)) {
        return Err(UserFileError::Header {
            file: name.to_owned(),
            expected: HEADER.join(","),
            found: found.join(","),
        });
    }
    let mut rows = Vec::new();
    for result in rdr.records() {
        let row = match result {
            Ok(record) => {
                let line = record.position().map_or(0, csv::Position::line);
                let parsed = record
                    .deserialize::<RawRow>(Some(&headers))
                    .map_err(|e| UserFileError::Syntax { file: name.to_owned(), line, message: e.to_string() })
                    .and_then(|raw| parse_row(raw, name, line));
                (line, parsed)
            }
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                (line, Err(UserFileError::Syntax { file: name.to_owned(), line, message: e.to_string() }))
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Reads JSON Lines rows; blank lines are skipped.
///
/// # Errors
/// [`UserFileError::Io`] when the reader fails; row errors are returned inside the vector.
pub fn read_jsonl<R: BufRead>(reader: R, name: &str) -> Result<Vec<Row>, UserFileError> {
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|error| UserFileError::Io { file: name.to_owned(), error })?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str::<RawRow>(&line)
            .map_err(|e| UserFileError::Syntax { file: name.to_owned(), line: line_no, message: e.to_string() })
            .and_then(|raw| parse_row(raw, name, line_no));
        rows.push((line_no, row));
    }
    Ok(rows)
}

fn parse_row(raw: RawRow, file: &str, line: u64) -> Result<UserRecord, UserFileError> {
    let field =
        |field: &'static str, message: String| UserFileError::Field { file: file.to_owned(), line, field, message };
    let user_id = UserId::parse(&raw.user_id).map_err(|e| field("user_id", e.to_string()))?;
    let email = EmailAddress::parse(&raw.email).map_err(|e| field("email", e.to_string()))?;
    let region = if raw.region.trim().is_empty() {
        Region::Intl
    } else {
        raw.region.parse::<Region>().map_err(|e| field("region", e.to_string()))?
    };
    let verification_state = if raw.verification_state.trim().is_empty() {
        VerificationState::Unverified
    } else {
        raw.verification_state.parse::<VerificationState>().map_err(|e| field("verification_state", e.to_string()))?
    };
    let timezone = raw.timezone.trim().to_owned();
    if !timezone.is_empty() && timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err(field("timezone", format!("{timezone:?} is not an IANA time zone (e.g. Europe/London)")));
    }
    let country = raw.country.trim().to_ascii_uppercase();
    let country_ok = country.is_empty() || (country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()));
    if !country_ok {
        return Err(field("country", format!("{:?} is not an ISO 3166-1 alpha-2 code", raw.country)));
    }
    let locale = raw.locale.trim().to_owned();
    if !locale.is_empty()
        && !locale
            .split(['-', '_'])
            .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(field("locale", format!("{locale:?} is not a language tag (e.g. en-GB)")));
    }
    let rejected_at = match raw.rejected_at.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| field("rejected_at", format!("{s:?} is not an RFC 3339 time: {e}")))?
                .with_timezone(&Utc),
        ),
    };
    let refresh_token = raw.refresh_token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if refresh_token.as_deref().is_some_and(|t| t.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(field("refresh_token", "contains white space or a control character".into()));
    }
    let tags = match raw.tags {
        Tags::None => Vec::new(),
        Tags::Joined(s) => s.split(';').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        Tags::List(v) => v.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
    };
    if let Some(bad) = tags.iter().find(|t| t.contains(';')) {
        return Err(field("tags", format!("tag {bad:?} contains ';'")));
    }
    Ok(UserRecord {
        user_id,
        email,
        first_name: raw.first_name.trim().to_owned(),
        last_name: raw.last_name.trim().to_owned(),
        locale,
        timezone,
        region,
        country,
        verification_state,
        rejected_at,
        refresh_token,
        tags,
    })
}

/// Writes users as CSV with the header, refresh tokens included.
///
/// # Errors
/// [`UserFileError::Io`] when writing fails.
pub fn write_csv<W: Write>(writer: W, users: &[UserRecord], name: &str) -> Result<(), UserFileError> {
    let io = |e: csv::Error| UserFileError::Io { file: name.to_owned(), error: std::io::Error::other(e) };
    let mut w = csv::Writer::from_writer(writer);
    w.write_record(HEADER).map_err(io)?;
    for u in users {
        let rejected_at = u.rejected_at.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)).unwrap_or_default();
        w.write_record([
            u.user_id.as_str(),
            u.email.as_str(),
            &u.first_name,
            &u.last_name,
            &u.locale,
            &u.timezone,
            u.region.as_str(),
            &u.country,
            u.verification_state.as_str(),
            &rejected_at,
            u.refresh_token.as_deref().unwrap_or(""),
            &u.tags.join(";"),
        ])
        .map_err(io)?;
    }
    w.flush().map_err(|error| UserFileError::Io { file: name.to_owned(), error })
}

/// Writes users as CSV to a file, replacing it.
///
/// # Errors
/// [`UserFileError::Io`] naming the file.
pub fn write_users(path: &Path, users: &[UserRecord]) -> Result<(), UserFileError> {
    let name = path.display().to_string();
    let file = std::fs::File::create(path).map_err(|error| UserFileError::Io { file: name.clone(), error })?;
    write_csv(std::io::BufWriter::new(file), users, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "user_id,email,first_name,last_name,locale,timezone,region,country,verification_state,rejected_at,refresh_token,tags
6f9619ff-8b86-d011-b42d-00c04fc964ff,a@example.test,Ann,Lee,en-GB,Europe/London,intl,gb,REJECTED,2026-03-01T10:00:00Z,rt_1,vip; beta
7f9619ff-8b86-d011-b42d-00c04fc964ff,b@example.test,Bob,Ray,en-US,America/New_York,us,US,UNVERIFIED,,,
";

    #[test]
    fn csv_round_trip() {
        let rows = read_csv(GOOD.as_bytes(), "u.csv").unwrap();
        let users: Vec<UserRecord> = rows.into_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].country, "GB");
        assert_eq!(users[0].tags, vec!["vip", "beta"]);
        assert_eq!(users[0].refresh_token.as_deref(), Some("rt_1"));
        assert_eq!(users[1].region, Region::Us);
        assert_eq!(users[1].refresh_token, None);
        let mut out = Vec::new();
        write_csv(&mut out, &users, "out").unwrap();
        let again: Vec<UserRecord> =
            read_csv(out.as_slice(), "out").unwrap().into_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(again, users);
        assert!(!format!("{:?}", users[0]).contains("rt_1"));
    }

    #[test]
    fn bad_rows_name_line_and_field() {
        let text =
            format!("{GOOD}8f9619ff-8b86-d011-b42d-00c04fc964ff,c@example.test,C,D,en,Mars/Base,intl,FR,VERIFIED,,,\n");
        let rows = read_csv(text.as_bytes(), "u.csv").unwrap();
        let err = rows[2].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("u.csv:4: field timezone:"), "{err}");
        let bad_state = GOOD.replace("UNVERIFIED", "DONE");
        let rows = read_csv(bad_state.as_bytes(), "u.csv").unwrap();
        let err = rows[1].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("u.csv:3: field verification_state:"), "{err}");
        let err = read_csv("id,email\n".as_bytes(), "h.csv").unwrap_err().to_string();
        assert!(err.starts_with("h.csv: the header must be"), "{err}");
    }

    #[test]
    fn jsonl_rows() {
        let text = "{\"user_id\":\"6f9619ff-8b86-d011-b42d-00c04fc964ff\",\"email\":\"a@example.test\",\"tags\":[\"x\"],\"region\":\"us\"}\n\n{\"user_id\":\"nope\",\"email\":\"a@example.test\"}\n";
        let rows = read_jsonl(text.as_bytes(), "u.jsonl").unwrap();
        assert_eq!(rows.len(), 2);
        let u = rows[0].1.as_ref().unwrap();
        assert_eq!(u.tags, vec!["x"]);
        assert_eq!(u.region, Region::Us);
        let err = rows[1].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("u.jsonl:3: field user_id:"), "{err}");
    }

    #[test]
    fn duplicates_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dup.csv");
        let line = GOOD.lines().nth(1).unwrap();
        std::fs::write(&p, format!("{GOOD}{line}\n")).unwrap();
        let err = read_users(&p).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}
