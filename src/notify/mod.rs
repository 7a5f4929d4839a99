//! Notifications: tell one user about the session the engine has just opened for them.
//!
//! The engine calls [`Notifier::send_with_retry`] once per user and step with a
//! [`Message`] that carries the [`SessionUrl`] in memory. This module renders the
//! campaign's templates ([`Templates`]), then hands the result to one channel:
//!
//! - email, over SMTP ([`SmtpSender`], lettre with a connection pool and TLS) or into a
//!   file outbox of `.eml` files ([`Outbox`], for demos and for relays that pick files up);
//! - a signed JSON webhook ([`WebhookSender`]) for partners' push or SMS gateways.
//!
//! Every failure is classified once, here: [`NotifyError::Transient`] is retried with
//! backoff while the URL is still in memory (it is never stored, so a retry after the
//! process ends would need a new session), [`NotifyError::Permanent`] becomes a
//! `delivery_failed` record upstream, [`NotifyError::Ambiguous`] (the SMTP data went
//! out and no reply came back: the message may have arrived) is neither retried nor
//! resent and becomes `delivery_unknown`, and a set-up error ([`NotifyError::is_setup`]:
//! a broken template, refused SMTP credentials) should stop the run. Reasons are short, and are scrubbed of the URL
//! before they leave this module (design.md, invariant 2). `notify` knows nothing of
//! the database, nor of metrics: it tells a [`NotifyObserver`] what it does.

mod check;
mod email;
mod error;
mod observer;
mod outbox;
#[cfg(test)]
mod proofread;
mod retry;
mod smtp;
mod template;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
mod webhook;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use check::{CampaignCheck, Channels, check_campaign, check_delivery, templates_used};
pub use email::build_email;
pub use error::{NotifyError, TemplateError};
pub use observer::{NotifyObserver, Unheard};
pub use outbox::{Outbox, forget_user as outbox_forget_user, is_message_name};
pub use retry::DeliveryRetryPolicy;
pub use smtp::{SmtpConfig, SmtpSender, TlsMode};
pub use template::{
    LocaleMatch, Rendered, SHIPPED_LOCALES, TEMPLATE_FILES, TEXT_WIDTH, Templates, template_digest, wrap_text,
};
pub use webhook::{WebhookPayload, WebhookSender, sign_webhook};

use crate::config::Settings;
use crate::domain::CampaignSpec;
use crate::domain::spec::{Channel, Delivery};
use crate::domain::{CampaignName, SessionUrl};

/// The person a message is for, as a claim read them (see [`crate::domain::Recipient`]).
pub use crate::domain::Recipient;

/// One notification: who, which link until when, for which campaign step, and how.
///
/// `Debug` is safe to log: [`SessionUrl`] redacts itself.
#[derive(Debug, Clone)]
pub struct Message {
    pub recipient: Recipient,
    pub session_url: SessionUrl,
    /// When the session stops working (UTC).
    pub expires_at: DateTime<Utc>,
    pub campaign: CampaignName,
    /// 0 for the first message, n for the n-th reminder.
    pub step: u32,
    /// This message's VERP token (`domain::bounce::VerpKey::token`), when the worker
    /// has a key: it goes into the Message-ID (`<digest+token@domain>`) and, with
    /// `delivery.return_path`, into the envelope sender, so that a bounce finds it.
    pub bounce_token: Option<String>,
    /// The campaign's delivery settings. The engine puts the template to use in
    /// `delivery.template` (the reminder template for a reminder step); a `subject`
    /// here overrides the template's subject at every step.
    pub delivery: Delivery,
}

impl Message {
    /// SHA-256 of the campaign, the user, the step and the session's expiry (ms):
    /// the same for one message across retries and restarts, different for a new
    /// session. The email's Message-ID and the webhook's delivery id come from it.
    pub(crate) fn identity(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.campaign.as_str(),
            self.recipient.user_id.as_str(),
            &self.step.to_string(),
            &self.expires_at.timestamp_millis().to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }
}

