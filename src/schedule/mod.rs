//! Which campaigns are due, and the scheduled run that takes each one's lease.
//!
//! Two clocks drive a campaign (issue 23, design.md invariant 9):
//! - **Ticks**, its cron schedule read in its time zone, select new users into
//!   targets. A campaign is due for a tick when its schedule had a tick since its last
//!   finished run (or since it was created, or its `starts_at`) that is no older than
//!   its `starting_deadline`, or when a scheduled run of a tick started and none has
//!   finished since (stopped, killed or failed): that tick is resumed, whatever the
//!   deadline. A tick counts as done only when a run finishes. Missed ticks never
//!   pile up: one run covers them.
//! - **Follow-up**, the work's own clock: a user a rule held back (a cooldown, the
//!   send window, the daily cap, a concurrency slot, a retry after a 5xx, a reminder
//!   coming due) is due at its `not_before` (`store::targets::followup`). A campaign
//!   with follow-up due runs between its ticks, without targeting anyone new, unless
//!   it is `schedule_only` or the pass was asked for ticks only (`--no-follow-up`).
//!
//! Both happen only inside the campaign's life: from `starts_at`, until `ends_at`,
//! when the pass completes the campaign instead. Scheduled runs hold a per-campaign
//! lease in the database, renewed while they run, so that overlapping invocations (a
//! CronJob with `concurrencyPolicy: Allow`, two cron hosts, two daemons) run each due
//! campaign once.

pub mod daemon;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::spec::Life;
use crate::domain::{Due, schedule};
use crate::engine::{EngineError, Progress, RunKind, RunReport, Worker};
use crate::store::campaigns::{CampaignRecord, CampaignStatus};
use crate::store::{Store, StoreError};

/// A campaign and what the due rules say of it now.
#[derive(Debug, Clone)]
pub struct DueCheck {
    pub campaign: CampaignRecord,
    /// The tick rule.
    pub due: Due,
    /// The next tick after now (inside the campaign's life).
    pub next: Option<DateTime<Utc>>,
    /// When the campaign's first held-back user is due (`None`: none waits, or the
    /// campaign does not follow up, or the pass was asked for ticks only).
    pub follow_up: Option<DateTime<Utc>>,
    /// The campaign's `ends_at`, a time a daemon wakes for.
    pub ends_at: Option<DateTime<Utc>>,
}

/// What a pass runs for one campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A tick (due or resumed): targeting, then every user due.
    Tick(DateTime<Utc>),
    /// Follow-up between ticks: the users whose hold ended, nobody new.
    FollowUp,
}

impl DueCheck {
    /// What is due at `now`: a tick first (a tick run takes the follow-ups too).
    pub fn work(&self, now: DateTime<Utc>) -> Option<Work> {
        match self.due {
            Due::Run { tick } | Due::Resume { tick, .. } => Some(Work::Tick(tick)),
            Due::Missed { .. } | Due::NotDue => self.follow_up.filter(|t| *t <= now).map(|_| Work::FollowUp),
        }
    }

    /// The next time something happens to the campaign after `now`: its next tick,
    /// its next follow-up, or its end.
    pub fn wake_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        [self.next, self.follow_up.filter(|t| *t > now), self.ends_at.filter(|t| *t > now)].into_iter().flatten().min()
    }
}

/// The tick rule for one stored campaign, read inside its life. Campaigns without a
/// schedule, not active, before their `starts_at` or after their `ends_at` are
/// never due for a tick.
pub fn check(campaign: &CampaignRecord, now: DateTime<Utc>) -> DueCheck {
    let spec = campaign.spec().ok();
    let ends_at = spec.as_ref().and_then(|s| s.ends_at).map(|e| e.0);
    let not_due = |next| DueCheck { campaign: campaign.clone(), due: Due::NotDue, next, follow_up: None, ends_at };
    let found = spec.as_ref().and_then(|s| s.cron().map(|c| (c, s.tz(), s.starting_deadline.0, s)));
    let Some((cron, tz, deadline, spec)) = found.filter(|_| campaign.status == CampaignStatus::Active) else {
        return not_due(None);
    };
    let starts = spec.starts_at.map(|s| s.0);
    let next = spec.next_tick_after(now);
    match spec.life_at(now) {
        Life::NotStarted | Life::Ended => return not_due(next),
        Life::Running => {}
    }
    // ticks before starts_at are not the campaign's
    let created = campaign.done_through.unwrap_or(campaign.created_at);
    let since = starts.map_or(created, |s| created.max(s - chrono::Duration::milliseconds(1)));
    let deadline = chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::hours(1));
    DueCheck {
        campaign: campaign.clone(),
        due: schedule::due_or_resume(&schedule::DueParams {
            schedule: &cron,
            tz,
            since,
            in_progress: campaign.tick_in_progress,
            now,
            deadline,
        }),
        next,
        follow_up: None,
        ends_at,
    }
}

