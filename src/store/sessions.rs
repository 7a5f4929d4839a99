//! The session ledger: one row per verification session the worker asked for,
//! written (`reserved`) *before* the API call, in the same transaction that checks
//! every per-user limit. A crash can only leave a row that counts against the
//! limits without a session behind it, never a session the ledger does not know.
//!
//! Row states: `reserved` → `issued` (the API answered with a URL, held in memory
//! only) → `delivered` | `delivery_failed`; `api_failed` (the API definitely
//! refused: it does not count); `unknown` (a crash or an unclear API failure left
//! the outcome unknown: it counts). The URL itself is never stored.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{NewEvent, event_insert};
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SessionSlot, SkipReason, UserStanding, Verdict};
use crate::domain::{UserId, VerificationState};

/// What reserving a session for a claimed target came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// A ledger row is reserved: call the API now.
    Reserved { session_id: i64 },
    /// A limit or cooldown holds; the target is deferred until then.
    Deferred { reason: DeferReason, until: DateTime<Utc> },
    /// The user is not to be sent a session (the target is skipped).
    Skipped(SkipReason),
    /// An earlier attempt fetched a session and may have delivered it before the
    /// worker died; to never notify twice the target is failed `delivery_unknown`.
    Ambiguous,
    /// The claim was lost (the lease expired and another worker took it).
    LostClaim,
}

/// Appends an audit event inside a transaction (see [`super::events::event_insert`]).
pub(crate) async fn event_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    at: DateTime<Utc>,
    actor: &str,
    kind: &str,
    campaign_id: Option<i64>,
    user_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    let user_id = user_id.and_then(|u| UserId::parse(u).ok());
    let event = NewEvent { actor, kind, campaign_id, user_id: user_id.as_ref(), detail: Some(detail.clone()) };
    event_insert(tx, &event, at).await.map(|_| ())
}

/// What an earlier, interrupted attempt at this step left behind: every `reserved`,
/// `issued` or `delivered` row becomes `unknown` (it keeps counting). When one had
/// been issued or delivered, a message may have reached the user: the target is
/// failed `delivery_unknown` and `true` is returned.
async fn settle_earlier_attempts(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    campaign_id: i64,
    user_id: &str,
    step: i64,
    worker: &str,
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
        if status != "reserved" {
            ambiguous = true;
        }
        sqlx::query("UPDATE verification_sessions SET status = 'unknown', updated_at = $2 WHERE session_id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(query_err("session_reserve mark unknown"))?;
    }
    if ambiguous {
        settle_in_tx(tx, campaign_id, user_id, worker, "failed", "delivery_unknown", None, now).await?;
    }
    Ok(ambiguous)
}

