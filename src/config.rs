//! Settings: one struct, read from an optional TOML file and overlaid by
//! `REVERIFY_*` environment variables.
//!
//! Secrets (the Baanx client key, the token encryption key, the SMTP password, the
//! webhook keys) are never read from the TOML file or the command line: only from
//! an environment variable or from the file another variable names (`REVERIFY_X_FILE`,
//! or `x_file` in the TOML), the way Kubernetes mounts a Secret, or else from the
//! systemd credential of the same name (`$CREDENTIALS_DIRECTORY/x`, handed over by
//! `LoadCredential=x:PATH`). They are held in [`Secret`], whose `Debug` prints
//! nothing of them. A secret that is set but empty is an error, and the webhook
//! keys need at least [`MIN_WEBHOOK_KEY_BYTES`].
//!
//! Decision: systemd credentials are read by name from `$CREDENTIALS_DIRECTORY`,
//! rather than through `REVERIFY_X_FILE=%d/x` in the unit: `%d` needs systemd 251,
//! while `LoadCredential=` and `$CREDENTIALS_DIRECTORY` work since 247 (Debian 11,
//! Ubuntu 22.04 ship 247 and 249). An explicit `REVERIFY_X`, `REVERIFY_X_FILE` or
//! `x_file` still wins.
//!
//! `database_url` holds a password, so it may come from a file too
//! (`REVERIFY_DATABASE_URL_FILE`, or `database_url_file` in the TOML). Every URL is
//! shown with its credentials masked ([`redact_url`]), in errors and in `Debug`.

pub mod files;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::endpoint::{redact_url, require_https};

/// The production API.
pub const DEFAULT_BAANX_BASE_URL: &str = "https://api.baanx.com";
/// The embedded default database, created when missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://reverify.db";
/// The shortest `webhook_key` and `notify_webhook_key` accepted: an HMAC-SHA256 key
/// shorter than the hash gives away strength (`reverify keygen` prints 44 bytes).
pub const MIN_WEBHOOK_KEY_BYTES: usize = 32;

/// A secret string; `Debug` shows `[REDACTED]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(SecretString::from(s.into()))
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// Why the settings could not be loaded. Each names the key (and the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for Kubernetes and log shippers).
    Json,
}

