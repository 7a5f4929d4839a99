//! `POST /bounces/postmark`: Postmark's bounce and spam complaint webhooks.
//!
//! Postmark signs nothing; its webhook URL carries HTTP Basic credentials
//! (`https://user:SECRET@host/bounces/postmark`), which it sends in an
//! `Authorization: Basic` header. Any user name is accepted, the password must be
//! `bounce_webhook_secret` (compared in constant time); a missing or wrong one is
//! `bad_signature` (401, with a `WWW-Authenticate` challenge).
//!
//! The body is one record. `RecordType` `Bounce` maps its `Type`: `HardBounce` and
//! `BadEmailAddress` hard; `SoftBounce`, `Transient`, `DnsError` and `Blocked`
//! soft; `SpamComplaint` and `SpamNotification` complaints; every other type
//! (`AutoResponder`, `Unknown`, …) unknown. `RecordType` `SpamComplaint` is a
//! complaint. Other record types (deliveries, opens, clicks) are ignored.
//! Postmark does not give our Message-ID back, so the only key is the recipient's
//! address; the dedupe id is Postmark's `ID`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::intake::{Intake, address_key, dedupe_id};
use super::{BounceKind, BounceReport, BounceSource};
use crate::Secret;
use crate::domain::bounce::scrub_diagnostic;

/// The path Postmark posts to.
pub const POSTMARK_PATH: &str = "/bounces/postmark";

/// Whether `authorization` (the header's value) is HTTP Basic with `secret` as
/// the password, whatever the user name. The passwords are compared as SHA-256
/// digests in constant time, so neither their bytes nor their length show in the
/// timing.
pub fn basic_auth_valid(authorization: Option<&str>, secret: &Secret) -> bool {
    let Some(value) = authorization.map(str::trim) else { return false };
    let Some((scheme, encoded)) = value.split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("basic") || secret.expose().is_empty() {
        return false;
    }
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else { return false };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
    let given = Sha256::digest(&decoded[colon + 1..]);
    let expected = Sha256::digest(secret.expose().as_bytes());
    given.ct_eq(&expected).into()
}

struct PostmarkReceiver {
    intake: Intake,
    secret: Secret,
}

/// The Postmark route, checking the password against `secret`.
pub(crate) fn routes(intake: Intake, secret: Secret) -> Router {
    let state = Arc::new(PostmarkReceiver { intake, secret });
    Router::new().route(POSTMARK_PATH, post(receive)).with_state(state)
}

