//! What the Baanx client and the notifier tell of their work, counted in the
//! process's metrics ([`crate::telemetry::global`]). Whoever builds a client or a
//! notifier for production installs [`Metered`] in it.

use std::time::Duration;

use crate::baanx::{ApiEndpoint, ApiObserver};
use crate::domain::CampaignName;
use crate::notify::{LocaleMatch, NotifyObserver};

/// Feeds the process's metrics: `reverify_baanx_requests_total`,
/// `reverify_baanx_request_duration_seconds`, `reverify_limiter_wait_seconds`,
/// `reverify_locale_fallbacks_total`, `reverify_delivery_attempts_total` and
/// `reverify_delivery_duration_seconds`. (A 429 is `reverify_baanx_requests_total`'s
/// `code="429"`: no counter of its own.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered;

impl ApiObserver for Metered {
    fn request(&self, endpoint: ApiEndpoint, status: Option<u16>) {
        crate::telemetry::global().baanx_request(endpoint.metric_label(), status);
    }

    fn latency(&self, endpoint: ApiEndpoint, latency: Duration) {
        crate::telemetry::global().api_latency(endpoint.metric_label(), latency);
    }

    fn limiter_wait(&self, wait: Duration) {
        crate::telemetry::global().limiter_wait(wait);
    }
}

impl NotifyObserver for Metered {
    fn locale_fallback(&self, campaign: &CampaignName, matched: LocaleMatch) {
        crate::telemetry::global().locale_fallback(campaign.as_str(), matched.as_str());
    }

    fn attempt(&self, channel: &'static str, result: &'static str, took: Duration) {
        crate::telemetry::global().delivery_attempt(channel, result, took);
    }
}
