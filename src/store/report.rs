//! The rows of `campaign report`: one per target, read in keyset pages by user id so
//! that a report of millions of targets holds one page at a time, on both engines
//! (a server-side cursor would pin a Postgres connection and is not portable).
//!
//! A row carries what a compliance audit asks (status and reason, the time of each
//! step, the outcome, how many sessions and messages) and nothing it must not see:
//! no email, name, token, session URL, date of birth or SSN (the store holds none of
//! the last three at all).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, from_millis, query_err};

/// One target in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    pub user_id: String,
    pub status: String,
    pub reason: Option<String>,
    /// 0 = the first message, n = the n-th reminder.
    pub step: i64,
    pub attempts: i64,
    /// The user's verification state now.
    pub verification_state: String,
    pub targeted_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub first_notified_at: Option<DateTime<Utc>>,
    /// The last message.
    pub notified_at: Option<DateTime<Utc>>,
    /// The first click of a click-through link.
    pub clicked_at: Option<DateTime<Utc>>,
    /// PENDING seen after a message.
    pub started_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
    pub rejected_at: Option<DateTime<Utc>>,
    /// `verified` or `rejected`, when known.
    pub outcome: Option<String>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub sessions: i64,
    pub notifications: i64,
    /// Submitted clicks of its click-through links.
    pub clicks: i64,
    /// When its message bounced for good (issue 27).
    pub bounced_at: Option<DateTime<Utc>>,
    /// The status code and the remote server's words, scrubbed of addresses.
    pub bounce_diagnostic: Option<String>,
    /// When it was sent through the campaign's fallback channel.
    pub fallback_sent_at: Option<DateTime<Utc>>,
}

fn time(r: &sqlx::any::AnyRow, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(from_millis))
}

fn report_row(r: &sqlx::any::AnyRow) -> Result<ReportRow, sqlx::Error> {
    let outcome: Option<String> = r.try_get("outcome")?;
    let outcome_at = time(r, "outcome_at")?;
    let at_if = |o: &str| if outcome.as_deref() == Some(o) { outcome_at } else { None };
    Ok(ReportRow {
        user_id: r.try_get("user_id")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        step: r.try_get("step")?,
        attempts: r.try_get("attempts")?,
        verification_state: r.try_get("verification_state")?,
        targeted_at: from_millis(r.try_get("created_at")?),
        claimed_at: time(r, "claimed_at")?,
        first_notified_at: time(r, "first_notified_at")?,
        notified_at: time(r, "notified_at")?,
        clicked_at: time(r, "clicked_at")?,
        started_at: time(r, "started_at")?,
        verified_at: at_if("verified"),
        rejected_at: at_if("rejected"),
        finalized_at: time(r, "finalized_at")?,
        sessions: r.try_get("sessions")?,
        notifications: r.try_get("notifications")?,
        clicks: r.try_get("clicks")?,
        bounced_at: time(r, "bounced_at")?,
        bounce_diagnostic: r.try_get("bounce_diagnostic")?,
        fallback_sent_at: time(r, "fallback_sent_at")?,
        outcome,
    })
}

impl Store {
    /// Up to `limit` targets of a campaign with a user id above `after` ("" for the
    /// first page), in user id order. Call again with the last user id for the next.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_report_page(
        &self,
        campaign_id: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ReportRow>, StoreError> {
        // u.user_id > $2 repeats the bound for the join: Postgres derives equalities,
        // not ranges, and would merge-join from the first user on every page
        let rows = sqlx::query(
            "SELECT t.user_id, t.status, t.reason, t.step, t.attempts, u.verification_state, t.created_at, \
                    t.claimed_at, t.first_notified_at, t.notified_at, t.started_at, t.outcome, t.outcome_at, \
                    t.finalized_at, t.sessions, t.notifications, t.clicked_at, t.clicks, t.bounced_at, \
                    t.bounce_diagnostic, t.fallback_sent_at \
             FROM campaign_targets t JOIN users u ON u.user_id = t.user_id \
             WHERE t.campaign_id = $1 AND t.user_id > $2 AND u.user_id > $2 ORDER BY t.user_id LIMIT $3",
        )
        .bind(campaign_id)
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(self.pool())
        .await
        .map_err(query_err("target_report_page"))?;
        rows.iter().map(report_row).collect::<Result<_, _>>().map_err(query_err("target_report_page row"))
    }
}

#[cfg(any(test, feature = "testing"))]
impl Store {
    /// Benchmark and test fixture (`reverify-bench report`, `--only dashboard`): `n`
    /// generated users and one target each in `campaign_id`, in a mix of statuses,
    /// written by the database itself (a recursive CTE / `generate_series`) so that
    /// filling a million rows costs seconds and no client memory.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[doc(hidden)]
    pub async fn report_bench_fill(&self, campaign_id: i64, n: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        use super::Backend;
        let (seq, id) = match self.backend() {
            Backend::Sqlite => (
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)",
                "printf('00000000-0000-4000-8000-%012d', n)",
            ),
            Backend::Postgres => (
                "WITH seq(n) AS (SELECT generate_series(1, CAST($1 AS BIGINT)))",
                "'00000000-0000-4000-8000-' || lpad(CAST(n AS TEXT), 12, '0')",
            ),
        };
        let now_ms = super::to_millis(now);
        let mut tx = self.begin_write().await?;
        let users = format!(
            "{seq} INSERT INTO users (user_id, email, region, verification_state, tags, created_at, updated_at) \
             SELECT {id}, 'user' || CAST(n AS TEXT) || '@example.com', \
               CASE WHEN n % 4 = 0 THEN 'us' ELSE 'intl' END, \
               CASE n % 5 WHEN 1 THEN 'VERIFIED' WHEN 2 THEN 'REJECTED' ELSE 'UNVERIFIED' END, '', $2, $2 \
             FROM seq"
        );
        sqlx::query(sqlx::AssertSqlSafe(users))
            .bind(n)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_err("report_bench_fill users"))?;
        let targets = format!(
            "{seq} INSERT INTO campaign_targets (campaign_id, user_id, step, status, reason, attempts, sessions, \
               notifications, created_at, updated_at, claimed_at, notified_at, first_notified_at, session_expires_at, \
               started_at, outcome, outcome_at, finalized_at) \
             SELECT $3, {id}, n % 3, \
               CASE n % 5 WHEN 1 THEN 'converted' WHEN 3 THEN 'skipped' WHEN 4 THEN 'deferred' ELSE 'notified' END, \
               CASE n % 5 WHEN 3 THEN 'already_verified' WHEN 4 THEN 'rejection_cooldown' ELSE NULL END, \
               1, 1, 1, $2, $2, $2, $2 + 1000, $2 + 1000, $2 + 86401000, \
               CASE WHEN n % 5 IN (1, 2) THEN $2 + 60000 END, \
               CASE n % 5 WHEN 1 THEN 'verified' WHEN 2 THEN 'rejected' END, \
               CASE WHEN n % 5 IN (1, 2) THEN $2 + 120000 + n END, \
               CASE WHEN n % 5 IN (1, 3) THEN $2 + 120000 END \
             FROM seq"
        );
        sqlx::query(sqlx::AssertSqlSafe(targets))
            .bind(n)
            .bind(now_ms)
            .bind(campaign_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err("report_bench_fill targets"))?;
        tx.commit().await.map_err(query_err("report_bench_fill commit"))?;
        // planner statistics, as autovacuum would gather them after a bulk load;
        // without them Postgres joins each page against every user
        sqlx::query("ANALYZE").execute(self.pool()).await.map_err(query_err("report_bench_fill analyze"))?;
        Ok(())
    }
}
