//! Email over SMTP with lettre: pooled connections, TLS through rustls, and every
//! failure turned into transient, permanent or ambiguous.
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
//! - A failure *after the message data went out* with no reply read (the connection
//!   dropped, reset or timed out while the data was sent or while its reply was
//!   awaited) is ambiguous: the server may have accepted the message. It is
//!   [`NotifyError::Ambiguous`], neither retried nor resent. A 4xx or 5xx reply to the
//!   data is a definite answer and classified as above.
//!
//! lettre's pooled `AsyncSmtpTransport` sends MAIL, RCPT, DATA and the data in one call
//! and its error does not say how far it got (a connection dropped at RCPT and one
//! dropped after the data look alike). So the transaction is driven here, command by
//! command, on lettre's [`AsyncSmtpConnection`], and the small pool of idle
//! connections is ours.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use zeroize::Zeroizing;

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
    /// For connecting (`timeout_ms`, default 30 s); one whole send (connection,
    /// commands, the data and its reply) is bounded by four times it.
    pub timeout: Duration,
    /// Idle connections kept open for reuse (`pool_size`, default 4).
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
        let u = url::Url::parse(url.trim())
            .map_err(|e| bad(format!("{:?} is not a URL: {e}", crate::domain::endpoint::redact_url(url))))?;
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

/// An idle connection is dropped rather than reused after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection given up after a failure gets this long to say QUIT, in the background.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// Sends email through one SMTP server, reusing connections. Cheap to clone.
#[derive(Clone)]
pub struct SmtpSender {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// TLS from the first byte (SMTPS).
    wrapper: Option<TlsParameters>,
    /// STARTTLS, required.
    starttls: Option<TlsParameters>,
    hello: ClientId,
    credentials: Option<Credentials>,
    connect_timeout: Duration,
    /// Bounds one whole send (connect, TLS, MAIL, RCPT, DATA, the data and its
    /// reply), so that a stalled server cannot hold the URL forever.
    total_timeout: Duration,
    /// Idle connections, the most recently used last; at most `pool_size`.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    pool_size: usize,
    endpoint: String,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender").field("endpoint", &self.inner.endpoint).finish_non_exhaustive()
    }
}

/// How far one attempt got: what a failure without a reply means depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Connecting, greeting, TLS, AUTH, MAIL, RCPT, DATA: the server holds no message.
    Envelope,
    /// The server said 354 and the message data is going, or has gone, out: the
    /// server may hold the message once the data is complete.
    Data,
}

impl SmtpSender {
    /// Sets the sender up. No connection is made until the first send.
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
        let (wrapper, starttls) = match config.tls {
            TlsMode::Starttls => (None, Some(tls_params()?)),
            TlsMode::Tls => (Some(tls_params()?), None),
            TlsMode::None => (None, None),
        };
        let credentials = config.username.as_ref().map(|user| {
            let password = config.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
            Credentials::new(user.clone(), password)
        });
        Ok(Self {
            inner: Arc::new(Inner {
                host: config.host.clone(),
                port: config.port,
                wrapper,
                starttls,
                hello: ClientId::default(),
                credentials,
                connect_timeout: config.timeout,
                total_timeout: config.timeout * 4,
                idle: Mutex::new(Vec::new()),
                pool_size: config.pool_size as usize,
                endpoint: format!("{}:{}", config.host, config.port),
            }),
        })
    }

    /// One attempt to send `email`. The caller builds the message once and passes the
    /// same one to every attempt, so that a retry carries the same Message-ID.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] or [`NotifyError::Permanent`], as the module says;
    /// [`NotifyError::Ambiguous`] when the message data went out and no reply to it
    /// was read (the message may have been delivered).
    pub async fn send(&self, email: &lettre::Message) -> Result<Delivered, NotifyError> {
        let me = &self.inner;
        let message_id = message_id_of(email);
        // it carries the link: wiped when dropped
        let data = Zeroizing::new(email.formatted());
        let data_sent = AtomicBool::new(false);
        let sent = tokio::time::timeout(me.total_timeout, me.transaction(email.envelope(), &data, &data_sent)).await;
        let response = match sent {
            Ok(result) => result?,
            Err(_) => {
                let stage = if data_sent.load(Ordering::SeqCst) { Stage::Data } else { Stage::Envelope };
                return Err(timed_out(&me.endpoint, me.total_timeout, stage));
            }
        };
        Ok(Delivered {
            channel: ChannelKind::Smtp,
            message_id,
            detail: format!("{} {}", response.code(), response.first_line().unwrap_or("")).trim().to_owned(),
            attempts: 1,
        })
    }
}

