//! Outcomes: what became of the users a campaign notified.
//!
//! A user's verification state reaches the store three ways: `GET /v1/user` before a
//! session (the engine's fresh state), `users sync`, and Baanx `kyc.status.changed`
//! webhooks. All three go through one transaction, [`Store::user_apply_state`], so
//! that the user row (state, change time, rejection time, failure count) and the
//! outcome of every target of that user (started, converted, rejected) change
//! together with their audit events, and cannot disagree.
//!
//! Decisions:
//! - Webhooks arrive at least once and unordered. A webhook is applied only when it
//!   happened no earlier than the stored state change (on a tie, a decision beats
//!   PENDING), so a late `pending` never undoes a `completed`. Its event id goes into
//!   `webhook_events` in the same transaction, so a replay changes nothing.
//! - A change to REJECTED is dated with the receiving clock, never the sender's: the
//!   24 h cooldown then starts no earlier than the real rejection (conservative). It
//!   counts a consecutive failure; a change to VERIFIED resets the count.
//! - The rejection time only moves forward (`users::rejected_at_seen_sql`). A rejection
//!   webhook for a user already REJECTED is a new rejection (the PENDING before it
//!   was lost): the time moves to the receive time. Any source that finds a user
//!   REJECTED takes them to be rejected no earlier than the latest session we had
//!   issued them, and dates a REJECTED user with no known time at first sight, so
//!   that the cooldown has an end. The run's batched fresh states
//!   ([`record_fresh_states`]) apply the same rule.
//! - A target converts when its user becomes VERIFIED after a message of the campaign
//!   (`notified_at <= change time`), including a target re-queued for a reminder.
//!   A claimed target is left to the worker holding it. Targets move only on news: a
//!   change of state, or a webhook; a sync that finds the state it already knew
//!   (say, a REJECTED from before the message) moves nothing.
//! - Reminders re-queue set-based, in one statement per run (`targets`).

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{TxEvent, event_in_tx};
use super::group::Tx;
use super::links::links_revoke_user_in_tx;
use super::targets::{AfterMessage, Claim, targets_after_message_in_tx, targets_reminder_recheck_in_tx};
use super::users::{
    FreshState, REACHABLE, RejectedAgain, StateChange, StateUnchanged, user_confirmed_in_tx, user_failure_in_tx,
    user_rejected_again_in_tx, user_state_change_in_tx, user_state_lock_in_tx, user_state_unchanged_in_tx,
    users_unchanged_states_in_tx,
};
use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::domain::{UserId, VerificationState};

/// Where a verification state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A Baanx `kyc.status.changed` webhook.
    Webhook,
    /// `reverify users sync`, or the sync of expired sessions at the start of a run.
    Sync,
    /// The engine's `GET /v1/user` before a session.
    FreshState,
}

impl SourceKind {
    /// The recorded spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Webhook => "webhook",
            SourceKind::Sync => "sync",
            SourceKind::FreshState => "fresh_state",
        }
    }

    /// What `users.state_source` records for a confirmation from this source.
    pub fn confirmed_by(self) -> &'static str {
        match self {
            SourceKind::Webhook => "webhook",
            SourceKind::Sync => "sync",
            SourceKind::FreshState => "api",
        }
    }
}

/// A state `GET /v1/user` reported, with when it was asked: the confirmation's
/// time is the request's, not the answer's, so that a webhook for a change that
/// happened while the request was on its way wins over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    pub state: VerificationState,
    pub asked_at: DateTime<Utc>,
}

/// Who reported a state, and what they said about it.
#[derive(Debug, Clone)]
pub struct StateSource<'a> {
    /// The audit actor: a worker id, `cli:user@host`, or `webhook`.
    pub actor: &'a str,
    pub kind: SourceKind,
    /// The webhook's `event_id`.
    pub event_id: Option<&'a str>,
    /// When the change happened, as the sender says (webhooks); `None` means now.
    pub occurred_at: Option<DateTime<Utc>>,
    /// When a sync or a fresh state asked (the confirmation's time); `None` means now.
    pub asked_at: Option<DateTime<Utc>>,
    /// The webhook's `failure_code` for a rejection.
    pub failure_code: Option<&'a str>,
    /// The webhook's `failure_reason` for a rejection: stored on the user, never put
    /// in an event (free text might name the person).
    pub failure_reason: Option<&'a str>,
}

