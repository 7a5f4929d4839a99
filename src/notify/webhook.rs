//! The webhook channel: POST the link as JSON to a partner's gateway (push, SMS),
//! signed so that the gateway can tell the request is ours and fresh.
//!
//! Signature: `X-Reverify-Timestamp` is Unix seconds, `X-Reverify-Signature` the
//! lower-case hex HMAC-SHA256 of `TIMESTAMP + "." + BODY`, keyed with
//! `notify_webhook_key`: the scheme Baanx uses for its own webhooks (baanx-api.md),
//! so a partner verifies both the same way. `X-Reverify-Delivery-Id` is the same on
//! every retry of one message, so the gateway can drop duplicates.
//!
//! 2xx is success; 408, 429, 5xx, timeouts and connection failures are transient
//! (`Retry-After` is honoured); any other status is permanent. Redirects are not
//! followed: the body carries a bearer link and must reach the configured host only.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::Secret;

use super::{ChannelKind, Delivered, Message, NotifyError};

/// The JSON body. It holds the link, so it is neither `Debug` nor kept.
#[derive(Serialize)]
pub struct WebhookPayload<'a> {
    pub campaign: &'a str,
    pub step: u32,
    pub user_id: &'a str,
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub session_url: &'a str,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

impl<'a> WebhookPayload<'a> {
    /// The body for `msg`.
    pub fn of(msg: &'a Message) -> Self {
        let r = &msg.recipient;
        Self {
            campaign: msg.campaign.as_str(),
            step: msg.step,
            user_id: r.user_id.as_str(),
            email: r.email.as_str(),
            first_name: r.first_name.as_deref(),
            last_name: r.last_name.as_deref(),
            locale: r.locale_tag(),
            session_url: msg.session_url.expose(),
            expires_at: msg.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}

/// The lower-case hex HMAC-SHA256 of `timestamp.body`.
pub fn sign_webhook(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Posts signed notifications. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    key: Secret,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender").finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// A sender signing with `key`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the HTTP client cannot be built.
    pub fn new(key: Secret, connect_timeout: Duration, timeout: Duration) -> Result<Self, NotifyError> {
        if key.expose().is_empty() {
            return Err(NotifyError::config("notify_webhook_key", "is empty"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reverify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::config("notify_webhook_key", format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, key })
    }

    /// Posts `msg` to its campaign's `delivery.webhook_url`.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] or [`NotifyError::Permanent`] as the module says;
    /// [`NotifyError::Config`] when the campaign has no webhook URL.
    pub async fn send(&self, msg: &Message) -> Result<Delivered, NotifyError> {
        let url = msg
            .delivery
            .webhook_url
            .as_deref()
            .ok_or_else(|| NotifyError::config("delivery.webhook_url", "the webhook channel needs a URL"))?;
        let body = Zeroizing::new(
            serde_json::to_vec(&WebhookPayload::of(msg))
                .map_err(|e| NotifyError::permanent(format!("webhook body: {e}")))?,
        );
        let timestamp = Utc::now().timestamp();
        let signature = sign_webhook(self.key.expose().as_bytes(), timestamp, &body);
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Reverify-Timestamp", timestamp.to_string())
            .header("X-Reverify-Signature", signature)
            .header("X-Reverify-Delivery-Id", delivery_id(msg))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| classify_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Delivered {
                channel: ChannelKind::Webhook,
                message_id: None,
                detail: format!("HTTP {}", status.as_u16()),
                attempts: 1,
            });
        }
        let code = status.as_u16();
        let reason = format!("webhook answered HTTP {code}");
        if code == 408 || code == 429 || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Err(NotifyError::Transient { reason, retry_after })
        } else if status.is_redirection() {
            Err(NotifyError::permanent(format!("{reason} (redirects are not followed)")))
        } else {
            Err(NotifyError::permanent(reason))
        }
    }
}

/// Stable for one message across retries (and restarts), different for a new
/// session (see [`Message::identity`]).
fn delivery_id(msg: &Message) -> String {
    hex::encode(&msg.identity()[..16])
}

/// A failed request: its causes as text, without the URL (which may hold a token).
fn classify_error(e: &reqwest::Error) -> NotifyError {
    let mut text = String::from(if e.is_timeout() {
        "webhook timed out"
    } else if e.is_connect() {
        "webhook connection failed"
    } else {
        "webhook request failed"
    });
    let mut source = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = source {
        if depth == 3 {
            break;
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
        depth += 1;
    }
    if e.is_builder() { NotifyError::permanent(text) } else { NotifyError::transient(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        let sig = sign_webhook(b"key", 1_700_000_000, b"{}");
        assert_eq!(sig, "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae");
        assert_ne!(sig, sign_webhook(b"key", 1_700_000_001, b"{}"));
        assert_ne!(sig, sign_webhook(b"other", 1_700_000_000, b"{}"));
    }
}