/// Which way a message left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Smtp,
    Outbox,
    Webhook,
}

impl ChannelKind {
    /// The recorded spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Smtp => "smtp",
            ChannelKind::Outbox => "outbox",
            ChannelKind::Webhook => "webhook",
        }
    }
}

/// Proof of a delivery, safe to record: it never holds the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub channel: ChannelKind,
    /// The email's Message-ID (without angle brackets); `None` for the webhook.
    pub message_id: Option<String>,
    /// What the other side said: the SMTP reply, the outbox file name, the HTTP status.
    pub detail: String,
    /// How many attempts it took (1 when the first one worked).
    pub attempts: u32,
}

/// How email leaves this process.
#[derive(Debug, Clone)]
pub enum EmailSender {
    Smtp(SmtpSender),
    Outbox(Outbox),
}

/// Every channel, the templates and the retry policy, set up once per run. The email
/// for one message is built once, so that its retries carry one Message-ID.
#[derive(Debug, Clone)]
pub struct Notifier {
    templates: Arc<Templates>,
    email: Option<EmailSender>,
    webhook: Option<WebhookSender>,
    retry: DeliveryRetryPolicy,
    observer: Arc<dyn NotifyObserver>,
}

impl Notifier {
    /// Assembles a notifier from parts; [`Notifier::from_settings`] is the usual way.
    pub fn new(
        templates: Templates,
        email: Option<EmailSender>,
        webhook: Option<WebhookSender>,
        retry: DeliveryRetryPolicy,
    ) -> Self {
        Self { templates: Arc::new(templates), email, webhook, retry, observer: Arc::new(Unheard) }
    }

    /// This notifier, telling `observer` what it does (by default nobody hears).
    #[must_use]
    pub fn observed_by(self, observer: Arc<dyn NotifyObserver>) -> Self {
        Self { observer, ..self }
    }

    /// Loads the templates from `templates_dir` and sets up the channels the settings
    /// name: SMTP when `smtp_url` is set, else the outbox when `outbox_dir` is set (both
    /// at once is an error); the webhook channel when `notify_webhook_key` is set.
    /// Must be called inside a Tokio runtime (the SMTP pool starts a task).
    ///
    /// # Errors
    /// [`NotifyError::Template`] naming the file and line of a broken template;
    /// [`NotifyError::Config`] naming the settings key that is wrong.
    pub fn from_settings(settings: &Settings, retry: DeliveryRetryPolicy) -> Result<Self, NotifyError> {
        let templates = Templates::from_settings(settings)?;
        // the same checks of the channel settings as `campaign validate` and `apply`
        Channels::from_settings(settings)?;
        let email = match (&settings.smtp_url, &settings.outbox_dir) {
            (Some(_), Some(_)) => {
                return Err(NotifyError::config("outbox_dir", "set smtp_url or outbox_dir, not both"));
            }
            (Some(url), None) => {
                let config = SmtpConfig::parse(url, settings.smtp_password.clone())?;
                Some(EmailSender::Smtp(SmtpSender::new(&config)?))
            }
            (None, Some(dir)) => Some(EmailSender::Outbox(Outbox::open(dir)?)),
            (None, None) => None,
        };
        let webhook = match &settings.notify_webhook_key {
            Some(key) => Some(WebhookSender::new(
                key.clone(),
                std::time::Duration::from_millis(settings.http_connect_timeout_ms),
                std::time::Duration::from_millis(settings.http_request_timeout_ms),
            )?),
            None => None,
        };
        Ok(Self::new(templates, email, webhook, retry))
    }

    /// The loaded templates.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The channels this notifier can send on (click-through links are the
    /// worker's to tell: [`Channels::click`] is false here).
    pub fn channels(&self) -> Channels {
        Channels { email: self.email.is_some(), webhook: self.webhook.is_some(), click: false }
    }