impl<'a> StateSource<'a> {
    /// A sync by `actor`.
    pub fn sync(actor: &'a str) -> Self {
        Self {
            actor,
            kind: SourceKind::Sync,
            event_id: None,
            occurred_at: None,
            asked_at: None,
            failure_code: None,
            failure_reason: None,
        }
    }

    /// The engine's fresh state, by `actor`.
    pub fn fresh_state(actor: &'a str) -> Self {
        Self {
            actor,
            kind: SourceKind::FreshState,
            event_id: None,
            occurred_at: None,
            asked_at: None,
            failure_code: None,
            failure_reason: None,
        }
    }

    /// This source, confirming as of `at` (when its request was sent).
    pub fn asked(self, at: DateTime<Utc>) -> Self {
        Self { asked_at: Some(at), ..self }
    }

    /// When this source confirms the state, in Unix ms: a webhook as of the change
    /// it reports, a sync or a fresh state as of its request; never after `now_ms`.
    pub fn confirmed_ms(&self, now_ms: i64) -> i64 {
        let at = match self.kind {
            SourceKind::Webhook => self.occurred_at,
            SourceKind::Sync | SourceKind::FreshState => self.asked_at,
        };
        at.map_or(now_ms, |t| to_millis(t).min(now_ms))
    }
}

/// What applying a state came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateApplied {
    /// No such user in the directory.
    UnknownUser,
    /// The event is older than the stored state; nothing changed.
    Stale,
    /// Applied; `changed` says whether the user's state differs from before.
    Applied {
        from: VerificationState,
        to: VerificationState,
        changed: bool,
        /// Targets that saw their user start (PENDING) for the first time.
        started: u64,
        converted: u64,
        rejected: u64,
    },
}

/// A `kyc.status.changed` event, already verified and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KycEvent {
    pub event_id: String,
    pub user_id: String,
    pub state: VerificationState,
    pub occurred_at: Option<DateTime<Utc>>,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
}

/// What a webhook came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// The event id was seen before: nothing changed.
    Duplicate,
    /// Recorded (the event id is remembered) with this effect.
    Recorded(StateApplied),
}

/// A user to ask `GET /v1/user` about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCandidate {
    pub user_id: String,
    pub region: String,
}

/// Which users `users sync` refreshes.
#[derive(Debug, Clone, Default)]
pub struct SyncFilter {
    /// Only the targets of this campaign.
    pub campaign_id: Option<i64>,
    /// Only users not synced since this instant (`--stale`).
    pub synced_before: Option<DateTime<Utc>>,
}

/// Orders states for ties between unordered webhooks: a decision beats PENDING,
/// which beats UNVERIFIED.
fn rank(s: VerificationState) -> u8 {
    match s {
        VerificationState::Unverified => 0,
        VerificationState::Pending => 1,
        VerificationState::Verified | VerificationState::Rejected => 2,
    }
}

/// The fresh states of a batch's claims that carry one.
pub(crate) fn fresh_states<'a>(
    claims: impl Iterator<Item = (&'a Claim, DateTime<Utc>, Option<Fresh>)>,
) -> Vec<FreshState<'a>> {
    claims
        .filter_map(|(c, now, fresh)| {
            fresh.map(|f| FreshState {
                user_id: c.user_id.as_str(),
                now,
                asked_at: f.asked_at.min(now),
                state: f.state,
            })
        })
        .collect()
}

