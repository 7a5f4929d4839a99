//! Prometheus metrics: one registry per process, fed by the engine (its per-user
//! pipeline, what the Baanx client and the notifier tell it through
//! `engine::observe`, and the gauges `engine::gauges` reads from the database) and
//! read by `/metrics` (daemon) or pushed to a Pushgateway (one-shot runs). This
//! module knows nothing of the database.
//!
//! Decisions:
//! - A process-wide [`Metrics`] behind [`global()`] rather than a handle threaded
//!   through every constructor: each place records one line, and a second worker in the same process adds to the same series,
//!   which is what a scrape should see. Tests that need exact numbers build their
//!   own [`Metrics::new`].
//! - Labels are low-cardinality and never personal: a campaign name (already
//!   restricted to `a-z 0-9 - _`), an endpoint, a status, an outcome, a reason code.
//!   Every label value still passes [`label`], which turns anything that is not a
//!   short identifier into `invalid`, so that a user id, an email or a URL can never
//!   reach a series even through a future caller's mistake (design.md, invariant 2).
//! - Two encodings: OpenMetrics for scrapes that ask for it, and the Prometheus
//!   text format 0.0.4 for everything else, because the Pushgateway parses only the
//!   latter (it reads an OpenMetrics counter's `_total` sample as a second family).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of [`Metrics::encode_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The label value used in place of one that is not a short identifier.
pub const INVALID_LABEL: &str = "invalid";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CampaignLabels {
    campaign: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    campaign: String,
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    campaign: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    campaign: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    channel: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The run outcomes, each series made at 0 for every campaign the process knows.
pub const RUN_OUTCOMES: [&str; 3] = ["finished", "interrupted", "failed"];
/// The reasons a webhook post is refused (`reverify_webhook_rejected_total`).
pub const WEBHOOK_REJECTIONS: [&str; 7] =
    ["unsigned", "bad_signature", "stale_timestamp", "too_large", "unreadable", "malformed", "unknown_status"];
/// What became of a signed webhook event (`reverify_webhook_events_total`).
pub const WEBHOOK_RESULTS: [&str; 5] = ["applied", "duplicate", "ignored", "unknown_user", "stale"];
/// The delivery channels and the results of one attempt
/// (`reverify_delivery_attempts_total`).
pub const DELIVERY_CHANNELS: [&str; 3] = ["smtp", "outbox", "webhook"];
pub const DELIVERY_RESULTS: [&str; 5] = ["ok", "transient", "permanent", "unknown", "error"];
/// The bounce intakes (`reverify_bounce_rejected_total{source}`).
pub const BOUNCE_SOURCES: [&str; 4] = ["ses", "sendgrid", "postmark", "mailbox"];
/// Why a bounce report was refused or ignored (`reverify_bounce_rejected_total{reason}`):
/// a bad signature or credentials, a certificate from outside the SNS hosts, an
/// SNS topic not in `bounce_ses_topic_arns`, a replayed or stale post, a body over
/// the limit, a report that does not parse, a token no key of ours made, a message
/// nobody sent.
pub const BOUNCE_REJECTIONS: [&str; 9] = [
    "bad_signature",
    "bad_certificate",
    "unknown_topic",
    "stale_timestamp",
    "too_large",
    "malformed",
    "unknown_token",
    "unmatched",
    "duplicate",
];
/// What a bounce does (`reverify_bounces_total{kind}`).
pub const BOUNCE_KINDS: [&str; 4] = ["hard", "soft", "complaint", "unknown"];
/// What a click-through request came to (`reverify_click_requests_total`).
pub const CLICK_RESULTS: [&str; 5] = ["redirected", "page", "not_found", "limited", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReasonLabels {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    campaign: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

/// The git commit this binary was built from, when the build said
/// (`REVERIFY_GIT_COMMIT` in the build's environment), else `unknown`.
pub const REVISION: &str = match option_env!("REVERIFY_GIT_COMMIT") {
    Some(r) => r,
    None => "unknown",
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    campaign: String,
    status: String,
}

/// A campaign's last run in this process, for its own Pushgateway group.
#[derive(Debug, Clone)]
struct LastRun {
    outcome: String,
    ended_at: DateTime<Utc>,
    took: Duration,
}

/// The worker's metrics. Cheap to share: every family is an `Arc` inside.
pub struct Metrics {
    /// Each campaign's last run here, and its targets by status as last read: what
    /// a one-shot run pushes under the campaign's own grouping key.
    last_runs: std::sync::Mutex<std::collections::BTreeMap<String, LastRun>>,
    target_counts: std::sync::Mutex<std::collections::BTreeMap<(String, String), i64>>,
    registry: Registry,
    sessions_issued: Family<CampaignLabels, Counter>,
    notifications: Family<OutcomeLabels, Counter>,
    users: Family<OutcomeLabels, Counter>,
    api_latency: Family<EndpointLabels, Histogram>,
    limiter_wait: Histogram,
    targets: Family<StatusLabels, Gauge>,
    baanx_requests: Family<RequestLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    run_duration: Family<CampaignLabels, Histogram>,
    last_success: Family<CampaignLabels, Gauge<f64, AtomicU64>>,
    webhook_rejected: Family<ReasonLabels, Counter>,
    bounce_rejected: Family<SourceReasonLabels, Counter>,
    bounces: Family<KindLabels, Counter>,
    bounce_mailbox_up: Gauge,
    locale_fallbacks: Family<FallbackLabels, Counter>,
    timezone_fallbacks: Family<CampaignLabels, Counter>,
    campaign_halted: Family<CampaignLabels, Gauge>,
    unapproved_skips: Family<CampaignLabels, Counter>,
    next_tick: Family<CampaignLabels, Gauge<f64, AtomicU64>>,
    next_follow_up: Family<CampaignLabels, Gauge<f64, AtomicU64>>,
    webhook_feed_healthy: Gauge,
    scheduler_last_pass: Gauge<f64, AtomicU64>,
    webhook_events: Family<ResultLabels, Counter>,
    webhook_duration: Histogram,
    delivery_attempts: Family<AttemptLabels, Counter>,
    delivery_duration: Family<ChannelLabels, Histogram>,
    click_requests: Family<ResultLabels, Counter>,
    click_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's metrics, created on first use.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// `value` when it is a short identifier (1-64 of `a-z A-Z 0-9 _ - .`), else
/// [`INVALID_LABEL`]. An email (`@`), a URL (`:` `/`) or free text never passes.
pub fn label(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok { value } else { INVALID_LABEL }
}

impl Metrics {
    /// A fresh registry with every family registered (and empty).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reverify");
        let sessions_issued = Family::<CampaignLabels, Counter>::default();
        registry.register(
            "sessions_issued",
            "Verification sessions issued by Baanx (GET /v1/user/verification answered 200)",
            sessions_issued.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "notifications",
            "Messages handed over for delivery, by outcome: sent (reason ok), or failed (reason delivery_failed, \
             delivery_unknown); users who got no message are in reverify_users_total",
            notifications.clone(),
        );
        let users = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "users",
            "Users a run processed, by outcome (sent, failed, skipped, deferred, abandoned) and reason code",
            users.clone(),
        );
        let locale_fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "locale_fallbacks",
            "Messages rendered in another locale than the user's: their regional variant (to=regional, \
             es-MX served es-419), their language (to=language, pt-BR served pt) or the campaign's \
             default_locale (to=default); a language's own text read in its home region (pt-PT served pt) is \
             no fallback",
            locale_fallbacks.clone(),
        );
        let timezone_fallbacks = Family::<CampaignLabels, Counter>::default();
        registry.register(
            "timezone_fallbacks",
            "Send-window decisions read in the campaign's time zone because the user's was missing or unknown",
            timezone_fallbacks.clone(),
        );
        // 5 ms .. ~41 s: the sandbox answers in a millisecond, a slow Baanx in seconds,
        // and the client's request timeout is 30 s.
        let api_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "baanx_request_duration",
            "Baanx API latency per answered request, by endpoint",
            Unit::Seconds,
            api_latency.clone(),
        );
        // 1 ms .. ~65 s: a request normally waits nothing; a 429 pause can be 30 s.
        let limiter_wait = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register_with_unit(
            "limiter_wait",
            "Time a Baanx request waited on the global limiter (concurrency, 429 pause, rate)",
            Unit::Seconds,
            limiter_wait.clone(),
        );
        let targets = Family::<StatusLabels, Gauge>::default();
        registry.register("targets", "Campaign targets by status, read from the database", targets.clone());
        let baanx_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "baanx_requests",
            "Baanx API requests sent, by endpoint and HTTP status code (`error` when no answer came)",
            baanx_requests.clone(),
        );
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Campaign runs that ended, by campaign and outcome (finished, interrupted, failed); a `reverify run` \
             that fails before any campaign starts counts one failed with campaign=\"\"",
            runs.clone(),
        );
        // 1 s .. ~9 h: a small campaign takes seconds, a million users hours.
        let run_duration = Family::<CampaignLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1.0, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "run_duration",
            "How long each campaign run took, from its start to its end whatever the outcome, by campaign",
            Unit::Seconds,
            run_duration.clone(),
        );
        let last_success = Family::<CampaignLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "When each campaign's last finished run ended (Unix time), read from the database",
            Unit::Seconds,
            last_success.clone(),
        );
        let webhook_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_rejected",
            "Baanx webhook posts refused, by reason (unsigned, bad_signature, stale_timestamp, too_large, \
             unreadable, malformed, unknown_status)",
            webhook_rejected.clone(),
        );
        let bounce_rejected = Family::<SourceReasonLabels, Counter>::default();
        registry.register(
            "bounce_rejected",
            "Bounce reports refused or ignored, by intake (ses, sendgrid, postmark, mailbox) and reason \
             (bad_signature, bad_certificate, unknown_topic, stale_timestamp, too_large, malformed, unknown_token, unmatched, \
             duplicate)",
            bounce_rejected.clone(),
        );
        let bounces = Family::<KindLabels, Counter>::default();
        registry.register(
            "bounces",
            "Bounces and complaints recorded against a campaign's messages, by kind (hard, soft, complaint, \
             unknown); a report delivered twice counts once",
            bounces.clone(),
        );
        let bounce_mailbox_up = Gauge::default();
        registry.register(
            "bounce_mailbox_up",
            "1 while the last poll of bounce_mailbox worked, 0 while it is failing (retried with backoff); \
             absent without a bounce_mailbox",
            bounce_mailbox_up.clone(),
        );
        let campaign_halted = Family::<CampaignLabels, Gauge>::default();
        registry.register(
            "campaign_halted",
            "1 while the campaign is paused by its [halt] thresholds (a delivery failure or API error rate \
             crossed), else 0; read from the database",
            campaign_halted.clone(),
        );
        let unapproved_skips = Family::<CampaignLabels, Counter>::default();
        registry.register(
            "campaign_unapproved_skips",
            "Due campaigns not run because their version is not approved (require_approval), by campaign",
            unapproved_skips.clone(),
        );
        let next_tick = Family::<CampaignLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "campaign_next_tick_timestamp",
            "When the campaign's schedule ticks next (Unix time), inside its life; absent when it has no tick \
             to come",
            Unit::Seconds,
            next_tick.clone(),
        );
        let next_follow_up = Family::<CampaignLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "campaign_next_follow_up_timestamp",
            "When the campaign's first held-back user is due (Unix time): a value in the past that stays there \
             means stuck, one in the future means waiting; absent when nobody waits",
            Unit::Seconds,
            next_follow_up.clone(),
        );
        let webhook_feed_healthy = Gauge::default();
        registry.register(
            "webhook_feed_healthy",
            "1 while the configured webhook feed was heard from (a signed webhook accepted, a users sync finished) \
             within webhook_feed_max_silence, so that fresh states are trusted for fresh_state_max_age; 0 when it \
             is silent (every state is asked again) or no webhook_key is set",
            webhook_feed_healthy.clone(),
        );
        let scheduler_last_pass = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "scheduler_last_pass_timestamp",
            "When the daemon's scheduler loop last completed a pass (Unix time); /healthz fails when it is older \
             than twice the loop's longest sleep plus a margin. 0 in one-shot runs",
            Unit::Seconds,
            scheduler_last_pass.clone(),
        );
        let webhook_events = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Signed Baanx webhook events accepted, by what became of them (applied, duplicate, ignored: not a KYC \
             status change, unknown_user, stale: older than the state we hold)",
            webhook_events.clone(),
        );
        // 1 ms .. ~16 s: a webhook is one transaction
        let webhook_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "webhook_duration",
            "Time to answer a Baanx webhook post, refused ones included",
            Unit::Seconds,
            webhook_duration.clone(),
        );
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts (each retry counts), by channel (smtp, outbox, webhook) and result (ok, transient, \
             permanent, unknown: the message may have arrived, error: a set-up fault)",
            delivery_attempts.clone(),
        );
        // 5 ms .. ~82 s: an SMTP relay answers in milliseconds, a slow one in tens of seconds
        let delivery_duration = Family::<ChannelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 15))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "delivery_duration",
            "Time of one delivery attempt, by channel: the SMTP conversation, the outbox write, the webhook post",
            Unit::Seconds,
            delivery_duration.clone(),
        );
        let click_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "click_requests",
            "Click-through link requests, by result (redirected: to a fresh session, page: a page that says why \
             not, not_found, limited: a per-address or per-link limit, error: the database or Baanx failed)",
            click_requests.clone(),
        );
        // 5 ms .. ~41 s: a click makes a Baanx call or two
        let click_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "click_duration",
            "Time to answer a click-through link request",
            Unit::Seconds,
            click_duration.clone(),
        );
        let build = Info::new(BuildLabels {
            version: label(env!("CARGO_PKG_VERSION")).to_owned(),
            revision: label(REVISION).to_owned(),
        });
        registry.register("build", "The running binary's version and git commit (always 1)", build);
        Self {
            last_runs: std::sync::Mutex::default(),
            target_counts: std::sync::Mutex::default(),
            registry,
            sessions_issued,
            notifications,
            users,
            api_latency,
            limiter_wait,
            targets,
            baanx_requests,
            runs,
            run_duration,
            last_success,
            webhook_rejected,
            bounce_rejected,
            bounces,
            bounce_mailbox_up,
            locale_fallbacks,
            timezone_fallbacks,
            campaign_halted,
            unapproved_skips,
            next_tick,
            next_follow_up,
            webhook_feed_healthy,
            scheduler_last_pass,
            webhook_events,
            webhook_duration,
            delivery_attempts,
            delivery_duration,
            click_requests,
            click_duration,
        }
        .with_series_at_zero()
    }

    /// Makes every series whose labels do not name a campaign at 0, so that the
    /// first event is an increase an alert's `increase()` sees.
    fn with_series_at_zero(self) -> Self {
        for reason in WEBHOOK_REJECTIONS {
            let _ = self.webhook_rejected.get_or_create(&ReasonLabels { reason: reason.into() });
        }
        for source in BOUNCE_SOURCES {
            for reason in BOUNCE_REJECTIONS {
                let _ = self
                    .bounce_rejected
                    .get_or_create(&SourceReasonLabels { source: source.into(), reason: reason.into() });
            }
        }
        for result in WEBHOOK_RESULTS {
            let _ = self.webhook_events.get_or_create(&ResultLabels { result: result.into() });
        }
        for result in CLICK_RESULTS {
            let _ = self.click_requests.get_or_create(&ResultLabels { result: result.into() });
        }
        for channel in DELIVERY_CHANNELS {
            for result in DELIVERY_RESULTS {
                let _ = self
                    .delivery_attempts
                    .get_or_create(&AttemptLabels { channel: channel.into(), result: result.into() });
            }
        }
        let _ = self.runs.get_or_create(&RunLabels { campaign: String::new(), outcome: "failed".into() });
        self
    }

    /// Makes `campaign`'s series at 0 (runs by outcome, sessions, messages sent and
    /// failed, unapproved skips, time zone and locale fallbacks): called for every
    /// campaign each time the gauges are read from the database.
    pub fn campaign_known(&self, campaign: &str) {
        let campaign = label(campaign);
        let c = || CampaignLabels { campaign: campaign.into() };
        for outcome in RUN_OUTCOMES {
            let _ = self.runs.get_or_create(&RunLabels { campaign: campaign.into(), outcome: outcome.into() });
        }
        let _ = self.sessions_issued.get_or_create(&c());
        for (outcome, reason) in [("sent", "ok"), ("failed", "delivery_failed"), ("failed", "delivery_unknown")] {
            let labels = OutcomeLabels { campaign: campaign.into(), outcome: outcome.into(), reason: reason.into() };
            let _ = self.notifications.get_or_create(&labels);
        }
        let _ = self.unapproved_skips.get_or_create(&c());
        for kind in BOUNCE_KINDS {
            let _ = self.bounces.get_or_create(&KindLabels { campaign: campaign.into(), kind: kind.into() });
        }
        let _ = self.timezone_fallbacks.get_or_create(&c());
        for to in ["regional", "language", "default"] {
            let _ = self.locale_fallbacks.get_or_create(&FallbackLabels { campaign: campaign.into(), to: to.into() });
        }
    }

    /// A signed webhook event came to `result` (one of [`WEBHOOK_RESULTS`]).
    pub fn webhook_event(&self, result: &str) {
        self.webhook_events.get_or_create(&ResultLabels { result: label(result).into() }).inc();
    }

    /// A webhook post was answered after `took`.
    pub fn webhook_answered(&self, took: Duration) {
        self.webhook_duration.observe(took.as_secs_f64());
    }

    /// One delivery attempt on `channel` came to `result` after `took`.
    pub fn delivery_attempt(&self, channel: &str, result: &str, took: Duration) {
        let labels = AttemptLabels { channel: label(channel).into(), result: label(result).into() };
        self.delivery_attempts.get_or_create(&labels).inc();
        self.delivery_duration
            .get_or_create(&ChannelLabels { channel: label(channel).into() })
            .observe(took.as_secs_f64());
    }

    /// A click-through request came to `result` (one of [`CLICK_RESULTS`]) after `took`.
    pub fn click_answered(&self, result: &str, took: Duration) {
        self.click_requests.get_or_create(&ResultLabels { result: label(result).into() }).inc();
        self.click_duration.observe(took.as_secs_f64());
    }

    /// `campaign`'s next tick and next follow-up (a series is removed when `None`).
    pub fn set_campaign_next(&self, campaign: &str, tick: Option<DateTime<Utc>>, follow_up: Option<DateTime<Utc>>) {
        let labels = CampaignLabels { campaign: label(campaign).into() };
        for (family, at) in [(&self.next_tick, tick), (&self.next_follow_up, follow_up)] {
            match at {
                Some(at) => {
                    family.get_or_create(&labels).set(at.timestamp_millis() as f64 / 1000.0);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// `campaign` completed or went away: it has no next tick or follow-up.
    pub fn forget_campaign_schedule(&self, campaign: &str) {
        self.set_campaign_next(campaign, None, None);
    }

    /// A message of `campaign` was rendered in a fallback locale (`to`: `language`
    /// or `default`).
    pub fn locale_fallback(&self, campaign: &str, to: &str) {
        let labels = FallbackLabels { campaign: label(campaign).into(), to: label(to).into() };
        self.locale_fallbacks.get_or_create(&labels).inc();
    }

    /// A send window of `campaign` was read in the campaign's zone for want of the user's.
    pub fn timezone_fallback(&self, campaign: &str) {
        self.timezone_fallbacks.get_or_create(&CampaignLabels { campaign: label(campaign).into() }).inc();
    }

    /// `reverify_webhook_feed_healthy`: 1 while the configured webhook feed was heard
    /// from within `webhook_feed_max_silence` (issue 29), else 0.
    pub fn set_webhook_feed_healthy(&self, healthy: bool) {
        self.webhook_feed_healthy.set(i64::from(healthy));
    }

    /// `reverify_scheduler_last_pass_timestamp_seconds`: when the daemon's scheduler
    /// loop last completed a pass (Unix time).
    pub fn set_scheduler_pass(&self, at_unix_seconds: f64) {
        self.scheduler_last_pass.set(at_unix_seconds);
    }

    /// Whether `campaign` is paused by its halt thresholds.
    pub fn set_campaign_halted(&self, campaign: &str, halted: bool) {
        self.campaign_halted.get_or_create(&CampaignLabels { campaign: label(campaign).into() }).set(i64::from(halted));
    }

    /// A session was issued for a user of `campaign`.
    pub fn session_issued(&self, campaign: &str) {
        self.sessions_issued.get_or_create(&CampaignLabels { campaign: label(campaign).into() }).inc();
    }

    /// A user of `campaign` ended with `outcome` (`sent`, `failed`, `skipped`,
    /// `deferred`, `abandoned`) for `reason` (a reason code such as
    /// `delivery_failed`; `ok` when sent): `reverify_users_total`, and, when a
    /// message was handed over (sent, or a delivery failure),
    /// `reverify_notifications_total`.
    pub fn notification(&self, campaign: &str, outcome: &str, reason: &str) {
        let labels = OutcomeLabels {
            campaign: label(campaign).into(),
            outcome: label(outcome).into(),
            reason: label(reason).into(),
        };
        self.users.get_or_create(&labels).inc();
        let message = outcome == "sent" || (outcome == "failed" && reason.starts_with("delivery_"));
        if message {
            self.notifications.get_or_create(&labels).inc();
        }
    }

    /// Baanx answered a request to `endpoint` after `latency`.
    pub fn api_latency(&self, endpoint: &str, latency: Duration) {
        self.api_latency
            .get_or_create(&EndpointLabels { endpoint: label(endpoint).into() })
            .observe(latency.as_secs_f64());
    }

    /// A request to `endpoint` was sent to Baanx and answered with HTTP `code`, or
    /// got no answer (`None`: connect failure, timeout, reset), counted as `error`.
    pub fn baanx_request(&self, endpoint: &str, code: Option<u16>) {
        let code = code.map_or_else(|| "error".to_owned(), |c| c.to_string());
        self.baanx_requests.get_or_create(&RequestLabels { endpoint: label(endpoint).into(), code }).inc();
    }

    /// A run of `campaign` ended with `outcome` (`finished`, `interrupted`, `failed`)
    /// after `took`, at `at`. A finished run is the campaign's last success.
    pub fn run_ended(&self, campaign: &str, outcome: &str, took: Duration, at: DateTime<Utc>) {
        self.runs.get_or_create(&RunLabels { campaign: label(campaign).into(), outcome: label(outcome).into() }).inc();
        self.run_duration
            .get_or_create(&CampaignLabels { campaign: label(campaign).into() })
            .observe(took.as_secs_f64());
        if outcome == "finished" {
            self.set_last_success(campaign, at);
        }
        let run = LastRun { outcome: label(outcome).to_owned(), ended_at: at, took };
        self.last_runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(label(campaign).to_owned(), run);
    }

    /// A `reverify run` failed before any campaign run started (the database
    /// unreachable, an unknown campaign, a bad setting): one failed run.
    pub fn run_failed_to_start(&self) {
        self.runs.get_or_create(&RunLabels { campaign: String::new(), outcome: "failed".into() }).inc();
    }

    /// `campaign`'s last finished run ended at `at`.
    pub fn set_last_success(&self, campaign: &str, at: DateTime<Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.last_success.get_or_create(&CampaignLabels { campaign: label(campaign).into() }).set(seconds);
    }

    /// A due run of `campaign` was skipped: its version is not approved.
    pub fn unapproved_skip(&self, campaign: &str) {
        self.unapproved_skips.get_or_create(&CampaignLabels { campaign: label(campaign).into() }).inc();
    }

    /// A Baanx webhook post was refused for `reason`.
    pub fn webhook_rejected(&self, reason: &str) {
        self.webhook_rejected.get_or_create(&ReasonLabels { reason: label(reason).into() }).inc();
    }

    /// A bounce report from `source` was refused or ignored for `reason` (one of
    /// [`BOUNCE_REJECTIONS`]).
    pub fn bounce_rejected(&self, source: &str, reason: &str) {
        self.bounce_rejected
            .get_or_create(&SourceReasonLabels { source: label(source).into(), reason: label(reason).into() })
            .inc();
    }

    /// A bounce of `kind` (one of [`BOUNCE_KINDS`]) was recorded against `campaign`.
    pub fn bounce_recorded(&self, campaign: &str, kind: &str) {
        self.bounces.get_or_create(&KindLabels { campaign: label(campaign).into(), kind: label(kind).into() }).inc();
    }

    /// Whether the last poll of the bounce mailbox worked.
    pub fn bounce_mailbox_up(&self, up: bool) {
        self.bounce_mailbox_up.set(i64::from(up));
    }

    /// A request waited `wait` on the global limiter before it was sent.
    pub fn limiter_wait(&self, wait: Duration) {
        self.limiter_wait.observe(wait.as_secs_f64());
    }

    /// `campaign` has `n` targets in `status`.
    pub fn set_targets(&self, campaign: &str, status: &str, n: i64) {
        self.target_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((label(campaign).to_owned(), label(status).to_owned()), n);
        self.targets
            .get_or_create(&StatusLabels { campaign: label(campaign).into(), status: label(status).into() })
            .set(n);
    }

    /// The campaigns that ended a run in this process, each with its last run as
    /// gauges in the Prometheus text format: `reverify_last_run_timestamp_seconds{campaign,outcome}`,
    /// `reverify_last_run_duration_seconds{campaign}` and
    /// `reverify_last_run_users{campaign,status}` (its targets by status as last
    /// read). A one-shot run pushes each under the grouping key (job, campaign), so
    /// that a later run of other campaigns, or of none, never replaces it.
    pub fn last_runs(&self) -> Vec<(String, String)> {
        let runs = self.last_runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let counts = self.target_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        runs.into_iter()
            .map(|(campaign, run)| {
                let mut registry = Registry::with_prefix("reverify");
                let at = Family::<RunLabels, Gauge<f64, AtomicU64>>::default();
                registry.register_with_unit(
                    "last_run_timestamp",
                    "When the campaign's last run ended (Unix time), by its outcome",
                    Unit::Seconds,
                    at.clone(),
                );
                at.get_or_create(&RunLabels { campaign: campaign.clone(), outcome: run.outcome.clone() })
                    .set(run.ended_at.timestamp_millis() as f64 / 1000.0);
                let took = Family::<CampaignLabels, Gauge<f64, AtomicU64>>::default();
                registry.register_with_unit(
                    "last_run_duration",
                    "How long the campaign's last run took",
                    Unit::Seconds,
                    took.clone(),
                );
                took.get_or_create(&CampaignLabels { campaign: campaign.clone() }).set(run.took.as_secs_f64());
                let users = Family::<StatusLabels, Gauge>::default();
                registry.register(
                    "last_run_users",
                    "The campaign's targets by status after its last run",
                    users.clone(),
                );
                for ((c, status), n) in counts.iter().filter(|((c, _), _)| *c == campaign) {
                    users.get_or_create(&StatusLabels { campaign: c.clone(), status: status.clone() }).set(*n);
                }
                let mut out = String::new();
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
                    .expect("writing to a String cannot fail");
                (campaign, out)
            })
            .collect()
    }

    /// Every metric in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Every metric in the Prometheus text format 0.0.4, which the Pushgateway and
    /// older scrapers read.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_with_its_labels() {
        let m = Metrics::new();
        m.session_issued("kyc-refresh");
        m.session_issued("kyc-refresh");
        m.notification("kyc-refresh", "sent", "ok");
        m.notification("kyc-refresh", "failed", "delivery_failed");
        m.api_latency("verification", Duration::from_millis(12));
        m.notification("kyc-refresh", "deferred", "send_window");
        m.limiter_wait(Duration::from_millis(3));
        m.set_targets("kyc-refresh", "pending", 41);
        m.set_targets("kyc-refresh", "pending", 40);
        m.baanx_request("verification", Some(200));
        m.baanx_request("verification", Some(200));
        m.baanx_request("token", Some(503));
        m.baanx_request("user", None);
        let at = DateTime::from_timestamp(1_767_225_600, 500_000_000).unwrap();
        m.run_ended("kyc-refresh", "finished", Duration::from_secs(3), at);
        m.run_ended("kyc-refresh", "interrupted", Duration::from_secs(5), at + chrono::Duration::hours(1));
        m.run_ended("other", "failed", Duration::from_secs(1), at);
        m.run_failed_to_start();
        m.webhook_rejected("unsigned");
        let text = m.encode();
        for line in [
            r#"reverify_sessions_issued_total{campaign="kyc-refresh"} 2"#,
            r#"reverify_notifications_total{campaign="kyc-refresh",outcome="sent",reason="ok"} 1"#,
            r#"reverify_notifications_total{campaign="kyc-refresh",outcome="failed",reason="delivery_failed"} 1"#,
            r#"reverify_baanx_request_duration_seconds_count{endpoint="verification"} 1"#,
            r#"reverify_baanx_request_duration_seconds_bucket{le="0.02",endpoint="verification"} 1"#,
            r#"reverify_users_total{campaign="kyc-refresh",outcome="deferred",reason="send_window"} 1"#,
            r#"reverify_users_total{campaign="kyc-refresh",outcome="sent",reason="ok"} 1"#,
            "reverify_limiter_wait_seconds_count 1",
            r#"reverify_targets{campaign="kyc-refresh",status="pending"} 40"#,
            r#"reverify_baanx_requests_total{endpoint="verification",code="200"} 2"#,
            r#"reverify_baanx_requests_total{endpoint="token",code="503"} 1"#,
            r#"reverify_baanx_requests_total{endpoint="user",code="error"} 1"#,
            r#"reverify_runs_total{campaign="kyc-refresh",outcome="finished"} 1"#,
            r#"reverify_runs_total{campaign="kyc-refresh",outcome="interrupted"} 1"#,
            r#"reverify_runs_total{campaign="other",outcome="failed"} 1"#,
            r#"reverify_runs_total{campaign="",outcome="failed"} 1"#,
            r#"reverify_run_duration_seconds_count{campaign="kyc-refresh"} 2"#,
            r#"reverify_run_duration_seconds_sum{campaign="kyc-refresh"} 8.0"#,
            // only a finished run is a success
            r#"reverify_last_success_timestamp_seconds{campaign="kyc-refresh"} 1767225600.5"#,
            r#"reverify_webhook_rejected_total{reason="unsigned"} 1"#,
            &format!(r#"reverify_build_info{{version="{}",revision="{REVISION}"}} 1"#, env!("CARGO_PKG_VERSION")),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let prom = m.encode_prometheus();
        assert!(prom.contains("# TYPE reverify_sessions_issued_total counter"), "{prom}");
        assert!(
            !text.contains(r#"reverify_last_success_timestamp_seconds{campaign="other""#),
            "a failed run is no success:\n{text}"
        );
        assert!(!text.contains("reverify_baanx_rate_limited"), "a 429 is baanx_requests_total's code=\"429\"");
        assert!(
            !text.contains(r#"reverify_notifications_total{campaign="kyc-refresh",outcome="deferred""#),
            "a deferred user got no message"
        );
        assert!(prom.lines().any(|l| l.starts_with("reverify_build_info{") && l.ends_with(" 1")), "{prom}");
        assert!(!prom.contains("# EOF"));
    }

    #[test]
    fn personal_or_free_text_labels_never_reach_a_series() {
        let m = Metrics::new();
        m.notification("c", "failed", "user 7b0f… said no");
        m.notification("c", "failed", "someone@example.com");
        m.set_targets("https://verify.example/s/abc", "pending", 1);
        m.api_latency("/v1/user?id=9", Duration::from_millis(1));
        let text = m.encode();
        for leak in ["@", "https", "example", "said", "/v1", "abc"] {
            assert!(!text.contains(leak), "{leak:?} leaked into\n{text}");
        }
        assert!(text.contains(r#"reason="invalid""#), "{text}");
        assert_eq!(label("delivery_failed"), "delivery_failed");
        assert_eq!(label(""), INVALID_LABEL);
        assert_eq!(label(&"x".repeat(65)), INVALID_LABEL);
    }

    #[test]
    fn every_series_an_alert_reads_exists_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for line in [
            r#"reverify_webhook_rejected_total{reason="bad_signature"} 0"#,
            r#"reverify_webhook_events_total{result="applied"} 0"#,
            r#"reverify_click_requests_total{result="redirected"} 0"#,
            r#"reverify_delivery_attempts_total{channel="smtp",result="permanent"} 0"#,
            r#"reverify_runs_total{campaign="",outcome="failed"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        m.campaign_known("q4");
        let text = m.encode();
        for line in [
            r#"reverify_runs_total{campaign="q4",outcome="failed"} 0"#,
            r#"reverify_runs_total{campaign="q4",outcome="finished"} 0"#,
            r#"reverify_sessions_issued_total{campaign="q4"} 0"#,
            r#"reverify_notifications_total{campaign="q4",outcome="failed",reason="delivery_failed"} 0"#,
            r#"reverify_campaign_unapproved_skips_total{campaign="q4"} 0"#,
            r#"reverify_timezone_fallbacks_total{campaign="q4"} 0"#,
            r#"reverify_locale_fallbacks_total{campaign="q4",to="language"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_global_registry_is_one() {
        assert!(std::ptr::eq(global(), global()));
    }
}