impl Store {
    /// Reserves a session for a target `worker` has claimed, if every per-user limit
    /// allows it now; otherwise settles the target as deferred or skipped. One
    /// transaction; on Postgres the user's row is locked so that two campaigns
    /// reserving for one user at once are serialised.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn session_reserve(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
        session_ttl: Duration,
    ) -> Result<Reservation, StoreError> {
        self.session_reserve_fresh(campaign_id, user_id, step, worker, now, session_ttl, None).await
    }

    /// [`Store::session_reserve`], after recording in the same transaction the state
    /// `GET /v1/user` just reported (as [`Store::user_apply_state`] does for `users sync`), so
    /// that the reservation is judged on it. One write where there were two: nothing
    /// outside happens between them.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn session_reserve_fresh(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
        session_ttl: Duration,
        fresh: Option<VerificationState>,
    ) -> Result<Reservation, StoreError> {
        let args = ReserveArgs {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            step,
            worker: worker.to_owned(),
            now,
            session_ttl,
            fresh,
        };
        self.write_batched(args).await
    }

    /// Settles a claimed target whose earlier attempt at this step may have reached
    /// the user (a ledger row `issued` or `delivered`: the worker died before it
    /// recorded the outcome) as failed `delivery_unknown`, before any API call is
    /// made for it. Returns `true` when it did. Without this, a later failure of the
    /// fresh-state call (a refresh token lost to a crash mid-rotation, a 403) would
    /// record `skipped`/`failed` with that reason for a user who was sent a message.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_settle_if_ambiguous(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // the common case (a first attempt) is one indexed read, no write lock
        let any = sqlx::query(
            "SELECT session_id FROM verification_sessions \
             WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status IN ('issued', 'delivered') LIMIT 1",
        )
        .bind(campaign_id)
        .bind(user_id)
        .bind(step)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err("session_settle_if_ambiguous"))?;
        if any.is_none() {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        let mine = sqlx::query(concat!("SELECT attempts FROM campaign_targets WHERE ", our_target!()))
            .bind(campaign_id)
            .bind(user_id)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("session_settle_if_ambiguous fence"))?;
        if mine.is_none() {
            return Ok(false);
        }
        let settled = settle_earlier_attempts(&mut tx, campaign_id, user_id, step, worker, now).await?;
        tx.commit().await.map_err(query_err("session_settle_if_ambiguous commit"))?;
        Ok(settled)
    }

    /// The API answered with a session: from here a message may reach the user.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_mark_issued(&self, session_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write_batched(MarkIssued { backend: self.backend(), session_id, now_ms: to_millis(now) }).await
    }

    /// The API call failed. `definite` means the API surely created no session (a
    /// 4xx answer): the row stops counting. Otherwise it is `unknown` and keeps
    /// counting. The target is settled as given.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn session_record_api_failure(
        &self,
        campaign_id: i64,
        user_id: &str,
        session_id: i64,
        definite: bool,
        worker: &str,
        target_status: &str,
        reason: &str,
        not_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        struct Args {
            session_id: i64,
            definite: bool,
            settle: SettleArgs,
        }
        fn record<'a>(a: &'a Args, tx: &'a mut Tx) -> Step<'a, bool> {
            Box::pin(async move {
                sqlx::query("UPDATE verification_sessions SET status = $2, updated_at = $3 WHERE session_id = $1")
                    .bind(a.session_id)
                    .bind(if a.definite { "api_failed" } else { "unknown" })
                    .bind(to_millis(a.settle.now))
                    .execute(&mut **tx)
                    .await
                    .map_err(query_err("session_record_api_failure"))?;
                a.settle.run(tx).await
            })
        }
        let settle = SettleArgs::new(campaign_id, user_id, worker, target_status, reason, not_before, now);
        self.write(Args { session_id, definite, settle }, record).await
    }

    /// The message was delivered (or permanently refused): records the ledger row and
    /// the target in one transaction. Delivered targets become `notified`; a refused
    /// one becomes `failed` / `delivery_failed` and is re-queued by a later run.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_delivery(
        &self,
        campaign_id: i64,
        user_id: &str,
        session_id: i64,
        delivered: bool,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let args = DeliveryArgs {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            session_id,
            delivered,
            worker: worker.to_owned(),
            now,
        };
        self.write_batched(args).await
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

/// The sessions of [`Store::session_reserve`]'s one statement: `reserved_at:expires_at`
/// pairs of Unix milliseconds, comma-separated (empty: none).
fn parse_slots(text: &str) -> Result<Vec<SessionSlot>, StoreError> {
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

/// What [`Store::session_reserve_fresh`] writes with.
struct ReserveArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    step: i64,
    worker: String,
    now: DateTime<Utc>,
    session_ttl: Duration,
    fresh: Option<VerificationState>,
}

impl BatchWrite for ReserveArgs {
    type Out = Reservation;

    /// Two reservations for one user (two campaigns) never share a statement: the
    /// second must count the first's session.
    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Reservation>> {
        Box::pin(reserve_many(writes, tx))
    }
}

