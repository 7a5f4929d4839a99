//! `reverify bench`: the benchmark of issue 8, measuring the real pipeline.
//!
//! Each scenario starts the sandbox as a child process with generated users,
//! exports them, imports them with `reverify users import` into a fresh database,
//! applies a generated campaign with `reverify campaign apply`, and runs the worker as
//! a child (`reverify run NAME --progress none`) under `/usr/bin/time`. Only the
//! worker is measured: wall time from its start to its end (so process start,
//! migrations check and targeting are in), CPU seconds and peak RSS. The sandbox's
//! CPU, the bench database's Postgres backends' CPU and the whole machine's load are
//! printed beside each figure as `# ` lines, as evidence of where the time went.
//!
//! Each figure is one line `name: value unit`, printed as soon as it is known.
//! Nothing is asserted here: a slow machine gives low figures, not a failure. A
//! scenario that goes wrong (a violation at the sandbox, users not notified) is an
//! error, since its figure would mean nothing.
//!
//! `reverify bench sandbox` and `reverify bench import` are the sandbox's and the
//! import's own benchmarks, kept under the same command.

mod child;
mod probe;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::{Args, Subcommand, ValueEnum};
use reverify::crypto::TokenCipher;
use reverify::sandbox::Endpoint;
use reverify::store::Backend;
use reverify::store::testing::TestDb;
use tokio::runtime::Handle;

use self::child::{CLIENT_KEY, Measured, Report, SandboxChild};
use self::probe::Sampled;
use super::exit;

/// Benchmarks. Without a subcommand: the whole pipeline (issue 8).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Measure the sandbox's requests per second (in-process, over loopback).
    Sandbox(super::sandbox::BenchArgs),
    /// Import a generated CSV of 1M users into SQLite and Postgres.
    Import(super::bench_import::BenchImportArgs),
}

/// Options of the pipeline benchmark.
#[derive(Debug, Args)]
struct PipelineArgs {
    /// Small sizes for CI (2,000 users, a short rate window, the "1m" figures at
    /// 1,000 users). The figures are printed all the same; their values mean little.
    #[arg(long)]
    quick: bool,
    /// Scale every size by this factor (0.1: a 10,000-user throughput run).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    size: f64,
    /// Skip the two 1,000,000-user figures (peak_rss_1m, targeting_1m_postgres).
    #[arg(long)]
    skip_1m: bool,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// throughput_postgres and cpu_per_1k_users.
    ThroughputPostgres,
    /// throughput_sqlite.
    ThroughputSqlite,
    /// rate_fidelity and rate_max_window.
    Rate,
    /// latency_hiding.
    Latency,
    /// peak_rss_1m.
    PeakRss1m,
    /// targeting_1m_postgres.
    Targeting1m,
    /// api_requests_per_user (a second campaign over the same users within the
    /// access tokens' life) and api_requests_per_user_first_run.
    ApiRequests,
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("{v} must be above 0")) }
}

/// Users per scenario.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    throughput: usize,
    million: usize,
    /// Generated users of the rate scenario (about 70 % are in the targeted region).
    rate: usize,
    latency: usize,
}

impl Sizes {
    fn new(quick: bool, scale: f64) -> Self {
        let base = if quick {
            Sizes { throughput: 2_000, million: 1_000, rate: 400, latency: 640 }
        } else {
            Sizes { throughput: 100_000, million: 1_000_000, rate: 3_000, latency: 6_400 }
        };
        let s = |n: usize, floor: usize| ((n as f64 * scale).round() as usize).max(floor);
        Sizes {
            throughput: s(base.throughput, 100),
            million: s(base.million, 100),
            // at least ~3 whole seconds at 200 requests/s, so that a middle second exists
            rate: s(base.rate, 300),
            latency: s(base.latency, 128),
        }
    }
}

/// The worker's rate limit in the rate scenario, and its default burst.
const RATE_LIMIT: f64 = 200.0;
const DEFAULT_BURST: u64 = 10;
/// Above this many users the outbox is emptied during the run, not only after it.
const DRAIN_DURING_RUN_ABOVE: usize = 200_000;
/// The latency scenario: sandbox latency per request and campaign concurrency.
const LATENCY: Duration = Duration::from_millis(100);
const LATENCY_CONCURRENCY: u32 = 64;
const LATENCY_USERS_IN_FLIGHT: u32 = 4 * LATENCY_CONCURRENCY;

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    match args.command {
        Some(BenchCommand::Sandbox(a)) => super::sandbox::bench(a).await,
        Some(BenchCommand::Import(a)) => super::bench_import::run(a).await,
        None => {
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || pipeline(&args.pipeline, &handle))
                .await
                .context("the benchmark thread panicked")?
        }
    }
}

