//! What `campaign status` and `campaign plan` show: counts straight from the rows,
//! so that the numbers always equal the table (design.md, invariant 5).

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::targets::{AudienceSql, REACHABLE, StatusCount, bind_all};
use super::{Store, StoreError, query_err, to_millis};
use crate::domain::spec::Audience;

/// A campaign's progress.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CampaignProgress {
    /// Every target, by status and reason.
    pub by_status: Vec<StatusCount>,
    pub targeted: i64,
    /// Sessions the ledger counts for the campaign.
    pub sessions_issued: i64,
    /// Users notified in the last minute.
    pub notified_last_minute: i64,
    /// Targets that can be worked on now (pending, or deferred until now or earlier, or
    /// claimed with an expired lease).
    pub due_now: i64,
    /// Earliest time a deferred target becomes due.
    pub next_deferred_at: Option<DateTime<Utc>>,
}

impl CampaignProgress {
    /// Targets with this status, over every reason.
    pub fn count(&self, status: &str) -> i64 {
        self.by_status.iter().filter(|c| c.status == status).map(|c| c.count).sum()
    }

    /// Users per second over the last minute.
    pub fn rate_per_second(&self) -> f64 {
        self.notified_last_minute as f64 / 60.0
    }

    /// Seconds until the due targets are done at the last minute's rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.rate_per_second();
        (rate > 0.0).then(|| self.due_now as f64 / rate)
    }
}

/// One bucket of `campaign plan`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanBucket {
    /// `target` (would be added now), `target_deferred` (added, deferred by the
    /// rejection cooldown), or the first reason a user is excluded.
    pub bucket: String,
    pub count: i64,
}

impl Store {
    /// The campaign's progress at `now`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_progress(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
    ) -> Result<CampaignProgress, StoreError> {
        let by_status = self.target_counts(campaign_id).await?;
        let now_ms = to_millis(now);
        let row = sqlx::query(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN notified_at > $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS last_minute, \
               CAST(COALESCE(SUM(CASE WHEN (status IN ('pending', 'deferred') \
                          AND (not_before IS NULL OR not_before <= $3)) OR status = 'claimed' \
                          THEN 1 ELSE 0 END), 0) AS BIGINT) AS due_now, \
               MIN(CASE WHEN status IN ('pending', 'deferred') AND not_before > $3 THEN not_before END) AS next_deferred \
             FROM campaign_targets WHERE campaign_id = $1",
        )
        .bind(campaign_id)
        .bind(now_ms - 60_000)
        .bind(now_ms)
        .fetch_one(self.pool())
        .await
        .map_err(query_err("campaign_progress"))?;
        let get = |name: &str| row.try_get::<i64, _>(name).map_err(query_err("campaign_progress"));
        let next: Option<i64> = row.try_get("next_deferred").map_err(query_err("campaign_progress"))?;
        Ok(CampaignProgress {
            targeted: by_status.iter().map(|c| c.count).sum(),
            by_status,
            sessions_issued: self.session_count(campaign_id).await?,
            notified_last_minute: get("last_minute")?,
            due_now: get("due_now")?,
            next_deferred_at: next.map(super::from_millis),
        })
    }

    /// Who a run would target now, counted by bucket, without calling the API.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_plan(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanBucket>, StoreError> {
        let aud = AudienceSql::build(audience, 3);
        let mut case = String::from(
            "CASE WHEN EXISTS (SELECT 1 FROM campaign_targets t WHERE t.campaign_id = $1 AND t.user_id = u.user_id) \
               THEN 'already_targeted'",
        );
        for (name, pred) in &aud.predicates {
            case.push_str(&format!(" WHEN NOT ({pred}) THEN 'not_matching_{name}'"));
        }
        case.push_str(
            " WHEN u.refresh_token_enc IS NULL THEN 'no_refresh_token' \
              WHEN u.consent_required_at IS NOT NULL THEN 'consent_required' \
              WHEN u.verification_state = 'REJECTED' AND COALESCE(u.rejected_at, $2) + 86400000 > $2 \
                THEN 'target_deferred' \
              ELSE 'target' END",
        );
        debug_assert!(REACHABLE.contains("consent_required_at"));
        let sql = format!(
            "SELECT bucket, COUNT(*) AS n FROM (SELECT {case} AS bucket FROM users u) b GROUP BY bucket ORDER BY bucket"
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(to_millis(now));
        let rows = bind_all(q, &aud.binds).fetch_all(self.pool()).await.map_err(query_err("campaign_plan"))?;
        rows.iter()
            .map(|r| Ok(PlanBucket { bucket: r.try_get("bucket")?, count: r.try_get("n")? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("campaign_plan row"))
    }
}
