//! The pipeline benchmark of issue 8 (`reverify-bench` without a subcommand),
//! measuring the real pipeline.
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
//! Click-through links have two scenarios: the send step of a `delivery.link =
//! "click"` campaign (no session call), and the clicks themselves: `reverify serve`
//! as a child, many concurrent POSTs to distinct links, each request's latency.

mod child;
mod dashboard;
mod followup;
mod pgstat;
mod probe;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::{Args, ValueEnum};
use reverify::crypto::TokenCipher;
use reverify::sandbox::SandboxRoute;
use reverify::store::Backend;
use reverify::store::testing::TestDb;
use tokio::runtime::Handle;

use self::child::{CLIENT_KEY, Measured, Report, SandboxChild, ServeChild};
use self::probe::Sampled;

/// Options of the pipeline benchmark.
#[derive(Debug, Args)]
pub struct PipelineArgs {
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
    /// throughput_click_send_postgres, throughput_click_send_sqlite and
    /// throughput_click_send: a click-mode campaign's send step.
    ThroughputClickSend,
    /// click_throughput and click_throughput_p99: POSTs to `reverify serve`.
    ClickThroughput,
    /// dashboard_p95_ms: the dashboard's campaign page over the "1m" campaign on
    /// Postgres (the throughput size with --skip-1m).
    Dashboard,
    /// follow_up_lag_p99_s: the daemon taking the throughput size's users as their
    /// holds end, spread over 10 minutes (Postgres).
    FollowUpLag,
    /// daemon_idle_cpu_percent: the daemon idle over the "1m" size's targets
    /// deferred a day ahead (Postgres; the throughput size with --skip-1m).
    DaemonIdle,
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
    /// Users of the click scenario: one link each, each POSTed once.
    click: usize,
}

impl Sizes {
    fn new(quick: bool, scale: f64) -> Self {
        let base = if quick {
            Sizes { throughput: 2_000, million: 1_000, rate: 400, latency: 640, click: 300 }
        } else {
            Sizes { throughput: 100_000, million: 1_000_000, rate: 3_000, latency: 6_400, click: 5_000 }
        };
        let s = |n: usize, floor: usize| ((n as f64 * scale).round() as usize).max(floor);
        Sizes {
            throughput: s(base.throughput, 100),
            million: s(base.million, 100),
            // at least ~3 whole seconds at 200 requests/s, so that a middle second exists
            rate: s(base.rate, 300),
            latency: s(base.latency, 128),
            click: s(base.click, 100),
        }
    }
}