/// Everything reverify can be told, with its default. The README's configuration
/// reference and `reverify.example.toml` list the same keys. `Debug` masks the
/// secrets and the credentials in every URL.
#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub baanx_base_url: url::Url,
    pub baanx_client_key: Option<Secret>,
    /// 32 bytes, base64: encrypts refresh tokens at rest.
    pub token_key: Option<Secret>,
    /// Earlier token keys (comma-separated base64), still accepted for reading until
    /// `reverify users rekey` has moved every token to `token_key`.
    pub token_keys_previous: Option<Secret>,
    pub smtp_url: Option<String>,
    pub smtp_password: Option<Secret>,
    pub outbox_dir: Option<PathBuf>,
    /// Verifies incoming Baanx `kyc.status.changed` webhooks.
    pub webhook_key: Option<Secret>,
    /// Signs the webhook notification channel's POSTs.
    pub notify_webhook_key: Option<Secret>,
    pub jobs_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub http_connect_timeout_ms: u64,
    pub http_request_timeout_ms: u64,
    /// The worker's total request rate to Baanx, per region (requests per second).
    pub requests_per_second: f64,
    pub burst: u32,
    /// The most requests in flight at once, over all campaigns.
    pub max_concurrency: u32,
    pub lease_seconds: u64,
    /// Added to every session's life in the ledger, for clock skew with the API
    /// (`session_expiry_margin`, a duration such as `5m`, default 5 minutes, at most
    /// 1 hour): a user's slot frees no earlier than the API frees it.
    pub session_expiry_margin: std::time::Duration,
    /// `fresh_state_max_age`: a user whose state was confirmed (a fresh-state call,
    /// a signed webhook, `users sync`, an import) within it is not asked
    /// `GET /v1/user` again before a session. `None`: `6h` when `webhook_key` is set
    /// and the feed is healthy, else `0s` (always ask). A campaign's
    /// `[audience] fresh_state_max_age` overrides it.
    pub fresh_state_max_age: Option<std::time::Duration>,
    /// `webhook_feed_max_silence` (default `24h`): the webhook feed is healthy while a
    /// signed webhook was accepted, or a `users sync` finished, within it.
    pub webhook_feed_max_silence: std::time::Duration,
    /// How many workers run the same campaigns at once against one database
    /// (`workers`, default 1). Each worker takes `1/workers` of `requests_per_second`,
    /// of `burst` and of every campaign's `throttle.requests_per_second`, so that the
    /// configured rates are totals over the fleet (README, "Running several workers").
    pub workers: u32,
    pub log_format: LogFormat,
    pub log_level: String,
    pub metrics_listen: Option<String>,
    pub metrics_push_url: Option<String>,
    /// The public base of click-through links (`https://verify.example.com`): each
    /// message of a `delivery.link = "click"` campaign carries `{public_url}/v/{token}`.
    pub public_url: Option<url::Url>,
    /// Where the daemon serves the public click routes (`GET`/`POST /v/{token}`),
    /// never on the ops listener.
    pub public_listen: Option<String>,
    /// Where `reverify serve` and the daemon serve the dashboard (`HOST:PORT`);
    /// never the public or the operations listener.
    pub ui_listen: Option<String>,
    /// The dashboard's users: `name:role:argon2-hash` per line.
    pub ui_users_file: Option<PathBuf>,
    /// A header an authenticating proxy sets to the person's name; read only when set,
    /// and only from a peer in `ui_trusted_proxies`.
    pub ui_trusted_user_header: Option<String>,
    /// The proxies the dashboard believes (`ui_trusted_proxies`, CIDRs, default:
    /// `trusted_proxies`): only from these peers is `ui_trusted_user_header` read, and
    /// `X-Forwarded-For` taken as the client's address for the login limit.
    pub ui_trusted_proxies: Vec<ipnet::IpNet>,
    /// The proxies the public listener believes (`trusted_proxies`, CIDRs, default
    /// none): only from these peers does `X-Forwarded-For` name the client, for the
    /// click page's per-address limit.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Four eyes (`require_approval`): `Some(true)` turns it on for this process;
    /// `Some(false)` asks for it off, which the database's own setting overrules
    /// (an error when the database has it on); `None`: as the database says.
    pub require_approval: Option<bool>,
    /// Who may apply and approve (`approvers_file`, OpenSSH `allowed_signers`):
    /// when set, `campaign apply` and `campaign approve` need an SSH signature
    /// (namespace `reverify`) by a key listed there, and the recorded actor is the
    /// principal the key proves.
    pub approvers_file: Option<PathBuf>,
    /// Whether the dashboard's Approve button works (`ui_approvals`, default true).
    pub ui_approvals: bool,
    /// Keys every audit chain link (`audit_key`, a secret of at least 32 bytes):
    /// without it, whoever can write the database can recompute the chain.
    pub audit_key: Option<Secret>,
    /// Where each new chain head goes, outside the database (`audit_anchor`):
    /// `file:///PATH` (an append-only file of JSON lines) or `syslog`.
    pub audit_anchor: Option<String>,
    /// Signs evidence bundles (`evidence_signing_key`, a secret: an OpenSSH
    /// private key, Ed25519 or another type `ssh-keygen` makes, not encrypted).
    pub evidence_signing_key: Option<Secret>,
    /// `[brand]`: who every campaign's messages are from (a campaign's own
    /// `[brand]` overrides it field by field); none by default.
    pub brand: Option<crate::domain::spec::Brand>,
    /// Postmark's bounce webhook password (HTTP Basic auth, any user name):
    /// mounts `POST /bounces/postmark`.
    pub bounce_webhook_secret: Option<Secret>,
    /// SendGrid's Event Webhook verification key (base64 DER, from SendGrid's
    /// settings): mounts `POST /bounces/sendgrid`.
    pub bounce_sendgrid_public_key: Option<String>,
    /// The SNS topics whose SES notifications are accepted: mounts
    /// `POST /bounces/ses`. A valid SNS signature only proves SNS sent it.
    pub bounce_ses_topic_arns: Vec<String>,
    /// `imaps://user@host[:port]/INBOX`: the mailbox DSNs and ARF reports arrive in.
    pub bounce_mailbox: Option<String>,
    pub bounce_mailbox_password: Option<Secret>,
    /// A CA certificate (PEM) to trust for the mailbox's server, beside the system's.
    pub bounce_mailbox_ca_file: Option<PathBuf>,
    /// How often the mailbox is read (default 60s).
    pub bounce_mailbox_poll: std::time::Duration,
    /// Where processed messages are moved (absent: they are flagged and stay).
    pub bounce_mailbox_done_folder: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(redact_url);
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("baanx_base_url", &redact_url(self.baanx_base_url.as_str()))
            .field("baanx_client_key", &self.baanx_client_key)
            .field("token_key", &self.token_key)
            .field("token_keys_previous", &self.token_keys_previous)
            .field("smtp_url", &url(&self.smtp_url))
            .field("smtp_password", &self.smtp_password)
            .field("outbox_dir", &self.outbox_dir)
            .field("webhook_key", &self.webhook_key)
            .field("notify_webhook_key", &self.notify_webhook_key)
            .field("jobs_dir", &self.jobs_dir)
            .field("templates_dir", &self.templates_dir)
            .field("http_connect_timeout_ms", &self.http_connect_timeout_ms)
            .field("http_request_timeout_ms", &self.http_request_timeout_ms)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("max_concurrency", &self.max_concurrency)
            .field("lease_seconds", &self.lease_seconds)
            .field("session_expiry_margin", &self.session_expiry_margin)
            .field("fresh_state_max_age", &self.fresh_state_max_age)
            .field("webhook_feed_max_silence", &self.webhook_feed_max_silence)
            .field("workers", &self.workers)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("metrics_listen", &self.metrics_listen)
            .field("metrics_push_url", &url(&self.metrics_push_url))
            .field("ui_listen", &self.ui_listen)
            .field("ui_users_file", &self.ui_users_file)
            .field("ui_trusted_user_header", &self.ui_trusted_user_header)
            .field("ui_trusted_proxies", &self.ui_trusted_proxies)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("require_approval", &self.require_approval)
            .field("approvers_file", &self.approvers_file)
            .field("ui_approvals", &self.ui_approvals)
            .field("audit_key", &self.audit_key)
            .field("audit_anchor", &self.audit_anchor)
            .field("evidence_signing_key", &self.evidence_signing_key)
            .field("brand", &self.brand)
            .field("bounce_webhook_secret", &self.bounce_webhook_secret)
            .field("bounce_sendgrid_public_key", &self.bounce_sendgrid_public_key)
            .field("bounce_ses_topic_arns", &self.bounce_ses_topic_arns)
            .field("bounce_mailbox", &url(&self.bounce_mailbox))
            .field("bounce_mailbox_password", &self.bounce_mailbox_password)
            .field("bounce_mailbox_ca_file", &self.bounce_mailbox_ca_file)
            .field("bounce_mailbox_poll", &self.bounce_mailbox_poll)
            .field("bounce_mailbox_done_folder", &self.bounce_mailbox_done_folder)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.into(),
            baanx_base_url: url::Url::parse(DEFAULT_BAANX_BASE_URL).expect("valid default"),
            baanx_client_key: None,
            token_key: None,
            token_keys_previous: None,
            smtp_url: None,
            smtp_password: None,
            outbox_dir: None,
            webhook_key: None,
            notify_webhook_key: None,
            jobs_dir: "jobs".into(),
            templates_dir: "jobs/templates".into(),
            http_connect_timeout_ms: 5_000,
            http_request_timeout_ms: 30_000,
            requests_per_second: 50.0,
            burst: 10,
            max_concurrency: 64,
            lease_seconds: 30,
            session_expiry_margin: std::time::Duration::from_secs(300),
            fresh_state_max_age: None,
            webhook_feed_max_silence: std::time::Duration::from_secs(24 * 3600),
            workers: 1,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            metrics_listen: None,
            metrics_push_url: None,
            public_url: None,
            public_listen: None,
            ui_listen: None,
            ui_users_file: None,
            ui_trusted_user_header: None,
            ui_trusted_proxies: Vec::new(),
            trusted_proxies: Vec::new(),
            require_approval: None,
            approvers_file: None,
            ui_approvals: true,
            audit_key: None,
            audit_anchor: None,
            evidence_signing_key: None,
            brand: None,
            bounce_webhook_secret: None,
            bounce_sendgrid_public_key: None,
            bounce_ses_topic_arns: Vec::new(),
            bounce_mailbox: None,
            bounce_mailbox_password: None,
            bounce_mailbox_ca_file: None,
            bounce_mailbox_poll: std::time::Duration::from_secs(60),
            bounce_mailbox_done_folder: None,
        }
    }
}

