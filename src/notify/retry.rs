//! Retrying a transient failure while the session URL is still in memory.
//!
//! The URL is never stored, so once this process lets go of it the only cure is a new
//! session, which costs one of the user's 10 a day. Retrying here, a little, is
//! cheaper; retrying long would hold a worker slot and a claim lease, so both the
//! attempts and the total time are bounded. Backoff is exponential with "equal
//! jitter" (half fixed, half random), so that many workers hit by one outage do not
//! come back in step; a `Retry-After` from the other side is a floor.
//!
//! Only [`NotifyError::Transient`] is retried. An ambiguous failure
//! ([`NotifyError::Ambiguous`]: the message may have arrived) is returned at once,
//! since a retry could deliver it twice.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Delivered, NotifyError};

/// How hard to try. Every field documents its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRetryPolicy {
    /// Attempts in all, the first included (default 4).
    pub max_attempts: u32,
    /// The pause before the second attempt, doubled each time (default 1 s).
    pub initial_backoff: Duration,
    /// No single pause is longer (default 20 s).
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt (default 60 s).
    pub max_elapsed: Duration,
}

impl Default for DeliveryRetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl DeliveryRetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The pause after failed attempt `attempt` (1-based), before jitter.
    fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The pause with equal jitter: somewhere in `[base/2, base]`.
    fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let half = base / 2;
        let extra = rand::rng().random_range(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_millis(extra)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy runs out; the
/// result's `attempts` says how many it took.
pub(crate) async fn run<F, Fut>(policy: &DeliveryRetryPolicy, mut attempt: F) -> Result<Delivered, NotifyError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Delivered, NotifyError>>,
{
    let started = Instant::now();
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(mut d) => {
                d.attempts = n;
                return Ok(d);
            }
            Err(e) if e.is_transient() && n < policy.max_attempts => {
                let floor = match &e {
                    NotifyError::Transient { retry_after: Some(d), .. } => *d,
                    _ => Duration::ZERO,
                };
                let pause = policy.delay(n).max(floor);
                if started.elapsed() + pause > policy.max_elapsed {
                    tracing::warn!(attempt = n, reason = %e.reason(), "transient failure; no time left to retry");
                    return Err(e);
                }
                tracing::info!(attempt = n, pause_ms = pause.as_millis() as u64, reason = %e.reason(), "transient failure; retrying");
                tokio::time::sleep(pause).await;
                n += 1;
            }
            Err(e) => {
                if e.is_transient() {
                    tracing::warn!(attempts = n, reason = %e.reason(), "transient failure; attempts used up");
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::ChannelKind;
    use super::*;

    fn ok() -> Delivered {
        Delivered { channel: ChannelKind::Outbox, message_id: None, detail: String::new(), attempts: 1 }
    }

    fn fast(max_attempts: u32) -> DeliveryRetryPolicy {
        DeliveryRetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_it() {
        let p = DeliveryRetryPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_secs(1));
        assert_eq!(p.base_delay(2), Duration::from_secs(2));
        assert_eq!(p.base_delay(3), Duration::from_secs(4));
        assert_eq!(p.base_delay(10), Duration::from_secs(20));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(20));
        for _ in 0..100 {
            let d = p.delay(2);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2), "{d:?}");
        }
    }

    #[tokio::test]
    async fn transient_is_retried_until_success() {
        let calls = AtomicU32::new(0);
        let d = run(&fast(5), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(NotifyError::transient("450")) } else { Ok(ok()) }
        })
        .await
        .unwrap();
        assert_eq!(d.attempts, 3);
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_permanent_is_not_retried() {
        let calls = AtomicU32::new(0);
        let e = run(&fast(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(NotifyError::transient("421"))
        })
        .await
        .unwrap_err();
        assert!(e.is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let e = run(&fast(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(NotifyError::permanent("550"))
        })
        .await
        .unwrap_err();
        assert!(!e.is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn ambiguous_is_never_retried() {
        let calls = AtomicU32::new(0);
        let e = run(&fast(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(NotifyError::ambiguous("no reply after the message data"))
        })
        .await
        .unwrap_err();
        assert!(e.is_ambiguous(), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn total_time_is_bounded() {
        let calls = AtomicU32::new(0);
        let policy = DeliveryRetryPolicy { max_elapsed: Duration::from_millis(50), ..fast(100) };
        // the other side asks for a pause longer than the budget: give up at once
        let e = run(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(NotifyError::Transient { reason: "429".into(), retry_after: Some(Duration::from_secs(60)) })
        })
        .await
        .unwrap_err();
        assert!(e.is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
