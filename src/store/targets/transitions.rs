//! Transitions: a target settled, re-queued, delivered, clicked, converted,
//! bounced or forgotten, each under the claim it belongs to where there is one.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::audience::{AudienceSql, bind_all};
use super::claims::Claim;
use super::followup::NO_REMINDER_YET;
use crate::domain::policy::{self, Verdict};
use crate::domain::spec::{Audience, Reminders};
use crate::domain::{TargetReason, TargetStatus, Transition};
use crate::store::events::{TxEvent, event_in_tx, events_reminders_queued_in_tx};
use crate::store::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows, returned_user_ids};
use crate::store::users::REACHABLE;
use crate::store::{Backend, Store, StoreError, query_err, to_millis};

/// One row of a campaign's progress: how many targets have this status and reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusCount {
    pub status: TargetStatus,
    pub reason: Option<TargetReason>,
    pub count: i64,
}

impl Store {
    /// Targets whose message could not be delivered become eligible again: a later
    /// run calls this first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_delivery_failed(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET status = 'pending', reason = NULL, not_before = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'failed' AND reason = 'delivery_failed'",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected())
        .map_err(query_err("target_requeue_delivery_failed"))
    }

    /// Re-queues every failed target of a campaign (`campaign retry-failed`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_failed(&self, campaign_id: i64, now: DateTime<Utc>) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET status = 'pending', reason = NULL, not_before = NULL, attempts = 0, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'failed'",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected())
        .map_err(query_err("target_requeue_failed"))
    }

    /// Records a final or waiting outcome for a target `p.worker` holds (see
    /// [`SettleParams`]), with its audit event. Returns false when the claim was
    /// lost. A batched write.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_settle(&self, p: SettleParams<'_>) -> Result<bool, StoreError> {
        self.write_batched(Settle { claim: p.claim.clone(), to: p.to, now: p.now }).await
    }

    /// Re-queues notified targets for their next reminder, set-based: the user is
    /// still UNVERIFIED (or REJECTED past the 24 h cooldown, with `include_rejected`),
    /// `after` has passed since the last message, the last session has expired, and
    /// fewer than `max` reminders were queued. The target goes back to `pending` with
    /// `step + 1` and reason `reminder`; the ledger still decides whether a session
    /// may be generated. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_reminders(
        &self,
        campaign_id: i64,
        reminders: &Reminders,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.target_requeue_reminders_for(campaign_id, reminders, &Audience::default(), now).await
    }

    /// [`Store::target_requeue_reminders`], leaving out the users the audience's
    /// compliance exclusions keep out (`exclude_rejection_codes`, `max_attempts`): a
    /// user finally rejected after the first message gets no reminder.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_reminders_for(
        &self,
        campaign_id: i64,
        reminders: &Reminders,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let excluded = AudienceSql::exclusions_only(audience, 6);
        let now_ms = to_millis(now);
        let after_ms = i64::try_from(reminders.after.0.as_millis()).unwrap_or(i64::MAX / 4);
        let cooldown = policy::rejection_cooldown().num_milliseconds();
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "UPDATE campaign_targets SET status = 'pending', step = step + 1, reason = 'reminder', \
               not_before = NULL, attempts = 0, lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'notified' AND step < $3 AND notified_at <= $4 \
               AND (session_expires_at IS NULL OR session_expires_at <= $2) \
               AND EXISTS (SELECT 1 FROM users u WHERE u.user_id = campaign_targets.user_id AND {REACHABLE} \
                 AND (u.verification_state = 'UNVERIFIED' \
                      OR ($5 = 1 AND u.verification_state = 'REJECTED' \
                          AND COALESCE(u.rejected_at, $2) + {cooldown} <= $2)) \
                 AND {exclusions})",
            exclusions = excluded.clause(),
        );
        let q = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(now_ms)
            .bind(i64::from(reminders.max))
            .bind(now_ms.saturating_sub(after_ms))
            .bind(i64::from(reminders.include_rejected));
        let n = bind_all(q, &excluded.binds)
            .execute(&mut *tx)
            .await
            .map_err(query_err("target_requeue_reminders"))?
            .rows_affected();
        if n > 0 {
            // one audit event per re-queued target, set-based as well
            events_reminders_queued_in_tx(&mut tx, campaign_id, now_ms).await?;
        }
        // The stamped targets that came due and did not qualify wait on (see
        // `followup`): for their time or their session's expiry when either is
        // ahead, for a rejected user's cooldown when the campaign reminds the
        // rejected, else for a change of the user's state.
        let user = |col: &str| format!("(SELECT u.{col} FROM users u WHERE u.user_id = campaign_targets.user_id)");
        let push = format!(
            "UPDATE campaign_targets SET not_before = CASE \
                 WHEN COALESCE(notified_at, 0) + $3 > $2 OR COALESCE(session_expires_at, 0) > $2 THEN \
                   CASE WHEN COALESCE(session_expires_at, 0) > COALESCE(notified_at, 0) + $3 THEN session_expires_at \
                        ELSE COALESCE(notified_at, 0) + $3 END \
                 WHEN $5 = 1 AND {state} = 'REJECTED' AND COALESCE({rejected}, 0) + {cooldown} > $2 \
                   THEN {rejected} + {cooldown} \
                 ELSE {NO_REMINDER_YET} END \
             WHERE campaign_id = $1 AND status = 'notified' AND step < $4 \
               AND not_before IS NOT NULL AND not_before <= $2",
            state = user("verification_state"),
            rejected = user("rejected_at"),
        );
        sqlx::query(AssertSqlSafe(push))
            .bind(campaign_id)
            .bind(now_ms)
            .bind(after_ms)
            .bind(i64::from(reminders.max))
            .bind(i64::from(reminders.include_rejected))
            .execute(&mut *tx)
            .await
            .map_err(query_err("target_requeue_reminders wait"))?;
        tx.commit().await.map_err(query_err("target_requeue_reminders commit"))?;
        Ok(n)
    }

    /// The campaign's targets counted by status and reason.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_counts(&self, campaign_id: i64) -> Result<Vec<StatusCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, reason, COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1 \
             GROUP BY status, reason ORDER BY status, reason",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("target_counts"))?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                let reason: Option<String> = r.try_get("reason")?;
                let decode = |e: crate::domain::status::UnknownValue| sqlx::Error::Decode(Box::new(e));
                Ok(StatusCount {
                    status: status.parse().map_err(decode)?,
                    reason: reason.map(|r| r.parse()).transpose().map_err(decode)?,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("target_counts row"))
    }
}

