//! The one check of "can this process serve that campaign?", made the same way by
//! `reverify campaign validate`, `reverify campaign apply` and every run
//! ([`crate::engine::Worker::run_campaign`]) before a session is opened: what a
//! run would refuse, validate and apply refuse first.
//!
//! A campaign file is checked in two steps: [`crate::domain::CampaignSpec`] parses
//! and validates what the file alone decides (types, a time zone, a cron line, an
//! `https` webhook URL), then [`check_campaign`] what depends on this process's
//! settings: the templates the campaign names exist in `templates_dir`, an email
//! campaign has a From address and a way out (`smtp_url` or `outbox_dir`), a webhook
//! campaign has a URL and a key to sign with (`notify_webhook_key`). Each error
//! names the campaign field or the setting to fix.

use crate::config::Settings;
use crate::domain::CampaignSpec;
use crate::domain::endpoint::{redact_url, require_https};
use crate::domain::spec::{Channel, Delivery};

use super::{NotifyError, SmtpConfig, Templates};

/// The channels a notifier has, or that the settings would give one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels {
    /// Email can leave: `smtp_url` or `outbox_dir` is set.
    pub email: bool,
    /// Webhooks can be signed: `notify_webhook_key` is set.
    pub webhook: bool,
    /// Click-through links can be sent: `public_url` is set.
    pub click: bool,
}

impl Channels {
    /// The channels `settings` configure, checked as [`super::Notifier::from_settings`]
    /// sets them up, but without connecting or creating anything.
    ///
    /// # Errors
    /// [`NotifyError::Config`] naming the setting: `smtp_url` and `outbox_dir` both
    /// set, or an `smtp_url` that cannot be used.
    pub fn from_settings(settings: &Settings) -> Result<Self, NotifyError> {
        let email = match (&settings.smtp_url, &settings.outbox_dir) {
            (Some(_), Some(_)) => {
                return Err(NotifyError::config("outbox_dir", "set smtp_url or outbox_dir, not both"));
            }
            (Some(url), None) => {
                SmtpConfig::parse(url, settings.smtp_password.clone())?;
                true
            }
            (None, Some(_)) => true,
            (None, None) => false,
        };
        Ok(Self { email, webhook: settings.notify_webhook_key.is_some(), click: settings.public_url.is_some() })
    }
}

impl Templates {
    /// The templates a run uses: `templates_dir`, or the built-in copies of the
    /// shipped ones when `templates_dir` is the default and does not exist (an
    /// installed binary run elsewhere). A configured directory must exist.
    ///
    /// # Errors
    /// [`super::TemplateError`] naming the directory, or the file and line of a
    /// broken template.
    pub fn from_settings(settings: &Settings) -> Result<Self, super::TemplateError> {
        let templates =
            if settings.templates_dir == Settings::default().templates_dir && !settings.templates_dir.exists() {
                tracing::info!("{} not found: using the built-in templates", settings.templates_dir.display());
                Templates::builtin()?
            } else {
                Templates::load(&settings.templates_dir)?
            };
        Ok(templates.with_brand(settings.brand.clone()))
    }
}

/// Everything [`check_campaign`] needs from the settings, loaded once for any number
/// of campaign files (`campaign validate`, `campaign apply`).
#[derive(Debug)]
pub struct CampaignCheck {
    templates: Templates,
    channels: Channels,
}

impl CampaignCheck {
    /// Loads the templates and reads the channels from `settings`, as a run would.
    ///
    /// # Errors
    /// [`NotifyError::Template`] or [`NotifyError::Config`] naming the setting; a run
    /// would fail to start the same way.
    pub fn from_settings(settings: &Settings) -> Result<Self, NotifyError> {
        Ok(Self { templates: Templates::from_settings(settings)?, channels: Channels::from_settings(settings)? })
    }

    /// [`check_campaign`] against these settings.
    ///
    /// # Errors
    /// As [`check_campaign`].
    pub fn check(&self, spec: &CampaignSpec) -> Result<(), NotifyError> {
        check_campaign(spec, &self.templates, self.channels)
    }

    /// The templates loaded from the settings.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }
}

