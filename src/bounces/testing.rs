//! Test support for the bounce intakes: a real IMAP server (Debian's
//! `dovecot-imapd`, a private instance with a generated config), builders of standard
//! DSNs and ARF complaints, and a sink that records what it is given.
//!
//! Not part of the product; hidden from the docs. The server is a child process
//! stopped when the handle drops; start-up waits until the port accepts connections
//! (polled, with a deadline). It runs as root (CI and the dev machines do): its mail
//! user is `nobody`, its Maildir under a temp dir.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::mailbox::MailboxConfig;
use super::{BounceReport, BounceSink, Recorded, SinkError};
use crate::Secret;

/// The Dovecot binary `dovecot-imapd` installs.
const DOVECOT: &str = "/usr/sbin/dovecot";
/// The test user and password.
pub const USER: &str = "bounces";
/// The test user's password.
pub const PASSWORD: &str = "bounce-secret";
/// The mail user's uid and gid (`nobody`, `nogroup`).
const MAIL_ID: u32 = 65534;

/// A running Dovecot on 127.0.0.1 serving IMAPS for [`USER`], with a certificate
/// signed by a CA made for it alone ([`DovecotServer::ca_file`]).
pub struct DovecotServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl DovecotServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When Dovecot is missing (run `scripts/install-test-deps.sh`), the tests do
    /// not run as root, or it does not listen within 20 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(dir.path().metadata().expect("temp dir").uid(), 0, "the Dovecot fixture runs as root");
        assert!(Path::new(DOVECOT).exists(), "{DOVECOT} is missing: run scripts/install-test-deps.sh");
        // the login and mail processes run as other users and go through it
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let port = crate::notify::testing::free_port();
        let mut server = Self { child: None, port, dir };
        server.prepare();
        server.launch();
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn prepare(&self) {
        make_certificates(self.dir.path());
        let home = self.home();
        for sub in ["", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"] {
            let p = home.join(sub);
            std::fs::create_dir_all(&p).expect("create the Maildir");
            std::os::unix::fs::chown(&p, Some(MAIL_ID), Some(MAIL_ID)).expect("chown the Maildir");
        }
        let passwd = format!("{USER}:{{PLAIN}}{PASSWORD}:{MAIL_ID}:{MAIL_ID}::{}::\n", home.display());
        std::fs::write(self.path("passwd"), passwd).expect("write passwd");
        std::fs::write(self.path("dovecot.conf"), self.config()).expect("write dovecot.conf");
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let port = self.port;
        format!(
            "base_dir = {d}/run\n\
             state_dir = {d}/state\n\
             log_path = {d}/dovecot.log\n\
             protocols = imap\n\
             listen = 127.0.0.1\n\
             ssl = yes\n\
             ssl_cert = <{d}/server.pem\n\
             ssl_key = <{d}/server.key\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             first_valid_uid = 1\n\
             mail_location = maildir:~/Maildir\n\
             namespace inbox {{\n  inbox = yes\n}}\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = 0\n  }}\n  \
               inet_listener imaps {{\n    address = 127.0.0.1\n    port = {port}\n    ssl = yes\n  }}\n}}\n"
        )
    }

    fn launch(&mut self) {
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(self.path("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("dovecot.stderr")).expect("the server's stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {DOVECOT} ({e}); run scripts/install-test-deps.sh"));
        self.child = Some(child);
        self.wait_until_listening(Duration::from_secs(20));
    }

    fn wait_until_listening(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("child status") {
                panic!("dovecot exited with {status} before listening: {}", self.log());
            }
            assert!(Instant::now() < deadline, "dovecot did not listen on {addr} within {limit:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server wrote to its logs, for a failing assertion.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.path(n)).unwrap_or_default();
        format!("{}{}", read("dovecot.stderr"), read("dovecot.log"))
    }

    /// The port it listens on (IMAPS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate that signed the server's.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A reader's settings for it: `imaps://bounces@127.0.0.1:PORT/INBOX`, the
    /// password, its CA, no done folder.
    pub fn mailbox_config(&self) -> MailboxConfig {
        let url = format!("imaps://{USER}@127.0.0.1:{}/INBOX", self.port);
        let mut config = MailboxConfig::parse(&url, Secret::new(PASSWORD)).expect("a valid bounce_mailbox");
        config.ca_file = Some(self.ca_file());
        config
    }

    /// Drops `raw` into the inbox, as a local delivery agent would (written in
    /// `tmp/`, renamed into `new/`).
    pub fn deliver(&self, raw: &[u8]) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("{}.M{}P{}Q{n}.reverify-test", now.as_secs(), now.subsec_micros(), std::process::id());
        let maildir = self.home().join("Maildir");
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).expect("write the message");
        std::os::unix::fs::chown(&tmp, Some(MAIL_ID), Some(MAIL_ID)).expect("chown the message");
        std::fs::rename(&tmp, maildir.join("new").join(&name)).expect("deliver the message");
    }

    /// The messages in `folder` (`INBOX`, or a folder's name), oldest first, with
    /// their flags as the Maildir holds them.
    pub fn messages(&self, folder: &str) -> Vec<StoredMessage> {
        let maildir = self.home().join("Maildir");
        let dir =
            if folder.eq_ignore_ascii_case("INBOX") { maildir.clone() } else { maildir.join(format!(".{folder}")) };
        let keywords: Vec<(char, String)> = std::fs::read_to_string(dir.join("dovecot-keywords"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (i, name) = l.split_once(' ')?;
                let i: u8 = i.parse().ok().filter(|i| *i < 26)?;
                Some((char::from(b'a' + i), name.to_owned()))
            })
            .collect();
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort_by_key(|p| {
            p.file_name().map(|n| n.to_string_lossy().split(':').next().unwrap_or_default().to_owned())
        });
        files.into_iter().map(|p| StoredMessage::read(&p, &keywords)).collect()
    }

    /// Stops the server; a later connection is refused until [`DovecotServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again, on the same port with the same mail.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for DovecotServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message in the Maildir and its flags.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub raw: Vec<u8>,
    /// `\Seen`.
    pub seen: bool,
    /// `\Deleted`.
    pub deleted: bool,
    /// Its keywords (`$ReverifyDone`).
    pub keywords: Vec<String>,
}

