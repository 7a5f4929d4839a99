//! The client's global brakes: a request rate per region, a cap on requests in
//! flight, and a shared pause that a 429 puts on every request.
//!
//! Decision: every call of [`super::BaanxClient`] goes through [`Limiter::acquire`]
//! internally, so the engine does not need to (and must not, or it would count
//! twice). The engine reads [`Limiter::stats`] for metrics and may call
//! [`Limiter::paused_for`] to show why a run is slow.
//!
//! Order of the gates: the concurrency permit first, so that at most
//! `max_concurrency` tasks queue on the rest; then the 429 pause; then the
//! region's governor quota. The permit is held until the response body is read.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::Region;

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The first adaptive pause after a 429 that named no delay; it doubles on each
/// such 429 in a row, up to [`MAX_ADAPTIVE_PAUSE`], and resets on a success.
const FIRST_ADAPTIVE_PAUSE: Duration = Duration::from_millis(500);
/// The longest adaptive pause.
const MAX_ADAPTIVE_PAUSE: Duration = Duration::from_secs(30);

/// Counters for the metrics layer. All monotonic.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    wait_nanos: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    token_refreshes: AtomicU64,
}

/// A snapshot of the limiter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterStats {
    /// HTTP requests sent.
    pub requests: u64,
    /// Total time requests waited on the limiter (all gates), summed over requests.
    pub wait: Duration,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Requests sent again after a retryable failure.
    pub retries: u64,
    /// Access tokens minted from a refresh token.
    pub token_refreshes: u64,
}

#[derive(Debug, Default)]
struct Pause {
    until: Option<Instant>,
    /// 429s in a row without a `Retry-After`.
    streak: u32,
}

/// The shared limiter. Cheap to clone through an `Arc`.
pub struct Limiter {
    intl: Direct,
    us: Direct,
    concurrency: Arc<Semaphore>,
    pause: Mutex<Pause>,
    counters: Counters,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("available_permits", &self.concurrency.available_permits())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Proof that a request may go out; drop it when the response is read.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    waited: Duration,
}

impl Admission {
    /// How long the request waited for it (all gates).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Limiter {
    /// A limiter allowing `requests_per_second` (with `burst`) per region and
    /// `max_concurrency` requests in flight over all regions.
    ///
    /// # Panics
    /// Never for values [`crate::Settings`] accepts (rate above 0, burst and
    /// concurrency at least 1); zero is raised to one.
    pub fn new(requests_per_second: f64, burst: u32, max_concurrency: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(1e-6));
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("period above zero")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least one"));
        Self {
            intl: RateLimiter::direct(quota),
            us: RateLimiter::direct(quota),
            concurrency: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
            pause: Mutex::new(Pause::default()),
            counters: Counters::default(),
        }
    }

    /// Waits until a request to `region` may be sent.
    pub async fn acquire(&self, region: Region) -> Admission {
        let started = Instant::now();
        let permit = self.concurrency.clone().acquire_owned().await.expect("the semaphore is never closed");
        // A 429 seen while we waited may push the pause further: loop until clear.
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
        match region {
            Region::Intl => self.intl.until_ready().await,
            Region::Us => self.us.until_ready().await,
        };
        let waited = started.elapsed();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.wait_nanos.fetch_add(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Admission { _permit: permit, waited }
    }

    fn paused_until(&self) -> Option<Instant> {
        let pause = self.pause.lock().expect("pause lock poisoned");
        pause.until.filter(|u| *u > Instant::now())
    }

    /// How long every request is currently held back by a 429, if at all.
    pub fn paused_for(&self) -> Option<Duration> {
        self.paused_until().map(|u| u.saturating_duration_since(Instant::now()))
    }

    /// Records a 429 and holds every request back: for `retry_after` when the
    /// server named a delay, else for an adaptive pause that doubles with each
    /// such 429 in a row. Returns the pause now in force.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) -> Duration {
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut pause = self.pause.lock().expect("pause lock poisoned");
        let delay = match retry_after {
            Some(d) => d,
            None => {
                let d = FIRST_ADAPTIVE_PAUSE.saturating_mul(1 << pause.streak.min(10)).min(MAX_ADAPTIVE_PAUSE);
                pause.streak = pause.streak.saturating_add(1);
                d
            }
        };
        let until = Instant::now() + delay;
        // never shorten a pause another request already imposed
        if pause.until.is_none_or(|u| u < until) {
            pause.until = Some(until);
        }
        pause.until.map_or(delay, |u| u.saturating_duration_since(Instant::now()))
    }

    /// Records an answer that was not a 429: the adaptive pause starts over.
    pub fn on_success(&self) {
        let mut pause = self.pause.lock().expect("pause lock poisoned");
        pause.streak = 0;
    }

    pub(crate) fn count_retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_token_refresh(&self) {
        self.counters.token_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            wait: Duration::from_nanos(self.counters.wait_nanos.load(Ordering::Relaxed)),
            rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            token_refreshes: self.counters.token_refreshes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rate_limit_pauses_every_request() {
        let l = Limiter::new(1000.0, 10, 4);
        let t0 = Instant::now();
        drop(l.acquire(Region::Intl).await);
        assert!(t0.elapsed() < Duration::from_millis(50));
        let pause = l.on_rate_limited(Some(Duration::from_millis(300)));
        assert!(pause > Duration::from_millis(290), "{pause:?}");
        // a shorter Retry-After does not shorten the pause
        assert!(l.on_rate_limited(Some(Duration::from_millis(10))) > Duration::from_millis(250));
        assert!(l.paused_for().is_some());
        // the other region waits too: the pause is global
        drop(l.acquire(Region::Us).await);
        assert!(t0.elapsed() >= Duration::from_millis(300), "{:?}", t0.elapsed());
        assert!(l.paused_for().is_none());
        let s = l.stats();
        assert_eq!((s.requests, s.rate_limited), (2, 2));
        assert!(s.wait >= Duration::from_millis(290));
    }

    #[test]
    fn adaptive_pause_doubles_and_resets() {
        let l = Limiter::new(1000.0, 10, 4);
        assert!(l.on_rate_limited(None) <= Duration::from_millis(500));
        let second = l.on_rate_limited(None);
        assert!(second > Duration::from_millis(900) && second <= Duration::from_millis(1000), "{second:?}");
        l.on_success();
        // after a success the next step is 500 ms again, so the 1 s pause in force stays
        assert!(l.on_rate_limited(None) <= Duration::from_millis(1000));
        assert!(l.on_rate_limited(None) > Duration::from_millis(900));
    }

    #[tokio::test]
    async fn concurrency_is_capped() {
        let l = Arc::new(Limiter::new(1_000_000.0, 1000, 2));
        let a = l.acquire(Region::Intl).await;
        let _b = l.acquire(Region::Intl).await;
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.acquire(Region::Intl).await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        third.await.unwrap();
    }

    #[test]
    fn the_rate_holds() {
        // governor runs on its own clock: measure real time on a small quota
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = Limiter::new(50.0, 1, 8);
            let t0 = std::time::Instant::now();
            for _ in 0..11 {
                drop(l.acquire(Region::Intl).await);
            }
            // 1 at once, then 10 at 20 ms intervals
            assert!(t0.elapsed() >= Duration::from_millis(190), "{:?}", t0.elapsed());
            // the other region has its own quota
            let t1 = std::time::Instant::now();
            drop(l.acquire(Region::Us).await);
            assert!(t1.elapsed() < Duration::from_millis(15));
        });
    }
}
