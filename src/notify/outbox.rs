//! The file outbox: each email written as one `.eml` file (RFC 5322, byte for byte
//! what SMTP would carry), for the demo and for systems that pick mail up from a
//! directory.
//!
//! The file necessarily holds the link; that is the point of an outbox. So the
//! directory is made private (0700) and every file 0600, and a file appears whole or
//! not at all: written to a temporary file in the same directory, flushed, then
//! renamed into place without replacing anything. Names sort by time and say whose
//! message it is: `20261126T093000.123Z_CAMPAIGN_USERID_sSTEP.eml`.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::email::message_id_of;
use super::{ChannelKind, Delivered, Message, NotifyError};

const KEY: &str = "outbox_dir";

/// A directory of `.eml` files.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens the directory, creating it (0700) when missing, and tightening it to
    /// 0700 when others could read it.
    ///
    /// # Errors
    /// [`NotifyError::Config`] naming `outbox_dir` and the path.
    pub fn open(dir: &Path) -> Result<Self, NotifyError> {
        let bad = |what: &str, e: std::io::Error| NotifyError::config(KEY, format!("{}: {what}: {e}", dir.display()));
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(|e| bad("cannot create", e))?;
        } else if !dir.is_dir() {
            return Err(NotifyError::config(KEY, format!("{} is not a directory", dir.display())));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir).map_err(|e| bad("cannot read", e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), "outbox directory was readable by others; setting it to 0700");
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| bad("cannot make private", e))?;
            }
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one email for `msg`.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] when the file cannot be written (a full disk may
    /// clear; the reason names the directory, never the content).
    pub async fn write(&self, msg: &Message, email: &lettre::Message) -> Result<Delivered, NotifyError> {
        let bytes = zeroize::Zeroizing::new(email.formatted());
        let stem = format!(
            "{}_{}_{}_s{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            msg.campaign,
            msg.recipient.user_id,
            msg.step
        );
        let dir = self.dir.clone();
        let name = tokio::task::spawn_blocking(move || write_atomically(&dir, &stem, &bytes))
            .await
            .map_err(|e| NotifyError::transient(format!("outbox writer stopped: {e}")))?
            .map_err(|e| NotifyError::transient(format!("outbox {}: {e}", self.dir.display())))?;
        Ok(Delivered { channel: ChannelKind::Outbox, message_id: message_id_of(email), detail: name, attempts: 1 })
    }
}

/// Temp file (0600, same directory) -> write -> fsync -> rename without replacing;
/// a name already taken (same millisecond) gets a counter. Returns the file name.
fn write_atomically(dir: &Path, stem: &str, bytes: &[u8]) -> std::io::Result<String> {
    // tempfile creates its files 0600 on Unix
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").suffix(".eml").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    let mut n = 0u32;
    loop {
        let name = if n == 0 { format!("{stem}.eml") } else { format!("{stem}_{n}.eml") };
        match tmp.persist_noclobber(dir.join(&name)) {
            Ok(_) => {
                // make the rename itself durable
                #[cfg(unix)]
                std::fs::File::open(dir)?.sync_all()?;
                return Ok(name);
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                tmp = e.file;
                n += 1;
            }
            Err(e) => return Err(e.error),
        }
    }
}
