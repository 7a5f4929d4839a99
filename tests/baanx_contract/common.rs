//! Shared set-up: client configurations with short timeouts and quick retries.

use std::time::Duration;

use reverify::Secret;
use reverify::baanx::{ApiRetryPolicy, BaanxConfig};
use reverify::sandbox::{Sandbox, SandboxConfig, Stats, UserSource};

/// A user id for the stub API.
pub const USER_A: &str = "0b9cf0a4-3a4e-4c1e-9d55-6d3f8a6f0a11";

/// A client configuration for loopback: quick backoff, short timeouts, a generous rate.
pub fn fast_config(base: url::Url, client_key: &str) -> BaanxConfig {
    let mut cfg = BaanxConfig::new(base, Secret::new(client_key));
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_millis(1500);
    cfg.requests_per_second = 10_000.0;
    cfg.burst = 1_000;
    cfg.max_concurrency = 64;
    cfg.retry = ApiRetryPolicy {
        max_attempts: 4,
        max_rate_limited_attempts: 6,
        max_elapsed: Duration::from_secs(20),
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    };
    cfg
}

/// The sandbox under test.
pub type Sb = reverify::sandbox::SandboxHandle;

/// A sandbox with `users` generated users, the configuration tweaked by `tweak`.
pub async fn start_sandbox(users: usize, tweak: impl FnOnce(&mut SandboxConfig)) -> Sb {
    let mut cfg = SandboxConfig { users: UserSource::Generate(users), ..SandboxConfig::default() };
    tweak(&mut cfg);
    Sandbox::start(cfg).await.expect("sandbox starts")
}

/// Requests the sandbox counted on one endpoint (`"GET /v1/user"`).
pub fn requests(stats: &Stats, endpoint: &str) -> u64 {
    stats.requests.get(endpoint).copied().unwrap_or(0)
}