    /// Fails fast, before any session is opened, when this notifier cannot serve a
    /// campaign: [`check_campaign`] with this notifier's templates and channels, the
    /// check `campaign validate` and `campaign apply` make too.
    ///
    /// # Errors
    /// As [`check_campaign`].
    pub fn check_campaign(&self, spec: &CampaignSpec) -> Result<(), NotifyError> {
        check_campaign(spec, &self.templates, self.channels())
    }

    /// [`Notifier::check_campaign`] for delivery settings alone (and the reminder
    /// template, when given): [`check_delivery`].
    ///
    /// # Errors
    /// As [`check_campaign`].
    pub fn check(&self, delivery: &Delivery, reminder_template: Option<&str>) -> Result<(), NotifyError> {
        check_delivery(delivery, reminder_template, &self.templates, self.channels())
    }

    /// One attempt to deliver `msg` on its campaign's channel.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] when a retry may work, [`NotifyError::Permanent`]
    /// when it cannot, [`NotifyError::Ambiguous`] when the message may have arrived
    /// although the send failed (never to be sent again on its own),
    /// [`NotifyError::Template`] or [`NotifyError::Config`] when the set-up is wrong.
    /// No error's text contains the session URL.
    #[tracing::instrument(name = "notify", skip_all, fields(
        campaign = %msg.campaign,
        user_id = %msg.recipient.user_id,
        step = msg.step,
        channel = ?msg.delivery.channel,
    ))]
    pub async fn send(&self, msg: &Message) -> Result<Delivered, NotifyError> {
        let outgoing = self.prepare(msg)?;
        self.attempt(msg, &outgoing).await
    }

    /// [`Notifier::send`], retrying transient failures with exponential backoff and
    /// jitter within the policy's attempt and time bounds. The last error is returned
    /// when they run out (still transient: upstream may record it as such). An
    /// ambiguous failure is returned at once. An email is built once: every attempt
    /// sends the same message, with one Message-ID.
    ///
    /// # Errors
    /// As [`Notifier::send`].
    #[tracing::instrument(name = "notify", skip_all, fields(
        campaign = %msg.campaign,
        user_id = %msg.recipient.user_id,
        step = msg.step,
        channel = ?msg.delivery.channel,
    ))]
    pub async fn send_with_retry(&self, msg: &Message) -> Result<Delivered, NotifyError> {
        let outgoing = self.prepare(msg)?;
        retry::run(&self.retry, || self.attempt(msg, &outgoing)).await
    }

    /// What `msg` is, for the audit trail (see [`crate::domain::MessageDigest`]):
    /// its template's version and the SHA-256 of the message as it goes out, with
    /// the link replaced by [`crate::domain::LINK_PLACEHOLDER`] (rendered again so,
    /// not searched and replaced: the HTML body escapes the link).
    ///
    /// # Errors
    /// [`NotifyError::Template`] when it does not render (neither would the message).
    pub fn digest(&self, msg: &Message) -> Result<crate::domain::MessageDigest, NotifyError> {
        use sha2::{Digest, Sha256};
        let mut blank = msg.clone();
        blank.session_url = SessionUrl::new(crate::domain::LINK_PLACEHOLDER.to_owned());
        Ok(match msg.delivery.channel {
            Channel::Email => {
                let r = self.templates.render(&blank)?;
                let doc = serde_json::json!([r.subject, r.text.as_str(), r.html.as_str()]);
                crate::domain::MessageDigest {
                    template: Some(msg.delivery.template.clone()),
                    template_sha256: self.templates.digest(&msg.delivery.template),
                    message_sha256: hex::encode(Sha256::digest(doc.to_string().as_bytes())),
                }
            }
            Channel::Webhook => {
                let body = serde_json::to_vec(&WebhookPayload::of(&blank)).unwrap_or_default();
                crate::domain::MessageDigest {
                    template: None,
                    template_sha256: None,
                    message_sha256: hex::encode(Sha256::digest(&body)),
                }
            }
        })
    }

    /// What every attempt at `msg` sends: its channel and, for email, the message,
    /// rendered and built once. A failure here is never transient.
    fn prepare(&self, msg: &Message) -> Result<Outgoing<'_>, NotifyError> {
        let prepared = self.prepare_inner(msg);
        if let Err(e) = &prepared {
            tracing::debug!(error = %e, transient = false, "not delivered");
        }
        prepared
    }

    fn prepare_inner(&self, msg: &Message) -> Result<Outgoing<'_>, NotifyError> {
        let scrub = |e: NotifyError| e.scrubbed(&msg.session_url).without_person(&msg.recipient);
        match msg.delivery.channel {
            Channel::Email => {
                let sender = self.email.as_ref().ok_or_else(|| {
                    NotifyError::config("smtp_url", "the campaign sends email: set smtp_url (or outbox_dir)")
                })?;
                let rendered = self.templates.render(msg).map_err(|e| scrub(e.into()))?;
                if rendered.matched != LocaleMatch::Exact {
                    self.observer.locale_fallback(&msg.campaign, rendered.matched);
                }
                let email = build_email(msg, &rendered).map_err(scrub)?;
                Ok(Outgoing::Email(sender, email))
            }
            Channel::Webhook => {
                let sender = self.webhook.as_ref().ok_or_else(|| {
                    NotifyError::config("notify_webhook_key", "the webhook channel needs notify_webhook_key")
                })?;
                Ok(Outgoing::Webhook(sender))
            }
        }
    }

    async fn attempt(&self, msg: &Message, outgoing: &Outgoing<'_>) -> Result<Delivered, NotifyError> {
        let started = std::time::Instant::now();
        let channel = match outgoing {
            Outgoing::Email(EmailSender::Smtp(_), _) => "smtp",
            Outgoing::Email(EmailSender::Outbox(_), _) => "outbox",
            Outgoing::Webhook(_) => "webhook",
        };
        let result = match outgoing {
            Outgoing::Email(EmailSender::Smtp(s), email) => s.send(email).await,
            Outgoing::Email(EmailSender::Outbox(o), email) => o.write(msg, email).await,
            Outgoing::Webhook(sender) => sender.send(msg).await,
        }
        .map_err(|e| e.scrubbed(&msg.session_url).without_person(&msg.recipient));
        match &result {
            Ok(d) => tracing::debug!(detail = %d.detail, "delivered"),
            Err(e) => tracing::debug!(error = %e, transient = e.is_transient(), "not delivered"),
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(NotifyError::Transient { .. }) => "transient",
            Err(NotifyError::Permanent { .. }) => "permanent",
            Err(NotifyError::Ambiguous { .. }) => "unknown",
            Err(_) => "error",
        };
        self.observer.attempt(channel, outcome, started.elapsed());
        result
    }
}

/// One message ready to go, the same for each of its attempts.
enum Outgoing<'a> {
    /// The built email (it holds the URL; dropped with the attempt loop).
    Email(&'a EmailSender, lettre::Message),
    /// The webhook body is made per attempt (its timestamp and signature are fresh);
    /// its `X-Reverify-Delivery-Id` is the same on every attempt.
    Webhook(&'a WebhookSender),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>(_: &T) {}
    fn is_send<T: Send>(_: &T) {}

    /// The engine spawns one task per user: the notifier must be shareable and its
    /// futures must move between threads.
    #[test]
    fn notifier_and_its_futures_cross_threads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates");
        let n = Notifier::new(Templates::load(&dir).unwrap(), None, None, DeliveryRetryPolicy::none());
        is_send_sync(&n);
        let msg = template::tests_support::sample();
        is_send(&n.send(&msg));
        is_send(&n.send_with_retry(&msg));
        assert!(!format!("{msg:?}").contains("verify.example.invalid"));
    }
}
