//! The `kyc.status.changed` webhooks the sandbox sends, signed as Baanx signs them:
//! `X-Timestamp` (Unix seconds) and `X-Signature`, the lower-case hex HMAC-SHA256 of
//! `timestamp + "." + body`.
//!
//! Delivery is at least once: 5xx and connection errors are retried with back-off
//! (same `event_id`), a 4xx stops. Deliveries run in their own tasks so that a slow
//! receiver never holds up the API.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::stats::Counters;
use crate::Secret;
use crate::domain::UserId;

/// Where to send webhooks, and the key that signs them.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: url::Url,
    pub key: Secret,
}

/// The lower-case hex HMAC-SHA256 of `timestamp.body` under `key`.
pub fn signature(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The KYC status in a webhook (lower case, unlike `verificationState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KycStatus {
    Pending,
    Completed,
    Failed,
}

#[derive(Debug, Serialize)]
struct KycObject {
    status: KycStatus,
    failure_code: Option<&'static str>,
    failure_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Envelope<'a> {
    api_version: &'static str,
    event_id: String,
    event_category: &'static str,
    event_type: &'static str,
    user_id: &'a str,
    user_external_id: Option<String>,
    event_object_id: &'a str,
    event_object_status: KycStatus,
    event_object_changes: Vec<&'static str>,
    event_object: KycObject,
    occurred_at: String,
}

/// Rejection codes and reasons, one or more per kind of rejection Baanx reports: a
/// document issue, an identity mismatch, a fraud suspicion, an address problem.
/// `FRAUD_SUSPECTED` is a final rejection (the shipped campaigns exclude it); the
/// others may pass on a new attempt.
pub const FAILURES: [(&str, &str); 6] = [
    ("DOCUMENT_EXPIRED", "The identity document has expired"),
    ("DOCUMENT_UNREADABLE", "The document images are blurry or cut off"),
    ("IDENTITY_MISMATCH", "The details on the document do not match the account"),
    ("SELFIE_MISMATCH", "The selfie does not match the document photo"),
    ("FRAUD_SUSPECTED", "The verification was declined after a fraud review"),
    ("ADDRESS_UNVERIFIED", "The proof of address is missing, unreadable or older than 3 months"),
];

/// The body of one event. `kyc_id` names the verification (never the session URL).
pub fn event_body(user: &UserId, kyc_id: &str, status: KycStatus, at: DateTime<Utc>, pick: u64) -> Vec<u8> {
    let (failure_code, failure_reason) = match status {
        KycStatus::Failed => {
            let (c, r) = FAILURES[(pick % FAILURES.len() as u64) as usize];
            (Some(c), Some(r))
        }
        _ => (None, None),
    };
    let env = Envelope {
        api_version: "v1",
        event_id: uuid::Uuid::new_v4().to_string(),
        event_category: "kyc",
        event_type: "kyc.status.changed",
        user_id: user.as_str(),
        user_external_id: None,
        event_object_id: kyc_id,
        event_object_status: status,
        event_object_changes: vec!["status"],
        event_object: KycObject { status, failure_code, failure_reason },
        occurred_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
    };
    serde_json::to_vec(&env).expect("an envelope serialises")
}

/// Sends signed events.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    target: WebhookTarget,
    stats: Arc<Counters>,
}

impl Sender {
    /// A sender for `target`.
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(target: WebhookTarget, stats: Arc<Counters>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Self { client, target, stats })
    }

    /// Delivers events in the background, one after the other in the given order,
    /// each retried on 5xx and connection errors.
    pub fn send(&self, bodies: Vec<Vec<u8>>) {
        let this = self.clone();
        tokio::spawn(async move {
            for body in bodies {
                this.deliver(body).await;
            }
        });
    }

    async fn deliver(&self, body: Vec<u8>) {
        const ATTEMPTS: u32 = 5;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt - 1)).await;
            }
            // a fresh timestamp per attempt, as a receiver checks its age
            let ts = Utc::now().timestamp().to_string();
            let sig = signature(self.target.key.expose().as_bytes(), &ts, &body);
            let res = self
                .client
                .post(self.target.url.clone())
                .header("content-type", "application/json")
                .header("x-timestamp", &ts)
                .header("x-signature", sig)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    self.stats.webhooks_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(status = %r.status(), "webhook refused; not retrying");
                    break;
                }
                Ok(r) => tracing::debug!(status = %r.status(), attempt, "webhook failed; will retry"),
                Err(e) => tracing::debug!(error = %e, attempt, "webhook failed; will retry"),
            }
        }
        self.stats.webhooks_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // computed independently with Python's hmac module
        let sig = signature(b"Jefe", "1700000000", br#"{"a":1}"#);
        assert_eq!(sig, "fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a");
    }
}
