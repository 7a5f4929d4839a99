//! The session ledger (`verification_sessions`): one row per verification session
//! the worker asked for, written `reserved` *before* the API call, in the same
//! transaction that checks every per-user limit. A crash can only leave a row that
//! counts against the limits without a session behind it, never a session the
//! ledger does not know. The URL itself is never stored.
//!
//! The row states are [`SessionStatus`]. This file holds the ledger's statements;
//! the transitions that also move a target or a user (a reservation, a delivery)
//! compose them in `store::ledger` and `store::clicks`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::targets::Claim;
use super::users::STANDING_COLUMNS;
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::policy::{self, SessionSlot};
use crate::domain::{SessionStatus, TargetReason};

/// How long the ledger counts a session: the API's session lifetime, plus a margin
/// for clock skew with the API (`session_expiry_margin`). The daily cap counts a
/// session from the API's answer plus the margin (`counted_at`), and the
/// concurrency limit until the answer plus the lifetime plus the margin, so that a
/// deferral never comes due before the API frees the slot. Until the API answers,
/// the reservation's own time stands in for the answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLife {
    pub ttl: Duration,
    pub margin: Duration,
}

impl From<Duration> for SessionLife {
    /// A lifetime with no margin.
    fn from(ttl: Duration) -> Self {
        Self { ttl, margin: Duration::ZERO }
    }
}

impl SessionLife {
    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// (counted_at, expires_at) of a session the API answered (or may have) at `at`.
    pub(crate) fn counted_and_expiry(&self, at_ms: i64) -> (i64, i64) {
        let margin = Self::millis(self.margin);
        (at_ms.saturating_add(margin), at_ms.saturating_add(Self::millis(self.ttl)).saturating_add(margin))
    }
}

/// What [`Store::session_mark_issued`] records.
#[derive(Debug, Clone)]
pub struct IssuedParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub step: i64,
    pub session_id: i64,
    /// When the API answered.
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

/// How a delivery ended, as `Store::session_record_delivery` and
/// `Store::link_record_delivery` record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryRecord {
    /// The channel accepted the message: the ledger row `delivered`, the target
    /// `notified`.
    Delivered,
    /// It was not delivered (refused, or the channel stayed down): the row
    /// `delivery_failed`, the target `failed` / `delivery_failed`, which a later run
    /// re-queues.
    Failed,
    /// It may have been delivered (an SMTP connection lost after the message data):
    /// the row `unknown` (it keeps counting), the target `failed` /
    /// `delivery_unknown`, which no later run re-queues on its own.
    Unknown,
}

/// A delivery's outcome, and what the message was when known (see
/// [`crate::domain::MessageDigest`]): the latter goes into the audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub record: DeliveryRecord,
    pub sent: Option<crate::domain::MessageDigest>,
}

impl From<DeliveryRecord> for DeliveryOutcome {
    fn from(record: DeliveryRecord) -> Self {
        Self { record, sent: None }
    }
}

/// What `Store::session_record_delivery` and `Store::link_record_delivery` record:
/// how the message that carried session (or link) `id` of a claimed target went.
#[derive(Debug, Clone)]
pub struct DeliveryParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    /// The session's id (`session_record_delivery`) or the link's (`link_record_delivery`).
    pub id: i64,
    pub outcome: DeliveryOutcome,
    pub now: DateTime<Utc>,
}

impl DeliveryOutcome {
    /// The audit event's detail: `base`, plus the template and message hashes.
    pub(crate) fn detail(&self, mut base: serde_json::Value) -> serde_json::Value {
        if let Some(d) = &self.sent {
            base["template"] = d.template.clone().into();
            base["template_sha256"] = d.template_sha256.clone().into();
            base["message_sha256"] = d.message_sha256.clone().into();
        }
        base
    }
}

impl DeliveryRecord {
    /// (ledger row status, audit event kind, target reason).
    pub(crate) fn recorded(self) -> (SessionStatus, &'static str, Option<TargetReason>) {
        match self {
            DeliveryRecord::Delivered => (SessionStatus::Delivered, "target.notified", None),
            DeliveryRecord::Failed => {
                (SessionStatus::DeliveryFailed, "target.failed", Some(TargetReason::DeliveryFailed))
            }
            DeliveryRecord::Unknown => (SessionStatus::Unknown, "target.failed", Some(TargetReason::DeliveryUnknown)),
        }
    }
}

