//! `POST /bounces/ses`: Amazon SES bounce and complaint notifications, delivered
//! by SNS to an HTTPS subscription (not "raw message delivery": the SNS envelope
//! carries the signature).
//!
//! In this order, each refusal counted in `reverify_bounce_rejected_total`:
//!
//! 1. The body must be an SNS message (`malformed`, 400).
//! 2. Its `TopicArn` must be one of `bounce_ses_topic_arns` (`unknown_topic`,
//!    401): SNS signs every topic's messages, and anyone can make a topic and
//!    subscribe this endpoint to it.
//! 3. Its `SigningCertURL` must be `https://sns.<region>.amazonaws.com[.cn]/….pem`,
//!    with no user, no port (`bad_certificate`, 401, and nothing is fetched).
//! 4. The certificate is fetched once per URL (a bounded cache) through a
//!    [`CertSource`]; a failed fetch is a 503 so that SNS retries, a certificate
//!    that does not parse is `bad_certificate`.
//! 5. The signature (`SignatureVersion` 1: SHA1withRSA, 2: SHA256withRSA) over
//!    the canonical string AWS documents for the message's type (`bad_signature`,
//!    401).
//! 6. Its `Timestamp` must be at most an hour old and at most 5 minutes ahead
//!    (`stale_timestamp`, 401).
//!
//! Then a `SubscriptionConfirmation` is confirmed by a GET of its `SubscribeURL`
//! (on the same SNS hosts), an `UnsubscribeConfirmation` is logged, and a
//! `Notification` carries SES's JSON: a `Bounce` gives one report per bounced
//! recipient (`Permanent` hard, `Transient` soft, `Undetermined` unknown), a
//! `Complaint` one per complained recipient, anything else (`Delivery`) is
//! ignored. A report's keys, strongest first: the VERP token in `mail.source` (our
//! return path), the original Message-ID from `mail.commonHeaders.messageId`
//! (SES's own `mail.messageId` is not ours), the recipient's address. Its dedupe id
//! is the SNS `MessageId` (with `/n` for the n-th recipient after the first).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use tracing::{info, warn};
use url::Url;

use super::intake::{Intake, address_key, answer, dedupe_id, message_id_key};
use super::{BounceKey, BounceKind, BounceReport, BounceSource};
use crate::domain::bounce::{scrub_diagnostic, token_in_plus_address};

/// The path SNS posts to.
pub const SES_PATH: &str = "/bounces/ses";
/// How old an SNS `Timestamp` may be.
pub const MAX_AGE_SECONDS: i64 = 3600;
/// How far ahead of our clock an SNS `Timestamp` may be.
pub const MAX_AHEAD_SECONDS: i64 = 300;
/// How many signing certificates are kept (SNS uses one per region at a time).
pub const CERT_CACHE_ENTRIES: usize = 16;
/// The largest signing certificate fetched.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// Why a GET to SNS failed (a timeout, a status, a body too large).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// The two GETs SNS needs: its signing certificates and subscription
/// confirmations. Both URLs have passed [`sns_url`] before they get here.
#[async_trait]
pub trait CertSource: Send + Sync {
    /// The PEM body at `url` (a `SigningCertURL`).
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, FetchError>;

    /// Confirms a subscription by a GET of `url` (a `SubscribeURL`).
    async fn confirm_subscription(&self, url: &Url) -> Result<(), FetchError>;
}

/// [`CertSource`] over HTTPS with reqwest (rustls, no redirects).
#[derive(Debug, Clone)]
pub struct HttpsCertSource {
    client: reqwest::Client,
}

