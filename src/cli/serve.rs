//! `reverify serve`: the Baanx webhook receiver as a process of its own.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;
use reverify::webhooks::{WEBHOOK_PATH, webhook_router};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, exit};

/// Receive Baanx kyc.status.changed webhooks on POST /webhooks/baanx, verified with
/// the webhook_key setting (REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE).
/// Stops on SIGTERM or SIGINT after the requests in flight.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub async fn run(args: ServeArgs, ctx: &Context) -> anyhow::Result<u8> {
    let key = ctx.settings.webhook_key.clone().context(
        "webhook_key is not set: set REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE to the key Baanx signs with",
    )?;
    let store = ctx.store().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {} (--listen)", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}{WEBHOOK_PATH}");
    info!(%addr, "webhook receiver listening");
    let stop = CancellationToken::new();
    super::run::stop_on_signals(stop.clone(), None);
    axum::serve(listener, webhook_router(store.clone(), key))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("the webhook server failed")?;
    store.close().await;
    Ok(exit::OK)
}
