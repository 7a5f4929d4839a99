//! The daemon's follow-up clock (issue 23), on Postgres with the real binaries:
//!
//! - `follow_up_lag_p99_s`: `users` targets deferred with `not_before` spread evenly
//!   over 10 minutes, starting 20 s after the daemon starts (so that it is idle
//!   when the first comes due); the lag of a user is from its `not_before` to its
//!   claim (`claimed_at`), and the figure is the 99th percentile. The same figure
//!   for the first 1 % of users (the daemon still idle) is printed beside it.
//! - `daemon_idle_cpu_percent`: the daemon over `targets` targets deferred a day
//!   ahead (nothing due), its CPU time over 60 s after a 10 s warm-up, as a
//!   percentage of one core.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use reverify::crypto::TokenCipher;
use reverify::store::Backend;
use reverify::store::testing::TestDb;
use tokio::runtime::Handle;

use super::child::{self, SandboxChild};
use super::{WorkerRun, database_name, probe, say, worker_env};

/// The scenarios' times: full, and `--quick` (CI: the harness, not the figure).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// How long the deferrals are spread over.
    spread: Duration,
    /// The daemon starts this long before the first user is due.
    lead: Duration,
    /// The idle daemon's warm-up, then the window its CPU is measured over.
    warm_up: Duration,
    window: Duration,
}

impl Times {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                spread: Duration::from_secs(20),
                lead: Duration::from_secs(5),
                warm_up: Duration::from_secs(3),
                window: Duration::from_secs(10),
            }
        } else {
            Self {
                spread: Duration::from_secs(600),
                lead: Duration::from_secs(20),
                warm_up: Duration::from_secs(10),
                window: Duration::from_secs(60),
            }
        }
    }
}

/// A daemon child with the worker's settings, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scenario's pieces: a sandbox, a Postgres database with the users imported
/// and a campaign applied, and the worker's environment.
struct Scene {
    dir: tempfile::TempDir,
    _sandbox: SandboxChild,
    db: TestDb,
    env: Vec<(&'static str, String)>,
    campaign_id: i64,
}

fn scene(exe: &Path, rt: &Handle, users: usize) -> anyhow::Result<Scene> {
    let dir = tempfile::Builder::new().prefix("reverify-bench-follow-").tempdir()?;
    let sandbox = SandboxChild::start(exe, dir.path(), users.max(1), &[])?;
    let db = rt.block_on(TestDb::new(Backend::Postgres));
    let key = TokenCipher::generate_key();
    let mut import = child::reverify(exe, dir.path());
    import
        .args(["users", "import", "--strict"])
        .arg(&sandbox.users_file)
        .env("REVERIFY_DATABASE_URL", &db.url)
        .env("REVERIFY_TOKEN_KEY", &key);
    child::run_to_end(import, "reverify users import")?;
    let outbox = dir.path().join("outbox");
    let file = dir.path().join("follow.toml");
    std::fs::write(
        &file,
        "name = \"bench-follow\"\n[audience]\nstates = [\"UNVERIFIED\"]\n[delivery]\n\
         from = \"Bench <bench@example.com>\"\n[throttle]\nrequests_per_second = 100000\nconcurrency = 384\n",
    )?;
    let mut apply = child::reverify(exe, dir.path());
    apply
        .args(["campaign", "apply"])
        .arg(&file)
        .env("REVERIFY_DATABASE_URL", &db.url)
        .env("REVERIFY_OUTBOX_DIR", &outbox);
    child::run_to_end(apply, "reverify campaign apply")?;
    let campaign_id: i64 = rt.block_on(async {
        sqlx::query_scalar("SELECT campaign_id FROM campaigns WHERE name = 'bench-follow'")
            .fetch_one(&sqlx::PgPool::connect(&db.url).await?)
            .await
    })?;
    let env = worker_env(
        &db.url,
        Backend::Postgres,
        &sandbox,
        WorkerRun { token_key: key, outbox: &outbox, rate: 1_000_000.0, concurrency: 64 },
    );
    Ok(Scene { dir, _sandbox: sandbox, db, env, campaign_id })
}

fn start_daemon(exe: &Path, scene: &Scene) -> anyhow::Result<Daemon> {
    let mut cmd = child::reverify(exe, scene.dir.path());
    cmd.args(["daemon", "--log-format", "json"])
        .envs(scene.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scene.dir.path().join("daemon.log"))?);
    Ok(Daemon(cmd.spawn().context("failed to start reverify daemon")?))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// `follow_up_lag_p99_s`.
pub fn lag(exe: &Path, rt: &Handle, users: usize, times: Times) -> anyhow::Result<()> {
    let Times { spread, lead, .. } = times;
    let scene = scene(exe, rt, users)?;
    let pool = rt.block_on(sqlx::PgPool::connect(&scene.db.url))?;
    let first_due = chrono::Utc::now() + chrono::Duration::from_std(lead)?;
    // every user deferred, due from first_due on, evenly over spread, in a random order
    let spread_ms = i64::try_from(spread.as_millis())?;
    rt.block_on(async {
        sqlx::query(
            "CREATE TABLE bench_due AS SELECT user_id, $1::bigint + (ROW_NUMBER() OVER (ORDER BY md5(user_id)) - 1) \
               * $2::bigint / GREATEST(COUNT(*) OVER () - 1, 1) AS due FROM users",
        )
        .bind(first_due.timestamp_millis())
        .bind(spread_ms)
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO campaign_targets (campaign_id, user_id, step, status, reason, attempts, not_before, sessions, \
               notifications, created_at, updated_at) \
             SELECT $1, user_id, 0, 'deferred', 'rejection_cooldown', 0, due, 0, 0, $2, $2 FROM bench_due \
             ORDER BY user_id",
        )
        .bind(scene.campaign_id)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&pool)
        .await?;
        sqlx::query("VACUUM ANALYZE campaign_targets").execute(&pool).await?;
        anyhow::Ok(())
    })?;
    let daemon = start_daemon(exe, &scene)?;
    let started = Instant::now();
    let limit = lead + spread + Duration::from_secs(300);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let left: i64 = rt.block_on(
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM campaign_targets WHERE campaign_id = $1 AND status IN ('deferred', 'pending', 'claimed')",
            )
            .bind(scene.campaign_id)
            .fetch_one(&pool),
        )?;
        if left == 0 {
            break;
        }
        ensure!(started.elapsed() < limit, "follow-up: {left} users still waiting after {limit:?}");
    }
    let cpu = probe::process_cpu(daemon.0.id());
    drop(daemon);
    let rows: Vec<(i64, i64, String)> = rt.block_on(
        sqlx::query_as(
            "SELECT d.due, t.claimed_at, t.status FROM bench_due d JOIN campaign_targets t \
               ON t.campaign_id = $1 AND t.user_id = d.user_id ORDER BY d.due",
        )
        .bind(scene.campaign_id)
        .fetch_all(&pool),
    )?;
    let notified = rows.iter().filter(|r| r.2 == "notified").count();
    ensure!(notified == rows.len(), "follow-up: {notified} of {} users notified", rows.len());
    let lags: Vec<f64> = rows.iter().map(|(due, claimed, _)| (claimed - due) as f64 / 1000.0).collect();
    ensure!(lags.iter().all(|l| *l >= 0.0), "a user was claimed before its not_before");
    let idle = lags.len().div_ceil(100).max(1);
    let mut first: Vec<f64> = lags[..idle].to_vec();
    first.sort_by(f64::total_cmp);
    let mut all = lags.clone();
    all.sort_by(f64::total_cmp);
    let runs: i64 =
        rt.block_on(sqlx::query_scalar("SELECT COUNT(*) FROM campaign_runs").fetch_one(&pool)).unwrap_or_default();
    say(format!("follow_up_lag_p99_s: {:.2} s", quantile(&all, 0.99)));
    say(format!(
        "# follow_up_lag_p99_s: {} users deferred over {} s, the first {} s after the daemon started; lag from \
         not_before to the claim: p50 {:.2} s, p99 {:.2} s, max {:.2} s; the first 1 % (daemon idle until then): p99 \
         {:.2} s, max {:.2} s; {runs} runs; daemon CPU {} s; goal: under 60 s, under 5 s when idle",
        lags.len(),
        spread.as_secs(),
        lead.as_secs(),
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        all.last().copied().unwrap_or_default(),
        quantile(&first, 0.99),
        first.last().copied().unwrap_or_default(),
        cpu.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.1}")),
    ));
    Ok(())
}