impl HttpsCertSource {
    /// A source whose requests take at most `timeout`.
    ///
    /// # Errors
    /// A sentence when the HTTP client cannot be built.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reverify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for SNS: {e}"))?;
        Ok(Self { client })
    }

    async fn get(&self, url: &Url, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
        let mut res = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError(format!("GET {}: {e}", url_shown(url))))?;
        if !res.status().is_success() {
            return Err(FetchError(format!("GET {}: HTTP {}", url_shown(url), res.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| FetchError(format!("GET {}: {e}", url_shown(url))))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError(format!("GET {}: more than {max_bytes} bytes", url_shown(url))));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[async_trait]
impl CertSource for HttpsCertSource {
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        self.get(url, MAX_CERT_BYTES).await
    }

    async fn confirm_subscription(&self, url: &Url) -> Result<(), FetchError> {
        self.get(url, MAX_CERT_BYTES).await.map(|_| ())
    }
}

/// `url` without its query (a `SubscribeURL`'s token stays out of the logs).
fn url_shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// `s` parsed when it is an SNS URL: `https`, host `sns.<region>.amazonaws.com`
/// or `sns.<region>.amazonaws.com.cn` exactly (region: lower-case letters,
/// digits and `-`), no user or password, no port other than the default.
pub fn sns_url(s: &str) -> Option<Url> {
    let url = Url::parse(s.trim()).ok()?;
    let host = url.host_str()?;
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| h.strip_suffix(".amazonaws.com").or_else(|| h.strip_suffix(".amazonaws.com.cn")))?;
    let region_ok = !region.is_empty()
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-');
    let ok = url.scheme() == "https"
        && region_ok
        && url.username().is_empty()
        && url.password().is_none()
        && url.port().is_none();
    ok.then_some(url)
}

/// `s` parsed when it is a signing certificate URL: an [`sns_url`] whose path
/// ends in `.pem`, with no query or fragment.
pub fn signing_cert_url(s: &str) -> Option<Url> {
    let url = sns_url(s)?;
    (url.path().ends_with(".pem") && url.query().is_none() && url.fragment().is_none()).then_some(url)
}

/// Checks that `arn` looks like an SNS topic ARN (`arn:aws:sns:region:account:name`).
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_topic_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.split(':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sns"
        && parts.iter().skip(3).all(|p| !p.is_empty());
    if ok { Ok(()) } else { Err(format!("{arn:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)")) }
}

/// An SNS message as posted to an HTTP(S) subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// SNS's id of the message, the same when SNS retries it.
    pub message_id: String,
    /// The topic it was published to.
    pub topic_arn: String,
    /// A notification's subject, when it was published with one.
    pub subject: Option<String>,
    /// The payload: SES's JSON for a notification.
    pub message: String,
    /// When SNS published it (RFC 3339).
    pub timestamp: String,
    /// `1` (SHA1withRSA) or `2` (SHA256withRSA).
    pub signature_version: String,
    /// Base64 of the signature over [`SnsMessage::canonical`].
    pub signature: String,
    /// Where the signing certificate is (checked with [`signing_cert_url`]).
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// A subscription (un)confirmation's URL to confirm it.
    #[serde(rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    /// A subscription (un)confirmation's token.
    pub token: Option<String>,
}

impl SnsMessage {
    /// The string SNS signed: `Key\nvalue\n` for each signed field of the
    /// message's type, in AWS's order; `None` for an unknown type or a missing
    /// field.
    pub fn canonical(&self) -> Option<String> {
        let fields: Vec<(&str, Option<&str>)> = match self.kind.as_str() {
            "Notification" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("Subject", self.subject.as_deref()),
                ("Timestamp", Some(&self.timestamp)),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.kind)),
            ],
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("SubscribeURL", Some(self.subscribe_url.as_deref()?)),
                ("Timestamp", Some(&self.timestamp)),
                ("Token", Some(self.token.as_deref()?)),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.kind)),
            ],
            _ => return None,
        };
        let mut out = String::new();
        for (key, value) in fields {
            if let Some(v) = value {
                out.push_str(key);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
        }
        Some(out)
    }

    /// The verification algorithm of its `SignatureVersion`.
    fn algorithm(&self) -> Option<&'static dyn VerificationAlgorithm> {
        match self.signature_version.trim() {
            "1" => Some(&signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY),
            "2" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            _ => None,
        }
    }

    /// Whether its signature verifies under `spki` (a DER SubjectPublicKeyInfo).
    pub fn signature_valid(&self, spki: &[u8]) -> bool {
        let (Some(algorithm), Some(canonical)) = (self.algorithm(), self.canonical()) else { return false };
        let Ok(sig) = STANDARD.decode(self.signature.trim()) else { return false };
        UnparsedPublicKey::new(algorithm, spki).verify(canonical.as_bytes(), &sig).is_ok()
    }
}

