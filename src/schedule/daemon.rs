//! `reverify daemon`: runs each campaign when work comes due, until stopped.
//!
//! Each pass completes the campaigns whose `ends_at` passed, reads every active
//! campaign's next tick and next follow-up (one indexed query per campaign:
//! `store::targets::followup`), runs what is due under each campaign's lease, and
//! sleeps until the earliest of: any campaign's next tick, next follow-up or end,
//! a run ending, and [`DaemonOptions::poll`] (so that campaigns applied, paused,
//! resumed or approved in the database are picked up). On SIGTERM it stops
//! claiming, lets users in flight finish, and returns.
//!
//! A follow-up run lingers: it goes on taking users as they come due, until the
//! campaign's next tick or [`LINGER`], so that a stream of deferrals ending a few
//! seconds apart is one run, not one run each. A tick whose run did not finish stays
//! due (resumed at the next pass); a campaign whose lease another process holds is
//! tried again once that lease could have expired, and one whose run failed after
//! the poll interval, so that neither is retried in a loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{DueCheck, PassOptions, REFRESH, RunWork, Scheduled, Work, run_work};
use crate::domain::Due;
use crate::engine::{Progress, Worker};

/// The longest one follow-up run lingers for users coming due.
pub const LINGER: Duration = Duration::from_secs(600);

/// The sleep after each failed read of the campaigns grows by this much.
const BACKOFF_STEP: Duration = Duration::from_secs(5);
/// Failed reads in a row that stop the daemon.
const MAX_FAILURES: u32 = 5;
/// The longest sleep after a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(5 * (MAX_FAILURES as u64 - 1));

/// How the daemon behaves; the defaults suit production.
#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions {
    /// The longest it sleeps before it reads the campaigns again (default 30 s).
    pub poll: Duration,
    /// Follow up held-back users between ticks (default on; `schedule_only`
    /// campaigns never are).
    pub follow_up: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self { poll: REFRESH, follow_up: true }
    }
}

/// Runs due campaigns until `stop` is cancelled, with the default options.
///
/// # Errors
/// As [`run_with`].
pub async fn run(worker: Arc<Worker>, stop: CancellationToken) -> Result<(), crate::store::StoreError> {
    run_with(worker, stop, DaemonOptions::default()).await
}

/// What the loop remembers between passes.
#[derive(Default)]
struct State {
    running: HashSet<i64>,
    missed_logged: HashMap<i64, DateTime<Utc>>,
    unapproved_logged: HashMap<i64, (Option<DateTime<Utc>>, i64)>,
    /// Campaigns not to start again before a time (held elsewhere, just failed, or
    /// a follow-up run that found nothing it could take).
    not_before: HashMap<i64, tokio::time::Instant>,
}

