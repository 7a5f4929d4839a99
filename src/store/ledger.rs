//! The per-user transitions of a run, each one store function over one named
//! parameter struct: reserve a session under every limit, record the session
//! call's failure, record the delivery, settle an interrupted attempt. Each
//! composes the statements of the tables it moves (`sessions`, `targets`, `users`
//! through `outcomes`, `events`) in one transaction, and the hot ones are batched
//! writes (see `store::group`): a group's reservations are four statements whatever
//! their number.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{TxEvent, event_in_tx, events_insert_select};
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::outcomes::{Fresh, fresh_states, record_fresh_states};
use super::sessions::{
    Ask, DeliveryOutcome, DeliveryParams, DeliveryRecord, SessionLife, delivery_session_update, parse_slots,
    session_any_sent, session_api_failed_in_tx, session_delivered_in_tx, session_earlier_attempts_in_tx,
    session_insert_reserved, session_read_standings,
};
use super::targets::{Claim, TargetDelivered, delivery_target_update, target_delivered_in_tx};
use super::users::standing_from_row;
use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SkipReason, Verdict};
use crate::domain::{TargetReason, Transition};

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

impl Reservation {
    /// What a verdict that holds the user back came to; `None` when it does not.
    fn held_back(v: Verdict) -> Option<Self> {
        match v {
            Verdict::Skip(reason) => Some(Reservation::Skipped(reason)),
            Verdict::Defer { reason, until } => Some(Reservation::Deferred { reason, until }),
            Verdict::Eligible => None,
        }
    }
}

/// What [`Store::session_reserve`] reserves for: step `step` of the claimed target.
#[derive(Debug, Clone)]
pub struct ReserveParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub step: i64,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
    /// The state `GET /v1/user` just reported, recorded first and judged on.
    pub fresh: Option<Fresh>,
}

/// What [`Store::session_settle_if_ambiguous`] looks at.
#[derive(Debug, Clone)]
pub struct SettleIfAmbiguousParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub step: i64,
    pub now: DateTime<Utc>,
}

/// What [`Store::session_record_api_failure`] records.
#[derive(Debug, Clone)]
pub struct ApiFailureParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub session_id: i64,
    /// The API surely created no session (a 4xx answer).
    pub definite: bool,
    /// Where the target goes.
    pub to: Transition,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

impl Store {
    /// Reserves a session for a target `p.claim` holds, if every per-user
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
            claim: p.claim.clone(),
            now: p.now,
            step: p.step,
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
        let claim = p.claim;
        if !session_any_sent(self, claim.campaign_id, claim.user_id.as_str(), p.step).await? {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        let mine = sqlx::query(concat!("SELECT attempts FROM campaign_targets WHERE ", our_target!()))
            .bind(claim.campaign_id)
            .bind(claim.user_id.as_str())
            .bind(claim.worker.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("session_settle_if_ambiguous fence"))?;
        if mine.is_none() {
            return Ok(false);
        }
        let settled = settle_earlier_attempts(&mut tx, claim, p.step, p.now).await?;
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
            claim: p.claim.clone(),
            now: p.now,
            session_id: p.session_id,
            definite: p.definite,
            life: p.life,
            to: p.to,
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
            claim: p.claim.clone(),
            now: p.now,
            session_id: p.id,
            record: p.outcome.record,
            sent: p.outcome,
        })
        .await
    }
}

/// What an earlier, interrupted attempt at this step left behind (see
/// `sessions::session_earlier_attempts_in_tx`): when one may have reached the user,
/// the target is failed `delivery_unknown` and `true` is returned.
async fn settle_earlier_attempts(
    tx: &mut Tx,
    claim: &Claim,
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let ambiguous = session_earlier_attempts_in_tx(tx, claim.campaign_id, claim.user_id.as_str(), step, now).await?;
    if ambiguous {
        claim.settle(tx, Transition::fail(TargetReason::DeliveryUnknown), now).await?;
    }
    Ok(ambiguous)
}

/// What [`Store::session_reserve`] writes with.
struct ReserveArgs {
    backend: Backend,
    claim: Claim,
    now: DateTime<Utc>,
    step: i64,
    life: SessionLife,
    fresh: Option<Fresh>,
}

impl ReserveArgs {
    fn ask(&self) -> Ask<'_> {
        Ask { claim: &self.claim, step: self.step, now: self.now, life: self.life }
    }
}

impl BatchWrite for ReserveArgs {
    type Out = Reservation;