/// The worker's rate limit in the rate scenario, and its default burst.
const RATE_LIMIT: f64 = 200.0;
const DEFAULT_BURST: u64 = 10;
/// The share of a long run at each end whose cost per user is compared (issue 30):
/// a tenth, 100,000 users of the 1,000,000-user campaign.
const WINDOW_SHARE: u64 = 10;
/// Above this many users the outbox is emptied during the run, not only after it.
const DRAIN_DURING_RUN_ABOVE: usize = 200_000;
/// The latency scenario: sandbox latency per request and campaign concurrency.
const LATENCY: Duration = Duration::from_millis(100);
const LATENCY_CONCURRENCY: u32 = 64;
const LATENCY_USERS_IN_FLIGHT: u32 = 4 * LATENCY_CONCURRENCY;
/// The click scenario: POSTs in flight (people pressing the button at the same
/// moment), and the client addresses they come from (127.0.0.2 on: the server allows
/// 120 requests per address per minute, as from one person's or office's address).
const CLICK_CONCURRENCY: usize = 16;
const CLICK_ADDRESSES: usize = 200;
/// The `public_url` of the send-only click scenario: nothing is clicked there.
const UNSERVED_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// Runs the pipeline benchmark on a blocking thread.
pub async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || pipeline(&args, &handle)).await.context("the benchmark thread panicked")?
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
fn pipeline(args: &PipelineArgs, rt: &Handle) -> anyhow::Result<()> {
    let exe = child::reverify_exe()?;
    let sizes = Sizes::new(args.quick, args.size);
    let wanted = |s: Scenario| {
        let skipped = args.skip_1m && matches!(s, Scenario::PeakRss1m | Scenario::Targeting1m);
        !skipped && (args.only.is_empty() || args.only.contains(&s))
    };
    say(probe::machine_line());
    say(format!(
        "# build: {}; sizes: throughput {} users, \"1m\" {} users, rate {} users, latency {} users, click {} users",
        if cfg!(debug_assertions) { "debug (figures are not meaningful)" } else { "release" },
        sizes.throughput,
        sizes.million,
        sizes.rate,
        sizes.latency,
        sizes.click
    ));
    if wanted(Scenario::ThroughputPostgres) {
        let o = run_scenario(&exe, rt, &Setup::throughput("throughput-postgres", sizes.throughput, Backend::Postgres))?;
        o.expect_all_notified(sizes.throughput)?;
        say(format!("throughput_postgres: {:.0} users/s", o.users_per_second()));
        say(format!("cpu_per_1k_users: {:.3} s", o.measured.cpu() / (o.report.notified as f64 / 1000.0)));
        say(o.evidence("throughput_postgres"));
        o.postgres_breakdown();
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
        let setup = Setup { growth: true, ..Setup::throughput("peak-rss-1m", sizes.million, Backend::Postgres) };
        let o = run_scenario(&exe, rt, &setup)?;
        o.expect_all_notified(sizes.million)?;
        say(format!("peak_rss_1m: {:.0} MB", o.measured.max_rss_mb));
        say(o.evidence("peak_rss_1m"));
        o.growth_figures();
    }
    if wanted(Scenario::Targeting1m) {
        let secs = rt.block_on(targeting(sizes.million))?;
        say(format!("targeting_1m_postgres: {secs:.2} s"));
    }
    if wanted(Scenario::ApiRequests) {
        let mut setup = Setup::throughput("api-requests", sizes.latency, Backend::Postgres);
        setup.second_campaign = true;
        setup.fresh_state_max_age = Some("6h");
        let o = run_scenario(&exe, rt, &setup)?;
        o.expect_all_notified(sizes.latency)?;
        let first_requests = Requests::of(&o.stats);
        let first = first_requests.total() as f64 / o.report.notified.max(1) as f64;
        let (second_report, second_requests) = o.second.as_ref().context("the second campaign did not run")?;
        ensure!(
            second_report.notified == sizes.latency as u64,
            "the second campaign notified {} of {} users",
            second_report.notified,
            sizes.latency
        );
        let second = second_requests.total() as f64 / second_report.notified.max(1) as f64;
        say(format!("api_requests_per_user_first_run: {first:.2} requests"));
        say(format!(
            "# api_requests_per_user_first_run: {} users imported (state confirmed by the import, no access \
             token), fresh_state_max_age = \"6h\": {} per user; goal: at most 2.05",
            sizes.latency,
            first_requests.split(o.report.notified)
        ));
        say(format!("api_requests_per_user: {second:.2} requests"));
        say(format!(
            "# api_requests_per_user: a second campaign over the same {} users, run right after the first (within \
             the 6 h access tokens' life and fresh_state_max_age): {} per user; goal: at most 1.05",
            sizes.latency,
            second_requests.split(second_report.notified)
        ));
    }
    if wanted(Scenario::ThroughputClickSend) {
        click_send(&exe, rt, sizes.throughput)?;
    }
    if wanted(Scenario::ClickThroughput) {
        click_throughput(&exe, rt, sizes.click)?;
    }
    if wanted(Scenario::Dashboard) {
        let targets = if args.skip_1m { sizes.throughput } else { sizes.million };
        rt.block_on(dashboard::dashboard(targets))?;
    }
    if wanted(Scenario::FollowUpLag) {
        followup::lag(&exe, rt, sizes.throughput, followup::Times::new(args.quick))?;
    }
    if wanted(Scenario::DaemonIdle) {
        let targets = if args.skip_1m { sizes.throughput } else { sizes.million };
        followup::idle(&exe, rt, targets, followup::Times::new(args.quick))?;
    }
    Ok(())
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
    /// Compare the cost per user at the campaign's ends (the growth figures).
    growth: bool,
    /// The campaigns' `[audience] fresh_state_max_age`, when set.
    fresh_state_max_age: Option<&'static str>,
    /// What the messages carry.
    link: LinkSetup,
}

