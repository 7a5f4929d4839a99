//! `reverify users sync`: verification states from `GET /v1/user`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use reverify::domain::{CampaignName, SystemClock};
use reverify::engine::sync::{SyncCtx, baanx_api_from_settings, sync_users};
use reverify::store::events::NewEvent;
use reverify::store::outcomes::SyncFilter;

use super::{Context, exit};

/// Refresh verification states from GET /v1/user.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only the targets of this campaign.
    #[arg(long, value_name = "NAME", value_parser = |s: &str| CampaignName::parse(s))]
    campaign: Option<CampaignName>,
    /// Only users not synced for this long (e.g. 6h).
    #[arg(long, value_name = "AFTER", value_parser = humantime::parse_duration)]
    stale: Option<Duration>,
    /// Calls in flight at once (default: the max_concurrency setting).
    #[arg(long)]
    concurrency: Option<u32>,
}

pub async fn run(args: SyncArgs, ctx: &Context) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let now = chrono::Utc::now();
    let campaign_id = match &args.campaign {
        None => None,
        Some(name) => Some(
            store
                .campaign_get(name)
                .await?
                .with_context(|| format!("no campaign named {name}; apply its file first (reverify campaign apply)"))?
                .campaign_id,
        ),
    };
    let synced_before = match args.stale {
        None => None,
        Some(d) => Some(now - chrono::Duration::from_std(d).context("--stale is too long")?),
    };
    let api = baanx_api_from_settings(&ctx.settings, store.clone()).context("failed to set up the Baanx client")?;
    let actor = ctx.actor.clone();
    let filter = SyncFilter { campaign_id, synced_before };
    let concurrency = args.concurrency.unwrap_or(ctx.settings.max_concurrency).max(1) as usize;
    let r = sync_users(SyncCtx { store: &store, api: &api, clock: &SystemClock, actor: &actor }, &filter, concurrency)
        .await?;
    let event = NewEvent {
        actor: &actor,
        kind: "users.synced",
        campaign_id,
        user_id: None,
        detail: Some(serde_json::to_value(r)?),
    };
    store.event_append(&event, chrono::Utc::now()).await?;
    super::seal(&store).await;
    println!(
        "synced {} users: {} changed state, {} targets converted, {} need consent again, {} failed",
        r.checked, r.changed, r.converted, r.consent_required, r.failed
    );
    store.close().await;
    Ok(if r.failed > 0 { exit::PARTIAL } else { exit::OK })
}
