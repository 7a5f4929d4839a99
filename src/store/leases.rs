//! The per-campaign run lease: scheduled runs (`run --due`, the daemon) take it so
//! that two overlapping invocations never run one campaign at once. Manual runs do
//! not need it: their claims already keep them apart.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, from_millis, query_err, to_millis};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Store {
    /// Takes the campaign's lease for `worker` until `now + ttl`, if it is free,
    /// expired, or already ours. Returns whether we hold it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_lease_acquire(
        &self,
        campaign_id: i64,
        worker: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now_ms = to_millis(now);
        sqlx::query(
            "UPDATE campaigns SET lease_owner = $2, lease_expires_at = $3 \
             WHERE campaign_id = $1 AND (lease_owner IS NULL OR lease_expires_at < $4 OR lease_owner = $2)",
        )
        .bind(campaign_id)
        .bind(worker)
        .bind(now_ms + ms(ttl))
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(query_err("campaign_lease_acquire"))
    }

    /// Extends a lease we hold; false when it was lost.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_lease_renew(
        &self,
        campaign_id: i64,
        worker: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        sqlx::query("UPDATE campaigns SET lease_expires_at = $3 WHERE campaign_id = $1 AND lease_owner = $2")
            .bind(campaign_id)
            .bind(worker)
            .bind(to_millis(now) + ms(ttl))
            .execute(self.pool())
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(query_err("campaign_lease_renew"))
    }

    /// Gives the lease back.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_lease_release(&self, campaign_id: i64, worker: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE campaigns SET lease_owner = NULL, lease_expires_at = NULL WHERE campaign_id = $1 AND lease_owner = $2",
        )
        .bind(campaign_id)
        .bind(worker)
        .execute(self.pool())
        .await
        .map_err(query_err("campaign_lease_release"))?;
        Ok(())
    }

    /// The start of the campaign's latest finished run (`done_through`: every tick
    /// at or before it is done), re-read after taking the lease so that a run that
    /// just finished elsewhere is seen.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_done_through(&self, campaign_id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query("SELECT done_through FROM campaigns WHERE campaign_id = $1")
            .bind(campaign_id)
            .fetch_one(self.pool())
            .await
            .map_err(query_err("campaign_done_through"))?;
        let v: Option<i64> = row.try_get("done_through").map_err(query_err("campaign_done_through"))?;
        Ok(v.map(from_millis))
    }

    /// Records when the campaign is next due, for `campaign show` and the daemon.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_set_next_run(&self, campaign_id: i64, next: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaigns SET next_run_at = $2 WHERE campaign_id = $1")
            .bind(campaign_id)
            .bind(next.map(to_millis))
            .execute(self.pool())
            .await
            .map_err(query_err("campaign_set_next_run"))?;
        Ok(())
    }
}
