//! What the dashboard shows beyond `campaign status` (whose queries it reuses, in
//! [`super::progress`]): sends and conversions over time, who is deferred until
//! when, recent runs, the audit trail a page at a time, and one user's targets and
//! ledger across campaigns.
//!
//! Every statement here reads a range of an index: the 1,000,000-target campaign of
//! `reverify-bench` (figure `dashboard_p95_ms`) must render in under 200 ms on
//! Postgres. Migration 0010 adds the indexes the series read.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::events::{Event, event_from_row};
use super::{Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::UserId;

/// One hour, the series' finest bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// Targets first notified, and converted, per hour since the campaign began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    /// (hour start in Unix ms, first messages sent in that hour)
    pub sends: Vec<(i64, i64)>,
    /// (hour start in Unix ms, targets converted in that hour)
    pub conversions: Vec<(i64, i64)>,
}

/// Deferred targets that become due in one hour, for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredBucket {
    pub reason: String,
    /// The start of the hour (Unix ms) the targets become due in.
    pub hour: i64,
    pub count: i64,
}

/// A deferred target, for the "who" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredTarget {
    pub user_id: String,
    pub reason: String,
    pub not_before: DateTime<Utc>,
}

/// One run, as `campaign_runs` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: i64,
    pub campaign_id: i64,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `finished`, `interrupted` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
    pub targeted: i64,
    pub notified: i64,
    pub skipped: i64,
    pub deferred: i64,
    pub failed: i64,
}

/// One of a user's targets, with its campaign's name.
#[derive(Debug, Clone, PartialEq)]
pub struct UserTarget {
    pub campaign: String,
    pub step: i64,
    pub status: String,
    pub reason: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub first_notified_at: Option<DateTime<Utc>>,
    pub notified_at: Option<DateTime<Utc>>,
    pub clicked_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub outcome_at: Option<DateTime<Utc>>,
    pub sessions: i64,
    pub notifications: i64,
}

/// One ledger row of a user (never a URL: the ledger holds none).
#[derive(Debug, Clone, PartialEq)]
pub struct UserSession {
    pub campaign: Option<String>,
    pub step: i64,
    pub status: String,
    pub reserved_at: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "run_id, campaign_id, worker_id, started_at, finished_at, outcome, error, targeted, \
                           notified, skipped, deferred, failed";

fn run_from_row(r: &sqlx::any::AnyRow) -> Result<RunRow, sqlx::Error> {
    Ok(RunRow {
        run_id: r.try_get("run_id")?,
        campaign_id: r.try_get("campaign_id")?,
        worker_id: r.try_get("worker_id")?,
        started_at: from_millis(r.try_get("started_at")?),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(from_millis),
        outcome: r.try_get("outcome")?,
        error: r.try_get("error")?,
        targeted: r.try_get("targeted")?,
        notified: r.try_get("notified")?,
        skipped: r.try_get("skipped")?,
        deferred: r.try_get("deferred")?,
        failed: r.try_get("failed")?,
    })
}

fn opt_time(r: &sqlx::any::AnyRow, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(from_millis))
}