/// Records a batch of fresh states (the runs' reservations, the click-through
/// links' send step). An unchanged state only moves `synced_at`, and for a user
/// REJECTED as before the rejection time as a sync does (no earlier than our latest
/// session, a first-seen time when none is known), in one statement for all; a
/// change goes the whole way of [`apply_state_in_tx`], one user at a time (rare: a
/// user who verified or was rejected since the import).
pub(crate) async fn record_fresh_states(
    backend: Backend,
    fresh: &[FreshState<'_>],
    tx: &mut Tx,
) -> Result<(), StoreError> {
    let unchanged = users_unchanged_states_in_tx(backend, fresh, tx).await?;
    for f in fresh {
        if !unchanged.contains(f.user_id) {
            let source = StateSource::fresh_state("engine").asked(f.asked_at);
            apply_state_in_tx(
                tx,
                backend,
                &ApplyState { user_id: f.user_id, state: f.state, now: f.now, src: &source },
            )
            .await?;
        }
    }
    Ok(())
}

/// [`apply_state_in_tx`], after the common case of a sync or a fresh state:
/// nothing changed. Then only `synced_at` moves and no target does (only news moves
/// targets), which one conditional UPDATE does, without reading the user first.
pub(crate) async fn apply_state_fast_or_in_tx(
    tx: &mut Tx,
    backend: Backend,
    p: &ApplyState<'_>,
) -> Result<StateApplied, StoreError> {
    let ApplyState { user_id, state, now, src } = *p;
    // REJECTED as before: the rejection time may still move (see `rejected_at_seen_sql`)
    let confirmed = (src.confirmed_ms(to_millis(now)), src.kind.confirmed_by());
    if src.kind != SourceKind::Webhook
        && user_state_unchanged_in_tx(tx, backend, &StateUnchanged { user_id, state, now, confirmed }).await?
    {
        return Ok(StateApplied::Applied {
            from: state,
            to: state,
            changed: false,
            started: 0,
            converted: 0,
            rejected: 0,
        });
    }
    apply_state_in_tx(tx, backend, p).await
}

/// A reported state of `user_id`, for [`apply_state_in_tx`] and
/// [`apply_state_fast_or_in_tx`]: `state`, from `src`, recorded at `now`.
#[derive(Clone, Copy)]
pub(crate) struct ApplyState<'a> {
    pub user_id: &'a str,
    pub state: VerificationState,
    pub now: DateTime<Utc>,
    pub src: &'a StateSource<'a>,
}

/// [`Store::user_apply_state`] inside an open write transaction.
pub(crate) async fn apply_state_in_tx(
    tx: &mut Tx,
    backend: Backend,
    p: &ApplyState<'_>,
) -> Result<StateApplied, StoreError> {
    let ApplyState { user_id, state: new, now, src } = *p;
    let Some(stored) = user_state_lock_in_tx(tx, backend, user_id).await? else {
        return Ok(StateApplied::UnknownUser);
    };
    // the row just locked holds this id: it names the user in the events
    let uid = UserId::parse(user_id).map_err(|e| StoreError::Conflict(format!("user_apply_state: {e}")))?;
    let (old, changed_at) = (stored.state, stored.changed_at);
    let now_ms = to_millis(now);
    // the sender's time, but never in our future
    let at_ms = src.occurred_at.map_or(now_ms, |t| to_millis(t).min(now_ms));
    if src.kind == SourceKind::Webhook
        && let Some(c) = changed_at
        && (at_ms < c || (at_ms == c && rank(new) < rank(old)))
    {
        return Ok(StateApplied::Stale);
    }
    let changed = old != new;
    // The later confirmation wins, by when each source saw the state and not by
    // when it arrived: a fresh state asked before a webhook's change, recorded
    // after it, does not undo it.
    let confirmed = (src.confirmed_ms(now_ms), src.kind.confirmed_by());
    if changed && stored.confirmed_at.is_some_and(|c| confirmed.0 < c) {
        return Ok(StateApplied::Stale);
    }
    let synced = (src.kind != SourceKind::Webhook).then_some(now_ms);
    if changed {
        let change = StateChange { user_id, new, at_ms, synced, now_ms, confirmed };
        user_state_change_in_tx(tx, backend, &change).await?;
        if new == VerificationState::Verified {
            // a pass replaces the last rejection's code
            user_failure_in_tx(tx, user_id, None, None).await?;
        }
        let detail = serde_json::json!({
            "from": old.as_str(), "to": new.as_str(), "source": src.kind.as_str(),
            "event_id": src.event_id, "failure_code": src.failure_code,
        });
        event_in_tx(
            tx,
            now,
            &TxEvent {
                actor: src.actor,
                kind: "user.state_changed",
                campaign_id: None,
                user_id: Some(&uid),
                detail: &detail,
            },
        )
        .await?;
    } else if new == VerificationState::Rejected {
        // REJECTED again: a rejection webhook is a rejection received now; any
        // source may date it after our latest session (see `rejected_at_seen_sql`)
        let again = RejectedAgain { user_id, synced, now_ms, webhook: src.kind == SourceKind::Webhook, confirmed };
        user_rejected_again_in_tx(tx, backend, &again).await?;
    } else {
        user_confirmed_in_tx(tx, user_id, synced, confirmed).await?;
    }

    let (mut started, mut converted, mut rejected) = (0, 0, 0);
    // Only news moves targets: a change, or a webhook (an event is news even when a
    // lost PENDING left the stored state equal). A sync that finds a user REJECTED as
    // before says nothing about the campaign's message.
    let news = changed || src.kind == SourceKind::Webhook;
    if new == VerificationState::Rejected && (src.failure_code.is_some() || src.failure_reason.is_some()) {
        user_failure_in_tx(tx, user_id, src.failure_code, src.failure_reason).await?;
    }
    if news && new != VerificationState::Unverified {
        started = target_events(tx, AfterMessage::Started, p, &uid, at_ms).await?;
    }
    match new {
        _ if !news => {}
        VerificationState::Verified => {
            // a verified user's click-through links have nothing left to do
            links_revoke_user_in_tx(tx, user_id, "verified", now).await?;
            converted = target_events(tx, AfterMessage::Converted, p, &uid, at_ms).await?;
        }
        VerificationState::Rejected => {
            rejected = target_events(tx, AfterMessage::Rejected, p, &uid, at_ms).await?;
            // a campaign that reminds the rejected does so once the cooldown is over
            let due = now + crate::domain::policy::rejection_cooldown();
            targets_reminder_recheck_in_tx(tx, user_id, due).await?;
        }
        VerificationState::Unverified => targets_reminder_recheck_in_tx(tx, user_id, now).await?,
        VerificationState::Pending => {}
    }
    Ok(StateApplied::Applied { from: old, to: new, changed, started, converted, rejected })
}

