//! The figures of each campaign's page, kept as a snapshot the dashboard refreshes
//! behind the reader's back.
//!
//! A campaign's figures are `campaign status`'s own queries (and the page's series).
//! On a campaign of 1,000,000 targets they scan its rows, which takes seconds, not
//! the tenth of a second a page may take. So a page is rendered from the latest
//! snapshot:
//! - a fresh one (younger than `max_age`) is used as it is;
//! - a stale one is used too, and one refresh of it starts in the background (never
//!   two for a campaign at once), so the next load, the page's own refresh a few
//!   seconds later, shows the new figures;
//! - with none yet (a campaign's first view since the server started, and the
//!   server warms every campaign at start), the page waits for the queries;
//! - an action from the page (pause, resume, retry-failed) drops the campaign's
//!   snapshot, so the page after it shows the figures the action left.
//!
//! The figures a page shows are then at most `max_age` plus one refresh old; the page
//! says when they were read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::store::dashboard::{DeferredBucket, DeferredTarget, Series};
use crate::store::progress::CampaignProgress;
use crate::store::{Store, StoreError};

/// How many deferred targets the page lists by name.
pub(super) const DEFERRED_LISTED: u32 = 10;

/// One campaign's figures, as read at `read_at`.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    pub progress: CampaignProgress,
    pub series: Series,
    pub deferred: Vec<DeferredBucket>,
    pub deferred_next: Vec<DeferredTarget>,
    pub read_at: DateTime<Utc>,
}

impl Figures {
    /// Reads them now, the queries side by side.
    pub async fn read(store: &Store, campaign_id: i64) -> Result<Self, StoreError> {
        let now = Utc::now();
        let (progress, series, deferred, deferred_next) = futures::try_join!(
            store.campaign_progress(campaign_id, now),
            store.dashboard_series(campaign_id),
            store.dashboard_deferred(campaign_id),
            store.dashboard_deferred_next(campaign_id, DEFERRED_LISTED),
        )?;
        Ok(Self { progress, series, deferred, deferred_next, read_at: now })
    }
}

struct Entry {
    figures: Option<Arc<Figures>>,
    taken: Instant,
    refreshing: bool,
}

/// The snapshots, by campaign id.
pub(super) struct Snapshots {
    entries: Mutex<HashMap<i64, Entry>>,
    max_age: Duration,
}

impl Snapshots {
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(Self { entries: Mutex::new(HashMap::new()), max_age })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The campaign's figures: the snapshot when there is one (refreshed in the
    /// background when stale), else read now.
    pub async fn get(self: &Arc<Self>, store: &Store, campaign_id: i64) -> Result<Arc<Figures>, StoreError> {
        let stale = {
            let mut entries = self.lock();
            match entries.get_mut(&campaign_id) {
                Some(Entry { figures: Some(f), taken, refreshing }) => {
                    if taken.elapsed() < self.max_age {
                        return Ok(f.clone());
                    }
                    if !*refreshing {
                        *refreshing = true;
                        self.refresh_in_background(store.clone(), campaign_id);
                    }
                    Some(f.clone())
                }
                _ => None,
            }
        };
        if let Some(f) = stale {
            return Ok(f);
        }
        let figures = Arc::new(Figures::read(store, campaign_id).await?);
        self.lock()
            .insert(campaign_id, Entry { figures: Some(figures.clone()), taken: Instant::now(), refreshing: false });
        Ok(figures)
    }

    fn refresh_in_background(self: &Arc<Self>, store: Store, campaign_id: i64) {
        let me = self.clone();
        tokio::spawn(async move {
            let read = Figures::read(&store, campaign_id).await;
            let mut entries = me.lock();
            match read {
                Ok(f) => {
                    entries.insert(
                        campaign_id,
                        Entry { figures: Some(Arc::new(f)), taken: Instant::now(), refreshing: false },
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, campaign_id, "dashboard: could not refresh a campaign's figures");
                    if let Some(entry) = entries.get_mut(&campaign_id) {
                        entry.refreshing = false;
                    }
                }
            }
        });
    }

    /// Drops the campaign's snapshot: the next page reads its figures afresh.
    pub fn forget(&self, campaign_id: i64) {
        self.lock().remove(&campaign_id);
    }

    /// Reads every campaign's figures once, in the background, so that no first
    /// view waits for them.
    pub fn warm(self: &Arc<Self>, store: Store) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let me = self.clone();
        runtime.spawn(async move {
            let Ok(campaigns) = store.campaign_list().await else { return };
            for c in campaigns {
                if me.lock().contains_key(&c.campaign_id) {
                    continue;
                }
                if let Ok(f) = Figures::read(&store, c.campaign_id).await {
                    me.lock().entry(c.campaign_id).or_insert(Entry {
                        figures: Some(Arc::new(f)),
                        taken: Instant::now(),
                        refreshing: false,
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::both_engines;
    use crate::domain::CampaignSpec;
    use crate::store::testing::TestDb;

    async fn campaign(s: &Store, name: &str) -> i64 {
        let toml = format!("name = \"{name}\"\n");
        let spec = CampaignSpec::from_toml(&toml, "t.toml").unwrap();
        s.campaign_apply(&spec, &toml, "test", Utc::now()).await.unwrap().1.campaign_id
    }

    async fn set_status(s: &Store, id: i64, status: &str) {
        sqlx::query("UPDATE campaign_targets SET status = $1 WHERE campaign_id = $2")
            .bind(status)
            .bind(id)
            .execute(s.pool())
            .await
            .unwrap();
    }

    both_engines!(
        a_snapshot_is_served_while_fresh_refreshed_when_stale_and_dropped_on_forget,
        |db: TestDb| async move {
            let s = &db.store;
            let id = campaign(s, "snap").await;
            s.report_bench_fill(id, 10, Utc::now()).await.unwrap();
            let snaps = Snapshots::new(Duration::from_millis(300));
            let failed = |f: &Figures| f.progress.count(crate::domain::TargetStatus::Failed);

            let first = snaps.get(s, id).await.unwrap();
            assert_eq!((first.progress.targeted, failed(&first)), (10, 0), "no snapshot yet: read now");
            set_status(s, id, "failed").await;
            assert_eq!(failed(&snaps.get(s, id).await.unwrap()), 0, "fresh: the snapshot as it is");

            // stale: served once more as it is, while one refresh runs behind it
            tokio::time::sleep(Duration::from_millis(350)).await;
            assert_eq!(failed(&snaps.get(s, id).await.unwrap()), 0, "stale: served while it refreshes");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let n = failed(&snaps.get(s, id).await.unwrap());
                if n == 10 {
                    break;
                }
                assert!(Instant::now() < deadline, "the background refresh never landed: {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            // forget: the next page reads now
            set_status(s, id, "notified").await;
            snaps.forget(id);
            assert_eq!(failed(&snaps.get(s, id).await.unwrap()), 0);
        }
    );
}
