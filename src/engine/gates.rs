//! The gates a run passes on its own (issue 16): a canary's cap on the first run,
//! and `[halt]`, which stops a run whose delivery failure or API error rate crosses
//! a threshold. Both end in the campaign being paused with a reason.

use super::UserOutcome;
use crate::domain::TargetReason;
use crate::domain::spec::Halt;

/// Reasons of outcomes that mean Baanx failed us (not the user, not a limit).
const API_ERRORS: [TargetReason; 3] =
    [TargetReason::ApiUnavailable, TargetReason::RateLimited, TargetReason::ApiRefused];
/// Reasons of outcomes that mean a message could not be delivered.
const DELIVERY_FAILURES: [TargetReason; 2] = [TargetReason::DeliveryFailed, TargetReason::DeliveryUnknown];

/// A halt: the reason (the rate crossed) and the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Tripped {
    pub reason: &'static str,
    pub detail: serde_json::Value,
}

/// The figures `[halt]` judges, counted over one run's outcomes.
#[derive(Debug, Default, Clone, Copy)]
pub struct HaltWatch {
    /// Users with a recorded outcome (claims lost are not counted).
    processed: u64,
    api_errors: u64,
    /// Messages handed to the channel: delivered or not.
    deliveries: u64,
    delivery_failures: u64,
}

impl HaltWatch {
    /// Counts one outcome.
    pub fn record(&mut self, o: UserOutcome) {
        let reason = match o {
            UserOutcome::Notified => {
                self.processed += 1;
                self.deliveries += 1;
                return;
            }
            UserOutcome::Abandoned => return,
            UserOutcome::Skipped(r) | UserOutcome::Deferred(r) | UserOutcome::Failed(r) => r,
        };
        self.processed += 1;
        if API_ERRORS.contains(&reason) {
            self.api_errors += 1;
        }
        if DELIVERY_FAILURES.contains(&reason) {
            self.deliveries += 1;
            self.delivery_failures += 1;
        }
    }

    /// The first threshold crossed, once its sample is at least `min_sample`.
    /// Decision: a rate must be strictly above its threshold, so `1.0` never trips.
    pub fn check(&self, h: &Halt) -> Option<Tripped> {
        let judge = |reason: &'static str, bad: u64, sample: u64, threshold: Option<f64>| {
            let threshold = threshold?;
            if sample < h.min_sample || sample == 0 {
                return None;
            }
            let rate = bad as f64 / sample as f64;
            (rate > threshold).then(|| Tripped {
                reason,
                detail: serde_json::json!({
                    "failed": bad, "sample": sample, "rate": (rate * 10_000.0).round() / 10_000.0,
                    "threshold": threshold, "min_sample": h.min_sample,
                }),
            })
        };
        judge("delivery_failure_rate", self.delivery_failures, self.deliveries, h.delivery_failure_rate)
            .or_else(|| judge("api_error_rate", self.api_errors, self.processed, h.api_error_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halt(delivery: Option<f64>, api: Option<f64>, min_sample: u64) -> Halt {
        Halt { delivery_failure_rate: delivery, api_error_rate: api, bounce_rate: None, min_sample }
    }

    #[test]
    fn nothing_trips_before_the_sample() {
        let mut w = HaltWatch::default();
        for _ in 0..9 {
            w.record(UserOutcome::Failed(TargetReason::DeliveryFailed));
        }
        assert_eq!(w.check(&halt(Some(0.2), None, 10)), None);
        w.record(UserOutcome::Failed(TargetReason::DeliveryFailed));
        let t = w.check(&halt(Some(0.2), None, 10)).expect("tripped at the 10th");
        assert_eq!(t.reason, "delivery_failure_rate");
        assert_eq!(t.detail["failed"], 10);
        assert_eq!(t.detail["sample"], 10);
    }

    #[test]
    fn a_rate_at_or_under_the_threshold_does_not_trip() {
        let mut w = HaltWatch::default();
        for i in 0..10 {
            w.record(if i < 2 { UserOutcome::Failed(TargetReason::DeliveryFailed) } else { UserOutcome::Notified });
        }
        assert_eq!(w.check(&halt(Some(0.2), None, 10)), None, "2 of 10 is not above 0.2");
        w.record(UserOutcome::Failed(TargetReason::DeliveryUnknown));
        assert!(w.check(&halt(Some(0.2), None, 10)).is_some(), "3 of 11 is");
    }

    #[test]
    fn api_errors_count_over_users_processed() {
        let mut w = HaltWatch::default();
        for _ in 0..5 {
            w.record(UserOutcome::Deferred(TargetReason::ApiUnavailable));
            w.record(UserOutcome::Skipped(TargetReason::AlreadyVerified));
        }
        w.record(UserOutcome::Abandoned);
        let t = w.check(&halt(None, Some(0.4), 10)).expect("5 of 10");
        assert_eq!(t.reason, "api_error_rate");
        assert_eq!(t.detail["sample"], 10, "a lost claim is no sample");
        assert_eq!(w.check(&halt(Some(0.01), None, 1)), None, "no delivery failed");
    }
}
