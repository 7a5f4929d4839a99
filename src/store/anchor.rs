//! The audit anchor: an append-only sink outside the database that receives the
//! chain's head `(seq, hash, time)` on every seal that moves it, so that a chain
//! cut at its tail, rewound, or rebuilt inside the database no longer matches what
//! was recorded outside it (`campaign audit --verify` compares them).
//!
//! Decisions:
//! - **Two sinks.** `file:///PATH`: one JSON line per seal, opened `O_APPEND` and
//!   fsynced before the seal commits, meant for a write-once (WORM) mount or a file
//!   with the append-only attribute (`chattr +a`). `syslog` (the local socket
//!   `/dev/log`, which journald and rsyslog read) or `syslog:///SOCKET`: the same
//!   line as the message, tag `reverify-audit`, facility `authpriv`, so that the
//!   log pipeline (and whatever ships it off the machine) keeps it. A syslog anchor
//!   cannot be read back by the worker: export its lines to a file
//!   (`journalctl -t reverify-audit -o cat > heads.jsonl`) and verify against that.
//! - **Written before the seal commits**, while the sealer holds the chain's head:
//!   lines come in chain order, and no committed head is ever missing from the
//!   anchor. An anchor that cannot be written fails the seal (the events stay
//!   unsealed and the next seal takes them): a chain that moves without its anchor
//!   would be a chain nobody can check.
//! - Only seals that move the head write a line: every command seals at its end,
//!   and a line per command that wrote nothing would only bury the real ones.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The syslog tag of an anchor line.
pub const SYSLOG_TAG: &str = "reverify-audit";
/// The local syslog socket.
pub const DEV_LOG: &str = "/dev/log";

/// Where chain heads go (`audit_anchor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// `file:///PATH`: an append-only file of JSON lines.
    File(PathBuf),
    /// `syslog` or `syslog:///SOCKET`: a datagram to the local syslog socket.
    Syslog(PathBuf),
}

/// One anchor line: the head after a seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchoredHead {
    /// The head's chain place.
    pub seq: i64,
    /// The head's link (hex SHA-256, or `hmac-sha256:` and hex with `audit_key`).
    pub hash: String,
    /// When the seal ran.
    pub at: DateTime<Utc>,
    /// The event at the head.
    pub event_id: i64,
    /// How many events this seal added.
    pub sealed: u64,
}

/// Why the anchor could not be parsed, written or read. Names the anchor.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("audit_anchor {0}")]
    Url(String),
    #[error("audit anchor {anchor}: {message}")]
    Io { anchor: String, message: String },
    #[error("audit anchor {anchor}, line {line}: not an anchor line: {message}")]
    Line { anchor: String, line: usize, message: String },
}

impl Anchor {
    /// Parses `audit_anchor` ([`crate::domain::endpoint::parse_anchor`]).
    ///
    /// # Errors
    /// [`AnchorError::Url`] for anything but `file:///ABSOLUTE`, `syslog` or
    /// `syslog:///SOCKET`.
    pub fn parse(s: &str) -> Result<Self, AnchorError> {
        use crate::domain::endpoint::{AnchorTarget, parse_anchor};
        match parse_anchor(s).map_err(AnchorError::Url)? {
            AnchorTarget::File(p) => Ok(Anchor::File(p)),
            AnchorTarget::Syslog(p) => Ok(Anchor::Syslog(p)),
        }
    }