/// One claimed user asking the ledger for a session, as its batched statements
/// take it.
pub(crate) struct Ask<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub step: i64,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

/// What an earlier, interrupted attempt at this step left behind: every `reserved`,
/// `issued` or `delivered` row becomes `unknown` (it keeps counting). Returns `true`
/// when one had been issued or delivered: a message may have reached the user.
pub(crate) async fn session_earlier_attempts_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    user_id: &str,
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now_ms = to_millis(now);
    let earlier = sqlx::query(
        "SELECT session_id, status FROM verification_sessions \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status IN ('reserved', 'issued', 'delivered')",
    )
    .bind(campaign_id)
    .bind(user_id)
    .bind(step)
    .fetch_all(&mut **tx)
    .await
    .map_err(query_err("session_reserve earlier"))?;
    let mut ambiguous = false;
    for row in &earlier {
        let status: String = row.try_get("status").map_err(query_err("session_reserve earlier"))?;
        let id: i64 = row.try_get("session_id").map_err(query_err("session_reserve earlier"))?;
        // A reserved row never reached a message: the session may exist, so it
        // keeps counting, as `unknown`. An issued or delivered one may have
        // reached the user.
        if status != SessionStatus::Reserved.as_str() {
            ambiguous = true;
        }
        sqlx::query("UPDATE verification_sessions SET status = 'unknown', updated_at = $2 WHERE session_id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(query_err("session_reserve mark unknown"))?;
    }
    Ok(ambiguous)
}

/// Whether an attempt at this step was issued or delivered (one indexed read on
/// the pool, no write lock): the common first attempt has none.
pub(crate) async fn session_any_sent(
    store: &Store,
    campaign_id: i64,
    user_id: &str,
    step: i64,
) -> Result<bool, StoreError> {
    let any = sqlx::query(
        "SELECT session_id FROM verification_sessions \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status IN ('issued', 'delivered') LIMIT 1",
    )
    .bind(campaign_id)
    .bind(user_id)
    .bind(step)
    .fetch_optional(store.pool())
    .await
    .map_err(query_err("session_settle_if_ambiguous"))?;
    Ok(any.is_some())
}

/// The session call failed: `definite` (the API surely created no session, a 4xx
/// answer) makes the row `api_failed`, which stops counting; otherwise it is
/// `unknown` and keeps counting, as a session the API may have made as late as now.
pub(crate) async fn session_api_failed_in_tx(
    tx: &mut Tx,
    session_id: i64,
    definite: bool,
    now: DateTime<Utc>,
    life: SessionLife,
) -> Result<(), StoreError> {
    let (counted_at, expires_at) = life.counted_and_expiry(to_millis(now));
    let sql = if definite {
        "UPDATE verification_sessions SET status = 'api_failed', updated_at = $2 WHERE session_id = $1"
    } else {
        "UPDATE verification_sessions SET status = 'unknown', updated_at = $2, \
           counted_at = CASE WHEN counted_at > $3 THEN counted_at ELSE $3 END, \
           expires_at = CASE WHEN expires_at > $4 THEN expires_at ELSE $4 END \
         WHERE session_id = $1"
    };
    let q = sqlx::query(sql).bind(session_id).bind(to_millis(now));
    let q = if definite { q } else { q.bind(counted_at).bind(expires_at) };
    q.execute(&mut **tx).await.map_err(query_err("session_record_api_failure"))?;
    Ok(())
}

/// The ledger's part of a group's delivery statement (Postgres, `store::ledger`):
/// each session of `rows` (a CTE with `sid`, `st` and `at`) takes its status,
/// returning the sessions' ids and expiries.
pub(crate) fn delivery_session_update(rows: &str) -> String {
    format!(
        "UPDATE verification_sessions s SET status = {rows}.st, updated_at = {rows}.at FROM {rows} \
         WHERE s.session_id = {rows}.sid RETURNING s.session_id, s.expires_at"
    )
}