/// How a pass reads the campaigns.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Look for follow-up (`run --due` without `--no-follow-up`, the daemon).
    pub follow_up: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self { follow_up: true }
    }
}

/// Completes every active or paused campaign whose `ends_at` has passed (see
/// [`Store::campaign_complete`]); returns their names.
///
/// # Errors
/// [`StoreError`].
pub async fn complete_ended(store: &Store, actor: &str, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    complete_ended_of(store, &store.campaign_list().await?, actor, now).await
}

/// [`complete_ended`] over campaigns already read.
async fn complete_ended_of(
    store: &Store,
    campaigns: &[CampaignRecord],
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    for c in campaigns {
        if !matches!(c.status, CampaignStatus::Active | CampaignStatus::Paused) {
            continue;
        }
        let Ok(spec) = c.spec() else { continue };
        let Some(end) = spec.ends_at.map(|e| e.0).filter(|e| *e <= now) else { continue };
        let until = end + chrono::Duration::from_std(spec.track_outcomes_for.0).unwrap_or(chrono::Duration::days(30));
        if let Some(skipped) = store
            .campaign_complete(&crate::store::campaigns::CompleteParams {
                campaign_id: c.campaign_id,
                ends_at: end,
                outcomes_until: until,
                actor,
                now,
            })
            .await?
        {
            info!(campaign = %c.name, skipped, "campaign completed: its ends_at passed");
            crate::telemetry::global().forget_campaign_schedule(c.name.as_str());
            done.push(c.name.to_string());
        }
    }
    Ok(done)
}

/// Every active campaign's due check, with its next follow-up when `opts` and the
/// campaign follow up.
///
/// # Errors
/// [`StoreError`].
pub async fn due_campaigns_with(
    store: &Store,
    now: DateTime<Utc>,
    opts: PassOptions,
) -> Result<Vec<DueCheck>, StoreError> {
    checks_of(store, &store.campaign_list().await?, now, opts).await
}

/// [`due_campaigns_with`] over campaigns already read.
async fn checks_of(
    store: &Store,
    campaigns: &[CampaignRecord],
    now: DateTime<Utc>,
    opts: PassOptions,
) -> Result<Vec<DueCheck>, StoreError> {
    let mut checks = Vec::new();
    for c in campaigns.iter().filter(|c| c.status == CampaignStatus::Active) {
        let mut check = check(c, now);
        let follows = c.spec().is_ok_and(|s| s.follows_up() && s.life_at(now) == Life::Running);
        if opts.follow_up && follows {
            check.follow_up = store.target_next_follow_up(c.campaign_id, now).await?;
        }
        checks.push(check);
    }
    Ok(checks)
}

/// [`due_campaigns_with`] the default options (follow-up included).
///
/// # Errors
/// [`StoreError`].
pub async fn due_campaigns(store: &Store, now: DateTime<Utc>) -> Result<Vec<DueCheck>, StoreError> {
    due_campaigns_with(store, now, PassOptions::default()).await
}

