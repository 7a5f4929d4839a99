//! The audit chain: every event carries the hash of the one before it, so that an
//! event changed, removed or inserted behind the log's back is found.
//!
//! Decisions:
//! - **Sealed after the fact, not on insert.** Events are written in the hot path,
//!   per user, inside group-commit transactions of many processes at once; chaining
//!   them on insert would serialise every such transaction behind one lock. Events
//!   are inserted as before, and a *sealer* (one at a time: the head row locked
//!   `FOR UPDATE` on Postgres, the write lock on SQLite) gives each committed
//!   unsealed event its place (`chain_seq`, in sealing order: Postgres commits ids
//!   out of order), the previous event's hash and its own. Every command that writes
//!   events seals at its end, so does every run, the daemon after each run, and
//!   `campaign audit --verify` and `campaign evidence` before they read.
//! - **What a hash covers**: [`event_hash`], SHA-256 over a JSON array of the place,
//!   the previous hash and every stored column, the detail as its stored text.
//! - **Inserted rows**: a row with a seal that does not verify, a place beyond the
//!   head, or no seal although it is dated more than [`SEAL_GRACE`] before the last
//!   seal ran (every legitimate event is committed within moments of its time, and
//!   sealed by the next seal). The sealer never seals such a row, so it stays visible.
//! - **Limits**: SHA-256 is not keyed: whoever can write the database can rebuild the
//!   whole chain, or append plausible events after the head. The head's hash kept
//!   elsewhere (an evidence bundle's `manifest.json`, a log line) pins everything
//!   before it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long before the last seal an event may be dated and still be sealed: the
/// longest a legitimate event takes from its time to its commit (clock skew between
/// workers included). Older unsealed events were inserted behind the log's back.
pub const SEAL_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// Events sealed per transaction: bounds how long the sealer holds SQLite's write lock
/// (100,000 events seal in about 4 s on Postgres in a debug build).
const SEAL_BATCH: i64 = 5000;

/// An event's stored columns, as hashed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChainedEvent {
    pub event_id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub campaign_id: Option<i64>,
    pub user_id: Option<String>,
    /// The stored text, exactly.
    pub detail: Option<String>,
    pub chain_seq: Option<i64>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// The hash of the event at place `seq` after `prev_hash`: lower-case hex SHA-256
/// of the JSON array `[seq, prev_hash, event_id, at_ms, actor, kind, campaign_id,
/// user_id, detail]` (`null` for a missing value; the detail as stored text).
pub fn event_hash(seq: i64, prev_hash: &str, e: &ChainedEvent) -> String {
    let canonical =
        serde_json::json!([seq, prev_hash, e.event_id, e.at_ms, e.actor, e.kind, e.campaign_id, e.user_id, e.detail]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The chain's head: the last sealed place and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
    pub sealed_at: Option<DateTime<Utc>>,
}

/// The first thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainProblem {
    /// The event's columns or seal no longer hash to what was sealed.
    #[error("event {event_id} (chain place {seq}) was changed: its contents no longer match its hash")]
    Changed { event_id: i64, seq: i64 },
    /// The event before this one is not the one that was sealed there.
    #[error(
        "event {event_id} (chain place {seq}) no longer follows the event before it: event {before} was changed or replaced"
    )]
    Relinked { event_id: i64, seq: i64, before: i64 },
    /// A place in the chain is empty.
    #[error("the event at chain place {seq} was removed (it came after event {after})")]
    Removed { seq: i64, after: i64 },
    /// The last places of the chain are empty.
    #[error("the events at chain places {from} to {to} were removed (the head is at {to})")]
    TailRemoved { from: i64, to: i64 },
    /// A row that was never sealed, or sealed with a made-up place.
    #[error("event {event_id} was inserted behind the audit trail's back: {why}")]
    Inserted { event_id: i64, why: String },
    /// The head row does not match the last sealed event.
    #[error("the chain's head (place {seq}) does not match the last sealed event")]
    Head { seq: i64 },
}

/// What `campaign audit --verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Sealed events checked.
    pub checked: u64,
    /// Events written too recently to be sealed (a run in progress), not checked.
    pub unsealed: u64,
    pub head: ChainHead,
    pub problem: Option<ChainProblem>,
}