/// The public key (DER SubjectPublicKeyInfo) of the PEM certificate `pem`.
///
/// # Errors
/// A sentence when it is no PEM X.509 certificate.
pub fn certificate_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.subject_public_key_info().as_ref().to_vec())
}

/// Signing certificates' keys by URL, at most [`CERT_CACHE_ENTRIES`], the oldest
/// dropped first.
#[derive(Default)]
struct CertCache {
    entries: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
}

impl CertCache {
    fn get(&self, url: &str) -> Option<Arc<Vec<u8>>> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.iter().find(|(u, _)| u == url).map(|(_, k)| k.clone())
    }

    fn put(&self, url: &str, key: Arc<Vec<u8>>) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.iter().any(|(u, _)| u == url) {
            return;
        }
        if entries.len() >= CERT_CACHE_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((url.to_owned(), key));
    }
}

/// Why no key could be had for a certificate URL.
enum CertFailure {
    /// The fetch failed: SNS should retry.
    Fetch(FetchError),
    /// What came back is no certificate.
    Unparsable(String),
}

struct SesReceiver {
    intake: Intake,
    topics: Vec<String>,
    sns: Arc<dyn CertSource>,
    certs: CertCache,
}

impl SesReceiver {
    /// The key of the certificate at `url`, from the cache or fetched once.
    async fn key(&self, url: &Url) -> Result<Arc<Vec<u8>>, CertFailure> {
        if let Some(k) = self.certs.get(url.as_str()) {
            return Ok(k);
        }
        let pem = self.sns.certificate(url).await.map_err(CertFailure::Fetch)?;
        let key = Arc::new(certificate_key(&pem).map_err(CertFailure::Unparsable)?);
        self.certs.put(url.as_str(), key.clone());
        Ok(key)
    }
}

/// The SES route, accepting `topics`, fetching through `sns`.
pub(crate) fn routes(intake: Intake, topics: &[String], sns: Arc<dyn CertSource>) -> Router {
    let state = Arc::new(SesReceiver {
        intake,
        topics: topics.iter().map(|t| t.trim().to_owned()).collect(),
        sns,
        certs: CertCache::default(),
    });
    Router::new().route(SES_PATH, post(receive)).with_state(state)
}

async fn receive(State(r): State<Arc<SesReceiver>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return r.intake.unreadable(rejection),
    };
    let msg = match authenticate(&r, &body).await {
        Ok(m) => m,
        Err(refused) => return refused.answer(&r.intake),
    };
    match msg.kind.as_str() {
        "SubscriptionConfirmation" => confirm(&r, &msg).await,
        "UnsubscribeConfirmation" => {
            warn!(topic = %msg.topic_arn, "SNS says this endpoint was unsubscribed from the topic; bounces from it stop");
            answer(StatusCode::OK, "ignored")
        }
        _ => match ses_reports(&msg.message_id, &msg.message) {
            Ok(reports) => r.intake.deliver(reports).await,
            Err(e) => r.intake.refuse("malformed", StatusCode::BAD_REQUEST, &format!("not an SES notification: {e}")),
        },
    }
}

/// Why a post was not believed.
enum Refused {
    /// Counted as `reason` and answered `status` with `result`, logged quietly.
    Quietly(&'static str, StatusCode, String),
    /// The signing certificate could not be fetched: 503, so that SNS retries.
    Retry(FetchError),
}

impl Refused {
    fn quietly(reason: &'static str, status: StatusCode, result: impl Into<String>) -> Self {
        Refused::Quietly(reason, status, result.into())
    }