/// The reservations of a group (one per user), in four statements whatever their
/// number: the fresh states, the users' standings (locked on Postgres), the new
/// ledger rows, plus a statement for each target that is deferred or skipped.
async fn reserve_many(writes: &[&ReserveArgs], tx: &mut Tx) -> Result<Vec<Reservation>, StoreError> {
    let Some(backend) = writes.first().map(|w| w.backend) else { return Ok(Vec::new()) };
    record_fresh_states(backend, writes, tx).await?;
    let mut standing = read_standings(backend, writes, tx).await?;

    // decide each, in the order given
    let mut out: Vec<Option<Reservation>> = Vec::with_capacity(writes.len());
    let mut eligible: Vec<&ReserveArgs> = Vec::new();
    for w in writes {
        let row =
            standing.remove(&w.user_id).ok_or_else(|| StoreError::NotFound { what: "user", key: w.user_id.clone() })?;
        // fence: the target must still be ours
        let Some(attempts) = row.try_get::<Option<i64>, _>("mine").map_err(query_err("session_reserve fence"))? else {
            out.push(Some(Reservation::LostClaim));
            continue;
        };
        // What an earlier, interrupted attempt at this step left behind. A first
        // attempt has none (a released claim never got this far, and a re-queued
        // target's old rows are already final), so only a rescued claim looks. The
        // sessions read above stay right: the rows it settles turn `unknown`, which
        // still counts.
        if attempts > 1 && settle_earlier_attempts(tx, w.campaign_id, &w.user_id, w.step, &w.worker, w.now).await? {
            out.push(Some(Reservation::Ambiguous));
            continue;
        }
        let user_standing = standing_from_row(&row)?;
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve ledger"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;
        let (campaign_id, user_id, worker, now) = (w.campaign_id, w.user_id.as_str(), w.worker.as_str(), w.now);
        out.push(match policy::evaluate(&user_standing, &slots, now) {
            Verdict::Eligible => {
                eligible.push(w);
                None
            }
            Verdict::Defer { reason, until } => {
                settle_in_tx(tx, campaign_id, user_id, worker, "deferred", reason.as_str(), Some(until), now).await?;
                Some(Reservation::Deferred { reason, until })
            }
            Verdict::Skip(reason) => {
                settle_in_tx(tx, campaign_id, user_id, worker, "skipped", reason.as_str(), None, now).await?;
                Some(Reservation::Skipped(reason))
            }
        });
    }

    let mut ids = insert_reservations(backend, &eligible, tx).await?;
    out.into_iter()
        .zip(writes)
        .map(|(decided, w)| match decided {
            Some(r) => Ok(r),
            None => ids
                .remove(&w.user_id)
                .map(|session_id| Reservation::Reserved { session_id })
                .ok_or_else(|| StoreError::Conflict(format!("no ledger row came back for user {}", w.user_id))),
        })
        .collect()
}

/// The fresh states of `writes` that carry one. An unchanged state only moves
/// `synced_at`, and for a user REJECTED as before the rejection time as a sync does
/// (no earlier than our latest session, a first-seen time when none is known: see
/// [`super::outcomes::rejected_at_seen_sql`]), in one statement for all; a change
/// goes the whole way of [`super::outcomes::apply_state_in_tx`], one user at a time
/// (rare: a user who verified or was rejected since the import).
async fn record_fresh_states(backend: Backend, writes: &[&ReserveArgs], tx: &mut Tx) -> Result<(), StoreError> {
    let fresh: Vec<(&ReserveArgs, VerificationState)> =
        writes.iter().filter_map(|w| w.fresh.map(|f| (*w, f))).collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let rows =
        json_rows(fresh.iter().map(|(w, state)| serde_json::json!([w.user_id, to_millis(w.now), state.as_str()])));
    let from = json_args(backend, &[("u", Arg::Text), ("at", Arg::Int), ("st", Arg::Text)]);
    let sql = format!(
        "UPDATE users SET synced_at = x.at, \
           rejected_at = CASE WHEN x.st = 'REJECTED' THEN {rejected} ELSE users.rejected_at END \
         FROM ({from}) AS x \
         WHERE users.user_id = x.u AND users.verification_state = x.st RETURNING users.user_id",
        rejected = super::outcomes::rejected_at_seen_sql(backend, "users", None, "x.at")
    );
    let unchanged =
        returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "user_apply_state unchanged").await?;
    let source = super::outcomes::StateSource::fresh_state("engine");
    for (w, state) in fresh {
        if !unchanged.contains(&w.user_id) {
            super::outcomes::apply_state_in_tx(tx, backend, &w.user_id, state, w.now, &source).await?;
        }
    }
    Ok(())
}