/// The link in the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkSetup {
    /// A Baanx session URL, made at send time.
    Session,
    /// `delivery.link = "click"` with a `public_url` that nothing serves.
    Click,
    /// `delivery.link = "click"`, with `reverify serve` as a child at `public_url`
    /// from before the run, and the links collected from the outbox after it.
    ClickServed,
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
            growth: false,
            fresh_state_max_age: None,
            link: LinkSetup::Session,
        }
    }

    fn campaign_toml(&self) -> String {
        self.campaign_toml_named(&format!("bench-{}", self.name))
    }

    fn campaign_toml_named(&self, name: &str) -> String {
        let regions = self.regions.map(|r| format!("regions = [\"{r}\"]\n")).unwrap_or_default();
        let link = if self.link == LinkSetup::Session { "" } else { "link = \"click\"\n" };
        let fresh = self.fresh_state_max_age.map(|a| format!("fresh_state_max_age = \"{a}\"\n")).unwrap_or_default();
        format!(
            "name = \"{name}\"\n\
             description = \"reverify bench\"\n\
             [audience]\n\
             states = [\"UNVERIFIED\"]\n\
             {regions}\
             {fresh}\
             [delivery]\n\
             channel = \"email\"\n\
             template = \"default\"\n\
             from = \"Bench <bench@example.com>\"\n\
             subject = \"Please verify your identity\"\n\
             {link}\
             [throttle]\n\
             requests_per_second = {}\n\
             concurrency = {}\n",
            self.campaign_rate, self.campaign_concurrency
        )
    }
}

/// What one scenario measured.
struct ScenarioOutcome {
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
    /// The largest tables' sizes after the run (Postgres).
    table_sizes: Option<String>,
    import_seconds: f64,
    /// The second campaign's report and the API requests it made, by kind.
    second: Option<(Report, Requests)>,
}

impl ScenarioOutcome {
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

    /// `# ` lines: Postgres's cost per user over the whole run, by statement.
    fn postgres_breakdown(&self) {
        let marks = &self.sampled.marks;
        if let (Some(first), Some(last)) = (marks.first(), marks.last())
            && let (Some(a), Some(b)) = (&first.counters, &last.counters)
        {
            for line in pgstat::window_lines("whole run", a, b, last.done - first.done) {
                say(line);
            }
        }
        if let Some(sizes) = &self.table_sizes {
            say(format!("# postgres whole run: after {} users, {sizes}", self.report.notified));
        }
    }

    /// The 1,000,000-user campaign's growth figures (issue 30): the rate over the
    /// whole campaign and over its last tenth (100,000 users), and Postgres's CPU per
    /// user over the last tenth against the first, with each tenth's breakdown.
    fn growth_figures(&self) {
        say(format!("throughput_1m_postgres: {:.0} users/s", self.users_per_second()));
        if let Some(sizes) = &self.table_sizes {
            say(format!("# throughput_1m_postgres: after {} users, {sizes}", self.report.notified));
        }
        let marks = &self.sampled.marks;
        let [start, first, second, last_from, end] = marks.as_slice() else {
            say(format!("# throughput_1m_postgres_last_100k, cost_growth_1m: not measured ({} marks)", marks.len()));
            return;
        };
        let window = |a: &probe::Mark, b: &probe::Mark| {
            let users = (b.done - a.done).max(1);
            (users, users as f64 / (b.secs - a.secs).max(1e-9), (b.postgres_cpu - a.postgres_cpu) / users as f64)
        };
        let (head, head_rate, cpu_first) = window(start, first);
        let (_, second_rate, cpu_second) = window(first, second);
        let (tail, rate, cpu_last) = window(last_from, end);
        say(format!("throughput_1m_postgres_last_100k: {rate:.0} users/s"));
        // 0 when no CPU was seen in the first tenth (a run too small to measure)
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        say(format!("cost_growth_1m: {:.2}", ratio(cpu_last, cpu_first)));
        say(format!(
            "# cost_growth_1m: Postgres backends CPU per user {:.3} ms over users 0-{} ({head_rate:.0} users/s; \
             targeting and cold caches included), {:.3} ms over users {}-{} ({second_rate:.0} users/s), {:.3} ms over \
             users {}-{} ({rate:.0} users/s; the run's end and its audit seal included): {:.2} against the second \
             100k; goals: throughput_1m_postgres >= 1000 users/s, cost_growth_1m <= 1.5",
            cpu_first * 1e3,
            first.done,
            cpu_second * 1e3,
            first.done,
            second.done,
            cpu_last * 1e3,
            last_from.done,
            end.done,
            ratio(cpu_last, cpu_second),
        ));
        for (label, a, b, n) in [("first 100k", start, first, head), ("last 100k", last_from, end, tail)] {
            if let (Some(x), Some(y)) = (&a.counters, &b.counters) {
                for line in pgstat::window_lines(label, x, y, n) {
                    say(line);
                }
            }
        }
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

/// The API requests the sandbox counted, by kind.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    tokens: u64,
    profiles: u64,
    sessions: u64,
}

impl Requests {
    fn of(stats: &reverify::sandbox::Stats) -> Self {
        Self {
            tokens: stats.requests_to(SandboxRoute::Token),
            profiles: stats.requests_to(SandboxRoute::User),
            sessions: stats.requests_to(SandboxRoute::Verification),
        }
    }

