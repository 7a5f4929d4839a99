//! Email over SMTP with lettre: a pooled async transport, TLS through rustls, and
//! the reply codes turned into transient or permanent failures.
//!
//! `smtp_url` is `smtp://[user@]host[:port][?tls=starttls|tls|none&...]` or
//! `smtps://...` (implicit TLS). Decisions:
//! - STARTTLS is *required*, not opportunistic: a server that does not offer it gets
//!   no credentials and no link, rather than a clear-text message.
//! - `tls=none` is refused for any host but the local machine (a relay on localhost,
//!   or a test server).
//! - A password in the URL is refused: it is a secret, and comes from `smtp_password`.
//! - 4xx replies, refused or dropped connections and timeouts are transient; 5xx
//!   replies (550 mailbox unavailable, 553 bad address...) are permanent; refused
//!   credentials, a missing STARTTLS and an untrusted certificate are set-up errors.

use std::path::PathBuf;
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::Secret;

use super::email::message_id_of;
use super::{ChannelKind, Delivered, NotifyError};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS (required); default port 587.
    Starttls,
    /// TLS from the first byte (SMTPS); default port 465.
    Tls,
    /// No encryption; only for localhost. Default port 25.
    None,
}

/// Everything needed to reach the SMTP server, parsed from `smtp_url`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Per SMTP command, and for connecting (`timeout_ms`, default 30 s).
    pub timeout: Duration,
    /// Connections kept open and reused (`pool_size`, default 4).
    pub pool_size: u32,
    /// An extra PEM root certificate to trust (`ca_file`), for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
}

const KEY: &str = "smtp_url";

impl SmtpConfig {
    /// Parses `smtp_url`; `password` is `smtp_password`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] naming `smtp_url` (or `smtp_password`) and what is wrong.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<Self, NotifyError> {
        let bad = |m: String| NotifyError::config(KEY, m);
        let u = url::Url::parse(url.trim()).map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
        let mut tls = match u.scheme() {
            "smtp" => TlsMode::Starttls,
            "smtps" => TlsMode::Tls,
            other => return Err(bad(format!("scheme {other:?} is not smtp or smtps"))),
        };
        let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("names no host".into()))?;
        // IPv6 hosts come bracketed from the URL; lettre wants them bare.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if u.password().is_some() {
            return Err(bad("must not hold the password: set smtp_password (or REVERIFY_SMTP_PASSWORD_FILE)".into()));
        }
        let username = (!u.username().is_empty()).then(|| {
            url::form_urlencoded::parse(format!("u={}", u.username()).as_bytes())
                .next()
                .map_or_else(|| u.username().to_owned(), |(_, v)| v.into_owned())
        });
        let mut timeout = Duration::from_secs(30);
        let mut pool_size = 4;
        let mut ca_file = None;
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "tls" => {
                    tls = match (u.scheme(), v.as_ref()) {
                        ("smtp", "starttls") => TlsMode::Starttls,
                        ("smtp" | "smtps", "tls") => TlsMode::Tls,
                        ("smtp", "none") => TlsMode::None,
                        ("smtps", _) => return Err(bad(format!("smtps:// is implicit TLS; tls={v} contradicts it"))),
                        _ => return Err(bad(format!("tls={v} is not one of starttls, tls, none"))),
                    }
                }
                "timeout_ms" => {
                    let ms: u64 = v.parse().ok().filter(|n| (100..=600_000).contains(n)).ok_or_else(|| {
                        bad(format!("timeout_ms={v} is not a number of milliseconds in 100..=600000"))
                    })?;
                    timeout = Duration::from_millis(ms);
                }
                "pool_size" => {
                    pool_size = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad(format!("pool_size={v} is not a number in 1..=100")))?;
                }
                "ca_file" => ca_file = Some(PathBuf::from(v.as_ref())),
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: tls, timeout_ms, pool_size, ca_file)"
                    )));
                }
            }
        }
        if tls == TlsMode::None && !is_local(&host) {
            return Err(bad(format!("tls=none is only allowed for localhost, not {host:?}")));
        }
        let port = u.port().unwrap_or(match tls {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        });
        if password.is_some() && username.is_none() {
            return Err(NotifyError::config("smtp_password", "is set, but smtp_url names no user (smtp://USER@host)"));
        }
        Ok(Self { host, port, tls, username, password, timeout, pool_size, ca_file })
    }
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Sends email through one SMTP server with a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bounds one whole send (connect, TLS, MAIL, RCPT, DATA), on top of the
    /// per-command timeout, so that a stalled server cannot hold the URL forever.
    total_timeout: Duration,
    endpoint: String,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Builds the pooled transport. Must be called inside a Tokio runtime (the pool
    /// starts a housekeeping task); no connection is made until the first send.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the TLS set-up or `ca_file` is unusable.
    pub fn new(config: &SmtpConfig) -> Result<Self, NotifyError> {
        let tls_params = || -> Result<TlsParameters, NotifyError> {
            let mut b = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| NotifyError::config(KEY, format!("ca_file {}: cannot read: {e}", path.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| NotifyError::config(KEY, format!("ca_file {}: {e}", path.display())))?;
                b = b.add_root_certificate(cert);
            }
            b.build().map_err(|e| NotifyError::config(KEY, format!("TLS set-up failed: {e}")))
        };
        let tls = match config.tls {
            TlsMode::Starttls => Tls::Required(tls_params()?),
            TlsMode::Tls => Tls::Wrapper(tls_params()?),
            TlsMode::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.pool_size).idle_timeout(Duration::from_secs(60)));
        if let Some(user) = &config.username {
            let password = config.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            total_timeout: config.timeout * 4,
            endpoint: format!("{}:{}", config.host, config.port),
        })
    }

    /// Sends one email.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] or [`NotifyError::Permanent`], as the module says.
    pub async fn send(&self, email: lettre::Message) -> Result<Delivered, NotifyError> {
        let message_id = message_id_of(&email);
        let sent = tokio::time::timeout(self.total_timeout, self.transport.send(email)).await;
        match sent {
            Err(_) => Err(NotifyError::transient(format!(
                "smtp {}: no answer within {:?}",
                self.endpoint, self.total_timeout
            ))),
            Ok(Ok(response)) => Ok(Delivered {
                channel: ChannelKind::Smtp,
                message_id,
                detail: format!("{} {}", response.code(), response.first_line().unwrap_or("")).trim().to_owned(),
                attempts: 1,
            }),
            Ok(Err(e)) => Err(classify(&e, &self.endpoint)),
        }
    }
}

