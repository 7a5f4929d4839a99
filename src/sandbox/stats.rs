//! What the sandbox saw: request counts, sessions, limit violations and injected
//! faults, kept in atomics so that counting costs no lock on the hot path.
//!
//! A violation is a request the real API would have refused for a per-user limit, or
//! (with `--refresh-reuse revoke-family`) the reuse of a rotated-away refresh token; the
//! worker must never cause one, so tests and benchmarks assert that the count is zero.
//! The per-second histograms of `GET /v1/user/verification`, and of every API request
//! (token, profile and session: what the worker's global limiter counts), let a
//! benchmark check that the worker's rate limit holds (rate fidelity).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::domain::DeferReason;

/// The endpoints the sandbox counts requests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxRoute {
    Token,
    User,
    Verification,
    SessionPage,
    SessionComplete,
    Control,
    NotFound,
}

impl SandboxRoute {
    const ALL: [SandboxRoute; 7] = [
        SandboxRoute::Token,
        SandboxRoute::User,
        SandboxRoute::Verification,
        SandboxRoute::SessionPage,
        SandboxRoute::SessionComplete,
        SandboxRoute::Control,
        SandboxRoute::NotFound,
    ];

    /// The key in [`Stats::requests`].
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxRoute::Token => "POST /v1/auth/oauth/token",
            SandboxRoute::User => "GET /v1/user",
            SandboxRoute::Verification => "GET /v1/user/verification",
            SandboxRoute::SessionPage => "GET /session/{id}",
            SandboxRoute::SessionComplete => "/session/{id}?outcome",
            SandboxRoute::Control => "/_sandbox",
            SandboxRoute::NotFound => "not found",
        }
    }
}

/// What the sandbox counts as a violation: the keys of [`Stats::violations_by_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// A request over a per-user session limit (answered 429).
    Limit(DeferReason),
    /// A refresh token presented after it was rotated away, when the sandbox revokes
    /// the chain for it (`--refresh-reuse revoke-family`; answered `invalid_grant`).
    RefreshReuse,
}

impl ViolationKind {
    const ALL: [ViolationKind; 5] = [
        ViolationKind::Limit(DeferReason::DailyCap),
        ViolationKind::Limit(DeferReason::Concurrency),
        ViolationKind::Limit(DeferReason::FailureCooldown),
        ViolationKind::Limit(DeferReason::RejectionCooldown),
        ViolationKind::RefreshReuse,
    ];

    /// The key in [`Stats::violations_by_kind`]: a limit's recorded spelling
    /// (`daily_cap`, …) or `refresh_reuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Limit(r) => r.as_str(),
            ViolationKind::RefreshReuse => "refresh_reuse",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|x| *x == self).unwrap_or(0)
    }
}

impl From<DeferReason> for ViolationKind {
    fn from(r: DeferReason) -> Self {
        ViolationKind::Limit(r)
    }
}

/// Histogram resolution: 100 ms buckets, so the busiest 1-second window slides in
/// 100 ms steps instead of being pinned to whole seconds.
const BUCKETS_PER_SECOND: usize = 10;

/// The live counters.
#[derive(Debug)]
pub struct Counters {
    started: Instant,
    requests: [AtomicU64; 7],
    pub sessions_issued: AtomicU64,
    pub completed_verified: AtomicU64,
    pub completed_rejected: AtomicU64,
    pub completed_abandoned: AtomicU64,
    pub max_sessions_24h: AtomicU64,
    pub max_concurrent: AtomicU64,
    violations: [AtomicU64; ViolationKind::ALL.len()],
    pub refresh_token_reuses: AtomicU64,
    pub throttled_limit: AtomicU64,
    pub throttled_rate_cap: AtomicU64,
    pub throttled_injected: AtomicU64,
    pub injected_500: AtomicU64,
    pub injected_timeouts: AtomicU64,
    pub webhooks_delivered: AtomicU64,
    pub webhooks_failed: AtomicU64,
    /// Messages posted to `/_sandbox/gateway` (the stand-in for a partner's SMS or
    /// push gateway, the fallback channel's far end).
    pub gateway_messages: AtomicU64,
    buckets: Mutex<Histograms>,
}

/// Requests per 100 ms bucket since the start, both under one lock so that an API
/// request costs one lock, not two.
#[derive(Debug, Default)]
struct Histograms {
    verification: Vec<u32>,
    /// Token, profile and session requests: every request the worker's limiter admits.
    api: Vec<u32>,
}