/// One delivery's ledger row, on its own (SQLite; Postgres writes a group's in the
/// delivery statement of `store::ledger`).
pub(crate) async fn session_delivered_in_tx(
    tx: &mut Tx,
    session_id: i64,
    status: SessionStatus,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE verification_sessions SET status = $2, updated_at = $3 WHERE session_id = $1")
        .bind(session_id)
        .bind(status.as_str())
        .bind(to_millis(now))
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery"))?;
    Ok(())
}

impl Store {
    /// The API answered with a session: from here a message may reach the user, so
    /// the target must still be this worker's claim. Returns `false` when it is not
    /// (the lease ran out during a stall and another worker took the target over):
    /// the row is then recorded `orphaned` (it keeps counting) and the caller drops
    /// the URL unsent. Either way the session counts from the API's answer.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_mark_issued(&self, p: IssuedParams<'_>) -> Result<bool, StoreError> {
        let (counted_at, expires_at) = p.life.counted_and_expiry(to_millis(p.now));
        self.write_batched(MarkIssued {
            backend: self.backend(),
            claim: p.claim.clone(),
            session_id: p.session_id,
            now_ms: to_millis(p.now),
            counted_at,
            expires_at,
        })
        .await
    }

    /// Sessions the ledger counts for a campaign (everything but definite API refusals).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_count(&self, campaign_id: i64) -> Result<i64, StoreError> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM verification_sessions WHERE campaign_id = $1 AND status <> 'api_failed' \
             AND status <> 'reserved'",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(query_err("session_count"))
    }
}

/// The sessions of a reservation's read: `counted_at:expires_at`
/// pairs of Unix milliseconds, comma-separated (empty: none).
pub(crate) fn parse_slots(text: &str) -> Result<Vec<SessionSlot>, StoreError> {
    let bad = || StoreError::Conflict(format!("session_reserve: unreadable session list {text:?}"));
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (r, e) = pair.split_once(':').ok_or_else(bad)?;
            let (r, e) = (r.trim().parse::<i64>().map_err(|_| bad())?, e.trim().parse::<i64>().map_err(|_| bad())?);
            Ok(SessionSlot { reserved_at: from_millis(r), expires_at: from_millis(e) })
        })
        .collect()
}

/// The sessions that count against the limits of user `u` at `now` (SQL values or
/// columns), with `window_start` = `now` - 24 h, as one `counted_at:expires_at,…`
/// column: the one definition of which ledger rows count (everything the API may
/// have made: not a definite refusal) for the runs' reservations and the clicks'.
pub(crate) fn counted_sessions_sql(backend: Backend, window_start: &str, now: &str) -> String {
    let concat = match backend {
        Backend::Postgres => "string_agg(s.counted_at || ':' || s.expires_at, ',')",
        Backend::Sqlite => "group_concat(s.counted_at || ':' || s.expires_at, ',')",
    };
    format!(
        "(SELECT {concat} FROM verification_sessions s WHERE s.user_id = u.user_id \
           AND s.status <> 'api_failed' AND (s.counted_at > {window_start} OR s.expires_at > {now}))"
    )
}

/// Each user's standing, our claim on the target and the user's sessions that
/// count, by user id. The users' rows are locked first, in a statement of their own
/// (on Postgres, in id order, so that two groups never wait on each other in a
/// circle), and only then read, in a later statement: under READ COMMITTED each
/// statement reads from a snapshot taken when it starts, so a read in the locking
/// statement itself would miss a reservation committed while it waited for the lock
/// (seen: a fourth concurrent session reached the API). SQLite's BEGIN IMMEDIATE
/// serialises writers already. The sessions come as "counted_at:expires_at,…".
pub(crate) async fn session_read_standings(
    backend: Backend,
    writes: &[Ask<'_>],
    tx: &mut Tx,
) -> Result<HashMap<String, sqlx::any::AnyRow>, StoreError> {
    let rows = json_rows(writes.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let window_start = now_ms - policy::session_window().num_milliseconds();
        serde_json::json!([w.claim.user_id.as_str(), w.claim.campaign_id, w.claim.worker, window_start, now_ms])
    }));
    let from =
        json_args(backend, &[("u", Arg::Text), ("c", Arg::Int), ("w", Arg::Text), ("ws", Arg::Int), ("now", Arg::Int)]);
    if backend == Backend::Postgres {
        let lock = format!(
            "SELECT u.user_id FROM users u WHERE u.user_id IN (SELECT x.u FROM ({from}) AS x) \
             ORDER BY u.user_id FOR UPDATE"
        );
        sqlx::query(AssertSqlSafe(lock))
            .bind(rows.clone())
            .fetch_all(&mut **tx)
            .await
            .map_err(query_err("session_reserve lock"))?;
    }
    let sql = format!(
        "SELECT u.user_id, {STANDING_COLUMNS}, \
           (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = u.user_id \
              AND {ours}) AS mine, \
           {slots} AS slots \
         FROM ({from}) AS x JOIN users u ON u.user_id = x.u",
        ours = ours!("t.", "x.w"),
        slots = counted_sessions_sql(backend, "x.ws", "x.now"),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_reserve user"))?;
    rows.into_iter()
        .map(|r| Ok((r.try_get::<String, _>("user_id").map_err(query_err("session_reserve user"))?, r)))
        .collect()
}

