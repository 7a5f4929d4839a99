//! `reverify serve`: the public routes as a process of their own: the Baanx webhook
//! receiver and the click-through links.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use clap::Args;
use reverify::click::{ClickConfig, LINK_PATH, click_router};
use reverify::engine::gauges::StoreProbe;
use reverify::store::sessions::SessionLife;
use reverify::webhooks::{WEBHOOK_PATH, webhook_router};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, exit};

/// Serve the public routes: Baanx kyc.status.changed webhooks on POST
/// /webhooks/baanx (when webhook_key is set: REVERIFY_WEBHOOK_KEY or
/// REVERIFY_WEBHOOK_KEY_FILE), click-through links on GET and POST /v/{token}
/// (when the Baanx client is configured: baanx_client_key and token_key), the mail
/// providers' bounce webhooks on POST /bounces/ses, /bounces/sendgrid and
/// /bounces/postmark (each when its setting is: bounce_ses_topic_arns,
/// bounce_sendgrid_public_key, bounce_webhook_secret), plus /healthz. With
/// bounce_mailbox set, the DSN mailbox is read too. /readyz and /metrics are served on metrics_listen only, never here.
/// With ui_listen set, the dashboard is served there (its own listener; with no
/// public route to serve, the dashboard alone). Stops on SIGTERM or SIGINT after
/// the requests in flight.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// The bounce webhooks' paths, as the start line shows them.
pub const BOUNCES_PATH: &str = "/bounces/{ses,sendgrid,postmark}";

/// The click routes' settings from the worker's.
pub fn click_config(settings: &reverify::Settings) -> ClickConfig {
    ClickConfig {
        life: SessionLife { ttl: std::time::Duration::from_secs(24 * 3600), margin: settings.session_expiry_margin },
        trusted_proxies: reverify::domain::proxies::TrustedProxies::new(settings.trusted_proxies.clone()),
        freshness: settings.freshness(),
        ..ClickConfig::default()
    }
}

/// The public router: the webhook when its key is set and the click routes when the
/// Baanx client can be built ([`serve_public`] adds `/healthz`); what it serves, for
/// the start line.
///
/// # Errors
/// When neither can be served.
pub fn public_router(ctx: &Context, store: &reverify::store::Store) -> anyhow::Result<(Router, Vec<&'static str>)> {
    // (`/healthz` is added by the server)
    let mut router = Router::new();
    let mut serving = Vec::new();
    if let Some(key) = &ctx.settings.webhook_key {
        router = router.merge(webhook_router(store.clone(), key.clone()));
        serving.push(WEBHOOK_PATH);
    }
    if let Some(bounces) = reverify::engine::bounces::bounce_router_from_settings(&ctx.settings, store.clone())
        .map_err(|m| anyhow::anyhow!("bounce webhooks: {m}"))?
    {
        router = router.merge(bounces);
        serving.push(BOUNCES_PATH);
    }
    match reverify::engine::sync::baanx_api_from_settings(&ctx.settings, store.clone()) {
        Ok(api) => {
            router = router.merge(click_router(store.clone(), Arc::new(api), click_config(&ctx.settings)));
            serving.push(LINK_PATH);
        }
        Err(e) if serving.is_empty() => {
            anyhow::bail!(
                "nothing to serve: set webhook_key (REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE) for the Baanx \
                 webhook, a bounce webhook setting (bounce_webhook_secret, bounce_sendgrid_public_key, \
                 bounce_ses_topic_arns), or the Baanx client settings for click-through links ({e})"
            )
        }
        Err(e) => info!(reason = %e, "click-through links are not served"),
    }
    Ok((router, serving))
}

/// How often `serve` seals the audit events its routes wrote.
const SEAL_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(args: ServeArgs, ctx: &Context) -> anyhow::Result<u8> {
    // a malformed users file stops the command before anything listens
    let ui = super::ui::config(ctx)?;
    let store = ctx.store().await?;
    // with the dashboard on, a server with no public route serves the dashboard alone
    let public = match public_router(ctx, &store) {
        Ok(p) => Some(p),
        Err(e) if ui.is_some() || ctx.settings.bounce_mailbox.is_some() => {
            info!(reason = %e, "no public route to serve");
            None
        }
        Err(e) => return Err(e),
    };
    let stop = CancellationToken::new();
    // the DSN mailbox, when bounce_mailbox is set (several readers are safe: a report
    // counts once)
    let mailbox = reverify::engine::bounces::start_mailbox(&ctx.settings, store.clone(), stop.clone())
        .map_err(|m| anyhow::anyhow!("the bounce mailbox: {m}"))?;
    let ops = match &ctx.settings.metrics_listen {
        Some(listen) => {
            let listen = reverify::telemetry::parse_listen(listen)?;
            let probe = StoreProbe::with_mailbox(store.clone(), mailbox.as_ref().map(|(h, _)| h.clone()));
            Some(reverify::telemetry::serve_ops(listen, probe, stop.clone()).await?)
        }
        None => None,
    };
    let dashboard = match ui {
        Some((addr, config)) => Some(super::ui::serve(addr, config, &store, stop.clone()).await?),
        None => None,
    };
    let mut lines = Vec::new();
    let server = match public {
        Some((router, serving)) => {
            let server = reverify::telemetry::serve_public(args.listen, router, stop.clone())
                .await
                .with_context(|| format!("failed to listen on {} (--listen)", args.listen))?;
            let addr = server.local_addr;
            let routes: Vec<String> = serving.iter().map(|p| format!("http://{addr}{p}")).collect();
            lines.push(format!("listening on {} (and /healthz)", routes.join(", ")));
            if serving.contains(&WEBHOOK_PATH) {
                info!(%addr, "webhook receiver listening");
            }
            if serving.contains(&LINK_PATH) {
                info!(%addr, "click-through links listening");
            }
            Some(server)
        }
        None => None,
    };
    if let Some(ops) = &ops {
        lines.push(format!("/healthz, /readyz, /metrics on http://{}", ops.local_addr));
    }
    if let Some(d) = &dashboard {
        info!(addr = %d.local_addr, "dashboard listening");
        lines.push(format!("dashboard on http://{}/", d.local_addr));
    }
    if mailbox.is_some() {
        lines.push("reading the bounce mailbox".to_owned());
    }
    println!("{}", lines.join("; "));
    super::run::stop_on_signals(stop.clone(), None);
    // the events the routes write (webhooks, clicks, the dashboard's actions) join the
    // audit chain while serve runs, not only at the next command that seals
    let sealer = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SEAL_EVERY) => super::seal(&store).await,
                }
            }
        }
    });
    if let Some(server) = server {
        server.handle.await.context("the public server stopped")?.context("the public server failed")?;
    } else {
        stop.cancelled().await;
    }
    for s in [ops, dashboard].into_iter().flatten() {
        let _ = s.handle.await;
    }
    if let Some((_, task)) = mailbox {
        let _ = task.await;
    }
    let _ = sealer.await;
    // and what the last requests wrote, before the store closes
    super::seal(&store).await;
    store.close().await;
    Ok(exit::OK)
}
