//! The provider bounce webhooks on the public listener, mounted by
//! [`bounce_router`]: `POST /bounces/ses`, `POST /bounces/sendgrid` and
//! `POST /bounces/postmark`, each only when its provider is configured.
//!
//! | request | answer |
//! |---|---|
//! | a body over 1 MiB | 413, `too_large` |
//! | no or bad credentials or signature | 401, `bad_signature` |
//! | an SNS certificate URL off SNS's hosts, or a certificate that does not parse | 401, `bad_certificate` (nothing fetched for a foreign URL) |
//! | an SNS topic not in `bounce_ses_topic_arns` | 401, `unknown_topic` |
//! | a timestamp out of the provider's window | 401, `stale_timestamp` |
//! | not the provider's JSON | 400, `malformed` |
//! | events that are no bounce or complaint (deliveries, opens) | 200, ignored |
//! | reports the sink recorded (applied, duplicate, unmatched) | 200; duplicates and unmatched reports counted as `duplicate` / `unmatched` |
//! | the sink failed | 503, so that the provider retries (the sink is idempotent on the dedupe id) |
//!
//! Authentication comes first: nothing is handed to the sink for a refused post.
//! Anyone can post, so refusals of posts nobody authenticated are logged at most
//! once a minute per provider (each line says how many were held back); every one
//! is counted in `reverify_bounce_rejected_total{source,reason}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use super::intake::Intake;
pub use super::intake::{DEDUPE_ID_MAX_CHARS, REFUSAL_LOG_EVERY};
use super::ses::{CertSource, HttpsCertSource};
use super::{BounceSink, BounceSource};
use crate::Secret;
use crate::domain::{Clock, SystemClock};

/// The largest body accepted on any bounce webhook.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// What every bounce route's path starts with (an Ingress routes the prefix).
pub const BOUNCES_PREFIX: &str = "/bounces";

/// Which provider webhooks to mount and what they check with. A provider whose
/// setting is empty gets no route (its path answers 404).
#[derive(Clone)]
pub struct BounceWebhooks {
    /// `bounce_ses_topic_arns`: the SNS topics whose notifications are accepted on
    /// `POST /bounces/ses`. A valid SNS signature proves only that SNS sent the
    /// message, and anyone can make a topic: every other topic is refused.
    pub ses_topic_arns: Vec<String>,
    /// `bounce_sendgrid_public_key`: the Event Webhook's verification key, base64
    /// of the DER SubjectPublicKeyInfo as SendGrid shows it (PEM armour accepted).
    pub sendgrid_public_key: Option<String>,
    /// `bounce_webhook_secret`: the HTTP Basic password Postmark sends.
    pub postmark_secret: Option<Secret>,
    /// Where SNS signing certificates are fetched and SNS subscriptions confirmed.
    pub sns: Arc<dyn CertSource>,
    /// The clock the timestamp windows are measured on.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BounceWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceWebhooks")
            .field("ses_topic_arns", &self.ses_topic_arns)
            .field("sendgrid_public_key", &self.sendgrid_public_key)
            .field("postmark_secret", &self.postmark_secret)
            .finish_non_exhaustive()
    }
}

impl BounceWebhooks {
    /// No provider configured, SNS reached over HTTPS with `timeout` per request,
    /// the wall clock.
    ///
    /// # Errors
    /// A sentence when the HTTP client cannot be built.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        Ok(Self::with_sources(Arc::new(HttpsCertSource::new(timeout)?), Arc::new(SystemClock)))
    }

    /// No provider configured, SNS reached through `sns`, time from `clock`.
    pub fn with_sources(sns: Arc<dyn CertSource>, clock: Arc<dyn Clock>) -> Self {
        Self { ses_topic_arns: Vec::new(), sendgrid_public_key: None, postmark_secret: None, sns, clock }
    }

    /// Whether no provider is configured (then [`bounce_router`] mounts nothing).
    pub fn is_empty(&self) -> bool {
        self.ses_topic_arns.is_empty() && self.sendgrid_public_key.is_none() && self.postmark_secret.is_none()
    }

    /// Checks each configured provider's setting, for start-up: the router itself
    /// refuses every post to a provider whose setting is unusable.
    ///
    /// # Errors
    /// A sentence naming the setting and what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        for arn in &self.ses_topic_arns {
            super::ses::check_topic_arn(arn).map_err(|e| format!("bounce_ses_topic_arns: {e}"))?;
        }
        if let Some(key) = &self.sendgrid_public_key {
            super::sendgrid::SendgridKey::parse(key).map_err(|e| format!("bounce_sendgrid_public_key: {e}"))?;
        }
        if let Some(secret) = &self.postmark_secret
            && secret.expose().is_empty()
        {
            return Err("bounce_webhook_secret: is empty".to_owned());
        }
        Ok(())
    }
}

