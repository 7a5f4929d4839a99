//! The bounce sink over the store: finds the message a report is about, records
//! what it does (`store::bounces`), counts it, and pauses a campaign whose
//! hard-bounce rate crosses `[halt] bounce_rate`.
//!
//! Which keys are trusted, by intake:
//! - a VERP token (in the envelope recipient or the Message-ID) is checked with
//!   the key that made it: a token nobody made is refused (`unknown_token`);
//! - an address alone finds the latest message to it within 7 days, but only for
//!   a provider webhook that authenticated itself (Postmark, SES, SendGrid). A
//!   mailbox report must carry a token: anyone can mail the bounce mailbox, and a
//!   forged DSN naming an address must not make that address undeliverable.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::{info, warn};

use crate::bounces::{BounceSink, Recorded, SinkError};
use crate::domain::bounce::{BounceKey, BounceKind, BounceReport, BounceSource, VerpKey, token_in_plus_address};
use crate::domain::spec::CampaignSpec;
use crate::domain::{Clock, SystemClock};
use crate::store::Store;
use crate::store::bounces::{BounceMatch, BounceOutcome, BounceParams};

/// [`BounceSink`] over the store.
#[derive(Clone)]
pub struct StoreBounceSink {
    store: Store,
    verp: Option<VerpKey>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StoreBounceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBounceSink").field("verp", &self.verp.is_some()).finish_non_exhaustive()
    }
}

/// Why a report found no message.
enum Miss {
    UnknownToken,
    Unmatched,
}

impl StoreBounceSink {
    /// A sink recording into `store`, opening tokens with `verp` (`token_key`'s).
    pub fn new(store: Store, verp: Option<VerpKey>) -> Self {
        Self { store, verp, clock: Arc::new(SystemClock) }
    }

    /// This sink on `clock` (tests).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    async fn find(&self, r: &BounceReport) -> Result<Result<BounceMatch, Miss>, SinkError> {
        let mut miss = Miss::Unmatched;
        for key in &r.keys {
            let token = match key {
                BounceKey::Token(t) => Some(t.as_str()),
                BounceKey::MessageId(id) => token_in_plus_address(id),
                BounceKey::Address(a) => {
                    if r.source == BounceSource::Mailbox {
                        continue;
                    }
                    let found = self.store.bounce_find_by_address(a.as_str(), self.clock.now()).await.map_err(sink)?;
                    if let Some(m) = found {
                        return Ok(Ok(m));
                    }
                    continue;
                }
            };
            let Some(token) = token else { continue };
            let Some(message) = self.verp.as_ref().and_then(|k| k.open(token)) else {
                miss = Miss::UnknownToken;
                continue;
            };
            if let Some(m) = self.store.bounce_find_message(message).await.map_err(sink)? {
                return Ok(Ok(m));
            }
        }
        Ok(Err(miss))
    }

    /// The campaign's spec, when the message came from one that still parses.
    async fn spec_of(&self, campaign_id: Option<i64>) -> Result<Option<(String, CampaignSpec)>, SinkError> {
        let Some(id) = campaign_id else { return Ok(None) };
        let list = self.store.campaign_list().await.map_err(sink)?;
        Ok(list.into_iter().find(|c| c.campaign_id == id).and_then(|c| c.spec().ok().map(|s| (c.name.to_string(), s))))
    }

    /// Pauses the campaign when its hard-bounce rate is above `[halt] bounce_rate`
    /// (after `min_sample` messages).
    async fn judge_bounce_rate(&self, campaign_id: i64, spec: &CampaignSpec) -> Result<(), SinkError> {
        let Some(h) = spec.halt.as_ref() else { return Ok(()) };
        let Some(threshold) = h.bounce_rate else { return Ok(()) };
        let (bounced, sent) = self.store.bounce_rate_figures(campaign_id).await.map_err(sink)?;
        if sent == 0 || u64::try_from(sent).unwrap_or(0) < h.min_sample {
            return Ok(());
        }
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let rate = bounced as f64 / sent as f64;
        if rate <= threshold {
            return Ok(());
        }
        let detail = serde_json::json!({
            "failed": bounced, "sample": sent, "rate": (rate * 10_000.0).round() / 10_000.0,
            "threshold": threshold, "min_sample": h.min_sample,
        });
        let paused = self
            .store
            .campaign_pause_by_worker(&crate::store::campaigns::WorkerPauseParams {
                campaign_id,
                reason: "bounce_rate",
                detail: &detail,
                actor: "bounces",
                now: self.clock.now(),
            })
            .await
            .map_err(sink)?;
        if paused {
            warn!(campaign = %spec.name, bounced, sent, threshold, "hard-bounce rate above [halt] bounce_rate: campaign paused");
        }
        Ok(())
    }
}

fn sink(e: crate::store::StoreError) -> SinkError {
    SinkError(e.to_string())
}