/// Prints a line at once (a long run shows its figures as they come).
fn say(line: impl AsRef<str>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// The whole benchmark. Runs on a blocking thread: the children are waited for
/// synchronously, and the few async calls go through `rt`.
fn pipeline(args: &PipelineArgs, rt: &Handle) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find the reverify binary")?;
    let sizes = Sizes::new(args.quick, args.size);
    let wanted = |s: Scenario| {
        let skipped = args.skip_1m && matches!(s, Scenario::PeakRss1m | Scenario::Targeting1m);
        !skipped && (args.only.is_empty() || args.only.contains(&s))
    };
    say(probe::machine_line());
    say(format!(
        "# build: {}; sizes: throughput {} users, \"1m\" {} users, rate {} users, latency {} users",
        if cfg!(debug_assertions) { "debug (figures are not meaningful)" } else { "release" },
        sizes.throughput,
        sizes.million,
        sizes.rate,
        sizes.latency
    ));
    if wanted(Scenario::ThroughputPostgres) {
        let o = run_scenario(&exe, rt, &Setup::throughput("throughput-postgres", sizes.throughput, Backend::Postgres))?;
        o.expect_all_notified(sizes.throughput)?;
        say(format!("throughput_postgres: {:.0} users/s", o.users_per_second()));
        say(format!("cpu_per_1k_users: {:.3} s", o.measured.cpu() / (o.report.notified as f64 / 1000.0)));
        say(o.evidence("throughput_postgres"));
    }
    if wanted(Scenario::ThroughputSqlite) {
        let o = run_scenario(&exe, rt, &Setup::throughput("throughput-sqlite", sizes.throughput, Backend::Sqlite))?;
        o.expect_all_notified(sizes.throughput)?;
        say(format!("throughput_sqlite: {:.0} users/s", o.users_per_second()));
        say(o.evidence("throughput_sqlite"));
    }
    if wanted(Scenario::Rate) {
        rate(&exe, rt, sizes.rate)?;
    }
    if wanted(Scenario::Latency) {
        latency(&exe, rt, sizes.latency)?;
    }
    if wanted(Scenario::PeakRss1m) {
        let o = run_scenario(&exe, rt, &Setup::throughput("peak-rss-1m", sizes.million, Backend::Postgres))?;
        o.expect_all_notified(sizes.million)?;
        say(format!("peak_rss_1m: {:.0} MB", o.measured.max_rss_mb));
        say(o.evidence("peak_rss_1m"));
    }
    if wanted(Scenario::Targeting1m) {
        let secs = rt.block_on(targeting(sizes.million))?;
        say(format!("targeting_1m_postgres: {secs:.2} s"));
    }
    if wanted(Scenario::ApiRequests) {
        let mut setup = Setup::throughput("api-requests", sizes.latency, Backend::Postgres);
        setup.second_campaign = true;
        let o = run_scenario(&exe, rt, &setup)?;
        o.expect_all_notified(sizes.latency)?;
        let first = api_requests(&o.stats) as f64 / o.report.notified.max(1) as f64;
        let (second_report, second_requests) = o.second.as_ref().context("the second campaign did not run")?;
        ensure!(
            second_report.notified == sizes.latency as u64,
            "the second campaign notified {} of {} users",
            second_report.notified,
            sizes.latency
        );
        let second = *second_requests as f64 / second_report.notified.max(1) as f64;
        say(format!("api_requests_per_user_first_run: {first:.2} requests"));
        say(format!("api_requests_per_user: {second:.2} requests"));
        say(format!(
            "# api_requests_per_user: a second campaign over the same {} users, run right after the first (within \
             the 6 h access tokens' life): {second_requests} API requests; the first run made {} ({first:.2} per \
             user: token, profile, session); goal: at most 2.05",
            sizes.latency,
            api_requests(&o.stats)
        ));
    }
    Ok(exit::OK)
}

/// One scenario's settings.
#[derive(Debug, Clone)]
struct Setup {
    name: &'static str,
    users: usize,
    backend: Backend,
    sandbox_flags: Vec<&'static str>,
    /// The worker's `requests_per_second`, `burst` (None: the default) and `max_concurrency`.
    worker_rate: f64,
    worker_burst: Option<u32>,
    worker_concurrency: u32,
    /// The campaign's throttle.
    campaign_rate: f64,
    campaign_concurrency: u32,
    /// `[audience] regions`, when not every region.
    regions: Option<&'static str>,
    /// After the first campaign, apply and run a second one over the same users.
    second_campaign: bool,
}