/// A target's settlement: what [`Store::target_settle`] and the ledger's
/// transitions record for a target its claim's worker holds.
#[derive(Debug, Clone)]
pub struct SettleParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    /// Where the target goes: `skipped`, `failed`, `deferred` (with `not_before`), or
    /// `pending` (retry later, with `not_before`).
    pub to: Transition,
    pub now: DateTime<Utc>,
}

impl Claim {
    /// Records `to` for the target at `now` (see [`settle_in_tx`]); whether the
    /// claim held.
    pub(crate) async fn settle(&self, tx: &mut Tx, to: Transition, now: DateTime<Utc>) -> Result<bool, StoreError> {
        settle_in_tx(tx, &SettleParams { claim: self, to, now }).await
    }

    /// Settles the target at `now` when the policy holds its user back (deferred or
    /// skipped); whether it did.
    pub(crate) async fn hold_back(
        &self,
        tx: &mut Tx,
        verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let to = match verdict {
            Verdict::Eligible => return Ok(false),
            Verdict::Skip(reason) => Transition::skip(reason),
            Verdict::Defer { reason, until } => Transition::defer(reason, until),
        };
        self.settle(tx, to, now).await?;
        Ok(true)
    }
}

/// [`SettleParams`], owned, as a batched write.
struct Settle {
    claim: Claim,
    to: Transition,
    now: DateTime<Utc>,
}

impl BatchWrite for Settle {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(w.claim.settle(tx, w.to, w.now).await?);
            }
            Ok(out)
        })
    }
}