/// The `user_id` column of the rows a statement returns.
pub(crate) async fn returned_user_ids(
    q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    tx: &mut Tx,
    op: &'static str,
) -> Result<HashSet<String>, StoreError> {
    q.fetch_all(&mut **tx)
        .await
        .map_err(query_err(op))?
        .iter()
        .map(|r| r.try_get::<String, _>("user_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err(op))
}

/// Each user's standing, our claim on the target and the user's sessions that
/// count, in one statement for every write, by user id. On Postgres the users' rows
/// are locked (in id order, so that two groups never wait on each other in a
/// circle): two campaigns reserving for one user at once are serialised (SQLite's
/// BEGIN IMMEDIATE already is). The sessions come as "reserved_at:expires_at,…".
async fn read_standings(
    backend: Backend,
    writes: &[&ReserveArgs],
    tx: &mut Tx,
) -> Result<HashMap<String, sqlx::any::AnyRow>, StoreError> {
    let rows = json_rows(writes.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let window_start = now_ms - policy::session_window().num_milliseconds();
        serde_json::json!([w.user_id, w.campaign_id, w.worker, window_start, now_ms])
    }));
    let from =
        json_args(backend, &[("u", Arg::Text), ("c", Arg::Int), ("w", Arg::Text), ("ws", Arg::Int), ("now", Arg::Int)]);
    let (concat, lock) = match backend {
        Backend::Postgres => ("string_agg(s.reserved_at || ':' || s.expires_at, ',')", "FOR UPDATE OF u"),
        Backend::Sqlite => ("group_concat(s.reserved_at || ':' || s.expires_at, ',')", ""),
    };
    let sql = format!(
        "SELECT u.user_id, u.verification_state, u.rejected_at, u.consecutive_failures, u.last_failure_at, \
           (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = u.user_id \
              AND {ours}) AS mine, \
           (SELECT {concat} FROM verification_sessions s WHERE s.user_id = u.user_id \
              AND s.status <> 'api_failed' AND (s.reserved_at > x.ws OR s.expires_at > x.now)) AS slots \
         FROM ({from}) AS x JOIN users u ON u.user_id = x.u ORDER BY u.user_id {lock}",
        ours = ours!("t.", "x.w")
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
async fn insert_reservations(
    backend: Backend,
    eligible: &[&ReserveArgs],
    tx: &mut Tx,
) -> Result<HashMap<String, i64>, StoreError> {
    if eligible.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = json_rows(eligible.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let expires = now_ms + i64::try_from(w.session_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        serde_json::json!([w.user_id, w.campaign_id, w.step, now_ms, expires])
    }));
    let args = json_args(
        backend,
        &[("u", Arg::Text), ("c", Arg::Int), ("step", Arg::Int), ("at", Arg::Int), ("exp", Arg::Int)],
    );
    let sql = format!(
        "INSERT INTO verification_sessions (user_id, campaign_id, step, status, reserved_at, expires_at, updated_at) \
         SELECT x.u, x.c, x.step, 'reserved', x.at, x.exp, x.at FROM ({args}) AS x RETURNING session_id, user_id"
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

/// [`Store::session_mark_issued`]: `reserved` → `issued`, for many sessions in one
/// statement.
struct MarkIssued {
    backend: Backend,
    session_id: i64,
    now_ms: i64,
}

impl BatchWrite for MarkIssued {
    type Out = ();

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<()>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let rows = json_rows(writes.iter().map(|w| serde_json::json!([w.session_id, w.now_ms])));
            let args = json_args(first.backend, &[("id", Arg::Int), ("at", Arg::Int)]);
            let sql = format!(
                "UPDATE verification_sessions SET status = 'issued', issued_at = x.at, updated_at = x.at \
                 FROM ({args}) AS x \
                 WHERE verification_sessions.session_id = x.id AND verification_sessions.status = 'reserved'"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(rows)
                .execute(&mut **tx)
                .await
                .map_err(query_err("session_mark_issued"))?;
            Ok(vec![(); writes.len()])
        })
    }
}

/// What [`Store::session_record_delivery`] writes with.
struct DeliveryArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    session_id: i64,
    delivered: bool,
    worker: String,
    now: DateTime<Utc>,
}

impl DeliveryArgs {
    fn kind_and_detail(&self) -> (&'static str, &'static str, String) {
        let (session_status, event_kind) =
            if self.delivered { ("delivered", "target.notified") } else { ("delivery_failed", "target.failed") };
        let detail = serde_json::json!({
            "session_id": self.session_id, "reason": if self.delivered { None } else { Some("delivery_failed") }
        });
        (session_status, event_kind, detail.to_string())
    }
}