impl Inner {
    /// A connection (an idle one, or a new one), the message on it, and the
    /// connection back to the pool when all went well.
    async fn transaction(
        &self,
        envelope: &Envelope,
        data: &[u8],
        data_sent: &AtomicBool,
    ) -> Result<Response, NotifyError> {
        let mut conn = self.checkout().await.map_err(|e| classify(&e, &self.endpoint, Stage::Envelope))?;
        let result = send_on(&mut conn, envelope, data, data_sent, &self.endpoint).await;
        match result {
            Ok(_) => self.checkin(conn),
            Err(_) => retire(conn),
        }
        result
    }

    /// The most recently used idle connection that still answers NOOP, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        loop {
            let parked = self.idle.lock().expect("smtp pool").pop();
            let Some((mut conn, since)) = parked else { return self.connect().await };
            // too old, or gone: dropped (the socket closes), and the next one tried
            if since.elapsed() <= IDLE_TIMEOUT && conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().expect("smtp pool");
        if idle.len() < self.pool_size {
            idle.push((conn, Instant::now()));
        } else {
            drop(idle);
            retire(conn);
        }
    }

    /// Connects, greets, upgrades to TLS and authenticates as configured.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.connect_timeout),
            &self.hello,
            self.wrapper.clone(),
            None,
        )
        .await?;
        if let Some(tls) = &self.starttls {
            conn.starttls(tls.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}

/// Closes a connection that is not to be reused, saying QUIT first when it still
/// can, in the background and for a bounded time: the attempt's answer does not wait.
fn retire(mut conn: AsyncSmtpConnection) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(QUIT_GRACE, conn.abort()).await;
    });
}

/// One message on an open connection: MAIL, RCPT, DATA, then the data and the reply
/// to it. `data_sent` turns true once the server has answered DATA with 354, before
/// the first byte of the data is written.
async fn send_on(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    data: &[u8],
    data_sent: &AtomicBool,
    endpoint: &str,
) -> Result<Response, NotifyError> {
    let failed = |stage: Stage| move |e: SmtpError| classify(&e, endpoint, stage);
    // what lettre's own `send` checks: an SMTPUTF8 address, 8-bit data
    let mut options = Vec::new();
    if envelope.from().into_iter().chain(envelope.to()).any(|a| !AsRef::<str>::as_ref(a).is_ascii()) {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(NotifyError::permanent(format!(
                "smtp {endpoint}: the address is not ASCII and the server does not support SMTPUTF8"
            )));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !data.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(NotifyError::permanent(format!(
                "smtp {endpoint}: the message is not ASCII and the server does not support 8BITMIME"
            )));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), options)).await.map_err(failed(Stage::Envelope))?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), vec![])).await.map_err(failed(Stage::Envelope))?;
    }
    conn.command(Data).await.map_err(failed(Stage::Envelope))?;
    data_sent.store(true, Ordering::SeqCst);
    conn.message(data).await.map_err(failed(Stage::Data))
}

/// The whole send took longer than `limit`.
fn timed_out(endpoint: &str, limit: Duration, stage: Stage) -> NotifyError {
    match stage {
        Stage::Envelope => NotifyError::transient(format!("smtp {endpoint}: no answer within {limit:?}")),
        Stage::Data => NotifyError::ambiguous(format!(
            "smtp {endpoint}: the message data was sent but no reply came within {limit:?}; it may have been delivered"
        )),
    }
}

