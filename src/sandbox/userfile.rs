//! The sandbox's users in the user file format ([`crate::domain::userfile`]).
//!
//! One format serves both sides of a demo: the sandbox loads it with `--seed FILE` and
//! writes it with `--export-users FILE`, and the worker's users importer reads the same
//! file, so both hold the same users. A seed file may leave out `region` and
//! `verification_state` (then `intl` and `UNVERIFIED`). Reading reports every bad row
//! with its line and field, and a caller that wants a partial import (keep the good
//! rows) can use [`read_rows`]; [`read_users`] refuses the whole file on the first bad
//! row.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use crate::domain::userfile::{
    self, Column, Fields, FileError, Format, Missing, Source, UserRow, WRITTEN, parse_fields,
};
use crate::domain::{EmailAddress, Region, UserId, VerificationState};

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

impl From<UserRow> for UserRecord {
    fn from(row: UserRow) -> Self {
        Self {
            user_id: row.user_id,
            email: row.email,
            first_name: row.first_name.unwrap_or_default(),
            last_name: row.last_name.unwrap_or_default(),
            locale: row.locale.unwrap_or_default(),
            timezone: row.timezone.unwrap_or_default(),
            region: row.region,
            country: row.country.unwrap_or_default(),
            verification_state: row.verification_state,
            rejected_at: row.rejected_at,
            refresh_token: row.refresh_token.map(|t| t.as_str().to_owned()),
            tags: row.tags,
        }
    }
}

impl From<&UserRecord> for UserRow {
    fn from(u: &UserRecord) -> Self {
        let text = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Self {
            user_id: u.user_id.clone(),
            email: u.email.clone(),
            first_name: text(&u.first_name),
            last_name: text(&u.last_name),
            locale: text(&u.locale),
            timezone: text(&u.timezone),
            region: u.region,
            country: text(&u.country),
            verification_state: u.verification_state,
            rejected_at: u.rejected_at,
            signed_up_at: None,
            tags: u.tags.clone(),
            refresh_token: u.refresh_token.clone().map(Zeroizing::new),
            state_as_of: None,
            access_token: None,
        }
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

/// A row's line number and what it parsed to, for the caller's report.
pub type Row = (u64, Result<UserRecord, UserFileError>);

/// Reads every row of a file (JSON Lines when the name ends in `.jsonl` or
/// `.ndjson`, else CSV), keeping bad rows as errors so that a caller can keep the
/// good ones.
///
/// # Errors
/// [`UserFileError`] when the file cannot be read at all or its header is wrong.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, UserFileError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|error| UserFileError::Io { file: name.clone(), error })?;
    read_from(BufReader::new(file), &name, Format::from_path(path).unwrap_or(Format::Csv))
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

/// Reads rows in `format` from any reader; `name` is used in errors. A bad row is
/// reported at its first problem.
///
/// # Errors
/// [`UserFileError::Header`] or [`UserFileError::Syntax`] when the file as a whole is
/// unusable; row errors are returned inside the vector.
pub fn read_from<R: BufRead>(reader: R, name: &str, format: Format) -> Result<Vec<Row>, UserFileError> {
    let mut src = Source::new(reader, name, format, Missing::Defaulted).map_err(file_error)?;
    let mut fields: Fields = Default::default();
    let mut rows = Vec::new();
    while let Some(read) = src.next_row(&mut fields).map_err(file_error)? {
        let line = read.line;
        let parsed = match read.problem {
            Some(message) => Err(UserFileError::Syntax { file: name.to_owned(), line, message }),
            None => parse_fields(&fields, Missing::Defaulted).map(UserRecord::from).map_err(|problems| {
                let (column, message) = problems.first();
                UserFileError::Field { file: name.to_owned(), line, field: column.name(), message: message.to_owned() }
            }),
        };
        rows.push((line, parsed));
    }
    Ok(rows)
}

fn file_error(e: FileError) -> UserFileError {
    match e {
        FileError::Header { file, found, .. } => {
            UserFileError::Header { file, expected: WRITTEN.map(Column::name).join(","), found }
        }
        FileError::Read { file, line, message } => UserFileError::Syntax { file, line, message },
    }
}

/// Writes users as CSV with the header, refresh tokens included.
///
/// # Errors
/// [`UserFileError::Io`] when writing fails.
pub fn write_csv<W: Write>(writer: W, users: &[UserRecord], name: &str) -> Result<(), UserFileError> {
    userfile::write_csv(writer, users.iter().map(UserRow::from))
        .map_err(|error| UserFileError::Io { file: name.to_owned(), error })
}

/// Writes users as CSV to a file, replacing it.
///
/// # Errors
/// [`UserFileError::Io`] naming the file.
pub fn write_users(path: &Path, users: &[UserRecord]) -> Result<(), UserFileError> {
    let name = path.display().to_string();
    let file = File::create(path).map_err(|error| UserFileError::Io { file: name.clone(), error })?;
    write_csv(std::io::BufWriter::new(file), users, &name)
}

/// Writes users as CSV to a file, replacing it, each with `state_as_of` and an
/// access token from `access` (the user's token and when it expires).
///
/// # Errors
/// [`UserFileError::Io`] naming the file.
pub fn write_users_with_access(
    path: &Path,
    users: &[UserRecord],
    state_as_of: DateTime<Utc>,
    access: impl Fn(&UserRecord) -> Option<(String, DateTime<Utc>)>,
) -> Result<(), UserFileError> {
    let name = path.display().to_string();
    let file = File::create(path).map_err(|error| UserFileError::Io { file: name.clone(), error })?;
    let rows = users.iter().map(|u| UserRow {
        state_as_of: Some(state_as_of),
        access_token: access(u).map(|(t, at)| (Zeroizing::new(t), at)),
        ..UserRow::from(u)
    });
    userfile::write_csv_with_access(std::io::BufWriter::new(file), rows)
        .map_err(|error| UserFileError::Io { file: name, error })
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
        let rows = read_from(GOOD.as_bytes(), "u.csv", Format::Csv).unwrap();
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
            read_from(out.as_slice(), "out", Format::Csv).unwrap().into_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(again, users);
        assert!(!format!("{:?}", users[0]).contains("rt_1"));
    }

    #[test]
    fn bad_rows_name_line_and_field() {
        let text =
            format!("{GOOD}8f9619ff-8b86-d011-b42d-00c04fc964ff,c@example.test,C,D,en,Mars/Base,intl,FR,VERIFIED,,,\n");
        let rows = read_from(text.as_bytes(), "u.csv", Format::Csv).unwrap();
        let err = rows[2].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("u.csv:4: field timezone:"), "{err}");
        let bad_state = GOOD.replace("UNVERIFIED", "DONE");
        let rows = read_from(bad_state.as_bytes(), "u.csv", Format::Csv).unwrap();
        let err = rows[1].1.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("u.csv:3: field verification_state:"), "{err}");
        let err = read_from("id,email\n".as_bytes(), "h.csv", Format::Csv).unwrap_err().to_string();
        assert!(err.starts_with("h.csv: the header must be"), "{err}");
    }

    #[test]
    fn jsonl_rows() {
        let text = "{\"user_id\":\"6f9619ff-8b86-d011-b42d-00c04fc964ff\",\"email\":\"a@example.test\",\"tags\":[\"x\"],\"region\":\"us\"}\n\n{\"user_id\":\"nope\",\"email\":\"a@example.test\"}\n";
        let rows = read_from(text.as_bytes(), "u.jsonl", Format::Jsonl).unwrap();
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
