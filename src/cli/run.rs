//! `reverify run`: run campaigns once and exit.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use reverify::domain::CampaignName;
use reverify::engine::{Progress, Worker};
use reverify::store::campaigns::{CampaignRecord, CampaignStatus};
use reverify::store::runs::RunOutcome;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Context, exit};

/// Options of the command (documented on the subcommand).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Campaigns to run, by name.
    #[arg(value_name = "NAME", required_unless_present_any = ["all", "due"])]
    names: Vec<String>,
    /// Run every active campaign.
    #[arg(long, conflicts_with_all = ["names", "due"])]
    all: bool,
    /// Run every active campaign with work due, each under a lease so that
    /// overlapping invocations run it once: a tick of its schedule since its last
    /// finished run (at most starting_deadline ago), a scheduled run that did not
    /// finish (resumed, whatever the deadline), or follow-up: users a rule held back
    /// (a cooldown, the send window, the daily cap, a retry, a reminder) whose time
    /// has come. Campaigns whose ends_at passed are completed. For cron, systemd
    /// timers and Kubernetes CronJobs: run it every few minutes; with nothing due it
    /// costs a query per campaign and exits 0.
    #[arg(long, conflicts_with = "names")]
    due: bool,
    /// With --due: run only the campaigns whose schedule ticked (users held back
    /// wait for the next tick, as campaigns with schedule_only = true always do).
    #[arg(long, requires = "due")]
    no_follow_up: bool,
    /// Stop claiming users after this long (e.g. 10m, 1h); users in flight finish.
    /// The exit code is 4 (stopped with work left) unless --max-duration-exit says
    /// otherwise; the next run resumes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_duration: Option<Duration>,
    /// The exit code when --max-duration stopped the run with work left (default 4).
    /// A CronJob that runs `run --due` every few minutes in slices sets 0: the work
    /// left stays due and the next invocation resumes it, so the slice is no failure
    /// and needs no replacement pod. A stop by SIGTERM or SIGINT still exits 4.
    #[arg(long, value_name = "CODE", requires = "max_duration", default_value_t = 4)]
    max_duration_exit: u8,
    /// Do not ask GET /v1/user for a fresh state before each session.
    #[arg(long)]
    no_fresh_state: bool,
    /// Progress display: a bar on a terminal, log lines elsewhere.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

/// Cancels `stop` on SIGTERM, SIGINT, or when `max` elapses. The flag it returns
/// is set when `max` did it.
pub fn stop_on_signals(stop: CancellationToken, max: Option<Duration>) -> Arc<std::sync::atomic::AtomicBool> {
    let by_limit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = by_limit.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        let limit = async {
            match max {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping after the users in flight"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping after the users in flight"),
            _ = limit => {
                info!("--max-duration reached: stopping after the users in flight");
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        stop.cancel();
    });
    by_limit
}

/// Runs what was asked, then pushes the metrics to `metrics_push_url` (when set)
/// whatever happened: nothing due, a failure before any campaign started (counted
/// as one failed run), or campaigns run. Prometheus' batch-job rule: every
/// invocation pushes, so that a run that never succeeds is seen as such.
pub async fn run(args: RunArgs, ctx: &Context) -> anyhow::Result<u8> {
    let store = match ctx.store().await {
        Ok(store) => store,
        Err(e) => {
            reverify::telemetry::global().run_failed_to_start();
            push_metrics_if_set(ctx, None).await;
            return Err(e);
        }
    };
    let result = run_with(args, ctx, store.clone()).await;
    if result.is_err() {
        reverify::telemetry::global().run_failed_to_start();
    }
    push_metrics_if_set(ctx, Some(&store)).await;
    store.close().await;
    result
}

