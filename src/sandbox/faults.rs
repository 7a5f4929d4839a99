//! Fault injection: latency, 500s, 429s with `Retry-After`, hung requests and a global
//! request-rate cap, so that the client's retry and back-off paths meet real trouble.
//!
//! Each API request takes a number from one counter; its fate is a hash of the seed
//! and that number, so a run with the same seed and the same request order gets the
//! same faults. Scripted faults ([`super::SandboxHandle::fail_next`]) come first and
//! let a test say exactly which requests fail.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::rng::{mix, unit};

/// How long each API request waits before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Latency {
    /// No added latency.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Exponentially distributed with this mean (capped at 20 times the mean).
    Exponential(Duration),
}

/// A latency that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("latency {0:?} is not valid: use 0, a duration (100ms), uniform:50ms..150ms, or exp:100ms (mean)")]
pub struct LatencyError(pub String);

impl FromStr for Latency {
    type Err = LatencyError;
    fn from_str(s: &str) -> Result<Self, LatencyError> {
        let bad = || LatencyError(s.to_owned());
        let d = |t: &str| -> Result<Duration, LatencyError> {
            let t = t.trim();
            if t == "0" {
                return Ok(Duration::ZERO);
            }
            humantime::parse_duration(t).map_err(|_| bad())
        };
        let t = s.trim();
        if t.is_empty() || t == "0" || t == "none" {
            return Ok(Latency::None);
        }
        if let Some(rest) = t.strip_prefix("uniform:") {
            let (lo, hi) = rest.split_once("..").ok_or_else(bad)?;
            let (lo, hi) = (d(lo)?, d(hi)?);
            if lo > hi {
                return Err(bad());
            }
            return Ok(Latency::Uniform(lo, hi));
        }
        if let Some(rest) = t.strip_prefix("exp:") {
            return Ok(Latency::Exponential(d(rest)?));
        }
        let fixed = d(t.strip_prefix("fixed:").unwrap_or(t))?;
        Ok(if fixed.is_zero() { Latency::None } else { Latency::Fixed(fixed) })
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Latency::None => f.write_str("0"),
            Latency::Fixed(d) => f.write_str(&h(d)),
            Latency::Uniform(a, b) => write!(f, "uniform:{}..{}", h(a), h(b)),
            Latency::Exponential(m) => write!(f, "exp:{}", h(m)),
        }
    }
}

impl Latency {
    /// The delay for a draw `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => lo + (hi - lo).mul_f64(u),
            Latency::Exponential(mean) => mean.mul_f64((-(1.0 - u).ln()).min(20.0)),
        }
    }
}

/// The faults to inject into API calls (`/v1/...`). Rates are fractions in `[0, 1]`.
/// Control endpoints (`/_sandbox/...`) and session pages are never faulted.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Added before each request is handled. Default: none.
    pub latency: Latency,
    /// Fraction answered `500`. Default 0.
    pub error_rate: f64,
    /// Fraction answered `429` with `Retry-After`. Default 0.
    pub throttle_rate: f64,
    /// The `Retry-After` of injected and rate-cap 429s. Default 1 s.
    pub retry_after: Duration,
    /// Fraction that hang for [`Faults::hang`] (or until the connection or the sandbox
    /// goes away) and then answer 504. Default 0.
    pub timeout_rate: f64,
    /// How long a hung request hangs. Default 5 minutes.
    pub hang: Duration,
    /// A global cap on API requests per second (burst: one second's worth); over it,
    /// `429` with `Retry-After`. Default: none.
    pub rate_cap: Option<f64>,
    /// The seed of every random fault decision. Default 0.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Latency::None,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after: Duration::from_secs(1),
            timeout_rate: 0.0,
            hang: Duration::from_secs(300),
            rate_cap: None,
            seed: 0,
        }
    }
}

/// A fault queued for the next API requests, whatever the rates say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptedFault {
    /// Answer `500`.
    ServerError,
    /// Answer `429` with this `Retry-After` (whole seconds).
    Throttle { retry_after_secs: u64 },
    /// Hang as a timeout fault does.
    Timeout,
}

/// What happens to one request before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// Handle it, after this delay.
    Serve(Duration),
    /// Over the global request-rate cap.
    RateCapped,
    /// An injected fault.
    Inject(ScriptedFault),
}

/// Decides each request's fate.
pub struct FaultEngine {
    faults: Faults,
    counter: AtomicU64,
    scripted_len: AtomicUsize,
    scripted: Mutex<VecDeque<ScriptedFault>>,
    cap: Option<DefaultDirectRateLimiter>,
}

impl fmt::Debug for FaultEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultEngine").field("faults", &self.faults).finish_non_exhaustive()
    }
}

/// Invalid fault settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("{0} must be a fraction between 0 and 1, got {1}")]
    Rate(&'static str, f64),
    #[error("rate_cap must be a number of requests per second above 0, got {0}")]
    RateCap(f64),
}

