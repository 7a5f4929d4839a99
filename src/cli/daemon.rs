//! `reverify daemon`: run campaigns when due, until stopped.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use reverify::engine::Worker;
use tokio_util::sync::CancellationToken;

use super::{Context, exit};

/// Options of the command (documented on the subcommand).
#[derive(Debug, Args)]
pub struct DaemonArgs {}

pub async fn run(_args: DaemonArgs, ctx: &Context) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let worker = Arc::new(Worker::from_settings(&ctx.settings, store).context("failed to set up the worker")?);
    let stop = CancellationToken::new();
    super::run::stop_on_signals(stop.clone(), None);
    // The operations endpoints, and the Baanx webhook receiver when webhook_key is set.
    let ops = match &ctx.settings.metrics_listen {
        Some(listen) => {
            let webhooks = match &ctx.settings.webhook_key {
                Some(key) => reverify::webhooks::webhook_router(worker.store.clone(), key.clone()),
                None => axum::Router::new(),
            };
            let listen = reverify::telemetry::parse_listen(listen)?;
            Some(reverify::telemetry::serve_ops_with(listen, worker.store.clone(), stop.clone(), webhooks).await?)
        }
        None => None,
    };
    // The public routes (click-through links, and the webhook when its key is set) on
    // public_listen, never on the operations listener.
    let public = match &ctx.settings.public_listen {
        Some(listen) => {
            let addr = reverify::telemetry::parse_listen(listen).context("public_listen")?;
            let (router, serving) = super::serve::public_router(ctx, &worker.store)?;
            let server = reverify::click::serve_public(addr, router, stop.clone())
                .await
                .with_context(|| format!("failed to listen on {listen} (public_listen)"))?;
            tracing::info!(addr = %server.local_addr, serving = ?serving, "public routes listening");
            Some(server)
        }
        None => None,
    };
    reverify::schedule::daemon::run(worker.clone(), stop).await?;
    if let Some(ops) = ops {
        let _ = ops.handle.await;
    }
    if let Some(public) = public {
        let _ = public.handle.await;
    }
    worker.store.close().await;
    Ok(exit::OK)
}
