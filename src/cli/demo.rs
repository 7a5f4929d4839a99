//! `reverify demo`: a whole campaign on the embedded defaults, for a newcomer.
//!
//! It starts the built-in Baanx sandbox with generated users, exports them in the
//! import format and imports them into a fresh SQLite database, starts the public
//! routes (click-through links and the webhook receiver) beside the sandbox, applies
//! a demo campaign in click mode, runs it with messages written to a file outbox,
//! has three of its addresses bounce (Postmark's webhook, posted to the bounce
//! route) and follows up through the fallback channel (the sandbox's stand-in for a
//! partner's SMS gateway), and prints the status, the sandbox's own count of limit violations (which must be
//! zero) and one link to click. On a terminal (or with `--serve`) it then keeps
//! serving until Ctrl-C, so that the link can be clicked: the sandbox's session page
//! completes the verification, and its signed webhook turns the target converted.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Args;
use reverify::Settings;
use reverify::config::Secret;
use reverify::crypto::TokenCipher;
use reverify::directory::{ImportOptions, import_file};
use reverify::domain::CampaignSpec;
use reverify::engine::{Progress, Worker};
use reverify::sandbox::{Sandbox, SandboxConfig, UserSource};
use reverify::store::Store;
use tokio_util::sync::CancellationToken;

use super::{Context, exit};

/// The campaign the demo applies: `jobs/demo.toml`, compiled in so that the demo
/// works from any directory.
const DEMO_CAMPAIGN: &str = include_str!("../../jobs/demo.toml");

/// Options of the command (documented on the subcommand).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its database, users file and token key (default: a new
    /// directory under the system's temp dir, kept and printed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the emails are written, one .eml file each.
    #[arg(long, default_value = "outbox")]
    outbox: PathBuf,
    /// How many sandbox users to generate.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Start again from nothing when the directory already holds a demo, or the
    /// outbox is not empty.
    #[arg(long)]
    fresh: bool,
    /// After the run, keep the sandbox and the public routes up until Ctrl-C, so that
    /// the printed link can be clicked (default: when standard output is a terminal).
    #[arg(long, overrides_with = "no_serve")]
    serve: bool,
    /// Exit after the run, even on a terminal.
    #[arg(long)]
    no_serve: bool,
}

