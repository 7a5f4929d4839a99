//! `reverify sandbox`: serve the Baanx simulator. The flags map one to one onto
//! `SandboxConfig` and `Faults`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
use reverify::sandbox::{
    DEMO_CLIENT_KEY, Faults, Latency, RefreshReuse, Sandbox, SandboxConfig, UserSource, WebhookTarget, userfile,
};

use super::{Context, exit};

fn duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 24h, 500ms: {e}"))
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not a fraction between 0 and 1")) }
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("{v} must be above 0")) }
}

/// `--refresh-reuse`: the modes, each with its help line, parsed into the library's type.
fn refresh_reuse() -> impl clap::builder::TypedValueParser<Value = RefreshReuse> {
    PossibleValuesParser::new(RefreshReuse::ALL.map(|m| {
        PossibleValue::new(m.as_str()).help(match m {
            RefreshReuse::Reject => "answer invalid_grant; the user's newest tokens keep working",
            RefreshReuse::RevokeFamily => {
                "answer invalid_grant, revoke the user's newest refresh token and every access \
                 token, and count a violation (refresh_reuse)"
            }
        })
    }))
    .map(|s| s.parse::<RefreshReuse>().expect("clap admits only the listed modes"))
}

/// Serve a simulator of the Baanx API on loopback, for demos and tests.
///
/// It checks the client key, bearer tokens (6 h), refresh-token rotation, the
/// x-us-env header and suspensions like the real API (--refresh-reuse chooses what
/// a rotated-away refresh token does), and enforces the per-user
/// session limits (10 a day, 3 at once, 1 h after 3 failures, 24 h after a
/// rejection), counting every request over a limit as a violation. Session URLs
/// point back at the sandbox: open one to choose how the verification ends.
/// GET /_sandbox/stats shows what it saw; see openapi/sandbox.yaml for every endpoint.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
    listen: SocketAddr,
    /// Base of session URLs when clients reach the sandbox by another address
    /// (a container, a proxy). Default: http://{listen}.
    #[arg(long, value_name = "URL")]
    public_url: Option<url::Url>,
    /// Generate this many users (ignored with --seed).
    #[arg(long, default_value_t = 100, value_name = "N")]
    users: usize,
    /// Load the users from this file instead: CSV in the import format
    /// (user_id,email,first_name,last_name,locale,timezone,region,country,
    /// verification_state,rejected_at,refresh_token,tags), or JSON Lines with the same
    /// keys when the name ends in .jsonl.
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// Generate every user UNVERIFIED and never rejected, so that all are eligible
    /// (benchmarks); ignored with --seed.
    #[arg(long)]
    all_unverified: bool,
    /// Seed of user generation (and of refresh tokens missing from --seed).
    #[arg(long, default_value_t = 1, value_name = "N")]
    user_seed: u64,
    /// Write the users (refresh tokens included) to this CSV file at start, for
    /// `reverify users import`.
    #[arg(long, value_name = "FILE")]
    export_users: Option<PathBuf>,
    /// With --export-users: also mint each user an access token (valid for
    /// --access-token-ttl) and write it with its expiry and `state_as_of` (now), as
    /// a directory that holds access tokens would export them.
    #[arg(long, requires = "export_users")]
    export_access_tokens: bool,
    /// The accepted x-client-key. Default: the baanx_client_key setting
    /// (REVERIFY_BAANX_CLIENT_KEY), else a demo key printed at start.
    #[arg(long, value_name = "KEY")]
    client_key: Option<String>,
    /// How long a session URL works.
    #[arg(long, default_value = "24h", value_parser = duration, value_name = "DURATION")]
    session_ttl: Duration,
    /// How long an access token works.
    #[arg(long, default_value = "6h", value_parser = duration, value_name = "DURATION")]
    access_token_ttl: Duration,
    /// How long a refresh token works.
    #[arg(long, default_value = "184days", value_parser = duration, value_name = "DURATION")]
    refresh_token_ttl: Duration,
    /// From a completed session (PENDING) to VERIFIED or REJECTED.
    #[arg(long, default_value = "0", value_parser = duration, value_name = "DURATION")]
    decision_delay: Duration,
    /// POST signed kyc.status.changed webhooks here, signed with the webhook_key
    /// setting (REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE).
    #[arg(long, value_name = "URL")]
    webhook_url: Option<url::Url>,
    /// Added latency per API request: 0, a duration (100ms), uniform:50ms..150ms, or
    /// exp:100ms (exponential with that mean).
    #[arg(long, default_value = "0", value_name = "LATENCY")]
    latency: Latency,
    /// Fraction of API requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = fraction, value_name = "FRACTION")]
    error_rate: f64,
    /// Fraction of API requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, value_parser = fraction, value_name = "FRACTION")]
    throttle_rate: f64,
    /// Retry-After of injected and rate-cap 429s.
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    retry_after: Duration,
    /// Fraction of API requests that hang (then 504) past any client's timeout.
    #[arg(long, default_value_t = 0.0, value_parser = fraction, value_name = "FRACTION")]
    timeout_rate: f64,
    /// How long a hung request hangs.
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION")]
    hang: Duration,
    /// Global cap on API requests per second; over it, 429 with Retry-After (not a
    /// violation).
    #[arg(long, value_parser = positive, value_name = "PER_SECOND")]
    rate_cap: Option<f64>,
    /// Seed of the random faults: the same seed and request order, the same faults.
    #[arg(long, default_value_t = 0, value_name = "N")]
    fault_seed: u64,
    /// Do not enforce the per-user session limits (benchmarks of the server only).
    #[arg(long)]
    no_limits: bool,
    /// What presenting a refresh token that was already rotated away does.
    ///
    /// OAuth refresh-token reuse detection. Either way the request answers
    /// invalid_grant and counts in refresh_token_reuses (GET /_sandbox/stats and the
    /// user's view); revoke-family also revokes the user's whole chain, as the real
    /// API may.
    #[arg(long, default_value = "reject", value_parser = refresh_reuse(), value_name = "MODE")]
    refresh_reuse: RefreshReuse,
}

