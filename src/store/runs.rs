//! Campaign runs: one row per run, for `campaign status` and the audit trail.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::group::Tx;
use super::{Store, StoreError, from_millis, query_err, to_millis};

/// Replaces `address` in every run's `error` (`users forget`: texts kept from
/// before errors were scrubbed where they enter).
pub(crate) async fn runs_scrub_address_in_tx(tx: &mut Tx, address: &str, with: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE campaign_runs SET error = REPLACE(error, $1, $2) WHERE error LIKE '%' || $1 || '%'")
        .bind(address)
        .bind(with)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_forget texts"))?;
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Finished,
    Interrupted,
    Failed,
}

impl RunOutcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Finished => "finished",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Failed => "failed",
        }
    }
}

/// What one run did, counted by the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounts {
    pub targeted: i64,
    pub notified: i64,
    pub skipped: i64,
    pub deferred: i64,
    pub failed: i64,
}

/// What [`Store::run_finish`] records.
#[derive(Debug, Clone)]
pub struct RunFinishParams<'a> {
    pub run_id: i64,
    pub campaign_id: i64,
    /// The worker that ran it.
    pub worker: &'a str,
    /// Who started it: the actor of the `run.<outcome>` event.
    pub actor: &'a str,
    pub outcome: RunOutcome,
    pub counts: RunCounts,
    pub error: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// What [`Store::run_start`] records: a run of `campaign_id` by `worker`, for
/// `tick` when it is a scheduled one.
#[derive(Debug, Clone, Copy)]
pub struct RunStartParams<'a> {
    /// The campaign the run is for.
    pub campaign_id: i64,
    /// The worker that runs it.
    pub worker: &'a str,
    /// Who the `run.started` event names.
    pub actor: &'a str,
    /// When it starts.
    pub now: DateTime<Utc>,
    /// The scheduled tick the run is for; `None` for a manual run.
    pub tick: Option<DateTime<Utc>>,
}

impl Store {
    /// Records the start of a run and returns its id. A scheduled run passes the
    /// tick it is for, which stays the campaign's `tick_in_progress` until a run
    /// finishes (see [`Store::run_finish`]).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_start(&self, p: &RunStartParams<'_>) -> Result<i64, StoreError> {
        self.run_start_with(p, None).await
    }

    /// [`Store::run_start`], with the approval the run runs under (its id, digest and
    /// principals), kept in the `run.started` event as `approval`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_start_with(
        &self,
        p: &RunStartParams<'_>,
        approval: Option<serde_json::Value>,
    ) -> Result<i64, StoreError> {
        let RunStartParams { campaign_id, worker, actor, now, tick } = *p;
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO campaign_runs (campaign_id, worker_id, started_at, outcome) VALUES ($1, $2, $3, 'running') \
             RETURNING run_id",
        )
        .bind(campaign_id)
        .bind(worker)
        .bind(to_millis(now))
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get("run_id"))
        .map_err(query_err("run_start"))?;
        // A manual run leaves the tick in progress as it is; a scheduled one records
        // its tick (the latest one due: it covers any earlier one still in progress).
        sqlx::query(
            "UPDATE campaigns SET last_run_at = $2, tick_in_progress = COALESCE($3, tick_in_progress) \
             WHERE campaign_id = $1",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .bind(tick.map(to_millis))
        .execute(&mut *tx)
        .await
        .map_err(query_err("run_start campaign"))?;
        super::events::event_in_tx(
            &mut tx,
            now,
            &super::events::TxEvent {
                actor,
                kind: "run.started",
                campaign_id: Some(campaign_id),
                user_id: None,
                detail: &{
                    let mut detail = serde_json::json!({ "run_id": id, "worker": worker });
                    if let Some(t) = tick {
                        detail["tick"] = serde_json::json!(t);
                    }
                    if let Some(a) = approval {
                        detail["approval"] = a;
                    }
                    detail
                },
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("run_start commit"))?;
        Ok(id)
    }

    /// Records the end of a run (see [`RunFinishParams`]). A run that finished
    /// (nothing left that is due) marks every tick up to its start as done:
    /// `done_through` moves to its start, and the campaign's `tick_in_progress` is
    /// cleared when this run started after it. An interrupted or failed run changes
    /// neither, so the tick stays due.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_finish(&self, p: RunFinishParams<'_>) -> Result<(), StoreError> {
        let RunFinishParams { run_id, campaign_id, worker, actor, outcome, counts, error, now } = p;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE campaign_runs SET finished_at = $2, outcome = $3, error = $4, targeted = $5, notified = $6, \
               skipped = $7, deferred = $8, failed = $9 WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(to_millis(now))
        .bind(outcome.as_str())
        .bind(error)
        .bind(counts.targeted)
        .bind(counts.notified)
        .bind(counts.skipped)
        .bind(counts.deferred)
        .bind(counts.failed)
        .execute(&mut *tx)
        .await
        .map_err(query_err("run_finish"))?;
        if outcome == RunOutcome::Finished {
            sqlx::query(
                "UPDATE campaigns SET \
                   done_through = CASE WHEN done_through IS NULL OR done_through < r.started_at \
                     THEN r.started_at ELSE done_through END, \
                   tick_in_progress = CASE WHEN tick_in_progress <= r.started_at \
                     THEN NULL ELSE tick_in_progress END \
                 FROM (SELECT started_at FROM campaign_runs WHERE run_id = $2) AS r \
                 WHERE campaign_id = $1",
            )
            .bind(campaign_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err("run_finish campaign"))?;
        }
        super::events::event_in_tx(
            &mut tx,
            now,
            &super::events::TxEvent {
                actor,
                kind: &format!("run.{}", outcome.as_str()),
                campaign_id: Some(campaign_id),
                user_id: None,
                detail: &serde_json::json!({ "run_id": run_id, "worker": worker, "counts": counts, "error": error }),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("run_finish commit"))?;
        Ok(())
    }
}

impl Store {
    /// When each campaign's last finished run ended, by campaign name (campaigns
    /// that never finished a run are absent): the batch-job "last success" metric.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn run_last_successes(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.name AS name, MAX(r.finished_at) AS finished_at FROM campaign_runs r \
             JOIN campaigns c ON c.campaign_id = r.campaign_id \
             WHERE r.outcome = 'finished' AND r.finished_at IS NOT NULL GROUP BY c.name ORDER BY c.name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(query_err("run_last_successes"))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("name")?, from_millis(r.try_get::<i64, _>("finished_at")?))))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("run_last_successes"))
    }
}