/// The TOML file's shape: every key optional, unknown keys refused, secrets only
/// as `*_file` paths.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    baanx_base_url: Option<String>,
    baanx_client_key_file: Option<PathBuf>,
    token_key_file: Option<PathBuf>,
    token_keys_previous_file: Option<PathBuf>,
    smtp_url: Option<String>,
    smtp_password_file: Option<PathBuf>,
    outbox_dir: Option<PathBuf>,
    webhook_key_file: Option<PathBuf>,
    notify_webhook_key_file: Option<PathBuf>,
    jobs_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    http_connect_timeout_ms: Option<u64>,
    http_request_timeout_ms: Option<u64>,
    requests_per_second: Option<f64>,
    burst: Option<u32>,
    max_concurrency: Option<u32>,
    lease_seconds: Option<u64>,
    session_expiry_margin: Option<String>,
    fresh_state_max_age: Option<String>,
    webhook_feed_max_silence: Option<String>,
    workers: Option<u32>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    metrics_listen: Option<String>,
    metrics_push_url: Option<String>,
    public_url: Option<String>,
    public_listen: Option<String>,
    ui_listen: Option<String>,
    ui_users_file: Option<PathBuf>,
    ui_trusted_user_header: Option<String>,
    ui_trusted_proxies: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    require_approval: Option<bool>,
    approvers_file: Option<PathBuf>,
    ui_approvals: Option<bool>,
    audit_key_file: Option<PathBuf>,
    audit_anchor: Option<String>,
    evidence_signing_key_file: Option<PathBuf>,
    brand: Option<crate::domain::spec::Brand>,
    bounce_webhook_secret_file: Option<PathBuf>,
    bounce_sendgrid_public_key: Option<String>,
    bounce_ses_topic_arns: Option<Vec<String>>,
    bounce_mailbox: Option<String>,
    bounce_mailbox_password_file: Option<PathBuf>,
    bounce_mailbox_ca_file: Option<PathBuf>,
    bounce_mailbox_poll: Option<String>,
    bounce_mailbox_done_folder: Option<String>,
}

/// The secret keys: (settings key, environment variable stem).
/// The environment variable systemd sets to the unit's credentials directory.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The secret keys: each is read from `REVERIFY_<KEY>`, `REVERIFY_<KEY>_FILE`, the
/// TOML's `<key>_file`, or the systemd credential named `<key>`.
pub const SECRET_KEYS: [&str; 10] = [
    "baanx_client_key",
    "token_key",
    "token_keys_previous",
    "smtp_password",
    "webhook_key",
    "notify_webhook_key",
    "audit_key",
    "evidence_signing_key",
    "bounce_webhook_secret",
    "bounce_mailbox_password",
];

impl Settings {
    /// `fresh_state_max_age` and the webhook feed, as `domain::freshness` takes them.
    pub fn freshness(&self) -> crate::domain::freshness::FreshStateSettings {
        crate::domain::freshness::FreshStateSettings {
            max_age: self.fresh_state_max_age,
            webhook_feed: self.webhook_key.is_some(),
            max_silence: self.webhook_feed_max_silence,
        }
    }

    /// The key of the VERP tokens in return paths and Message-IDs, derived from
    /// `token_key` (absent without one: bounces are then matched by address).
    pub fn verp_key(&self) -> Option<crate::domain::bounce::VerpKey> {
        self.token_key.as_ref().map(|k| crate::domain::bounce::VerpKey::derive(k.expose().as_bytes()))
    }

    /// This worker's share of every configured rate: `1 / workers`.
    pub fn rate_share(&self) -> f64 {
        1.0 / f64::from(self.workers.max(1))
    }

