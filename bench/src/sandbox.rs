//! `reverify-bench sandbox`: the sandbox's speed figure, requests per second on
//! `GET /v1/user/verification` with no injected latency, measured over loopback
//! with concurrent reqwest clients.
//!
//! A figure is reported, never asserted (not a timed test). The users are all
//! eligible and numerous enough, with short sessions, that the per-user limits stay
//! enforced but are never hit; the report carries the violation count to prove it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use reverify::domain::Region;
use reverify::sandbox::{Sandbox, SandboxConfig, UserSource, users};
use serde::Serialize;

fn duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 24h, 500ms: {e}"))
}

/// Measure the sandbox's requests per second.
///
/// Starts a sandbox in-process and drives GET /v1/user/verification (no latency) over
/// loopback with concurrent HTTP clients, then prints
/// `sandbox_requests_per_second: N req/s`. Build with --release for a meaningful figure.
#[derive(Debug, Args)]
pub struct SandboxBenchArgs {
    /// Users to spread the requests over (enough that no per-user limit is reached).
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after a warm-up of a tenth of it).
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// Switch the per-user limits off (reported separately).
    #[arg(long)]
    no_limits: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
struct SandboxBenchReport {
    /// Answered 200 per wall-clock second, server and clients sharing the machine.
    requests_per_second: f64,
    requests: u64,
    /// Answers other than 200 (should be 0).
    non_ok: u64,
    transport_errors: u64,
    seconds: f64,
    limits_enforced: bool,
    /// Limit violations the sandbox counted (should be 0).
    violations: u64,
    concurrency: usize,
    users: usize,
    /// CPU time the whole process (server and clients) used while measuring, when
    /// the platform tells (Linux `/proc`).
    cpu_seconds: Option<f64>,
    /// CPU time of the sandbox's own runtime threads alone.
    server_cpu_seconds: Option<f64>,
    /// Requests per CPU-second of the server alone: what one fully available core
    /// would serve. Unlike wall-clock req/s, a machine shared with other work does
    /// not distort it much.
    server_requests_per_cpu_second: Option<f64>,
}

/// The thread name of the sandbox's own runtime, so that its CPU time can be told
/// apart from the clients'.
const SERVER_THREAD: &str = "sbx-server";

/// User + system CPU seconds from a `/proc/.../stat` line, assuming the kernel's
/// usual 100 clock ticks per second. Returns the thread (or process) name too.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // fields restart after the name; utime and stime are the 12th and 13th of them
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / 100.0))
}

/// (whole process, sandbox runtime threads) CPU seconds so far; Linux only.
fn cpu_seconds() -> Option<(f64, f64)> {
    let (_, total) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut server = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if let Some((name, cpu)) =
            std::fs::read_to_string(task.path().join("stat")).ok().as_deref().and_then(parse_stat)
            && name.starts_with(SERVER_THREAD)
        {
            server += cpu;
        }
    }
    Some((total, server))
}

/// Starts a sandbox in-process and drives it.
async fn measure(args: &SandboxBenchArgs) -> anyhow::Result<SandboxBenchReport> {
    let (user_count, concurrency) = (args.users.max(1), args.concurrency.max(1));
    let records = users::generate_unverified(user_count, 1, chrono::Utc::now());
    let config = SandboxConfig {
        users: UserSource::Records(records),
        // short sessions keep the concurrency limit from biting as users come round again
        session_ttl: Duration::from_millis(200),
        enforce_limits: !args.no_limits,
        ..SandboxConfig::default()
    };
    // The server gets its own runtime (as it would in its own process), so that its
    // CPU time can be measured apart from the load generator's.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .context("cannot start the sandbox's runtime")?;
    let sandbox = match server_rt.spawn(Sandbox::start(config)).await {
        Ok(started) => started?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let targets: Arc<Vec<(String, bool)>> = Arc::new(
        sandbox
            .users()
            .iter()
            .map(|u| {
                let token = sandbox.mint_access_token(&u.user_id).expect("the user exists");
                (format!("Bearer {token}"), u.region == Region::Us)
            })
            .collect(),
    );
    let url = sandbox.base_url().join("/v1/user/verification").expect("a valid path").to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .context("cannot build an HTTP client")?;
    let key = sandbox.client_key().to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, non_ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, key, targets) = (client.clone(), url.clone(), key.clone(), Arc::clone(&targets));
            let (next, counting, stop) = (Arc::clone(&next), Arc::clone(&counting), Arc::clone(&stop));
            let (ok, non_ok, errors) = (Arc::clone(&ok), Arc::clone(&non_ok), Arc::clone(&errors));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (auth, us) = &targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
                    let mut req = client.get(&url).header("x-client-key", &key).header("authorization", auth);
                    if *us {
                        req = req.header("x-us-env", "true");
                    }
                    let outcome = match req.send().await {
                        Ok(r) => {
                            let status = r.status();
                            // read the body so that the connection goes back to the pool
                            let _ = r.bytes().await;
                            if status.is_success() { &ok } else { &non_ok }
                        }
                        Err(_) => &errors,
                    };
                    if counting.load(Ordering::Relaxed) {
                        outcome.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(args.duration / 10).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    tokio::time::sleep(args.duration).await;
    counting.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_start.zip(cpu_seconds()).map(|((t0, s0), (t1, s1))| (t1 - t0, s1 - s0));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let stats = sandbox.stats().await;
    sandbox.shutdown().await;
    drop(sandbox);
    server_rt.shutdown_background();
    let requests = ok.load(Ordering::Relaxed);
    Ok(SandboxBenchReport {
        requests_per_second: requests as f64 / seconds,
        requests,
        non_ok: non_ok.load(Ordering::Relaxed),
        transport_errors: errors.load(Ordering::Relaxed),
        seconds,
        limits_enforced: !args.no_limits,
        violations: stats.violations,
        concurrency,
        users: user_count,
        cpu_seconds: cpu.map(|c| c.0),
        server_cpu_seconds: cpu.map(|c| c.1),
        server_requests_per_cpu_second: cpu.map(|c| c.1).filter(|c| *c > 0.0).map(|c| requests as f64 / c),
    })
}

pub async fn run(args: SandboxBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await.context("failed to run the sandbox benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sandbox_requests_per_second: {:.0} req/s ({} requests in {:.2} s, {} concurrent, {} users, limits {}, {} violations, {} non-200, {} transport errors)",
            report.requests_per_second,
            report.requests,
            report.seconds,
            report.concurrency,
            report.users,
            if report.limits_enforced { "on" } else { "off" },
            report.violations,
            report.non_ok,
            report.transport_errors,
        );
        if let (Some(cpu), Some(server), Some(per_cpu)) =
            (report.cpu_seconds, report.server_cpu_seconds, report.server_requests_per_cpu_second)
        {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!(
                "cpu: {cpu:.2} s in {:.2} s on {cores} cores ({:.0} % of the machine), of which the server {server:.2} s: \
                 sandbox_requests_per_server_cpu_second: {per_cpu:.0} (about {:.0} req/s with all {cores} cores for the server)",
                report.seconds,
                100.0 * cpu / (report.seconds * cores as f64),
                per_cpu * cores as f64,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_from_a_stat_line() {
        // a thread name with spaces and parentheses, as the kernel may report it
        let line = "1234 (sbx-server (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("sbx-server (x)".to_owned(), 3.0)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
