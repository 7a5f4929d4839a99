//! A worker: the Baanx client, the notifier and the store, built once from the
//! settings and shared by every campaign a command runs.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::adapters::{BaanxApi, NotifierDeliverer};
use super::{EngineConfig, EngineError, Progress, Run, RunReport, VerificationApi};
use crate::baanx::{BaanxClient, BaanxConfig};
use crate::config::Settings;
use crate::crypto::TokenCipher;
use crate::domain::{Clock, SystemClock};
use crate::notify::{Notifier, RetryPolicy};
use crate::store::Store;
use crate::store::campaigns::CampaignRecord;
use crate::store::group::GroupCommit;
use crate::store::tokens::StoreTokenVault;

/// Everything a run needs that outlives one campaign.
pub struct Worker {
    pub store: Store,
    pub client: Arc<BaanxClient>,
    pub notifier: Notifier,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
}

impl Worker {
    /// Builds the client (with the store as its token vault) and the notifier from
    /// the settings. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`EngineError::Setup`] naming the setting that is missing or wrong.
    pub fn from_settings(settings: &Settings, store: Store) -> Result<Self, EngineError> {
        // the users in flight write through shared transactions (see store::group)
        let store = store.with_group_commit(GroupCommit::for_backend(store.backend()));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cipher = TokenCipher::from_secrets(settings.token_key.as_ref(), settings.token_keys_previous.as_ref())
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        let vault = StoreTokenVault::new(store.clone(), Arc::new(cipher), clock.clone());
        let baanx = BaanxConfig::from_settings(settings).map_err(|e| EngineError::Setup(e.to_string()))?;
        let client = BaanxClient::new(baanx, Arc::new(vault)).map_err(|e| EngineError::Setup(e.to_string()))?;
        let notifier = Notifier::from_settings(settings, RetryPolicy::default())
            .map_err(|e| EngineError::Setup(format!("notifications: {e}")))?;
        let config = EngineConfig {
            lease: Duration::from_secs(settings.lease_seconds),
            session_expiry_margin: settings.session_expiry_margin,
            public_url: settings.public_url.clone(),
            rate_share: settings.rate_share(),
            ..EngineConfig::default()
        };
        Ok(Self { store, client: Arc::new(client), notifier, clock, config })
    }

    /// Runs one campaign until nothing is due or `stop` is cancelled.
    ///
    /// # Errors
    /// [`EngineError`]: a bad stored spec, a template the campaign needs that is
    /// missing, or the store failing outside a single user.
    pub async fn run_campaign(
        &self,
        campaign: &CampaignRecord,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let spec = campaign.spec().map_err(|e| EngineError::Setup(e.to_string()))?;
        if spec.delivery.link == crate::domain::spec::LinkMode::Click && self.config.public_url.is_none() {
            return Err(EngineError::Setup(format!(
                "campaign {} sends click-through links (delivery.link = \"click\"): set public_url \
                 (REVERIFY_PUBLIC_URL), the https address where `reverify serve` or the daemon's public_listen \
                 answers /v/{{token}}",
                spec.name
            )));
        }
        self.notifier
            .check(&spec.delivery, spec.reminders.as_ref().map(|r| r.template.as_str()))
            .map_err(|e| EngineError::Setup(format!("campaign {}: {e}", spec.name)))?;
        let api: Arc<dyn VerificationApi> = Arc::new(BaanxApi(self.client.clone()));
        let deliverer = Arc::new(NotifierDeliverer {
            notifier: self.notifier.clone(),
            delivery: spec.delivery.clone(),
            reminders: spec.reminders.clone(),
        });
        Run {
            store: self.store.clone(),
            api,
            deliverer,
            clock: self.clock.clone(),
            config: self.config.clone(),
            campaign_id: campaign.campaign_id,
            spec,
            progress,
        }
        .execute(stop)
        .await
    }
}
