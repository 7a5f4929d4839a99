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
//! - The rejection time only moves forward ([`rejected_at_seen_sql`]). A rejection
//!   webhook for a user already REJECTED is a new rejection (the PENDING before it
//!   was lost): the time moves to the receive time. Any source that finds a user
//!   REJECTED takes them to be rejected no earlier than the latest session we had
//!   issued them, and dates a REJECTED user with no known time at first sight, so
//!   that the cooldown has an end. The run's batched fresh states
//!   (`sessions::record_fresh_states`) apply the same rule.
//! - A target converts when its user becomes VERIFIED after a message of the campaign
//!   (`notified_at <= change time`), including a target re-queued for a reminder.
//!   A claimed target is left to the worker holding it. Targets move only on news: a
//!   change of state, or a webhook; a sync that finds the state it already knew
//!   (say, a REJECTED from before the message) moves nothing.
//! - Reminders re-queue set-based, in one statement per run.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::sessions::event_in_tx;
use super::targets::{AudienceSql, REACHABLE, bind_all};
use super::{Backend, Store, StoreError, greatest_sql, query_err, to_millis};
use crate::domain::VerificationState;
use crate::domain::policy;
use crate::domain::spec::{Audience, Reminders};

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
            failure_code: None,
            failure_reason: None,
        }
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

/// A target of the user that has had a message no later than the change (`$2`).
const AFTER_MESSAGE: &str = "user_id = $1 AND notified_at IS NOT NULL AND notified_at <= $2";

/// The ledger rows (alias `s`) of sessions Baanx issued, which the user may have
/// taken and been rejected on: `issued` (in flight, or its worker died), `delivered`,
/// `unknown` with an issue time (an interrupted attempt that got a session), and
/// `delivery_failed` (the channel gave up, which may follow a timeout after the
/// message was in fact handed over). Not `reserved` (no session yet) nor `api_failed`
/// (none was made): neither has an issue time.
const ISSUED_SESSION: &str =
    "s.issued_at IS NOT NULL AND s.status IN ('issued', 'delivered', 'unknown', 'delivery_failed')";

/// SQL for the rejection time of a user of table (or alias) `users` whom a source
/// reports REJECTED: never earlier than the stored time, than `at` (the receive
/// time of a rejection webhook), or than the issue time of the user's latest session
/// (seen REJECTED after we sent a session, they may have been rejected on it, and
/// Baanx counts its 24 h from then: later is the safe side); `first_seen` when none
/// of these is known, so that the cooldown has a fixed end instead of starting
/// again at each evaluation.
pub(crate) fn rejected_at_seen_sql(backend: Backend, users: &str, at: Option<&str>, first_seen: &str) -> String {
    let stored = format!("{users}.rejected_at");
    let issued = format!(
        "(SELECT MAX(s.issued_at) FROM verification_sessions s WHERE s.user_id = {users}.user_id AND {ISSUED_SESSION})"
    );
    let mut values = vec![stored.as_str()];
    values.extend(at);
    values.push(issued.as_str());
    format!("COALESCE({}, {first_seen})", greatest_sql(backend, &values))
}

/// [`apply_state_in_tx`], after the common case of a sync or a fresh state:
/// nothing changed. Then only `synced_at` moves and no target does (only news moves
/// targets), which one conditional UPDATE does, without reading the user first.
pub(crate) async fn apply_state_fast_or_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    user_id: &str,
    state: VerificationState,
    now: DateTime<Utc>,
    src: &StateSource<'_>,
) -> Result<StateApplied, StoreError> {
    if src.kind != SourceKind::Webhook {
        // REJECTED as before: the rejection time may still move (see `rejected_at_seen_sql`)
        let sql = if state == VerificationState::Rejected {
            format!(
                "UPDATE users SET synced_at = $2, rejected_at = {} WHERE user_id = $1 AND verification_state = $3",
                rejected_at_seen_sql(backend, "users", None, "$2")
            )
        } else {
            "UPDATE users SET synced_at = $2 WHERE user_id = $1 AND verification_state = $3".to_owned()
        };
        let unchanged = sqlx::query(AssertSqlSafe(sql))
            .bind(user_id)
            .bind(to_millis(now))
            .bind(state.as_str())
            .execute(&mut **tx)
            .await
            .map_err(query_err("user_apply_state unchanged"))?
            .rows_affected();
        if unchanged == 1 {
            return Ok(StateApplied::Applied {
                from: state,
                to: state,
                changed: false,
                started: 0,
                converted: 0,
                rejected: 0,
            });
        }
    }
    apply_state_in_tx(tx, backend, user_id, state, now, src).await
}

