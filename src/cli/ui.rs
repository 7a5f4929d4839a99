//! `reverify ui`: the dashboard's helpers, and the dashboard's listener for
//! `reverify serve` and the daemon.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;
use reverify::store::Store;
use reverify::telemetry::OpsServer;
use reverify::ui::{UiConfig, ui_router};
use tokio_util::sync::CancellationToken;

use super::{Context, exit};

/// The dashboard's helpers.
#[derive(Debug, Subcommand)]
pub enum UiCommand {
    /// Print an argon2id hash of a password read from standard input, for a line
    /// `name:role:HASH` of ui_users_file (roles: viewer, operator, approver).
    ///
    /// The password is the first line of standard input (the line end is not part
    /// of it), never an argument: `reverify ui hash-password < pw.txt`, or type it.
    HashPassword,
}

pub fn run(command: UiCommand) -> anyhow::Result<u8> {
    match command {
        UiCommand::HashPassword => {
            let mut input = String::new();
            std::io::stdin().take(64 * 1024).read_to_string(&mut input).context("failed to read standard input")?;
            let password = input.lines().next().unwrap_or("");
            anyhow::ensure!(!password.is_empty(), "no password on standard input (its first line is the password)");
            let hash = reverify::ui::auth::hash_password(password)
                .map_err(|e| anyhow::anyhow!("failed to hash the password: {e}"))?;
            println!("{hash}");
            Ok(exit::OK)
        }
    }
}

/// Checks the dashboard's settings when `ui_listen` is set: the users file is read
/// (a malformed line stops the command here, naming file, line and field).
///
/// # Errors
/// The settings are wrong.
pub fn config(ctx: &Context) -> anyhow::Result<Option<(std::net::SocketAddr, UiConfig)>> {
    let Some(listen) = &ctx.settings.ui_listen else { return Ok(None) };
    let addr = reverify::telemetry::parse_listen(listen)
        .map_err(|_| anyhow::anyhow!("ui_listen: {listen:?} must be HOST:PORT, [IPV6]:PORT or :PORT"))?;
    let mut config = UiConfig::from_all_settings(&ctx.settings)?;
    // shown as the page's default until the database is read (see serve)
    config.require_approval = ctx.settings.require_approval == Some(true);
    // for approvals from the page; without them the page says to use the CLI
    config.templates = match reverify::notify::Templates::from_settings(&ctx.settings) {
        Ok(t) => Some(std::sync::Arc::new(t)),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: the templates cannot be loaded; approving from the page is off");
            None
        }
    };
    Ok(Some((addr, config)))
}

/// Serves the dashboard on its own listener until `stop`.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: std::net::SocketAddr,
    mut config: UiConfig,
    store: &Store,
    stop: CancellationToken,
) -> anyhow::Result<OpsServer> {
    // four eyes as the database holds it (the settings may only turn it on)
    let db = store.setting_get(reverify::engine::approval::REQUIRE_APPROVAL).await?;
    config.require_approval |= db.as_ref().is_some_and(|s| s.value != "false");
    // approvals that need signatures cannot be made on the page
    config.approvals_signed |= db.is_some_and(|s| s.value == "signed");
    reverify::telemetry::serve_public(addr, ui_router(store.clone(), config), stop)
        .await
        .with_context(|| format!("failed to listen on {addr} (ui_listen)"))
}
