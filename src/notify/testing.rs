//! Test support shared by the notify tests and the engine's end-to-end tests: a real
//! SMTP server over TCP (Debian's `python3-aiosmtpd`, writing a Maildir), a small
//! reader for the messages it received, and a capture of every tracing line.
//!
//! Not part of the product; hidden from the docs. The server is a child process that
//! is killed when the handle drops. Start-up waits until the port accepts connections
//! (polled, with a deadline), not for a fixed time.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// What the fault server does to recipients whose address contains `pattern`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub pattern: String,
    pub action: FaultAction,
    /// How many times the fault fires before the recipient is accepted; `None`: always.
    pub times: Option<u32>,
}

/// A fault's effect: at `RCPT TO`, or at the end of the message data.
#[derive(Debug, Clone, Copy)]
pub enum FaultAction {
    /// At `RCPT TO`: answer with this reply code (4xx: try later; 5xx: never).
    Reply(u16),
    /// At `RCPT TO`: close the connection without a reply.
    Drop,
    /// At the end of the data: store the message, then close the connection without
    /// a reply (the message arrived, but the client cannot know).
    AcceptThenDrop,
    /// At the end of the data: answer with this reply code and store nothing; the
    /// message's Message-ID is kept ([`SmtpServer::refused_message_ids`]).
    ReplyAfterData(u16),
}

impl Fault {
    /// `pattern` gets reply `code`, `times` times (`None`: always).
    pub fn reply(pattern: &str, code: u16, times: Option<u32>) -> Self {
        Self { pattern: pattern.to_owned(), action: FaultAction::Reply(code), times }
    }

    /// `pattern`'s connection is dropped, `times` times (`None`: always).
    pub fn drop_connection(pattern: &str, times: Option<u32>) -> Self {
        Self { pattern: pattern.to_owned(), action: FaultAction::Drop, times }
    }

    /// `pattern`'s message is stored, then the connection is closed before the reply
    /// to the data, `times` times (`None`: always).
    pub fn accept_then_drop(pattern: &str, times: Option<u32>) -> Self {
        Self { pattern: pattern.to_owned(), action: FaultAction::AcceptThenDrop, times }
    }

    /// `pattern`'s message data is answered with reply `code`, `times` times (`None`:
    /// always).
    pub fn reply_after_data(pattern: &str, code: u16, times: Option<u32>) -> Self {
        Self { pattern: pattern.to_owned(), action: FaultAction::ReplyAfterData(code), times }
    }

    fn arg(&self) -> String {
        let action = match self.action {
            FaultAction::Reply(code) => code.to_string(),
            FaultAction::Drop => "drop".to_owned(),
            FaultAction::AcceptThenDrop => "accept-drop".to_owned(),
            FaultAction::ReplyAfterData(code) => format!("{code}data"),
        };
        match self.times {
            Some(n) => format!("{}={action}*{n}", self.pattern),
            None => format!("{}={action}", self.pattern),
        }
    }
}

/// TLS for the test server, with a certificate for 127.0.0.1 signed by a CA made
/// for this server alone (the client trusts it through `ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestTls {
    /// Plain connection, upgraded with STARTTLS (required by the server).
    Starttls,
    /// TLS from the first byte (SMTPS).
    Implicit,
}

/// A running aiosmtpd on 127.0.0.1, storing what it receives in a Maildir.
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    maildir: PathBuf,
    tls: Option<(TestTls, PathBuf)>,
    dir: tempfile::TempDir,
}

/// The Python the server runs on: Debian's, where `python3-aiosmtpd` installs.
const PYTHON: &str = "/usr/bin/python3";

impl SmtpServer {
    /// A server that accepts every message.
    ///
    /// # Panics
    /// When aiosmtpd is missing (run `scripts/install-test-deps.sh`) or does not start.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server that applies `faults` (see `tests/smtp/faulty.py`).
    ///
    /// # Panics
    /// As [`SmtpServer::start`].
    pub fn start_with(faults: &[Fault]) -> Self {
        Self::launch(faults, None)
    }

