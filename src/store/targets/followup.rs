//! Follow-up: when a campaign's held-back users come due again, between its ticks
//! (issue 23, design.md invariant 9).
//!
//! Every hold is a `not_before` on the target, read through the claim index
//! `(campaign_id, status, not_before)`:
//! - `deferred` (a cooldown, the daily cap, a concurrency slot, the send window) and
//!   `pending` with a time (an ambiguous 5xx, a rate limit): due at `not_before`;
//! - `pending` without a time (targeted, not yet claimed): due now;
//! - `notified` with steps left: `not_before` is when its next reminder is checked
//!   (stamped by [`Store::target_stamp_reminders`] once the message is recorded,
//!   pushed on by the reminder pass when the user does not qualify yet, and set to
//!   [`NO_REMINDER_YET`] when only a change of the user's state can make them
//!   qualify);
//! - `claimed` under an expired lease (a dead worker's): due at the expiry.
//!
//! So the earliest follow-up of a campaign is four index lookups and a walk over
//! its few claimed rows, whatever the campaign's size: the daemon asks it of every
//! campaign on every pass.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::super::{Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::TargetReason;
use crate::domain::spec::Reminders;

/// A notified target's `not_before` when no reminder can come due until the user's
/// state changes (PENDING, or REJECTED in a campaign that does not remind the
/// rejected): 9999-12-31, beyond any follow-up. A state change brings it back
/// (`targets_reminder_recheck_in_tx`).
pub const NO_REMINDER_YET: i64 = 253_402_300_799_000;

/// What comes next for a campaign's held-back users (`campaign status`, `show`,
/// the dashboard).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FollowUpPlan {
    /// The earliest time a held-back user of the campaign is due.
    pub at: DateTime<Utc>,
    /// The users due by then and within the minute after it (one follow-up pass
    /// takes them all).
    pub users: i64,
    /// Those users by the reason they wait for (`reminder` for reminders; `new`
    /// for targets not yet claimed; `lease_expired` for a dead worker's claims).
    pub reasons: Vec<(String, i64)>,
}

impl FollowUpPlan {
    /// `2026-12-07T14:00:00Z: 212 users (send_window 180, rejection_cooldown 32)`.
    pub fn describe(&self) -> String {
        let reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let users = if self.users == 1 { "1 user".to_owned() } else { format!("{} users", self.users) };
        format!("{}: {users} ({})", self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), reasons.join(", "))
    }
}

/// The earliest `not_before` of one kind of held-back target (`$1` campaign).
fn earliest(filter: &str) -> String {
    format!(
        "SELECT (SELECT not_before FROM campaign_targets WHERE campaign_id = $1 AND {filter} \
           AND not_before IS NOT NULL ORDER BY not_before LIMIT 1) AS t"
    )
}