/// One place decides what an SMTP failure means. Failures that would hit every
/// message alike (refused credentials, no STARTTLS, an untrusted certificate) are
/// [`NotifyError::Config`]: the engine stops instead of spending a session on each
/// user in turn.
fn classify(e: &lettre::transport::smtp::Error, endpoint: &str) -> NotifyError {
    let text = truncate(&e.to_string(), 300);
    let reason = format!("smtp {endpoint}: {text}");
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        // 530 auth required, 534/538 mechanism refused, 535 bad credentials
        if matches!(code.as_deref(), Some("530" | "534" | "535" | "538")) {
            return NotifyError::config("smtp_password", reason);
        }
        NotifyError::permanent(reason)
    } else if e.is_client() {
        // lettre refused before sending: either the server lacks what the URL demands,
        // or this message cannot go (a non-ASCII address without SMTPUTF8)
        let lower = text.to_ascii_lowercase();
        if lower.contains("starttls") || lower.contains("authentication mechanism") || lower.contains("not encrypted") {
            NotifyError::config(KEY, reason)
        } else {
            NotifyError::permanent(reason)
        }
    } else if !e.is_transient() && text.to_ascii_lowercase().contains("certificate") {
        // rustls' "invalid peer certificate" arrives as a TLS or a connection error
        NotifyError::config(KEY, reason)
    } else {
        // 4xx, timeouts, refused or dropped connections, TLS hiccups, garbled replies
        NotifyError::transient(reason)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(u: &str) -> Result<SmtpConfig, NotifyError> {
        SmtpConfig::parse(u, None)
    }

    #[test]
    fn schemes_ports_and_tls_modes() {
        let c = parse("smtp://mailer@smtp.example.com").unwrap();
        assert_eq!((c.tls, c.port, c.username.as_deref()), (TlsMode::Starttls, 587, Some("mailer")));
        let c = parse("smtps://smtp.example.com").unwrap();
        assert_eq!((c.tls, c.port), (TlsMode::Tls, 465));
        let c = parse("smtp://smtp.example.com?tls=tls").unwrap();
        assert_eq!((c.tls, c.port), (TlsMode::Tls, 465));
        let c = parse("smtp://127.0.0.1:2525?tls=none&timeout_ms=1500&pool_size=2").unwrap();
        assert_eq!((c.tls, c.port, c.timeout, c.pool_size), (TlsMode::None, 2525, Duration::from_millis(1500), 2));
        let c = parse("smtp://user%40corp@localhost:25?tls=none").unwrap();
        assert_eq!(c.username.as_deref(), Some("user@corp"));
    }

    #[test]
    fn refusals_name_the_key() {
        for (u, needle) in [
            ("smtp://smtp.example.com?tls=none", "only allowed for localhost"),
            ("smtp://u:pw@smtp.example.com", "must not hold the password"),
            ("smtps://smtp.example.com?tls=starttls", "contradicts"),
            ("smtp://smtp.example.com?tls=maybe", "not one of"),
            ("smtp://smtp.example.com?pool=3", "unknown parameter"),
            ("http://smtp.example.com", "not smtp or smtps"),
        ] {
            let e = parse(u).unwrap_err().to_string();
            assert!(e.starts_with("smtp_url: ") && e.contains(needle), "{u}: {e}");
        }
        let e = SmtpConfig::parse("smtp://smtp.example.com", Some(Secret::new("pw"))).unwrap_err().to_string();
        assert!(e.starts_with("smtp_password: "), "{e}");
    }
}