const COLUMNS: &str = "event_id, at, actor, kind, campaign_id, user_id, detail, chain_seq, prev_hash, hash";

fn chained_from_row(r: &sqlx::any::AnyRow) -> Result<ChainedEvent, sqlx::Error> {
    Ok(ChainedEvent {
        event_id: r.try_get("event_id")?,
        at_ms: r.try_get("at")?,
        actor: r.try_get("actor")?,
        kind: r.try_get("kind")?,
        campaign_id: r.try_get("campaign_id")?,
        user_id: r.try_get("user_id")?,
        detail: r.try_get("detail")?,
        chain_seq: r.try_get("chain_seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

async fn head_in(conn: &mut sqlx::AnyConnection, lock: &str) -> Result<ChainHead, StoreError> {
    let sql = format!("SELECT seq, hash, sealed_at FROM audit_chain WHERE id = 1{lock}");
    let r = sqlx::query(AssertSqlSafe(sql)).fetch_one(conn).await.map_err(query_err("audit_chain head"))?;
    Ok(ChainHead {
        seq: r.try_get("seq").map_err(query_err("audit_chain head"))?,
        hash: r.try_get("hash").map_err(query_err("audit_chain head"))?,
        sealed_at: r.try_get::<Option<i64>, _>("sealed_at").map_err(query_err("audit_chain head"))?.map(from_millis),
    })
}

impl Store {
    /// The chain's head as stored.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(query_err("audit_chain head"))?;
        head_in(&mut conn, "").await
    }

    /// Up to `limit` of the campaign's events with an id above `after`, oldest
    /// first, as stored (seals included): for an evidence bundle.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_events_page(
        &self,
        campaign_id: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE campaign_id = $1 AND event_id > $2 ORDER BY event_id LIMIT {limit}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(after)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("audit_events_page"))?;
        rows.iter().map(chained_from_row).collect::<Result<_, _>>().map_err(query_err("audit_events_page"))
    }

    /// [`Store::audit_seal`] at the end of a command or an action, where a failure
    /// is only a warning: the events are kept, and the next seal takes them.
    pub async fn audit_seal_or_warn(&self, now: DateTime<Utc>) {
        if let Err(e) = self.audit_seal(now).await {
            tracing::warn!(error = %e, "could not seal the audit events; the next command that writes events will");
        }
    }

    /// Seals every committed unsealed event (see the module docs), a batch per
    /// transaction, and returns how many and the head. Safe to run from any number
    /// of processes at once: sealers take turns.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a row already holds a place beyond the head (a
    /// made-up seal: `--verify` names it), [`StoreError::Query`].
    pub async fn audit_seal(&self, now: DateTime<Utc>) -> Result<(u64, ChainHead), StoreError> {
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let mut sealed = 0u64;
        // decided once per seal: the previous seal's time, less the grace
        let mut oldest: Option<i64> = None;
        let mut first = true;
        loop {
            // a batch transaction: the update joins its arguments to events by key,
            // never by a scan of the table (see Store::begin_batch)
            let mut tx = self.begin_batch().await?;
            let head = head_in(&mut tx, lock).await?;
            if first {
                oldest = head.sealed_at.map(|t| to_millis(t - SEAL_GRACE));
                first = false;
            }
            let beyond = sqlx::query("SELECT event_id FROM events WHERE chain_seq > $1 ORDER BY chain_seq LIMIT 1")
                .bind(head.seq)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err("audit_seal beyond"))?;
            if let Some(r) = beyond {
                let id: i64 = r.try_get("event_id").map_err(query_err("audit_seal beyond"))?;
                return Err(StoreError::Conflict(format!(
                    "event {id} holds a chain place beyond the head ({}): it was not sealed here; \
                     run `reverify campaign audit NAME --verify`",
                    head.seq
                )));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE chain_seq IS NULL AND at >= $1 ORDER BY event_id LIMIT {SEAL_BATCH}"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(oldest.unwrap_or(i64::MIN))
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("audit_seal select"))?;
            let events = rows
                .iter()
                .map(chained_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err("audit_seal select"))?;
            let (mut seq, mut prev) = (head.seq, head.hash.clone());
            let mut seals = Vec::with_capacity(events.len());
            for e in &events {
                seq += 1;
                let hash = event_hash(seq, &prev, e);
                seals.push(serde_json::json!([e.event_id, seq, prev, hash]));
                prev = hash;
            }
            if !seals.is_empty() {
                let sql = format!(
                    "UPDATE events SET chain_seq = x.s, prev_hash = x.p, hash = x.h FROM ({}) AS x \
                     WHERE events.event_id = x.id",
                    json_args(self.backend(), &[("id", Arg::Int), ("s", Arg::Int), ("p", Arg::Text), ("h", Arg::Text)])
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(json_rows(seals.into_iter()))
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("audit_seal update"))?;
            }
            sqlx::query("UPDATE audit_chain SET seq = $1, hash = $2, sealed_at = $3 WHERE id = 1")
                .bind(seq)
                .bind(prev.as_str())
                .bind(to_millis(now))
                .execute(&mut *tx)
                .await
                .map_err(query_err("audit_seal head"))?;
            tx.commit().await.map_err(query_err("audit_seal commit"))?;
            sealed += events.len() as u64;
            if (events.len() as i64) < SEAL_BATCH {
                return Ok((sealed, ChainHead { seq, hash: prev, sealed_at: Some(now) }));
            }
        }
    }

    /// Seals what is unsealed (unless a made-up seal is in the way), then checks the
    /// whole chain from its first place to the head and returns the first problem.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_verify(&self, now: DateTime<Utc>) -> Result<ChainReport, StoreError> {
        match self.audit_seal(now).await {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        let head = self.audit_head().await?;
        let mut report = ChainReport { checked: 0, unsealed: 0, head: head.clone(), problem: None };
        let (mut expect, mut prev, mut prev_id) = (1i64, GENESIS.to_owned(), 0i64);
        let mut after = i64::MIN;
        'pages: loop {
            let sql = format!("SELECT {COLUMNS} FROM events WHERE chain_seq > $1 ORDER BY chain_seq LIMIT 5000");
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(after)
                .fetch_all(self.pool())
                .await
                .map_err(query_err("audit_verify"))?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let e = chained_from_row(r).map_err(query_err("audit_verify"))?;
                let seq = e.chain_seq.unwrap_or_default();
                after = seq;
                let problem = if seq < expect || seq > head.seq {
                    Some(ChainProblem::Inserted {
                        event_id: e.event_id,
                        why: format!("it holds chain place {seq}, which the sealer never gave out"),
                    })
                } else if seq > expect {
                    Some(ChainProblem::Removed { seq: expect, after: prev_id })
                } else if e.hash.as_deref() != Some(event_hash(seq, e.prev_hash.as_deref().unwrap_or(""), &e).as_str())
                {
                    Some(ChainProblem::Changed { event_id: e.event_id, seq })
                } else if e.prev_hash.as_deref() != Some(prev.as_str()) {
                    Some(ChainProblem::Relinked { event_id: e.event_id, seq, before: prev_id })
                } else {
                    None
                };
                if problem.is_some() {
                    report.problem = problem;
                    break 'pages;
                }
                report.checked += 1;
                expect += 1;
                prev = e.hash.unwrap_or_default();
                prev_id = e.event_id;
            }
        }
        if report.problem.is_none() {
            if expect <= head.seq {
                report.problem = Some(ChainProblem::TailRemoved { from: expect, to: head.seq });
            } else if prev != head.hash {
                report.problem = Some(ChainProblem::Head { seq: head.seq });
            }
        }
        // unsealed rows: too recent to seal, or dated before the last seal's grace
        let oldest = head.sealed_at.map_or(i64::MIN, |t| to_millis(t - SEAL_GRACE));
        let stale =
            sqlx::query("SELECT event_id FROM events WHERE chain_seq IS NULL AND at < $1 ORDER BY event_id LIMIT 1")
                .bind(oldest)
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("audit_verify unsealed"))?;
        if let (None, Some(r)) = (&report.problem, stale) {
            let id: i64 = r.try_get("event_id").map_err(query_err("audit_verify unsealed"))?;
            report.problem = Some(ChainProblem::Inserted {
                event_id: id,
                why: "it was never sealed, and is dated before the last seal".into(),
            });
        }
        let n = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE chain_seq IS NULL")
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(query_err("audit_verify unsealed"))?;
        report.unsealed = u64::try_from(n).unwrap_or(0);
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
