//! Importing the user directory from a user file, CSV or JSON Lines (its format:
//! [`crate::domain::userfile`]).
//!
//! Two streaming passes over the file, each in constant memory apart from what a
//! report needs:
//!
//! 1. **Check**: parse every row, find duplicate user ids (a compact sorted list of
//!    16-byte ids and line numbers: about 20 MB for a million rows), note which
//!    lines are bad and whether any row carries a token.
//! 2. **Write**: read the file again, skip the bad lines, seal tokens, and upsert in
//!    batches (`Store::user_bulk_begin`: staged, then written at once). Parsing and sealing run on a blocking thread that hands
//!    batches to the writer through a small channel, so reading overlaps with the
//!    database.
//!
//! Checking first is what lets `--strict` import nothing when any row is bad, lets
//! both rows of a duplicate be left out (which one is right is the owner's call),
//! and refuses a file with tokens before anything is written when no key is set.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::crypto::TokenCipher;
pub use crate::domain::userfile::Format;
use crate::domain::userfile::{Fields, FileError, Missing, Source, UserRow, parse_fields};
use crate::store::events::NewEvent;
use crate::store::users::{SealedToken, UserUpsert};
use crate::store::{Store, StoreError};

/// Rows handed to the store per call (one write transaction).
const BATCH_ROWS: usize = 4000;
/// How many problems a report keeps (the lowest line numbers); the rest are counted.
pub const MAX_REPORTED_PROBLEMS: usize = 20;

/// Why an import stopped. Bad rows are not errors: they are in the [`ImportReport`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot open: {source}")]
    Open { file: String, source: std::io::Error },
    #[error("{file}: cannot tell the format from the file name; use --format csv or --format jsonl")]
    UnknownFormat { file: String },
    /// The header, or reading the file on.
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{file}:{line}: the row carries a refresh_token, but token_key is not set: set REVERIFY_TOKEN_KEY or REVERIFY_TOKEN_KEY_FILE (nothing was imported)"
    )]
    NoKey { file: String, line: u64 },
    #[error("{file}:{line}: the file changed while it was being imported ({message}); import it again")]
    Changed { file: String, line: u64, message: String },
    #[error("{file}: importing stopped: {source}")]
    Store { file: String, source: StoreError },
    #[error("{file}: the import thread failed: {message}")]
    Thread { file: String, message: String },
}

/// One bad row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowProblem {
    /// 1-based; the CSV header is line 1.
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Rows in the file (not counting the header and blank lines).
    pub rows: u64,
    /// Rows written.
    pub imported: u64,
    /// Rows refused.
    pub bad: u64,
    /// The first [`MAX_REPORTED_PROBLEMS`] bad rows by line.
    pub problems: Vec<RowProblem>,
    /// Rows whose refresh token was sealed and stored.
    pub tokens: u64,
    /// True when `--strict` refused the whole file.
    pub strict_refused: bool,
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// `None`: from the file name.
    pub format: Option<Format>,
    /// Import nothing when any row is bad.
    pub strict: bool,
    /// Seals refresh tokens; needed only when a row has one.
    pub cipher: Option<Arc<TokenCipher>>,
    /// Recorded in the audit trail.
    pub actor: String,
    /// The time written as `created_at`/`updated_at`.
    pub now: DateTime<Utc>,
}

/// The lowest-numbered problems, capped, and every bad line number.
#[derive(Default)]
struct Problems {
    shown: BTreeMap<u64, String>,
    lines: Vec<u64>,
}

impl Problems {
    fn add(&mut self, line: u64, reason: String) {
        self.lines.push(line);
        self.shown.insert(line, reason);
        if self.shown.len() > MAX_REPORTED_PROBLEMS {
            self.shown.pop_last();
        }
    }
}

/// The outcome of pass 1.
struct Checked {
    rows: u64,
    problems: Problems,
    /// Sorted, without repeats.
    bad_lines: Vec<u64>,
    first_token_line: Option<u64>,
}

/// Opens `path` and, for CSV, reads and checks its header: the directory requires
/// every user's region and verification state.
///
/// # Errors
/// [`ImportError::Open`], or [`FileError::Header`].
pub fn open_file(path: &Path, format: Format) -> Result<Source<BufReader<File>>, ImportError> {
    let file = path.display().to_string();
    let opened = File::open(path).map_err(|source| ImportError::Open { file: file.clone(), source })?;
    Ok(Source::new(BufReader::with_capacity(256 * 1024, opened), &file, format, Missing::Refused)?)
}