async fn receive(
    State(r): State<Arc<PostmarkReceiver>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return r.intake.unreadable(rejection),
    };
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !basic_auth_valid(authorization, &r.secret) {
        let mut refused = r.intake.refuse_quietly("bad_signature", StatusCode::UNAUTHORIZED, "bad credentials");
        refused.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"reverify bounces\""));
        return refused;
    }
    match postmark_reports(&body) {
        Ok(reports) => r.intake.deliver(reports).await,
        Err(e) => r.intake.refuse("malformed", StatusCode::BAD_REQUEST, &format!("not a Postmark record: {e}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    record_type: String,
    #[serde(rename = "ID")]
    id: serde_json::Value,
    #[serde(rename = "Type")]
    bounce_type: Option<String>,
    email: Option<String>,
    bounced_at: Option<String>,
    details: Option<String>,
    description: Option<String>,
}

/// What a Postmark bounce `Type` means.
pub fn kind_of_type(bounce_type: &str) -> BounceKind {
    match bounce_type {
        "HardBounce" | "BadEmailAddress" => BounceKind::Hard,
        "SoftBounce" | "Transient" | "DnsError" | "Blocked" => BounceKind::Soft,
        "SpamComplaint" | "SpamNotification" => BounceKind::Complaint,
        _ => BounceKind::Unknown,
    }
}

/// The report in a Postmark webhook post: none for a record type other than
/// `Bounce` or `SpamComplaint`.
///
/// # Errors
/// A sentence when `body` is not a Postmark record or lacks its `ID`.
pub fn postmark_reports(body: &[u8]) -> Result<Vec<BounceReport>, String> {
    let record: Record = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let kind = match record.record_type.as_str() {
        "Bounce" => kind_of_type(record.bounce_type.as_deref().unwrap_or("")),
        "SpamComplaint" => BounceKind::Complaint,
        _ => return Ok(Vec::new()),
    };
    let id = match &record.id {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) if !s.trim().is_empty() => s.clone(),
        _ => return Err("\"ID\" is neither a number nor a string".to_owned()),
    };
    let diagnostic = [record.details, record.description].into_iter().flatten().find(|d| !d.trim().is_empty());
    Ok(vec![BounceReport {
        source: BounceSource::Postmark,
        dedupe_id: dedupe_id(&id),
        keys: address_key(record.email.as_deref()).into_iter().collect(),
        kind,
        status_code: None,
        diagnostic: diagnostic.as_deref().map(scrub_diagnostic),
        occurred_at: record
            .bounced_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    }])
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::bounces::http::testing::{RecordingSink, post, rejected};
    use crate::bounces::http::{BounceWebhooks, bounce_router};
    use crate::bounces::ses::tests_support::FixtureSns;
    use crate::bounces::{BounceKey, Recorded};
    use crate::domain::{EmailAddress, SystemClock};

    const BOUNCE: &str = include_str!("../../tests/corpus/bounces/postmark/bounce.json");
    const COMPLAINT: &str = include_str!("../../tests/corpus/bounces/postmark/spam-complaint.json");

    fn rig(sink: Arc<RecordingSink>) -> Router {
        let mut config = BounceWebhooks::with_sources(Arc::new(FixtureSns::default()), Arc::new(SystemClock));
        config.postmark_secret = Some(Secret::new("s3cret"));
        bounce_router(sink, config)
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn the_sample_bounce_and_complaint_are_recorded() {
        let sink = RecordingSink::answering(Recorded::Applied);
        let router = rig(sink.clone());
        let auth = basic("postmark", "s3cret");
        for body in [BOUNCE, COMPLAINT] {
            let (status, _) = post(&router, POSTMARK_PATH, &[("authorization", &auth)], body.into()).await;
            assert_eq!(status, StatusCode::OK);
        }
        let reports = sink.taken();
        assert_eq!(reports.len(), 2);
        let hard = &reports[0];
        assert_eq!(hard.source, BounceSource::Postmark);
        assert_eq!(hard.kind, BounceKind::Hard);
        assert_eq!(hard.dedupe_id, "4323372036854775807");
        assert_eq!(hard.keys, vec![BounceKey::Address(EmailAddress::parse("jane@example.com").unwrap())]);
        let diagnostic = hard.diagnostic.as_deref().unwrap();
        assert!(diagnostic.starts_with("smtp;550 5.1.1") && !diagnostic.contains("jane"), "{diagnostic}");
        assert_eq!(
            hard.occurred_at.map(|t| t.timestamp()),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 15, 0, 0).unwrap().timestamp())
        );
        assert_eq!(reports[1].kind, BounceKind::Complaint);
        assert_eq!(reports[1].dedupe_id, "42");
    }

    #[tokio::test]
    async fn a_missing_or_wrong_password_is_refused() {
        let sink = RecordingSink::answering(Recorded::Applied);
        let router = rig(sink.clone());
        let before = rejected("postmark", "bad_signature");
        for auth in [None, Some(basic("postmark", "wrong")), Some(basic("s3cret", "")), Some("Bearer s3cret".into())] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let (status, _) = post(&router, POSTMARK_PATH, &headers, BOUNCE.into()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        assert!(rejected("postmark", "bad_signature") >= before + 4);
        assert!(sink.taken().is_empty());
    }

    #[tokio::test]
    async fn other_records_are_ignored_and_junk_is_malformed() {
        let sink = RecordingSink::answering(Recorded::Duplicate);
        let router = rig(sink.clone());
        let auth = basic("any", "s3cret");
        let delivery = br#"{"RecordType":"Delivery","ID":1,"Email":"jane@example.com"}"#;
        let (status, text) = post(&router, POSTMARK_PATH, &[("authorization", &auth)], delivery.to_vec()).await;
        assert_eq!((status, text.contains("ignored")), (StatusCode::OK, true));
        let before = rejected("postmark", "malformed");
        let (status, _) = post(&router, POSTMARK_PATH, &[("authorization", &auth)], b"[1,2]".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(rejected("postmark", "malformed") > before);
        assert!(sink.taken().is_empty());
        // a duplicate is answered 200 and counted
        let before = rejected("postmark", "duplicate");
        let (status, _) = post(&router, POSTMARK_PATH, &[("authorization", &auth)], BOUNCE.into()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(rejected("postmark", "duplicate") > before);
    }

    #[tokio::test]
    async fn a_failing_sink_asks_postmark_to_retry() {
        let router = rig(RecordingSink::failing());
        let auth = basic("postmark", "s3cret");
        let (status, _) = post(&router, POSTMARK_PATH, &[("authorization", &auth)], BOUNCE.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn types_map_to_kinds() {
        assert_eq!(kind_of_type("HardBounce"), BounceKind::Hard);
        assert_eq!(kind_of_type("BadEmailAddress"), BounceKind::Hard);
        assert_eq!(kind_of_type("SoftBounce"), BounceKind::Soft);
        assert_eq!(kind_of_type("Transient"), BounceKind::Soft);
        assert_eq!(kind_of_type("SpamNotification"), BounceKind::Complaint);
        assert_eq!(kind_of_type("AutoResponder"), BounceKind::Unknown);
        assert!(basic_auth_valid(Some(&basic("", "s3cret")), &Secret::new("s3cret")));
        assert!(basic_auth_valid(Some(&basic("u", "pa:ss")), &Secret::new("pa:ss")));
        assert!(!basic_auth_valid(Some(&basic("u", "")), &Secret::new("")));
    }
}
