//! `POST /bounces/sendgrid`: SendGrid's Event Webhook with signed events.
//!
//! The post is checked before its body is parsed: the
//! `X-Twilio-Email-Event-Webhook-Signature` header is a base64 DER ECDSA P-256
//! signature (SHA-256) of the `X-Twilio-Email-Event-Webhook-Timestamp` header's
//! bytes followed by the raw body, under `bounce_sendgrid_public_key` (base64 of
//! the DER SubjectPublicKeyInfo, as SendGrid's settings page shows it). A missing
//! or bad signature is `bad_signature` (401); then a timestamp more than 5 minutes
//! from now is `stale_timestamp` (401).
//!
//! The body is a JSON array of events. `bounce` with `type` `blocked` is soft; with
//! `type` `bounce` its `status` class decides (5.x.x hard, 4.x.x soft, otherwise
//! hard, as SendGrid's `bounce` means a permanent failure); `dropped` with reason
//! "Bounced Address" is hard (SendGrid suppressed an address that bounced before);
//! `spamreport` is a complaint; every other event is ignored. An event that does
//! not parse is counted `malformed` and skipped, the others are recorded (a 400
//! would make SendGrid drop the whole batch). A report's dedupe id is the event's
//! `sg_event_id`; its keys are the Message-ID in `smtp-id`, then `email`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::DigestVerifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::intake::{Intake, address_key, dedupe_id, message_id_key};
use super::{BounceKind, BounceReport, BounceSource};
use crate::domain::bounce::scrub_diagnostic;

/// The path SendGrid posts to.
pub const SENDGRID_PATH: &str = "/bounces/sendgrid";
/// The header with the base64 DER ECDSA signature.
pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
/// The header with the signed timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";
/// How far the signed timestamp may be from now.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// The Event Webhook's verification key.
#[derive(Debug, Clone)]
pub struct SendgridKey(VerifyingKey);

impl SendgridKey {
    /// Parses `bounce_sendgrid_public_key`: base64 of a DER SubjectPublicKeyInfo
    /// of a P-256 key, PEM armour and white space allowed.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        let der = STANDARD.decode(b64).map_err(|e| format!("not base64: {e}"))?;
        VerifyingKey::from_public_key_der(&der)
            .map(Self)
            .map_err(|e| format!("not a DER P-256 public key (SubjectPublicKeyInfo): {e}"))
    }

    /// Whether `signature` (base64 DER) signs `timestamp` followed by `body`.
    pub fn verify(&self, timestamp: &str, body: &[u8], signature: &str) -> bool {
        let Ok(der) = STANDARD.decode(signature.trim()) else { return false };
        let Ok(sig) = DerSignature::try_from(der.as_slice()) else { return false };
        let digest = Sha256::new().chain_update(timestamp.as_bytes()).chain_update(body);
        self.0.verify_digest(digest, &sig).is_ok()
    }
}

struct SendgridReceiver {
    intake: Intake,
    /// `None` when the configured key is unusable: every post is refused.
    key: Option<SendgridKey>,
}

/// The SendGrid route, verifying with `key` (`bounce_sendgrid_public_key`).
pub(crate) fn routes(intake: Intake, key: &str) -> Router {
    let key = SendgridKey::parse(key)
        .inspect_err(|e| {
            tracing::error!("bounce_sendgrid_public_key: {e}; every post to {SENDGRID_PATH} will be refused");
        })
        .ok();
    let state = Arc::new(SendgridReceiver { intake, key });
    Router::new().route(SENDGRID_PATH, post(receive)).with_state(state)
}