impl BatchWrite for DeliveryArgs {
    /// Whether the target was still this worker's claim (and so was settled).
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            match writes.first().map(|w| w.backend) {
                None => Ok(Vec::new()),
                Some(Backend::Postgres) => record_deliveries_pg(writes, tx).await,
                Some(Backend::Sqlite) => {
                    let mut kept = Vec::with_capacity(writes.len());
                    for w in writes {
                        kept.push(record_delivery_sqlite(w, tx).await?);
                    }
                    Ok(kept)
                }
            }
        })
    }
}

/// Every delivery of a group in one statement (data-modifying CTEs run as one):
/// the ledger rows, the targets still claimed by their worker, the audit events.
async fn record_deliveries_pg(writes: &[&DeliveryArgs], tx: &mut Tx) -> Result<Vec<bool>, StoreError> {
    let rows = json_rows(writes.iter().map(|w| {
        let (session_status, event_kind, detail) = w.kind_and_detail();
        serde_json::json!([
            w.campaign_id,
            w.user_id,
            w.worker,
            to_millis(w.now),
            w.session_id,
            w.delivered,
            session_status,
            event_kind,
            detail
        ])
    }));
    let target = delivery_target_update("x.ok", "x.at", "s.expires_at");
    let sql = format!(
        "WITH x AS ({args}), \
              s AS (UPDATE verification_sessions s SET status = x.st, updated_at = x.at FROM x \
                    WHERE s.session_id = x.sid RETURNING s.session_id, s.expires_at), \
              t AS ({target} FROM x JOIN s ON s.session_id = x.sid \
                    WHERE t.campaign_id = x.c AND t.user_id = x.u AND {fence} \
                    RETURNING t.campaign_id, t.user_id), \
              e AS (INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                    SELECT x.at, x.w, x.kind, x.c, x.u, x.detail FROM x ORDER BY x.n) \
         SELECT x.n, EXISTS (SELECT 1 FROM t WHERE t.campaign_id = x.c AND t.user_id = x.u) AS kept \
         FROM x ORDER BY x.n",
        fence = ours!("t.", "x.w"),
        args = json_args(
            Backend::Postgres,
            &[
                ("c", Arg::Int),
                ("u", Arg::Text),
                ("w", Arg::Text),
                ("at", Arg::Int),
                ("sid", Arg::Int),
                ("ok", Arg::Bool),
                ("st", Arg::Text),
                ("kind", Arg::Text),
                ("detail", Arg::Text),
            ]
        ),
    );
    let kept = sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery"))?
        .iter()
        .map(|r| r.try_get::<bool, _>("kept"))
        .collect::<Result<Vec<bool>, _>>()
        .map_err(query_err("session_record_delivery"))?;
    Ok(kept)
}