/// The ledger rows of the eligible, `reserved`, in one statement; their ids by user.
pub(crate) async fn session_insert_reserved(
    backend: Backend,
    eligible: &[&Ask<'_>],
    tx: &mut Tx,
) -> Result<HashMap<String, i64>, StoreError> {
    if eligible.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = json_rows(eligible.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let (counted, expires) = w.life.counted_and_expiry(now_ms);
        serde_json::json!([w.claim.user_id.as_str(), w.claim.campaign_id, w.step, now_ms, expires, counted])
    }));
    let args = json_args(
        backend,
        &[("u", Arg::Text), ("c", Arg::Int), ("step", Arg::Int), ("at", Arg::Int), ("exp", Arg::Int), ("ca", Arg::Int)],
    );
    let sql = format!(
        "INSERT INTO verification_sessions \
           (user_id, campaign_id, step, status, reserved_at, expires_at, updated_at, counted_at) \
         SELECT x.u, x.c, x.step, 'reserved', x.at, x.exp, x.at, x.ca FROM ({args}) AS x RETURNING session_id, user_id"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_reserve insert"))?
        .iter()
        .map(|r| Ok((r.try_get::<String, _>("user_id")?, r.try_get::<i64, _>("session_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_err("session_reserve insert"))
}

/// [`Store::session_mark_issued`]: `reserved` → `issued` where the target is still
/// the worker's claim, for many sessions in one statement; the others → `orphaned`.
struct MarkIssued {
    backend: Backend,
    claim: Claim,
    session_id: i64,
    now_ms: i64,
    counted_at: i64,
    expires_at: i64,
}

impl BatchWrite for MarkIssued {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let rows = json_rows(writes.iter().map(|w| {
                serde_json::json!([
                    w.session_id,
                    w.now_ms,
                    w.claim.campaign_id,
                    w.claim.user_id.as_str(),
                    w.claim.worker,
                    w.counted_at,
                    w.expires_at
                ])
            }));
            let args = json_args(
                first.backend,
                &[
                    ("id", Arg::Int),
                    ("at", Arg::Int),
                    ("c", Arg::Int),
                    ("u", Arg::Text),
                    ("w", Arg::Text),
                    ("ca", Arg::Int),
                    ("exp", Arg::Int),
                ],
            );
            // The fence reads the target by its key; a takeover commits under the
            // target's row, so a claim seen here was ours when this group committed.
            let sql = format!(
                "UPDATE verification_sessions SET                    status = CASE WHEN verification_sessions.status = 'reserved' AND EXISTS (                        SELECT 1 FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = x.u AND {fence})                      THEN 'issued' ELSE 'orphaned' END,                    issued_at = x.at, updated_at = x.at, counted_at = x.ca,                    expires_at = CASE WHEN verification_sessions.expires_at > x.exp                      THEN verification_sessions.expires_at ELSE x.exp END                  FROM ({args}) AS x                  WHERE verification_sessions.session_id = x.id                    AND verification_sessions.status IN ('reserved', 'unknown')                  RETURNING verification_sessions.session_id, verification_sessions.status",
                fence = ours!("t.", "x.w"),
            );
            let issued: HashSet<i64> = sqlx::query(AssertSqlSafe(sql))
                .bind(rows)
                .fetch_all(&mut **tx)
                .await
                .map_err(query_err("session_mark_issued"))?
                .iter()
                .filter(|r| r.try_get::<String, _>("status").is_ok_and(|st| st == SessionStatus::Issued.as_str()))
                .map(|r| r.try_get::<i64, _>("session_id"))
                .collect::<Result<_, _>>()
                .map_err(query_err("session_mark_issued"))?;
            Ok(writes.iter().map(|w| issued.contains(&w.session_id)).collect())
        })
    }
}

/// One user's standing and the sessions that count (`slots`, see
/// [`counted_sessions_sql`]) at `now`, read in `tx` after the caller locked the user.
pub(crate) async fn session_read_standing(
    tx: &mut Tx,
    backend: Backend,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<sqlx::any::AnyRow>, StoreError> {
    let now_ms = to_millis(now);
    let window_start = now_ms - policy::session_window().num_milliseconds();
    let sql = format!(
        "SELECT {STANDING_COLUMNS}, {slots} AS slots FROM users u WHERE u.user_id = $1",
        slots = counted_sessions_sql(backend, "$2", "$3"),
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(window_start)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await
        .map_err(query_err("session_reserve_click read"))
}

/// A click's ledger row, for [`session_insert_click_in_tx`]: step `step` of the
/// target (campaign, user), reserved through link `link_id`.
#[derive(Clone, Copy)]
pub(crate) struct ClickRow<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub link_id: i64,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

/// A click's ledger row, `reserved`, carrying its link; its id.
pub(crate) async fn session_insert_click_in_tx(tx: &mut Tx, row: &ClickRow<'_>) -> Result<i64, StoreError> {
    let ClickRow { campaign_id, user_id, step, link_id, now, life } = *row;
    let now_ms = to_millis(now);
    let (counted_at, expires_at) = life.counted_and_expiry(now_ms);
    sqlx::query(
        "INSERT INTO verification_sessions (user_id, campaign_id, step, status, reserved_at, expires_at, \
           updated_at, counted_at, link_id) VALUES ($1, $2, $3, 'reserved', $4, $5, $4, $6, $7) \
         RETURNING session_id",
    )
    .bind(user_id)
    .bind(campaign_id)
    .bind(step)
    .bind(now_ms)
    .bind(expires_at)
    .bind(counted_at)
    .bind(link_id)
    .fetch_one(&mut **tx)
    .await
    .and_then(|r| r.try_get("session_id"))
    .map_err(query_err("session_reserve_click insert"))
}

/// How a click's session call ended, on its ledger row: `delivered` (counted from
/// now plus the margin), `api_failed`, or `unknown` (counted, as a session made as
/// late as now). Returns the expiry it counts to (Unix ms).
pub(crate) async fn session_record_click_row(
    store: &Store,
    session_id: i64,
    status: SessionStatus,
    now: DateTime<Utc>,
    life: SessionLife,
) -> Result<i64, StoreError> {
    let now_ms = to_millis(now);
    let (counted_at, expires_at) = life.counted_and_expiry(now_ms);
    let issued = (status == SessionStatus::Delivered).then_some(now_ms);
    sqlx::query(
        "UPDATE verification_sessions SET status = $2, issued_at = $3, updated_at = $4, \
           counted_at = CASE WHEN $2 = 'api_failed' OR counted_at > $5 THEN counted_at ELSE $5 END, \
           expires_at = CASE WHEN $2 = 'api_failed' OR expires_at > $6 THEN expires_at ELSE $6 END \
         WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(status.as_str())
    .bind(issued)
    .bind(now_ms)
    .bind(counted_at)
    .bind(expires_at)
    .execute(store.pool())
    .await
    .map_err(query_err("session_record_click"))?;
    Ok(expires_at)
}

/// A delivered message bounced: its ledger row becomes `bounced` (it keeps counting:
/// the session exists).
pub(crate) async fn session_bounced_in_tx(tx: &mut Tx, session_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE verification_sessions SET status = 'bounced', updated_at = $2 \
         WHERE session_id = $1 AND status = 'delivered'",
    )
    .bind(session_id)
    .bind(to_millis(now))
    .execute(&mut **tx)
    .await
    .map_err(query_err("session_bounced"))?;
    Ok(())
}