    /// Loads settings: defaults, then the TOML file (`explicit`, else `reverify.toml`
    /// when present), then the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the key.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("REVERIFY_") || k == CREDENTIALS_DIRECTORY).collect();
        Self::load_from(explicit, &env)
    }

    /// [`Settings::load`] with the environment given, for tests.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the key.
    pub fn load_from(explicit: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from("reverify.toml");
                p.exists().then_some(p)
            }
        };
        // A bad value names where it came from: the variable, or the file.
        Self::load_path(path.as_deref(), env).map_err(|e| match (e, &path) {
            (ConfigError::Invalid { key, message }, Some(p))
                if !env.contains_key(&env_name(&key)) && !env.contains_key(&format!("{}_FILE", env_name(&key))) =>
            {
                ConfigError::Invalid { key: format!("{}: {key}", p.display()), message }
            }
            (e, _) => e,
        })
    }

    fn load_path(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => {
                let name = p.display().to_string();
                // at most 1 MiB of UTF-8; the error says where a bad byte is
                let text = files::read_small_text(p, crate::domain::spec::MAX_SPEC_BYTES).map_err(|m| {
                    match m.strip_prefix(&name).and_then(|rest| rest.strip_prefix(": ")) {
                        Some(message) => ConfigError::File { file: name.clone(), message: message.to_owned() },
                        None => ConfigError::File {
                            file: m.split(' ').next().unwrap_or(&name).trim_end_matches(':').to_owned(),
                            message: m.split_once(": ").map_or(m.clone(), |(_, rest)| rest.to_owned()),
                        },
                    }
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| {
                    let (line, col) = e
                        .span()
                        .map(|s| {
                            let before = &text[..s.start.min(text.len())];
                            (before.matches('\n').count() + 1, before.rsplit('\n').next().map_or(0, str::len) + 1)
                        })
                        .unwrap_or((1, 1));
                    ConfigError::File {
                        file: format!("{name}:{line}:{col}"),
                        message: crate::domain::spec::plain_types(e.message()),
                    }
                })?
            }
            None => FileSettings::default(),
        };
        let mut s = Settings::default();

        // plain keys: file, then environment
        let get =
            |key: &str, from_file: Option<String>| -> Option<String> { env.get(&env_name(key)).cloned().or(from_file) };
        if let Some(v) = database_url(env, file.database_url, file.database_url_file)? {
            s.database_url = v;
        }
        if let Some(v) = get("baanx_base_url", file.baanx_base_url) {
            let u = parse_url("baanx_base_url", &v)?;
            require_https(&u).map_err(|m| invalid("baanx_base_url", m))?;
            s.baanx_base_url = u;
        }
        s.smtp_url = get("smtp_url", file.smtp_url);
        if let Some(u) = &s.smtp_url {
            let parsed = parse_url("smtp_url", u)?;
            if !matches!(parsed.scheme(), "smtp" | "smtps") {
                return Err(invalid("smtp_url", format!("{:?} must start with smtp:// or smtps://", redact_url(u))));
            }
        }
        s.outbox_dir = get("outbox_dir", file.outbox_dir.map(path_string)).map(PathBuf::from);
        if let Some(v) = get("jobs_dir", file.jobs_dir.map(path_string)) {
            s.jobs_dir = v.into();
        }
        if let Some(v) = get("templates_dir", file.templates_dir.map(path_string)) {
            s.templates_dir = v.into();
        }
        s.http_connect_timeout_ms = number(
            env,
            "http_connect_timeout_ms",
            file.http_connect_timeout_ms,
            s.http_connect_timeout_ms,
            1..=600_000,
        )?;
        s.http_request_timeout_ms = number(
            env,
            "http_request_timeout_ms",
            file.http_request_timeout_ms,
            s.http_request_timeout_ms,
            1..=3_600_000,
        )?;
        s.burst = number(env, "burst", file.burst, s.burst, 1..=100_000)?;
        s.max_concurrency = number(env, "max_concurrency", file.max_concurrency, s.max_concurrency, 1..=10_000)?;
        s.lease_seconds = number(env, "lease_seconds", file.lease_seconds, s.lease_seconds, 2..=86_400)?;
        s.workers = number(env, "workers", file.workers, s.workers, 1..=1_000)?;
        s.require_approval = boolean(env, "require_approval", file.require_approval)?;
        s.ui_approvals = boolean(env, "ui_approvals", file.ui_approvals)?.unwrap_or(s.ui_approvals);
        s.approvers_file = get("approvers_file", file.approvers_file.map(path_string)).map(PathBuf::from);
        s.trusted_proxies = cidrs(env, "trusted_proxies", file.trusted_proxies)?.unwrap_or_default();
        s.ui_trusted_proxies =
            cidrs(env, "ui_trusted_proxies", file.ui_trusted_proxies)?.unwrap_or_else(|| s.trusted_proxies.clone());
        if let Some(v) = get("session_expiry_margin", file.session_expiry_margin) {
            let d = humantime::parse_duration(v.trim()).map_err(|e| {
                invalid("session_expiry_margin", format!("{v:?} is not a duration such as 5m or 90s: {e}"))
            })?;
            if d > std::time::Duration::from_secs(3600) {
                return Err(invalid("session_expiry_margin", format!("{v:?} is over the most, 1h")));
            }
            s.session_expiry_margin = d;
        }
        let duration = |key: &'static str, v: String| {
            humantime::parse_duration(v.trim())
                .map_err(|e| invalid(key, format!("{v:?} is not a duration such as 6h, 30m or 0s: {e}")))
        };
        if let Some(v) = get("fresh_state_max_age", file.fresh_state_max_age) {
            s.fresh_state_max_age = Some(duration("fresh_state_max_age", v)?);
        }
        if let Some(v) = get("webhook_feed_max_silence", file.webhook_feed_max_silence) {
            let d = duration("webhook_feed_max_silence", v.clone())?;
            if d.is_zero() {
                return Err(invalid("webhook_feed_max_silence", format!("{v:?} must be above 0s")));
            }
            s.webhook_feed_max_silence = d;
        }
        s.requests_per_second = match env.get(&env_name("requests_per_second")) {
            Some(v) => {
                v.trim().parse::<f64>().map_err(|_| invalid("requests_per_second", format!("{v:?} is not a number")))?
            }
            None => file.requests_per_second.unwrap_or(s.requests_per_second),
        };
        if !(s.requests_per_second.is_finite() && s.requests_per_second > 0.0) {
            return Err(invalid("requests_per_second", "must be a number above 0".into()));
        }
        s.log_format = match env.get(&env_name("log_format")) {
            Some(v) => match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(invalid("log_format", format!("{other:?} is not one of text, json"))),
            },
            None => file.log_format.unwrap_or_default(),
        };
        if let Some(v) = get("log_level", file.log_level) {
            s.log_level = v;
        }
        s.metrics_listen = get("metrics_listen", file.metrics_listen);
        s.metrics_push_url = get("metrics_push_url", file.metrics_push_url);
        if let Some(v) = get("public_url", file.public_url) {
            let u = parse_url("public_url", &v)?;
            let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                return Err(invalid("public_url", format!("{v:?} must be an https:// URL (http only to loopback)")));
            }
            if u.query().is_some() || u.fragment().is_some() {
                return Err(invalid("public_url", format!("{v:?} must not have a query or a fragment")));
            }
            s.public_url = Some(u);
        }
        s.public_listen = get("public_listen", file.public_listen);
        s.ui_listen = get("ui_listen", file.ui_listen);
        s.ui_users_file = get("ui_users_file", None).map(PathBuf::from).or(file.ui_users_file);
        s.ui_trusted_user_header = get("ui_trusted_user_header", file.ui_trusted_user_header);
        if let Some(u) = &s.metrics_push_url {
            parse_url("metrics_push_url", u)?;
        }
        s.audit_anchor = get("audit_anchor", file.audit_anchor);
        if let Some(a) = &s.audit_anchor {
            crate::domain::endpoint::parse_anchor(a).map_err(|m| invalid("audit_anchor", m))?;
        }
        if let Some(b) = &file.brand {
            b.check().map_err(|(field, m)| invalid(&format!("brand.{field}"), m))?;
        }
        s.brand = file.brand;
        s.bounce_sendgrid_public_key = get("bounce_sendgrid_public_key", file.bounce_sendgrid_public_key);
        s.bounce_ses_topic_arns = match env.get(&env_name("bounce_ses_topic_arns")) {
            Some(v) => v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect(),
            None => file.bounce_ses_topic_arns.unwrap_or_default(),
        };
        for arn in &s.bounce_ses_topic_arns {
            if !arn.starts_with("arn:aws") || arn.split(':').count() != 6 {
                return Err(invalid(
                    "bounce_ses_topic_arns",
                    format!("{arn:?} is not a topic ARN such as arn:aws:sns:eu-west-1:123456789012:ses-bounces"),
                ));
            }
        }
        s.bounce_mailbox = get("bounce_mailbox", file.bounce_mailbox);
        if let Some(m) = &s.bounce_mailbox {
            let u = parse_url("bounce_mailbox", m)?;
            if !matches!(u.scheme(), "imaps" | "imap") || u.username().is_empty() {
                return Err(invalid(
                    "bounce_mailbox",
                    format!("{:?} must look like imaps://user@host/INBOX", redact_url(m)),
                ));
            }
        }
        s.bounce_mailbox_ca_file =
            get("bounce_mailbox_ca_file", file.bounce_mailbox_ca_file.map(path_string)).map(PathBuf::from);
        if let Some(v) = get("bounce_mailbox_poll", file.bounce_mailbox_poll) {
            let d = duration("bounce_mailbox_poll", v.clone())?;
            if d < std::time::Duration::from_secs(1) {
                return Err(invalid("bounce_mailbox_poll", format!("{v:?} must be at least 1s")));
            }
            s.bounce_mailbox_poll = d;
        }
        s.bounce_mailbox_done_folder = get("bounce_mailbox_done_folder", file.bounce_mailbox_done_folder);

        // secrets: environment value, else environment _FILE, else the TOML's *_file
        let file_paths: [Option<PathBuf>; 10] = [
            file.baanx_client_key_file,
            file.token_key_file,
            file.token_keys_previous_file,
            file.smtp_password_file,
            file.webhook_key_file,
            file.notify_webhook_key_file,
            file.audit_key_file,
            file.evidence_signing_key_file,
            file.bounce_webhook_secret_file,
            file.bounce_mailbox_password_file,
        ];
        let mut secrets: Vec<Option<Secret>> = Vec::with_capacity(SECRET_KEYS.len());
        for (key, from_file) in SECRET_KEYS.iter().zip(file_paths) {
            secrets.push(secret(env, key, from_file)?);
        }
        let mut it = secrets.into_iter();
        s.baanx_client_key = it.next().flatten();
        s.token_key = it.next().flatten();
        s.token_keys_previous = it.next().flatten();
        s.smtp_password = it.next().flatten();
        s.webhook_key = it.next().flatten();
        s.notify_webhook_key = it.next().flatten();
        s.audit_key = it.next().flatten();
        s.evidence_signing_key = it.next().flatten();
        s.bounce_webhook_secret = it.next().flatten();
        s.bounce_mailbox_password = it.next().flatten();
        if s.bounce_mailbox.is_some() && s.bounce_mailbox_password.is_none() {
            return Err(invalid(
                "bounce_mailbox_password",
                "bounce_mailbox is set: give its password (REVERIFY_BOUNCE_MAILBOX_PASSWORD_FILE)".into(),
            ));
        }
        Ok(s)
    }
}

