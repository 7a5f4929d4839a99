//! The per-user transitions of a run, each one store function over one named
//! parameter struct: reserve a session under every limit, record the session
//! call's failure, record the delivery, settle an interrupted attempt. Each
//! composes the statements of the tables it moves (`sessions`, `targets`, `users`
//! through `outcomes`, `events`) in one transaction, and the hot ones are batched
//! writes (see `store::group`): a group's reservations are four statements whatever
//! their number.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::event_in_tx;
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::outcomes::record_fresh_states;
use super::sessions::{
    Ask, DeliveryOutcome, DeliveryRecord, SessionLife, parse_slots, session_any_sent, session_api_failed_in_tx,
    session_delivered_in_tx, session_earlier_attempts_in_tx, session_insert_reserved, session_read_standings,
};
use super::targets::{SettleParams, TargetDelivered, delivery_target_update, settle_in_tx, target_delivered_in_tx};
use super::users::{FreshState, standing_from_row};
use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SkipReason, Verdict};
use crate::domain::{TargetReason, Transition, VerificationState};

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

/// What [`Store::session_reserve`] reserves for: step `step` of the target
/// (campaign, user) that `worker` claimed.
#[derive(Debug, Clone)]
pub struct ReserveParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    /// The worker that must still hold the target's claim.
    pub worker: &'a str,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
    /// The state `GET /v1/user` just reported, recorded first and judged on.
    pub fresh: Option<VerificationState>,
}

/// What [`Store::session_settle_if_ambiguous`] looks at.
#[derive(Debug, Clone)]
pub struct SettleIfAmbiguousParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub worker: &'a str,
    pub now: DateTime<Utc>,
}

/// What [`Store::session_record_api_failure`] records.
#[derive(Debug, Clone)]
pub struct ApiFailureParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub session_id: i64,
    /// The API surely created no session (a 4xx answer).
    pub definite: bool,
    pub worker: &'a str,
    /// Where the target goes.
    pub to: Transition,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

/// What [`Store::session_record_delivery`] records.
#[derive(Debug, Clone)]
pub struct DeliveryParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub session_id: i64,
    pub outcome: DeliveryOutcome,
    pub worker: &'a str,
    pub now: DateTime<Utc>,
}

impl Store {
    /// Reserves a session for a target `p.worker` has claimed, if every per-user
    /// limit allows it now; otherwise settles the target as deferred or skipped. The
    /// fresh state, when given, is recorded first in the same transaction (as
    /// [`Store::user_apply_state`] does for `users sync`), so that the reservation is
    /// judged on it. On Postgres the user's row is locked so that two campaigns
    /// reserving for one user at once are serialised.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_reserve(&self, p: ReserveParams<'_>) -> Result<Reservation, StoreError> {
        self.write_batched(ReserveArgs {
            backend: self.backend(),
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            step: p.step,
            worker: p.worker.to_owned(),
            now: p.now,
            life: p.life,
            fresh: p.fresh,
        })
        .await
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
    pub async fn session_settle_if_ambiguous(&self, p: SettleIfAmbiguousParams<'_>) -> Result<bool, StoreError> {
        // the common case (a first attempt) is one indexed read, no write lock
        if !session_any_sent(self, p.campaign_id, p.user_id, p.step).await? {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        let mine = sqlx::query(concat!("SELECT attempts FROM campaign_targets WHERE ", our_target!()))
            .bind(p.campaign_id)
            .bind(p.user_id)
            .bind(p.worker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("session_settle_if_ambiguous fence"))?;
        if mine.is_none() {
            return Ok(false);
        }
        let ask =
            ClaimedStep { campaign_id: p.campaign_id, user_id: p.user_id, step: p.step, worker: p.worker, now: p.now };
        let settled = settle_earlier_attempts(&mut tx, &ask).await?;
        tx.commit().await.map_err(query_err("session_settle_if_ambiguous commit"))?;
        Ok(settled)
    }

    /// The session call failed (see [`ApiFailureParams`]): the ledger row stops
    /// counting when the failure was definite, and keeps counting as `unknown`
    /// otherwise; the target is settled as given. Returns whether the claim held.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_api_failure(&self, p: ApiFailureParams<'_>) -> Result<bool, StoreError> {
        self.write_batched(ApiFailed {
            session_id: p.session_id,
            definite: p.definite,
            life: p.life,
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            worker: p.worker.to_owned(),
            to: p.to,
            now: p.now,
        })
        .await
    }

    /// How the message's delivery ended (see [`DeliveryRecord`]): records the ledger
    /// row, the target (its claim released) and an audit event in one transaction.
    /// Delivered targets become `notified`; an undelivered one `failed` /
    /// `delivery_failed`, re-queued by a later run; one that may have arrived `failed` /
    /// `delivery_unknown`, not re-queued. Returns whether the target was still
    /// `worker`'s claim (and so was settled).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_delivery(&self, p: DeliveryParams<'_>) -> Result<bool, StoreError> {
        self.write_batched(DeliveryArgs {
            backend: self.backend(),
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            session_id: p.session_id,
            record: p.outcome.record,
            sent: p.outcome,
            worker: p.worker.to_owned(),
            now: p.now,
        })
        .await
    }
}

/// A claimed target's step, as the helpers below take it.
struct ClaimedStep<'a> {
    campaign_id: i64,
    user_id: &'a str,
    step: i64,
    worker: &'a str,
    now: DateTime<Utc>,
}