pub async fn run(args: SandboxArgs, ctx: &Context) -> anyhow::Result<u8> {
    let users = match &args.seed {
        Some(path) => UserSource::Records(userfile::read_users(path)?),
        None if args.all_unverified => UserSource::Records(reverify::sandbox::users::generate_unverified(
            args.users,
            args.user_seed,
            chrono::Utc::now(),
        )),
        None => UserSource::Generate(args.users),
    };
    let client_key =
        args.client_key.clone().or_else(|| ctx.settings.baanx_client_key.as_ref().map(|k| k.expose().to_owned()));
    let webhook = match args.webhook_url {
        None => None,
        Some(url) => {
            let key = ctx.settings.webhook_key.clone().context(
                "--webhook-url needs a signing key: set REVERIFY_WEBHOOK_KEY or REVERIFY_WEBHOOK_KEY_FILE (webhook_key)",
            )?;
            Some(WebhookTarget { url, key })
        }
    };
    let config = SandboxConfig {
        listen: args.listen,
        public_url: args.public_url,
        client_key,
        users,
        seed: args.user_seed,
        session_ttl: args.session_ttl,
        access_token_ttl: args.access_token_ttl,
        refresh_token_ttl: args.refresh_token_ttl,
        decision_delay: args.decision_delay,
        webhook,
        faults: Faults {
            latency: args.latency,
            error_rate: args.error_rate,
            throttle_rate: args.throttle_rate,
            retry_after: args.retry_after,
            timeout_rate: args.timeout_rate,
            hang: args.hang,
            rate_cap: args.rate_cap,
            seed: args.fault_seed,
        },
        enforce_limits: !args.no_limits,
        refresh_reuse: args.refresh_reuse,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config).await.context("failed to start the sandbox")?;
    if let Some(path) = &args.export_users {
        let users = sandbox.users();
        if args.export_access_tokens {
            let now = chrono::Utc::now();
            let expires_at = now + chrono::Duration::from_std(args.access_token_ttl).unwrap_or_default();
            userfile::write_users_with_access(path, &users, now, |u| {
                sandbox.mint_access_token(&u.user_id).ok().map(|t| (t, expires_at))
            })?;
        } else {
            userfile::write_users(path, &users)?;
        }
        println!("exported {} users to {}", users.len(), path.display());
    }
    println!("sandbox listening on {}", sandbox.base_url());
    if sandbox.client_key() == DEMO_CLIENT_KEY {
        println!("client key (demo): {}", sandbox.client_key());
    } else {
        println!("client key: as configured");
    }
    println!("stats: {}", sandbox.base_url().join("/_sandbox/stats").expect("valid path"));
    shutdown_signal().await;
    println!("shutting down");
    let stats = sandbox.stats().await;
    sandbox.shutdown().await;
    println!(
        "sessions issued: {}, violations: {}, 429s sent: {}",
        stats.sessions_issued, stats.violations, stats.too_many_requests.total
    );
    Ok(exit::OK)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn parse(args: &[&str]) -> Result<SandboxArgs, clap::Error> {
        let cli = Cli::try_parse_from(["reverify", "sandbox"].iter().chain(args))?;
        match cli.command {
            crate::cli::Command::Sandbox(a) => Ok(*a),
            other => panic!("not the sandbox command: {other:?}"),
        }
    }

    #[test]
    fn refresh_reuse_defaults_to_reject_and_takes_both_modes() {
        assert_eq!(parse(&[]).unwrap().refresh_reuse, RefreshReuse::Reject);
        assert_eq!(parse(&["--refresh-reuse", "reject"]).unwrap().refresh_reuse, RefreshReuse::Reject);
        assert_eq!(parse(&["--refresh-reuse", "revoke-family"]).unwrap().refresh_reuse, RefreshReuse::RevokeFamily);
        let err = parse(&["--refresh-reuse", "revoke"]).unwrap_err().to_string();
        assert!(err.contains("--refresh-reuse") && err.contains("revoke-family"), "{err}");
    }
}