async fn run_with(args: RunArgs, ctx: &Context, store: reverify::store::Store) -> anyhow::Result<u8> {
    // four eyes as the database holds it: an environment that asks it off, or a
    // missing or foreign approvers file, stops the command before anything runs
    let approvers = super::approve::approvers(ctx)?;
    super::approve::check_policy(ctx, &store, approvers.as_ref()).await?;
    if args.due {
        return run_due(args, ctx, store).await;
    }
    let campaigns: Vec<CampaignRecord> = if args.all {
        store.campaign_list().await?.into_iter().filter(|c| c.status == CampaignStatus::Active).collect()
    } else {
        let mut v = Vec::new();
        for n in &args.names {
            let name = CampaignName::parse(n)?;
            let c = store
                .campaign_get(&name)
                .await?
                .with_context(|| format!("no campaign named {name}; apply its file first (reverify campaign apply)"))?;
            if c.status != CampaignStatus::Active {
                bail!("campaign {name} is {}; only active campaigns run (reverify campaign resume {name})", c.status);
            }
            v.push(c);
        }
        v
    };
    if campaigns.is_empty() {
        println!("no active campaigns");
        return Ok(exit::OK);
    }
    let runs = campaigns.into_iter().map(|c| (c, None)).collect();
    run_all(&args, worker(&args, ctx, store)?, runs).await
}

/// `run --due`: every campaign with work due, once, under its lease.
async fn run_due(args: RunArgs, ctx: &Context, store: reverify::store::Store) -> anyhow::Result<u8> {
    use reverify::domain::Due;
    use reverify::schedule::PassOptions;
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pass = reverify::schedule::pass(&store, &ctx.actor, now, PassOptions { follow_up: !args.no_follow_up }).await?;
    for name in &pass.completed {
        println!("{name}: completed (its ends_at passed); waiting users skipped as campaign_ended");
    }
    for c in &pass.checks {
        match c.due {
            Due::Missed { tick } => println!(
                "{}: the tick at {} was missed by more than its starting_deadline; not run late",
                c.campaign.name,
                at(tick)
            ),
            Due::Resume { interrupted, .. } => println!(
                "{}: resuming the run of the tick at {}, which did not finish",
                c.campaign.name,
                at(interrupted)
            ),
            Due::Run { .. } | Due::NotDue => {}
        }
    }
    if pass.due.is_empty() {
        match pass.next_wake(now) {
            Some(t) => println!("no campaign is due; next at {}", at(t)),
            None => println!("no campaign is due"),
        }
        return Ok(exit::OK);
    }
    let due = pass.due;
    let worker = worker(&args, ctx, store)?;
    let mut runs = Vec::with_capacity(due.len());
    for (c, work) in due {
        if matches!(work, reverify::schedule::Work::FollowUp) {
            println!("{}: following up users whose hold ended", c.name);
        }
        match worker.approval_missing(&c).await? {
            Some(missing) => {
                // skipped, not failed: the work stays due and runs once approved
                tracing::warn!(campaign = %c.name, "{missing}; skipped");
                eprintln!("warning: {missing}; skipped");
                reverify::telemetry::global().unapproved_skip(c.name.as_str());
            }
            None => runs.push((c, Some(work))),
        }
    }
    if runs.is_empty() {
        return Ok(exit::OK);
    }
    run_all(&args, worker, runs).await
}

/// Runs campaigns side by side on one worker: each by hand (`None`), or for a due
/// tick under its lease (`Some(tick)`). Prints a line per campaign and returns the
/// exit code: 1 when any failed, else 4 when any was interrupted, else 0.
/// The worker for this command's runs.
fn worker(args: &RunArgs, ctx: &Context, store: reverify::store::Store) -> anyhow::Result<Arc<Worker>> {
    let mut worker = Worker::from_settings(&ctx.settings, store).context("failed to set up the worker")?;
    worker.config.fresh_state = !args.no_fresh_state;
    worker.config.actor = ctx.actor.clone();
    Ok(Arc::new(worker))
}