/// `database_url` -> `REVERIFY_DATABASE_URL`.
pub fn env_name(key: &str) -> String {
    format!("REVERIFY_{}", key.to_ascii_uppercase())
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message }
}

fn path_string(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn parse_url(key: &str, v: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(v.trim()).map_err(|e| invalid(key, format!("{:?} is not a URL: {e}", redact_url(v))))
}

/// `database_url`: `REVERIFY_DATABASE_URL`, else the file `REVERIFY_DATABASE_URL_FILE`
/// names, else the TOML's `database_url` or the file its `database_url_file` names.
/// Two sources at one level are an error; `None` keeps the default.
fn database_url(
    env: &HashMap<String, String>,
    from_toml: Option<String>,
    toml_file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    const KEY: &str = "database_url";
    let (var, file_var) = (env_name(KEY), format!("{}_FILE", env_name(KEY)));
    match (env.get(&var), env.get(&file_var)) {
        (Some(_), Some(_)) => return Err(invalid(KEY, format!("set {var} or {file_var}, not both"))),
        (Some(v), None) => return non_empty(KEY, &var, v).map(Some),
        (None, Some(p)) => return read_secret_file(KEY, &file_var, p).map(Some),
        (None, None) => {}
    }
    match (from_toml, toml_file) {
        (Some(_), Some(_)) => Err(invalid(KEY, "set database_url or database_url_file, not both".into())),
        (Some(v), None) => non_empty(KEY, KEY, &v).map(Some),
        (None, Some(p)) => read_secret_file(KEY, "database_url_file", &path_string(p)).map(Some),
        (None, None) => Ok(None),
    }
}

/// `v` trimmed, or an error naming `key` and where the empty value came from.
fn non_empty(key: &str, whence: &str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(key, format!("{whence} is set but empty")));
    }
    Ok(v.to_owned())
}

