//! The sandbox's speed figure: requests per second on `GET /v1/user/verification`
//! with no injected latency, measured over loopback with concurrent reqwest clients.
//!
//! It lives in the library (called by `reverify bench sandbox`) rather than in a
//! timed test: a figure is reported, never asserted. The users are all eligible and
//! numerous enough, with short sessions, that the per-user limits stay enforced but
//! are never hit; the report carries the violation count to prove it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Sandbox, SandboxConfig, SandboxError, UserSource, users};
use crate::domain::Region;

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Users to spread requests over. Default 50,000.
    pub users: usize,
    /// Requests in flight at once. Default 64.
    pub concurrency: usize,
    /// How long to measure, after a warm-up of a tenth of it. Default 5 s.
    pub duration: Duration,
    /// Turn the per-user limits off (then the figure is for the server alone).
    pub no_limits: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { users: 50_000, concurrency: 64, duration: Duration::from_secs(5), no_limits: false }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Answered 200 per wall-clock second, server and clients sharing the machine.
    pub requests_per_second: f64,
    pub requests: u64,
    /// Answers other than 200 (should be 0).
    pub non_ok: u64,
    pub transport_errors: u64,
    pub seconds: f64,
    pub limits_enforced: bool,
    /// Limit violations the sandbox counted (should be 0).
    pub violations: u64,
    pub concurrency: usize,
    pub users: usize,
    /// CPU time the whole process (server and clients) used while measuring, when
    /// the platform tells (Linux `/proc`).
    pub cpu_seconds: Option<f64>,
    /// CPU time of the sandbox's own runtime threads alone.
    pub server_cpu_seconds: Option<f64>,
    /// Requests per CPU-second of the server alone: what one fully available core
    /// would serve. Unlike wall-clock req/s, a machine shared with other work does
    /// not distort it much.
    pub server_requests_per_cpu_second: Option<f64>,
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
///
/// # Errors
/// [`SandboxError`] when the sandbox cannot start.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, SandboxError> {
    let records = users::generate_unverified(opts.users, 1, chrono::Utc::now());
    let config = SandboxConfig {
        users: UserSource::Records(records),
        // short sessions keep the concurrency limit from biting as users come round again
        session_ttl: Duration::from_millis(200),
        enforce_limits: !opts.no_limits,
        ..SandboxConfig::default()
    };
    // The server gets its own runtime (as it would in its own process), so that its
    // CPU time can be measured apart from the load generator's.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .map_err(|source| SandboxError::Bind { addr: config.listen, source })?;
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
        .pool_max_idle_per_host(opts.concurrency)
        .build()
        .map_err(SandboxError::HttpClient)?;
    let key = sandbox.client_key().to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, non_ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..opts.concurrency.max(1))
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
    tokio::time::sleep(opts.duration / 10).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    tokio::time::sleep(opts.duration).await;
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
    Ok(BenchReport {
        requests_per_second: requests as f64 / seconds,
        requests,
        non_ok: non_ok.load(Ordering::Relaxed),
        transport_errors: errors.load(Ordering::Relaxed),
        seconds,
        limits_enforced: !opts.no_limits,
        violations: stats.violations,
        concurrency: opts.concurrency,
        users: opts.users,
        cpu_seconds: cpu.map(|c| c.0),
        server_cpu_seconds: cpu.map(|c| c.1),
        server_requests_per_cpu_second: cpu.map(|c| c.1).filter(|c| *c > 0.0).map(|c| requests as f64 / c),
    })
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