fn bump(b: &mut Vec<u32>, bucket: usize) {
    if b.len() <= bucket {
        b.resize(bucket + 1, 0);
    }
    b[bucket] = b[bucket].saturating_add(1);
}

/// (busiest sliding 1-second window, first second with any, whole seconds from it on).
fn summarize(buckets: &[u32]) -> (u64, u64, Vec<u64>) {
    let per_second: Vec<u64> =
        buckets.chunks(BUCKETS_PER_SECOND).map(|c| c.iter().map(|x| u64::from(*x)).sum()).collect();
    let first = per_second.iter().position(|n| *n > 0).unwrap_or(per_second.len());
    let busiest = buckets
        .windows(BUCKETS_PER_SECOND.min(buckets.len().max(1)))
        .map(|w| w.iter().map(|x| u64::from(*x)).sum::<u64>())
        .max()
        .unwrap_or(0);
    (busiest, first as u64, per_second[first..].to_vec())
}

impl Counters {
    /// Counters starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: Default::default(),
            sessions_issued: AtomicU64::new(0),
            completed_verified: AtomicU64::new(0),
            completed_rejected: AtomicU64::new(0),
            completed_abandoned: AtomicU64::new(0),
            max_sessions_24h: AtomicU64::new(0),
            max_concurrent: AtomicU64::new(0),
            violations: Default::default(),
            refresh_token_reuses: AtomicU64::new(0),
            throttled_limit: AtomicU64::new(0),
            throttled_rate_cap: AtomicU64::new(0),
            throttled_injected: AtomicU64::new(0),
            injected_500: AtomicU64::new(0),
            injected_timeouts: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            gateway_messages: AtomicU64::new(0),
            webhooks_failed: AtomicU64::new(0),
            buckets: Mutex::new(Histograms::default()),
        }
    }

    /// Counts one request.
    pub fn request(&self, e: SandboxRoute) {
        let i = SandboxRoute::ALL.iter().position(|x| *x == e).unwrap_or(0);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        if matches!(e, SandboxRoute::Token | SandboxRoute::User | SandboxRoute::Verification) {
            let bucket = (self.started.elapsed().as_millis() / (1000 / BUCKETS_PER_SECOND as u128)) as usize;
            let mut h = self.buckets.lock().expect("histogram poisoned");
            bump(&mut h.api, bucket);
            if e == SandboxRoute::Verification {
                bump(&mut h.verification, bucket);
            }
        }
    }

    /// Counts a violation; one of a per-user limit is also a 429 sent.
    pub fn violation(&self, kind: ViolationKind) {
        self.violations[kind.index()].fetch_add(1, Ordering::Relaxed);
        if let ViolationKind::Limit(_) = kind {
            self.throttled_limit.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests =
            SandboxRoute::ALL.iter().zip(&self.requests).map(|(e, n)| (e.as_str().to_owned(), get(n))).collect();
        let violations_by_kind: BTreeMap<String, u64> =
            ViolationKind::ALL.iter().zip(&self.violations).map(|(k, n)| (k.as_str().to_owned(), get(n))).collect();
        let ((busiest, first, per_second), (api_busiest, api_first, api_per_second)) = {
            let h = self.buckets.lock().expect("histogram poisoned");
            (summarize(&h.verification), summarize(&h.api))
        };
        let (limit, cap, injected) =
            (get(&self.throttled_limit), get(&self.throttled_rate_cap), get(&self.throttled_injected));
        Stats {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            requests,
            sessions_issued: get(&self.sessions_issued),
            sessions_completed: [
                ("verified", &self.completed_verified),
                ("rejected", &self.completed_rejected),
                ("abandoned", &self.completed_abandoned),
            ]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), get(n)))
            .collect(),
            max_sessions_per_user_24h: get(&self.max_sessions_24h),
            max_concurrent_sessions_per_user: get(&self.max_concurrent),
            violations: violations_by_kind.values().sum(),
            violations_by_kind,
            refresh_token_reuses: get(&self.refresh_token_reuses),
            too_many_requests: TooManyRequests { total: limit + cap + injected, limit, rate_cap: cap, injected },
            injected_server_errors: get(&self.injected_500),
            injected_timeouts: get(&self.injected_timeouts),
            webhooks_delivered: get(&self.webhooks_delivered),
            gateway_messages: get(&self.gateway_messages),
            webhooks_failed: get(&self.webhooks_failed),
            verification_busiest_second: busiest,
            verification_first_second: first,
            verification_per_second: per_second,
            api_busiest_second: api_busiest,
            api_first_second: api_first,
            api_per_second,
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// 429 answers, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TooManyRequests {
    pub total: u64,
    /// Refused for a per-user limit (each is also a violation).
    pub limit: u64,
    /// Over the global request-rate cap (`--rate-cap`); not a violation.
    pub rate_cap: u64,
    /// Injected at random (`--throttle-rate`) or scripted.
    pub injected: u64,
}