/// [`Store::target_settle`] inside a transaction already open: the target (while
/// still `p.claim`'s) and its `target.<status>` event. A wait for the send window
/// gives the attempt back.
pub(crate) async fn settle_in_tx(tx: &mut Tx, p: &SettleParams<'_>) -> Result<bool, StoreError> {
    let Claim { campaign_id, ref user_id, ref worker } = *p.claim;
    let now_ms = to_millis(p.now);
    let Transition { status, reason, not_before } = p.to;
    let n = sqlx::query(concat!(
        "UPDATE campaign_targets SET status = $4, reason = $5, not_before = $6, lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = $7, \
           finalized_at = CASE WHEN $4 IN ('skipped', 'failed') THEN $7 ELSE NULL END, \
           attempts = CASE WHEN $5 = 'send_window' AND attempts > 0 THEN attempts - 1 ELSE attempts END \
         WHERE ",
        our_target!()
    ))
    .bind(campaign_id)
    .bind(user_id.as_str())
    .bind(worker.as_str())
    .bind(status.as_str())
    .bind(reason.as_str())
    .bind(not_before.map(to_millis))
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_settle"))?
    .rows_affected();
    if n == 1 {
        event_in_tx(
            tx,
            p.now,
            &TxEvent {
                actor: worker,
                kind: &format!("target.{status}"),
                campaign_id: Some(campaign_id),
                user_id: Some(user_id),
                detail: &serde_json::json!({ "reason": reason.as_str(), "not_before": not_before }),
            },
        )
        .await?;
    }
    Ok(n == 1)
}

/// The target's side of a recorded delivery, for both engines, as `UPDATE
/// campaign_targets t SET …` (the caller adds what it joins and the fence): when
/// `ok` (an SQL boolean) the target is `notified`, otherwise `failed` with the
/// reason `why` (`delivery_failed`, re-queued by a later run, or `delivery_unknown`,
/// not); either way the claim is released and the session's expiry is taken from
/// `expires_at`. `at` is the time.
pub(crate) fn delivery_target_update(ok: &str, why: &str, at: &str, expires_at: &str) -> String {
    format!(
        "UPDATE campaign_targets AS t SET \
           status = CASE WHEN {ok} THEN 'notified' ELSE 'failed' END, \
           reason = CASE WHEN {ok} THEN NULL ELSE {why} END, \
           notifications = notifications + CASE WHEN {ok} THEN 1 ELSE 0 END, \
           notified_at = CASE WHEN {ok} THEN {at} ELSE notified_at END, \
           first_notified_at = CASE WHEN {ok} THEN COALESCE(first_notified_at, {at}) ELSE first_notified_at END, \
           finalized_at = CASE WHEN {ok} THEN finalized_at ELSE {at} END, \
           lease_owner = NULL, lease_expires_at = NULL, sessions = sessions + 1, updated_at = {at}, \
           session_expires_at = {expires_at}, not_before = NULL"
    )
}

/// One delivery's target, on its own (SQLite; Postgres writes a group's in the
/// delivery statement of `store::ledger`, from [`delivery_target_update`]).
pub(crate) struct TargetDelivered<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    /// The session whose expiry the target takes.
    pub session_id: i64,
    /// Delivered (`notified`), or not (`failed` with `reason`).
    pub ok: bool,
    pub reason: Option<TargetReason>,
    pub now: DateTime<Utc>,
}

/// Records [`TargetDelivered`] while the target is still the worker's claim;
/// returns whether it was.
pub(crate) async fn target_delivered_in_tx(tx: &mut Tx, d: &TargetDelivered<'_>) -> Result<bool, StoreError> {
    let sql = format!(
        "{} WHERE {}",
        delivery_target_update(
            "$6",
            "$7",
            "$4",
            "(SELECT expires_at FROM verification_sessions WHERE session_id = $5)"
        ),
        our_target!()
    );
    let n = sqlx::query(AssertSqlSafe(sql))
        .bind(d.claim.campaign_id)
        .bind(d.claim.user_id.as_str())
        .bind(d.claim.worker.as_str())
        .bind(to_millis(d.now))
        .bind(d.session_id)
        .bind(d.ok)
        .bind(d.reason.map(TargetReason::as_str))
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery target"))?
        .rows_affected();
    Ok(n == 1)
}

