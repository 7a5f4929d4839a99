//! Who may look at the dashboard, and what they may do.
//!
//! Two ways in, both named by the settings:
//! - `ui_users_file`: one line per person, `name:role:hash`, the hash an argon2
//!   PHC string (`reverify ui hash-password` makes one). A malformed line stops the
//!   server before it listens, naming the file, the line and the field.
//! - `ui_trusted_user_header`: a header an authenticating proxy sets to the
//!   person's name. It is read only when that setting is set (otherwise anyone
//!   could send it). Their role is the one the users file gives the name, else
//!   `viewer`.
//!
//! Sessions live in memory: a restart logs everybody out, which for a read-mostly
//! page is cheaper than a table. The cookie holds 256 random bits; the map is keyed
//! by their SHA-256, so the map never holds a usable cookie.
//!
//! Login attempts are limited per name and per client address, counted in a fixed
//! window *before* the password is hashed (a burst sent at once is limited like a
//! series; a good login forgets its name's count): enough to make guessing a
//! password by the network useless, at the price of locking a name out for the
//! window when someone guesses at it. The client address is the peer's, or
//! `X-Forwarded-For`'s from a trusted proxy (`ui_trusted_proxies`). The map of
//! counts is pruned, and capped, so that rotating addresses cannot grow it without
//! bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// What a person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page; sees emails masked and no names.
    Viewer,
    /// Also pauses, resumes and retries failed targets; sees emails and names.
    Operator,
    /// Approves campaign versions (four eyes); sees emails and names.
    Approver,
}

impl Role {
    /// The spelling in the users file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }

    /// Parses a users-file role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            _ => None,
        }
    }

    /// Whether pause, resume and retry-failed are allowed.
    pub fn can_operate(self) -> bool {
        self == Role::Operator
    }

    /// Whether this role may approve a campaign's version (four eyes).
    pub fn can_approve(self) -> bool {
        self == Role::Approver
    }

    /// Whether emails are shown whole, and names at all.
    pub fn sees_personal_data(self) -> bool {
        matches!(self, Role::Operator | Role::Approver)
    }
}

/// A malformed users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("ui_users_file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ui_users_file {file}, line {line}: {field}: {message}")]
    Line { file: String, line: usize, field: &'static str, message: String },
}

/// One person in the users file.
#[derive(Clone)]
pub struct UiUser {
    pub name: String,
    pub role: Role,
    hash: String,
}

impl std::fmt::Debug for UiUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiUser").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// The users file, read once at start.
#[derive(Debug, Clone, Default)]
pub struct UsersFile {
    users: HashMap<String, UiUser>,
}

impl UsersFile {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`UsersFileError`] naming the file, the line and the field.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| UsersFileError::Read { file: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a users file called `file`.
    ///
    /// # Errors
    /// [`UsersFileError::Line`].
    pub fn parse(text: &str, file: &str) -> Result<Self, UsersFileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |field: &'static str, message: String| UsersFileError::Line {
                file: file.to_owned(),
                line: i + 1,
                field,
                message,
            };
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("line", "expected name:role:hash".into()));
            };
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                return Err(err("name", format!("{name:?} must be 1-64 of a-z A-Z 0-9 . _ - @")));
            }
            let role = Role::parse(role)
                .ok_or_else(|| err("role", format!("{role:?} is not one of viewer, operator, approver")))?;
            let parsed = PasswordHash::new(hash).map_err(|e| {
                err("hash", format!("not a PHC hash string ({e}); make one with `reverify ui hash-password`"))
            })?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(err("hash", format!("{} is not argon2", parsed.algorithm)));
            }
            if users.contains_key(name) {
                return Err(err("name", format!("{name:?} is listed twice")));
            }
            users.insert(name.to_owned(), UiUser { name: name.to_owned(), role, hash: hash.to_owned() });
        }
        Ok(Self { users })
    }

    /// The person called `name`.
    pub fn get(&self, name: &str) -> Option<&UiUser> {
        self.users.get(name)
    }

    /// How many people are listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether nobody is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// An argon2id hash of `password` in PHC form, with a random salt.
