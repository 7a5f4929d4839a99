//! What `campaign status` and `campaign plan` show: counts straight from the rows,
//! so that the numbers always equal the table (design.md, invariant 5).

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::targets::{AudienceSql, StatusCount, bind_all};
use super::{Store, StoreError, query_err, to_millis};
use crate::domain::spec::Audience;
use crate::domain::{TargetReason, TargetStatus};

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
    /// What became of the notified users.
    pub funnel: Funnel,
}

/// The outcome funnel: targeted → notified → started → verified or rejected.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Funnel {
    pub targeted: i64,
    /// Sent at least one message.
    pub notified: i64,
    /// Notified, then clicked a click-through link (click mode only).
    pub clicked: i64,
    /// Notified, and the message bounced for good (issue 27).
    pub bounced: i64,
    /// Bounced, then sent through the campaign's fallback channel.
    pub fallback_sent: i64,
    /// Notified, then seen PENDING (or decided) after a message.
    pub started: i64,
    /// Converted: VERIFIED after a message.
    pub verified: i64,
    /// Notified, then REJECTED, and not (yet) verified.
    pub rejected: i64,
    /// Notified, the session expired, and the user is still UNVERIFIED.
    pub no_response_after_expiry: i64,
    /// Median time from the first message to VERIFIED, over converted targets.
    pub median_seconds_to_verify: Option<f64>,
}

impl Funnel {
    /// Hard bounces over messages sent (0 when none was sent).
    pub fn bounce_rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        if self.notified > 0 { self.bounced as f64 / self.notified as f64 } else { 0.0 }
    }
}

/// Targets by reason, within one status.
pub type ReasonCounts = Vec<(TargetReason, i64)>;

impl CampaignProgress {
    /// Targets with this status, over every reason.
    pub fn count(&self, status: TargetStatus) -> i64 {
        self.by_status.iter().filter(|c| c.status == status).map(|c| c.count).sum()
    }

    /// The listing `campaign status` and the dashboard show: each status in
    /// [`TargetStatus::BY_PROGRESS`] order (pending and notified even when empty),
    /// its count, and its counts by reason.
    pub fn listing(&self) -> Vec<(TargetStatus, i64, ReasonCounts)> {
        TargetStatus::BY_PROGRESS
            .into_iter()
            .map(|status| (status, self.count(status)))
            .filter(|(status, n)| *n > 0 || status.shown_when_zero())
            .map(|(status, n)| {
                let reasons = self
                    .by_status
                    .iter()
                    .filter(|r| r.status == status)
                    .filter_map(|r| r.reason.map(|reason| (reason, r.count)))
                    .collect();
                (status, n, reasons)
            })
            .collect()
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
        let now_ms = to_millis(now);
        // the parts at once, each on a connection of its own: on Postgres the page of
        // a 1,000,000-target campaign waits for the slowest scan, not their sum
        let counts = async {
            sqlx::query(
                "SELECT \
                   CAST(COALESCE(SUM(CASE WHEN notified_at > $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS last_minute, \
                   CAST(COALESCE(SUM(CASE WHEN (status IN ('pending', 'deferred') \
                              AND (not_before IS NULL OR not_before <= $3)) OR status = 'claimed' \
                              THEN 1 ELSE 0 END), 0) AS BIGINT) AS due_now, \
                   MIN(CASE WHEN status IN ('pending', 'deferred') AND not_before > $3 THEN not_before END) \
                     AS next_deferred \
                 FROM campaign_targets WHERE campaign_id = $1",
            )
            .bind(campaign_id)
            .bind(now_ms - 60_000)
            .bind(now_ms)
            .fetch_one(self.pool())
            .await
            .map_err(query_err("campaign_progress"))
        };
        let (by_status, row, sessions_issued, funnel) = futures::try_join!(
            self.target_counts(campaign_id),
            counts,
            self.session_count(campaign_id),
            self.campaign_funnel(campaign_id, now),
        )?;
        let get = |name: &str| row.try_get::<i64, _>(name).map_err(query_err("campaign_progress"));
        let next: Option<i64> = row.try_get("next_deferred").map_err(query_err("campaign_progress"))?;
        Ok(CampaignProgress {
            targeted: by_status.iter().map(|c| c.count).sum(),
            by_status,
            sessions_issued,
            notified_last_minute: get("last_minute")?,
            due_now: get("due_now")?,
            next_deferred_at: next.map(super::from_millis),
            funnel,
        })
    }