impl Store {
    /// When the campaign's first held-back user is due (see the module docs);
    /// `None` when none waits. `now` is returned for targets due at once.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_next_follow_up(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = format!(
            "SELECT MIN(t) AS t FROM ({} UNION ALL {} UNION ALL {} \
               UNION ALL SELECT (SELECT CAST($2 AS BIGINT) FROM campaign_targets \
                 WHERE campaign_id = $1 AND status = 'pending' AND not_before IS NULL LIMIT 1) AS t \
               UNION ALL SELECT (SELECT MIN(lease_expires_at) FROM campaign_targets \
                 WHERE campaign_id = $1 AND status = 'claimed') AS t) AS x",
            earliest("status = 'deferred'"),
            earliest("status = 'pending'"),
            earliest(&format!("status = 'notified' AND not_before < {NO_REMINDER_YET}")),
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(to_millis(now))
            .fetch_one(self.pool())
            .await
            .map_err(query_err("target_next_follow_up"))?;
        Ok(row.try_get::<Option<i64>, _>("t").map_err(query_err("target_next_follow_up"))?.map(from_millis))
    }

    /// The campaign's next follow-up, with how many users it takes and why they
    /// waited; `None` when none waits.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_follow_up_plan(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<FollowUpPlan>, StoreError> {
        let Some(at) = self.target_next_follow_up(campaign_id, now).await? else { return Ok(None) };
        let by = to_millis(at.max(now)) + 60_000;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT CASE WHEN status = 'notified' THEN 'reminder' \
                         WHEN status = 'claimed' THEN 'lease_expired' \
                         WHEN not_before IS NULL THEN 'new' \
                         ELSE COALESCE(reason, status) END AS why, COUNT(*) AS n \
             FROM campaign_targets WHERE campaign_id = $1 AND ( \
               (status IN ('deferred', 'pending') AND not_before <= $2) \
               OR (status = 'pending' AND not_before IS NULL) \
               OR (status = 'notified' AND not_before <= $2 AND not_before < {NO_REMINDER_YET}) \
               OR (status = 'claimed' AND lease_expires_at <= $2)) \
             GROUP BY 1 ORDER BY 2 DESC, 1"
        )))
        .bind(campaign_id)
        .bind(by)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("target_follow_up_plan"))?;
        let mut reasons = Vec::with_capacity(rows.len());
        for r in &rows {
            let why: String = r.try_get("why").map_err(query_err("target_follow_up_plan"))?;
            let n: i64 = r.try_get("n").map_err(query_err("target_follow_up_plan"))?;
            reasons.push((why, n));
        }
        let users = reasons.iter().map(|(_, n)| n).sum();
        Ok(Some(FollowUpPlan { at, users, reasons }))
    }

    /// Stamps each notified target that has reminders left with the time its next
    /// reminder is due: `reminders.after` after its message, and not before its
    /// session expired. Set-based; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_stamp_reminders(&self, campaign_id: i64, reminders: &Reminders) -> Result<u64, StoreError> {
        let after_ms = i64::try_from(reminders.after.0.as_millis()).unwrap_or(i64::MAX / 4);
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE campaign_targets SET not_before = CASE \
                 WHEN COALESCE(session_expires_at, 0) > COALESCE(notified_at, 0) + $3 THEN session_expires_at \
                 ELSE COALESCE(notified_at, 0) + $3 END \
             WHERE campaign_id = $1 AND status = 'notified' AND not_before IS NULL AND step < $2",
        )
        .bind(campaign_id)
        .bind(i64::from(reminders.max))
        .bind(after_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err("target_stamp_reminders"))?
        .rows_affected();
        tx.commit().await.map_err(query_err("target_stamp_reminders commit"))?;
        Ok(n)
    }
}

/// The campaign ended (`ends_at`): its waiting targets (pending, deferred, and a
/// dead worker's claims) are skipped with reason `campaign_ended`, and no reminder
/// is due any more. Claims a live worker holds are left to it (its pipeline sends
/// nothing after `ends_at`). Returns how many were skipped.
pub(crate) async fn targets_end_campaign_in_tx(
    tx: &mut super::super::group::Tx,
    campaign_id: i64,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let now_ms = to_millis(now);
    let skipped = sqlx::query(
        "UPDATE campaign_targets SET status = 'skipped', reason = $3, not_before = NULL, lease_owner = NULL, \
               lease_expires_at = NULL, finalized_at = $2, updated_at = $2 \
             WHERE campaign_id = $1 AND (status IN ('pending', 'deferred') \
               OR (status = 'claimed' AND lease_expires_at < $2))",
    )
    .bind(campaign_id)
    .bind(now_ms)
    .bind(TargetReason::CampaignEnded.as_str())
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_end_campaign"))?
    .rows_affected();
    sqlx::query(
        "UPDATE campaign_targets SET not_before = NULL \
             WHERE campaign_id = $1 AND status = 'notified' AND not_before IS NOT NULL",
    )
    .bind(campaign_id)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_end_campaign reminders"))?;
    Ok(skipped)
}

/// A user's state changed to one a reminder may follow (UNVERIFIED now; REJECTED,
/// once the 24 h cooldown is over: `due_at`): their notified targets that waited for
/// such a change ([`NO_REMINDER_YET`]) are checked again then.
pub(crate) async fn targets_reminder_recheck_in_tx(
    tx: &mut super::super::group::Tx,
    user_id: &str,
    due_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaign_targets SET not_before = $2 \
         WHERE user_id = $1 AND status = 'notified' AND not_before = $3",
    )
    .bind(user_id)
    .bind(to_millis(due_at))
    .bind(NO_REMINDER_YET)
    .execute(&mut **tx)
    .await
    .map_err(query_err("targets_reminder_recheck"))?;
    Ok(())
}