impl Setup {
    /// Every user eligible, zero latency with the per-user limits on, no rate cap, and
    /// neither the worker's nor the campaign's rate in the way.
    fn throughput(name: &'static str, users: usize, backend: Backend) -> Self {
        Self {
            name,
            users,
            backend,
            sandbox_flags: Vec::new(),
            worker_rate: 1_000_000.0,
            worker_burst: None,
            worker_concurrency: 64,
            campaign_rate: 100_000.0,
            // users in flight: each waits on a few group commits, so more users than
            // request slots keep both the API and the database busy
            campaign_concurrency: 384,
            regions: None,
            second_campaign: false,
        }
    }

    fn campaign_toml(&self) -> String {
        self.campaign_toml_named(&format!("bench-{}", self.name))
    }

    fn campaign_toml_named(&self, name: &str) -> String {
        let regions = self.regions.map(|r| format!("regions = [\"{r}\"]\n")).unwrap_or_default();
        format!(
            "name = \"{name}\"\n\
             description = \"reverify bench\"\n\
             [audience]\n\
             states = [\"UNVERIFIED\"]\n\
             {regions}\
             [delivery]\n\
             channel = \"email\"\n\
             template = \"default\"\n\
             from = \"Bench <bench@example.com>\"\n\
             subject = \"Please verify your identity\"\n\
             [throttle]\n\
             requests_per_second = {}\n\
             concurrency = {}\n",
            self.campaign_rate, self.campaign_concurrency
        )
    }
}

/// What one scenario measured.
struct Outcome {
    users: usize,
    report: Report,
    measured: Measured,
    /// Messages found in the outbox.
    messages: u64,
    stats: reverify::sandbox::Stats,
    sandbox_cpu: Option<f64>,
    sampled: Sampled,
    /// Postgres transactions committed in the bench database during the run.
    pg_commits: Option<i64>,
    import_seconds: f64,
    /// The second campaign's report and the API requests it made.
    second: Option<(Report, u64)>,
}

impl Outcome {
    fn users_per_second(&self) -> f64 {
        self.report.notified as f64 / self.measured.wall
    }

    fn expect_all_notified(&self, users: usize) -> anyhow::Result<()> {
        ensure!(
            self.report.notified == users as u64 && self.messages == users as u64,
            "{} of {users} users notified ({} messages in the outbox): {:?}; the figure would mean nothing",
            self.report.notified,
            self.messages,
            self.report
        );
        Ok(())
    }

    /// The `# ` line beside a figure: where the time went.
    fn evidence(&self, figure: &str) -> String {
        let m = &self.measured;
        let opt = |v: Option<f64>, unit: &str| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}{unit}"));
        format!(
            "# {figure}: {} users, {} notified, {} messages; worker wall {:.2} s, CPU {:.2} s (user {:.2} + system {:.2}) \
             = {:.2} cores, peak RSS {:.0} MB; sandbox CPU {}; Postgres backends CPU {}; machine busy {} of {} cores; \
             {} API requests ({:.2} per user); Postgres commits {}; import {:.1} s; sandbox violations {}",
            self.users,
            self.report.notified,
            self.messages,
            m.wall,
            m.cpu(),
            m.user,
            m.system,
            m.cpu() / m.wall,
            m.max_rss_mb,
            opt(self.sandbox_cpu, " s"),
            opt(self.sampled.postgres_cpu, " s"),
            opt(self.sampled.machine_busy_cores, ""),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            api_requests(&self.stats),
            api_requests(&self.stats) as f64 / self.report.notified.max(1) as f64,
            self.pg_commits.map_or_else(
                || "n/a".to_owned(),
                |c| format!("{c} ({:.2} per user)", c as f64 / self.report.notified.max(1) as f64)
            ),
            self.import_seconds,
            self.stats.violations,
        )
    }
}

/// The requests the worker's limiter admits, as the sandbox counted them.
fn api_requests(stats: &reverify::sandbox::Stats) -> u64 {
    [Endpoint::Token, Endpoint::User, Endpoint::Verification].into_iter().map(|e| stats.requests_to(e)).sum()
}

