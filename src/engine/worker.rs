//! A worker: the Baanx client, the notifier and the store, built once from the
//! settings and shared by every campaign a command runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::adapters::{BaanxApi, NotifierDeliverer, baanx_from_settings};
use super::observe::Metered;
use super::{EngineConfig, EngineError, Progress, Run, RunKind, RunReport, VerificationApi};
use crate::baanx::BaanxClient;
use crate::config::Settings;
use crate::domain::{Clock, SystemClock};
use crate::engine::adapters::StoreTokenVault;
use crate::notify::{DeliveryRetryPolicy, Notifier};
use crate::store::Store;
use crate::store::campaigns::CampaignRecord;
use crate::store::group::GroupCommit;
use crate::store::runs::RunOutcome;

/// Everything a run needs that outlives one campaign.
pub struct Worker {
    pub store: Store,
    pub client: Arc<BaanxClient>,
    pub notifier: Notifier,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    /// The client's token vault, which the runs prime with what their claims read
    /// of their users' tokens. A client built anew must be built over it.
    pub vault: Arc<StoreTokenVault>,
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
        let (client, vault) = baanx_from_settings(settings, store.clone(), clock.clone())?;
        let notifier = Notifier::from_settings(settings, DeliveryRetryPolicy::default())
            .map_err(|e| EngineError::Setup(format!("notifications: {e}")))?
            .observed_by(Arc::new(Metered));
        let config = EngineConfig {
            lease: Duration::from_secs(settings.lease_seconds),
            session_expiry_margin: settings.session_expiry_margin,
            freshness: settings.freshness(),
            public_url: settings.public_url.clone(),
            rate_share: settings.rate_share(),
            verp: settings.verp_key(),
            require_approval: settings.require_approval,
            approvers: match &settings.approvers_file {
                Some(path) => Some(Arc::new(
                    super::approval::Approvers::load(path)
                        .map_err(|e| EngineError::Setup(format!("approvers_file: {e}")))?,
                )),
                None => None,
            },
            ..EngineConfig::default()
        };
        Ok(Self { store, client, notifier, clock, config, vault })
    }

    /// Runs one campaign until nothing is due or `stop` is cancelled, and counts the
    /// run in the metrics (`reverify_runs_total`, `reverify_run_duration_seconds`,
    /// and `reverify_last_success_timestamp_seconds` when it finished).
    ///
    /// # Errors
    /// [`EngineError`]: a bad stored spec, a campaign this worker cannot serve
    /// ([`crate::notify::check_campaign`]: a missing template, From address, channel
    /// setting or key), or the store failing outside a single user.
    pub async fn run_campaign(
        &self,
        campaign: &CampaignRecord,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        self.run_campaign_for_tick(campaign, None, progress, stop).await
    }

    /// As [`Worker::run_campaign`], for a scheduled tick (`Some`): the tick stays the
    /// campaign's tick in progress, resumed by the next `run --due`, until a run
    /// finishes. Every run is counted in the batch-job metrics.
    ///
    /// # Errors
    /// As [`Worker::run_campaign`].
    pub async fn run_campaign_for_tick(
        &self,
        campaign: &CampaignRecord,
        tick: Option<DateTime<Utc>>,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let kind = tick.map_or(RunKind::Manual, RunKind::Tick);
        self.run_campaign_as(campaign, kind, progress, stop).await
    }

    /// As [`Worker::run_campaign`], for a run of `kind`: by hand, a tick, or a
    /// follow-up between ticks. Every run is counted in the batch-job metrics.
    ///
    /// # Errors
    /// As [`Worker::run_campaign`].
    pub async fn run_campaign_as(
        &self,
        campaign: &CampaignRecord,
        kind: RunKind,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let started = std::time::Instant::now();
        let result = self.run_campaign_uncounted(campaign, kind, progress, stop).await;
        let outcome = result.as_ref().map_or(RunOutcome::Failed, |r| r.outcome);
        crate::telemetry::global().run_ended(
            campaign.name.as_str(),
            outcome.as_str(),
            started.elapsed(),
            self.clock.now(),
        );
        result
    }

    /// Under `require_approval`, what `campaign` lacks to run (see
    /// [`super::approval::ApprovalState::missing`]); `None` when it may run.
    ///
    /// # Errors
    /// [`EngineError::Setup`] for a stored spec that no longer parses, [`EngineError::Store`].
    pub async fn approval_missing(&self, campaign: &CampaignRecord) -> Result<Option<String>, EngineError> {
        Ok(self.approval_check(campaign).await?.err())
    }

    /// Four eyes as the database and the settings make it ([`super::approval::policy`]):
    /// `Ok(None)` when not required, the approval checked again
    /// ([`super::approval::approval_verified`]) when it is, else why not.
    ///
    /// # Errors
    /// [`EngineError::Setup`] for a stored spec that no longer parses, [`EngineError::Store`].
    pub async fn approval_check(
        &self,
        campaign: &CampaignRecord,
    ) -> Result<Result<Option<super::approval::RunApproval>, String>, EngineError> {
        let approvers = self.config.approvers.as_deref();
        let policy = match super::approval::policy(
            &self.store,
            self.config.require_approval,
            approvers.map(|a| a.text.as_str()),
        )
        .await?
        {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        if !policy.required {
            return Ok(Ok(None));
        }
        let spec = campaign.spec().map_err(|e| EngineError::Setup(e.to_string()))?;
        let templates = super::approval::template_versions(&spec, self.notifier.templates());
        let checked = super::approval::approval_verified(&self.store, campaign, &templates, approvers).await?;
        Ok(checked.map(Some))
    }

    async fn run_campaign_uncounted(
        &self,
        campaign: &CampaignRecord,
        kind: RunKind,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let spec = campaign.spec().map_err(|e| EngineError::Setup(e.to_string()))?;
        // a campaign's life: nothing targeted before starts_at, nothing sent after ends_at
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match spec.life_at(self.clock.now()) {
            crate::domain::spec::Life::Running => {}
            crate::domain::spec::Life::NotStarted => {
                return Err(EngineError::Setup(format!(
                    "campaign {} starts at {} (starts_at): nothing is targeted before then",
                    spec.name,
                    at(spec.starts_at.map(|s| s.0).unwrap_or_default())
                )));
            }
            crate::domain::spec::Life::Ended => {
                return Err(EngineError::Setup(format!(
                    "campaign {} ended at {} (ends_at): no message leaves after it; `run --due` or the daemon \
                     completes it",
                    spec.name,
                    at(spec.ends_at.map(|s| s.0).unwrap_or_default())
                )));
            }
        }
        // the check `campaign validate` and `campaign apply` make (notify::check_campaign)
        let channels = crate::notify::Channels { click: self.config.public_url.is_some(), ..self.notifier.channels() };
        crate::notify::check_campaign(&spec, self.notifier.templates(), channels)
            .map_err(|e| EngineError::Setup(format!("campaign {}: {e}", spec.name)))?;
        // four eyes: an unapproved version sends nothing, whichever command runs it
        let approval = match self.approval_check(campaign).await? {
            Ok(a) => a,
            Err(missing) => return Err(EngineError::Unapproved(missing)),
        };
        // the template versions this run renders, kept for the evidence bundle
        let templates = super::approval::template_versions(&spec, self.notifier.templates());
        self.store.template_versions_record(&templates, self.clock.now()).await?;
        let api: Arc<dyn VerificationApi> = Arc::new(BaanxApi(self.client.clone()));
        let deliverer = Arc::new(NotifierDeliverer {
            notifier: self.notifier.clone(),
            delivery: crate::domain::spec::Delivery {
                brand: spec.brand.clone(),
                zone: Some(spec.timezone.clone()),
                ..spec.delivery.clone()
            },
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
            kind,
            approval,
            vault: self.vault.clone(),
        }
        .execute(stop)
        .await
    }
}