/// [`Store::user_apply_state`] inside an open write transaction.
pub(crate) async fn apply_state_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    user_id: &str,
    new: VerificationState,
    now: DateTime<Utc>,
    src: &StateSource<'_>,
) -> Result<StateApplied, StoreError> {
    let lock = match backend {
        Backend::Postgres => "SELECT verification_state, state_changed_at FROM users WHERE user_id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT verification_state, state_changed_at FROM users WHERE user_id = $1",
    };
    let Some(row) =
        sqlx::query(lock).bind(user_id).fetch_optional(&mut **tx).await.map_err(query_err("user_apply_state read"))?
    else {
        return Ok(StateApplied::UnknownUser);
    };
    let old: String = row.try_get("verification_state").map_err(query_err("user_apply_state read"))?;
    let old = old.parse::<VerificationState>().map_err(|e| StoreError::Conflict(e.to_string()))?;
    let changed_at: Option<i64> = row.try_get("state_changed_at").map_err(query_err("user_apply_state read"))?;
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
    let synced = (src.kind != SourceKind::Webhook).then_some(now_ms);
    if changed {
        let rejected = (new == VerificationState::Rejected).then_some(now_ms);
        // 1: a failure, 2: a success resets the count, 0: neither
        let failures: i64 = match new {
            VerificationState::Rejected => 1,
            VerificationState::Verified => 2,
            _ => 0,
        };
        // a rejection is dated now, but never before a time already known
        let rejected_at = if rejected.is_some() {
            rejected_at_seen_sql(backend, "users", Some("$4"), "$4")
        } else {
            "rejected_at".to_owned()
        };
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE users SET verification_state = $2, state_changed_at = $3, \
               rejected_at = {rejected_at}, last_failure_at = COALESCE($4, last_failure_at), \
               consecutive_failures = CASE WHEN $5 = 1 THEN consecutive_failures + 1 \
                                           WHEN $5 = 2 THEN 0 ELSE consecutive_failures END, \
               synced_at = COALESCE($6, synced_at), updated_at = $7 \
             WHERE user_id = $1"
        )))
        .bind(user_id)
        .bind(new.as_str())
        .bind(at_ms)
        .bind(rejected)
        .bind(failures)
        .bind(synced)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_apply_state update"))?;
        if new == VerificationState::Verified {
            // a pass replaces the last rejection's code
            set_failure(tx, user_id, None, None).await?;
        }
        let detail = serde_json::json!({
            "from": old.as_str(), "to": new.as_str(), "source": src.kind.as_str(),
            "event_id": src.event_id, "failure_code": src.failure_code,
        });
        event_in_tx(tx, now, src.actor, "user.state_changed", None, Some(user_id), &detail).await?;
    } else if new == VerificationState::Rejected {
        // REJECTED again: a rejection webhook is a rejection received now; any
        // source may date it after our latest session (see `rejected_at_seen_sql`)
        let at = (src.kind == SourceKind::Webhook).then_some("$3");
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE users SET synced_at = COALESCE($2, synced_at), rejected_at = {} WHERE user_id = $1",
            rejected_at_seen_sql(backend, "users", at, "$3")
        )))
        .bind(user_id)
        .bind(synced)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_apply_state rejected again"))?;
    } else if let Some(s) = synced {
        sqlx::query("UPDATE users SET synced_at = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(s)
            .execute(&mut **tx)
            .await
            .map_err(query_err("user_apply_state synced"))?;
    }

    let (mut started, mut converted, mut rejected) = (0, 0, 0);
    // Only news moves targets: a change, or a webhook (an event is news even when a
    // lost PENDING left the stored state equal). A sync that finds a user REJECTED as
    // before says nothing about the campaign's message.
    let news = changed || src.kind == SourceKind::Webhook;
    if new == VerificationState::Rejected && (src.failure_code.is_some() || src.failure_reason.is_some()) {
        set_failure(tx, user_id, src.failure_code, src.failure_reason).await?;
    }
    if news && new != VerificationState::Unverified {
        let sql = format!(
            "UPDATE campaign_targets SET started_at = $2, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND started_at IS NULL RETURNING campaign_id"
        );
        started = target_events(tx, &sql, user_id, at_ms, now, src, "target.started").await?;
    }
    match new {
        _ if !news => {}
        VerificationState::Verified => {
            // a verified user's click-through links have nothing left to do
            super::links::links_revoke_user_in_tx(tx, user_id, "verified", now).await?;
            let sql = format!(
                "UPDATE campaign_targets SET status = 'converted', reason = NULL, not_before = NULL, \
                   outcome = 'verified', outcome_at = $2, finalized_at = $3, updated_at = $3 \
                 WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') RETURNING campaign_id"
            );
            converted = target_events(tx, &sql, user_id, at_ms, now, src, "target.converted").await?;
        }
        VerificationState::Rejected => {
            let sql = format!(
                "UPDATE campaign_targets SET outcome = 'rejected', outcome_at = $2, updated_at = $3 \
                 WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') \
                   AND (outcome IS NULL OR outcome_at < $2) RETURNING campaign_id"
            );
            rejected = target_events(tx, &sql, user_id, at_ms, now, src, "target.rejected").await?;
        }
        _ => {}
    }
    Ok(StateApplied::Applied { from: old, to: new, changed, started, converted, rejected })
}