async fn receive(
    State(r): State<Arc<SendgridReceiver>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return r.intake.unreadable(rejection),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig), Some(key)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER), &r.key) else {
        return r.intake.refuse_quietly("bad_signature", StatusCode::UNAUTHORIZED, "missing signature or timestamp");
    };
    if !key.verify(ts, &body, sig) {
        return r.intake.refuse_quietly("bad_signature", StatusCode::UNAUTHORIZED, "bad signature");
    }
    match ts.trim().parse::<i64>() {
        Ok(t) if (r.intake.clock.now().timestamp() - t).abs() <= MAX_SKEW_SECONDS => {}
        _ => return r.intake.refuse_quietly("stale_timestamp", StatusCode::UNAUTHORIZED, "stale or invalid timestamp"),
    }
    match sendgrid_reports(&body) {
        Ok((reports, skipped)) => {
            for _ in 0..skipped {
                r.intake.count("malformed");
            }
            if skipped > 0 {
                warn!(skipped, "SendGrid events skipped: not an event this intake reads");
            }
            r.intake.deliver(reports).await
        }
        Err(e) => r.intake.refuse("malformed", StatusCode::BAD_REQUEST, &format!("not a SendGrid event array: {e}")),
    }
}

#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    email: Option<String>,
    timestamp: Option<i64>,
    #[serde(rename = "smtp-id")]
    smtp_id: Option<String>,
    sg_event_id: Option<String>,
    reason: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    bounce_type: Option<String>,
}

/// What an event is, or `None` when it is none of ours to record.
fn kind_of(e: &Event) -> Option<BounceKind> {
    match e.event.as_str() {
        "bounce" if e.bounce_type.as_deref() == Some("blocked") => Some(BounceKind::Soft),
        "bounce" => Some(match BounceKind::from_status_code(e.status.as_deref().unwrap_or("")) {
            BounceKind::Unknown => BounceKind::Hard,
            k => k,
        }),
        "dropped" if e.reason.as_deref().is_some_and(|r| r.trim().eq_ignore_ascii_case("Bounced Address")) => {
            Some(BounceKind::Hard)
        }
        "spamreport" => Some(BounceKind::Complaint),
        _ => None,
    }
}

/// The report for one event, `Ok(None)` for an event that is no bounce or
/// complaint.
fn report_of(e: Event) -> Result<Option<BounceReport>, String> {
    let Some(kind) = kind_of(&e) else { return Ok(None) };
    let id = e.sg_event_id.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let id = id.ok_or_else(|| format!("a {} event without sg_event_id", e.event))?;
    let keys = [message_id_key(e.smtp_id.as_deref()), address_key(e.email.as_deref())].into_iter().flatten().collect();
    let status_code = e.status.as_deref().map(str::trim).filter(|s| s.starts_with(['2', '4', '5']) && s.contains('.'));
    Ok(Some(BounceReport {
        source: BounceSource::Sendgrid,
        dedupe_id: dedupe_id(id),
        keys,
        kind,
        status_code: status_code.map(str::to_owned),
        diagnostic: e.reason.as_deref().map(scrub_diagnostic),
        occurred_at: e.timestamp.and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
    }))
}

