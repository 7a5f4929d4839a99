//! The production side of the engine's ports: the Baanx client and the notifier.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::debug;

use super::EngineError;
use super::observe::Metered;
use super::ports::{ApiFailure, ApiUser, Deliverer, DeliveryFailure, Outgoing, Pacer, VerificationApi};
use crate::baanx::{BaanxClient, BaanxConfig, BaanxError};
use crate::config::Settings;
use crate::crypto::{CryptoError, TokenCipher};
use crate::domain::Clock;
use crate::domain::spec::{Delivery, Reminders};
use crate::domain::{SessionUrl, TargetReason, VerificationState};
use crate::notify::{Message, Notifier};
use crate::store::Store;

mod vault;

pub use vault::StoreTokenVault;

/// The Baanx client and its token vault over `store`, from the settings: the one
/// place they are built, for a worker's runs ([`super::Worker::from_settings`]) and
/// for the client alone ([`super::sync::baanx_api_from_settings`]). The client
/// reports to [`Metered`]; the vault is returned so that a run can prime it with
/// what its claims read of the users' tokens.
///
/// # Errors
/// [`EngineError::Setup`] naming the setting that is missing or wrong.
pub fn baanx_from_settings(
    settings: &Settings,
    store: Store,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<BaanxClient>, Arc<StoreTokenVault>), EngineError> {
    let cipher = TokenCipher::from_secrets(settings.token_key.as_ref(), settings.token_keys_previous.as_ref())
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    let vault = Arc::new(StoreTokenVault::new(store, Arc::new(cipher), clock));
    let mut cfg = BaanxConfig::from_settings(settings).map_err(|e| EngineError::Setup(e.to_string()))?;
    cfg.observer = Arc::new(Metered);
    let client = BaanxClient::new(cfg, vault.clone()).map_err(|e| EngineError::Setup(e.to_string()))?;
    Ok((Arc::new(client), vault))
}

/// [`VerificationApi`] over the Baanx client.
#[derive(Debug, Clone)]
pub struct BaanxApi(pub Arc<BaanxClient>);

/// Maps the client's classified error onto what the engine records. Only answers
/// that prove no session was created are "definite" refusals (consent, 401, 403,
/// 429, other 4xx); a 5xx, a timeout or an unreadable answer may hide one.
fn to_failure(e: BaanxError) -> ApiFailure {
    match e {
        BaanxError::Vault { source, .. } => vault_failure(source.as_ref()),
        BaanxError::ConsentRequired { .. } => ApiFailure::ConsentRequired,
        BaanxError::Forbidden { message, .. } => ApiFailure::Forbidden(message),
        BaanxError::RateLimited { retry_after, .. } => ApiFailure::RateLimited { retry_after },
        BaanxError::SessionLimit { reason, .. } => {
            ApiFailure::UserLimited { reason: reason.map_or(TargetReason::ApiSessionLimit, TargetReason::from) }
        }
        e @ (BaanxError::ClientRefused { .. } | BaanxError::Config { .. }) => ApiFailure::Fatal(e.to_string()),
        BaanxError::Unauthorized { .. } => ApiFailure::Refused("401 after a fresh access token".into()),
        BaanxError::UnexpectedStatus { status, .. } if status.is_client_error() => {
            ApiFailure::Refused(format!("status {status}"))
        }
        BaanxError::GaveUp { last, .. } => match *last {
            BaanxError::RateLimited { retry_after, .. } => ApiFailure::RateLimited { retry_after },
            other => ApiFailure::Unavailable(other.to_string()),
        },
        other => ApiFailure::Unavailable(other.to_string()),
    }
}

/// A refresh token that cannot be read. Decision: a token sealed under a key that is
/// neither `token_key` nor in `token_keys_previous` means the key setting is wrong,
/// and every user under that key would fail alike: the run stops with the message
/// that names the key id. One row that does not open under a known key was tampered
/// with or moved: that user alone is failed. Anything else (the store) is transient.
fn vault_failure(source: &(dyn std::error::Error + Send + Sync + 'static)) -> ApiFailure {
    match source.downcast_ref::<CryptoError>() {
        Some(e @ CryptoError::UnknownKey { .. }) => {
            ApiFailure::Fatal(format!("{e}: check token_key and token_keys_previous"))
        }
        Some(CryptoError::Tampered { .. }) => ApiFailure::Refused("the stored refresh token does not decrypt".into()),
        _ => ApiFailure::Unavailable(format!("token vault: {source}")),
    }
}

#[async_trait]
impl VerificationApi for BaanxApi {
    async fn fresh_state(&self, user: &ApiUser, pace: Option<&dyn Pacer>) -> Result<VerificationState, ApiFailure> {
        self.0.get_user_paced(&user.user_id, user.region, pace).await.map(|p| p.verification_state).map_err(to_failure)
    }

    async fn start_session(&self, user: &ApiUser, pace: Option<&dyn Pacer>) -> Result<SessionUrl, ApiFailure> {
        self.0.start_verification_paced(&user.user_id, user.region, pace).await.map_err(to_failure)
    }
}

/// [`Deliverer`] over the notifier, for one campaign's delivery settings.
#[derive(Debug, Clone)]
pub struct NotifierDeliverer {
    pub notifier: Notifier,
    pub delivery: Delivery,
    pub reminders: Option<Reminders>,
}

#[async_trait]
impl Deliverer for NotifierDeliverer {
    async fn deliver(&self, m: Outgoing<'_>) -> Result<Option<crate::domain::MessageDigest>, DeliveryFailure> {
        let step = u32::try_from(m.step).unwrap_or(0);
        let mut delivery = self.delivery.for_step(step, self.reminders.as_ref());
        if m.fallback {
            // the user's email bounced: the partner's SMS or push gateway instead
            delivery.channel = crate::domain::spec::Channel::Webhook;
            delivery.webhook_url = delivery.fallback_webhook_url.clone();
        }
        // the claim parsed the user, and the name is the run's CampaignName: taken as they are
        let message = Message {
            recipient: m.recipient.clone(),
            session_url: m.url,
            bounce_token: m.bounce_token,
            expires_at: m.expires_at,
            campaign: m.campaign.clone(),
            step,
            delivery,
        };
        // what goes out, hashed without its link, before the link is sent
        let digest = self.notifier.digest(&message).ok();
        match self.notifier.send_with_retry(&message).await {
            Ok(d) => {
                debug!(channel = d.channel.as_str(), attempts = d.attempts, "delivered");
                Ok(digest)
            }
            Err(e) if e.is_setup() => Err(DeliveryFailure::Setup(e.reason())),
            Err(e) if e.is_ambiguous() => Err(DeliveryFailure::Ambiguous(e.reason())),
            Err(e) if e.is_transient() => Err(DeliveryFailure::GaveUp(e.reason())),
            Err(e) => Err(DeliveryFailure::Permanent(e.reason())),
        }
    }
}