/// Runs due campaigns until `stop` is cancelled. Each run gets a child of `stop`.
///
/// # Errors
/// Never for a single campaign's failure (it is logged and recorded); only when
/// the database cannot be read at all five passes in a row.
pub async fn run_with(
    worker: Arc<Worker>,
    stop: CancellationToken,
    opts: DaemonOptions,
) -> Result<(), crate::store::StoreError> {
    let mut runs: JoinSet<(i64, Work, Scheduled)> = JoinSet::new();
    let mut state = State::default();
    let mut failures_in_a_row = 0u32;
    let opts_pass = PassOptions { follow_up: opts.follow_up };
    info!(worker = %worker.config.worker_id, poll_seconds = opts.poll.as_secs_f64(), "daemon started");
    // the liveness probe fails when no pass completes within twice the longest
    // sleep (the poll, or the backoff after failed reads) plus a margin
    let liveness = crate::telemetry::liveness::liveness();
    liveness.watch(crate::telemetry::liveness::window_for(opts.poll.max(MAX_BACKOFF)));
    loop {
        if stop.is_cancelled() {
            break;
        }
        #[cfg(feature = "testing")]
        frozen_for_tests().await;
        let now = worker.clock.now();
        let mut sleep_for = opts.poll;
        match super::pass(&worker.store, &worker.config.worker_id, now, opts_pass).await {
            Ok(found) => {
                failures_in_a_row = 0;
                for c in found.checks {
                    if let Some(wake) = c.wake_at(now) {
                        let wait = (wake - now).to_std().unwrap_or(Duration::ZERO);
                        sleep_for = sleep_for.min(wait.max(Duration::from_millis(20)));
                    }
                    start_due(&mut Launch { worker: &worker, stop: &stop, runs: &mut runs }, &mut state, c, now).await;
                }
            }
            Err(e) => {
                failures_in_a_row += 1;
                error!(error = %e, "cannot read the campaigns");
                if failures_in_a_row >= MAX_FAILURES {
                    return Err(e);
                }
                sleep_for = BACKOFF_STEP * failures_in_a_row;
            }
        }
        liveness.beat();
        // a campaign held back (elsewhere, failed) is looked at again when it may go
        if let Some(t) = state.not_before.values().filter(|t| **t > tokio::time::Instant::now()).min() {
            sleep_for = sleep_for.min(t.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(sleep_for) => {}
            Some(done) = runs.join_next(), if !runs.is_empty() => {
                if let Ok((id, work, outcome)) = done {
                    state.running.remove(&id);
                    log_outcome(id, &outcome);
                    let pause = match &outcome {
                        Scheduled::AlreadyRunning => Some(worker.config.lease),
                        Scheduled::Failed(_) => Some(opts.poll),
                        // a follow-up that could take nobody must not start again at once
                        Scheduled::Ran(r) if work == Work::FollowUp && r.counts == Default::default() => {
                            Some(opts.poll.min(Duration::from_secs(5)))
                        }
                        Scheduled::Ran(_) | Scheduled::AlreadyRan => None,
                    };
                    if let Some(pause) = pause {
                        state.not_before.insert(id, tokio::time::Instant::now() + pause);
                    }
                }
            }
        }
    }
    liveness.unwatch();
    info!(in_flight = runs.len(), "daemon stopping; waiting for runs in progress");
    while let Some(done) = runs.join_next().await {
        if let Ok((id, _, outcome)) = done {
            log_outcome(id, &outcome);
        }
    }
    info!("daemon stopped");
    Ok(())
}

/// Tests freeze the loop, and not the process, with a file: while the file named
/// by `REVERIFY_TESTING_FREEZE_FILE` exists, no pass starts (the liveness test).
/// Not in the product binary.
#[cfg(feature = "testing")]
async fn frozen_for_tests() {
    if let Some(path) = std::env::var_os("REVERIFY_TESTING_FREEZE_FILE") {
        while std::path::Path::new(&path).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where [`start_due`] starts a run: by `worker`, on a child of `stop`, in `runs`.
struct Launch<'a> {
    worker: &'a Arc<Worker>,
    stop: &'a CancellationToken,
    runs: &'a mut JoinSet<(i64, Work, Scheduled)>,
}

/// Starts `c`'s due work, unless it is running here, held back, or unapproved.
async fn start_due(launch: &mut Launch<'_>, state: &mut State, c: DueCheck, now: DateTime<Utc>) {
    let (worker, stop, runs) = (launch.worker, launch.stop, &mut *launch.runs);
    let id = c.campaign.campaign_id;
    if let Due::Missed { tick } = c.due
        && state.missed_logged.get(&id) != Some(&tick)
    {
        warn!(campaign = %c.campaign.name, %tick, "a scheduled tick was missed by more than its starting_deadline; not running it late");
        state.missed_logged.insert(id, tick);
    }
    let held = state.not_before.get(&id).is_some_and(|t| *t > tokio::time::Instant::now());
    let Some(work) = c.work(now).filter(|_| !state.running.contains(&id) && !held) else { return };
    match worker.approval_missing(&c.campaign).await {
        Ok(None) => {}
        Ok(Some(missing)) => {
            // once per tick (or follow-up) and version: the pass repeats
            let key = (
                match work {
                    Work::Tick(t) => Some(t),
                    Work::FollowUp => None,
                },
                c.campaign.version,
            );
            if state.unapproved_logged.get(&id) != Some(&key) {
                warn!(campaign = %c.campaign.name, "{missing}; skipped");
                crate::telemetry::global().unapproved_skip(c.campaign.name.as_str());
                state.unapproved_logged.insert(id, key);
            }
            return;
        }
        Err(e) => {
            warn!(campaign = %c.campaign.name, error = %e, "cannot check the approval; skipped");
            return;
        }
    }
    // a follow-up run lingers until the campaign's next tick or end, at most LINGER
    let horizon = now + chrono::Duration::from_std(LINGER).unwrap_or(chrono::Duration::minutes(10));
    let linger_until = [Some(horizon), c.next, c.ends_at].into_iter().flatten().min();
    state.not_before.remove(&id);
    state.running.insert(id);
    let (w, s) = (worker.clone(), stop.child_token());
    runs.spawn(async move {
        (
            id,
            work,
            run_work(RunWork {
                worker: w,
                campaign: c.campaign,
                work,
                linger_until,
                progress: Arc::new(Progress::default()),
                stop: s,
            })
            .await,
        )
    });
}

fn log_outcome(campaign_id: i64, outcome: &Scheduled) {
    match outcome {
        Scheduled::Ran(r) => info!(
            campaign_id,
            run_id = r.run_id,
            outcome = r.outcome.as_str(),
            notified = r.counts.notified,
            "run ended"
        ),
        Scheduled::AlreadyRunning => info!(campaign_id, "already running elsewhere"),
        Scheduled::AlreadyRan => info!(campaign_id, "already done by another process"),
        Scheduled::Failed(e) => error!(campaign_id, error = %e, "run failed"),
    }
}