#[async_trait]
impl BounceSink for StoreBounceSink {
    async fn record(&self, r: BounceReport) -> Result<Recorded, SinkError> {
        let metrics = crate::telemetry::global();
        let source = r.source.as_str();
        let matched = match self.find(&r).await? {
            Ok(m) => m,
            Err(Miss::UnknownToken) => return Ok(Recorded::UnknownToken),
            Err(Miss::Unmatched) => return Ok(Recorded::Unmatched),
        };
        let spec = self.spec_of(matched.campaign_id).await?;
        let reported = r.keys.iter().find_map(|k| match k {
            BounceKey::Address(a) => Some(a.as_str().to_owned()),
            _ => None,
        });
        let diagnostic = r.diagnostic.as_deref().map(crate::domain::bounce::scrub_diagnostic);
        let now = self.clock.now();
        let outcome = self
            .store
            .bounce_record(BounceParams {
                source: r.source,
                dedupe_id: &r.dedupe_id,
                kind: r.kind,
                matched: &matched,
                reported_address: reported.as_deref(),
                status_code: r.status_code.as_deref(),
                diagnostic: diagnostic.as_deref(),
                occurred_at: r.occurred_at.unwrap_or(now),
                fallback: spec.as_ref().is_some_and(|(_, s)| s.delivery.fallback.is_some()),
                now,
            })
            .await
            .map_err(sink)?;
        let BounceOutcome::Recorded { effective, undeliverable, fallback_queued } = outcome else {
            return Ok(Recorded::Duplicate);
        };
        let campaign = spec.as_ref().map_or("", |(name, _)| name.as_str());
        metrics.bounce_recorded(campaign, effective.as_str());
        info!(
            source,
            kind = r.kind.as_str(),
            effective = effective.as_str(),
            user_id = %matched.user_id,
            campaign,
            undeliverable,
            fallback_queued,
            "bounce recorded"
        );
        if effective == BounceKind::Hard
            && let (Some(id), Some((_, spec))) = (matched.campaign_id, spec.as_ref())
        {
            self.judge_bounce_rate(id, spec).await?;
        }
        Ok(Recorded::Applied)
    }
}

/// The provider webhooks the settings configure (`bounce_ses_topic_arns`,
/// `bounce_sendgrid_public_key`, `bounce_webhook_secret`), over a sink into `store`;
/// `None` when none is.
///
/// # Errors
/// A setting that is wrong, named (a SendGrid key that does not parse, a topic that
/// is not an ARN).
pub fn bounce_router_from_settings(settings: &crate::Settings, store: Store) -> Result<Option<axum::Router>, String> {
    let timeout = std::time::Duration::from_millis(settings.http_request_timeout_ms.min(10_000));
    let mut config = crate::bounces::BounceWebhooks::new(timeout)?;
    config.ses_topic_arns.clone_from(&settings.bounce_ses_topic_arns);
    config.sendgrid_public_key.clone_from(&settings.bounce_sendgrid_public_key);
    config.postmark_secret.clone_from(&settings.bounce_webhook_secret);
    if config.is_empty() {
        return Ok(None);
    }
    config.check()?;
    let sink: Arc<dyn BounceSink> = Arc::new(StoreBounceSink::new(store, settings.verp_key()));
    Ok(Some(crate::bounces::bounce_router(sink, config)))
}

/// The DSN mailbox the settings name (`bounce_mailbox` and its password, CA file,
/// poll and done folder); `None` when none is.
///
/// # Errors
/// The setting that is wrong, named.
pub fn mailbox_from_settings(settings: &crate::Settings) -> Result<Option<crate::bounces::MailboxConfig>, String> {
    let Some(url) = &settings.bounce_mailbox else { return Ok(None) };
    let password = settings
        .bounce_mailbox_password
        .clone()
        .ok_or_else(|| "bounce_mailbox_password: bounce_mailbox is set: give its password".to_owned())?;
    let mut config = crate::bounces::MailboxConfig::parse(url, password).map_err(|e| e.to_string())?;
    config.poll_every = settings.bounce_mailbox_poll;
    config.ca_file.clone_from(&settings.bounce_mailbox_ca_file);
    config.done_folder.clone_from(&settings.bounce_mailbox_done_folder);
    Ok(Some(config))
}

/// Starts reading the DSN mailbox the settings name into `store`, until `stop`; its
/// health (for `/readyz`) and the task. `None` without a mailbox.
///
/// # Errors
/// As [`mailbox_from_settings`], and a TLS set-up that cannot work (`ca_file`).
pub fn start_mailbox(
    settings: &crate::Settings,
    store: Store,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Option<(crate::bounces::MailboxHealth, tokio::task::JoinHandle<()>)>, String> {
    let Some(config) = mailbox_from_settings(settings)? else { return Ok(None) };
    crate::bounces::mailbox::tls_connector(&config).map_err(|e| e.to_string())?;
    let sink: Arc<dyn BounceSink> = Arc::new(StoreBounceSink::new(store, settings.verp_key()));
    let health = crate::bounces::MailboxHealth::new();
    let h = health.clone();
    info!(host = %config.host, folder = %config.folder, every = ?config.poll_every, "reading the bounce mailbox");
    let task = tokio::spawn(async move {
        crate::bounces::run_mailbox(config, sink, h, async move { stop.cancelled().await }).await;
    });
    Ok(Some((health, task)))
}