/// How far ahead of our clock a `state_as_of` may be (the exporting system's clock
/// may run a little fast); it is recorded as our "now" then.
const STATE_AS_OF_SKEW: chrono::Duration = chrono::Duration::seconds(60);

/// Why `row` cannot be imported at `now` though it parses: a `state_as_of` in the
/// future.
fn problem_at(row: &UserRow, now: DateTime<Utc>) -> Option<String> {
    let at = row.state_as_of?;
    (at > now + STATE_AS_OF_SKEW).then(|| {
        format!(
            "state_as_of: {} is in the future (now is {}): a state cannot be known before it happens",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    })
}

/// How long before its expiry an imported access token stops being used: the
/// client's refresh margin (5 minutes), so that a token is never sent about to die.
const ACCESS_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// Until when an access token that expires at `expires_at` is used.
fn access_usable_until(expires_at: DateTime<Utc>) -> DateTime<Utc> {
    expires_at - ACCESS_MARGIN
}

/// The tokens of a row, not yet sealed.
struct RowTokens {
    refresh: Option<zeroize::Zeroizing<String>>,
    access: Option<(zeroize::Zeroizing<String>, DateTime<Utc>)>,
}

/// `row` as the store takes it at `now`, and its tokens (not yet sealed). Its state
/// is confirmed as of `state_as_of`, or of the import.
fn to_upsert(row: UserRow, now: DateTime<Utc>) -> (UserUpsert, RowTokens) {
    let user = UserUpsert {
        user_id: row.user_id,
        email: row.email,
        first_name: row.first_name,
        last_name: row.last_name,
        locale: row.locale,
        timezone: row.timezone,
        region: row.region,
        country: row.country,
        verification_state: row.verification_state,
        rejected_at: row.rejected_at,
        tags: row.tags,
        signed_up_at: row.signed_up_at,
        token: None,
        state_confirmed_at: Some(row.state_as_of.map_or(now, |at| at.min(now))),
        access: None,
    };
    (user, RowTokens { refresh: row.refresh_token, access: row.access_token })
}

fn check(path: &Path, format: Format, now: DateTime<Utc>) -> Result<Checked, ImportError> {
    let mut src = open_file(path, format)?;
    let mut fields: Fields = Default::default();
    let mut problems = Problems::default();
    let mut rows = 0u64;
    let mut first_token_line = None;
    // (id bytes, line): 20 bytes a row, sorted once at the end to find duplicates.
    let mut ids: Vec<([u8; 16], u32)> = Vec::new();
    while let Some(r) = src.next_row(&mut fields)? {
        rows += 1;
        if let Some(p) = r.problem {
            problems.add(r.line, p);
            continue;
        }
        match parse_fields(&fields, Missing::Refused) {
            Err(why) => problems.add(r.line, why.to_string()),
            Ok(d) if problem_at(&d, now).is_some() => problems.add(r.line, problem_at(&d, now).unwrap_or_default()),
            Ok(d) => {
                if (d.refresh_token.is_some() || d.access_token.is_some()) && first_token_line.is_none() {
                    first_token_line = Some(r.line);
                }
                let bytes = uuid::Uuid::parse_str(d.user_id.as_str()).map(|u| u.into_bytes()).unwrap_or_default();
                let line = u32::try_from(r.line).map_err(|_| FileError::Read {
                    file: path.display().to_string(),
                    line: r.line,
                    message: "more than 4 billion lines".into(),
                })?;
                ids.push((bytes, line));
            }
        }
    }
    ids.sort_unstable();
    for group in ids.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let id = uuid::Uuid::from_bytes(group[0].0).hyphenated().to_string();
        for &(_, line) in group {
            let others: Vec<String> =
                group.iter().filter(|(_, l)| *l != line).take(5).map(|(_, l)| l.to_string()).collect();
            let more = if group.len() > 6 { format!(" and {} more", group.len() - 6) } else { String::new() };
            problems.add(u64::from(line), format!("user_id: {id} also appears on line {}{more}", others.join(", ")));
        }
    }
    drop(ids);
    let mut bad_lines = std::mem::take(&mut problems.lines);
    bad_lines.sort_unstable();
    bad_lines.dedup();
    Ok(Checked { rows, problems, bad_lines, first_token_line })
}

/// What [`produce`] reads: the file at `path`, less the lines pass 1 found bad.
struct Pass2 {
    path: PathBuf,
    format: Format,
    bad_lines: Vec<u64>,
    /// Seals the tokens; `None` when the file has none.
    cipher: Option<Arc<TokenCipher>>,
    now: DateTime<Utc>,
}

