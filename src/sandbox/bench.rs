//! The sandbox's speed figure: requests per second on `GET /v1/user/verification`
//! with no injected latency, measured over loopback with concurrent reqwest clients.
//!
//! It lives in the library (called by `reverify sandbox-bench`) rather than in a
//! timed test: a figure is reported, never asserted. The users are all eligible and
//! numerous enough, with short sessions, that the per-user limits stay enforced but
//! are never hit; the report carries the violation count to prove it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Sandbox, SandboxConfig, SandboxError, UserSource, users};
use crate::domain::{Region, VerificationState};

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
}

/// Starts a sandbox in-process and drives it.
///
/// # Errors
/// [`SandboxError`] when the sandbox cannot start.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, SandboxError> {
    let mut records = users::generate(opts.users, 1, chrono::Utc::now());
    for r in &mut records {
        r.verification_state = VerificationState::Unverified;
        r.rejected_at = None;
    }
    let sandbox = Sandbox::start(SandboxConfig {
        users: UserSource::Records(records),
        // short sessions keep the concurrency limit from biting as users come round again
        session_ttl: Duration::from_millis(200),
        enforce_limits: !opts.no_limits,
        ..SandboxConfig::default()
    })
    .await?;
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
    tokio::time::sleep(opts.duration).await;
    counting.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let stats = sandbox.stats().await;
    sandbox.shutdown().await;
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
    })
}