/// A click's session reached the person: the target takes its expiry (a run syncs
/// the user once it has expired, and a reminder waits for it) and counts it.
pub(crate) async fn target_click_session(store: &Store, session_id: i64, expires_at: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaign_targets SET session_expires_at = $2, sessions = sessions + 1 \
         WHERE campaign_id = (SELECT campaign_id FROM verification_sessions WHERE session_id = $1) \
           AND user_id = (SELECT user_id FROM verification_sessions WHERE session_id = $1)",
    )
    .bind(session_id)
    .bind(expires_at)
    .execute(store.pool())
    .await
    .map_err(query_err("session_record_click target"))?;
    Ok(())
}

/// Counts a click on the target and dates its first; `false` when there is no such
/// target.
pub(crate) async fn target_clicked_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let first = sqlx::query(
        "UPDATE campaign_targets SET clicks = clicks + 1, clicked_at = COALESCE(clicked_at, $3), updated_at = $3 \
         WHERE campaign_id = $1 AND user_id = $2 RETURNING clicks",
    )
    .bind(campaign_id)
    .bind(user_id)
    .bind(to_millis(now))
    .fetch_optional(&mut **tx)
    .await
    .map_err(query_err("link_click_start target"))?;
    Ok(first.is_some())
}

/// Claimed targets whose message carried a link: `notified`
/// while still the worker's claim, in one statement; returns those it moved. No
/// session yet: `session_expires_at` stays empty until a click makes one, so that a
/// reminder waits only for `reminders.after`.
pub(crate) async fn targets_notified_by_link_in_tx(
    backend: Backend,
    notified: &[(&Claim, DateTime<Utc>)],
    tx: &mut Tx,
) -> Result<HashSet<String>, StoreError> {
    if notified.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = json_rows(
        notified
            .iter()
            .map(|(c, now)| serde_json::json!([c.campaign_id, c.user_id.as_str(), c.worker, to_millis(*now)])),
    );
    let from = json_args(backend, &[("c", Arg::Int), ("u", Arg::Text), ("w", Arg::Text), ("at", Arg::Int)]);
    let sql = format!(
        "UPDATE campaign_targets SET status = 'notified', reason = NULL, \
           notifications = notifications + 1, notified_at = x.at, \
           first_notified_at = COALESCE(first_notified_at, x.at), lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = x.at, session_expires_at = NULL, not_before = NULL \
         FROM ({from}) AS x WHERE campaign_targets.campaign_id = x.c AND campaign_targets.user_id = x.u \
           AND {ours} RETURNING campaign_targets.user_id",
        ours = ours!("campaign_targets.", "x.w"),
    );
    returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "link_record_delivery target").await
}

/// A target of the user that has had a message no later than the change (`$2`), in
/// a campaign whose outcomes are still tracked at `$3` (a completed campaign's, for
/// its `track_outcomes_for`).
const AFTER_MESSAGE: &str = "user_id = $1 AND notified_at IS NOT NULL AND notified_at <= $2 \
     AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.campaign_id = campaign_targets.campaign_id \
       AND c.outcomes_until < $3)";

/// How a user's new state moves their targets that had a message no later than
/// the change (see `outcomes::apply_state_in_tx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterMessage {
    /// The user started (PENDING or a decision): `started_at`, the first time.
    Started,
    /// VERIFIED: the target converts.
    Converted,
    /// REJECTED: the outcome is recorded (the target stays where it is).
    Rejected,
}

impl AfterMessage {
    /// The audit event of each target it moved.
    pub(crate) fn event_kind(self) -> &'static str {
        match self {
            AfterMessage::Started => "target.started",
            AfterMessage::Converted => "target.converted",
            AfterMessage::Rejected => "target.rejected",
        }
    }
}