/// The reports in an Event Webhook post and how many events were skipped as
/// unreadable.
///
/// # Errors
/// A sentence when `body` is not a JSON array.
pub fn sendgrid_reports(body: &[u8]) -> Result<(Vec<BounceReport>, usize), String> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    let mut skipped = 0;
    for value in events {
        let parsed = serde_json::from_value::<Event>(value).map_err(|e| e.to_string()).and_then(report_of);
        match parsed {
            Ok(Some(r)) => reports.push(r),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %scrub_diagnostic(&e), "SendGrid event skipped");
                skipped += 1;
            }
        }
    }
    Ok((reports, skipped))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::DigestSigner;
    use rand::RngCore;

    use super::*;
    use crate::bounces::http::testing::{RecordingSink, post, rejected};
    use crate::bounces::http::{BounceWebhooks, bounce_router};
    use crate::bounces::ses::tests_support::FixtureSns;
    use crate::bounces::{BounceKey, Recorded};
    use crate::domain::{EmailAddress, ManualClock};

    const EVENTS: &str = include_str!("../../tests/corpus/bounces/sendgrid/events.json");
    /// The events' time.
    const NOW: i64 = 1_796_655_610;

    fn new_key() -> SigningKey {
        loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(k) = SigningKey::from_slice(&bytes) {
                return k;
            }
        }
    }

    /// Base64 of the DER SubjectPublicKeyInfo, as SendGrid shows it: the fixed
    /// header of an id-ecPublicKey on prime256v1, then the uncompressed point.
    fn public_b64(key: &SigningKey) -> String {
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(key.verifying_key().to_encoded_point(false).as_bytes());
        STANDARD.encode(der)
    }

    fn sign(key: &SigningKey, ts: &str, body: &[u8]) -> String {
        let digest = Sha256::new().chain_update(ts.as_bytes()).chain_update(body);
        let sig: p256::ecdsa::Signature = key.sign_digest(digest);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    struct Rig {
        router: Router,
        sink: Arc<RecordingSink>,
        key: SigningKey,
    }

    fn rig() -> Rig {
        let key = new_key();
        let sink = RecordingSink::answering(Recorded::Applied);
        let clock = ManualClock::new(DateTime::from_timestamp(NOW, 0).unwrap());
        let mut config = BounceWebhooks::with_sources(Arc::new(FixtureSns::default()), Arc::new(clock));
        config.sendgrid_public_key = Some(public_b64(&key));
        Rig { router: bounce_router(sink.clone(), config), sink, key }
    }

    async fn send(rig: &Rig, ts: &str, sig: &str, body: &[u8]) -> StatusCode {
        post(&rig.router, SENDGRID_PATH, &[(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, sig)], body.to_vec()).await.0
    }

    #[tokio::test]
    async fn the_sample_events_give_bounces_drops_and_complaints() {
        let rig = rig();
        let ts = NOW.to_string();
        let sig = sign(&rig.key, &ts, EVENTS.as_bytes());
        assert_eq!(send(&rig, &ts, &sig, EVENTS.as_bytes()).await, StatusCode::OK);
        let reports = rig.sink.taken();
        let kinds: Vec<BounceKind> = reports.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [BounceKind::Hard, BounceKind::Soft, BounceKind::Hard, BounceKind::Complaint]);
        let hard = &reports[0];
        assert_eq!(hard.source, BounceSource::Sendgrid);
        assert_eq!(hard.dedupe_id, "6g4ZI7SA-xmRDv57GoPIPw==");
        assert_eq!(
            hard.keys,
            vec![
                BounceKey::MessageId("s42-0123456789abcdef@mail.example.org".into()),
                BounceKey::Address(EmailAddress::parse("jane@example.com").unwrap()),
            ]
        );
        assert_eq!(hard.status_code.as_deref(), Some("5.0.0"));
        assert_eq!(hard.diagnostic.as_deref(), Some("500 unknown recipient <address>"));
        assert_eq!(hard.occurred_at, DateTime::from_timestamp(1_796_655_602, 0));
        // the same post again reaches the sink again: the sink dedupes
        assert_eq!(send(&rig, &ts, &sig, EVENTS.as_bytes()).await, StatusCode::OK);
        assert_eq!(rig.sink.taken().len(), 8);
    }

    #[tokio::test]
    async fn a_bad_missing_or_foreign_signature_is_refused() {
        let rig = rig();
        let before = rejected("sendgrid", "bad_signature");
        let ts = NOW.to_string();
        let body = EVENTS.as_bytes();
        assert_eq!(send(&rig, &ts, "AAAA", body).await, StatusCode::UNAUTHORIZED);
        assert_eq!(send(&rig, &ts, "not base64!", body).await, StatusCode::UNAUTHORIZED);
        let status = post(&rig.router, SENDGRID_PATH, &[(TIMESTAMP_HEADER, &ts)], body.to_vec()).await.0;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // signed by another key
        assert_eq!(send(&rig, &ts, &sign(&new_key(), &ts, body), body).await, StatusCode::UNAUTHORIZED);
        // a tampered body, or a signature moved to another timestamp
        let sig = sign(&rig.key, &ts, body);
        let tampered = EVENTS.replace("\"spamreport\"", "\"delivered\"");
        assert_eq!(send(&rig, &ts, &sig, tampered.as_bytes()).await, StatusCode::UNAUTHORIZED);
        assert_eq!(send(&rig, &(NOW - 1).to_string(), &sig, body).await, StatusCode::UNAUTHORIZED);
        assert!(rejected("sendgrid", "bad_signature") >= before + 6);
        assert!(rig.sink.taken().is_empty());
    }

    #[tokio::test]
    async fn a_stale_timestamp_is_refused_even_when_signed() {
        let rig = rig();
        let before = rejected("sendgrid", "stale_timestamp");
        for t in [NOW - 301, NOW + 301] {
            let ts = t.to_string();
            let sig = sign(&rig.key, &ts, EVENTS.as_bytes());
            assert_eq!(send(&rig, &ts, &sig, EVENTS.as_bytes()).await, StatusCode::UNAUTHORIZED);
        }
        assert!(rejected("sendgrid", "stale_timestamp") >= before + 2);
        assert!(rig.sink.taken().is_empty());
        let ts = (NOW - 299).to_string();
        assert_eq!(send(&rig, &ts, &sign(&rig.key, &ts, EVENTS.as_bytes()), EVENTS.as_bytes()).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_signed_body_that_is_no_array_is_malformed_and_odd_events_are_skipped() {
        let rig = rig();
        let ts = NOW.to_string();
        let body = br#"{"event":"bounce"}"#;
        assert_eq!(send(&rig, &ts, &sign(&rig.key, &ts, body), body).await, StatusCode::BAD_REQUEST);
        let before = rejected("sendgrid", "malformed");
        let body = br#"[{"event":"bounce","email":"a@example.com"},{"no":"event"},
            {"event":"spamreport","email":"b@example.com","sg_event_id":"e2"}]"#;
        assert_eq!(send(&rig, &ts, &sign(&rig.key, &ts, body), body).await, StatusCode::OK);
        assert_eq!(rejected("sendgrid", "malformed"), before + 2);
        let reports = rig.sink.taken();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].dedupe_id, "e2");
    }

    #[test]
    fn keys_parse_from_base64_or_pem() {
        let key = new_key();
        let b64 = public_b64(&key);
        assert!(SendgridKey::parse(&b64).is_ok());
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n", &b64[..64], &b64[64..]);
        assert!(SendgridKey::parse(&pem).is_ok());
        assert!(SendgridKey::parse("AAAA").is_err());
        assert!(SendgridKey::parse("").is_err());
    }

    #[test]
    fn the_status_class_decides_a_bounce() {
        let ev = |event: &str, t: Option<&str>, status: &str, reason: &str| Event {
            event: event.into(),
            email: None,
            timestamp: None,
            smtp_id: None,
            sg_event_id: None,
            reason: Some(reason.into()),
            status: Some(status.into()),
            bounce_type: t.map(Into::into),
        };
        assert_eq!(kind_of(&ev("bounce", Some("bounce"), "5.1.1", "")), Some(BounceKind::Hard));
        assert_eq!(kind_of(&ev("bounce", Some("bounce"), "4.2.2", "")), Some(BounceKind::Soft));
        assert_eq!(kind_of(&ev("bounce", Some("bounce"), "", "")), Some(BounceKind::Hard));
        assert_eq!(kind_of(&ev("bounce", None, "550", "")), Some(BounceKind::Hard));
        assert_eq!(kind_of(&ev("bounce", Some("blocked"), "5.7.1", "")), Some(BounceKind::Soft));
        assert_eq!(kind_of(&ev("dropped", None, "5.0.0", "Bounced Address")), Some(BounceKind::Hard));
        assert_eq!(kind_of(&ev("dropped", None, "5.0.0", "Unsubscribed Address")), None);
        assert_eq!(kind_of(&ev("delivered", None, "", "")), None);
    }
}
