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

/// Decision: the operations listener is bound before the database is opened, so
/// that `/healthz` answers while the migrations run (a long one must not get the
/// pod killed by its liveness or startup probe) and `/readyz` answers 503 until the
/// schema is up to date. A taken port still fails the start at once.
pub async fn run(_args: DaemonArgs, ctx: &Context) -> anyhow::Result<u8> {
    let stop = CancellationToken::new();
    super::run::stop_on_signals(stop.clone(), None);
    let ops = match &ctx.settings.metrics_listen {
        Some(listen) => {
            let listen = reverify::telemetry::parse_listen(listen)?;
            Some(reverify::telemetry::serve_ops_starting(listen, stop.clone()).await?)
        }
        None => None,
    };
    let opened = async {
        let store = ctx.store().await?;
        let worker = Worker::from_settings(&ctx.settings, store).context("failed to set up the worker")?;
        anyhow::Ok(Arc::new(worker))
    }
    .await;
    let worker = match opened {
        Ok(w) => w,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    let ops = ops.map(|(server, starting)| {
        // The Baanx webhook receiver, beside the operations endpoints, when webhook_key is set.
        let webhooks = match &ctx.settings.webhook_key {
            Some(key) => reverify::webhooks::webhook_router(worker.store.clone(), key.clone()),
            None => axum::Router::new(),
        };
        starting.ready(worker.store.clone(), webhooks);
        server
    });
    reverify::schedule::daemon::run(worker.clone(), stop).await?;
    if let Some(ops) = ops {
        let _ = ops.handle.await;
    }
    worker.store.close().await;
    Ok(exit::OK)
}
