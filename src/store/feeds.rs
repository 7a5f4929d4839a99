//! The state feeds' last signs of life (`state_feeds`): when a signed webhook was
//! last accepted and a `users sync` last finished, from which a run judges whether
//! the webhook feed is healthy (`domain::freshness`).
//!
//! A webhook moves its row at most once a minute: thousands of webhooks a minute
//! would otherwise all write (and on Postgres queue on) the one row.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::group::Tx;
use super::{Store, StoreError, from_millis, query_err, to_millis};

/// A feed of verification states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFeed {
    Webhook,
    Sync,
}

impl StateFeed {
    fn as_str(self) -> &'static str {
        match self {
            StateFeed::Webhook => "webhook",
            StateFeed::Sync => "sync",
        }
    }
}

/// How stale a webhook's mark may get before it is written again (ms).
const WEBHOOK_MARK_EVERY_MS: i64 = 60_000;

/// Notes that `feed` was heard from at `at`, inside a write transaction.
pub(crate) async fn feed_heard_in_tx(tx: &mut Tx, feed: StateFeed, at: DateTime<Utc>) -> Result<(), StoreError> {
    let slack = if feed == StateFeed::Webhook { WEBHOOK_MARK_EVERY_MS } else { 0 };
    sqlx::query("UPDATE state_feeds SET last_at = $2 WHERE feed = $1 AND last_at < $2 - $3")
        .bind(feed.as_str())
        .bind(to_millis(at))
        .bind(slack)
        .execute(&mut **tx)
        .await
        .map_err(query_err("feed_heard"))?;
    Ok(())
}

/// The last signs of life of the feeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedMarks {
    pub webhook: Option<DateTime<Utc>>,
    pub sync: Option<DateTime<Utc>>,
}

impl FeedMarks {
    /// The latest of the two.
    pub fn last_heard(&self) -> Option<DateTime<Utc>> {
        self.webhook.max(self.sync)
    }
}

impl Store {
    /// Notes that `feed` was heard from at `at`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn feed_heard(&self, feed: StateFeed, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        feed_heard_in_tx(&mut tx, feed, at).await?;
        tx.commit().await.map_err(query_err("feed_heard commit"))
    }

    /// When each feed was last heard from.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn feed_marks(&self) -> Result<FeedMarks, StoreError> {
        let rows = sqlx::query("SELECT feed, last_at FROM state_feeds")
            .fetch_all(self.pool())
            .await
            .map_err(query_err("feed_marks"))?;
        let mut marks = FeedMarks::default();
        for r in rows {
            let feed: String = r.try_get("feed").map_err(query_err("feed_marks"))?;
            let at: i64 = r.try_get("last_at").map_err(query_err("feed_marks"))?;
            let at = (at > 0).then(|| from_millis(at));
            match feed.as_str() {
                "webhook" => marks.webhook = at,
                "sync" => marks.sync = at,
                _ => {}
            }
        }
        Ok(marks)
    }
}
