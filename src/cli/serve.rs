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
/// This listener also serves /healthz, and nothing else; /readyz and /metrics are
/// served on metrics_listen when it is set (never public). Stops on SIGTERM or
/// SIGINT after the requests in flight.
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
    let stop = CancellationToken::new();
    let ops = match &ctx.settings.metrics_listen {
        Some(listen) => {
            let listen = reverify::telemetry::parse_listen(listen)?;
            Some(reverify::telemetry::serve_ops(listen, store.clone(), stop.clone()).await?)
        }
        None => None,
    };
    let server = reverify::telemetry::serve_public(args.listen, webhook_router(store.clone(), key), stop.clone())
        .await
        .with_context(|| format!("failed to listen on {} (--listen)", args.listen))?;
    let addr = server.local_addr;
    match &ops {
        Some(ops) => println!(
            "listening on http://{addr}{WEBHOOK_PATH} (and /healthz); /healthz, /readyz, /metrics on http://{}",
            ops.local_addr
        ),
        None => println!("listening on http://{addr}{WEBHOOK_PATH} (and /healthz)"),
    }
    info!(%addr, "webhook receiver listening");
    super::run::stop_on_signals(stop.clone(), None);
    server.handle.await.context("the webhook server stopped")?.context("the webhook server failed")?;
    if let Some(ops) = ops {
        let _ = ops.handle.await;
    }
    store.close().await;
    Ok(exit::OK)
}
