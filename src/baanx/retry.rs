//! How long to wait before sending a request again, and when to stop.
//!
//! Exponential backoff with jitter for server trouble; the server's own
//! `Retry-After` for 429s. Both are bounded by a number of attempts and by a total
//! time, so that one user can never hold a worker for long.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;

/// The retry budget of one call. Defaults suit a batch worker: a few quick retries
/// for blips, and a rate limit honoured for up to about two minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRetryPolicy {
    /// Attempts in all, the first included, for 5xx, connect errors and timeouts.
    /// Default 4.
    pub max_attempts: u32,
    /// Attempts in all, the first included, when the answers are 429s. Default 8.
    pub max_rate_limited_attempts: u32,
    /// No retry starts after this much time since the first attempt; a
    /// `Retry-After` that would end later gives up at once. Default 120 s.
    pub max_elapsed: Duration,
    /// The first backoff; it doubles with each attempt. Default 200 ms.
    pub base_delay: Duration,
    /// The longest backoff. Default 10 s.
    pub max_delay: Duration,
}

impl Default for ApiRetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            max_rate_limited_attempts: 8,
            max_elapsed: Duration::from_secs(120),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl ApiRetryPolicy {
    /// The pause before attempt `attempt + 1`, after `attempt` failed ones:
    /// `base * 2^(attempt-1)`, capped, then a uniformly random point in its upper
    /// half ("equal jitter": never zero, never in lockstep with other workers).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let full = self.base_delay.saturating_mul(1u32 << exp).min(self.max_delay);
        let half = full / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 { 0 } else { rand::rng().random_range(0..=jitter_nanos) };
        half + Duration::from_nanos(jitter)
    }
}

/// Reads a `Retry-After` value: delta seconds (`"2"`, also `"1.5"`) or an HTTP
/// date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past
/// means zero. Anything else is `None` (the caller falls back to its adaptive pause).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    // IMF-fixdate is RFC 2822 with "GMT"; chrono reads it
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_forms() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 50).unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = ApiRetryPolicy::default();
        for attempt in 1..=30 {
            let d = p.backoff(attempt);
            let full = p.base_delay.saturating_mul(1 << (attempt - 1).min(20)).min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