/// The worker's database URL: on Postgres over loopback without TLS (`sslmode=
/// disable`), as a worker beside its database would connect; the default (`prefer`)
/// would encrypt every statement on both sides of the loopback.
fn worker_database_url(url: &str, backend: Backend) -> String {
    match backend {
        Backend::Postgres if !url.contains("sslmode=") => {
            format!("{url}{}sslmode=disable", if url.contains('?') { '&' } else { '?' })
        }
        _ => url.to_owned(),
    }
}

/// The database name of a Postgres URL (its path), to find its backends.
fn database_name(url: &str) -> Option<String> {
    url::Url::parse(url).ok().map(|u| u.path().trim_start_matches('/').to_owned()).filter(|n| !n.is_empty())
}

/// Runs one scenario from nothing: sandbox, database, import, campaign, worker.
fn run_scenario(exe: &Path, rt: &Handle, setup: &Setup) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new().prefix("reverify-bench-").tempdir()?;
    let sandbox = SandboxChild::start(exe, dir.path(), setup.users, &setup.sandbox_flags)
        .with_context(|| format!("{}: the sandbox", setup.name))?;
    let db = rt.block_on(TestDb::new(setup.backend));
    // the workers are other processes: this one keeps no connection open
    rt.block_on(db.store.close());
    let key = TokenCipher::generate_key();

    let mut import = child::reverify(exe, dir.path());
    import
        .args(["users", "import", "--strict"])
        .arg(&sandbox.users_file)
        .env("REVERIFY_DATABASE_URL", &db.url)
        .env("REVERIFY_TOKEN_KEY", &key);
    let (_, import_took) = child::run_to_end(import, "reverify users import")?;

    let campaign_file = dir.path().join("campaign.toml");
    std::fs::write(&campaign_file, setup.campaign_toml())?;
    let mut apply = child::reverify(exe, dir.path());
    let outbox: PathBuf = dir.path().join("outbox");
    // apply checks the campaign against the worker's channel, as the run does
    apply
        .args(["campaign", "apply"])
        .arg(&campaign_file)
        .env("REVERIFY_DATABASE_URL", &db.url)
        .env("REVERIFY_OUTBOX_DIR", &outbox);
    child::run_to_end(apply, "reverify campaign apply")?;

    let mut env = vec![
        ("REVERIFY_DATABASE_URL", worker_database_url(&db.url, setup.backend)),
        ("REVERIFY_BAANX_BASE_URL", sandbox.base_url.clone()),
        ("REVERIFY_BAANX_CLIENT_KEY", CLIENT_KEY.to_owned()),
        ("REVERIFY_TOKEN_KEY", key),
        ("REVERIFY_OUTBOX_DIR", outbox.display().to_string()),
        ("REVERIFY_REQUESTS_PER_SECOND", setup.worker_rate.to_string()),
        ("REVERIFY_MAX_CONCURRENCY", setup.worker_concurrency.to_string()),
        // the production default; per-user lines are at debug
        ("REVERIFY_LOG_LEVEL", "info".to_owned()),
    ];
    if let Some(b) = setup.worker_burst {
        env.push(("REVERIFY_BURST", b.to_string()));
    }
    let campaign = format!("bench-{}", setup.name);
    let pg_name = (setup.backend == Backend::Postgres).then(|| database_name(&db.url)).flatten();
    let admin = reverify::store::testing::postgres_admin_url();
    let commits = |rt: &Handle| pg_name.as_deref().and_then(|n| rt.block_on(probe::pg_commits(&admin, n)));
    let commits_before = commits(rt);
    let sandbox_cpu_before = probe::process_cpu(sandbox.pid());
    let sampler = probe::Sampler::start(pg_name.clone());
    // 200,000 messages are about 1 GB: past that, delete them as they come
    let drain = probe::OutboxDrain::start(&outbox, setup.users > DRAIN_DURING_RUN_ABOVE);
    let worked = child::run_worker(exe, dir.path(), &campaign, &env);
    let sampled = sampler.finish();
    let messages = drain.finish();
    let sandbox_cpu = sandbox_cpu_before.zip(probe::process_cpu(sandbox.pid())).map(|(a, b)| b - a);
    let (measured, report) = worked.with_context(|| format!("{}: the worker", setup.name))?;
    // the worker's backends report their counts as they exit; give the stats a moment
    std::thread::sleep(Duration::from_millis(600));
    let pg_commits = commits_before.zip(commits(rt)).map(|(a, b)| b - a);
    let stats = rt.block_on(sandbox.stats())?;
    ensure!(stats.violations == 0, "{}: the sandbox counted {} limit violations", setup.name, stats.violations);
    let second = if setup.second_campaign {
        let file = dir.path().join("campaign-2.toml");
        let name = format!("bench-{}-2", setup.name);
        std::fs::write(&file, setup.campaign_toml_named(&name))?;
        let mut apply = child::reverify(exe, dir.path());
        apply
            .args(["campaign", "apply"])
            .arg(&file)
            .env("REVERIFY_DATABASE_URL", &db.url)
            .env("REVERIFY_OUTBOX_DIR", &outbox);
        child::run_to_end(apply, "reverify campaign apply")?;
        let drain = probe::OutboxDrain::start(&outbox, true);
        let worked = child::run_worker(exe, dir.path(), &name, &env);
        drain.finish();
        let (_, report) = worked.with_context(|| format!("{}: the second worker", setup.name))?;
        let after = rt.block_on(sandbox.stats())?;
        ensure!(after.violations == 0, "{}: the sandbox counted {} limit violations", setup.name, after.violations);
        Some((report, api_requests(&after) - api_requests(&stats)))
    } else {
        None
    };
    drop(sandbox);
    drop(db);
    Ok(Outcome {
        users: setup.users,
        report,
        measured,
        messages,
        stats,
        sandbox_cpu,
        sampled,
        pg_commits,
        import_seconds: import_took.as_secs_f64(),
        second,
    })
}