/// `GET /_sandbox/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Since the sandbox started.
    pub uptime_ms: u64,
    /// Requests per endpoint, including refused and faulted ones.
    pub requests: BTreeMap<String, u64>,
    /// Sessions answered with a `sessionUrl`.
    pub sessions_issued: u64,
    /// Sessions completed, by outcome (verified, rejected, abandoned).
    pub sessions_completed: BTreeMap<String, u64>,
    /// The most sessions any user got in any rolling 24 hours.
    pub max_sessions_per_user_24h: u64,
    /// The most unexpired sessions any user held at once.
    pub max_concurrent_sessions_per_user: u64,
    /// Requests over a per-user limit, and refresh-token reuses in revoke-family mode:
    /// the worker must keep this at 0.
    pub violations: u64,
    /// The same, by kind: daily_cap, concurrency, failure_cooldown, rejection_cooldown,
    /// refresh_reuse (see [`ViolationKind`]).
    pub violations_by_kind: BTreeMap<String, u64>,
    /// Refresh tokens presented after they had been rotated away, in either
    /// `--refresh-reuse` mode (a violation only in revoke-family mode).
    #[serde(default)]
    pub refresh_token_reuses: u64,
    pub too_many_requests: TooManyRequests,
    /// 500s injected.
    pub injected_server_errors: u64,
    /// Requests made to hang.
    pub injected_timeouts: u64,
    /// Webhook deliveries answered 2xx.
    pub webhooks_delivered: u64,
    /// Messages the fallback channel posted to `/_sandbox/gateway`.
    #[serde(default)]
    pub gateway_messages: u64,
    /// Webhook deliveries given up.
    pub webhooks_failed: u64,
    /// The most `GET /v1/user/verification` requests in any 1-second window (sliding
    /// in 100 ms steps).
    pub verification_busiest_second: u64,
    /// Seconds from the start to the first entry of `verification_per_second`.
    pub verification_first_second: u64,
    /// `GET /v1/user/verification` requests per whole second, from the first second
    /// that had any.
    pub verification_per_second: Vec<u64>,
    /// The most API requests (token, profile and session together: what the worker's
    /// global limiter counts) in any 1-second window (sliding in 100 ms steps).
    #[serde(default)]
    pub api_busiest_second: u64,
    /// Seconds from the start to the first entry of `api_per_second`.
    #[serde(default)]
    pub api_first_second: u64,
    /// API requests (token, profile and session) per whole second, from the first
    /// second that had any.
    #[serde(default)]
    pub api_per_second: Vec<u64>,
}

impl Stats {
    /// Requests counted for one endpoint.
    pub fn requests_to(&self, e: SandboxRoute) -> u64 {
        self.requests.get(e.as_str()).copied().unwrap_or(0)
    }

    /// Violations of one kind: a limit ([`DeferReason`]) or [`ViolationKind::RefreshReuse`].
    pub fn violations_of(&self, kind: impl Into<ViolationKind>) -> u64 {
        self.violations_by_kind.get(kind.into().as_str()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_reuse_is_a_violation_of_its_own_kind_but_no_429() {
        let c = Counters::new();
        c.violation(ViolationKind::RefreshReuse);
        c.violation(DeferReason::DailyCap.into());
        let s = c.snapshot();
        let keys: Vec<&str> = s.violations_by_kind.keys().map(String::as_str).collect();
        assert_eq!(keys, ["concurrency", "daily_cap", "failure_cooldown", "refresh_reuse", "rejection_cooldown"]);
        assert_eq!((s.violations, s.violations_of(ViolationKind::RefreshReuse)), (2, 1));
        assert_eq!(s.violations_of(DeferReason::DailyCap), 1);
        assert_eq!((s.too_many_requests.limit, s.too_many_requests.total), (1, 1));
    }
}
