//! `reverify daemon`: runs each campaign when it is due, until stopped.
//!
//! The loop sleeps until the earliest next tick among the active campaigns (never
//! longer than [`super::REFRESH`], so that campaigns applied, paused or resumed in
//! the database are picked up), runs what is due under each campaign's lease, and
//! on SIGTERM stops claiming, lets users in flight finish, and returns. A tick whose
//! run did not finish stays due (resumed at the next pass); a campaign whose lease
//! another process holds is tried again once that lease could have expired, and one
//! whose run failed after [`super::REFRESH`], so that neither is retried in a loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{REFRESH, Scheduled, due_campaigns, run_due};
use crate::domain::Due;
use crate::engine::{Progress, Worker};

/// Runs due campaigns until `stop` is cancelled. Each run gets a child of `stop`.
///
/// # Errors
/// Never for a single campaign's failure (it is logged and recorded); only when
/// the database cannot be read at all for [`super::REFRESH`] in a row.
pub async fn run(worker: Arc<Worker>, stop: CancellationToken) -> Result<(), crate::store::StoreError> {
    let mut running: JoinSet<(i64, Scheduled)> = JoinSet::new();
    let mut active: HashSet<i64> = HashSet::new();
    let mut missed_logged: HashMap<i64, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut unapproved_logged: HashMap<i64, (chrono::DateTime<chrono::Utc>, i64)> = HashMap::new();
    // campaigns not to start again before a time (held elsewhere, or just failed)
    let mut not_before: HashMap<i64, tokio::time::Instant> = HashMap::new();
    let mut failures_in_a_row = 0u32;
    info!(worker = %worker.config.worker_id, "daemon started");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = worker.clock.now();
        let mut sleep_for = REFRESH;
        match due_campaigns(&worker.store, now).await {
            Ok(checks) => {
                failures_in_a_row = 0;
                for c in checks {
                    let id = c.campaign.campaign_id;
                    if let Err(e) = worker.store.campaign_set_next_run(id, c.next).await {
                        warn!(error = %e, "could not record the next run time");
                    }
                    if let Some(next) = c.next {
                        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
                        sleep_for = sleep_for.min(wait.max(Duration::from_millis(200)));
                    }
                    let waiting = not_before.get(&id).is_some_and(|t| *t > tokio::time::Instant::now());
                    let due_tick = match c.due {
                        Due::Run { tick } | Due::Resume { tick, .. } if !active.contains(&id) && !waiting => Some(tick),
                        _ => None,
                    };
                    if let Some(tick) = due_tick {
                        match worker.approval_missing(&c.campaign).await {
                            Ok(None) => {}
                            Ok(Some(missing)) => {
                                // once per tick and version: the pass repeats every minute
                                let key = (tick, c.campaign.version);
                                if unapproved_logged.get(&id) != Some(&key) {
                                    warn!(campaign = %c.campaign.name, "{missing}; skipped");
                                    crate::telemetry::global().unapproved_skip(c.campaign.name.as_str());
                                    unapproved_logged.insert(id, key);
                                }
                                continue;
                            }
                            Err(e) => {
                                warn!(campaign = %c.campaign.name, error = %e, "cannot check the approval; skipped");
                                continue;
                            }
                        }
                    }
                    match c.due {
                        Due::Run { tick } | Due::Resume { tick, .. } if !active.contains(&id) && !waiting => {
                            not_before.remove(&id);
                            active.insert(id);
                            let (w, s) = (worker.clone(), stop.child_token());
                            running.spawn(async move {
                                (id, run_due(w, c.campaign, tick, Arc::new(Progress::default()), s).await)
                            });
                        }
                        Due::Missed { tick } if missed_logged.get(&id) != Some(&tick) => {
                            warn!(campaign = %c.campaign.name, %tick, "a scheduled tick was missed by more than its starting_deadline; not running it late");
                            missed_logged.insert(id, tick);
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                failures_in_a_row += 1;
                error!(error = %e, "cannot read the campaigns");
                if failures_in_a_row >= 5 {
                    return Err(e);
                }
                sleep_for = Duration::from_secs(5 * u64::from(failures_in_a_row));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(sleep_for) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((id, outcome)) = done {
                    active.remove(&id);
                    log_outcome(id, &outcome);
                    let pause = match &outcome {
                        Scheduled::AlreadyRunning => Some(worker.config.lease),
                        Scheduled::Failed(_) => Some(REFRESH),
                        Scheduled::Ran(_) | Scheduled::AlreadyRan => None,
                    };
                    if let Some(pause) = pause {
                        not_before.insert(id, tokio::time::Instant::now() + pause);
                    }
                }
            }
        }
    }
    info!(in_flight = running.len(), "daemon stopping; waiting for runs in progress");
    while let Some(done) = running.join_next().await {
        if let Ok((id, outcome)) = done {
            log_outcome(id, &outcome);
        }
    }
    info!("daemon stopped");
    Ok(())
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
        Scheduled::AlreadyRan => info!(campaign_id, "already ran for this tick"),
        Scheduled::Failed(e) => error!(campaign_id, error = %e, "run failed"),
    }
}