pub async fn run(args: DemoArgs, ctx: &Context) -> anyhow::Result<u8> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new().prefix("reverify-demo-").tempdir().context("cannot create a temp dir")?.keep(),
    };
    let dir = &dir;
    if dir.join("reverify.db").exists() {
        if !args.fresh {
            bail!("{} already holds a demo; pass --fresh to start again", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if args.outbox.exists() && std::fs::read_dir(&args.outbox).map(|mut d| d.next().is_some()).unwrap_or(false) {
        if !args.fresh {
            bail!("{} is not empty; pass --fresh to empty it, or --outbox DIR", args.outbox.display());
        }
        std::fs::remove_dir_all(&args.outbox).with_context(|| format!("cannot clear {}", args.outbox.display()))?;
    }

    // the public routes' address first: the sandbox posts its webhooks there
    let public_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the public routes")?;
    let public_url: url::Url = format!("http://{public_addr}").parse().context("the public URL")?;
    let webhook_key = Secret::new(hex::encode(rand::random::<[u8; 32]>()));

    println!("1. starting the Baanx sandbox with {} generated users", args.users);
    let webhook = reverify::sandbox::WebhookTarget {
        url: public_url.join(reverify::webhooks::WEBHOOK_PATH).context("the webhook URL")?,
        key: webhook_key.clone(),
    };
    let sandbox = Sandbox::start(SandboxConfig {
        users: UserSource::Generate(args.users),
        webhook: Some(webhook),
        ..Default::default()
    })
    .await
    .context("the sandbox did not start")?;
    let users_file = dir.join("users.csv");
    reverify::sandbox::userfile::write_users(&users_file, &sandbox.users())?;

    // A token key of the demo's own, kept beside it so that later commands can read
    // the tokens: export REVERIFY_TOKEN_KEY_FILE=demo/token.key
    let key_file = dir.join("token.key");
    let key = TokenCipher::generate_key();
    write_private(&key_file, &key)?;
    let mut settings: Settings = ctx.settings.clone();
    settings.database_url = format!("sqlite://{}", dir.join("reverify.db").display());
    settings.baanx_base_url = sandbox.base_url();
    settings.baanx_client_key = Some(Secret::new(sandbox.client_key()));
    settings.token_key = Some(Secret::new(key));
    settings.token_keys_previous = None;
    settings.smtp_url = None;
    settings.outbox_dir = Some(args.outbox.clone());
    settings.public_url = Some(public_url.clone());
    settings.webhook_key = Some(webhook_key);
    // the bounces: Postmark's webhook password, and the fallback channel's signing key
    settings.bounce_webhook_secret = Some(Secret::new(hex::encode(rand::random::<[u8; 32]>())));
    settings.notify_webhook_key = Some(Secret::new(hex::encode(rand::random::<[u8; 32]>())));

    println!("2. importing {} into {}", users_file.display(), settings.database_url);
    let store = Store::open(&settings.database_url).await?;
    let cipher = Arc::new(TokenCipher::from_secrets(settings.token_key.as_ref(), None)?);
    let report = import_file(
        &store,
        &users_file,
        &ImportOptions { format: None, strict: true, cipher: Some(cipher), actor: "demo".into(), now: Utc::now() },
    )
    .await?;
    println!("   {} users imported, {} refresh tokens encrypted", report.imported, report.tokens);

    println!("3. serving the click-through links, the webhook receiver and the bounce webhooks on {public_url}");
    let stop = CancellationToken::new();
    let bounces = reverify::engine::bounces::bounce_router_from_settings(&settings, store.clone())
        .map_err(|m| anyhow::anyhow!("bounce webhooks: {m}"))?
        .context("the demo's bounce webhook")?;
    let router = reverify::webhooks::webhook_router(
        store.clone(),
        settings.webhook_key.clone().context("the demo's webhook key")?,
    )
    .merge(reverify::click::click_router(
        store.clone(),
        Arc::new(reverify::engine::sync::baanx_api_from_settings(&settings, store.clone())?),
        super::serve::click_config(&settings),
    ))
    .merge(bounces);
    let public = reverify::click::serve_public(public_addr, router, stop.clone())
        .await
        .with_context(|| format!("cannot listen on {public_addr}"))?;

    println!("4. applying the demo campaign (click-through links; a bounced address goes by the fallback)");
    let text = with_fallback(DEMO_CAMPAIGN, &sandbox.base_url().join("_sandbox/gateway").context("the gateway URL")?);
    let spec = CampaignSpec::from_toml(&text, "demo campaign")?;
    let (_, campaign) = store.campaign_apply(&spec, &text, &ctx.actor, Utc::now()).await?;
    super::status::plan(&store, &campaign, settings.freshness(), false).await?;

    println!("5. running it");
    let mut worker = Worker::from_settings(&settings, store.clone())?;
    worker.config.actor = ctx.actor.clone();
    let progress = Arc::new(Progress::default());
    let display = super::run::show_progress(super::run::ProgressMode::Auto, spec.name.to_string(), progress.clone());
    let report = worker.run_campaign(&campaign, progress, CancellationToken::new()).await;
    display.abort();
    let report = report?;
    println!(
        "   run {} {}: {} notified, {} skipped, {} deferred, {} failed",
        report.run_id,
        report.outcome.as_str(),
        report.counts.notified,
        report.counts.skipped,
        report.counts.deferred,
        report.counts.failed
    );

    println!("6. three addresses bounce: their provider posts Postmark's bounce webhook");
    let bounce_url = public_url.join("bounces/postmark").context("the bounce URL")?;
    let secret = settings.bounce_webhook_secret.clone().context("the demo's bounce secret")?;
    for (i, to) in recipients(&args.outbox).into_iter().take(3).enumerate() {
        let status =
            reverify::sandbox::bounces::post_postmark_bounce(&bounce_url, &secret, 1000 + i as u64, &to, true).await?;
        println!("   {to}: a hard bounce, answered {status}");
    }

    println!("7. following up: the bounced users are sent a new link through the fallback channel");
    let report = worker.run_campaign(&campaign, Arc::new(Progress::default()), CancellationToken::new()).await?;
    println!(
        "   run {} {}: {} sent by the fallback; the partner's gateway (the sandbox) took {} messages",
        report.run_id,
        report.outcome.as_str(),
        report.counts.notified,
        sandbox.stats().await.gateway_messages
    );

    println!("8. status");
    let campaign = store.campaign_get(&spec.name).await?.context("the demo campaign vanished")?;
    super::status::status(&store, &campaign, false).await?;
    let stats = sandbox.stats().await;
    println!(
        "sandbox: {} sessions issued, {} limit violations, busiest second {} requests",
        stats.sessions_issued, stats.violations, stats.verification_busiest_second
    );
    let outbox = &args.outbox;
    let count = std::fs::read_dir(outbox)
        .map(|d| d.flatten().filter(|e| reverify::notify::is_message_name(&e.file_name())).count())
        .unwrap_or(0);
    println!("\n{count} messages are in {} (open one with any mail reader).", outbox.display());
    if let Some(link) = first_link(outbox, &public_url) {
        println!("One of them carries this link (a page of ours; the session is made when you press its button):");
        println!("  {link}");
    }
    println!("Explore further with the demo's settings:");
    println!("  export REVERIFY_DATABASE_URL={} REVERIFY_TOKEN_KEY_FILE={}", settings.database_url, key_file.display());
    println!("  reverify campaign status demo-reverification");
    println!("  reverify users list --state UNVERIFIED --limit 5");
    println!("  reverify users list --undeliverable");
    let serve = args.serve || (!args.no_serve && std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if serve && stats.violations == 0 {
        println!("\nServing the sandbox and the link until Ctrl-C: open the link, press the button, and complete");
        println!("the verification on the sandbox's page; `campaign status` then shows it clicked and converted.");
        // the daemon's loop: the deferred users are asked the moment their hold ends
        let following = stop.child_token();
        let daemon = tokio::spawn(reverify::schedule::daemon::run(Arc::new(worker), following.clone()));
        if let Some(plan) = store.target_follow_up_plan(campaign.campaign_id, Utc::now()).await? {
            println!("Following up meanwhile, as the daemon does: next {}", plan.describe());
        }
        let _ = tokio::signal::ctrl_c().await;
        following.cancel();
        let _ = daemon.await;
        super::status::status(&store, &campaign, false).await?;
    }
    stop.cancel();
    let _ = public.handle.await;
    store.close().await;
    sandbox.shutdown().await;
    Ok(if stats.violations == 0 { exit::OK } else { exit::FAILURE })
}

/// The demo campaign's text with `delivery.fallback` pointing at `gateway` (the
/// sandbox's stand-in for a partner's SMS gateway), before `[throttle]`.
fn with_fallback(campaign: &str, gateway: &url::Url) -> String {
    let lines = format!("fallback = \"webhook\"\nfallback_webhook_url = \"{gateway}\"\n\n[throttle]");
    campaign.replacen("\n[throttle]", &format!("\n{lines}"), 1)
}

/// The addresses the outbox's messages went to, in file name order.
fn recipients(outbox: &std::path::Path) -> Vec<reverify::domain::EmailAddress> {
    let Ok(dir) = std::fs::read_dir(outbox) else { return vec![] };
    let mut files: Vec<_> = dir.flatten().filter(|e| reverify::notify::is_message_name(&e.file_name())).collect();
    files.sort_by_key(std::fs::DirEntry::file_name);
    files
        .iter()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|m| {
            let to = m.lines().find(|l| l.starts_with("To: "))?;
            let addr = to.rsplit_once('<').map_or(&to[4..], |(_, a)| a.trim_end_matches('>'));
            reverify::domain::EmailAddress::parse(addr.trim()).ok()
        })
        .collect()
}

/// The click-through link in the first message of the outbox.
fn first_link(outbox: &std::path::Path, public_url: &url::Url) -> Option<String> {
    let prefix = format!("{}/v/", public_url.as_str().trim_end_matches('/'));
    let mut files: Vec<_> = std::fs::read_dir(outbox)
        .ok()?
        .flatten()
        .filter(|e| reverify::notify::is_message_name(&e.file_name()))
        .map(|e| e.path())
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.first()?).ok()?.replace("=\r\n", "").replace("=\n", "");
    let at = text.find(&prefix)?;
    let token: String =
        text[at + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    Some(format!("{prefix}{token}"))
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}