///
/// # Errors
/// When argon2 refuses the input (a password over its maximum length).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC `hash` (compared in constant time).
///
/// The hash's memory (19 MiB at the default cost) comes from a small pool that
/// is reused, never from a fresh allocation per login: measured with 200 logins
/// at once and 4 hashes at a time, allocating per hash left the process at 850 MB,
/// because glibc's per-thread arenas keep what a large freed block leaves behind
/// (the mmap threshold rises to the block's size after the first free).
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else { return false };
    let Ok(algorithm) = argon2::Algorithm::try_from(h.algorithm) else { return false };
    let Ok(version) = h.version.map_or(Ok(argon2::Version::default()), argon2::Version::try_from) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&h) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let mut memory = HASH_MEMORY.take(blocks);
    let ok = argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks]).is_ok();
    HASH_MEMORY.give_back(memory);
    ok && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// The argon2 working memory kept for reuse: at most [`HashMemory::KEEP`] buffers.
struct HashMemory(Mutex<Vec<Vec<argon2::Block>>>);

static HASH_MEMORY: HashMemory = HashMemory(Mutex::new(Vec::new()));

impl HashMemory {
    /// As many as the dashboard hashes at once (`UiConfig::max_hashes`' default).
    const KEEP: usize = 4;

    fn take(&self, blocks: usize) -> Vec<argon2::Block> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        if v.len() < blocks {
            v.resize(blocks, argon2::Block::default());
        }
        v
    }

    fn give_back(&self, v: Vec<argon2::Block>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < Self::KEEP {
            pool.push(v);
        }
    }
}

/// Checks a login: the user when the name exists and the password matches. An
/// unknown name costs one hash as well, so the time does not tell names apart.
pub fn check_login(users: &UsersFile, name: &str, password: &str) -> Option<UiUser> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match users.get(name) {
        Some(u) if verify_password(&u.hash, password) => Some(u.clone()),
        Some(_) => None,
        None => {
            let dummy = DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default());
            let _ = verify_password(dummy, password);
            None
        }
    }
}

/// 256 random bits, URL-safe base64.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Equality that takes the same time wherever the strings differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn key_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A logged-in person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// The token every form of this person carries.
    pub csrf: String,
}

impl Viewer {
    /// The audit trail's actor: `ui:NAME`.
    pub fn actor(&self) -> String {
        format!("ui:{}", self.name)
    }
}

struct Session {
    viewer: Viewer,
    expires: Instant,
}

/// The sessions of this process.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

impl Sessions {
    /// Sessions that last `ttl` from login.
    pub fn new(ttl: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), ttl }
    }

    /// A new session for `user`; returns the cookie value.
    pub fn create(&self, name: &str, role: Role) -> String {
        let token = random_token();
        let viewer = Viewer { name: name.to_owned(), role, csrf: random_token() };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(key_of(&token), Session { viewer, expires: now + self.ttl });
        token
    }

    /// The person whose cookie this is, while the session lasts.
    pub fn get(&self, token: &str) -> Option<Viewer> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key_of(token)).filter(|s| s.expires > Instant::now()).map(|s| s.viewer.clone())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key_of(token));
    }
}

/// The most names and addresses the login limiter remembers; past it the oldest
/// windows are forgotten (about 100 bytes each: some 10 MB at most).
pub const LOGIN_LIMITER_CAP: usize = 100_000;