impl Store {
    /// First messages and conversions per hour. Each is a range of its own index
    /// (migration 0010), so the cost is the campaign's rows read from an index
    /// only, never the table.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn dashboard_series(&self, campaign_id: i64) -> Result<Series, StoreError> {
        let read = |col: &'static str, cond: &'static str| {
            let sql = format!(
                "SELECT {col} / {HOUR_MS} AS h, COUNT(*) AS n FROM campaign_targets \
                 WHERE campaign_id = $1 AND {cond} GROUP BY {col} / {HOUR_MS} ORDER BY h"
            );
            async move {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(campaign_id)
                    .fetch_all(self.pool())
                    .await
                    .map_err(query_err("dashboard_series"))?;
                rows.iter()
                    .map(|r| Ok((r.try_get::<i64, _>("h")? * HOUR_MS, r.try_get::<i64, _>("n")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(query_err("dashboard_series row"))
            }
        };
        let (sends, conversions) = futures::try_join!(
            read("first_notified_at", "first_notified_at IS NOT NULL"),
            read("outcome_at", "outcome = 'verified' AND outcome_at IS NOT NULL"),
        )?;
        Ok(Series { sends, conversions })
    }

    /// Deferred targets counted by reason and by the hour they become due.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn dashboard_deferred(&self, campaign_id: i64) -> Result<Vec<DeferredBucket>, StoreError> {
        let sql = format!(
            "SELECT COALESCE(reason, '') AS reason, COALESCE(not_before, 0) / {HOUR_MS} AS h, COUNT(*) AS n \
             FROM campaign_targets WHERE campaign_id = $1 AND status = 'deferred' \
             GROUP BY COALESCE(reason, ''), COALESCE(not_before, 0) / {HOUR_MS} ORDER BY h, reason"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("dashboard_deferred"))?;
        rows.iter()
            .map(|r| {
                Ok(DeferredBucket {
                    reason: r.try_get("reason")?,
                    hour: r.try_get::<i64, _>("h")? * HOUR_MS,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("dashboard_deferred row"))
    }

    /// The `limit` deferred targets that become due first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn dashboard_deferred_next(
        &self,
        campaign_id: i64,
        limit: u32,
    ) -> Result<Vec<DeferredTarget>, StoreError> {
        let sql = format!(
            "SELECT user_id, COALESCE(reason, '') AS reason, COALESCE(not_before, 0) AS nb FROM campaign_targets \
             WHERE campaign_id = $1 AND status = 'deferred' ORDER BY not_before, user_id LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("dashboard_deferred_next"))?;
        rows.iter()
            .map(|r| {
                Ok(DeferredTarget {
                    user_id: r.try_get("user_id")?,
                    reason: r.try_get("reason")?,
                    not_before: from_millis(r.try_get("nb")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("dashboard_deferred_next row"))
    }

    /// A campaign's latest `limit` runs, newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_recent(&self, campaign_id: i64, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM campaign_runs WHERE campaign_id = $1 ORDER BY run_id DESC LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("run_recent"))?;
        rows.iter().map(run_from_row).collect::<Result<_, _>>().map_err(query_err("run_recent row"))
    }

    /// Every campaign's latest run.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_latest_each(&self) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM campaign_runs WHERE run_id IN \
             (SELECT MAX(run_id) FROM campaign_runs GROUP BY campaign_id)"
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.pool()).await.map_err(query_err("run_latest_each"))?;
        rows.iter().map(run_from_row).collect::<Result<_, _>>().map_err(query_err("run_latest_each row"))
    }

    /// A campaign's events newest first: up to `limit` with an id below `before`
    /// (`None`: the newest), and whether there are older ones.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn event_page_desc(
        &self,
        campaign_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let sql = format!(
            "SELECT event_id, at, actor, kind, campaign_id, user_id, detail FROM events \
             WHERE campaign_id = $1 AND event_id < $2 ORDER BY event_id DESC LIMIT {}",
            limit + 1
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(before.unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(query_err("event_page_desc"))?;
        let more = rows.len() > limit as usize;
        let events = rows
            .iter()
            .take(limit as usize)
            .map(event_from_row)
            .collect::<Result<_, _>>()
            .map_err(query_err("event_page_desc row"))?;
        Ok((events, more))
    }

    /// A user's targets in every campaign, newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_targets(&self, user: &UserId) -> Result<Vec<UserTarget>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.name, t.step, t.status, t.reason, t.not_before, t.created_at, t.first_notified_at, \
               t.notified_at, t.clicked_at, t.started_at, t.outcome, t.outcome_at, t.sessions, t.notifications \
             FROM campaign_targets t JOIN campaigns c ON c.campaign_id = t.campaign_id \
             WHERE t.user_id = $1 ORDER BY t.created_at DESC, c.name",
        )
        .bind(user.as_str())
        .fetch_all(self.pool())
        .await
        .map_err(query_err("user_targets"))?;
        rows.iter()
            .map(|r| {
                Ok(UserTarget {
                    campaign: r.try_get("name")?,
                    step: r.try_get("step")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                    not_before: opt_time(r, "not_before")?,
                    created_at: from_millis(r.try_get("created_at")?),
                    first_notified_at: opt_time(r, "first_notified_at")?,
                    notified_at: opt_time(r, "notified_at")?,
                    clicked_at: opt_time(r, "clicked_at")?,
                    started_at: opt_time(r, "started_at")?,
                    outcome: r.try_get("outcome")?,
                    outcome_at: opt_time(r, "outcome_at")?,
                    sessions: r.try_get("sessions")?,
                    notifications: r.try_get("notifications")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("user_targets row"))
    }

    /// A user's ledger rows (the latest `limit`), newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_sessions(&self, user: &UserId, limit: u32) -> Result<Vec<UserSession>, StoreError> {
        let sql = format!(
            "SELECT c.name, s.step, s.status, s.reserved_at, s.issued_at, s.expires_at \
             FROM verification_sessions s LEFT JOIN campaigns c ON c.campaign_id = s.campaign_id \
             WHERE s.user_id = $1 ORDER BY s.reserved_at DESC LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(query_err("user_sessions"))?;
        rows.iter()
            .map(|r| {
                Ok(UserSession {
                    campaign: r.try_get("name")?,
                    step: r.try_get("step")?,
                    status: r.try_get("status")?,
                    reserved_at: from_millis(r.try_get("reserved_at")?),
                    issued_at: opt_time(r, "issued_at")?,
                    expires_at: from_millis(r.try_get("expires_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("user_sessions row"))
    }

    /// A user's latest `limit` events, newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_events(&self, user: &UserId, limit: u32) -> Result<Vec<Event>, StoreError> {
        let sql = format!(
            "SELECT event_id, at, actor, kind, campaign_id, user_id, detail FROM events WHERE user_id = $1 \
             ORDER BY event_id DESC LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(query_err("user_events"))?;
        rows.iter().map(event_from_row).collect::<Result<_, _>>().map_err(query_err("user_events row"))
    }

    /// Re-queues every failed target of a campaign and records who asked
    /// (`campaign retry-failed`, the dashboard's button). Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_retry_failed(
        &self,
        campaign_id: i64,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let n = self.target_requeue_failed(campaign_id, now).await?;
        let event = super::events::NewEvent {
            actor,
            kind: "campaign.retry_failed",
            campaign_id: Some(campaign_id),
            user_id: None,
            detail: Some(serde_json::json!({ "requeued": n })),
        };
        self.event_append(&event, now).await?;
        Ok(n)
    }
}

/// The hour an instant falls in (Unix ms).
pub fn hour_of(t: DateTime<Utc>) -> i64 {
    to_millis(t).div_euclid(HOUR_MS) * HOUR_MS
}

#[cfg(test)]
mod tests;
