//! The session ledger: one row per verification session the worker asked for,
//! written (`reserved`) *before* the API call, in the same transaction that checks
//! every per-user limit. A crash can only leave a row that counts against the
//! limits without a session behind it, never a session the ledger does not know.
//!
//! Row states: `reserved` → `issued` (the API answered with a URL, held in memory
//! only) → `delivered` | `delivery_failed`; `api_failed` (the API definitely
//! refused: it does not count); `unknown` (a crash or an unclear API failure left
//! the outcome unknown: it counts). The URL itself is never stored.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{NewEvent, event_insert};
use super::group::{Step, Tx};
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
        let args = ReserveArgs {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            step,
            worker: worker.to_owned(),
            now,
            session_ttl,
        };
        self.write(args, reserve_in_tx).await
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
        fn mark<'a>(&(session_id, now_ms): &'a (i64, i64), tx: &'a mut Tx) -> Step<'a, ()> {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE verification_sessions SET status = 'issued', issued_at = $2, updated_at = $2 \
                     WHERE session_id = $1 AND status = 'reserved'",
                )
                .bind(session_id)
                .bind(now_ms)
                .execute(&mut **tx)
                .await
                .map_err(query_err("session_mark_issued"))?;
                Ok(())
            })
        }
        self.write((session_id, to_millis(now)), mark).await
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
        self.write(args, record_delivery_in_tx).await
    }

    /// Stores the state `GET /v1/user` just reported, as `users sync` does (see
    /// [`Store::user_apply_state`]): the change time, a rejection dated now (the
    /// conservative start of the 24 h cooldown), the failure count, and the outcome of
    /// the user's notified targets.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_record_fresh_state(
        &self,
        user_id: &str,
        state: VerificationState,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        fn record<'a>(
            (backend, user_id, state, now): &'a (Backend, String, VerificationState, DateTime<Utc>),
            tx: &'a mut Tx,
        ) -> Step<'a, ()> {
            Box::pin(async move {
                let source = super::outcomes::StateSource::fresh_state("engine");
                super::outcomes::apply_state_fast_or_in_tx(tx, *backend, user_id, *state, *now, &source).await?;
                Ok(())
            })
        }
        self.write((self.backend(), user_id.to_owned(), state, now), record).await
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

/// What [`Store::session_reserve`] writes with.
struct ReserveArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    step: i64,
    worker: String,
    now: DateTime<Utc>,
    session_ttl: Duration,
}

