//! The receiving end of Baanx `kyc.status.changed` webhooks (../shared/baanx-api.md):
//! `POST /webhooks/baanx`, mounted by `reverify serve` and by the daemon.
//!
//! | request | answer |
//! |---|---|
//! | no or bad `X-Signature` (HMAC-SHA256 of `X-Timestamp.body`, constant-time check) | 401 |
//! | `X-Timestamp` more than 300 s from now | 401 |
//! | a body over 64 KiB | 413 |
//! | signed but not JSON, or an unknown status | 400 (Baanx stops retrying a 4xx) |
//! | another event type | 200, ignored |
//! | an event id already processed | 200, nothing changes |
//! | an unknown user | 200, recorded and logged |
//! | a valid event | 200 once the change is committed; 503 when the store fails, so that Baanx retries |
//!
//! The signature is checked on the raw bytes before anything is parsed. The
//! signature is checked before the timestamp so that an unsigned request learns
//! nothing about the clock.
//!
//! Every refusal is counted in `reverify_webhook_rejected_total{reason}`. Anyone
//! who can reach the listener can post, so the refusals nobody with the key sent
//! (unsigned, a bad signature, a stale timestamp, an oversized body) are logged at
//! most once a minute, each such line saying how many were held back since the
//! last: a flood fills the counter, not the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tracing::{info, warn};

use crate::Secret;
use crate::domain::{Clock, SystemClock, VerificationState};
use crate::store::Store;
use crate::store::outcomes::{KycEvent, StateApplied, WebhookResult};
use crate::telemetry::LogThrottle;

/// The path Baanx posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/baanx";
/// The largest body accepted; a KYC event is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How far `X-Timestamp` may be from now.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// At most one log line per this about refusals of unauthenticated posts.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

struct Receiver {
    store: Store,
    key: Secret,
    clock: Arc<dyn Clock>,
    refusals: LogThrottle,
}

impl Receiver {
    /// Refuses a post that nobody with the key sent (or a replay): counted, and
    /// logged at most once per [`REFUSAL_LOG_EVERY`].
    fn refuse_quietly(&self, reason: &'static str, status: StatusCode, result: &str) -> Response {
        crate::telemetry::global().webhook_rejected(reason);
        if let Some(held_back) = self.refusals.admit(Instant::now()) {
            warn!(
                reason,
                held_back,
                "webhook refused ({reason}); {held_back} more refused since the last such line. Refusals of posts \
                 not signed with webhook_key are logged at most once a minute and counted in \
                 reverify_webhook_rejected_total"
            );
        }
        answer(status, result)
    }

    /// Refuses a signed, fresh post that makes no sense: counted, and logged (only
    /// the key holder can send these).
    fn refuse(reason: &'static str, status: StatusCode, result: &str) -> Response {
        crate::telemetry::global().webhook_rejected(reason);
        answer(status, result)
    }
}

/// The router for `POST /webhooks/baanx`, verifying with `key` (`webhook_key`).
/// `reverify serve` and the daemon mount it beside the operations endpoints.
pub fn webhook_router(store: Store, key: Secret) -> Router {
    webhook_router_with_clock(store, key, Arc::new(SystemClock))
}

/// [`webhook_router`] on a given clock (the timestamp check and recorded times).
pub fn webhook_router_with_clock(store: Store, key: Secret, clock: Arc<dyn Clock>) -> Router {
    let state = Arc::new(Receiver { store, key, clock, refusals: LogThrottle::new(REFUSAL_LOG_EVERY) });
    Router::new().route(WEBHOOK_PATH, post(receive)).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(state)
}

/// Whether `signature` (lower- or upper-case hex) is the HMAC-SHA256 of
/// `timestamp.body` under `key`, compared in constant time.
pub fn signature_valid(key: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[derive(Debug, Deserialize)]
struct Envelope {
    event_id: String,
    event_type: String,
    user_id: String,
    event_object: Option<KycObject>,
    event_object_status: Option<String>,
    occurred_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KycObject {
    status: Option<String>,
    failure_code: Option<String>,
    failure_reason: Option<String>,
}

fn answer(status: StatusCode, result: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "result": result }))).into_response()
}

/// `pending` → PENDING, `completed` → VERIFIED, `failed` → REJECTED.
fn state_of(status: &str) -> Option<VerificationState> {
    match status {
        "pending" => Some(VerificationState::Pending),
        "completed" => Some(VerificationState::Verified),
        "failed" => Some(VerificationState::Rejected),
        _ => None,
    }
}

/// Answers a post, timed in `reverify_webhook_duration_seconds`.
async fn receive(state: State<Arc<Receiver>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let answer = receive_timed(state, headers, body).await;
    crate::telemetry::global().webhook_answered(started.elapsed());
    answer
}