    fn minus(self, before: &Requests) -> Self {
        Self {
            tokens: self.tokens - before.tokens,
            profiles: self.profiles - before.profiles,
            sessions: self.sessions - before.sessions,
        }
    }

    fn total(self) -> u64 {
        self.tokens + self.profiles + self.sessions
    }

    /// "token refresh a + GET /v1/user b + GET /v1/user/verification c", per `n`.
    fn split(self, n: u64) -> String {
        let per = |v: u64| v as f64 / n.max(1) as f64;
        format!(
            "token refresh {:.2} + GET /v1/user {:.2} + GET /v1/user/verification {:.2} ({} + {} + {} requests)",
            per(self.tokens),
            per(self.profiles),
            per(self.sessions),
            self.tokens,
            self.profiles,
            self.sessions
        )
    }
}

/// The requests the worker's limiter admits, as the sandbox counted them.
fn api_requests(stats: &reverify::sandbox::Stats) -> u64 {
    [SandboxRoute::Token, SandboxRoute::User, SandboxRoute::Verification]
        .into_iter()
        .map(|e| stats.requests_to(e))
        .sum()
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

/// What a worker's settings take from its scenario: the token key, the outbox, its
/// rate and concurrency.
pub(crate) struct WorkerRun<'a> {
    pub(crate) token_key: String,
    pub(crate) outbox: &'a Path,
    pub(crate) rate: f64,
    pub(crate) concurrency: u32,
}

/// A worker's settings in a scenario: the database, the sandbox, the token key,
/// the outbox, its rate and concurrency, and the production log level.
pub(crate) fn worker_env(
    db_url: &str,
    backend: Backend,
    sandbox: &SandboxChild,
    w: WorkerRun<'_>,
) -> Vec<(&'static str, String)> {
    let WorkerRun { token_key, outbox, rate, concurrency } = w;
    vec![
        ("REVERIFY_DATABASE_URL", worker_database_url(db_url, backend)),
        ("REVERIFY_BAANX_BASE_URL", sandbox.base_url.clone()),
        ("REVERIFY_BAANX_CLIENT_KEY", CLIENT_KEY.to_owned()),
        ("REVERIFY_TOKEN_KEY", token_key),
        ("REVERIFY_OUTBOX_DIR", outbox.display().to_string()),
        ("REVERIFY_REQUESTS_PER_SECOND", rate.to_string()),
        ("REVERIFY_MAX_CONCURRENCY", concurrency.to_string()),
        // the production default; per-user lines are at debug
        ("REVERIFY_LOG_LEVEL", "info".to_owned()),
    ]
}

/// The database name of a Postgres URL (its path), to find its backends.
fn database_name(url: &str) -> Option<String> {
    url::Url::parse(url).ok().map(|u| u.path().trim_start_matches('/').to_owned()).filter(|n| !n.is_empty())
}

/// Runs one scenario from nothing: sandbox, database, import, campaign, worker.
fn run_scenario(exe: &Path, rt: &Handle, setup: &Setup) -> anyhow::Result<ScenarioOutcome> {
    run_scenario_with(exe, rt, setup, |_| Ok(())).map(|(o, ())| o)
}

/// What a scenario's last step sees, with the sandbox and the database still up.
struct Scene<'a> {
    name: &'static str,
    sandbox: &'a SandboxChild,
    /// `reverify serve`, with [`LinkSetup::ClickServed`].
    serve: Option<&'a ServeChild>,
    /// The links in the messages, with [`LinkSetup::ClickServed`].
    links: Vec<String>,
    /// The bench database, to sample its Postgres backends.
    pg_name: Option<String>,
}