/// The trimmed contents of the file `path` (named by `whence`), which must not be empty.
fn read_secret_file(key: &str, whence: &str, path: &str) -> Result<String, ConfigError> {
    if path.trim().is_empty() {
        return Err(invalid(key, format!("{whence} is set but empty: it should name a file")));
    }
    let v = std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read secret file {path}: {e}")))?;
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(key, format!("secret file {path} is empty")));
    }
    Ok(v.to_owned())
}

fn number<T>(
    env: &HashMap<String, String>,
    key: &str,
    from_file: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v = match env.get(&env_name(key)) {
        Some(raw) => raw
            .trim()
            .parse::<T>()
            .map_err(|_| invalid(key, format!("{raw:?} (from {}) is not a whole number", env_name(key))))?,
        None => from_file.unwrap_or(default),
    };
    if !range.contains(&v) {
        return Err(invalid(key, format!("{v} is outside {}..={}", range.start(), range.end())));
    }
    Ok(v)
}

/// A true/false setting: the environment (`true`, `1`, `yes`, `on` and their
/// opposites), else the file; `None` when neither says.
fn boolean(env: &HashMap<String, String>, key: &str, from_file: Option<bool>) -> Result<Option<bool>, ConfigError> {
    Ok(match env.get(&env_name(key)) {
        Some(raw) => Some(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(invalid(key, format!("{raw:?} (from {}) is not true or false", env_name(key)))),
        }),
        None => from_file,
    })
}