/// The templates a campaign's messages are rendered from: the delivery's template
/// and the reminders' for an email campaign; none for a webhook campaign (its
/// payload is fixed).
pub fn templates_used(spec: &CampaignSpec) -> Vec<&str> {
    match spec.delivery.channel {
        Channel::Email => {
            let mut v = vec![spec.delivery.template.as_str()];
            if let Some(r) = spec.reminders.as_ref().filter(|r| r.template != spec.delivery.template) {
                v.push(r.template.as_str());
            }
            v
        }
        Channel::Webhook => Vec::new(),
    }
}

/// Fails, naming the campaign field or the setting, when a run could not serve
/// `spec` with these templates and channels. See the module documentation.
///
/// # Errors
/// [`NotifyError::Config`] whose key is a campaign field (`delivery.from`,
/// `delivery.template`, `reminders.template`, `delivery.webhook_url`) or a setting
/// (`smtp_url`, `notify_webhook_key`).
pub fn check_campaign(spec: &CampaignSpec, templates: &Templates, channels: Channels) -> Result<(), NotifyError> {
    check_delivery(&spec.delivery, spec.reminders.as_ref().map(|r| r.template.as_str()), templates, channels)
}

/// [`check_campaign`] for a campaign's delivery settings and its reminder template
/// (when it sends reminders): the check itself.
///
/// # Errors
/// As [`check_campaign`].
pub fn check_delivery(
    delivery: &Delivery,
    reminder_template: Option<&str>,
    templates: &Templates,
    channels: Channels,
) -> Result<(), NotifyError> {
    if delivery.link == crate::domain::spec::LinkMode::Click && !channels.click {
        return Err(NotifyError::config(
            "public_url",
            "the campaign sends click-through links (delivery.link = \"click\"): set public_url \
             (REVERIFY_PUBLIC_URL), the https address where `reverify serve` or the daemon's public_listen answers \
             /v/{token}",
        ));
    }
    match delivery.channel {
        Channel::Email => {
            // every user's fallback chain ends at the default locale: each template
            // the campaign sends must have it
            templates
                .require_locale(&delivery.template, &delivery.default_locale)
                .map_err(|e| NotifyError::config("delivery.template", e.to_string()))?;
            if let Some(t) = reminder_template {
                templates
                    .require_locale(t, &delivery.default_locale)
                    .map_err(|e| NotifyError::config("reminders.template", e.to_string()))?;
            }
            match delivery.from.as_deref() {
                None => return Err(NotifyError::config("delivery.from", "the email channel needs a From address")),
                Some(f) if f.parse::<lettre::message::Mailbox>().is_err() => {
                    return Err(NotifyError::config("delivery.from", format!("{f:?} is not a mailbox")));
                }
                Some(_) => {}
            }
            if !channels.email {
                return Err(NotifyError::config(
                    "smtp_url",
                    "the campaign sends email, and neither smtp_url nor outbox_dir is set \
                     (REVERIFY_SMTP_URL or REVERIFY_OUTBOX_DIR)",
                ));
            }
            if delivery.fallback.is_some() && !channels.webhook {
                return Err(NotifyError::config(
                    "notify_webhook_key",
                    "the campaign's fallback is the webhook channel: set notify_webhook_key \
                     (REVERIFY_NOTIFY_WEBHOOK_KEY_FILE) to sign it",
                ));
            }
        }
        Channel::Webhook => {
            let Some(url) = delivery.webhook_url.as_deref() else {
                return Err(NotifyError::config("delivery.webhook_url", "the webhook channel needs a URL"));
            };
            let parsed = url::Url::parse(url).map_err(|e| {
                NotifyError::config("delivery.webhook_url", format!("{:?} is not a URL: {e}", redact_url(url)))
            })?;
            require_https(&parsed).map_err(|m| NotifyError::config("delivery.webhook_url", m))?;
            if !channels.webhook {
                return Err(NotifyError::config(
                    "notify_webhook_key",
                    "the campaign uses the webhook channel: set notify_webhook_key \
                     (REVERIFY_NOTIFY_WEBHOOK_KEY_FILE) to sign it",
                ));
            }
        }
    }
    Ok(())
}