/// What an earlier, interrupted attempt at this step left behind (see
/// `sessions::session_earlier_attempts_in_tx`): when one may have reached the user,
/// the target is failed `delivery_unknown` and `true` is returned.
async fn settle_earlier_attempts(tx: &mut Tx, c: &ClaimedStep<'_>) -> Result<bool, StoreError> {
    let ambiguous = session_earlier_attempts_in_tx(tx, c.campaign_id, c.user_id, c.step, c.now).await?;
    if ambiguous {
        let to = Transition::fail(TargetReason::DeliveryUnknown);
        let settle = SettleParams { campaign_id: c.campaign_id, user_id: c.user_id, worker: c.worker, to, now: c.now };
        settle_in_tx(tx, &settle).await?;
    }
    Ok(ambiguous)
}

/// What [`Store::session_reserve`] writes with.
struct ReserveArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    step: i64,
    worker: String,
    now: DateTime<Utc>,
    life: SessionLife,
    fresh: Option<VerificationState>,
}

impl ReserveArgs {
    fn ask(&self) -> Ask<'_> {
        Ask {
            campaign_id: self.campaign_id,
            user_id: &self.user_id,
            step: self.step,
            worker: &self.worker,
            now: self.now,
            life: self.life,
        }
    }
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
    let fresh: Vec<FreshState<'_>> = writes
        .iter()
        .filter_map(|w| w.fresh.map(|state| FreshState { user_id: &w.user_id, now: w.now, state }))
        .collect();
    record_fresh_states(backend, &fresh, tx).await?;
    let asks: Vec<Ask<'_>> = writes.iter().map(|w| w.ask()).collect();
    let mut standing = session_read_standings(backend, &asks, tx).await?;

    // decide each, in the order given
    let mut out: Vec<Option<Reservation>> = Vec::with_capacity(writes.len());
    let mut eligible: Vec<&Ask<'_>> = Vec::new();
    for (w, ask) in writes.iter().zip(&asks) {
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
        let step = ClaimedStep {
            campaign_id: w.campaign_id,
            user_id: &w.user_id,
            step: w.step,
            worker: &w.worker,
            now: w.now,
        };
        if attempts > 1 && settle_earlier_attempts(tx, &step).await? {
            out.push(Some(Reservation::Ambiguous));
            continue;
        }
        let user_standing = standing_from_row(&row)?;
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve ledger"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;
        let settle = |to: Transition| SettleParams {
            campaign_id: w.campaign_id,
            user_id: &w.user_id,
            worker: &w.worker,
            to,
            now: w.now,
        };
        out.push(match policy::evaluate(&user_standing, &slots, w.now) {
            Verdict::Eligible => {
                eligible.push(ask);
                None
            }
            Verdict::Defer { reason, until } => {
                settle_in_tx(tx, &settle(Transition::defer(reason, until))).await?;
                Some(Reservation::Deferred { reason, until })
            }
            Verdict::Skip(reason) => {
                settle_in_tx(tx, &settle(Transition::skip(reason))).await?;
                Some(Reservation::Skipped(reason))
            }
        });
    }

    let mut ids = session_insert_reserved(backend, &eligible, tx).await?;
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

/// [`Store::session_record_api_failure`]'s write: the ledger row and the target.
struct ApiFailed {
    session_id: i64,
    definite: bool,
    life: SessionLife,
    campaign_id: i64,
    user_id: String,
    worker: String,
    to: Transition,
    now: DateTime<Utc>,
}

impl BatchWrite for ApiFailed {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                session_api_failed_in_tx(tx, w.session_id, w.definite, w.now, w.life).await?;
                let settle = SettleParams {
                    campaign_id: w.campaign_id,
                    user_id: &w.user_id,
                    worker: &w.worker,
                    to: w.to,
                    now: w.now,
                };
                out.push(settle_in_tx(tx, &settle).await?);
            }
            Ok(out)
        })
    }
}

/// What [`Store::session_record_delivery`] writes with.
struct DeliveryArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    session_id: i64,
    record: DeliveryRecord,
    sent: DeliveryOutcome,
    worker: String,
    now: DateTime<Utc>,
}

impl DeliveryArgs {
    /// (ledger row status, audit event kind, target reason, event detail).
    fn recorded(&self) -> (&'static str, &'static str, Option<&'static str>, String) {
        let (session_status, event_kind, reason) = self.record.recorded();
        let reason = reason.map(TargetReason::as_str);
        let detail = self.sent.detail(serde_json::json!({ "session_id": self.session_id, "reason": reason }));
        (session_status.as_str(), event_kind, reason, detail)
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
        let (session_status, event_kind, reason, detail) = w.recorded();
        serde_json::json!([
            w.campaign_id,
            w.user_id,
            w.worker,
            to_millis(w.now),
            w.session_id,
            w.record == DeliveryRecord::Delivered,
            reason,
            session_status,
            event_kind,
            detail
        ])
    }));
    let target = delivery_target_update("x.ok", "x.why", "x.at", "s.expires_at");
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
                ("why", Arg::Text),
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
    let DeliveryArgs { campaign_id, ref user_id, session_id, record, ref worker, now, .. } = *a;
    let (_, event_kind, _, detail) = a.recorded();
    session_delivered_in_tx(tx, session_id, record.recorded().0, now).await?;
    let delivered = TargetDelivered {
        campaign_id,
        user_id,
        worker,
        session_id,
        ok: record == DeliveryRecord::Delivered,
        reason: record.recorded().2,
        now,
    };
    let kept = target_delivered_in_tx(tx, &delivered).await?;
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap_or_default();
    event_in_tx(tx, now, worker, event_kind, Some(campaign_id), Some(user_id), &detail).await?;
    Ok(kept)
}