/// One delivery on SQLite: its statements one after another (SQLite runs them in
/// process, so a statement costs little of its own).
async fn record_delivery_sqlite(a: &DeliveryArgs, tx: &mut Tx) -> Result<bool, StoreError> {
    let DeliveryArgs { campaign_id, ref user_id, session_id, delivered, ref worker, now, .. } = *a;
    let (session_status, event_kind, detail) = a.kind_and_detail();
    let now_ms = to_millis(now);
    sqlx::query("UPDATE verification_sessions SET status = $2, updated_at = $3 WHERE session_id = $1")
        .bind(session_id)
        .bind(session_status)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery"))?;
    let target = format!(
        "{} WHERE {}",
        delivery_target_update("$6", "$4", "(SELECT expires_at FROM verification_sessions WHERE session_id = $5)"),
        our_target!()
    );
    let n = sqlx::query(AssertSqlSafe(target))
        .bind(campaign_id)
        .bind(user_id.as_str())
        .bind(worker.as_str())
        .bind(now_ms)
        .bind(session_id)
        .bind(delivered)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery target"))?
        .rows_affected();
    sqlx::query("INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(now_ms)
        .bind(worker.as_str())
        .bind(event_kind)
        .bind(campaign_id)
        .bind(user_id.as_str())
        .bind(detail)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery event"))?;
    Ok(n == 1)
}

/// The target's side of a recorded delivery, for both engines, as `UPDATE
/// campaign_targets t SET …` (the caller adds what it joins and the fence): when
/// `ok` (an SQL boolean) the target is `notified`, otherwise `failed` /
/// `delivery_failed` (re-queued by a later run); either way the claim is released
/// and the session's expiry is taken from `expires_at`. `at` is the time.
fn delivery_target_update(ok: &str, at: &str, expires_at: &str) -> String {
    format!(
        "UPDATE campaign_targets AS t SET \
           status = CASE WHEN {ok} THEN 'notified' ELSE 'failed' END, \
           reason = CASE WHEN {ok} THEN NULL ELSE 'delivery_failed' END, \
           notifications = notifications + CASE WHEN {ok} THEN 1 ELSE 0 END, \
           notified_at = CASE WHEN {ok} THEN {at} ELSE notified_at END, \
           first_notified_at = CASE WHEN {ok} THEN COALESCE(first_notified_at, {at}) ELSE first_notified_at END, \
           finalized_at = CASE WHEN {ok} THEN finalized_at ELSE {at} END, \
           lease_owner = NULL, lease_expires_at = NULL, sessions = sessions + 1, updated_at = {at}, \
           session_expires_at = {expires_at}"
    )
}

fn standing_from_row(r: &sqlx::any::AnyRow) -> Result<UserStanding, StoreError> {
    let state: String = r.try_get("verification_state").map_err(query_err("user standing"))?;
    let state = state.parse::<VerificationState>().map_err(|e| StoreError::Conflict(e.to_string()))?;
    let rejected_at: Option<i64> = r.try_get("rejected_at").map_err(query_err("user standing"))?;
    let failures: i64 = r.try_get("consecutive_failures").map_err(query_err("user standing"))?;
    let last_failure_at: Option<i64> = r.try_get("last_failure_at").map_err(query_err("user standing"))?;
    Ok(UserStanding {
        state,
        rejected_at: rejected_at.map(from_millis),
        consecutive_failures: u32::try_from(failures).unwrap_or(u32::MAX),
        last_failure_at: last_failure_at.map(from_millis),
    })
}

/// A target's settlement, owned, to be written in a group (see [`settle_in_tx`]).
pub(crate) struct SettleArgs {
    campaign_id: i64,
    user_id: String,
    worker: String,
    status: String,
    reason: String,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl SettleArgs {
    pub(crate) fn new(
        campaign_id: i64,
        user_id: &str,
        worker: &str,
        status: &str,
        reason: &str,
        not_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            campaign_id,
            user_id: user_id.to_owned(),
            worker: worker.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            not_before,
            now,
        }
    }

    pub(crate) async fn run(&self, tx: &mut Tx) -> Result<bool, StoreError> {
        let a = self;
        settle_in_tx(tx, a.campaign_id, &a.user_id, &a.worker, &a.status, &a.reason, a.not_before, a.now).await
    }

    /// As a write of its own (see [`Store::write`]).
    pub(crate) fn write<'a>(a: &'a SettleArgs, tx: &'a mut Tx) -> Step<'a, bool> {
        Box::pin(a.run(tx))
    }
}

/// [`Store::target_settle`] inside a transaction already open.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    campaign_id: i64,
    user_id: &str,
    worker: &str,
    status: &str,
    reason: &str,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now_ms = to_millis(now);
    let n = sqlx::query(concat!(
        "UPDATE campaign_targets SET status = $4, reason = $5, not_before = $6, lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = $7, \
           finalized_at = CASE WHEN $4 IN ('skipped', 'failed') THEN $7 ELSE NULL END \
         WHERE ",
        our_target!()
    ))
    .bind(campaign_id)
    .bind(user_id)
    .bind(worker)
    .bind(status)
    .bind(reason)
    .bind(not_before.map(to_millis))
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_settle"))?
    .rows_affected();
    if n == 1 {
        event_in_tx(
            tx,
            now,
            worker,
            &format!("target.{status}"),
            Some(campaign_id),
            Some(user_id),
            &serde_json::json!({ "reason": reason, "not_before": not_before }),
        )
        .await?;
    }
    Ok(n == 1)
}
