//! `campaign report`: one row per target, as CSV or JSON Lines, for a compliance
//! audit.
//!
//! It streams: the store hands out keyset pages ([`Store::target_report_page`]) and
//! each page is written before the next is read, so memory is one page whatever the
//! campaign's size. A CSV cell that a spreadsheet would run as a formula (starting
//! with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`; every
//! cell goes through that, not only the ones that look risky today.

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::store::report::ReportRow;
use crate::store::{Store, StoreError};

/// Targets read per page.
pub const REPORT_PAGE: i64 = 5_000;

/// The columns, in order (CSV header and JSON keys).
pub const COLUMNS: [&str; 22] = [
    "user_id",
    "status",
    "reason",
    "step",
    "attempts",
    "verification_state",
    "targeted_at",
    "claimed_at",
    "first_notified_at",
    "notified_at",
    "clicked_at",
    "started_at",
    "verified_at",
    "rejected_at",
    "outcome",
    "finalized_at",
    "sessions",
    "notifications",
    "clicks",
    "bounced_at",
    "bounce_diagnostic",
    "fallback_sent_at",
];

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Comma-separated, with a header row.
    Csv,
    /// JSON Lines: one object per target.
    Json,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write the report: {0}")]
    Csv(#[from] csv::Error),
}

/// A cell that a spreadsheet would not evaluate: a leading `'` before `= + - @`,
/// a tab or a carriage return.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(String::new, |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn cells(r: &ReportRow) -> [String; 22] {
    [
        r.user_id.clone(),
        r.status.clone(),
        r.reason.clone().unwrap_or_default(),
        r.step.to_string(),
        r.attempts.to_string(),
        r.verification_state.clone(),
        time(Some(r.targeted_at)),
        time(r.claimed_at),
        time(r.first_notified_at),
        time(r.notified_at),
        time(r.clicked_at),
        time(r.started_at),
        time(r.verified_at),
        time(r.rejected_at),
        r.outcome.clone().unwrap_or_default(),
        time(r.finalized_at),
        r.sessions.to_string(),
        r.notifications.to_string(),
        r.clicks.to_string(),
        time(r.bounced_at),
        r.bounce_diagnostic.clone().unwrap_or_default(),
        time(r.fallback_sent_at),
    ]
}

/// Writes every target of a campaign to `out` and returns how many rows.
///
/// # Errors
/// [`ReportError`]: the store failed or `out` refused a write. Rows already
/// written stay written; the caller says the report is incomplete.
pub async fn write_report<W: Write>(
    store: &Store,
    campaign_id: i64,
    format: ReportFormat,
    out: W,
) -> Result<u64, ReportError> {
    let out = std::io::BufWriter::with_capacity(1 << 16, out);
    match format {
        ReportFormat::Csv => {
            // the csv writer buffers and quotes; it writes straight through to `out`
            let mut w = csv::WriterBuilder::new().from_writer(out);
            w.write_record(COLUMNS)?;
            let rows = for_each_page(store, campaign_id, |page| {
                for r in page {
                    w.write_record(cells(r).iter().map(|s| neutralise(s)).map(|c| c.into_owned()))?;
                }
                Ok(())
            })
            .await?;
            w.flush()?;
            Ok(rows)
        }
        ReportFormat::Json => {
            let mut out = out;
            let rows = for_each_page(store, campaign_id, |page| {
                for r in page {
                    serde_json::to_writer(&mut out, r).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            })
            .await?;
            out.flush()?;
            Ok(rows)
        }
    }
}

/// Reads the campaign's targets page by page, handing each page to `write`.
async fn for_each_page(
    store: &Store,
    campaign_id: i64,
    mut write: impl FnMut(&[ReportRow]) -> Result<(), ReportError>,
) -> Result<u64, ReportError> {
    let mut after = String::new();
    let mut rows = 0u64;
    loop {
        let page = store.target_report_page(campaign_id, &after, REPORT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.user_id.clone();
        write(&page)?;
        rows += page.len() as u64;
        if (page.len() as i64) < REPORT_PAGE {
            break;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        for risky in ["=1+1", "+SUM(A1)", "-2", "@cmd", "\tx", "\rx"] {
            assert_eq!(neutralise(risky), format!("'{risky}"), "{risky:?}");
        }
        for safe in ["", "notified", "6f9619ff-8b86-d011-b42d-00c04fc964ff", "2026-01-02T03:04:05.000Z", "a=b"] {
            assert_eq!(neutralise(safe), safe);
        }
    }

    #[test]
    fn a_row_has_every_column() {
        let r = ReportRow {
            user_id: "u".into(),
            status: "notified".into(),
            reason: Some("=evil".into()),
            step: 1,
            attempts: 2,
            verification_state: "UNVERIFIED".into(),
            targeted_at: DateTime::<Utc>::MIN_UTC,
            claimed_at: None,
            first_notified_at: None,
            notified_at: None,
            clicked_at: None,
            started_at: None,
            verified_at: None,
            rejected_at: None,
            outcome: None,
            finalized_at: None,
            sessions: 1,
            notifications: 1,
            clicks: 0,
            bounced_at: None,
            bounce_diagnostic: Some("550 5.1.1 <address>: user unknown".into()),
            fallback_sent_at: None,
        };
        assert_eq!(cells(&r).len(), COLUMNS.len());
        let json = serde_json::to_value(&r).unwrap();
        for c in COLUMNS {
            assert!(json.get(c).is_some(), "JSON lacks {c}");
        }
    }
}