/// Records (or clears) the user's last rejection code and reason.
async fn set_failure(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user_id: &str,
    code: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET failure_code = $2, failure_reason = $3 WHERE user_id = $1")
        .bind(user_id)
        .bind(code)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_apply_state failure"))?;
    Ok(())
}

/// Runs a target update that returns `campaign_id`, and appends `kind` for each.
async fn target_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sql: &str,
    user_id: &str,
    at_ms: i64,
    now: DateTime<Utc>,
    src: &StateSource<'_>,
    kind: &'static str,
) -> Result<u64, StoreError> {
    let campaigns: Vec<i64> = sqlx::query(AssertSqlSafe(sql.to_owned()))
        .bind(user_id)
        .bind(at_ms)
        .bind(to_millis(now))
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("user_apply_state targets"))?
        .iter()
        .map(|r| r.try_get::<i64, _>("campaign_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err("user_apply_state targets"))?;
    let detail = serde_json::json!({
        "source": src.kind.as_str(), "event_id": src.event_id, "failure_code": src.failure_code,
        "at": super::from_millis(at_ms),
    });
    for c in &campaigns {
        event_in_tx(tx, now, src.actor, kind, Some(*c), Some(user_id), &detail).await?;
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
        let applied = apply_state_fast_or_in_tx(&mut tx, self.backend(), user_id, state, now, src).await?;
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
        let src = StateSource {
            actor: "webhook:baanx",
            kind: SourceKind::Webhook,
            event_id: Some(&e.event_id),
            occurred_at: e.occurred_at,
            failure_code: e.failure_code.as_deref(),
            failure_reason: e.failure_reason.as_deref(),
        };
        let applied = apply_state_in_tx(&mut tx, self.backend(), &e.user_id, e.state, now, &src).await?;
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
            event_in_tx(&mut tx, now, src.actor, kind, None, Some(&e.user_id), &detail).await?;
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
            sqlx::query(
                "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                 SELECT $2, 'engine', 'target.reminder_queued', campaign_id, user_id, \
                   '{\"step\":' || CAST(step AS TEXT) || '}' \
                 FROM campaign_targets \
                 WHERE campaign_id = $1 AND status = 'pending' AND reason = 'reminder' AND updated_at = $2",
            )
            .bind(campaign_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_err("target_requeue_reminders events"))?;
        }
        tx.commit().await.map_err(query_err("target_requeue_reminders commit"))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