/// Records each campaign's next tick and next follow-up: in the database
/// (`next_run_at`, for `campaign list`) and in the gauges
/// `reverify_campaign_next_tick_timestamp_seconds` and
/// `reverify_campaign_next_follow_up_timestamp_seconds`.
///
/// # Errors
/// [`StoreError`].
pub async fn record_next(store: &Store, checks: &[DueCheck]) -> Result<(), StoreError> {
    for c in checks {
        // written only when it moved: an idle pass writes nothing
        if c.campaign.next_run_at != c.next {
            store.campaign_set_next_run(c.campaign.campaign_id, c.next).await?;
        }
        crate::telemetry::global().set_campaign_next(c.campaign.name.as_str(), c.next, c.follow_up);
    }
    Ok(())
}

/// What one pass over the campaigns found (`run --due`, tests).
#[derive(Debug)]
pub struct Pass {
    /// The campaigns the pass completed (their `ends_at` passed).
    pub completed: Vec<String>,
    /// Every active campaign's check.
    pub checks: Vec<DueCheck>,
    /// The work due now, campaign by campaign.
    pub due: Vec<(CampaignRecord, Work)>,
}

impl Pass {
    /// The earliest time anything happens next, when nothing is due now.
    pub fn next_wake(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.checks.iter().filter_map(|c| c.wake_at(now)).min()
    }
}

/// One pass at `now`: completes the campaigns that ended, reads every active one's
/// due rules, records their next tick and follow-up, and says what is due.
///
/// # Errors
/// [`StoreError`].
pub async fn pass(store: &Store, actor: &str, now: DateTime<Utc>, opts: PassOptions) -> Result<Pass, StoreError> {
    // one read of the campaigns per pass: those it completes are no longer active
    let mut campaigns = store.campaign_list().await?;
    let completed = complete_ended_of(store, &campaigns, actor, now).await?;
    campaigns.retain(|c| !completed.iter().any(|n| n == c.name.as_str()));
    let checks = checks_of(store, &campaigns, now, opts).await?;
    record_next(store, &checks).await?;
    let due = checks.iter().filter_map(|c| c.work(now).map(|w| (c.campaign.clone(), w))).collect();
    Ok(Pass { completed, checks, due })
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

/// Runs one due campaign for a tick under its lease (see [`run_work`]).
pub async fn run_due(
    worker: Arc<Worker>,
    c: CampaignRecord,
    tick: DateTime<Utc>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Scheduled {
    run_work(RunWork { worker, campaign: c, work: Work::Tick(tick), linger_until: None, progress, stop }).await
}

/// What [`run_work`] runs: `campaign`'s `work`, by `worker`, until `stop`.
pub struct RunWork {
    /// The worker that runs it.
    pub worker: Arc<Worker>,
    /// The due campaign.
    pub campaign: CampaignRecord,
    /// A tick's run or a follow-up run.
    pub work: Work,
    /// Until when a follow-up run lingers, taking users as they come due.
    pub linger_until: Option<DateTime<Utc>>,
    /// Where the run reports its progress.
    pub progress: Arc<Progress>,
    /// Stops the run when cancelled.
    pub stop: CancellationToken,
}

/// Runs one due campaign's `work` under its lease, renewing the lease while it
/// runs. A follow-up run lingers, taking users as they come due, until
/// `linger_until` (the daemon passes its next look at the campaign).
pub async fn run_work(p: RunWork) -> Scheduled {
    let RunWork { worker, campaign: c, work, linger_until, progress, stop } = p;
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
    // (an interrupted one did not: its tick is resumed here), or took the users
    // that were due.
    let done_elsewhere = match work {
        Work::Tick(tick) => store.campaign_done_through(c.campaign_id).await.map(|l| l.is_some_and(|l| l >= tick)),
        Work::FollowUp => store.target_next_follow_up(c.campaign_id, now).await.map(|t| t.is_none_or(|t| t > now)),
    };
    match done_elsewhere {
        Ok(true) => {
            let _ = store.campaign_lease_release(c.campaign_id, &me).await;
            return Scheduled::AlreadyRan;
        }
        Ok(false) => {}
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
    let kind = match work {
        Work::Tick(tick) => RunKind::Tick(tick),
        Work::FollowUp => RunKind::FollowUp { linger_until },
    };
    let result = worker.run_campaign_as(&c, kind, progress, stop).await;
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
/// by `campaign apply`, pause, resume, approvals).
pub const REFRESH: Duration = Duration::from_secs(30);
