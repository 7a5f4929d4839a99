//! The DSN mailbox reader: polls `bounce_mailbox` over IMAP (TLS through rustls),
//! turns each new message into reports ([`super::dsn::parse_message`]) and hands
//! them to a [`BounceSink`].
//!
//! A message counts as processed once it carries the `$ReverifyDone` keyword (and
//! `\Seen`; a server that refuses keywords gets `\Seen` alone and the reader looks
//! at unseen messages). It is marked only after the sink returned `Ok` for all of its
//! reports, or when it could not be parsed (counted as `malformed`); with a
//! `done_folder` it is then moved there (copied where the server lacks MOVE). A sink
//! error leaves the message unmarked: the next poll tries it again. Nothing is ever
//! deleted or expunged.
//!
//! A mailbox that cannot be reached (connect, TLS, login or select failing) is
//! retried with exponential backoff; [`MailboxHealth`] and
//! `reverify_bounce_mailbox_up` say so.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_imap::types::Flag;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{ServerName, pem::PemObject as _};

use super::dsn::parse_message;
use super::{BounceSink, SinkError};
use crate::Secret;

/// The keyword a processed message carries.
pub const DONE_KEYWORD: &str = "$ReverifyDone";

/// The setting's name, in errors.
const KEY: &str = "bounce_mailbox";

/// The default time between two polls.
pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(60);

/// How long one poll may take before it counts as a failure.
const POLL_TIMEOUT: Duration = Duration::from_secs(600);

/// The most of one message read: a DSN's machine-readable parts come first, and a
/// bounce that returns a huge attachment is not read whole.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `bounce_mailbox` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{KEY}: {0}")]
pub struct MailboxConfigError(pub String);

/// Where the DSN mailbox is and how it is read.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// The server's host name or address.
    pub host: String,
    /// Its port (993 for `imaps`, 143 for `imap`).
    pub port: u16,
    /// TLS from the first byte (`imaps`); plain only on loopback.
    pub tls: bool,
    /// The login name (percent-decoded from the URL).
    pub username: String,
    /// The login password (`bounce_mailbox_password`).
    pub password: Secret,
    /// The folder read (`INBOX` when the URL has no path).
    pub folder: String,
    /// The time between two polls.
    pub poll_every: Duration,
    /// An extra PEM CA certificate to trust, for a server with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Where processed messages are moved; `None`: they stay, flagged.
    pub done_folder: Option<String>,
    /// The first wait after a failed poll; doubled at each failure up to
    /// `retry_max`.
    pub retry_min: Duration,
    /// The longest wait between two failed polls.
    pub retry_max: Duration,
}

