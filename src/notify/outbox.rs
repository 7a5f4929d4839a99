//! The file outbox: each email written as one `.eml` file (RFC 5322, byte for byte
//! what SMTP would carry), for the demo and for systems that pick mail up from a
//! directory.
//!
//! The file necessarily holds the link; that is the point of an outbox. So the
//! directory is made private (0700) and every file 0600. Names sort by time and say
//! whose message it is: `20261126T093000.123Z_CAMPAIGN_USERID_sSTEP.eml` (`_1`, `_2`…
//! before `.eml` when the name is taken in the same millisecond).
//!
//! # Durability, in groups
//!
//! A message counts as delivered ([`Outbox::write`] returns `Ok`) only once it is on
//! disk under its final name, and a file appears under a final name whole or not at
//! all, even across a crash. Making that true costs a data sync and a directory sync,
//! and doing both per message was about half of a message's cost (64 writers: 350-400
//! µs of CPU a message, 180 µs grouped). So each message is written to a temporary file
//! on its own, and the syncs are shared: the messages waiting at a given moment form
//! one group, committed by one blocking call that syncs every file's data, renames each
//! into place without replacing anything, then syncs the directory once, and only then
//! answers each writer. While a group commits, the next one gathers; a lone message
//! costs what it did alone.
//!
//! # Temporary files
//!
//! They are named `.tmp-XXXXXX.part` in the outbox itself (a rename is atomic only
//! within one file system). They are never messages: the leading dot hides them from
//! shell globs and from every reader in this crate (the demo's count, `bench`'s
//! drain), and the `.part` ending keeps them out of anything that looks for `.eml`
//! files. A writer that fails removes its own; a crash between writing and renaming
//! leaves them behind, and then the message was not delivered as far as the
//! database knows (the target is recorded `delivery_unknown`, never `notified`), so
//! they may be deleted at any time.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tempfile::NamedTempFile;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::email::message_id_of;
use super::{ChannelKind, Delivered, Message, NotifyError};

const KEY: &str = "outbox_dir";

/// A directory of `.eml` files.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    commits: Arc<OutboxBatch>,
}

/// Whether `name` (an entry of an outbox directory) is a message: an `.eml` file
/// whose name does not start with a dot. Temporary files are not messages.
pub fn is_message_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && name.ends_with(".eml")
}

/// Removes every message for user `user_id` from the outbox directory `dir`
/// (`users forget`), then syncs the directory; returns the names removed. A
/// directory that does not exist holds none. A message is the user's when its name
/// says so (`…_CAMPAIGN_USERID_sSTEP.eml`; user ids are UUIDs, so one never
/// contains another).
///
/// # Errors
/// [`NotifyError::Config`] naming `outbox_dir`, the path and what failed.
pub fn forget_user(dir: &Path, user_id: &str) -> Result<Vec<String>, NotifyError> {
    let bad = |what: &str, e: std::io::Error| NotifyError::config(KEY, format!("{}: {what}: {e}", dir.display()));
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad("cannot read", e)),
    };
    let marker = format!("_{user_id}_s");
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| bad("cannot read", e))?;
        let name = entry.file_name();
        if is_message_name(&name) && name.to_string_lossy().contains(&marker) {
            std::fs::remove_file(entry.path()).map_err(|e| bad("cannot remove a message", e))?;
            removed.push(name.to_string_lossy().into_owned());
        }
    }
    if !removed.is_empty() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| bad("cannot sync", e))?;
    }
    removed.sort();
    Ok(removed)
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
        let handle = std::fs::File::open(dir).map_err(|e| bad("cannot open", e))?;
        Ok(Self { dir: dir.to_path_buf(), commits: Arc::new(OutboxBatch::new(dir, handle)) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one email for `msg`, returning once it is durable under its final name.
    ///
    /// # Errors
    /// [`NotifyError::Transient`] when the file cannot be written or synced (a full
    /// disk may clear; the reason names the directory, never the content). No file
    /// is then left under a final name.
    pub async fn write(&self, msg: &Message, email: &lettre::Message) -> Result<Delivered, NotifyError> {
        let bytes = Zeroizing::new(email.formatted());
        let stem = format!(
            "{}_{}_{}_s{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            msg.campaign,
            msg.recipient.user_id,
            msg.step
        );
        let name = self.store(stem, bytes).await?;
        Ok(Delivered { channel: ChannelKind::Outbox, message_id: message_id_of(email), detail: name, attempts: 1 })
    }

    /// Hands `bytes` to the next group commit, which writes it to a temporary file
    /// and makes it durable as `STEM.eml` (or `STEM_N.eml`). Returns the file name.
    /// The file is written by the group's blocking call, not by one of its own: a
    /// hand-off to a blocking thread per message cost more than its write.
    async fn store(&self, stem: String, bytes: Zeroizing<Vec<u8>>) -> Result<String, NotifyError> {
        let failed = |e: String| NotifyError::transient(format!("outbox {}: {e}", self.dir.display()));
        let (done, answer) = oneshot::channel();
        self.commits.enqueue(Pending { bytes, stem, done });
        answer.await.map_err(|_| NotifyError::transient("outbox writer stopped"))?.map_err(failed)
    }
}

/// Creates a temporary file (0600, in `dir`) holding `bytes`, not yet synced.
fn write_temp(dir: &Path, bytes: &[u8]) -> std::io::Result<NamedTempFile> {
    // tempfile creates its files 0600 on Unix
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").suffix(".part").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    Ok(tmp)
}

/// One message waiting for a group commit: its bytes, the name it is to get, and
/// where to send the outcome (the file name, or why not).
struct Pending {
    bytes: Zeroizing<Vec<u8>>,
    stem: String,
    done: oneshot::Sender<Result<String, String>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the bytes carry a session URL: never printed
        f.debug_struct("Pending").field("stem", &self.stem).finish_non_exhaustive()
    }
}

