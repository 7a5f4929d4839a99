//! What the engine needs from the outside world, as two small traits: the Baanx API
//! and a way to deliver a message. The production implementations wrap
//! `baanx::BaanxClient` and `notify::Notifier`; the engine knows neither.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::baanx::Pacer;
use crate::domain::{
    CampaignName, MessageDigest, Recipient, Region, SessionUrl, TargetReason, UserId, VerificationState,
};

/// A user as the API needs to address them.
#[derive(Debug, Clone)]
pub struct ApiUser {
    pub user_id: UserId,
    pub region: Region,
}

/// An API failure, already classified (retries have been spent where they help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiFailure {
    /// The refresh token was refused: the user must consent again.
    #[error("the user must consent again (invalid_grant)")]
    ConsentRequired,
    /// 403: suspended, or not this client's user. Permanent.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 429 that outlasted the retries. The API created nothing.
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// The API refused under one of its per-user limits although the ledger allowed
    /// the session (sessions started elsewhere, e.g. in the partner's app). Nothing
    /// was created.
    #[error("the API's per-user limit: {reason}")]
    UserLimited { reason: TargetReason },
    /// The client itself is refused (a wrong client key) or misconfigured: every user
    /// would fail the same way, so the run stops.
    #[error("fatal: {0}")]
    Fatal(String),
    /// A refusal that is certain to have created nothing (another 4xx).
    #[error("refused: {0}")]
    Refused(String),
    /// 5xx, timeouts, connection errors after retries: a session may or may not exist.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The Baanx calls a run makes. `pace`, when given, paces every request a call makes
/// (a token refresh and a retry included): a campaign's `throttle.requests_per_second`
/// counts every Baanx request made for the campaign, as the worker's limiter does.
#[async_trait]
pub trait VerificationApi: Send + Sync {
    /// `GET /v1/user`: the user's current state.
    async fn fresh_state(&self, user: &ApiUser, pace: Option<&dyn Pacer>) -> Result<VerificationState, ApiFailure>;
    /// `GET /v1/user/verification`: a new session URL.
    async fn start_session(&self, user: &ApiUser, pace: Option<&dyn Pacer>) -> Result<SessionUrl, ApiFailure>;
}

/// What a run asks a channel to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub campaign: &'a CampaignName,
    /// Who it is for, as the claim read them.
    pub recipient: &'a Recipient,
    /// The campaign's step: 0 for the first message, n for the n-th reminder.
    pub step: i64,
    pub url: SessionUrl,
    pub expires_at: DateTime<Utc>,
    /// The message's VERP token (see `notify::Message::bounce_token`).
    pub bounce_token: Option<String>,
    /// Send through the campaign's fallback channel (the user's email bounced).
    pub fallback: bool,
}

/// A delivery that did not happen, after the channel's own retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryFailure {
    /// The channel refused for good (a 5xx from SMTP, a bad address).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The channel stayed unavailable through every retry.
    #[error("gave up: {0}")]
    GaveUp(String),
    /// The message may have arrived: it went out whole but no answer came back (an
    /// SMTP connection lost after the message data). It is not retried, and recorded
    /// `delivery_unknown` so that no later run sends it again on its own.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// The channel itself is misconfigured (credentials refused, no TLS, a broken
    /// template): every further user would spend a session for nothing, so the run stops.
    #[error("channel set-up: {0}")]
    Setup(String),
}

/// Sends one message carrying a session URL.
#[async_trait]
pub trait Deliverer: Send + Sync {
    /// Sends it; retries transient failures itself (never an ambiguous one).
    /// Returns what was sent, for the audit trail, when the channel can tell.
    async fn deliver(&self, message: Outgoing<'_>) -> Result<Option<MessageDigest>, DeliveryFailure>;
}