/// Mean of the whole seconds between the first and the last (both partial).
fn steady_rate(per_second: &[u64]) -> Option<(f64, usize)> {
    let middle = per_second.get(1..per_second.len().checked_sub(1)?)?;
    (!middle.is_empty()).then(|| (middle.iter().sum::<u64>() as f64 / middle.len() as f64, middle.len()))
}

/// rate_fidelity and rate_max_window.
///
/// The worker's `requests_per_second` limits every Baanx request (token refresh,
/// profile, session) per region, so the sandbox's histogram of all three is what is
/// compared with the limit; the campaign targets one region so that one quota is in
/// play.
fn rate(exe: &Path, rt: &Handle, users: usize) -> anyhow::Result<()> {
    let setup =
        Setup { worker_rate: RATE_LIMIT, regions: Some("intl"), ..Setup::throughput("rate", users, Backend::Postgres) };
    let o = run_scenario(exe, rt, &setup)?;
    ensure!(o.report.notified > 0 && o.report.failed == 0, "rate: {:?}", o.report);
    let (achieved, seconds) = steady_rate(&o.stats.api_per_second).with_context(|| {
        format!("rate: too short a run to have a whole second ({:?}); use more users", o.stats.api_per_second)
    })?;
    say(format!("rate_fidelity: {:.3}", achieved / RATE_LIMIT));
    say(format!("rate_max_window: {} requests", o.stats.api_busiest_second));
    say(format!(
        "# rate: limit {RATE_LIMIT:.0} requests/s per region with burst {DEFAULT_BURST} (goal: 0.97-1.00, busiest \
         window <= {:.0}); counted at the sandbox over all API requests (token refresh + GET /v1/user + GET \
         /v1/user/verification), which is what the worker's limiter admits; one region (intl) targeted; achieved \
         {achieved:.1} requests/s over {seconds} whole seconds (first and last partial seconds left out); per second: {:?}; \
         GET /v1/user/verification alone: busiest window {}",
        RATE_LIMIT + DEFAULT_BURST as f64,
        o.stats.api_per_second,
        o.stats.verification_busiest_second,
    ));
    say(o.evidence("rate"));
    Ok(())
}

