//! The gauges read from the database (targets by status, halted campaigns, each
//! campaign's last success, next tick and next follow-up), set in the process's metrics; and [`StoreProbe`],
//! what the operations server asks of the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::TargetStatus;
use crate::store::campaigns::{CampaignStatus, is_halt_reason};
use crate::store::{Store, StoreError};
use crate::telemetry::server::{OpsProbe, ProbeError};
use crate::telemetry::{Metrics, global};

/// Sets the targets-by-status and halted gauges of the global [`Metrics`] from the
/// database: for every campaign, every [`TargetStatus`] (0 when it has none, so that
/// a status that empties is not left at its last value), summed over reasons.
///
/// # Errors
/// [`StoreError`] when a campaign or its counts cannot be read; gauges already set
/// keep their values.
pub async fn refresh_target_gauges(store: &Store) -> Result<(), StoreError> {
    refresh_targets(global(), store).await
}

/// [`refresh_target_gauges`], then each campaign's last success from its runs: a
/// scrape or a push shows it even when this process ran nothing (a `run --due` with
/// nothing due, a restarted daemon).
///
/// # Errors
/// As [`refresh_target_gauges`].
pub async fn refresh_gauges(store: &Store) -> Result<(), StoreError> {
    let metrics = global();
    refresh_targets(metrics, store).await?;
    for (campaign, at) in store.run_last_successes().await? {
        metrics.set_last_success(&campaign, at);
    }
    Ok(())
}

async fn refresh_targets(metrics: &Metrics, store: &Store) -> Result<(), StoreError> {
    for campaign in store.campaign_list().await? {
        // every series an alert reads exists, at 0, before its first event
        metrics.campaign_known(campaign.name.as_str());
        let mut by_status: BTreeMap<TargetStatus, i64> = TargetStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for c in store.target_counts(campaign.campaign_id).await? {
            *by_status.entry(c.status).or_default() += c.count;
        }
        for (status, n) in by_status {
            metrics.set_targets(campaign.name.as_str(), status.as_str(), n);
        }
        let halted =
            campaign.status == CampaignStatus::Paused && campaign.pause_reason.as_deref().is_some_and(is_halt_reason);
        metrics.set_campaign_halted(campaign.name.as_str(), halted);
        // the next tick and follow-up, so that an alert tells "stuck" from "waiting"
        let o = super::outlook::outlook(store, &campaign, chrono::Utc::now()).await?;
        metrics.set_campaign_next(campaign.name.as_str(), o.next_tick, o.next_follow_up.map(|p| p.at));
    }
    Ok(())
}

/// The operations server's view of a store: `/readyz` pings it, `/metrics`
/// refreshes the gauges from it ([`refresh_gauges`]).
#[derive(Debug, Clone)]
pub struct StoreProbe(pub Store);

impl StoreProbe {
    /// `store` as an [`OpsProbe`], for `telemetry::serve_ops` and `OpsStarting::ready`.
    pub fn of(store: Store) -> Arc<dyn OpsProbe> {
        Arc::new(StoreProbe(store))
    }

    /// As [`StoreProbe::of`], with the bounce mailbox's health, when one is read:
    /// `/readyz` says when it is down (and stays 200: a mailbox outage is no reason
    /// to stop serving click-through links).
    pub fn with_mailbox(store: Store, mailbox: Option<crate::bounces::MailboxHealth>) -> Arc<dyn OpsProbe> {
        match mailbox {
            Some(mailbox) => Arc::new(MailboxProbe { store: StoreProbe(store), mailbox }),
            None => Self::of(store),
        }
    }
}

/// [`StoreProbe`] and the bounce mailbox's health.
#[derive(Debug, Clone)]
struct MailboxProbe {
    store: StoreProbe,
    mailbox: crate::bounces::MailboxHealth,
}

#[async_trait::async_trait]
impl OpsProbe for MailboxProbe {
    async fn ping(&self) -> Result<(), ProbeError> {
        self.store.ping().await
    }

    async fn refresh_gauges(&self) -> Result<(), ProbeError> {
        self.store.refresh_gauges().await
    }

    fn notes(&self) -> Vec<String> {
        if self.mailbox.is_up() {
            return vec!["bounce mailbox: up".to_owned()];
        }
        let why = self.mailbox.last_error().unwrap_or_else(|| "not read yet".to_owned());
        vec![format!("bounce mailbox: down ({why}); retrying with backoff")]
    }
}

#[async_trait::async_trait]
impl OpsProbe for StoreProbe {
    async fn ping(&self) -> Result<(), ProbeError> {
        Ok(self.0.ping().await?)
    }

    async fn refresh_gauges(&self) -> Result<(), ProbeError> {
        Ok(refresh_gauges(&self.0).await?)
    }
}