impl StoredMessage {
    fn read(path: &Path, keywords: &[(char, String)]) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let flags = name.split_once(":2,").map(|(_, f)| f.to_owned()).unwrap_or_default();
        Self {
            raw: std::fs::read(path).expect("readable message"),
            seen: flags.contains('S'),
            deleted: flags.contains('T'),
            keywords: keywords.iter().filter(|(c, _)| flags.contains(*c)).map(|(_, k)| k.clone()).collect(),
        }
    }

    /// Whether the reader marked it processed.
    pub fn is_done(&self) -> bool {
        self.seen && self.keywords.iter().any(|k| k == super::mailbox::DONE_KEYWORD)
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with `openssl`:
/// `ca.pem`, `server.pem`, `server.key` in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=reverify test IMAP CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    // Dovecot reads the key after dropping no privileges, but keep it private anyway
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// The header block of `raw` (up to the first empty line), with CRLF line ends.
fn header_block(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let head = text.split_once("\n\n").map_or(text.as_str(), |(h, _)| h);
    head.lines().map(|l| format!("{l}\r\n")).collect()
}

/// `raw` with CRLF line ends.
fn crlf(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace("\r\n", "\n").replace('\n', "\r\n")
}

/// A stable Message-ID for a report built from `parts`.
fn report_id(kind: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(kind);
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    format!("{kind}-{}@mx.reverify.test", &hex::encode(h.finalize())[..24])
}

/// A standard RFC 3464 DSN about `original` (its headers attached as
/// `text/rfc822-headers`), addressed to `envelope_to` (the original's return path),
/// saying `failed_recipient` failed with `status` (`5.1.1`: `Action: failed`; 2.x.x:
/// `delivered`) and `diagnostic` (the SMTP reply, given as `smtp; ...`). The same
/// arguments give the same bytes, Message-ID included.
pub fn dsn_for(original: &[u8], failed_recipient: &str, status: &str, diagnostic: &str, envelope_to: &str) -> Vec<u8> {
    let id = report_id(
        "dsn",
        &[original, failed_recipient.as_bytes(), status.as_bytes(), diagnostic.as_bytes(), envelope_to.as_bytes()],
    );
    let action = if status.starts_with('2') { "delivered" } else { "failed" };
    let b = "reverify-dsn-boundary";
    format!(
        "Return-Path: <>\r\n\
         Delivered-To: {envelope_to}\r\n\
         From: Mail Delivery System <MAILER-DAEMON@mx.reverify.test>\r\n\
         To: {envelope_to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{b}\"\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.reverify.test\r\n\
         Arrival-Date: Mon, 7 Dec 2026 09:59:00 +0000\r\n\
         \r\n\
         Final-Recipient: rfc822; {failed_recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\
         Last-Attempt-Date: Mon, 7 Dec 2026 09:59:30 +0000\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\
         \r\n\
         --{b}--\r\n",
        headers = header_block(original),
    )
    .into_bytes()
}

/// A standard RFC 5965 ARF complaint about `original` (attached whole as
/// `message/rfc822`) by `complainant`, addressed to `envelope_to`. The same
/// arguments give the same bytes.
pub fn arf_for(original: &[u8], complainant: &str, envelope_to: &str) -> Vec<u8> {
    let id = report_id("arf", &[original, complainant.as_bytes(), envelope_to.as_bytes()]);
    let b = "reverify-arf-boundary";
    format!(
        "Return-Path: <>\r\n\
         Delivered-To: {envelope_to}\r\n\
         From: Feedback Loop <fbl@isp.reverify.test>\r\n\
         To: {envelope_to}\r\n\
         Subject: FW: complaint\r\n\
         Date: Mon, 7 Dec 2026 11:00:00 +0000\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"{b}\"\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an email abuse report.\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: reverify-test/1.0\r\n\
         Version: 1\r\n\
         Original-Rcpt-To: {complainant}\r\n\
         Arrival-Date: Mon, 7 Dec 2026 10:30:00 +0000\r\n\
         \r\n\
         --{b}\r\n\
         Content-Type: message/rfc822\r\n\
         \r\n\
         {original}\r\n\
         --{b}--\r\n",
        original = crlf(original),
    )
    .into_bytes()
}

/// A sink that keeps every report, and fails every call while told to.
#[derive(Debug, Default)]
pub struct RecordingSink {
    reports: Mutex<Vec<BounceReport>>,
    failing: AtomicBool,
}

impl RecordingSink {
    /// A sink that records.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, every call fails (`true`) or records (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// What it recorded so far.
    pub fn reports(&self) -> Vec<BounceReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl BounceSink for RecordingSink {
    async fn record(&self, report: BounceReport) -> Result<Recorded, SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError("the test sink is failing".into()));
        }
        let mut reports = self.reports.lock().map_err(|_| SinkError("poisoned".into()))?;
        let duplicate = reports.iter().any(|r| r.source == report.source && r.dedupe_id == report.dedupe_id);
        reports.push(report);
        Ok(if duplicate { Recorded::Duplicate } else { Recorded::Applied })
    }
}