/// latency_hiding: 100 ms per request at the sandbox and a concurrency of 64: the
/// worker's `max_concurrency`, the Baanx requests it keeps in flight. The campaign
/// keeps more users than that in flight, so that a user's database work and message
/// happen while others hold the 64 request slots.
fn latency(exe: &Path, rt: &Handle, users: usize) -> anyhow::Result<()> {
    let setup = Setup {
        sandbox_flags: vec!["--latency", "100ms"],
        worker_concurrency: LATENCY_CONCURRENCY,
        campaign_concurrency: LATENCY_USERS_IN_FLIGHT,
        ..Setup::throughput("latency", users, Backend::Postgres)
    };
    let o = run_scenario(exe, rt, &setup)?;
    o.expect_all_notified(users)?;
    // 64 requests in flight, each held LATENCY at the sandbox: 640 requests/s at best;
    // each user makes k of them one after the other
    let k = api_requests(&o.stats) as f64 / o.report.notified as f64;
    let ideal_requests = f64::from(LATENCY_CONCURRENCY) / LATENCY.as_secs_f64();
    let achieved = o.users_per_second();
    let achieved_requests = achieved * k;
    say(format!("latency_hiding: {:.3}", achieved_requests / ideal_requests));
    say(format!("latency_hiding_throughput: {achieved:.1} users/s"));
    say(format!(
        "# latency_hiding: achieved {achieved_requests:.1} requests/s ({achieved:.1} users/s x k = {k:.2} requests per \
         user: token refresh, GET /v1/user, GET /v1/user/verification, counted at the sandbox) against the ideal \
         {LATENCY_CONCURRENCY} in flight / {} ms = {ideal_requests:.0} requests/s; in users that ideal is \
         {:.1} users/s, since a user's k requests depend on each other and cannot overlap; {LATENCY_USERS_IN_FLIGHT} \
         users in flight (the campaign's concurrency) share the {LATENCY_CONCURRENCY} request slots (the worker's \
         max_concurrency)",
        LATENCY.as_millis(),
        ideal_requests / k
    ));
    say(o.evidence("latency_hiding"));
    Ok(())
}

/// targeting_1m_postgres: `target_add_matching` alone, after a bulk import of
/// `users` eligible users into a fresh Postgres database.
async fn targeting(users: usize) -> anyhow::Result<f64> {
    use reverify::directory::{ImportOptions, import_file};
    use reverify::domain::CampaignSpec;
    let dir = tempfile::Builder::new().prefix("reverify-bench-").tempdir()?;
    let csv = dir.path().join("users.csv");
    let rows = users as u64;
    let path = csv.clone();
    tokio::task::spawn_blocking(move || super::bench_import::generate(&path, rows, true)).await??;
    let db = TestDb::postgres().await;
    let cipher = std::sync::Arc::new(TokenCipher::from_secrets(
        Some(&reverify::Secret::new(TokenCipher::generate_key())),
        None,
    )?);
    let now = chrono::Utc::now();
    let opts = ImportOptions { format: None, strict: true, cipher: Some(cipher), actor: "bench".into(), now };
    let started = Instant::now();
    let imported = import_file(&db.store, &csv, &opts).await?;
    let import_seconds = started.elapsed().as_secs_f64();
    ensure!(imported.imported == rows, "targeting: import was not clean: {imported:?}");
    let text = Setup::throughput("targeting", users, Backend::Postgres).campaign_toml();
    let spec = CampaignSpec::from_toml(&text, "bench campaign")?;
    let (_, campaign) = db.store.campaign_apply(&spec, &text, "bench", now).await?;
    let started = Instant::now();
    let added = db.store.target_add_matching(campaign.campaign_id, &spec.audience, chrono::Utc::now()).await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(added == rows, "targeting: {added} of {rows} users targeted");
    say(format!(
        "# targeting_1m_postgres: {rows} users targeted by one target_add_matching call on a fresh Postgres database \
         (after an in-process import of {import_seconds:.1} s, not timed)"
    ));
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_the_partial_edges() {
        assert_eq!(steady_rate(&[50, 200, 198, 202, 30]), Some((200.0, 3)));
        assert_eq!(steady_rate(&[50, 30]), None);
        assert_eq!(steady_rate(&[]), None);
    }

    #[test]
    fn sizes_scale_with_floors() {
        let s = Sizes::new(false, 1.0);
        assert_eq!((s.throughput, s.million, s.rate, s.latency), (100_000, 1_000_000, 3_000, 6_400));
        let s = Sizes::new(false, 0.001);
        assert_eq!((s.throughput, s.million, s.rate, s.latency), (100, 1_000, 300, 128));
    }

    #[test]
    fn the_campaign_file_is_valid() {
        let mut setup = Setup::throughput("x", 10, Backend::Sqlite);
        setup.regions = Some("intl");
        let spec = reverify::domain::CampaignSpec::from_toml(&setup.campaign_toml(), "t").unwrap();
        assert_eq!(spec.throttle.concurrency, 384);
        assert_eq!(spec.audience.regions, vec![reverify::domain::Region::Intl]);
    }

    #[test]
    fn finds_the_database_name() {
        assert_eq!(
            database_name("postgres://postgres@127.0.0.1:5432/reverify_test_1").as_deref(),
            Some("reverify_test_1")
        );
        assert_eq!(database_name("postgres://h/"), None);
    }
}