    /// The campaign's outcome funnel at `now`, counted from the rows.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_funnel(&self, campaign_id: i64, now: DateTime<Utc>) -> Result<Funnel, StoreError> {
        let sum = |cond: &str| format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0) AS BIGINT)");
        let sql = format!(
            "SELECT COUNT(*) AS targeted, {notified} AS notified, {clicked} AS clicked, {started} AS started, \
               {bounced} AS bounced, {fallback} AS fallback_sent, \
               {verified} AS verified, \
               {rejected} AS rejected, {silent} AS silent \
             FROM campaign_targets t JOIN users u ON u.user_id = t.user_id WHERE t.campaign_id = $1",
            notified = sum("t.first_notified_at IS NOT NULL"),
            clicked = sum("t.first_notified_at IS NOT NULL AND t.clicked_at IS NOT NULL"),
            bounced = sum("t.bounced_at IS NOT NULL"),
            fallback = sum("t.fallback_sent_at IS NOT NULL"),
            started = sum("t.first_notified_at IS NOT NULL AND t.started_at IS NOT NULL"),
            verified = sum("t.status = 'converted'"),
            rejected = sum("t.outcome = 'rejected' AND t.status <> 'converted'"),
            silent =
                sum("t.status = 'notified' AND t.session_expires_at <= $2 AND u.verification_state = 'UNVERIFIED'"),
        );
        let read = async {
            sqlx::query(AssertSqlSafe(sql))
                .bind(campaign_id)
                .bind(to_millis(now))
                .fetch_one(self.pool())
                .await
                .map_err(query_err("campaign_funnel"))
        };
        let (row, median) = futures::try_join!(read, self.median_ms_to_verify(campaign_id))?;
        let get = |name: &str| row.try_get::<i64, _>(name).map_err(query_err("campaign_funnel"));
        let mut f = Funnel {
            targeted: get("targeted")?,
            notified: get("notified")?,
            clicked: get("clicked")?,
            bounced: get("bounced")?,
            fallback_sent: get("fallback_sent")?,
            started: get("started")?,
            verified: get("verified")?,
            rejected: get("rejected")?,
            no_response_after_expiry: get("silent")?,
            median_seconds_to_verify: None,
        };
        f.median_seconds_to_verify = median.map(|ms| ms / 1000.0);
        Ok(f)
    }

    /// The median of `outcome_at - first_notified_at` over converted targets, in the
    /// database and portably (SQLite has no percentile): count, then read the one or
    /// two middle values in order. Memory stays constant however many rows.
    async fn median_ms_to_verify(&self, campaign_id: i64) -> Result<Option<f64>, StoreError> {
        const CONVERTED: &str = "campaign_id = $1 AND status = 'converted' \
             AND outcome_at IS NOT NULL AND first_notified_at IS NOT NULL";
        let n: i64 =
            sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM campaign_targets WHERE {CONVERTED}")))
                .bind(campaign_id)
                .fetch_one(self.pool())
                .await
                .and_then(|r| r.try_get("n"))
                .map_err(query_err("campaign_funnel median"))?;
        if n == 0 {
            return Ok(None);
        }
        let take = if n % 2 == 0 { 2 } else { 1 };
        let sql = format!(
            "SELECT outcome_at - first_notified_at AS d FROM campaign_targets WHERE {CONVERTED} \
             ORDER BY d LIMIT {take} OFFSET {}",
            (n - 1) / 2
        );
        let middle: Vec<i64> = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("campaign_funnel median"))?
            .iter()
            .map(|r| r.try_get::<i64, _>("d"))
            .collect::<Result<_, _>>()
            .map_err(query_err("campaign_funnel median"))?;
        Ok((!middle.is_empty()).then(|| middle.iter().sum::<i64>() as f64 / middle.len() as f64))
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
        let aud = AudienceSql::build(audience, 3, self.backend());
        let case = plan_case(&aud);
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

    /// Of the users a run would add now as due targets (the plan's `target` bucket)
    /// and the campaign's targets waiting (pending or deferred), how many have a
    /// state confirmed no earlier than `since` (and so skip the fresh-state call),
    /// and the oldest such confirmation.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_plan_fresh(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let aud = AudienceSql::build(audience, 3, self.backend());
        let case = plan_case(&aud);
        let since = to_millis(since);
        let sql = format!(
            "SELECT COUNT(*) AS n, MIN(confirmed) AS oldest FROM ( \
               SELECT u.state_confirmed_at AS confirmed FROM ( \
                 SELECT {case} AS bucket, u.state_confirmed_at FROM users u) u \
               WHERE u.bucket = 'target' AND u.state_confirmed_at >= {since} \
               UNION ALL \
               SELECT u.state_confirmed_at FROM campaign_targets t JOIN users u ON u.user_id = t.user_id \
               WHERE t.campaign_id = $1 AND t.status IN ('pending', 'deferred') \
                 AND u.state_confirmed_at >= {since}) f"
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(to_millis(now));
        let row = bind_all(q, &aud.binds).fetch_one(self.pool()).await.map_err(query_err("campaign_plan_fresh"))?;
        let n: i64 = row.try_get("n").map_err(query_err("campaign_plan_fresh row"))?;
        let oldest: Option<i64> = row.try_get("oldest").map_err(query_err("campaign_plan_fresh row"))?;
        Ok((n, oldest.map(super::from_millis)))
    }

    /// The users a run would add now as due targets (the plan's `target` bucket),
    /// counted by their stored time zone, for the send-window forecast.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_plan_zones(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        let aud = AudienceSql::build(audience, 3, self.backend());
        let case = plan_case(&aud);
        let sql = format!(
            "SELECT zone, COUNT(*) AS n FROM (SELECT {case} AS bucket, u.timezone AS zone FROM users u) b \
             WHERE bucket = 'target' GROUP BY zone"
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(to_millis(now));
        let rows = bind_all(q, &aud.binds).fetch_all(self.pool()).await.map_err(query_err("campaign_plan_zones"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("zone")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("campaign_plan_zones row"))
    }

    /// Targets waiting for their send window (`deferred`, reason `send_window`), and
    /// the earliest opening among them.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_window_waiting(&self, campaign_id: i64) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(not_before) AS next FROM campaign_targets \
             WHERE campaign_id = $1 AND status = 'deferred' AND reason = 'send_window'",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .map_err(query_err("target_window_waiting"))?;
        let n: i64 = row.try_get("n").map_err(query_err("target_window_waiting row"))?;
        let next: Option<i64> = row.try_get("next").map_err(query_err("target_window_waiting row"))?;
        Ok((n, next.map(super::from_millis)))
    }
}

/// The plan's bucket of one user `u`, as SQL: already a target, not matching a part
/// of the audience, no token, no consent, deferred for a rejection, or a target.
fn plan_case(aud: &AudienceSql) -> String {
    let mut case = String::from(
        "CASE WHEN EXISTS (SELECT 1 FROM campaign_targets t WHERE t.campaign_id = $1 AND t.user_id = u.user_id) \
           THEN 'already_targeted'",
    );
    for (name, pred) in &aud.predicates {
        case.push_str(&format!(" WHEN NOT ({pred}) THEN 'not_matching_{name}'"));
    }
    for (reason, pred) in &aud.exclusions {
        case.push_str(&format!(" WHEN NOT ({pred}) THEN '{reason}'"));
    }
    case.push_str(
        " WHEN u.refresh_token_enc IS NULL THEN 'no_refresh_token' \
          WHEN u.consent_required_at IS NOT NULL THEN 'consent_required' \
          WHEN u.verification_state = 'REJECTED' AND COALESCE(u.rejected_at, $2) + 86400000 > $2 \
            THEN 'target_deferred' \
          ELSE 'target' END",
    );
    case
}
