//! `reverify daemon`: run campaigns when due, until stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use reverify::engine::Worker;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, exit};

/// Options of the command (documented on the subcommand).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Also receive Baanx webhooks (POST /webhooks/baanx, and /healthz) on this
    /// address, the public one; needs webhook_key. /readyz and /metrics stay on
    /// metrics_listen.
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// Take campaigns only at their schedule's ticks: users a rule held back wait
    /// for the next tick instead of being followed up when the hold ends.
    #[arg(long)]
    no_follow_up: bool,
    /// The longest the daemon sleeps before it reads the campaigns again (new
    /// applies, pauses, resumes, approvals). It also wakes at every campaign's next
    /// tick, next follow-up and end.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    poll: std::time::Duration,
}

/// Decision: the operations listener is bound before the database is opened, so
/// that `/healthz` answers while the migrations run (a long one must not get the
/// pod killed by its liveness or startup probe) and `/readyz` answers 503 until the
/// schema is up to date. A taken port still fails the start at once. The Baanx
/// webhook receiver has a listener of its own (`--webhook-listen`), never the
/// operations one.
pub async fn run(args: DaemonArgs, ctx: &Context) -> anyhow::Result<u8> {
    let webhook_key = match (args.webhook_listen, &ctx.settings.webhook_key) {
        (Some(_), None) => anyhow::bail!(
            "--webhook-listen needs webhook_key: set REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE to the key \
             Baanx signs with"
        ),
        (Some(_), Some(key)) => Some(key.clone()),
        (None, Some(_)) => {
            if ctx.settings.public_listen.is_none() {
                warn!(
                    "webhook_key is set but neither --webhook-listen nor public_listen is: this daemon receives no \
                     Baanx webhooks"
                );
            }
            None
        }
        (None, None) => None,
    };
    // a malformed users file stops the daemon before anything starts
    let ui = super::ui::config(ctx)?;
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
        let approvers = super::approve::approvers(ctx)?;
        super::approve::check_policy(ctx, &store, approvers.as_ref()).await?;
        let mut worker = Worker::from_settings(&ctx.settings, store).context("failed to set up the worker")?;
        worker.config.actor = ctx.actor.clone();
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
    // the DSN mailbox, when bounce_mailbox is set
    let mailbox = match reverify::engine::bounces::start_mailbox(&ctx.settings, worker.store.clone(), stop.clone()) {
        Ok(m) => m,
        Err(m) => {
            stop.cancel();
            anyhow::bail!("the bounce mailbox: {m}");
        }
    };
    let health = mailbox.as_ref().map(|(h, _)| h.clone());
    let ops = ops.map(|(server, starting)| {
        starting.ready(
            reverify::engine::gauges::StoreProbe::with_mailbox(worker.store.clone(), health),
            axum::Router::new(),
        );
        server
    });
    let webhooks = match (args.webhook_listen, webhook_key) {
        (Some(listen), Some(key)) => {
            let routes = reverify::webhooks::webhook_router(worker.store.clone(), key);
            Some(
                reverify::telemetry::serve_public(listen, routes, stop.clone())
                    .await
                    .with_context(|| format!("failed to listen on {listen} (--webhook-listen)"))?,
            )
        }
        _ => None,
    };
    // The public routes (click-through links, and the webhook when its key is set) on
    // public_listen, never on the operations listener.
    let public = match &ctx.settings.public_listen {
        Some(listen) => {
            let addr = reverify::telemetry::parse_listen(listen).context("public_listen")?;
            let (router, serving) = super::serve::public_router(ctx, &worker.store)?;
            let server = reverify::telemetry::serve_public(addr, router, stop.clone())
                .await
                .with_context(|| format!("failed to listen on {listen} (public_listen)"))?;
            tracing::info!(addr = %server.local_addr, serving = ?serving, "public routes listening");
            Some(server)
        }
        None => None,
    };
    // the dashboard on ui_listen, its own listener
    let dashboard = match ui {
        Some((addr, config)) => {
            let server = super::ui::serve(addr, config, &worker.store, stop.clone()).await?;
            tracing::info!(addr = %server.local_addr, "dashboard listening");
            Some(server)
        }
        None => None,
    };
    let opts = reverify::schedule::daemon::DaemonOptions {
        poll: args.poll.max(std::time::Duration::from_millis(100)),
        follow_up: !args.no_follow_up,
    };
    reverify::schedule::daemon::run_with(worker.clone(), stop, opts).await?;
    for server in [ops, webhooks, public, dashboard].into_iter().flatten() {
        let _ = server.handle.await;
    }
    if let Some((_, task)) = mailbox {
        let _ = task.await;
    }
    worker.store.close().await;
    Ok(exit::OK)
}