    /// How the anchor is shown.
    pub fn shown(&self) -> String {
        match self {
            Anchor::File(p) => format!("file://{}", p.display()),
            Anchor::Syslog(p) if p == Path::new(DEV_LOG) => "syslog".into(),
            Anchor::Syslog(p) => format!("syslog://{}", p.display()),
        }
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> AnchorError {
        AnchorError::Io { anchor: self.shown(), message: format!("{what}: {e}") }
    }

    /// Appends `head` as one line, durably (see the module docs).
    ///
    /// # Errors
    /// [`AnchorError::Io`].
    pub fn append(&self, head: &AnchoredHead) -> Result<(), AnchorError> {
        let line = serde_json::to_string(head).map_err(|e| self.io("encode", e))?;
        match self {
            Anchor::File(path) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|e| self.io("open", e))?;
                // one write of a whole line: O_APPEND puts it at the end, whole
                f.write_all(format!("{line}\n").as_bytes()).map_err(|e| self.io("write", e))?;
                f.sync_data().map_err(|e| self.io("fsync", e))
            }
            Anchor::Syslog(socket) => {
                // RFC 3164 without the timestamp (the daemon adds its own):
                // <PRI>TAG[PID]: MSG, facility authpriv (10), severity notice (5)
                let msg = format!("<{}>{SYSLOG_TAG}[{}]: {line}", 10 * 8 + 5, std::process::id());
                let sock = std::os::unix::net::UnixDatagram::unbound().map_err(|e| self.io("socket", e))?;
                sock.send_to(msg.as_bytes(), socket).map_err(|e| self.io("send", e))?;
                Ok(())
            }
        }
    }

    /// Every head the anchor recorded, in the order written; `None` for a syslog
    /// anchor, which cannot be read back. A file not yet created holds none.
    ///
    /// # Errors
    /// [`AnchorError::Io`], [`AnchorError::Line`] naming the line.
    pub fn read(&self) -> Result<Option<Vec<AnchoredHead>>, AnchorError> {
        let Anchor::File(path) = self else { return Ok(None) };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
            Err(e) => return Err(self.io("open", e)),
        };
        let mut heads = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| self.io("read", e))?;
            if line.trim().is_empty() {
                continue;
            }
            let head = serde_json::from_str(&line).map_err(|e| AnchorError::Line {
                anchor: self.shown(),
                line: i + 1,
                message: e.to_string(),
            })?;
            heads.push(head);
        }
        Ok(Some(heads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sinks_and_refuses_the_rest() {
        assert_eq!(Anchor::parse("file:///var/lib/heads.jsonl").unwrap(), Anchor::File("/var/lib/heads.jsonl".into()));
        assert_eq!(Anchor::parse("syslog").unwrap(), Anchor::Syslog(DEV_LOG.into()));
        assert_eq!(Anchor::parse("syslog:///run/log.sock").unwrap(), Anchor::Syslog("/run/log.sock".into()));
        for bad in ["heads.jsonl", "file://relative/x", "http://x/y", "file:///x?y", ""] {
            let e = Anchor::parse(bad).unwrap_err();
            assert!(e.to_string().contains("file:///PATH"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_file_anchor_appends_lines_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Anchor::File(dir.path().join("heads.jsonl"));
        assert_eq!(a.read().unwrap(), Some(vec![]));
        let head = |seq| AnchoredHead { seq, hash: format!("{seq:064}"), at: Utc::now(), event_id: seq, sealed: 1 };
        a.append(&head(1)).unwrap();
        a.append(&head(2)).unwrap();
        let got = a.read().unwrap().unwrap();
        assert_eq!(got.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![1, 2]);
        std::fs::write(dir.path().join("heads.jsonl"), "{\"seq\":1}\n").unwrap();
        assert!(a.read().unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn a_syslog_anchor_sends_the_line_as_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let a = Anchor::Syslog(path);
        let head = AnchoredHead { seq: 7, hash: "ab".into(), at: Utc::now(), event_id: 9, sealed: 2 };
        a.append(&head).unwrap();
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(msg.starts_with("<85>reverify-audit["), "{msg}");
        let json = msg.split_once("]: ").unwrap().1;
        assert_eq!(serde_json::from_str::<AnchoredHead>(json).unwrap(), head);
        assert_eq!(a.read().unwrap(), None);
        // no socket: the seal must fail, not pass silently
        let gone = Anchor::Syslog(dir.path().join("missing.sock"));
        assert!(gone.append(&head).is_err());
    }
}