/// Moves the user's targets for `which`, binding `$1` user, `$2` the change's time,
/// `$3` now; returns the campaigns of the targets it moved.
pub(crate) async fn targets_after_message_in_tx(
    tx: &mut Tx,
    which: AfterMessage,
    user_id: &str,
    at_ms: i64,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    let sql = match which {
        AfterMessage::Started => format!(
            "UPDATE campaign_targets SET started_at = $2, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND started_at IS NULL RETURNING campaign_id"
        ),
        AfterMessage::Converted => format!(
            "UPDATE campaign_targets SET status = 'converted', reason = NULL, not_before = NULL, \
               outcome = 'verified', outcome_at = $2, finalized_at = $3, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') RETURNING campaign_id"
        ),
        AfterMessage::Rejected => format!(
            "UPDATE campaign_targets SET outcome = 'rejected', outcome_at = $2, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') \
               AND (outcome IS NULL OR outcome_at < $2) RETURNING campaign_id"
        ),
    };
    sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(at_ms)
        .bind(to_millis(now))
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("user_apply_state targets"))?
        .iter()
        .map(|r| r.try_get::<i64, _>("campaign_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err("user_apply_state targets"))
}

/// What [`target_bounced_in_tx`] moves: the target notified at `step` with the
/// message that bounced.
pub(crate) struct TargetBounced<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub diagnostic: &'a str,
    /// Re-queue for the campaign's fallback channel (`pending` / `fallback`, the
    /// next step, due now) instead of `failed` / `bounced`.
    pub fallback: bool,
    pub now: DateTime<Utc>,
}

/// A notified target's message bounced for good. Every such target keeps when and
/// why (`bounced_at`, `bounce_diagnostic`: the funnel's `bounced` stage, the
/// report's columns). Returns whether the target moved (it was still `notified` at
/// that step).
pub(crate) async fn target_bounced_in_tx(tx: &mut Tx, b: TargetBounced<'_>) -> Result<bool, StoreError> {
    let sql = if b.fallback {
        "UPDATE campaign_targets SET status = 'pending', reason = 'fallback', step = step + 1, attempts = 0, \
           not_before = NULL, lease_owner = NULL, lease_expires_at = NULL, \
           bounced_at = COALESCE(bounced_at, $4), bounce_diagnostic = $5, updated_at = $4 \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status = 'notified'"
    } else {
        "UPDATE campaign_targets SET status = 'failed', reason = 'bounced', not_before = NULL, \
           lease_owner = NULL, lease_expires_at = NULL, finalized_at = $4, \
           bounced_at = COALESCE(bounced_at, $4), bounce_diagnostic = $5, updated_at = $4 \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status = 'notified'"
    };
    let n = sqlx::query(sql)
        .bind(b.campaign_id)
        .bind(b.user_id)
        .bind(b.step)
        .bind(to_millis(b.now))
        .bind(b.diagnostic)
        .execute(&mut **tx)
        .await
        .map_err(query_err("target_bounced"))?
        .rows_affected();
    if n == 0 {
        // it moved on (a reminder, a conversion): it still keeps the bounce
        sqlx::query(
            "UPDATE campaign_targets SET bounced_at = COALESCE(bounced_at, $3), \
               bounce_diagnostic = COALESCE(bounce_diagnostic, $4) \
             WHERE campaign_id = $1 AND user_id = $2",
        )
        .bind(b.campaign_id)
        .bind(b.user_id)
        .bind(to_millis(b.now))
        .bind(b.diagnostic)
        .execute(&mut **tx)
        .await
        .map_err(query_err("target_bounced keep"))?;
    }
    Ok(n > 0)
}

/// A forgotten user's open targets are settled `skipped` / `forgotten`, and every
/// target of theirs loses its bounce diagnostic (it says what a server said about
/// their mailbox). Returns how many targets were settled.
pub(crate) async fn targets_forget_user_in_tx(
    tx: &mut Tx,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let now_ms = to_millis(now);
    let settled = sqlx::query(
        "UPDATE campaign_targets SET status = 'skipped', reason = 'forgotten', not_before = NULL, \
           lease_owner = NULL, lease_expires_at = NULL, finalized_at = $2, updated_at = $2 \
         WHERE user_id = $1 AND status IN ('pending', 'deferred', 'claimed')",
    )
    .bind(user_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_forget targets"))?
    .rows_affected();
    sqlx::query("UPDATE campaign_targets SET bounce_diagnostic = NULL WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_forget bounce diagnostics"))?;
    Ok(settled)
}

impl Store {
    /// The claimed target's message went out through the campaign's fallback
    /// channel (the funnel's `fallback sent`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_fallback_sent(&self, claim: &Claim, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET fallback_sent_at = COALESCE(fallback_sent_at, $3) \
             WHERE campaign_id = $1 AND user_id = $2",
        )
        .bind(claim.campaign_id)
        .bind(claim.user_id.as_str())
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map_err(query_err("target_fallback_sent"))?;
        Ok(())
    }
}