/// A list of networks (`10.0.0.0/8`; a bare address is one host): the environment
/// as a comma-separated list, else the file's array.
fn cidrs(
    env: &HashMap<String, String>,
    key: &str,
    from_file: Option<Vec<String>>,
) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
    let raw: Vec<String> = match env.get(&env_name(key)) {
        Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Into::into).collect(),
        None => match from_file {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    raw.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid(key, format!("{s:?} is not a network (10.0.0.0/8) or an address")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn secret(env: &HashMap<String, String>, key: &str, from_file: Option<PathBuf>) -> Result<Option<Secret>, ConfigError> {
    let var = env_name(key);
    let file_var = format!("{var}_FILE");
    // else the systemd credential of the same name, when the unit loaded one
    let credential = || {
        let dir = env.get(CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty())?;
        let p = Path::new(dir).join(key);
        p.exists().then_some(p)
    };
    let value = match (env.get(&var), env.get(&file_var)) {
        (Some(_), Some(_)) => return Err(invalid(key, format!("set {var} or {file_var}, not both"))),
        (Some(v), None) => non_empty(key, &var, v)?,
        (None, Some(p)) => read_secret_file(key, &file_var, p)?,
        (None, None) => match (from_file, credential()) {
            (Some(p), _) => read_secret_file(key, &format!("{key}_file"), &path_string(p))?,
            (None, Some(p)) => read_secret_file(key, CREDENTIALS_DIRECTORY, &path_string(p))?,
            (None, None) => return Ok(None),
        },
    };
    if matches!(key, "webhook_key" | "notify_webhook_key" | "audit_key") && value.len() < MIN_WEBHOOK_KEY_BYTES {
        return Err(invalid(
            key,
            format!(
                "must be at least {MIN_WEBHOOK_KEY_BYTES} bytes long (it is {}); `reverify keygen` makes one",
                value.len()
            ),
        ));
    }
    Ok(Some(Secret::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        // an explicit file that does not exist is an error naming it
        let err = Settings::load_from(Some(&missing), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.baanx_base_url.as_str(), "https://api.baanx.com/");
        assert_eq!(s.lease_seconds, 30);
        assert_eq!(s.session_expiry_margin, std::time::Duration::from_secs(300));
    }

    #[test]
    fn env_overlays_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.toml");
        std::fs::write(&f, "database_url = \"sqlite://a.db\"\nlease_seconds = 10\n").unwrap();
        let s = Settings::load_from(Some(&f), &env(&[("REVERIFY_DATABASE_URL", "postgres://x/y")])).unwrap();
        assert_eq!(s.database_url, "postgres://x/y");
        assert_eq!(s.lease_seconds, 10);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = Settings::load_from(None, &env(&[("REVERIFY_LEASE_SECONDS", "soon")])).unwrap_err();
        assert!(e.to_string().starts_with("lease_seconds:"), "{e}");
        let e = Settings::load_from(None, &env(&[("REVERIFY_SESSION_EXPIRY_MARGIN", "soon")])).unwrap_err();
        assert!(e.to_string().starts_with("session_expiry_margin:"), "{e}");
        let e = Settings::load_from(None, &env(&[("REVERIFY_SESSION_EXPIRY_MARGIN", "2h")])).unwrap_err();
        assert!(e.to_string().contains("1h"), "{e}");
        let s = Settings::load_from(None, &env(&[("REVERIFY_SESSION_EXPIRY_MARGIN", "90s")])).unwrap();
        assert_eq!(s.session_expiry_margin, std::time::Duration::from_secs(90));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.toml");
        std::fs::write(&f, "workers = 0\n").unwrap();
        // from a file, the error names the file and the key
        let e = Settings::load_from(Some(&f), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("w.toml: workers:"), "{e}");
        let e = Settings::load_from(None, &env(&[("REVERIFY_WORKERS", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("workers:"), "{e}");
        let s = Settings::load_from(None, &env(&[("REVERIFY_WORKERS", "4")])).unwrap();
        assert!((s.rate_share() - 0.25).abs() < 1e-9);
        assert_eq!(s.require_approval, None, "the database decides by default");
        let s = Settings::load_from(None, &env(&[("REVERIFY_REQUIRE_APPROVAL", "true")])).unwrap();
        assert_eq!(s.require_approval, Some(true));
        let e = Settings::load_from(None, &env(&[("REVERIFY_REQUIRE_APPROVAL", "maybe")])).unwrap_err();
        assert!(e.to_string().starts_with("require_approval: \"maybe\""), "{e}");
        std::fs::write(&f, "require_approval = true\n").unwrap();
        assert_eq!(Settings::load_from(Some(&f), &env(&[])).unwrap().require_approval, Some(true));
        let s = Settings::load_from(Some(&f), &env(&[("REVERIFY_REQUIRE_APPROVAL", "false")])).unwrap();
        assert_eq!(s.require_approval, Some(false), "asked off: the database overrules it when on");
        let s = Settings::load_from(None, &env(&[("REVERIFY_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")])).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.ui_trusted_proxies, s.trusted_proxies, "the dashboard's list defaults to the general one");
        let e = Settings::load_from(None, &env(&[("REVERIFY_UI_TRUSTED_PROXIES", "10.0.0.0/33")])).unwrap_err();
        assert!(e.to_string().starts_with("ui_trusted_proxies:"), "{e}");
        assert!(s.ui_approvals);
        let s = Settings::load_from(None, &env(&[("REVERIFY_UI_APPROVALS", "false")])).unwrap();
        assert!(!s.ui_approvals);
        let e = Settings::load_from(None, &env(&[("REVERIFY_BAANX_BASE_URL", "not a url")])).unwrap_err();
        assert!(e.to_string().starts_with("baanx_base_url:"), "{e}");
        let e = Settings::load_from(None, &env(&[("REVERIFY_SMTP_URL", "http://x")])).unwrap_err();
        assert!(e.to_string().starts_with("smtp_url:"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.toml");
        std::fs::write(&f, "# comment\nbaanx_client_key = \"inline secrets are refused\"\n").unwrap();
        let e = Settings::load_from(Some(&f), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("r.toml:2:1"), "{e}");
    }

    #[test]
    fn secrets_from_env_or_file_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let keyfile = dir.path().join("key");
        std::fs::write(&keyfile, "file-secret-value\n").unwrap();
        let s = Settings::load_from(
            None,
            &env(&[
                ("REVERIFY_BAANX_CLIENT_KEY", "env-secret-value"),
                ("REVERIFY_SMTP_PASSWORD_FILE", keyfile.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(s.baanx_client_key.as_ref().unwrap().expose(), "env-secret-value");
        assert_eq!(s.smtp_password.as_ref().unwrap().expose(), "file-secret-value");
        let debug = format!("{s:?}");
        assert!(!debug.contains("env-secret-value") && !debug.contains("file-secret-value"), "{debug}");
        let e = Settings::load_from(
            None,
            &env(&[("REVERIFY_TOKEN_KEY", "a"), ("REVERIFY_TOKEN_KEY_FILE", keyfile.to_str().unwrap())]),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("token_key:"), "{e}");
    }

    #[test]
    fn an_empty_secret_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let empty = empty.to_str().unwrap();
        for (var, value, key) in [
            ("REVERIFY_BAANX_CLIENT_KEY", "", "baanx_client_key"),
            ("REVERIFY_TOKEN_KEY", "   ", "token_key"),
            ("REVERIFY_SMTP_PASSWORD", "\t\n", "smtp_password"),
            ("REVERIFY_WEBHOOK_KEY_FILE", empty, "webhook_key"),
            ("REVERIFY_NOTIFY_WEBHOOK_KEY_FILE", "", "notify_webhook_key"),
            ("REVERIFY_TOKEN_KEYS_PREVIOUS_FILE", empty, "token_keys_previous"),
            ("REVERIFY_DATABASE_URL", " ", "database_url"),
            ("REVERIFY_DATABASE_URL_FILE", empty, "database_url"),
        ] {
            let e = Settings::load_from(None, &env(&[(var, value)])).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}:")) && e.contains("empty"), "{var}={value:?}: {e}");
        }
        // from the TOML's *_file key too, naming the settings file and the key
        let f = dir.path().join("r.toml");
        std::fs::write(&f, format!("webhook_key_file = {empty:?}\n")).unwrap();
        let e = Settings::load_from(Some(&f), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("r.toml: webhook_key:") && e.contains("empty"), "{e}");
    }

    #[test]
    fn webhook_keys_need_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let short = "k".repeat(MIN_WEBHOOK_KEY_BYTES - 1);
        let long = "k".repeat(MIN_WEBHOOK_KEY_BYTES);
        for key in ["webhook_key", "notify_webhook_key"] {
            let var = env_name(key);
            let e = Settings::load_from(None, &env(&[(&var, &short)])).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}:")) && e.contains("32 bytes") && e.contains("(it is 31)"), "{e}");
            assert!(!e.contains(&short), "the error shows the key: {e}");
            // a file's trailing newline does not count
            let f = dir.path().join(key);
            std::fs::write(&f, format!("{short}\n")).unwrap();
            let file_var = format!("{var}_FILE");
            let e = Settings::load_from(None, &env(&[(&file_var, f.to_str().unwrap())])).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{key}:")), "{e}");
            let s = Settings::load_from(None, &env(&[(&var, &long)])).unwrap();
            let got = if key == "webhook_key" { s.webhook_key } else { s.notify_webhook_key };
            assert_eq!(got.unwrap().expose(), long);
        }
        // other secrets keep their own rules (the client key is the partner's)
        let s = Settings::load_from(None, &env(&[("REVERIFY_BAANX_CLIENT_KEY", "short")])).unwrap();
        assert_eq!(s.baanx_client_key.unwrap().expose(), "short");
    }

    #[test]
    fn database_url_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("database_url");
        std::fs::write(&f, "postgres://reverify:hunter2@db/reverify\n").unwrap();
        let p = f.to_str().unwrap();
        let s = Settings::load_from(None, &env(&[("REVERIFY_DATABASE_URL_FILE", p)])).unwrap();
        assert_eq!(s.database_url, "postgres://reverify:hunter2@db/reverify");
        // not both
        let e = Settings::load_from(
            None,
            &env(&[("REVERIFY_DATABASE_URL_FILE", p), ("REVERIFY_DATABASE_URL", "sqlite://x.db")]),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("database_url:") && e.to_string().contains("not both"), "{e}");
        // in the TOML: database_url_file, and the environment still wins over it
        let t = dir.path().join("r.toml");
        std::fs::write(&t, format!("database_url_file = {p:?}\n")).unwrap();
        assert_eq!(Settings::load_from(Some(&t), &env(&[])).unwrap().database_url, s.database_url);
        let s2 = Settings::load_from(Some(&t), &env(&[("REVERIFY_DATABASE_URL", "sqlite://x.db")])).unwrap();
        assert_eq!(s2.database_url, "sqlite://x.db");
        std::fs::write(&t, format!("database_url = \"sqlite://y.db\"\ndatabase_url_file = {p:?}\n")).unwrap();
        let e = Settings::load_from(Some(&t), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("r.toml: database_url:") && e.contains("not both"), "{e}");
        let missing = dir.path().join("nope");
        let e = Settings::load_from(None, &env(&[("REVERIFY_DATABASE_URL_FILE", missing.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("database_url:") && e.contains("nope"), "{e}");
    }

    #[test]
    fn the_baanx_api_is_https_except_on_loopback() {
        for ok in ["https://api.baanx.com", "http://127.0.0.1:8787", "http://[::1]:8787/", "http://localhost:1"] {
            let s = Settings::load_from(None, &env(&[("REVERIFY_BAANX_BASE_URL", ok)])).unwrap();
            assert_eq!(s.baanx_base_url.as_str().trim_end_matches('/'), ok.trim_end_matches('/'));
        }
        for bad in ["http://api.baanx.com", "http://10.1.2.3:8787", "ftp://api.baanx.com"] {
            let e = Settings::load_from(None, &env(&[("REVERIFY_BAANX_BASE_URL", bad)])).unwrap_err().to_string();
            assert!(e.starts_with("baanx_base_url:") && e.contains("https"), "{bad}: {e}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("REVERIFY_DATABASE_URL", "postgres://reverify:hunter2@db/reverify?sslpassword=hunter3"),
                ("REVERIFY_SMTP_URL", "smtp://mailer@smtp.example.com:587?tls=starttls"),
                ("REVERIFY_METRICS_PUSH_URL", "https://pgw.example.com/?token=hunter4"),
                ("REVERIFY_BAANX_BASE_URL", "https://partner:hunter5@api.baanx.com/"),
            ]),
        )
        .unwrap();
        let debug = format!("{s:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("postgres://reverify:***@db/reverify?sslpassword=***"), "{debug}");
        // the value of a bad setting is shown masked too
        for (var, value) in [
            ("REVERIFY_SMTP_URL", "https://mailer:hunter2@smtp.example.com"),
            ("REVERIFY_METRICS_PUSH_URL", "http://u:hunter2@pgw:notaport/"),
            ("REVERIFY_BAANX_BASE_URL", "http://u:hunter2@api.baanx.com/?token=hunter2"),
        ] {
            let e = Settings::load_from(None, &env(&[(var, value)])).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secrets_from_the_systemd_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("token_key"), "credential-token-key\n").unwrap();
        std::fs::write(dir.path().join("baanx_client_key"), "credential-client-key").unwrap();
        let other = dir.path().join("elsewhere");
        std::fs::write(&other, "explicit-file-value\n").unwrap();
        let s = Settings::load_from(None, &env(&[("CREDENTIALS_DIRECTORY", creds)])).unwrap();
        assert_eq!(s.token_key.as_ref().unwrap().expose(), "credential-token-key");
        assert_eq!(s.baanx_client_key.as_ref().unwrap().expose(), "credential-client-key");
        // a credential the unit did not load is simply not set
        assert!(s.smtp_password.is_none() && s.webhook_key.is_none());
        // an explicit value or file wins over the credential
        let s = Settings::load_from(
            None,
            &env(&[
                ("CREDENTIALS_DIRECTORY", creds),
                ("REVERIFY_TOKEN_KEY", "env-value"),
                ("REVERIFY_BAANX_CLIENT_KEY_FILE", other.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(s.token_key.as_ref().unwrap().expose(), "env-value");
        assert_eq!(s.baanx_client_key.as_ref().unwrap().expose(), "explicit-file-value");
        // an empty credential is an error naming the key and the file
        std::fs::write(dir.path().join("smtp_password"), "\n").unwrap();
        let e = Settings::load_from(None, &env(&[("CREDENTIALS_DIRECTORY", creds)])).unwrap_err().to_string();
        assert!(e.starts_with("smtp_password:") && e.contains("smtp_password is empty"), "{e}");
        // without the variable, nothing is read from a directory
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert!(s.token_key.is_none());
    }

    #[test]
    fn the_example_file_loads() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("reverify.example.toml");
        let s = Settings::load_from(Some(&f), &env(&[])).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.max_concurrency, 64);
    }

    #[test]
    fn the_audit_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("audit_key");
        std::fs::write(&key, "short\n").unwrap();
        let k = key.to_str().unwrap();
        let e = Settings::load_from(None, &env(&[("REVERIFY_AUDIT_KEY_FILE", k)])).unwrap_err();
        assert!(e.to_string().starts_with("audit_key: must be at least 32 bytes"), "{e}");
        std::fs::write(&key, "an audit key of more than thirty-two bytes\n").unwrap();
        let s = Settings::load_from(
            None,
            &env(&[("REVERIFY_AUDIT_KEY_FILE", k), ("REVERIFY_AUDIT_ANCHOR", "file:///var/lib/heads.jsonl")]),
        )
        .unwrap();
        assert_eq!(s.audit_key.as_ref().map(|k| k.expose().len()), Some(42));
        assert!(!format!("{s:?}").contains("thirty-two"), "the key is redacted");
        assert_eq!(s.audit_anchor.as_deref(), Some("file:///var/lib/heads.jsonl"));
        let e = Settings::load_from(None, &env(&[("REVERIFY_AUDIT_ANCHOR", "heads.jsonl")])).unwrap_err();
        assert!(e.to_string().starts_with("audit_anchor: \"heads.jsonl\": use file:///PATH"), "{e}");
        let signing = dir.path().join("signing");
        std::fs::write(&signing, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let s = Settings::load_from(None, &env(&[("REVERIFY_EVIDENCE_SIGNING_KEY_FILE", signing.to_str().unwrap())]))
            .unwrap();
        assert!(s.evidence_signing_key.is_some());
        assert!(!format!("{s:?}").contains("OPENSSH"), "the signing key is redacted");
    }
}