/// Pass 2 on a blocking thread: good rows, sealed, in batches.
fn produce(p: Pass2, tx: tokio::sync::mpsc::Sender<Vec<UserUpsert>>) -> Result<(), ImportError> {
    let Pass2 { path, format, bad_lines, cipher, now } = p;
    let file = path.display().to_string();
    let mut src = open_file(&path, format)?;
    let mut fields: Fields = Default::default();
    let mut bad = bad_lines.iter().peekable();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while let Some(r) = src.next_row(&mut fields)? {
        while bad.next_if(|&&l| l < r.line).is_some() {}
        if bad.next_if(|&&l| l == r.line).is_some() {
            continue;
        }
        let changed = |message: String| ImportError::Changed { file: file.clone(), line: r.line, message };
        if let Some(p) = r.problem {
            return Err(changed(p));
        }
        let row = parse_fields(&fields, Missing::Refused).map_err(|p| changed(p.to_string()))?;
        let (mut user, tokens) = to_upsert(row, now);
        if tokens.refresh.is_some() || tokens.access.is_some() {
            let cipher = cipher.as_ref().ok_or_else(|| ImportError::NoKey { file: file.clone(), line: r.line })?;
            let sealed = |ad: &str, token: &str| SealedToken {
                key_id: cipher.key_id().to_owned(),
                ciphertext: cipher.seal(ad, token),
            };
            user.token = tokens.refresh.map(|t| sealed(user.user_id.as_str(), &t));
            user.access = tokens.access.map(|(t, until)| {
                (sealed(&crate::crypto::access_token_ad(user.user_id.as_str()), &t), access_usable_until(until))
            });
        }
        batch.push(user);
        if batch.len() == BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            if tx.blocking_send(full).is_err() {
                return Ok(()); // the writer stopped; it reports why
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}

/// Imports `path` into `store` (see the module docs) and records the import in the
/// audit trail.
///
/// # Errors
/// [`ImportError`] when the file as a whole cannot be imported; bad rows are in the
/// report instead. When the store fails midway, the batches already written stay.
pub async fn import_file(store: &Store, path: &Path, opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    let file = path.display().to_string();
    let format = match opts.format.or_else(|| Format::from_path(path)) {
        Some(f) => f,
        None => return Err(ImportError::UnknownFormat { file }),
    };
    let thread_err = |e: tokio::task::JoinError| ImportError::Thread { file: file.clone(), message: e.to_string() };
    let owned = path.to_path_buf();
    let now = opts.now;
    let checked = tokio::task::spawn_blocking(move || check(&owned, format, now)).await.map_err(thread_err)??;
    let mut report = ImportReport {
        rows: checked.rows,
        bad: checked.bad_lines.len() as u64,
        problems: checked.problems.shown.into_iter().map(|(line, reason)| RowProblem { line, reason }).collect(),
        ..ImportReport::default()
    };
    if opts.strict && report.bad > 0 {
        report.strict_refused = true;
        return Ok(report);
    }
    if let (Some(line), None) = (checked.first_token_line, &opts.cipher) {
        return Err(ImportError::NoKey { file, line });
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<UserUpsert>>(2);
    let owned = path.to_path_buf();
    let cipher = opts.cipher.clone();
    let pass2 = Pass2 { path: owned, format, bad_lines: checked.bad_lines, cipher, now };
    let producer = tokio::task::spawn_blocking(move || produce(pass2, tx));
    let written = async {
        let mut bulk = store.user_bulk_begin().await?;
        while let Some(batch) = rx.recv().await {
            let tokens = batch.iter().filter(|u| u.token.is_some()).count() as u64;
            bulk.push(&batch).await?;
            report.imported += batch.len() as u64;
            report.tokens += tokens;
        }
        bulk.finish(opts.now).await
    }
    .await;
    drop(rx); // stops the producer if the writer gave up
    let produced = producer.await.map_err(thread_err)?;
    written.map_err(|source| ImportError::Store { file: file.clone(), source })?;
    produced?;

    let event = NewEvent {
        actor: &opts.actor,
        kind: "users.imported",
        campaign_id: None,
        user_id: None,
        detail: Some(serde_json::json!({
            "file": file, "format": format, "rows": report.rows, "imported": report.imported,
            "bad": report.bad, "tokens": report.tokens,
        })),
    };
    store.event_append(&event, opts.now).await.map_err(|source| ImportError::Store { file, source })?;
    Ok(report)
}

/// `value` made safe for a cell of a CSV file opened in a spreadsheet: a leading
/// `=`, `+`, `-`, `@`, tab or carriage return would make it a formula, so such a
/// value gets a leading `'`. Every CSV export of user data goes through this.
pub fn spreadsheet_safe(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests;
