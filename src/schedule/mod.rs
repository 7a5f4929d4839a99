//! Which campaigns are due, and the scheduled run that takes each one's lease.
//!
//! A campaign is due when its cron schedule, read in its time zone, had a tick
//! since its last finished run (or since it was created) that is no older than its
//! `starting_deadline`, or when a scheduled run of a tick started and none has
//! finished since (stopped, killed or failed): that tick is resumed, whatever the
//! deadline. A tick counts as done only when a run finishes. Missed ticks never pile
//! up: one run covers them. Scheduled runs hold a per-campaign lease in the
//! database, renewed while they run, so that overlapping invocations (a CronJob with
//! `concurrencyPolicy: Allow`, two cron hosts, two daemons) run each due campaign
//! once.

pub mod daemon;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Due, schedule};
use crate::engine::{EngineError, Progress, RunReport, Worker};
use crate::store::campaigns::{CampaignRecord, CampaignStatus};
use crate::store::{Store, StoreError};

/// A campaign and what the due rule says of it now.
#[derive(Debug, Clone)]
pub struct DueCheck {
    pub campaign: CampaignRecord,
    pub due: Due,
    pub next: Option<DateTime<Utc>>,
}

/// The due rule for one stored campaign. Campaigns without a schedule, or not
/// active, are never due.
pub fn check(campaign: &CampaignRecord, now: DateTime<Utc>) -> DueCheck {
    let spec = campaign.spec().ok();
    let found = spec.as_ref().and_then(|s| s.cron().map(|c| (c, s.tz(), s.starting_deadline.0)));
    let Some((cron, tz, deadline)) = found.filter(|_| campaign.status == CampaignStatus::Active) else {
        return DueCheck { campaign: campaign.clone(), due: Due::NotDue, next: None };
    };
    let since = campaign.done_through.unwrap_or(campaign.created_at);
    let deadline = chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::hours(1));
    DueCheck {
        campaign: campaign.clone(),
        due: schedule::due_or_resume(&cron, tz, since, campaign.tick_in_progress, now, deadline),
        next: cron.next_after(now, tz),
    }
}

/// Every active campaign's due check.
///
/// # Errors
/// [`StoreError`].
pub async fn due_campaigns(store: &Store, now: DateTime<Utc>) -> Result<Vec<DueCheck>, StoreError> {
    Ok(store
        .campaign_list()
        .await?
        .iter()
        .filter(|c| c.status == CampaignStatus::Active)
        .map(|c| check(c, now))
        .collect())
}

/// What happened to one campaign in a scheduled pass.
#[derive(Debug)]
pub enum Scheduled {
    Ran(RunReport),
    /// Another invocation holds the campaign's lease.
    AlreadyRunning,
    /// Another invocation finished a run for this tick a moment ago.
    AlreadyRan,
    Failed(EngineError),
}

/// Runs one due campaign under its lease, renewing the lease while it runs.
pub async fn run_due(
    worker: Arc<Worker>,
    c: CampaignRecord,
    tick: DateTime<Utc>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Scheduled {
    let store = worker.store.clone();
    let me = worker.config.worker_id.clone();
    let ttl = worker.config.lease;
    let now = worker.clock.now();
    match store.campaign_lease_acquire(c.campaign_id, &me, now, ttl).await {
        Ok(true) => {}
        Ok(false) => return Scheduled::AlreadyRunning,
        Err(e) => return Scheduled::Failed(e.into()),
    }
    // Re-check under the lease: a run that finished elsewhere moved done_through
    // (an interrupted one did not: its tick is resumed here).
    match store.campaign_done_through(c.campaign_id).await {
        Ok(Some(last)) if last >= tick => {
            let _ = store.campaign_lease_release(c.campaign_id, &me).await;
            return Scheduled::AlreadyRan;
        }
        Ok(_) => {}
        Err(e) => {
            let _ = store.campaign_lease_release(c.campaign_id, &me).await;
            return Scheduled::Failed(e.into());
        }
    }
    let renew_stop = CancellationToken::new();
    let renewer = {
        let (store, me, clock, renew_stop, stop) =
            (store.clone(), me.clone(), worker.clock.clone(), renew_stop.clone(), stop.clone());
        let id = c.campaign_id;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = renew_stop.cancelled() => break,
                    _ = tick.tick() => match store.campaign_lease_renew(id, &me, clock.now(), ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(campaign_id = id, "the campaign lease was lost; stopping this run");
                            stop.cancel();
                            break;
                        }
                        Err(e) => warn!(error = %e, "could not renew the campaign lease"),
                    },
                }
            }
        })
    };
    let result = worker.run_campaign_for_tick(&c, Some(tick), progress, stop).await;
    renew_stop.cancel();
    let _ = renewer.await;
    if let Err(e) = store.campaign_lease_release(c.campaign_id, &me).await {
        warn!(error = %e, "could not release the campaign lease; it expires by itself");
    }
    match result {
        Ok(r) => {
            info!(campaign = %c.name, run_id = r.run_id, "scheduled run done");
            Scheduled::Ran(r)
        }
        Err(e) => Scheduled::Failed(e),
    }
}

/// The longest a daemon sleeps before it re-reads the campaigns (changes applied
/// by `campaign apply`, pause, resume).
pub const REFRESH: Duration = Duration::from_secs(60);