/// The router for the configured provider webhooks, handing reports to `sink`.
/// The public listener mounts it beside the other public routes.
pub fn bounce_router(sink: Arc<dyn BounceSink>, config: BounceWebhooks) -> Router {
    let intake = |source| Intake::new(source, sink.clone(), config.clock.clone());
    let mut router = Router::new();
    if !config.ses_topic_arns.is_empty() {
        router =
            router.merge(super::ses::routes(intake(BounceSource::Ses), &config.ses_topic_arns, config.sns.clone()));
    }
    if let Some(key) = &config.sendgrid_public_key {
        router = router.merge(super::sendgrid::routes(intake(BounceSource::Sendgrid), key));
    }
    if let Some(secret) = &config.postmark_secret {
        router = router.merge(super::postmark::routes(intake(BounceSource::Postmark), secret.clone()));
    }
    router.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A recording sink and a request helper for the provider tests.

    use std::sync::Mutex;

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use axum::http::StatusCode;

    use super::*;
    use crate::bounces::{BounceReport, Recorded, SinkError};

    /// Records every report; answers `answer` (or fails when it is `None`).
    pub(crate) struct RecordingSink {
        pub(crate) reports: Mutex<Vec<BounceReport>>,
        answer: Option<Recorded>,
    }

    impl RecordingSink {
        /// A sink that records and answers `answer`.
        pub(crate) fn answering(answer: Recorded) -> Arc<Self> {
            Arc::new(Self { reports: Mutex::new(Vec::new()), answer: Some(answer) })
        }

        /// A sink whose database is down.
        pub(crate) fn failing() -> Arc<Self> {
            Arc::new(Self { reports: Mutex::new(Vec::new()), answer: None })
        }

        /// What was handed to it so far.
        pub(crate) fn taken(&self) -> Vec<BounceReport> {
            self.reports.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl BounceSink for RecordingSink {
        async fn record(&self, report: BounceReport) -> Result<Recorded, SinkError> {
            self.reports.lock().unwrap().push(report);
            self.answer.ok_or_else(|| SinkError("the database is down".into()))
        }
    }

    /// Posts `body` with `headers` to `path` and returns the status and body.
    pub(crate) async fn post(
        router: &Router,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let mut req = Request::post(path).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `reverify_bounce_rejected_total{source,reason}` now.
    pub(crate) fn rejected(source: &str, reason: &str) -> u64 {
        let text = crate::telemetry::global().encode();
        let needle = format!("reverify_bounce_rejected_total{{source=\"{source}\",reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&needle)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::testing::*;
    use super::*;
    use crate::bounces::intake::{address_key, dedupe_id, message_id_key};
    use crate::bounces::{BounceKey, Recorded};

    fn postmark_only() -> BounceWebhooks {
        let mut c = BounceWebhooks::with_sources(
            Arc::new(crate::bounces::ses::tests_support::FixtureSns::default()),
            Arc::new(SystemClock),
        );
        c.postmark_secret = Some(Secret::new("pw"));
        c
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_anything_else() {
        let sink = RecordingSink::answering(Recorded::Applied);
        let router = bounce_router(sink.clone(), postmark_only());
        let before = rejected("postmark", "too_large");
        let (status, _) = post(&router, "/bounces/postmark", &[], vec![b'x'; 10 * 1024 * 1024]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(rejected("postmark", "too_large") > before);
        assert!(sink.taken().is_empty());
    }

    #[tokio::test]
    async fn only_configured_providers_are_mounted() {
        let sink = RecordingSink::answering(Recorded::Applied);
        let router = bounce_router(sink.clone(), postmark_only());
        assert_eq!(post(&router, "/bounces/ses", &[], b"{}".to_vec()).await.0, StatusCode::NOT_FOUND);
        assert_eq!(post(&router, "/bounces/sendgrid", &[], b"[]".to_vec()).await.0, StatusCode::NOT_FOUND);
        assert_eq!(post(&router, "/bounces/postmark", &[], b"{}".to_vec()).await.0, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn settings_are_checked_by_name() {
        let mut c = postmark_only();
        assert!(c.check().is_ok());
        c.sendgrid_public_key = Some("not a key".into());
        assert!(c.check().unwrap_err().starts_with("bounce_sendgrid_public_key"));
        c.sendgrid_public_key = None;
        c.ses_topic_arns = vec!["my-topic".into()];
        assert!(c.check().unwrap_err().starts_with("bounce_ses_topic_arns"));
        c.ses_topic_arns = vec![];
        c.postmark_secret = Some(Secret::new(""));
        assert!(c.check().unwrap_err().starts_with("bounce_webhook_secret"));
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn keys_lose_their_brackets() {
        assert_eq!(message_id_key(Some(" <a@b> ")), Some(BounceKey::MessageId("a@b".into())));
        assert_eq!(message_id_key(Some("<>")), None);
        assert_eq!(message_id_key(None), None);
        assert!(matches!(address_key(Some("<jane@example.com>")), Some(BounceKey::Address(_))));
        assert_eq!(address_key(Some("not an address")), None);
        assert_eq!(dedupe_id(&"x".repeat(500)).len(), DEDUPE_ID_MAX_CHARS);
    }
}