async fn run_all(
    args: &RunArgs,
    worker: Arc<Worker>,
    runs: Vec<(CampaignRecord, Option<reverify::schedule::Work>)>,
) -> anyhow::Result<u8> {
    use reverify::schedule::Scheduled;
    let stop = CancellationToken::new();
    let by_limit = stop_on_signals(stop.clone(), args.max_duration);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, work) in runs {
        let (worker, stop) = (worker.clone(), stop.clone());
        let progress = Arc::new(Progress::default());
        let display = show_progress(args.progress, c.name.to_string(), progress.clone());
        tasks.spawn(async move {
            let name = c.name.clone();
            let outcome = match work {
                Some(work) => {
                    reverify::schedule::run_work(reverify::schedule::RunWork {
                        worker,
                        campaign: c,
                        work,
                        linger_until: None,
                        progress,
                        stop,
                    })
                    .await
                }
                None => match worker.run_campaign(&c, progress, stop).await {
                    Ok(r) => Scheduled::Ran(r),
                    Err(e) => Scheduled::Failed(e),
                },
            };
            display.abort();
            (name, outcome)
        });
    }
    let mut failed = false;
    let mut interrupted = false;
    while let Some(joined) = tasks.join_next().await {
        let (name, outcome) = joined.context("a campaign task panicked")?;
        match outcome {
            Scheduled::Ran(r) => {
                print_report(&name, &r);
                match r.paused {
                    // a canary pause is the plan: work is left for after the review
                    Some(reason) if reason == reverify::store::campaigns::CANARY_REVIEW => println!(
                        "{name}: canary sent; paused for review ({reason}): `reverify campaign resume {name}` sends to the rest"
                    ),
                    Some(reason) => {
                        eprintln!(
                            "error: campaign {name}: halted and paused ({reason} over its [halt] threshold; \
                             `reverify campaign show {name}` has the figures)"
                        );
                        failed = true;
                    }
                    None => interrupted |= r.outcome == RunOutcome::Interrupted,
                }
            }
            Scheduled::AlreadyRunning => println!("{name}: already running in another process; skipped"),
            Scheduled::AlreadyRan => println!("{name}: another process has just done its due work; skipped"),
            Scheduled::Failed(e) => {
                // the engine names the campaign in its set-up errors; say it once
                let e = e.to_string();
                let named = e.strip_prefix(&format!("campaign {name}")).is_some_and(|r| r.starts_with([':', ' ']));
                if named {
                    eprintln!("error: {e}");
                } else {
                    eprintln!("error: campaign {name}: {e}");
                }
                failed = true;
            }
        }
    }
    let sliced = interrupted && by_limit.load(std::sync::atomic::Ordering::SeqCst);
    if sliced {
        println!("stopped at --max-duration with work left; the next run resumes it");
    }
    Ok(if failed {
        exit::FAILURE
    } else if sliced {
        args.max_duration_exit
    } else if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

fn print_report(name: &CampaignName, r: &reverify::engine::RunReport) {
    let c = r.counts;
    println!(
        "{name}: {} (run {}): {} newly targeted, {} notified, {} skipped, {} deferred, {} failed",
        r.outcome.as_str(),
        r.run_id,
        c.targeted,
        c.notified,
        c.skipped,
        c.deferred,
        c.failed
    );
}

/// A progress bar on a terminal, or a log line every 10 s.
pub fn show_progress(mode: ProgressMode, name: String, p: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Log,
        m => m,
    };
    tokio::spawn(async move {
        match mode {
            ProgressMode::Bar => {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_prefix(name);
                loop {
                    bar.set_length(p.claimed.load(Relaxed).max(0) as u64);
                    bar.set_position(p.done().max(0) as u64);
                    let c = p.counts();
                    bar.set_message(format!(
                        "notified {} skipped {} deferred {} failed {}",
                        c.notified, c.skipped, c.deferred, c.failed
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            ProgressMode::Log => {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let c = p.counts();
                    info!(campaign = %name, claimed = p.claimed.load(Relaxed), notified = c.notified, skipped = c.skipped,
                          deferred = c.deferred, failed = c.failed, "progress");
                }
            }
            ProgressMode::Auto | ProgressMode::None => {}
        }
    })
}

/// Pushes the run's metrics to `metrics_push_url`, when set. Decision: a failed
/// push is a warning, not a failed run: the work is done and recorded, and a
/// retried run would not make monitoring any better.
async fn push_metrics_if_set(ctx: &Context, store: Option<&reverify::store::Store>) {
    let Some(url) = &ctx.settings.metrics_push_url else { return };
    if let Some(store) = store {
        // Bounded, like the push itself: after a SIGTERM the whole stop (the users in
        // flight, these counts, the push) must fit in the grace period the deploy
        // files give (tests/deploy.rs adds them up); a database that went away must
        // not hold the push up.
        let read = reverify::engine::gauges::refresh_gauges(store);
        match tokio::time::timeout(reverify::telemetry::server::READY_TIMEOUT, read).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the gauges for the metrics push"),
            Err(_) => tracing::warn!("could not read the gauges for the metrics push: the database did not answer"),
        }
    }
    let instance = reverify::telemetry::push_instance();
    if let Err(e) = reverify::telemetry::push_metrics(url, "reverify", &instance).await {
        tracing::warn!(error = %e, "metrics not pushed");
    }
}