    /// A server that speaks TLS; [`SmtpServer::url`] names the CA to trust.
    ///
    /// # Panics
    /// As [`SmtpServer::start`], or when `openssl` cannot make the certificates.
    pub fn start_tls(tls: TestTls) -> Self {
        Self::launch(&[], Some(tls))
    }

    fn launch(faults: &[Fault], tls: Option<TestTls>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("Maildir");
        let port = free_port();
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        if faults.is_empty() {
            cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
        } else {
            let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp");
            cmd.env("PYTHONPATH", scripts).args(["-c", "faulty.FaultyMailbox"]).arg(&maildir);
            cmd.args(faults.iter().map(Fault::arg));
        }
        let tls = tls.map(|mode| {
            let (cert, key, ca) = make_certificates(dir.path());
            let (cert_flag, key_flag) = match mode {
                TestTls::Starttls => ("--tlscert", "--tlskey"),
                TestTls::Implicit => ("--smtpscert", "--smtpskey"),
            };
            cmd.arg(cert_flag).arg(cert).arg(key_flag).arg(key);
            (mode, ca)
        });
        // stderr goes to a file: a pipe nobody drains would stop the server once
        // its warnings fill the pipe's buffer
        let log = dir.path().join("aiosmtpd.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the server's log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} -m aiosmtpd ({e}); run scripts/install-test-deps.sh"));
        let mut server = Self { child: Some(child), port, maildir, tls, dir };
        server.wait_until_listening(Duration::from_secs(20));
        server
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
                let err = std::fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default();
                panic!("aiosmtpd exited with {status} before listening: {err}");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {addr} within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An `smtp_url` for it: without TLS (it is on loopback), or with the TLS it was
    /// started with and its CA.
    pub fn url(&self) -> String {
        let port = self.port;
        match &self.tls {
            None => format!("smtp://127.0.0.1:{port}?tls=none&timeout_ms=5000"),
            Some((mode, ca)) => {
                let scheme = if *mode == TestTls::Implicit { "smtps" } else { "smtp" };
                let ca: String = url::form_urlencoded::byte_serialize(ca.to_string_lossy().as_bytes()).collect();
                format!("{scheme}://127.0.0.1:{port}?timeout_ms=5000&ca_file={ca}")
            }
        }
    }

    /// Every message received so far, oldest first. SMTP is synchronous: a message
    /// whose send returned is already here.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| ReceivedMail::parse(&std::fs::read_to_string(&p).expect("readable message")))
            .collect()
    }

    /// The Message-IDs (with their angle brackets) of the messages refused after
    /// their data ([`FaultAction::ReplyAfterData`]), oldest first.
    pub fn refused_message_ids(&self) -> Vec<String> {
        let log = self.maildir.with_file_name("refused.log");
        std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Stops the server; a later connection is refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with `openssl`.
/// Returns (certificate, key, CA certificate).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let quiet = ["-days", "2"];
    run(&[
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"][..],
        &quiet,
        &["-subj", "/CN=reverify test CA"],
    ]
    .concat());
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
        p("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    run(&[
        &[
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
            "-extfile",
            "server.ext",
        ][..],
        &quiet,
    ]
    .concat());
    (p("server.pem"), p("server.key"), p("ca.pem"))
}

/// A port that was free a moment ago. (The OS hands out ephemeral ports in turn, so
/// another test is unlikely to take it before the server binds.)
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One received email, decoded enough for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub raw: String,
    pub headers: Vec<(String, String)>,
    /// The decoded `text/plain` part.
    pub text: Option<String>,
    /// The decoded `text/html` part.
    pub html: Option<String>,
    /// The top-level content type, e.g. `multipart/alternative; boundary=...`.
    pub content_type: String,
}

impl ReceivedMail {
    /// Parses an RFC 5322 message with a single or a multipart body.
    pub fn parse(raw: &str) -> Self {
        let normal = raw.replace("\r\n", "\n");
        let (headers, body) = split_head(&normal);
        let mut mail = Self {
            raw: raw.to_owned(),
            content_type: header_in(&headers, "content-type").unwrap_or("text/plain").to_owned(),
            headers,
            text: None,
            html: None,
        };
        collect_parts(&mail.headers.clone(), body, &mut mail);
        mail
    }

