//! The user file: CSV (with a header row) or JSON Lines rows of Baanx users and
//! their refresh tokens. One format for every reader and writer of users: the
//! directory import (`reverify users import`) and the sandbox (`--seed`,
//! `--export-users`) read it with [`Source`] and [`parse_fields`], and the sandbox
//! writes it with [`write_csv`], so that both hold the same users.
//!
//! A row is read as one optional text per [`Column`] (absent column, empty field
//! and JSON `null` all mean "none") and parsed into a [`UserRow`], or into every
//! problem it has, each naming its column; a reader reports them with the file and
//! line. Nothing here opens a file: callers hand in readers and writers.

mod row;
mod source;

use std::io::Write;

use chrono::SecondsFormat;

pub use row::{Missing, RowProblems, UserRow, parse_fields};
pub use source::{CsvSource, JsonlSource, MAX_LINE_BYTES, RowRead, Source};

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// The format a file name implies: `.csv`, or `.jsonl` / `.ndjson`.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// What makes the rest of a file unreadable (a bad row is a [`RowRead::problem`]
/// or [`RowProblems`] instead).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The CSV header is missing, unreadable, or names columns wrongly.
    #[error("{file}: header row: {message}")]
    Header {
        file: String,
        message: String,
        /// The header as found, comma-separated.
        found: String,
    },
    /// The file cannot be read on from `line`.
    #[error("{file}:{line}: {message}")]
    Read { file: String, line: u64, message: String },
}

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
    /// When the directory knew `verification_state` to be true (RFC 3339); without
    /// it, the import's time.
    StateAsOf,
    /// A valid Baanx access token (sealed like the refresh token), with its expiry.
    AccessToken,
    AccessTokenExpiresAt,
}

/// How many columns there are.
pub const COLUMN_COUNT: usize = 16;

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
        Column::StateAsOf,
        Column::AccessToken,
        Column::AccessTokenExpiresAt,
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
            Column::StateAsOf => "state_as_of",
            Column::AccessToken => "access_token",
            Column::AccessTokenExpiresAt => "access_token_expires_at",
        }
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

/// How many columns [`write_csv`] writes.
const WRITTEN_COUNT: usize = 12;

/// The columns [`write_csv`] writes, in order: the first twelve of [`Column::ALL`],
/// up to `tags`. `signed_up_at`, `state_as_of` and the access token are only read
/// (by an import).
pub const WRITTEN: [Column; WRITTEN_COUNT] = {
    let mut written = [Column::UserId; WRITTEN_COUNT];
    let mut i = 0;
    while i < written.len() {
        written[i] = Column::ALL[i];
        i += 1;
    }
    written
};
const _: () = assert!(matches!(Column::ALL[WRITTEN_COUNT], Column::SignedUpAt), "WRITTEN ends before signed_up_at");

/// Writes `rows` as CSV under a header of the [`WRITTEN`] columns, refresh tokens
/// included.
///
/// # Errors
/// When writing fails.
pub fn write_csv<W: Write>(writer: W, rows: impl IntoIterator<Item = UserRow>) -> std::io::Result<()> {
    write_rows(writer, rows, false)
}

/// [`write_csv`], with `state_as_of` and the access token and its expiry after the
/// [`WRITTEN`] columns.
///
/// # Errors
/// When writing fails.
pub fn write_csv_with_access<W: Write>(writer: W, rows: impl IntoIterator<Item = UserRow>) -> std::io::Result<()> {
    write_rows(writer, rows, true)
}

fn write_rows<W: Write>(writer: W, rows: impl IntoIterator<Item = UserRow>, access: bool) -> std::io::Result<()> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)).unwrap_or_default()
    };
    let mut w = csv::Writer::from_writer(writer);
    let mut header: Vec<&str> = WRITTEN.map(Column::name).to_vec();
    if access {
        header.extend([Column::StateAsOf, Column::AccessToken, Column::AccessTokenExpiresAt].map(Column::name));
    }
    w.write_record(&header).map_err(std::io::Error::other)?;
    for u in rows {
        let rejected_at = time(u.rejected_at);
        let tags = u.tags.join(";");
        let mut record: Vec<&str> = vec![
            u.user_id.as_str(),
            u.email.as_str(),
            text(&u.first_name),
            text(&u.last_name),
            text(&u.locale),
            text(&u.timezone),
            u.region.as_str(),
            text(&u.country),
            u.verification_state.as_str(),
            &rejected_at,
            u.refresh_token.as_deref().map_or("", String::as_str),
            &tags,
        ];
        let state_as_of = time(u.state_as_of);
        let expires = time(u.access_token.as_ref().map(|(_, at)| *at));
        if access {
            record.extend([
                state_as_of.as_str(),
                u.access_token.as_ref().map_or("", |(t, _)| t.as_str()),
                expires.as_str(),
            ]);
        }
        w.write_record(&record).map_err(std::io::Error::other)?;
    }
    w.flush()
}

/// An optional field as written: empty for none.
fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}