/// Login attempts per name and per address, in fixed windows.
pub struct LoginLimiter {
    window: Duration,
    per_name: u32,
    per_address: u32,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginLimiter {
    /// At most `per_name` failures for one name and `per_address` from one address
    /// per `window`.
    pub fn new(window: Duration, per_name: u32, per_address: u32) -> Self {
        Self { window, per_name, per_address, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(name: &str, addr: IpAddr) -> [(String, bool); 2] {
        [(format!("n:{name}"), true), (format!("a:{addr}"), false)]
    }

    /// How long until a login may be tried again, when it may not now.
    pub fn blocked(&self, name: &str, addr: IpAddr) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        self.blocked_in(&map, name, addr, Instant::now())
    }

    fn blocked_in(
        &self,
        map: &HashMap<String, (Instant, u32)>,
        name: &str,
        addr: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        Self::keys(name, addr).iter().find_map(|(k, is_name)| {
            let (start, n) = map.get(k)?;
            let limit = if *is_name { self.per_name } else { self.per_address };
            let end = *start + self.window;
            (end > now && *n >= limit).then(|| end - now)
        })
    }

    /// Counts an attempt, before its password is checked: `Err(wait)` when the name
    /// or the address has used its attempts for the window (then nothing is
    /// counted). Check and count are one step, so that attempts sent at once are
    /// limited like attempts one after another.
    ///
    /// # Errors
    /// How long until the next attempt may be made.
    pub fn attempt(&self, name: &str, addr: IpAddr) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(wait) = self.blocked_in(&map, name, addr, now) {
            return Err(wait);
        }
        if map.len() >= LOGIN_LIMITER_CAP {
            map.retain(|_, (start, _)| *start + self.window > now);
            if map.len() >= LOGIN_LIMITER_CAP {
                // still full of live windows: forget the older half
                let mut starts: Vec<Instant> = map.values().map(|(s, _)| *s).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                map.retain(|_, (start, _)| *start > cut);
            }
        }
        for (k, _) in Self::keys(name, addr) {
            let e = map.entry(k).or_insert((now, 0));
            if e.0 + self.window <= now {
                *e = (now, 0);
            }
            e.1 += 1;
        }
        Ok(())
    }

    /// Counts a failure (as [`LoginLimiter::attempt`], ignoring the limit).
    pub fn failed(&self, name: &str, addr: IpAddr) {
        let _ = self.attempt(name, addr);
    }

    /// How many names and addresses are remembered.
    pub fn len(&self) -> usize {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a good login: forgets the name's attempts, and gives the address back
    /// the attempt it counted (so that many people behind one address who log in
    /// well are not locked out).
    pub fn succeeded(&self, name: &str, addr: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("n:{name}"));
        if let Some((_, n)) = map.get_mut(&format!("a:{addr}")) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Masks an email for a viewer who may not see it: `j***@e***.com`.
pub fn mask_email(email: &str) -> String {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return "***".into();
    };
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let (host, tld) = domain.rsplit_once('.').map_or((domain, ""), |(h, t)| (h, t));
    let tld = if tld.is_empty() { String::new() } else { format!(".{tld}") };
    format!("{}***@{}***{tld}", first(local), first(host))
}

/// The users file setting, read when set.
///
/// # Errors
/// [`UsersFileError`].
pub fn load_users(path: Option<&PathBuf>) -> Result<UsersFile, UsersFileError> {
    path.map_or_else(|| Ok(UsersFile::default()), |p| UsersFile::load(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_is_checked_line_by_line() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let text = format!("# people\nalice:operator:{hash}\n\nbob:viewer:{hash}\n");
        let users = UsersFile::parse(&text, "users").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.get("alice").unwrap().role, Role::Operator);
        assert!(check_login(&users, "alice", "correct horse").is_some());
        assert!(check_login(&users, "alice", "wrong").is_none());
        assert!(check_login(&users, "carol", "correct horse").is_none());

        let bad = [
            ("alice\n", "line 1: line"),
            (&*format!("alice:root:{hash}\n"), "line 1: role"),
            ("\nalice:viewer:plaintext\n", "line 2: hash"),
            (&*format!("a b:viewer:{hash}\n"), "line 1: name"),
            (&*format!("alice:viewer:{hash}\nalice:operator:{hash}\n"), "line 2: name"),
        ];
        for (text, want) in bad {
            let e = UsersFile::parse(text, "users.txt").unwrap_err().to_string();
            assert!(e.starts_with("ui_users_file users.txt, ") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn failures_are_limited_per_name_and_address() {
        let l = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked("alice", a).is_none());
            l.failed("alice", a);
        }
        assert!(l.blocked("alice", b).is_some(), "the name is locked from every address");
        assert!(l.blocked("bob", a).is_none());
        l.failed("bob", a);
        l.failed("carol", a);
        assert!(l.blocked("dave", a).is_some(), "the address is locked for every name");
        assert!(l.blocked("dave", b).is_none());
    }

    #[test]
    fn attempts_are_counted_before_the_check_and_the_map_stays_bounded() {
        let l = LoginLimiter::new(Duration::from_secs(900), 5, 1_000_000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..200).filter(|_| l.attempt("alice", a).is_ok()).count();
        assert_eq!(allowed, 5, "five attempts per name per window, however fast they come");
        // rotating addresses and names do not grow the map without bound
        for i in 0..(LOGIN_LIMITER_CAP as u32 + 5_000) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.attempt(&format!("n{i}"), addr);
        }
        assert!(l.len() <= LOGIN_LIMITER_CAP + 2, "{}", l.len());
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@e***.com");
        assert_eq!(mask_email("nobody"), "***");
    }
}