    /// The first header called `name` (any case), unfolded, encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name).map(decode_words)
    }

    /// Every header called `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The HTML part with the entities minijinja writes turned back into characters.
    pub fn html_unescaped(&self) -> Option<String> {
        self.html.as_ref().map(|h| {
            h.replace("&#x2f;", "/")
                .replace("&#x27;", "'")
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
    }
}

fn split_head(msg: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = msg.split_once("\n\n").unwrap_or((msg, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    (headers, body)
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn collect_parts(headers: &[(String, String)], body: &str, mail: &mut ReceivedMail) {
    let ctype = header_in(headers, "content-type").unwrap_or("text/plain");
    let lower = ctype.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let Some(boundary) = param(ctype, "boundary") else { return };
        let delim = format!("--{boundary}");
        for chunk in body.split(delim.as_str()).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix('\n').unwrap_or(chunk);
            let (h, b) = split_head(chunk);
            collect_parts(&h, b, mail);
        }
        return;
    }
    let encoding = header_in(headers, "content-transfer-encoding").unwrap_or("7bit").to_ascii_lowercase();
    let decoded = match encoding.as_str() {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(compact).unwrap_or_default())
                .into_owned()
        }
        "quoted-printable" => decode_qp(body),
        _ => body.strip_suffix('\n').unwrap_or(body).to_owned(),
    };
    if lower.starts_with("text/plain") && mail.text.is_none() {
        mail.text = Some(decoded);
    } else if lower.starts_with("text/html") && mail.html.is_none() {
        mail.html = Some(decoded);
    }
}

fn decode_qp(body: &str) -> String {
    let mut out = Vec::new();
    let lines: Vec<&str> = body.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches([' ', '\t']);
        let (content, soft) = match line.strip_suffix('=') {
            Some(c) => (c, true),
            None => (line, false),
        };
        let bytes = content.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] == b'='
                && let Some(v) = content.get(j + 1..j + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                j += 3;
                continue;
            }
            out.push(bytes[j]);
            j += 1;
        }
        if !soft && i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    let s = String::from_utf8_lossy(&out).into_owned();
    s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`).
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        let after = &rest[start + 2..];
        let parts: Vec<&str> = after.splitn(3, '?').collect();
        let decoded = if parts.len() == 3 {
            parts[2].find("?=").and_then(|end| {
                let text = &parts[2][..end];
                let bytes = match parts[1].to_ascii_lowercase().as_str() {
                    "b" => base64::engine::general_purpose::STANDARD.decode(text).ok()?,
                    "q" => decode_qp(&text.replace('_', " ")).into_bytes(),
                    _ => return None,
                };
                let consumed = start + 2 + parts[0].len() + 1 + parts[1].len() + 1 + end + 2;
                Some((String::from_utf8_lossy(&bytes).into_owned(), consumed))
            })
        } else {
            None
        };
        match decoded {
            Some((text, consumed)) => {
                // white space between two encoded words is not part of the text
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &rest[consumed..];
                last_was_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every tracing line written while the guard lives, on this thread, at TRACE level.
#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Starts capturing; keep the guard alive for as long as lines should be caught.
    /// (Thread-local: use it with a current-thread runtime, `#[tokio::test]`'s default.)
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Everything written so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().expect("log buffer")).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multipart_with_qp_and_base64_and_encoded_subject() {
        let raw = "Subject: =?utf-8?b?SMOpbGxv?= =?utf-8?q?_w=C3=B6rld?=\r\n\
                   Content-Type: multipart/alternative;\r\n boundary=\"XYZ\"\r\n\r\n\
                   --XYZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                   a long =\r\nline =3D x\r\n\
                   --XYZ\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                   PHA+aGk8L3A+\r\n--XYZ--\r\n";
        let m = ReceivedMail::parse(raw);
        assert_eq!(m.header("subject").unwrap(), "Héllo wörld");
        assert_eq!(m.text.as_deref(), Some("a long line = x"));
        assert_eq!(m.html.as_deref(), Some("<p>hi</p>"));
    }
}