async fn receive_timed(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return r.refuse_quietly("too_large", StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Err(rejection) => {
            crate::telemetry::global().webhook_rejected("unreadable");
            return rejection.into_response();
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("x-timestamp"), header("x-signature")) else {
        return r.refuse_quietly("unsigned", StatusCode::UNAUTHORIZED, "missing X-Timestamp or X-Signature");
    };
    if !signature_valid(r.key.expose().as_bytes(), ts, &body, sig) {
        return r.refuse_quietly("bad_signature", StatusCode::UNAUTHORIZED, "bad signature");
    }
    let now = r.clock.now();
    match ts.trim().parse::<i64>() {
        Ok(t) if (now.timestamp() - t).abs() <= MAX_SKEW_SECONDS => {}
        // a replay of a captured post is as cheap to repeat as an unsigned one
        _ => return r.refuse_quietly("stale_timestamp", StatusCode::UNAUTHORIZED, "stale or invalid timestamp"),
    }
    let env: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "webhook refused: not a kyc event envelope");
            return Receiver::refuse("malformed", StatusCode::BAD_REQUEST, "malformed event");
        }
    };
    if env.event_type != "kyc.status.changed" {
        info!(event_type = %env.event_type, event_id = %env.event_id, "webhook ignored: not a KYC status change");
        crate::telemetry::global().webhook_event("ignored");
        return answer(StatusCode::OK, "ignored");
    }
    let status = env.event_object.as_ref().and_then(|o| o.status.clone()).or(env.event_object_status.clone());
    let Some(state) = status.as_deref().map(str::to_ascii_lowercase).as_deref().and_then(state_of) else {
        warn!(event_id = %env.event_id, status = ?status, "webhook refused: unknown KYC status");
        return Receiver::refuse("unknown_status", StatusCode::BAD_REQUEST, "unknown status");
    };
    let event = KycEvent {
        event_id: env.event_id.chars().take(200).collect(),
        user_id: env.user_id.chars().take(200).collect(),
        state,
        occurred_at: env
            .occurred_at
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc)),
        failure_code: env
            .event_object
            .as_ref()
            .and_then(|o| o.failure_code.as_ref())
            .map(|c| c.chars().take(100).collect()),
        failure_reason: env.event_object.and_then(|o| o.failure_reason).map(|c| c.chars().take(500).collect()),
    };
    let result = r.store.webhook_apply(&event, now).await;
    let counted = match &result {
        Ok(WebhookResult::Duplicate) => Some("duplicate"),
        Ok(WebhookResult::Recorded(StateApplied::UnknownUser)) => Some("unknown_user"),
        Ok(WebhookResult::Recorded(StateApplied::Stale)) => Some("stale"),
        Ok(WebhookResult::Recorded(StateApplied::Applied { .. })) => Some("applied"),
        Err(_) => None,
    };
    if let Some(c) = counted {
        crate::telemetry::global().webhook_event(c);
    }
    match result {
        Ok(WebhookResult::Duplicate) => {
            info!(event_id = %event.event_id, "webhook already processed");
            answer(StatusCode::OK, "duplicate")
        }
        Ok(WebhookResult::Recorded(StateApplied::UnknownUser)) => {
            warn!(event_id = %event.event_id, user_id = %event.user_id, "webhook for an unknown user; acknowledged");
            answer(StatusCode::OK, "unknown_user")
        }
        Ok(WebhookResult::Recorded(StateApplied::Stale)) => {
            info!(event_id = %event.event_id, user_id = %event.user_id, "webhook older than the stored state");
            answer(StatusCode::OK, "stale")
        }
        Ok(WebhookResult::Recorded(StateApplied::Applied { from, to, converted, .. })) => {
            info!(event_id = %event.event_id, user_id = %event.user_id, from = from.as_str(), to = to.as_str(),
                  converted, "webhook applied");
            answer(StatusCode::OK, "applied")
        }
        Err(e) => {
            warn!(error = %e, event_id = %event.event_id, "webhook not recorded; Baanx will retry");
            answer(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_checks_timestamp_and_body() {
        let sig = crate::sandbox::signature(b"k", "100", b"{}");
        assert!(signature_valid(b"k", "100", b"{}", &sig));
        assert!(signature_valid(b"k", "100", b"{}", &sig.to_uppercase()));
        assert!(!signature_valid(b"k", "101", b"{}", &sig));
        assert!(!signature_valid(b"k", "100", b"{ }", &sig));
        assert!(!signature_valid(b"other", "100", b"{}", &sig));
        assert!(!signature_valid(b"k", "100", b"{}", "zz"));
        assert!(!signature_valid(b"k", "100", b"{}", ""));
    }

    #[test]
    fn statuses_map_to_states() {
        assert_eq!(state_of("pending"), Some(VerificationState::Pending));
        assert_eq!(state_of("completed"), Some(VerificationState::Verified));
        assert_eq!(state_of("failed"), Some(VerificationState::Rejected));
        assert_eq!(state_of("done"), None);
    }
}