/// Moves the user's targets messaged no later than the change (see
/// [`AfterMessage`]) and appends its event for each; how many.
async fn target_events(
    tx: &mut Tx,
    which: AfterMessage,
    p: &ApplyState<'_>,
    uid: &UserId,
    at_ms: i64,
) -> Result<u64, StoreError> {
    let ApplyState { user_id, now, src, .. } = *p;
    let campaigns = targets_after_message_in_tx(tx, which, user_id, at_ms, now).await?;
    let detail = serde_json::json!({
        "source": src.kind.as_str(), "event_id": src.event_id, "failure_code": src.failure_code,
        "at": super::from_millis(at_ms),
    });
    for c in &campaigns {
        event_in_tx(
            tx,
            now,
            &TxEvent {
                actor: src.actor,
                kind: which.event_kind(),
                campaign_id: Some(*c),
                user_id: Some(uid),
                detail: &detail,
            },
        )
        .await?;
    }
    Ok(campaigns.len() as u64)
}

fn candidate(r: &sqlx::any::AnyRow) -> Result<SyncCandidate, sqlx::Error> {
    Ok(SyncCandidate { user_id: r.try_get("user_id")?, region: r.try_get("region")? })
}

impl Store {
    /// Applies a verification state reported for `user_id` at `now` (see the module
    /// docs): the user row, their targets' outcomes and the audit events, in one
    /// transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_apply_state(
        &self,
        user_id: &str,
        state: VerificationState,
        now: DateTime<Utc>,
        src: &StateSource<'_>,
    ) -> Result<StateApplied, StoreError> {
        let mut tx = self.begin_write().await?;
        let applied =
            apply_state_fast_or_in_tx(&mut tx, self.backend(), &ApplyState { user_id, state, now, src }).await?;
        tx.commit().await.map_err(query_err("user_apply_state commit"))?;
        Ok(applied)
    }

    /// Records a verified webhook event once: its id, and its effect, in one
    /// transaction. The same id again changes nothing. An unknown user is recorded
    /// (so that a retry is a duplicate) with an audit event.
    ///
    /// # Errors
    /// [`StoreError::Query`]: the caller answers 5xx and Baanx retries.
    pub async fn webhook_apply(&self, e: &KycEvent, now: DateTime<Utc>) -> Result<WebhookResult, StoreError> {
        let mut tx = self.begin_write().await?;
        let fresh = sqlx::query(
            "INSERT INTO webhook_events (event_id, received_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(e.event_id.as_str())
        .bind(to_millis(now))
        .execute(&mut *tx)
        .await
        .map_err(query_err("webhook_apply dedupe"))?
        .rows_affected();
        if fresh == 0 {
            tx.rollback().await.map_err(query_err("webhook_apply rollback"))?;
            return Ok(WebhookResult::Duplicate);
        }
        // a signed webhook accepted: the feed is alive
        super::feeds::feed_heard_in_tx(&mut tx, super::feeds::StateFeed::Webhook, now).await?;
        let src = StateSource {
            actor: "webhook:baanx",
            kind: SourceKind::Webhook,
            event_id: Some(&e.event_id),
            occurred_at: e.occurred_at,
            asked_at: None,
            failure_code: e.failure_code.as_deref(),
            failure_reason: e.failure_reason.as_deref(),
        };
        let applied = apply_state_in_tx(
            &mut tx,
            self.backend(),
            &ApplyState { user_id: &e.user_id, state: e.state, now, src: &src },
        )
        .await?;
        let note = match applied {
            StateApplied::UnknownUser => Some("webhook.unknown_user"),
            StateApplied::Stale => Some("webhook.stale"),
            StateApplied::Applied { .. } => None,
        };
        if let Some(kind) = note {
            let detail = serde_json::json!({
                "event_id": e.event_id, "state": e.state.as_str(), "occurred_at": e.occurred_at,
                // an unknown id is kept in the detail: the user column takes valid ids only
                "user_id": e.user_id.chars().take(64).collect::<String>(),
            });
            // the sender's id, read here: one that is no UUID goes in the detail only
            let user_id = UserId::parse(&e.user_id).ok();
            event_in_tx(
                &mut tx,
                now,
                &TxEvent { actor: src.actor, kind, campaign_id: None, user_id: user_id.as_ref(), detail: &detail },
            )
            .await?;
        }
        tx.commit().await.map_err(query_err("webhook_apply commit"))?;
        Ok(WebhookResult::Recorded(applied))
    }

    /// Up to `limit` reachable users after `after` (user id order) that `filter`
    /// selects: one page of `users sync`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_sync_page(
        &self,
        filter: &SyncFilter,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SyncCandidate>, StoreError> {
        let mut sql = format!("SELECT u.user_id, u.region FROM users u WHERE {REACHABLE} AND u.user_id > $1");
        let mut n = 1;
        if filter.synced_before.is_some() {
            n += 1;
            sql.push_str(&format!(" AND (u.synced_at IS NULL OR u.synced_at < ${n})"));
        }
        if filter.campaign_id.is_some() {
            n += 1;
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM campaign_targets t WHERE t.campaign_id = ${n} AND t.user_id = u.user_id)"
            ));
        }
        sql.push_str(&format!(" ORDER BY u.user_id LIMIT {}", limit.max(1)));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(after);
        if let Some(t) = filter.synced_before {
            q = q.bind(to_millis(t));
        }
        if let Some(c) = filter.campaign_id {
            q = q.bind(c);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(query_err("user_sync_page"))?;
        rows.iter().map(candidate).collect::<Result<_, _>>().map_err(query_err("user_sync_page"))
    }

    /// Up to `limit` notified targets of a campaign (after `after`, user id order)
    /// whose last session expired by `now` and whose user was not synced since: what
    /// a run syncs before it starts.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_expired_unsynced(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SyncCandidate>, StoreError> {
        let sql = format!(
            "SELECT u.user_id, u.region FROM campaign_targets t JOIN users u ON u.user_id = t.user_id \
             WHERE t.campaign_id = $1 AND t.status = 'notified' AND t.session_expires_at <= $2 \
               AND (u.synced_at IS NULL OR u.synced_at < t.session_expires_at) AND {REACHABLE} \
               AND t.user_id > $3 \
             ORDER BY t.user_id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(to_millis(now))
            .bind(after)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("target_expired_unsynced"))?;
        rows.iter().map(candidate).collect::<Result<_, _>>().map_err(query_err("target_expired_unsynced"))
    }
}

#[cfg(test)]
mod tests;