/// `daemon_idle_cpu_percent`.
pub fn idle(exe: &Path, rt: &Handle, targets: usize, times: Times) -> anyhow::Result<()> {
    let scene = scene(exe, rt, 10)?;
    let pool = rt.block_on(sqlx::PgPool::connect(&scene.db.url))?;
    let day = chrono::Utc::now() + chrono::Duration::days(1);
    rt.block_on(async {
        sqlx::query(
            "INSERT INTO campaign_targets (campaign_id, user_id, step, status, reason, attempts, not_before, sessions, \
               notifications, created_at, updated_at) \
             SELECT $1, 'bench-idle-' || LPAD(g::text, 8, '0'), 0, 'deferred', 'rejection_cooldown', 0, $2 + g, 0, 0, \
               $3, $3 FROM generate_series(1, $4::bigint) g",
        )
        .bind(scene.campaign_id)
        .bind(day.timestamp_millis())
        .bind(chrono::Utc::now().timestamp_millis())
        .bind(i64::try_from(targets)?)
        .execute(&pool)
        .await?;
        sqlx::query("VACUUM ANALYZE campaign_targets").execute(&pool).await?;
        anyhow::Ok(())
    })?;
    let daemon = start_daemon(exe, &scene)?;
    std::thread::sleep(times.warm_up);
    let pid = daemon.0.id();
    let before = probe::process_cpu_precise(pid).context("the daemon's CPU time")?;
    let window = times.window;
    let sampler = probe::Sampler::start(database_name(&scene.db.url), None);
    std::thread::sleep(window);
    let after = probe::process_cpu_precise(pid).context("the daemon's CPU time")?;
    let sampled = sampler.finish();
    let runs: i64 =
        rt.block_on(sqlx::query_scalar("SELECT COUNT(*) FROM campaign_runs").fetch_one(&pool)).unwrap_or_default();
    drop(daemon);
    let percent = 100.0 * (after - before) / window.as_secs_f64();
    say(format!("daemon_idle_cpu_percent: {percent:.4} %"));
    say(format!(
        "# daemon_idle_cpu_percent: the daemon over {targets} targets deferred a day ahead, {:.4} s of CPU (every \
         thread's schedstat) in {} s \
         after a 10 s warm-up; its Postgres backends {}; {runs} runs (none expected); goal: under 1 % of a core",
        after - before,
        window.as_secs(),
        sampled.postgres_cpu.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.3} s")),
    ));
    Ok(())
}