/// A message of a group written to its temporary file, not yet synced.
struct Written {
    tmp: NamedTempFile,
    stem: String,
    done: oneshot::Sender<Result<String, String>>,
}

/// The messages waiting for the next group commit, shared by every clone of an
/// [`Outbox`].
#[derive(Debug)]
struct OutboxBatch {
    dir: PathBuf,
    /// The directory, open since [`Outbox::open`]: synced after the renames, and the
    /// handle `syncfs` reports write-back errors through (each error once per handle,
    /// so it must outlive the groups).
    handle: std::fs::File,
    queue: Mutex<Queue>,
    #[cfg(test)]
    seam: tests::Seam,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Pending>,
    /// A committer task is running; it takes groups until the queue is empty.
    committing: bool,
}

impl OutboxBatch {
    fn new(dir: &Path, handle: std::fs::File) -> Self {
        Self {
            dir: dir.to_path_buf(),
            handle,
            queue: Mutex::default(),
            #[cfg(test)]
            seam: tests::Seam::default(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // the lock is never held across a panic point that leaves the queue invalid
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `p`, starting a committer task unless one is running.
    fn enqueue(self: &Arc<Self>, p: Pending) {
        let start = {
            let mut q = self.queue();
            q.waiting.push(p);
            !std::mem::replace(&mut q.committing, true)
        };
        if start {
            tokio::spawn(self.clone().commit_until_empty());
        }
    }

    /// Commits whatever is queued, as one group, until nothing is left. Each group
    /// runs on a blocking thread; the next gathers meanwhile.
    async fn commit_until_empty(self: Arc<Self>) {
        let mut reset = CommitterGone { commits: &self, armed: true };
        loop {
            let group = {
                let mut q = self.queue();
                if q.waiting.is_empty() {
                    q.committing = false;
                    // a write may start a new committer from here on: leave its queue be
                    reset.armed = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let this = self.clone();
            // a panic drops the group's senders: each writer then hears "stopped"
            let _ = tokio::task::spawn_blocking(move || this.commit(group)).await;
        }
    }

    /// Writes every message of `group` to a temporary file, syncs their data,
    /// renames each into place, syncs the directory, then answers every writer. A
    /// message whose file cannot be written gets that error alone.
    ///
    /// When the data sync fails, every writer in the group gets the error and the
    /// temporary files are removed: nothing was renamed. When the directory sync
    /// fails, every file renamed in the group is removed again before the writers
    /// get the error, so that a message reported as failed (and retried) does not
    /// also stay behind; a crash in between may still leave one under its final
    /// name, but then whole, since its data was synced first.
    fn commit(&self, group: Vec<Pending>) {
        #[cfg(test)]
        self.seam.groups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut written = Vec::with_capacity(group.len());
        for Pending { bytes, stem, done } in group {
            match write_temp(&self.dir, &bytes) {
                Ok(tmp) => written.push(Written { tmp, stem, done }),
                Err(e) => {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
        let group = written;
        if group.is_empty() {
            return;
        }
        if let Err(e) = self.sync_data(&group) {
            for Written { tmp, done, .. } in group {
                drop(tmp); // removes it, before its writer hears
                let _ = done.send(Err(e.to_string()));
            }
            return;
        }
        let mut renamed = Vec::with_capacity(group.len());
        for p in group {
            match rename_into_place(&self.dir, p.tmp, &p.stem) {
                Ok(name) => renamed.push((name, p.done)),
                Err(e) => {
                    let _ = p.done.send(Err(e.to_string()));
                }
            }
        }
        if renamed.is_empty() {
            return;
        }
        match self.handle.sync_all() {
            Ok(()) => {
                for (name, done) in renamed {
                    let _ = done.send(Ok(name));
                }
            }
            Err(e) => {
                for (name, done) in renamed {
                    let _ = std::fs::remove_file(self.dir.join(&name));
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }

    /// Puts the data of every temporary file in `group` on disk. A lone file gets an
    /// `fdatasync`, as before groups existed. A group gets one `syncfs` of the outbox's
    /// file system: with 64 writers on ext4, an `fdatasync` of each file in turn
    /// managed 300 messages/s (each waits for its own device flush), `syncfs`
    /// 1,800 to 3,800. `syncfs` also writes out what other programs left dirty on that
    /// file system (Postgres' pages, when it shares the disk): work the kernel would
    /// do soon anyway. It reports write-back errors since Linux 5.8.
    fn sync_data(&self, group: &[Written]) -> std::io::Result<()> {
        #[cfg(test)]
        if self.seam.fail_sync.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected sync failure"));
        }
        match group {
            [one] => one.tmp.as_file().sync_data(),
            _ => Ok(rustix::fs::syncfs(&self.handle)?),
        }
    }
}

/// Resets the queue when the committer task is dropped before it finished (a runtime
/// shutting down): the next write starts a new one, and writers still queued hear
/// "stopped" instead of waiting forever.
struct CommitterGone<'a> {
    commits: &'a OutboxBatch,
    armed: bool,
}

impl Drop for CommitterGone<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut q = self.commits.queue();
            q.committing = false;
            q.waiting.clear();
        }
    }
}

/// Renames `tmp` to `STEM.eml` without replacing anything; a name already taken (same
/// millisecond) gets a counter. Returns the file name. On error, `tmp` is removed.
fn rename_into_place(dir: &Path, mut tmp: NamedTempFile, stem: &str) -> std::io::Result<String> {
    let mut n = 0u32;
    loop {
        let name = if n == 0 { format!("{stem}.eml") } else { format!("{stem}_{n}.eml") };
        match tmp.persist_noclobber(dir.join(&name)) {
            Ok(_) => return Ok(name),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                tmp = e.file;
                n += 1;
            }
            Err(e) => return Err(e.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// What a test can see and break inside the group commit.
    #[derive(Debug, Default)]
    pub(super) struct Seam {
        /// When set, every group's data sync fails.
        pub fail_sync: AtomicBool,
        /// How many groups were committed.
        pub groups: AtomicUsize,
    }

    fn body(i: usize) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(format!("Subject: {i}\r\n\r\n{}\r\n", format!("line of message {i} ").repeat(150)).into_bytes())
    }

    /// The directory's entries, by name.
    fn listing(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }

    /// `n` stores at once; message `i` uses stem `stem-(i % 16)`, so that names
    /// collide in fours as in one busy millisecond.
    async fn store_at_once(outbox: &Outbox, n: usize) -> Vec<Result<String, NotifyError>> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let o = outbox.clone();
                tokio::spawn(async move { o.store(format!("stem-{}", i % 16), body(i)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_whole_under_their_names_in_shared_groups() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&tmp.path().join("outbox")).unwrap();
        let names: Vec<String> = store_at_once(&outbox, 64).await.into_iter().map(Result::unwrap).collect();

        assert_eq!(listing(outbox.dir()), names.iter().cloned().collect(), "one file per message, no temporary file");
        for (i, name) in names.iter().enumerate() {
            let stem = format!("stem-{}", i % 16);
            assert!(name == &format!("{stem}.eml") || name.strip_prefix(&format!("{stem}_")).is_some(), "{name}");
            let path = outbox.dir().join(name);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
            assert_eq!(std::fs::read(&path).unwrap(), *body(i), "{name} holds its own message, whole");
        }
        let stem0: BTreeSet<&str> = names.iter().step_by(16).map(String::as_str).collect();
        assert_eq!(stem0, BTreeSet::from(["stem-0.eml", "stem-0_1.eml", "stem-0_2.eml", "stem-0_3.eml"]));
        let groups = outbox.commits.seam.groups.load(Ordering::SeqCst);
        assert!(groups < 64, "messages waiting together share a commit: {groups} groups for 64");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_every_waiter_and_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&tmp.path().join("outbox")).unwrap();
        outbox.commits.seam.fail_sync.store(true, Ordering::SeqCst);
        for result in store_at_once(&outbox, 32).await {
            let e = result.unwrap_err();
            assert!(e.is_transient(), "{e}");
            let reason = e.to_string();
            assert!(reason.contains(&outbox.dir().display().to_string()), "names the directory: {reason}");
            assert!(reason.contains("injected sync failure") && !reason.contains("line of message"), "{reason}");
        }
        assert!(outbox.commits.seam.groups.load(Ordering::SeqCst) < 32, "some group failed as a whole");
        assert!(listing(outbox.dir()).is_empty(), "neither a message nor a temporary file is left");

        // the committer carries on once the disk does
        outbox.commits.seam.fail_sync.store(false, Ordering::SeqCst);
        let name = outbox.store("after".into(), body(0)).await.unwrap();
        assert_eq!(listing(outbox.dir()), BTreeSet::from([name]));
    }

    #[test]
    fn temporary_files_are_not_messages() {
        assert!(is_message_name(OsStr::new("20261126T093000.123Z_c_u_s0.eml")));
        assert!(is_message_name(OsStr::new("20261126T093000.123Z_c_u_s0_2.eml")));
        assert!(!is_message_name(OsStr::new(".tmp-Ab12cd.part")));
        assert!(!is_message_name(OsStr::new(".tmp-Ab12cd.eml")), "a temporary file of an older version");
        assert!(!is_message_name(OsStr::new("notes.txt")));
    }
}