/// [`run_scenario`], then `after` while everything is still up.
fn run_scenario_with<T>(
    exe: &Path,
    rt: &Handle,
    setup: &Setup,
    after: impl FnOnce(Scene<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<(ScenarioOutcome, T)> {
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
    if setup.link != LinkSetup::Session {
        // a click-mode campaign needs a public_url to be applied (the worker's is set below)
        apply.env("REVERIFY_PUBLIC_URL", UNSERVED_PUBLIC_URL);
    }
    child::run_to_end(apply, "reverify campaign apply")?;

    let mut env = worker_env(
        &db.url,
        setup.backend,
        &sandbox,
        WorkerRun { token_key: key, outbox: &outbox, rate: setup.worker_rate, concurrency: setup.worker_concurrency },
    );
    if let Some(b) = setup.worker_burst {
        env.push(("REVERIFY_BURST", b.to_string()));
    }
    let serve = match setup.link {
        LinkSetup::Session => None,
        LinkSetup::Click => {
            env.push(("REVERIFY_PUBLIC_URL", UNSERVED_PUBLIC_URL.to_owned()));
            None
        }
        LinkSetup::ClickServed => {
            // the click routes' Baanx client: the worker's settings, no rate cap
            let serve =
                ServeChild::start(exe, dir.path(), &env).with_context(|| format!("{}: reverify serve", setup.name))?;
            env.push(("REVERIFY_PUBLIC_URL", serve.url.clone()));
            Some(serve)
        }
    };
    let campaign = format!("bench-{}", setup.name);
    let pg_name = (setup.backend == Backend::Postgres).then(|| database_name(&db.url)).flatten();
    let admin = reverify::store::testing::postgres_admin_url();
    let sandbox_cpu_before = probe::process_cpu(sandbox.pid());
    // 200,000 messages are about 1 GB: past that, delete them as they come
    let drain = probe::OutboxDrain::start(&outbox, setup.users > DRAIN_DURING_RUN_ABOVE);
    // the database's counters at the start and the end, and where the scenario
    // measures growth, after the first and second tenth and before the last
    let watch = pg_name.as_ref().map(|_| probe::Watch {
        // the sessions the sandbox issued: each user's last step before the message,
        // read at once (the outbox drain counts once a second, and lags by thousands)
        done: {
            let (rt, url) = (rt.clone(), format!("{}_sandbox/stats", sandbox.base_url));
            Box::new(move || {
                rt.block_on(async {
                    let stats: reverify::sandbox::Stats = reqwest::get(&url).await.ok()?.json().await.ok()?;
                    Some(stats.requests_to(SandboxRoute::Verification))
                })
                .unwrap_or(0)
            })
        },
        at: match setup.users as u64 / WINDOW_SHARE {
            w if setup.growth && w > 0 => vec![w, 2 * w, setup.users as u64 - w],
            _ => vec![],
        },
        admin_url: admin.clone(),
        rt: rt.clone(),
    });
    let sampler = probe::Sampler::start(pg_name.clone(), watch);
    let worked = child::run_worker(exe, dir.path(), &campaign, &env);
    let mut sampled = sampler.finish();
    let links = match &serve {
        Some(serve) => outbox_links(&outbox, &serve.url)?,
        None => Vec::new(),
    };
    let messages = drain.finish();
    let sandbox_cpu = sandbox_cpu_before.zip(probe::process_cpu(sandbox.pid())).map(|(a, b)| b - a);
    let (measured, report) = worked.with_context(|| format!("{}: the worker", setup.name))?;
    // the worker's backends report their counts as they exit; give the stats a moment
    std::thread::sleep(Duration::from_millis(600));
    if let (Some(last), Some(name)) = (sampled.marks.last_mut(), pg_name.as_deref()) {
        // the end: every user, and the counters once the worker's backends flushed theirs
        last.done = report.notified;
        last.counters = rt.block_on(pgstat::snapshot(&admin, name)).or(last.counters.take());
    }
    // the commits between the first mark (the run's start) and the last
    let pg_commits = match (sampled.marks.first(), sampled.marks.last()) {
        (Some(a), Some(b)) => a.counters.as_ref().zip(b.counters.as_ref()).map(|(a, b)| b.commits - a.commits),
        _ => None,
    };
    let table_sizes = match setup.backend {
        Backend::Postgres => rt.block_on(pgstat::table_sizes(&db.url)),
        Backend::Sqlite => None,
    };
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
        Some((report, Requests::of(&after).minus(&Requests::of(&stats))))
    } else {
        None
    };
    let scene = Scene { name: setup.name, sandbox: &sandbox, serve: serve.as_ref(), links, pg_name };
    let then = after(scene)?;
    drop(serve);
    drop(sandbox);
    drop(db);
    let outcome = ScenarioOutcome {
        users: setup.users,
        report,
        measured,
        messages,
        stats,
        sandbox_cpu,
        sampled,
        pg_commits,
        table_sizes,
        import_seconds: import_took.as_secs_f64(),
        second,
    };
    Ok((outcome, then))
}

/// The click-through links in the outbox's messages (`{public}/v/{token}`), once
/// each, read before the outbox is emptied.
fn outbox_links(outbox: &Path, public: &str) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{}/v/", public.trim_end_matches('/'));
    let mut links = std::collections::BTreeSet::new();
    let entries = std::fs::read_dir(outbox).with_context(|| format!("cannot read {}", outbox.display()))?;
    for e in entries.flatten().filter(|e| reverify::notify::is_message_name(&e.file_name())) {
        let text = std::fs::read_to_string(e.path())?;
        // quoted-printable soft line breaks; a token has no '='
        let plain = text.replace("=\r\n", "").replace("=\n", "");
        for (at, _) in plain.match_indices(&prefix) {
            let token: String = plain[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !token.is_empty() {
                links.insert(format!("{prefix}{token}"));
            }
        }
    }
    Ok(links.into_iter().collect())
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

/// throughput_click_send_{postgres,sqlite} and throughput_click_send: the
/// throughput scenario with `delivery.link = "click"`. The send step reads the fresh
/// state and writes a link; it makes no session call.
fn click_send(exe: &Path, rt: &Handle, users: usize) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    let mut sends = Vec::new();
    for (name, engine, backend) in [
        ("throughput-click-send-postgres", "postgres", Backend::Postgres),
        ("throughput-click-send-sqlite", "sqlite", Backend::Sqlite),
    ] {
        let setup = Setup {
            link: LinkSetup::Click,
            fresh_state_max_age: Some("6h"),
            ..Setup::throughput(name, users, backend)
        };
        let o = run_scenario(exe, rt, &setup)?;
        o.expect_all_notified(users)?;
        let sessions = o.stats.requests_to(SandboxRoute::Verification);
        ensure!(sessions == 0, "{name}: the send step of a click campaign made {sessions} session calls");
        let figure = format!("throughput_click_send_{engine}");
        say(format!("{figure}: {:.0} users/s", o.users_per_second()));
        let requests = Requests::of(&o.stats);
        say(format!(
            "# {figure}: API requests per user at send time {:.2}: {} (no session call: it is made at the click; \
             no state call nor refresh: the import confirmed every state within fresh_state_max_age = \"6h\")",
            requests.total() as f64 / o.report.notified.max(1) as f64,
            requests.split(o.report.notified),
        ));
        say(o.evidence(&figure));
        rates.push(o.users_per_second());
        sends.push((engine, requests, o.report.notified));
    }
    say(format!("throughput_click_send: {:.0} users/s", rates.iter().copied().fold(f64::INFINITY, f64::min)));
    let worst = sends.iter().map(|(_, r, n)| r.total() as f64 / (*n).max(1) as f64).fold(0.0, f64::max);
    say(format!("api_requests_per_user_click_send: {worst:.2} requests"));
    for (engine, r, n) in &sends {
        say(format!("# api_requests_per_user_click_send ({engine}): {}; goal: 0", r.split(*n)));
    }
    Ok(())
}

/// What the POSTs of the click scenario measured.
struct ClickFigures {
    posts: usize,
    wall: f64,
    /// Each request's latency, sorted.
    latencies: Vec<Duration>,
    /// The Baanx API requests the server made, per POST.
    api_per_post: f64,
    /// The same, by kind, in all.
    requests: Requests,
    serve_cpu: Option<f64>,
    sandbox_cpu: Option<f64>,
    sampled: Sampled,
}

impl ClickFigures {
    /// The `q` quantile (nearest rank).
    fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.latencies.get(rank - 1).copied().unwrap_or_default()
    }
}