impl FaultEngine {
    /// An engine for `faults`.
    ///
    /// # Errors
    /// [`FaultsError`] naming the setting out of range.
    pub fn new(faults: Faults) -> Result<Self, FaultsError> {
        for (name, r) in [
            ("error_rate", faults.error_rate),
            ("throttle_rate", faults.throttle_rate),
            ("timeout_rate", faults.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(FaultsError::Rate(name, r));
            }
        }
        let cap = match faults.rate_cap {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => {
                let burst = NonZeroU32::new(r.ceil().min(f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(Duration::from_secs_f64(1.0 / r))
                    .ok_or(FaultsError::RateCap(r))?
                    .allow_burst(burst);
                Some(RateLimiter::direct(quota))
            }
            Some(r) => return Err(FaultsError::RateCap(r)),
        };
        Ok(Self {
            faults,
            counter: AtomicU64::new(0),
            scripted_len: AtomicUsize::new(0),
            scripted: Mutex::new(VecDeque::new()),
            cap,
        })
    }

    /// The settings.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Queues faults for the next API requests.
    pub fn push(&self, fault: ScriptedFault, count: usize) {
        let mut q = self.scripted.lock().expect("fault queue poisoned");
        q.extend(std::iter::repeat_n(fault, count));
        self.scripted_len.store(q.len(), Ordering::Release);
    }

    /// Drops every scripted fault not yet met.
    pub fn clear(&self) {
        let mut q = self.scripted.lock().expect("fault queue poisoned");
        q.clear();
        self.scripted_len.store(0, Ordering::Release);
    }

    /// The fate of the next request.
    pub fn decide(&self) -> Fate {
        // the common case (nothing queued) costs one atomic load
        if self.scripted_len.load(Ordering::Acquire) > 0 {
            let mut q = self.scripted.lock().expect("fault queue poisoned");
            let next = q.pop_front();
            self.scripted_len.store(q.len(), Ordering::Release);
            if let Some(f) = next {
                return Fate::Inject(f);
            }
        }
        if let Some(cap) = &self.cap
            && cap.check().is_err()
        {
            return Fate::RateCapped;
        }
        let f = &self.faults;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let h = mix(f.seed ^ mix(n));
        let roll = unit(h);
        if roll < f.timeout_rate {
            return Fate::Inject(ScriptedFault::Timeout);
        }
        if roll < f.timeout_rate + f.error_rate {
            return Fate::Inject(ScriptedFault::ServerError);
        }
        if roll < f.timeout_rate + f.error_rate + f.throttle_rate {
            return Fate::Inject(ScriptedFault::Throttle { retry_after_secs: f.retry_after.as_secs().max(1) });
        }
        Fate::Serve(f.latency.sample(unit(mix(h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses() {
        assert_eq!("0".parse::<Latency>().unwrap(), Latency::None);
        assert_eq!("100ms".parse::<Latency>().unwrap(), Latency::Fixed(Duration::from_millis(100)));
        assert_eq!(
            "uniform:50ms..150ms".parse::<Latency>().unwrap(),
            Latency::Uniform(Duration::from_millis(50), Duration::from_millis(150))
        );
        assert_eq!("exp:100ms".parse::<Latency>().unwrap(), Latency::Exponential(Duration::from_millis(100)));
        for bad in ["fast", "uniform:1s", "uniform:2s..1s", "exp:"] {
            assert!(bad.parse::<Latency>().is_err(), "{bad}");
        }
        let u = Latency::Uniform(Duration::from_millis(50), Duration::from_millis(150));
        assert_eq!(u.sample(0.0), Duration::from_millis(50));
        assert_eq!(u.sample(0.5), Duration::from_millis(100));
        assert!(Latency::Exponential(Duration::from_millis(100)).sample(0.999_999_999) <= Duration::from_secs(2));
    }

    #[test]
    fn rates_are_deterministic_and_close() {
        let faults = Faults { error_rate: 0.2, throttle_rate: 0.1, timeout_rate: 0.05, seed: 9, ..Faults::default() };
        let a = FaultEngine::new(faults.clone()).unwrap();
        let b = FaultEngine::new(faults).unwrap();
        let fa: Vec<Fate> = (0..10_000).map(|_| a.decide()).collect();
        let fb: Vec<Fate> = (0..10_000).map(|_| b.decide()).collect();
        assert_eq!(fa, fb);
        let count = |f: ScriptedFault| fa.iter().filter(|x| matches!(x, Fate::Inject(g) if *g == f)).count();
        let e = count(ScriptedFault::ServerError);
        let t = count(ScriptedFault::Timeout);
        assert!((1800..2200).contains(&e), "{e}");
        assert!((380..620).contains(&t), "{t}");
    }

    #[test]
    fn scripted_first_and_bad_rates_refused() {
        let e = FaultEngine::new(Faults::default()).unwrap();
        e.push(ScriptedFault::ServerError, 2);
        assert_eq!(e.decide(), Fate::Inject(ScriptedFault::ServerError));
        assert_eq!(e.decide(), Fate::Inject(ScriptedFault::ServerError));
        assert_eq!(e.decide(), Fate::Serve(Duration::ZERO));
        assert!(FaultEngine::new(Faults { error_rate: 1.5, ..Faults::default() }).is_err());
        assert!(FaultEngine::new(Faults { rate_cap: Some(0.0), ..Faults::default() }).is_err());
    }
}