    fn answer(self, intake: &Intake) -> Response {
        match self {
            Refused::Quietly(reason, status, result) => intake.refuse_quietly(reason, status, &result),
            Refused::Retry(e) => {
                warn!(error = %e, "SNS signing certificate not fetched; SNS will retry");
                answer(StatusCode::SERVICE_UNAVAILABLE, "try again")
            }
        }
    }
}

/// The message in `body` once it is proven SNS's, for one of our topics, fresh.
async fn authenticate(r: &SesReceiver, body: &[u8]) -> Result<SnsMessage, Refused> {
    let msg: SnsMessage = serde_json::from_slice(body)
        .map_err(|e| Refused::quietly("malformed", StatusCode::BAD_REQUEST, format!("not an SNS message: {e}")))?;
    if !r.topics.contains(&msg.topic_arn) {
        return Err(Refused::quietly("unknown_topic", StatusCode::UNAUTHORIZED, "not a topic of ours"));
    }
    let Some(cert_url) = signing_cert_url(&msg.signing_cert_url) else {
        return Err(Refused::quietly("bad_certificate", StatusCode::UNAUTHORIZED, "certificate URL not SNS's"));
    };
    let key = match r.key(&cert_url).await {
        Ok(k) => k,
        Err(CertFailure::Fetch(e)) => return Err(Refused::Retry(e)),
        Err(CertFailure::Unparsable(e)) => {
            return Err(Refused::quietly("bad_certificate", StatusCode::UNAUTHORIZED, e));
        }
    };
    if !msg.signature_valid(&key) {
        return Err(Refused::quietly("bad_signature", StatusCode::UNAUTHORIZED, "bad signature"));
    }
    if !fresh(&msg.timestamp, r.intake.clock.now()) {
        return Err(Refused::quietly("stale_timestamp", StatusCode::UNAUTHORIZED, "stale or invalid timestamp"));
    }
    Ok(msg)
}

/// Whether `timestamp` (RFC 3339) is within [`MAX_AGE_SECONDS`] before and
/// [`MAX_AHEAD_SECONDS`] after `now`.
fn fresh(timestamp: &str, now: DateTime<Utc>) -> bool {
    let Ok(t) = DateTime::parse_from_rfc3339(timestamp.trim()) else { return false };
    let age = (now - t.with_timezone(&Utc)).num_seconds();
    (-MAX_AHEAD_SECONDS..=MAX_AGE_SECONDS).contains(&age)
}

/// Confirms the subscription of an allowed topic: a GET of its `SubscribeURL`
/// when that is an SNS URL for the same topic.
async fn confirm(r: &SesReceiver, msg: &SnsMessage) -> Response {
    let url = msg.subscribe_url.as_deref().and_then(sns_url);
    let same_topic = |u: &Url| u.query_pairs().all(|(k, v)| k != "TopicArn" || v == msg.topic_arn.as_str());
    let Some(url) = url.filter(same_topic) else {
        return r.intake.refuse("malformed", StatusCode::BAD_REQUEST, "SubscribeURL is not SNS's for this topic");
    };
    match r.sns.confirm_subscription(&url).await {
        Ok(()) => {
            info!(topic = %msg.topic_arn, "SNS subscription confirmed");
            answer(StatusCode::OK, "subscribed")
        }
        Err(e) => {
            warn!(topic = %msg.topic_arn, error = %e, "SNS subscription not confirmed; SNS will send it again");
            answer(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesNotification {
    #[serde(alias = "eventType")]
    notification_type: String,
    mail: Option<SesMail>,
    bounce: Option<SesBounce>,
    complaint: Option<SesComplaint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesMail {
    source: Option<String>,
    common_headers: Option<SesCommonHeaders>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesCommonHeaders {
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesBounce {
    bounce_type: String,
    bounced_recipients: Vec<SesRecipient>,
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesRecipient {
    email_address: Option<String>,
    status: Option<String>,
    diagnostic_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesComplaint {
    complained_recipients: Vec<SesRecipient>,
    complaint_feedback_type: Option<String>,
    timestamp: Option<String>,
}

/// `Permanent` → hard, `Transient` → soft, anything else (`Undetermined`) → unknown.
pub fn kind_of_bounce_type(bounce_type: &str) -> BounceKind {
    match bounce_type {
        "Permanent" => BounceKind::Hard,
        "Transient" => BounceKind::Soft,
        _ => BounceKind::Unknown,
    }
}

/// The reports in an SES notification (`message`, the SNS `Message`) delivered
/// as SNS message `sns_message_id`: one per bounced or complained recipient,
/// none for other notification types.
///
/// # Errors
/// A sentence when `message` is not SES's JSON.
pub fn ses_reports(sns_message_id: &str, message: &str) -> Result<Vec<BounceReport>, String> {
    let n: SesNotification = serde_json::from_str(message).map_err(|e| e.to_string())?;
    let mail = n.mail.unwrap_or_default();
    let (kind, recipients, occurred_at, feedback) = match n.notification_type.as_str() {
        "Bounce" => {
            let b = n.bounce.ok_or("a Bounce notification without \"bounce\"")?;
            (kind_of_bounce_type(&b.bounce_type), b.bounced_recipients, b.timestamp, None)
        }
        "Complaint" => {
            let c = n.complaint.ok_or("a Complaint notification without \"complaint\"")?;
            (BounceKind::Complaint, c.complained_recipients, c.timestamp, c.complaint_feedback_type)
        }
        _ => return Ok(Vec::new()),
    };
    let occurred_at =
        occurred_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
    let common_keys: Vec<BounceKey> = [
        mail.source.as_deref().and_then(token_in_plus_address).map(|t| BounceKey::Token(t.to_owned())),
        message_id_key(mail.common_headers.as_ref().and_then(|h| h.message_id.as_deref())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let reports = recipients
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut keys = common_keys.clone();
            keys.extend(address_key(r.email_address.as_deref()));
            let dedupe = if i == 0 { sns_message_id.to_owned() } else { format!("{sns_message_id}/{i}") };
            BounceReport {
                source: BounceSource::Ses,
                dedupe_id: dedupe_id(&dedupe),
                keys,
                kind,
                status_code: r.status.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
                diagnostic: r.diagnostic_code.or_else(|| feedback.clone()).as_deref().map(scrub_diagnostic),
                occurred_at,
            }
        })
        .collect();
    Ok(reports)
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! A [`CertSource`] serving the fixture certificate and recording its GETs.

    use super::*;

    /// Serves `tests/corpus/bounces/ses/signing-cert.pem` for every URL.
    pub(crate) struct FixtureSns {
        pub(crate) cert: Vec<u8>,
        pub(crate) fetched: Mutex<Vec<String>>,
        pub(crate) confirmed: Mutex<Vec<String>>,
        /// Every GET fails (SNS unreachable).
        pub(crate) down: bool,
    }

    impl Default for FixtureSns {
        fn default() -> Self {
            Self {
                cert: include_bytes!("../../tests/corpus/bounces/ses/signing-cert.pem").to_vec(),
                fetched: Mutex::new(Vec::new()),
                confirmed: Mutex::new(Vec::new()),
                down: false,
            }
        }
    }

    #[async_trait]
    impl CertSource for FixtureSns {
        async fn certificate(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
            self.fetched.lock().unwrap().push(url.to_string());
            if self.down {
                return Err(FetchError("connection refused".into()));
            }
            Ok(self.cert.clone())
        }

        async fn confirm_subscription(&self, url: &Url) -> Result<(), FetchError> {
            self.confirmed.lock().unwrap().push(url.to_string());
            if self.down {
                return Err(FetchError("connection refused".into()));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::RsaKeyPair;
    use chrono::TimeZone;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use serde_json::{Value, json};

    use super::tests_support::FixtureSns;
    use super::*;
    use crate::bounces::Recorded;
    use crate::bounces::http::testing::{RecordingSink, post, rejected};
    use crate::bounces::http::{BounceWebhooks, bounce_router};
    use crate::domain::{EmailAddress, ManualClock};

    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:reverify-bounces";
    const CERT_URL: &str =
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem";
    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/bounces/ses/");

    fn corpus(name: &str) -> String {
        std::fs::read_to_string(format!("{CORPUS}{name}")).unwrap()
    }

    /// The fixture v1 message's time plus 10 s.
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 15, 0, 10).unwrap()
    }

    struct Rig {
        router: Router,
        sink: Arc<RecordingSink>,
        sns: Arc<FixtureSns>,
        clock: ManualClock,
    }

    fn rig() -> Rig {
        rig_with(FixtureSns::default())
    }

    fn rig_with(sns: FixtureSns) -> Rig {
        let sink = RecordingSink::answering(Recorded::Applied);
        let sns = Arc::new(sns);
        let clock = ManualClock::new(now());
        let mut config = BounceWebhooks::with_sources(sns.clone(), Arc::new(clock.clone()));
        config.ses_topic_arns = vec![TOPIC.to_owned()];
        Rig { router: bounce_router(sink.clone(), config), sink, sns, clock }
    }

    /// The test's own canonical string (not [`SnsMessage::canonical`]), from AWS's
    /// documentation.
    fn canonical(m: &Value) -> String {
        let keys: &[&str] = if m["Type"] == "Notification" {
            &["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        } else {
            &["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        };
        keys.iter().filter_map(|k| m[*k].as_str().map(|v| format!("{k}\n{v}\n"))).collect()
    }

    /// `m` signed with the fixture key, SignatureVersion 2.
    fn sign_v2(mut m: Value) -> Vec<u8> {
        let pem = corpus("signing-key.pem");
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let mut sig = vec![0; key.public_modulus_len()];
        key.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), canonical(&m).as_bytes(), &mut sig).unwrap();
        m["SignatureVersion"] = json!("2");
        m["Signature"] = json!(STANDARD.encode(sig));
        serde_json::to_vec(&m).unwrap()
    }

    fn notification(message: &str, id: &str) -> Value {
        json!({
            "Type": "Notification",
            "MessageId": id,
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": "2026-12-07T15:00:00.000Z",
            "SigningCertURL": CERT_URL,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        })
    }

    async fn send(rig: &Rig, body: Vec<u8>) -> StatusCode {
        post(&rig.router, SES_PATH, &[("x-amz-sns-message-type", "Notification")], body).await.0
    }

    #[tokio::test]
    async fn the_documented_bounce_signed_v1_gives_one_report_per_recipient() {
        let rig = rig();
        assert_eq!(send(&rig, corpus("sns-bounce-v1.json").into_bytes()).await, StatusCode::OK);
        let reports = rig.sink.taken();
        assert_eq!(reports.len(), 2);
        let jane = &reports[0];
        assert_eq!(jane.source, BounceSource::Ses);
        assert_eq!(jane.kind, BounceKind::Hard);
        assert_eq!(jane.dedupe_id, "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324");
        assert_eq!(reports[1].dedupe_id, "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324/1");
        assert_eq!(
            jane.keys,
            vec![
                BounceKey::Token("s42-0123456789abcdef".into()),
                BounceKey::MessageId("s42-0123456789abcdef@mail.example.org".into()),
                BounceKey::Address(EmailAddress::parse("jane@example.com").unwrap()),
            ]
        );
        assert_eq!(jane.status_code.as_deref(), Some("5.1.1"));
        assert_eq!(jane.diagnostic.as_deref(), Some("smtp; 550 5.1.1 <address>... User unknown"));
        assert_eq!(
            jane.occurred_at,
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 14, 59, 38).unwrap() + chrono::Duration::milliseconds(237))
        );
        assert_eq!(reports[1].keys[2], BounceKey::Address(EmailAddress::parse("richard@example.com").unwrap()));
    }

    #[tokio::test]
    async fn a_complaint_signed_v2_is_a_complaint_and_a_delivery_is_ignored() {
        let rig = rig();
        let body = sign_v2(notification(&corpus("ses-complaint.json"), "c-1"));
        assert_eq!(send(&rig, body).await, StatusCode::OK);
        let reports = rig.sink.taken();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].kind, BounceKind::Complaint);
        assert_eq!(reports[0].keys[0], BounceKey::Token("l7-fedcba9876543210".into()));
        assert_eq!(reports[0].diagnostic.as_deref(), Some("abuse"));
        let (status, text) =
            post(&rig.router, SES_PATH, &[], sign_v2(notification(&corpus("ses-delivery.json"), "d-1"))).await;
        assert_eq!((status, text.contains("ignored")), (StatusCode::OK, true));
        assert_eq!(rig.sink.taken().len(), 1);
    }

    #[tokio::test]
    async fn the_certificate_is_fetched_once() {
        let rig = rig();
        for id in ["a", "b", "c"] {
            assert_eq!(send(&rig, sign_v2(notification(&corpus("ses-bounce.json"), id))).await, StatusCode::OK);
        }
        assert_eq!(*rig.sns.fetched.lock().unwrap(), vec![CERT_URL.to_owned()]);
        // the same notification again reaches the sink again: the sink dedupes
        assert_eq!(send(&rig, sign_v2(notification(&corpus("ses-bounce.json"), "a"))).await, StatusCode::OK);
        assert_eq!(rig.sink.taken().len(), 8);
    }

    #[tokio::test]
    async fn a_tampered_or_foreign_signature_is_refused() {
        let rig = rig();
        let before = rejected("ses", "bad_signature");
        let mut m: Value = serde_json::from_str(&corpus("sns-bounce-v1.json")).unwrap();
        m["Message"] = json!(m["Message"].as_str().unwrap().replace("Permanent", "Transient"));
        assert_eq!(send(&rig, serde_json::to_vec(&m).unwrap()).await, StatusCode::UNAUTHORIZED);
        // signed v1, claimed v2
        let mut m: Value = serde_json::from_str(&corpus("sns-bounce-v1.json")).unwrap();
        m["SignatureVersion"] = json!("2");
        assert_eq!(send(&rig, serde_json::to_vec(&m).unwrap()).await, StatusCode::UNAUTHORIZED);
        // the certificate of another key
        let other = rig_with(FixtureSns { cert: corpus("other-cert.pem").into_bytes(), ..FixtureSns::default() });
        assert_eq!(send(&other, corpus("sns-bounce-v1.json").into_bytes()).await, StatusCode::UNAUTHORIZED);
        assert!(rejected("ses", "bad_signature") >= before + 3);
        assert!(rig.sink.taken().is_empty() && other.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn a_certificate_off_the_sns_hosts_is_refused_without_a_fetch() {
        let rig = rig();
        let before = rejected("ses", "bad_certificate");
        for url in [
            "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
            "http://sns.us-east-1.amazonaws.com/cert.pem",
            "https://user@sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
            "https://sns.us-east-1.amazonaws.com/cert.txt",
            "https://sqs.us-east-1.amazonaws.com/cert.pem",
            "https://sns..amazonaws.com/cert.pem",
        ] {
            let mut m = notification(&corpus("ses-bounce.json"), "x");
            m["SigningCertURL"] = json!(url);
            assert_eq!(send(&rig, sign_v2(m)).await, StatusCode::UNAUTHORIZED, "{url}");
        }
        assert!(rig.sns.fetched.lock().unwrap().is_empty());
        assert!(rejected("ses", "bad_certificate") >= before + 8);
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_sns_is_retried_and_a_junk_certificate_refused() {
        let down = rig_with(FixtureSns { down: true, ..FixtureSns::default() });
        assert_eq!(send(&down, corpus("sns-bounce-v1.json").into_bytes()).await, StatusCode::SERVICE_UNAVAILABLE);
        // nothing cached: the next post fetches again
        assert_eq!(send(&down, corpus("sns-bounce-v1.json").into_bytes()).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.sns.fetched.lock().unwrap().len(), 2);
        let junk = rig_with(FixtureSns {
            cert: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            ..FixtureSns::default()
        });
        let before = rejected("ses", "bad_certificate");
        assert_eq!(send(&junk, corpus("sns-bounce-v1.json").into_bytes()).await, StatusCode::UNAUTHORIZED);
        assert!(rejected("ses", "bad_certificate") > before);
        assert!(down.sink.taken().is_empty() && junk.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn another_topic_is_refused_even_when_sns_signed_it() {
        let rig = rig();
        let before = rejected("ses", "unknown_topic");
        let mut m = notification(&corpus("ses-bounce.json"), "x");
        m["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:someone-elses");
        assert_eq!(send(&rig, sign_v2(m)).await, StatusCode::UNAUTHORIZED);
        assert!(rejected("ses", "unknown_topic") > before);
        assert!(rig.sns.fetched.lock().unwrap().is_empty());
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn an_old_or_future_timestamp_is_refused() {
        let rig = rig();
        let before = rejected("ses", "stale_timestamp");
        let body = corpus("sns-bounce-v1.json").into_bytes();
        rig.clock.set(now() + chrono::Duration::minutes(61));
        assert_eq!(send(&rig, body.clone()).await, StatusCode::UNAUTHORIZED);
        rig.clock.set(now() - chrono::Duration::minutes(6));
        assert_eq!(send(&rig, body.clone()).await, StatusCode::UNAUTHORIZED);
        assert!(rejected("ses", "stale_timestamp") >= before + 2);
        assert!(rig.sink.taken().is_empty());
        rig.clock.set(now() + chrono::Duration::minutes(59));
        assert_eq!(send(&rig, body).await, StatusCode::OK);
    }

    fn subscription(subscribe_url: &str) -> Value {
        json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6fdb82efd087cc3b7849e05798d2d2785c03b0879594eeac82c01f235d0e717736",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic. To confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": subscribe_url,
            "Timestamp": "2026-12-07T15:00:00.000Z",
            "SigningCertURL": CERT_URL,
        })
    }

    #[tokio::test]
    async fn a_subscription_to_our_topic_is_confirmed_on_sns_only() {
        let rig = rig();
        let url =
            format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336");
        assert_eq!(send(&rig, sign_v2(subscription(&url))).await, StatusCode::OK);
        assert_eq!(rig.sns.confirmed.lock().unwrap().len(), 1);
        let foreign = "https://evil.example/?Action=ConfirmSubscription&Token=2336";
        assert_eq!(send(&rig, sign_v2(subscription(foreign))).await, StatusCode::BAD_REQUEST);
        let other_topic = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:1:x&Token=1";
        assert_eq!(send(&rig, sign_v2(subscription(other_topic))).await, StatusCode::BAD_REQUEST);
        // the subscription's own signed fields are checked: a changed SubscribeURL fails
        let mut m: Value = serde_json::from_slice(&sign_v2(subscription(&url))).unwrap();
        m["SubscribeURL"] = json!(url.replace("Token=2336", "Token=9999"));
        assert_eq!(send(&rig, serde_json::to_vec(&m).unwrap()).await, StatusCode::UNAUTHORIZED);
        assert_eq!(rig.sns.confirmed.lock().unwrap().len(), 1);
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn an_unsubscribe_confirmation_is_acknowledged_and_not_acted_on() {
        let rig = rig();
        let url =
            format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336");
        let mut m = subscription(&url);
        m["Type"] = json!("UnsubscribeConfirmation");
        let (status, text) = post(&rig.router, SES_PATH, &[], sign_v2(m)).await;
        assert_eq!((status, text.contains("ignored")), (StatusCode::OK, true));
        assert!(rig.sns.confirmed.lock().unwrap().is_empty());
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn a_body_that_is_no_sns_message_is_malformed() {
        let rig = rig();
        let before = rejected("ses", "malformed");
        assert_eq!(send(&rig, b"not json".to_vec()).await, StatusCode::BAD_REQUEST);
        // signed, ours, but its Message is not SES's
        assert_eq!(send(&rig, sign_v2(notification("hello", "m-1"))).await, StatusCode::BAD_REQUEST);
        assert!(rejected("ses", "malformed") >= before + 2);
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn a_failing_sink_asks_sns_to_retry() {
        let sink = RecordingSink::failing();
        let mut config =
            BounceWebhooks::with_sources(Arc::new(FixtureSns::default()), Arc::new(ManualClock::new(now())));
        config.ses_topic_arns = vec![TOPIC.to_owned()];
        let router = bounce_router(sink, config);
        let (status, _) = post(&router, SES_PATH, &[], corpus("sns-bounce-v1.json").into_bytes()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn sns_urls_are_sns_hosts_only() {
        assert!(signing_cert_url(CERT_URL).is_some());
        assert!(signing_cert_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem").is_some());
        assert!(signing_cert_url("https://sns.us-gov-west-1.amazonaws.com/x.pem").is_some());
        assert!(signing_cert_url("https://sns.us-east-1.amazonaws.com/x.pem?a=b").is_none());
        assert!(signing_cert_url("https://sns.US-EAST-1.amazonaws.com/x.pem").is_some(), "hosts are lower-cased");
        assert!(signing_cert_url("https://sns.us_east.amazonaws.com/x.pem").is_none());
        assert!(sns_url("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription").is_some());
        assert!(sns_url("https://sns.eu-west-1.amazonaws.com.cn.evil.example/").is_none());
        assert!(check_topic_arn(TOPIC).is_ok());
        assert!(check_topic_arn("arn:aws:sqs:us-east-1:1:x").is_err());
    }

    #[test]
    fn undetermined_is_unknown() {
        assert_eq!(kind_of_bounce_type("Permanent"), BounceKind::Hard);
        assert_eq!(kind_of_bounce_type("Transient"), BounceKind::Soft);
        assert_eq!(kind_of_bounce_type("Undetermined"), BounceKind::Unknown);
        let msg = corpus("ses-bounce.json").replace("Permanent", "Undetermined");
        assert_eq!(ses_reports("m", &msg).unwrap()[0].kind, BounceKind::Unknown);
    }
}