impl MailboxConfig {
    /// Reads `imaps://user@host[:port]/FOLDER` (`imap://` only for a loopback host),
    /// with the defaults: poll every 60 s, retry after 5 s doubling to 5 min, no
    /// extra CA, no done folder.
    ///
    /// # Errors
    /// [`MailboxConfigError`] saying what is wrong with the URL.
    pub fn parse(url: &str, password: Secret) -> Result<Self, MailboxConfigError> {
        let err = |m: String| MailboxConfigError(m);
        let parsed = url::Url::parse(url.trim()).map_err(|e| err(format!("{url:?} is not a URL: {e}")))?;
        let tls = match parsed.scheme() {
            "imaps" => true,
            "imap" => false,
            other => return Err(err(format!("scheme {other:?} is not imaps:// (or imap:// on loopback)"))),
        };
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| err("the URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if !tls && !is_loopback(&host) {
            return Err(err(format!(
                "imap:// sends the password in clear: only for a loopback host, not {host:?}; use imaps://"
            )));
        }
        if parsed.password().is_some() {
            return Err(err("the URL must not hold the password: set bounce_mailbox_password".into()));
        }
        let username = percent_decode(parsed.username()).map_err(err)?;
        if username.is_empty() {
            return Err(err("the URL has no user (imaps://user@host/INBOX)".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(err("the URL takes no query or fragment".into()));
        }
        let folder = percent_decode(parsed.path().trim_start_matches('/')).map_err(err)?;
        let folder = if folder.is_empty() { "INBOX".to_owned() } else { folder };
        let port = parsed.port().unwrap_or(if tls { 993 } else { 143 });
        Ok(Self {
            host,
            port,
            tls,
            username,
            password,
            folder,
            poll_every: DEFAULT_POLL_EVERY,
            ca_file: None,
            done_folder: None,
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Whether the mailbox's last poll worked, for `/readyz`: cheap to clone, shared
/// with the reader. Down until the first poll worked.
#[derive(Debug, Clone, Default)]
pub struct MailboxHealth(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl MailboxHealth {
    /// A health that says down, with no error yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last poll reached the mailbox.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    /// Why the last poll failed, while it is down.
    pub fn last_error(&self) -> Option<String> {
        self.0.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn set(&self, error: Option<String>) {
        if let Ok(mut last) = self.0.last_error.lock() {
            last.clone_from(&error);
        }
        self.0.up.store(error.is_none(), Ordering::Release);
        crate::telemetry::global().bounce_mailbox_up(error.is_none());
    }
}

/// Why one poll stopped.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The TLS set-up or `ca_file` is unusable.
    #[error("{KEY}: {0}")]
    Config(String),
    /// The server could not be reached, logged in to, or its folder selected; or the
    /// connection failed midway.
    #[error("{KEY}: {0}")]
    Down(String),
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Messages marked processed (their reports recorded, or malformed).
    pub processed: usize,
    /// Of them, those that did not parse.
    pub malformed: usize,
    /// Reports the sink recorded.
    pub reports: usize,
    /// Whether the sink failed (the rest of the messages wait for the next poll).
    pub sink_failed: bool,
}

/// Reads the mailbox until `shutdown` resolves: a poll every `poll_every`, a failed
/// one retried with backoff, `health` kept current.
pub async fn run_mailbox(
    config: MailboxConfig,
    sink: Arc<dyn BounceSink>,
    health: MailboxHealth,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let connector = match tls_connector(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the bounce mailbox reader cannot start");
            health.set(Some(e.to_string()));
            return;
        }
    };
    let mut backoff = config.retry_min;
    loop {
        // a poll cut by the shutdown is safe: an unmarked message is read again, and
        // the sink counts a report once per dedupe id
        let poll = tokio::time::timeout(POLL_TIMEOUT, poll_once(&config, connector.as_ref(), sink.as_ref()));
        let outcome = tokio::select! {
            () = &mut shutdown => return,
            outcome = poll => outcome,
        };
        let wait = match outcome {
            Ok(Ok(summary)) => {
                health.set(None);
                backoff = config.retry_min;
                log_summary(&summary);
                config.poll_every
            }
            Ok(Err(e)) => failed(&health, e.to_string(), &mut backoff, config.retry_max),
            Err(_) => {
                failed(&health, format!("{KEY}: a poll took over {POLL_TIMEOUT:?}"), &mut backoff, config.retry_max)
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Records a failed poll; the wait before the next one.
fn failed(health: &MailboxHealth, error: String, backoff: &mut Duration, max: Duration) -> Duration {
    tracing::warn!(error = %error, retry_in = ?*backoff, "the bounce mailbox is down");
    health.set(Some(error));
    let wait = *backoff;
    *backoff = (*backoff * 2).min(max);
    wait
}

fn log_summary(summary: &PollSummary) {
    if summary.processed > 0 || summary.sink_failed {
        tracing::info!(
            processed = summary.processed,
            malformed = summary.malformed,
            reports = summary.reports,
            sink_failed = summary.sink_failed,
            "bounce mailbox polled"
        );
    }
}

/// The TLS connector for `imaps` (the platform's roots plus `ca_file`); `None`
/// for plain `imap`.
///
/// # Errors
/// [`MailboxError::Config`] when `ca_file` cannot be read or holds no certificate.
pub fn tls_connector(config: &MailboxConfig) -> Result<Option<TlsConnector>, MailboxError> {
    if !config.tls {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| MailboxError::Config(format!("ca_file {}: cannot read: {e}", path.display())))?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MailboxError::Config(format!("ca_file {}: {e}", path.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(MailboxError::Config(format!("ca_file {}: no usable certificate", path.display())));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MailboxError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(TlsConnector::from(Arc::new(tls))))
}

/// One poll: connect, log in, select, process every message not yet processed,
/// log out.
///
/// # Errors
/// [`MailboxError::Down`] when the mailbox could not be read.
pub async fn poll_once(
    config: &MailboxConfig,
    tls: Option<&TlsConnector>,
    sink: &dyn BounceSink,
) -> Result<PollSummary, MailboxError> {
    let down = |what: &str, e: &dyn std::fmt::Display| {
        MailboxError::Down(format!("{what} {}:{}: {e}", config.host, config.port))
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((config.host.as_str(), config.port)))
        .await
        .map_err(|_| down("connecting to", &"timed out"))?
        .map_err(|e| down("connecting to", &e))?;
    match tls {
        None => session_on(tcp, config, sink).await,
        Some(connector) => {
            let name = ServerName::try_from(config.host.clone()).map_err(|e| down("TLS name", &e))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| down("TLS with", &"timed out"))?
                .map_err(|e| down("TLS with", &e))?;
            session_on(stream, config, sink).await
        }
    }
}

async fn session_on<T>(stream: T, config: &MailboxConfig, sink: &dyn BounceSink) -> Result<PollSummary, MailboxError>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let down = |what: &str, e: &dyn std::fmt::Display| MailboxError::Down(format!("{what}: {e}"));
    let mut client = async_imap::Client::new(stream);
    client
        .read_response()
        .await
        .map_err(|e| down("reading the greeting", &e))?
        .ok_or_else(|| down("reading the greeting", &"connection closed"))?;
    let mut session = client
        .login(&config.username, config.password.expose())
        .await
        .map_err(|(e, _)| down(&format!("logging in as {:?}", config.username), &e))?;
    let mailbox =
        session.select(&config.folder).await.map_err(|e| down(&format!("selecting {:?}", config.folder), &e))?;
    let keywords =
        mailbox.permanent_flags.iter().any(|f| matches!(f, Flag::MayCreate) || *f == Flag::Custom(DONE_KEYWORD.into()));
    let can_move = session.capabilities().await.map_err(|e| down("CAPABILITY", &e))?.has_str("MOVE");
    if let Some(done) = &config.done_folder {
        // a folder that exists already answers NO: what matters is the MOVE
        let _ = session.create(done).await;
    }
    let query = if keywords { format!("UNKEYWORD {DONE_KEYWORD}") } else { "UNSEEN".to_owned() };
    let mut uids: Vec<u32> = session.uid_search(&query).await.map_err(|e| down("SEARCH", &e))?.into_iter().collect();
    uids.sort_unstable();
    let marker = Marker { keywords, can_move, done_folder: config.done_folder.as_deref() };
    let mut summary = PollSummary::default();
    for uid in uids {
        if !process(&mut session, uid, sink, &marker, &mut summary).await? {
            summary.sink_failed = true;
            break;
        }
    }
    let _ = session.logout().await;
    Ok(summary)
}

/// How a processed message is marked.
struct Marker<'a> {
    keywords: bool,
    can_move: bool,
    done_folder: Option<&'a str>,
}

/// Reads, records and marks message `uid`; `false` when the sink failed (the
/// message stays unmarked).
async fn process<T>(
    session: &mut async_imap::Session<T>,
    uid: u32,
    sink: &dyn BounceSink,
    marker: &Marker<'_>,
    summary: &mut PollSummary,
) -> Result<bool, MailboxError>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let Some(raw) = fetch_raw(session, uid).await? else {
        return Ok(true);
    };
    // parse_message does not panic (see its tests); should a message prove otherwise,
    // it is counted malformed instead of ending the reader
    let parsed = std::panic::catch_unwind(|| parse_message(&raw)).unwrap_or(Err(super::DsnError::ParserFailed));
    match parsed {
        Ok(reports) => {
            let count = reports.len();
            if let Err(e) = record_all(sink, reports).await {
                tracing::warn!(uid, error = %e, "a bounce could not be recorded; the message waits for the next poll");
                return Ok(false);
            }
            summary.reports += count;
        }
        Err(e) => {
            tracing::warn!(uid, error = %e, "a message in the bounce mailbox is malformed; marked without a report");
            crate::telemetry::global().bounce_rejected("mailbox", "malformed");
            summary.malformed += 1;
        }
    }
    mark(session, uid, marker).await?;
    summary.processed += 1;
    Ok(true)
}

async fn record_all(sink: &dyn BounceSink, reports: Vec<super::BounceReport>) -> Result<(), SinkError> {
    for report in reports {
        sink.record(report).await?;
    }
    Ok(())
}

/// The message's first [`MAX_MESSAGE_BYTES`], fetched without setting `\Seen`;
/// `None` when it is gone.
async fn fetch_raw<T>(session: &mut async_imap::Session<T>, uid: u32) -> Result<Option<Vec<u8>>, MailboxError>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let fetches: Vec<_> = session
        .uid_fetch(uid.to_string(), format!("BODY.PEEK[]<0.{MAX_MESSAGE_BYTES}>"))
        .await
        .map_err(|e| MailboxError::Down(format!("FETCH {uid}: {e}")))?
        .try_collect()
        .await
        .map_err(|e| MailboxError::Down(format!("FETCH {uid}: {e}")))?;
    Ok(fetches.iter().find(|f| f.uid == Some(uid)).or(fetches.first()).and_then(|f| f.body()).map(<[u8]>::to_vec))
}

/// Flags the message processed, then moves (or copies) it to the done folder.
async fn mark<T>(session: &mut async_imap::Session<T>, uid: u32, marker: &Marker<'_>) -> Result<(), MailboxError>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let flags = if marker.keywords {
        format!("+FLAGS.SILENT (\\Seen {DONE_KEYWORD})")
    } else {
        "+FLAGS.SILENT (\\Seen)".to_owned()
    };
    let updates = session
        .uid_store(uid.to_string(), &flags)
        .await
        .map_err(|e| MailboxError::Down(format!("STORE {uid}: {e}")))?;
    let _: Vec<_> = updates.try_collect().await.map_err(|e| MailboxError::Down(format!("STORE {uid}: {e}")))?;
    let Some(done) = marker.done_folder else { return Ok(()) };
    let moved = if marker.can_move {
        session.uid_mv(uid.to_string(), done).await
    } else {
        session.uid_copy(uid.to_string(), done).await
    };
    moved.map_err(|e| MailboxError::Down(format!("moving {uid} to {done:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<MailboxConfig, MailboxConfigError> {
        MailboxConfig::parse(url, Secret::new("pw"))
    }

    #[test]
    fn a_url_names_server_user_and_folder() {
        let c = parse("imaps://bounces%40example.com@imap.example.com/Bounces%20In").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("imap.example.com", 993, true));
        assert_eq!(c.username, "bounces@example.com");
        assert_eq!(c.folder, "Bounces In");
        assert_eq!(c.poll_every, DEFAULT_POLL_EVERY);
        let c = parse("imaps://u@imap.example.com:1993").unwrap();
        assert_eq!((c.port, c.folder.as_str()), (1993, "INBOX"));
        let c = parse("imap://u@127.0.0.1:1143/INBOX").unwrap();
        assert_eq!((c.port, c.tls), (1143, false));
        assert!(parse("imap://u@[::1]/INBOX").is_ok());
    }

    #[test]
    fn a_bad_url_says_why() {
        for (url, says) in [
            ("imap://u@imap.example.com/INBOX", "loopback"),
            ("imaps://imap.example.com/INBOX", "no user"),
            ("imaps://u:pw@imap.example.com/INBOX", "password"),
            ("pop3://u@imap.example.com", "scheme"),
            ("not a url", "not a URL"),
            ("imaps://u@imap.example.com/INBOX?x=1", "query"),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains(says) && e.starts_with("bounce_mailbox"), "{url}: {e}");
        }
    }

    #[test]
    fn health_starts_down_and_follows_polls() {
        let h = MailboxHealth::new();
        assert!(!h.is_up());
        h.set(Some("down".into()));
        assert_eq!(h.last_error().as_deref(), Some("down"));
        let clone = h.clone();
        h.set(None);
        assert!(clone.is_up());
        assert_eq!(clone.last_error(), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let h = MailboxHealth::new();
        let mut b = Duration::from_secs(5);
        let waits: Vec<u64> =
            (0..8).map(|_| failed(&h, "x".into(), &mut b, Duration::from_secs(300)).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
    }
}

/// Against a real Dovecot (`bounces::testing`).
#[cfg(test)]
mod dovecot {
    use std::time::Instant;

    use super::*;
    use crate::bounces::testing::{DovecotServer, RecordingSink, arf_for, dsn_for};
    use crate::bounces::{BounceKey, BounceKind};

    const TOKEN: &str = "s42-0123456789abcdef";

    fn original(n: u32) -> Vec<u8> {
        format!(
            "Return-Path: <bounces+{TOKEN}@example.com>\r\nFrom: Example <noreply@example.com>\r\n\
             To: jane{n}@example.org\r\nSubject: Please re-verify\r\nMessage-ID: <orig-{n}@example.com>\r\n\r\nHello\r\n"
        )
        .into_bytes()
    }

    fn hard_bounce(n: u32) -> Vec<u8> {
        dsn_for(
            &original(n),
            &format!("jane{n}@example.org"),
            "5.1.1",
            "550 5.1.1 user unknown",
            &format!("bounces+{TOKEN}@example.com"),
        )
    }

    async fn poll(server: &DovecotServer, sink: &RecordingSink) -> PollSummary {
        let config = server.mailbox_config();
        let tls = tls_connector(&config).unwrap();
        poll_once(&config, tls.as_ref(), sink).await.unwrap_or_else(|e| panic!("{e}\n{}", server.log()))
    }

    fn malformed_count() -> u64 {
        let text = crate::telemetry::global().encode();
        text.lines()
            .find(|l| {
                l.starts_with("reverify_bounce_rejected_total{")
                    && l.contains("source=\"mailbox\"")
                    && l.contains("reason=\"malformed\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    #[tokio::test]
    async fn reports_reach_the_sink_and_their_messages_are_flagged_not_deleted() {
        let server = DovecotServer::start();
        server.deliver(&hard_bounce(1));
        server.deliver(&arf_for(&original(2), "jane2@example.org", &format!("bounces+{TOKEN}@example.com")));
        let sink = RecordingSink::new();
        let summary = poll(&server, &sink).await;
        assert_eq!((summary.processed, summary.reports, summary.malformed, summary.sink_failed), (2, 2, 0, false));
        let reports = sink.reports();
        let kinds: Vec<BounceKind> = reports.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [BounceKind::Hard, BounceKind::Complaint]);
        assert_eq!(reports[0].keys[0], BounceKey::Token(TOKEN.into()));
        assert_eq!(reports[0].keys[1], BounceKey::MessageId("orig-1@example.com".into()));
        assert_eq!(reports[1].keys[1], BounceKey::MessageId("orig-2@example.com".into()));
        let inbox = server.messages("INBOX");
        assert_eq!(inbox.len(), 2, "nothing deleted");
        assert!(inbox.iter().all(|m| m.is_done() && !m.deleted), "{inbox:?}");
        // a second poll finds nothing new
        assert_eq!(poll(&server, &sink).await.processed, 0);
        assert_eq!(sink.reports().len(), 2);
    }

    #[tokio::test]
    async fn a_huge_bounce_is_read_up_to_the_limit() {
        let server = DovecotServer::start();
        let mut raw = hard_bounce(6);
        let end = raw.len() - "--reverify-dsn-boundary--\r\n".len();
        raw.truncate(end);
        let filler = "x".repeat(998) + "\r\n";
        let mut huge = String::from("--reverify-dsn-boundary\r\nContent-Type: text/plain\r\n\r\n");
        while huge.len() < MAX_MESSAGE_BYTES + 1024 * 1024 {
            huge.push_str(&filler);
        }
        raw.extend_from_slice(huge.as_bytes());
        raw.extend_from_slice(b"--reverify-dsn-boundary--\r\n");
        server.deliver(&raw);
        let sink = RecordingSink::new();
        assert_eq!(poll(&server, &sink).await.processed, 1);
        assert_eq!(sink.reports()[0].kind, BounceKind::Hard);
    }

    #[tokio::test]
    async fn a_failing_sink_leaves_the_message_for_the_next_poll() {
        let server = DovecotServer::start();
        server.deliver(&hard_bounce(3));
        let sink = RecordingSink::new();
        sink.set_failing(true);
        let summary = poll(&server, &sink).await;
        assert!(summary.sink_failed);
        assert_eq!(summary.processed, 0);
        let inbox = server.messages("INBOX");
        assert!(inbox.iter().all(|m| !m.seen && m.keywords.is_empty()), "left unflagged: {inbox:?}");
        sink.set_failing(false);
        assert_eq!(poll(&server, &sink).await.processed, 1);
        assert_eq!(sink.reports().len(), 1);
        assert!(server.messages("INBOX")[0].is_done());
    }

    #[tokio::test]
    async fn a_malformed_message_is_flagged_and_counted() {
        let server = DovecotServer::start();
        let raw = b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\n\
                    Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n--B--\r\n";
        server.deliver(raw);
        let before = malformed_count();
        let sink = RecordingSink::new();
        let summary = poll(&server, &sink).await;
        assert_eq!((summary.processed, summary.malformed, summary.reports), (1, 1, 0));
        assert!(malformed_count() > before);
        assert!(server.messages("INBOX")[0].is_done());
    }

    #[tokio::test]
    async fn a_done_folder_receives_the_processed_messages() {
        let server = DovecotServer::start();
        server.deliver(&hard_bounce(4));
        let mut config = server.mailbox_config();
        config.done_folder = Some("Processed".into());
        let sink = RecordingSink::new();
        let tls = tls_connector(&config).unwrap();
        let summary = poll_once(&config, tls.as_ref(), &sink).await.unwrap();
        assert_eq!(summary.processed, 1);
        assert!(server.messages("INBOX").is_empty());
        let done = server.messages("Processed");
        assert_eq!(done.len(), 1);
        assert!(done[0].is_done());
    }

    #[tokio::test]
    async fn a_mailbox_that_is_down_is_retried_until_it_is_up() {
        let mut server = DovecotServer::start();
        server.stop();
        server.deliver(&hard_bounce(5));
        let mut config = server.mailbox_config();
        config.retry_min = Duration::from_millis(100);
        config.retry_max = Duration::from_millis(400);
        config.poll_every = Duration::from_millis(200);
        let sink = Arc::new(RecordingSink::new());
        let health = MailboxHealth::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_mailbox(config, sink.clone(), health.clone(), async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        while health.last_error().is_none() {
            assert!(Instant::now() < deadline, "no failed poll");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!health.is_up());
        assert!(health.last_error().unwrap().contains("connecting to 127.0.0.1"), "{:?}", health.last_error());
        server.restart();
        while !health.is_up() || sink.reports().is_empty() {
            assert!(Instant::now() < deadline, "not up: {:?}\n{}", health.last_error(), server.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(health.last_error(), None);
        let _ = stop.send(());
        task.await.unwrap();
        assert!(server.messages("INBOX")[0].is_done());
    }

    #[tokio::test]
    async fn a_wrong_password_is_down_with_the_reason() {
        let server = DovecotServer::start();
        let mut config = server.mailbox_config();
        config.password = Secret::new("wrong");
        let tls = tls_connector(&config).unwrap();
        let e = poll_once(&config, tls.as_ref(), &RecordingSink::new()).await.unwrap_err();
        assert!(e.to_string().contains("logging in"), "{e}");
    }

    #[tokio::test]
    async fn a_server_outside_the_trusted_cas_is_refused() {
        let server = DovecotServer::start();
        let mut config = server.mailbox_config();
        config.ca_file = None;
        let tls = tls_connector(&config).unwrap();
        let e = poll_once(&config, tls.as_ref(), &RecordingSink::new()).await.unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
    }
}