/// [`Store::session_reserve`]'s statements, in the caller's transaction.
fn reserve_in_tx<'a>(args: &'a ReserveArgs, tx: &'a mut Tx) -> Step<'a, Reservation> {
    Box::pin(async move {
        let ReserveArgs { backend, campaign_id, ref user_id, step, ref worker, now, session_ttl } = *args;
        let (user_id, worker) = (user_id.as_str(), worker.as_str());
        let now_ms = to_millis(now);
        let window_start = now_ms - policy::session_window().num_milliseconds();
        // The user's standing, our claim on the target and the user's sessions that
        // count, in one statement; on Postgres the user's row is locked so that two
        // campaigns reserving for one user at once are serialised (SQLite's BEGIN
        // IMMEDIATE already is). The sessions come as "reserved_at:expires_at,…".
        let (lock, concat) = match backend {
            Backend::Postgres => ("FOR UPDATE OF u", "string_agg(s.reserved_at || ':' || s.expires_at, ',')"),
            Backend::Sqlite => ("", "group_concat(s.reserved_at || ':' || s.expires_at, ',')"),
        };
        let sql = format!(
            "SELECT u.verification_state, u.rejected_at, u.consecutive_failures, u.last_failure_at, \
               (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = $2 AND t.user_id = u.user_id \
                  AND {ours}) AS mine, \
               (SELECT {concat} FROM verification_sessions s WHERE s.user_id = u.user_id \
                  AND s.status <> 'api_failed' AND (s.reserved_at > $4 OR s.expires_at > $5)) AS slots \
             FROM users u WHERE u.user_id = $1 {lock}",
            ours = ours!("t.", "$3")
        );
        let user = sqlx::query(AssertSqlSafe(sql))
            .bind(user_id)
            .bind(campaign_id)
            .bind(worker)
            .bind(window_start)
            .bind(now_ms)
            .fetch_one(&mut **tx)
            .await
            .map_err(query_err("session_reserve user"))?;
        // fence: the target must still be ours
        let Some(attempts) = user.try_get::<Option<i64>, _>("mine").map_err(query_err("session_reserve fence"))? else {
            return Ok(Reservation::LostClaim);
        };
        // What an earlier, interrupted attempt at this step left behind. A first
        // attempt has none (a released claim never got this far, and a re-queued
        // target's old rows are already final), so only a rescued claim looks. The
        // sessions read above stay right: the rows it settles turn `unknown`, which
        // still counts.
        if attempts > 1 && settle_earlier_attempts(tx, campaign_id, user_id, step, worker, now).await? {
            return Ok(Reservation::Ambiguous);
        }

        let standing = standing_from_row(&user)?;
        let slots: Option<String> = user.try_get("slots").map_err(query_err("session_reserve ledger"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;

        let outcome = match policy::evaluate(&standing, &slots, now) {
            Verdict::Eligible => {
                let expires = now_ms + i64::try_from(session_ttl.as_millis()).unwrap_or(i64::MAX / 2);
                let id: i64 = sqlx::query(
                    "INSERT INTO verification_sessions \
                       (user_id, campaign_id, step, status, reserved_at, expires_at, updated_at) \
                     VALUES ($1, $2, $3, 'reserved', $4, $5, $4) RETURNING session_id",
                )
                .bind(user_id)
                .bind(campaign_id)
                .bind(step)
                .bind(now_ms)
                .bind(expires)
                .fetch_one(&mut **tx)
                .await
                .map_err(query_err("session_reserve insert"))?
                .try_get("session_id")
                .map_err(query_err("session_reserve insert"))?;
                Reservation::Reserved { session_id: id }
            }
            Verdict::Defer { reason, until } => {
                settle_in_tx(tx, campaign_id, user_id, worker, "deferred", reason.as_str(), Some(until), now).await?;
                Reservation::Deferred { reason, until }
            }
            Verdict::Skip(reason) => {
                settle_in_tx(tx, campaign_id, user_id, worker, "skipped", reason.as_str(), None, now).await?;
                Reservation::Skipped(reason)
            }
        };
        Ok(outcome)
    })
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

/// [`Store::session_record_delivery`]'s statements, in the caller's transaction.
fn record_delivery_in_tx<'a>(a: &'a DeliveryArgs, tx: &'a mut Tx) -> Step<'a, bool> {
    Box::pin(async move {
        let DeliveryArgs { backend, campaign_id, ref user_id, session_id, delivered, ref worker, now } = *a;
        let (user_id, worker) = (user_id.as_str(), worker.as_str());
        let now_ms = to_millis(now);
        let (session_status, event_kind) =
            if delivered { ("delivered", "target.notified") } else { ("delivery_failed", "target.failed") };
        let detail = serde_json::json!({
            "session_id": session_id, "reason": if delivered { None } else { Some("delivery_failed") }
        });
        if backend == Backend::Postgres {
            // one statement (data-modifying CTEs run as one atomic statement): a user's
            // record costs one round trip
            let target = delivery_target_update(delivered, "(SELECT expires_at FROM s)");
            let sql = format!(
                "WITH s AS (UPDATE verification_sessions SET status = $6, updated_at = $4 WHERE session_id = $5 \
                            RETURNING expires_at), \
                      t AS ({target} RETURNING 1), \
                      e AS (INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                            VALUES ($4, $3, $7, $1, $2, $8)) \
                 SELECT COUNT(*) AS n FROM t"
            );
            let n: i64 = sqlx::query(AssertSqlSafe(sql))
                .bind(campaign_id)
                .bind(user_id)
                .bind(worker)
                .bind(now_ms)
                .bind(session_id)
                .bind(session_status)
                .bind(event_kind)
                .bind(detail.to_string())
                .fetch_one(&mut **tx)
                .await
                .and_then(|r| r.try_get("n"))
                .map_err(query_err("session_record_delivery"))?;
            return Ok(n == 1);
        }
        sqlx::query("UPDATE verification_sessions SET status = $2, updated_at = $3 WHERE session_id = $1")
            .bind(session_id)
            .bind(session_status)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(query_err("session_record_delivery"))?;
        let target =
            delivery_target_update(delivered, "(SELECT expires_at FROM verification_sessions WHERE session_id = $5)");
        let n = sqlx::query(AssertSqlSafe(target))
            .bind(campaign_id)
            .bind(user_id)
            .bind(worker)
            .bind(now_ms)
            .bind(session_id)
            .execute(&mut **tx)
            .await
            .map_err(query_err("session_record_delivery target"))?
            .rows_affected();
        event_in_tx(tx, now, worker, event_kind, Some(campaign_id), Some(user_id), &detail).await?;
        Ok(n == 1)
    })
}

/// The target's side of a recorded delivery, for both engines: `notified`, or
/// `failed` / `delivery_failed` (re-queued by a later run), the claim released, and
/// the session's expiry taken from `expires_at` (an expression over `$5`, the
/// session). Binds: $1 campaign, $2 user, $3 worker, $4 now.
fn delivery_target_update(delivered: bool, expires_at: &str) -> String {
    let outcome = if delivered {
        "status = 'notified', reason = NULL, notifications = notifications + 1, notified_at = $4, \
         first_notified_at = COALESCE(first_notified_at, $4)"
    } else {
        "status = 'failed', reason = 'delivery_failed', finalized_at = $4"
    };
    format!(
        "UPDATE campaign_targets SET {outcome}, lease_owner = NULL, lease_expires_at = NULL, \
           sessions = sessions + 1, updated_at = $4, session_expires_at = {expires_at} \
         WHERE {}",
        our_target!()
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