/// One place decides what an SMTP failure means. Failures that would hit every
/// message alike (refused credentials, no STARTTLS, an untrusted certificate) are
/// [`NotifyError::Config`]: the engine stops instead of spending a session on each
/// user in turn. Once the data is going out ([`Stage::Data`]), anything but a reply
/// (a dropped or reset connection, an unreadable or missing reply) is ambiguous.
fn classify(e: &SmtpError, endpoint: &str, stage: Stage) -> NotifyError {
    let text = truncate(&e.to_string(), 300);
    let reason = format!("smtp {endpoint}: {text}");
    let code = e.status().map(|c| c.to_string());
    if stage == Stage::Data && code.is_none() {
        return NotifyError::ambiguous(format!(
            "smtp {endpoint}: the message data was sent but no reply was read ({text}); it may have been delivered"
        ));
    }
    if e.is_permanent() {
        // 530 auth required, 534/538 mechanism refused, 535 bad credentials
        if matches!(code.as_deref(), Some("530" | "534" | "535" | "538")) {
            return NotifyError::config("smtp_password", reason);
        }
        NotifyError::permanent(reason)
    } else if e.is_client() {
        // lettre refused before sending: the server lacks what the URL demands
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

    /// What the scripted server does wrong.
    #[derive(Debug, Clone, Copy)]
    enum Script {
        DropAtRcpt,
        StallAtRcpt,
        DropAfterData,
        StallAfterData,
        GarbleAfterData,
        ReplyAfterData(&'static str),
    }

    /// A one-connection SMTP server on loopback that follows `script`. Returns its port.
    async fn scripted(script: Script) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let stall = || tokio::time::sleep(Duration::from_secs(30));
            write.write_all(b"220 scripted ESMTP\r\n").await.unwrap();
            let mut in_data = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &str = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    match script {
                        Script::DropAfterData => return,
                        Script::StallAfterData => return stall().await,
                        Script::GarbleAfterData => "what?\r\n",
                        Script::ReplyAfterData(r) => r,
                        _ => "250 2.0.0 queued\r\n",
                    }
                } else {
                    match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                        "EHLO" => "250-scripted\r\n250 8BITMIME\r\n",
                        "RCPT" => match script {
                            Script::DropAtRcpt => return,
                            Script::StallAtRcpt => return stall().await,
                            _ => "250 ok\r\n",
                        },
                        "DATA" => {
                            in_data = true;
                            "354 go ahead\r\n"
                        }
                        "QUIT" => "221 bye\r\n",
                        _ => "250 ok\r\n",
                    }
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        port
    }

    fn email() -> lettre::Message {
        lettre::Message::builder()
            .from("Compliance <compliance@example.com>".parse().unwrap())
            .to("ada@example.com".parse().unwrap())
            .subject("Please verify")
            .body("a link".to_owned())
            .unwrap()
    }

    /// Each failure, on a real connection, as the sender classifies it. The whole send
    /// is bounded by 4 x 100 ms, so a stall ends in the total timeout.
    #[tokio::test]
    async fn a_failure_after_the_data_without_a_reply_is_ambiguous_and_only_then() {
        for (script, want) in [
            (Script::DropAtRcpt, "transient"),
            (Script::StallAtRcpt, "transient"),
            (Script::DropAfterData, "ambiguous"),
            (Script::StallAfterData, "ambiguous"),
            (Script::GarbleAfterData, "ambiguous"),
            (Script::ReplyAfterData("451 4.3.0 try later\r\n"), "transient"),
            (Script::ReplyAfterData("554 5.7.1 no\r\n"), "permanent"),
        ] {
            let port = scripted(script).await;
            let config = SmtpConfig::parse(&format!("smtp://127.0.0.1:{port}?tls=none&timeout_ms=100"), None).unwrap();
            let e = SmtpSender::new(&config).unwrap().send(&email()).await.unwrap_err();
            let got = match &e {
                NotifyError::Transient { .. } => "transient",
                NotifyError::Permanent { .. } => "permanent",
                NotifyError::Ambiguous { .. } => "ambiguous",
                _ => "other",
            };
            assert_eq!(got, want, "{script:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_good_reply_is_delivered_and_the_connection_reused() {
        let port = scripted(Script::ReplyAfterData("250 2.0.0 queued as 1\r\n")).await;
        let config = SmtpConfig::parse(&format!("smtp://127.0.0.1:{port}?tls=none&timeout_ms=1000"), None).unwrap();
        let sender = SmtpSender::new(&config).unwrap();
        let email = email();
        let d = sender.send(&email).await.unwrap();
        assert_eq!(d.detail, "250 2.0.0 queued as 1");
        assert_eq!(d.message_id, message_id_of(&email));
        // the scripted server takes one connection only: a second send must reuse it
        sender.send(&email).await.unwrap();
    }

    #[test]
    fn the_total_timeout_is_ambiguous_once_the_data_started() {
        let t = Duration::from_secs(2);
        assert!(timed_out("h:25", t, Stage::Envelope).is_transient());
        assert!(timed_out("h:25", t, Stage::Data).is_ambiguous());
    }

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
        // a URL that does not parse is shown without its password
        let e = parse("smtp://u:hunter2@smtp.example.com:notaport").unwrap_err().to_string();
        assert!(e.starts_with("smtp_url: ") && e.contains("u:***@") && !e.contains("hunter2"), "{e}");
    }
}