/// click_throughput and click_throughput_p99: a click-mode campaign to `users`
/// users, `reverify serve` as a child process, then one POST to each link,
/// [`CLICK_CONCURRENCY`] at a time, each answered `303` to a new session at the
/// sandbox (zero latency, its limits on).
fn click_throughput(exe: &Path, rt: &Handle, users: usize) -> anyhow::Result<()> {
    // users exported with access tokens (as a directory that holds them would), and
    // states the import confirmed: the send step asks nothing, the click only the
    // session
    let mut setup = Setup {
        link: LinkSetup::ClickServed,
        fresh_state_max_age: Some("6h"),
        ..Setup::throughput("click-throughput", users, Backend::Postgres)
    };
    setup.sandbox_flags.push("--export-access-tokens");
    let (o, c) = run_scenario_with(exe, rt, &setup, |scene| rt.block_on(click_posts(scene)))?;
    o.expect_all_notified(users)?;
    let send = Requests::of(&o.stats);
    say(format!("api_requests_per_click: {:.2} requests", c.api_per_post));
    say(format!(
        "# api_requests_per_click: {} per POST (the state confirmed by the import within fresh_state_max_age, the \
         imported access token used); the send step before it: {}; goal: at most 1.05",
        c.requests.split(c.posts as u64),
        send.split(o.report.notified)
    ));
    say(format!("click_throughput: {:.0} posts/s", c.posts as f64 / c.wall));
    say(format!("click_throughput_p99: {:.1} ms", c.quantile(0.99).as_secs_f64() * 1000.0));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} s"));
    say(format!(
        "# click_throughput: {} POSTs to distinct links of `reverify serve` (Postgres), {CLICK_CONCURRENCY} in flight \
         from {CLICK_ADDRESSES} loopback addresses, each answered 303 to a new sandbox session, in {:.2} s; latency \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: at least 300 posts/s, p99 under 100 ms); \
         {:.2} Baanx API requests per POST (the session alone: the state and the access token were fresh); \
         server CPU {}, sandbox CPU {}, Postgres backends CPU {}, machine busy {} of {} cores; sandbox violations 0",
        c.posts,
        c.wall,
        ms(c.quantile(0.5)),
        ms(c.quantile(0.9)),
        ms(c.quantile(0.99)),
        ms(c.latencies.last().copied().unwrap_or_default()),
        c.api_per_post,
        opt(c.serve_cpu),
        opt(c.sandbox_cpu),
        opt(c.sampled.postgres_cpu),
        c.sampled.machine_busy_cores.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}")),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    say(o.evidence("click_throughput (the send step)"));
    Ok(())
}

