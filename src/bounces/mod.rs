//! Bounces, complaints and the messages they are about: three intakes, one model.
//!
//! - **Provider webhooks** on the public listener ([`bounce_router`]):
//!   `POST /bounces/ses` (Amazon SES through SNS, the SNS signature checked against
//!   the signing certificate), `POST /bounces/sendgrid` (the Event Webhook's ECDSA
//!   signature) and `POST /bounces/postmark` (HTTP Basic auth with
//!   `bounce_webhook_secret`).
//! - **A DSN mailbox** (`bounce_mailbox = "imaps://user@host/INBOX"`): RFC 3464
//!   delivery status notifications and RFC 5965 ARF complaints, each message flagged
//!   only after its result is committed.
//! - Each intake turns what it receives into [`BounceReport`]s (the model in
//!   `domain::bounce`) and hands them to a [`BounceSink`]; `engine::bounces` is the
//!   sink over the store, which finds the message (VERP token, Message-ID, or the
//!   latest message to the address within 7 days) and applies what a bounce does.
//!
//! Every refusal is counted in `reverify_bounce_rejected_total{source,reason}`.

pub mod dsn;
pub mod mailbox;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

use async_trait::async_trait;

pub mod http;
mod intake;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
pub use dsn::{DsnError, parse_message};
pub use mailbox::{MailboxConfig, MailboxHealth, run_mailbox};

pub use crate::domain::bounce::{BounceKey, BounceKind, BounceReport, BounceSource};
pub use http::{BounceWebhooks, bounce_router};
pub use ses::{CertSource, FetchError, HttpsCertSource};

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Matched to a message and applied.
    Applied,
    /// The same (source, dedupe id) was recorded before: nothing changed.
    Duplicate,
    /// No message of ours matches (a Message-ID or an address nobody sent to, a
    /// message since gone): nothing changed. The intake counts it `unmatched`.
    Unmatched,
    /// It named the message by a VERP token no key of ours made (forged, or from
    /// another installation): nothing changed. The intake counts it `unknown_token`.
    UnknownToken,
}

/// The sink could not record the report (the database is down): the intake must
/// let the sender retry (a 503; the mailbox message left unflagged).
#[derive(Debug, thiserror::Error)]
#[error("the bounce could not be recorded: {0}")]
pub struct SinkError(pub String);

/// Where the intakes hand their reports.
#[async_trait]
pub trait BounceSink: Send + Sync {
    /// Records `report` once (idempotent on its source and dedupe id).
    async fn record(&self, report: BounceReport) -> Result<Recorded, SinkError>;
}