    /// Two reservations for one user (two campaigns) never share a statement: the
    /// second must count the first's session.
    fn key(&self) -> Option<&str> {
        Some(self.claim.user_id.as_str())
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
    record_fresh_states(backend, &fresh_states(writes.iter().map(|w| (&w.claim, w.now, w.fresh))), tx).await?;
    let asks: Vec<Ask<'_>> = writes.iter().map(|w| w.ask()).collect();
    let mut standing = session_read_standings(backend, &asks, tx).await?;

    // decide each, in the order given
    let mut out: Vec<Option<Reservation>> = Vec::with_capacity(writes.len());
    let mut eligible: Vec<&Ask<'_>> = Vec::new();
    for (w, ask) in writes.iter().zip(&asks) {
        let c = &w.claim;
        let row = standing
            .remove(c.user_id.as_str())
            .ok_or_else(|| StoreError::NotFound { what: "user", key: c.user_id.to_string() })?;
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
        if attempts > 1 && settle_earlier_attempts(tx, c, w.step, w.now).await? {
            out.push(Some(Reservation::Ambiguous));
            continue;
        }
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve ledger"))?;
        let verdict = policy::evaluate(&standing_from_row(&row)?, &parse_slots(slots.as_deref().unwrap_or(""))?, w.now);
        let decided = Reservation::held_back(verdict);
        if decided.is_some() {
            c.hold_back(tx, verdict, w.now).await?;
        } else {
            eligible.push(ask);
        }
        out.push(decided);
    }

    let mut ids = session_insert_reserved(backend, &eligible, tx).await?;
    out.into_iter()
        .zip(writes)
        .map(|(decided, w)| match decided {
            Some(r) => Ok(r),
            None => ids
                .remove(w.claim.user_id.as_str())
                .map(|session_id| Reservation::Reserved { session_id })
                .ok_or_else(|| StoreError::Conflict(format!("no ledger row came back for user {}", w.claim.user_id))),
        })
        .collect()
}

/// [`Store::session_record_api_failure`]'s write: the ledger row and the target.
struct ApiFailed {
    claim: Claim,
    now: DateTime<Utc>,
    session_id: i64,
    definite: bool,
    life: SessionLife,
    to: Transition,
}

impl BatchWrite for ApiFailed {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                session_api_failed_in_tx(tx, w.session_id, w.definite, w.now, w.life).await?;
                out.push(w.claim.settle(tx, w.to, w.now).await?);
            }
            Ok(out)
        })
    }
}

/// What [`Store::session_record_delivery`] writes with.
struct DeliveryArgs {
    backend: Backend,
    claim: Claim,
    now: DateTime<Utc>,
    session_id: i64,
    record: DeliveryRecord,
    sent: DeliveryOutcome,
}

impl DeliveryArgs {
    /// (ledger row status, audit event kind, target reason, event detail).
    fn recorded(&self) -> (&'static str, &'static str, Option<&'static str>, serde_json::Value) {
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
            w.claim.campaign_id,
            w.claim.user_id.as_str(),
            w.claim.worker,
            to_millis(w.now),
            w.session_id,
            w.record == DeliveryRecord::Delivered,
            reason,
            session_status,
            event_kind,
            detail.to_string()
        ])
    }));
    let session = delivery_session_update("x");
    let target = delivery_target_update("x.ok", "x.why", "x.at", "s.expires_at");
    let events = events_insert_select(["x.at", "x.w", "x.kind", "x.c", "x.u", "x.detail"], "x", "x.n");
    let sql = format!(
        "WITH x AS ({args}), \
              s AS ({session}), \
              t AS ({target} FROM x JOIN s ON s.session_id = x.sid \
                    WHERE t.campaign_id = x.c AND t.user_id = x.u AND {fence} \
                    RETURNING t.campaign_id, t.user_id), \
              e AS ({events}) \
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
    let DeliveryArgs { ref claim, now, session_id, record, .. } = *a;
    let Claim { campaign_id, ref user_id, ref worker } = *claim;
    let (_, event_kind, _, detail) = a.recorded();
    let (session_status, _, reason) = record.recorded();
    session_delivered_in_tx(tx, session_id, session_status, now).await?;
    let delivered = TargetDelivered { claim, session_id, ok: record == DeliveryRecord::Delivered, reason, now };
    let kept = target_delivered_in_tx(tx, &delivered).await?;
    event_in_tx(
        tx,
        now,
        &TxEvent {
            actor: worker,
            kind: event_kind,
            campaign_id: Some(campaign_id),
            user_id: Some(user_id),
            detail: &detail,
        },
    )
    .await?;
    Ok(kept)
}