/// One POST to each of the scene's links; every answer must be the redirect to a
/// session, and the sandbox must count no violation.
async fn click_posts(scene: Scene<'_>) -> anyhow::Result<ClickFigures> {
    let serve = scene.serve.context("click: reverify serve is not running")?;
    let name = scene.name;
    let links = scene.links;
    ensure!(!links.is_empty(), "{name}: no link in the outbox");
    let before = scene.sandbox.stats().await?;
    // a person per address, as far as the server's per-address limit goes
    let clients = (0..CLICK_ADDRESSES.min(links.len()))
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, 0, (2 + i / 250) as u8, (2 + i % 250) as u8);
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(ip))
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .context("cannot build an HTTP client")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let session_prefix = format!("{}session/", scene.sandbox.base_url);
    let serve_cpu_before = probe::process_cpu(serve.pid());
    let sandbox_cpu_before = probe::process_cpu(scene.sandbox.pid());
    let sampler = probe::Sampler::start(scene.pg_name.clone(), None);
    let started = Instant::now();
    let answers: Vec<(Result<String, String>, Duration)> = {
        use futures::StreamExt as _;
        futures::stream::iter(links.iter().enumerate())
            .map(|(i, link)| {
                let client = &clients[i % clients.len()];
                async move {
                    let t = Instant::now();
                    let answer = match client.post(link).send().await {
                        Ok(r) if r.status() == reqwest::StatusCode::SEE_OTHER => r
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                            .ok_or_else(|| "303 without a Location".to_owned()),
                        Ok(r) => Err(format!("{}", r.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    (answer, t.elapsed())
                }
            })
            .buffer_unordered(CLICK_CONCURRENCY)
            .collect()
            .await
    };
    let wall = started.elapsed().as_secs_f64();
    let sampled = sampler.finish();
    let serve_cpu = serve_cpu_before.zip(probe::process_cpu(serve.pid())).map(|(a, b)| b - a);
    let sandbox_cpu = sandbox_cpu_before.zip(probe::process_cpu(scene.sandbox.pid())).map(|(a, b)| b - a);
    let wrong: Vec<&String> = answers
        .iter()
        .filter_map(|(a, _)| match a {
            Ok(url) if url.starts_with(&session_prefix) => None,
            Ok(url) => Some(url),
            Err(e) => Some(e),
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "{name}: {} of {} POSTs were not redirected to a session (e.g. {:?}); the figure would mean nothing\n{}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)],
        serve.log_tail()
    );
    let after = scene.sandbox.stats().await?;
    ensure!(after.violations == 0, "{name}: the sandbox counted {} limit violations", after.violations);
    let sessions = after.sessions_issued - before.sessions_issued;
    ensure!(sessions == links.len() as u64, "{name}: {sessions} sessions for {} POSTs", links.len());
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    Ok(ClickFigures {
        posts: links.len(),
        wall,
        latencies,
        api_per_post: (api_requests(&after) - api_requests(&before)) as f64 / links.len() as f64,
        requests: Requests::of(&after).minus(&Requests::of(&before)),
        serve_cpu,
        sandbox_cpu,
        sampled,
    })
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
    tokio::task::spawn_blocking(move || crate::import::generate(&path, rows, true)).await??;
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
        assert_eq!((s.throughput, s.million, s.rate, s.latency, s.click), (100_000, 1_000_000, 3_000, 6_400, 5_000));
        let s = Sizes::new(false, 0.001);
        assert_eq!((s.throughput, s.million, s.rate, s.latency, s.click), (100, 1_000, 300, 128, 100));
    }

    #[test]
    fn the_campaign_file_is_valid() {
        let mut setup = Setup::throughput("x", 10, Backend::Sqlite);
        setup.regions = Some("intl");
        let spec = reverify::domain::CampaignSpec::from_toml(&setup.campaign_toml(), "t").unwrap();
        assert_eq!(spec.throttle.concurrency, 384);
        assert_eq!(spec.audience.regions, vec![reverify::domain::Region::Intl]);
        assert_eq!(spec.delivery.link, reverify::domain::spec::LinkMode::Direct);
        setup.link = LinkSetup::Click;
        let spec = reverify::domain::CampaignSpec::from_toml(&setup.campaign_toml(), "t").unwrap();
        assert_eq!(spec.delivery.link, reverify::domain::spec::LinkMode::Click);
    }

    #[test]
    fn finds_the_links_in_the_outbox_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let a = "http://127.0.0.1:9/v/AbC-d_e";
        // quoted-printable, a soft line break inside the link, and the HTML part
        std::fs::write(
            dir.path().join("1.eml"),
            "Content-Transfer-Encoding: quoted-printable\n\nOpen http://127.0.0.1:9/v/Ab=\nC-d_e now\n<a href=3D\"http://127.0.0.1:9/v/AbC-d_e\">",
        )
        .unwrap();
        std::fs::write(dir.path().join("2.eml"), "Open http://127.0.0.1:9/v/XYZ.\n").unwrap();
        std::fs::write(dir.path().join(".3.eml.tmp"), "http://127.0.0.1:9/v/partial").unwrap();
        let links = outbox_links(dir.path(), "http://127.0.0.1:9/").unwrap();
        assert_eq!(links, vec![a.to_owned(), "http://127.0.0.1:9/v/XYZ".to_owned()]);
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
