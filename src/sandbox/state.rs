//! The sandbox's memory: users, tokens and sessions, and the rules the real API
//! enforces on them. HTTP lives in `http.rs`; this module answers in domain terms.
//!
//! Locking: every user has their own mutex, and the token and session maps are
//! sharded, so requests for different users never wait on each other. No lock is
//! held across an `.await`. When two locks are needed the order is always user,
//! then map shard, which rules out deadlocks.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::Serialize;

use super::faults::FaultEngine;
use super::stats::{Counters, ViolationKind};
use super::userfile::UserRecord;
use super::users::{Profile, profile};
use super::webhook::{KycStatus, Sender, event_body};
use crate::domain::policy::{self, SessionSlot, UserStanding, Verdict};
use crate::domain::{Clock, DeferReason, Region, UserId, VerificationState};

const SHARDS: usize = 64;

/// A string-keyed map split into independently locked shards.
#[derive(Debug)]
struct Sharded<V> {
    shards: Box<[Mutex<HashMap<String, V>>]>,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn keys(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.lock().expect("shard poisoned").keys().cloned().collect::<Vec<_>>()).collect()
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock().expect("shard poisoned")
    }
}

/// An access token's grant.
#[derive(Debug, Clone, Copy)]
struct Grant {
    user: usize,
    region: Region,
    expires_at: DateTime<Utc>,
    generation: u64,
}

/// A session known to the sandbox (keyed by its random id).
#[derive(Debug, Clone)]
struct Session {
    user: usize,
    seq: u64,
    expires_at: DateTime<Utc>,
    used: bool,
}

/// A session as the per-user limits see it. `active_until` is the expiry, or the
/// moment the session was completed, whichever is first.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    reserved_at: DateTime<Utc>,
    active_until: DateTime<Utc>,
}

#[derive(Debug)]
struct UserState {
    record: UserRecord,
    profile: Profile,
    consecutive_failures: u32,
    last_failure_at: Option<DateTime<Utc>>,
    suspended: bool,
    /// Bumped to invalidate every access token issued before.
    generation: u64,
    refresh_expires_at: DateTime<Utc>,
    slots: Vec<Slot>,
    next_seq: u64,
    sessions_issued: u64,
    /// Successful refresh grants.
    token_refreshes: u64,
    /// Presentations of a refresh token this user's chain had rotated away.
    refresh_token_reuses: u64,
    violations: u64,
    max_sessions_24h: u64,
    max_concurrent: u64,
}

/// A user as `GET /_sandbox/users/{id}` shows them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserView {
    pub user_id: String,
    pub email: String,
    pub region: Region,
    pub verification_state: VerificationState,
    pub rejected_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub suspended: bool,
    /// The current refresh token (a sandbox has no secrets worth keeping).
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
    pub sessions_issued: u64,
    /// Successful refresh grants (`POST /v1/auth/oauth/token` answered 200).
    pub token_refreshes: u64,
    /// Refresh tokens presented after they had been rotated away (any earlier token of
    /// the user's chain), in either `--refresh-reuse` mode.
    pub refresh_token_reuses: u64,
    /// Unexpired, uncompleted sessions now.
    pub active_sessions: u64,
    /// Sessions reserved in the last 24 hours.
    pub sessions_last_24h: u64,
    /// Requests over a per-user limit, and refresh-token reuses in
    /// [`RefreshReuse::RevokeFamily`] mode.
    pub violations: u64,
    pub max_sessions_24h: u64,
    pub max_concurrent_sessions: u64,
}

/// What a token request can fail with (OAuth error codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    InvalidGrant(&'static str),
}

/// A successful token refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_token_expires_in: i64,
}

/// Why a user call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401.
    Unauthenticated(&'static str),
    /// 403.
    Forbidden(&'static str),
    /// 429, a per-user limit.
    Limit(DeferReason),
}

/// How a session page visit ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionOutcome {
    Verified,
    Rejected,
    Abandoned,
}

impl std::str::FromStr for SessionOutcome {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "verified" => Ok(SessionOutcome::Verified),
            "rejected" => Ok(SessionOutcome::Rejected),
            "abandoned" => Ok(SessionOutcome::Abandoned),
            _ => Err(()),
        }
    }
}

/// Why a session could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    AlreadyUsed,
    Expired,
}

/// What presenting a refresh token that was already rotated away does (OAuth
/// refresh-token reuse detection). Either way the request answers `invalid_grant` and
/// counts in [`crate::sandbox::Stats::refresh_token_reuses`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RefreshReuse {
    /// Nothing more: the user's current refresh token and access tokens keep working.
    #[default]
    Reject,
    /// The whole chain is revoked, as the OAuth security best practice allows: the
    /// user's current refresh token gets `invalid_grant` from then on, every access
    /// token minted for the user gets 401, and the reuse counts as a violation
    /// (`refresh_reuse`).
    RevokeFamily,
}

impl RefreshReuse {
    /// Every mode, in `--help` order.
    pub const ALL: [RefreshReuse; 2] = [RefreshReuse::Reject, RefreshReuse::RevokeFamily];

    /// The spelling of `--refresh-reuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshReuse::Reject => "reject",
            RefreshReuse::RevokeFamily => "revoke-family",
        }
    }
}

impl std::fmt::Display for RefreshReuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refresh-reuse mode that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refresh-reuse mode {0:?} is not valid: use reject or revoke-family")]
pub struct RefreshReuseError(pub String);

impl std::str::FromStr for RefreshReuse {
    type Err = RefreshReuseError;
    fn from_str(s: &str) -> Result<Self, RefreshReuseError> {
        RefreshReuse::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| RefreshReuseError(s.to_owned()))
    }
}

/// Lifetimes and switches fixed at start.
#[derive(Debug, Clone)]
pub struct Rules {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub session_ttl: Duration,
    pub decision_delay: std::time::Duration,
    pub enforce_limits: bool,
    pub refresh_reuse: RefreshReuse,
}

const INVALID_REFRESH: &str = "refresh token is invalid, revoked or already used";

/// Everything the handlers share.
#[derive(Debug)]
pub struct State {
    pub client_key: String,
    pub clock: Arc<dyn Clock>,
    pub rules: Rules,
    pub stats: Arc<Counters>,
    pub faults: FaultEngine,
    pub webhook: Option<Sender>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// `{public base}/session/`, set once the listener is bound.
    pub session_prefix: String,
    users: Vec<Mutex<UserState>>,
    index: HashMap<UserId, usize>,
    /// Current refresh token -> user.
    refresh: Sharded<usize>,
    /// Every refresh token rotated away -> its user, for reuse detection. Entries
    /// stay as long as the sandbox runs (like `spent`).
    rotated: Sharded<usize>,
    access: Sharded<Grant>,
    sessions: Sharded<Session>,
    /// Every refresh token rotated away and every access token minted, so that a
    /// test can prove none was stored or logged (a few dozen bytes a grant).
    spent: Mutex<Vec<String>>,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl State {
    /// Builds the state; every record must carry a refresh token.
    #[allow(clippy::too_many_arguments)] // one constructor, called from one place
    pub fn new(
        records: Vec<UserRecord>,
        client_key: String,
        clock: Arc<dyn Clock>,
        rules: Rules,
        stats: Arc<Counters>,
        faults: FaultEngine,
        webhook: Option<Sender>,
        session_prefix: String,
    ) -> Self {
        let now = clock.now();
        let refresh = Sharded::new();
        let mut index = HashMap::with_capacity(records.len());
        let users = records
            .into_iter()
            .enumerate()
            .map(|(i, mut record)| {
                // A REJECTED user with no time was rejected "just now", from the
                // sandbox's point of view: the 24 h cooldown starts at start-up.
                if record.verification_state == VerificationState::Rejected && record.rejected_at.is_none() {
                    record.rejected_at = Some(now);
                }
                let token = record.refresh_token.clone().expect("refresh tokens are filled in before");
                refresh.shard(&token).insert(token, i);
                index.insert(record.user_id.clone(), i);
                Mutex::new(UserState {
                    profile: profile(&record, record.verification_state),
                    record,
                    consecutive_failures: 0,
                    last_failure_at: None,
                    suspended: false,
                    generation: 0,
                    refresh_expires_at: now + rules.refresh_ttl,
                    slots: Vec::new(),
                    next_seq: 0,
                    sessions_issued: 0,
                    token_refreshes: 0,
                    refresh_token_reuses: 0,
                    violations: 0,
                    max_sessions_24h: 0,
                    max_concurrent: 0,
                })
            })
            .collect();
        Self {
            client_key,
            clock,
            rules,
            stats,
            faults,
            webhook,
            shutdown: tokio_util::sync::CancellationToken::new(),
            session_prefix,
            users,
            index,
            refresh,
            rotated: Sharded::new(),
            access: Sharded::new(),
            sessions: Sharded::new(),
            spent: Mutex::new(Vec::new()),
        }
    }

    fn user(&self, i: usize) -> MutexGuard<'_, UserState> {
        self.users[i].lock().expect("user poisoned")
    }

    /// The index of a user id.
    pub fn find(&self, id: &UserId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Every user's current record (refresh tokens and states as they are now).
    pub fn records(&self) -> Vec<UserRecord> {
        (0..self.users.len()).map(|i| self.user(i).record.clone()).collect()
    }

    /// The refresh-token grant: checks the token, rotates it and mints an access token.
    /// A token rotated away earlier is a reuse, handled as [`Rules::refresh_reuse`] says.
    pub fn refresh(&self, token: &str, us: bool) -> Result<Tokens, GrantError> {
        let now = self.clock.now();
        // one shard lock at a time, and none held when the user's lock is taken
        let current = self.refresh.shard(token).get(token).copied();
        let Some(i) = current.or_else(|| self.rotated.shard(token).get(token).copied()) else {
            return Err(GrantError::InvalidGrant(INVALID_REFRESH));
        };
        let mut u = self.user(i);
        // each backend holds only its own users' tokens: the other has never seen it
        if (u.record.region == Region::Us) != us {
            return Err(GrantError::InvalidGrant(INVALID_REFRESH));
        }
        if u.record.refresh_token.as_deref() != Some(token) {
            // rotated away, perhaps by another request between the lookup and the lock
            // (the rotation files a token under `rotated` before it leaves `refresh`)
            if self.rotated.shard(token).contains_key(token) {
                return Err(self.reused_locked(&mut u));
            }
            return Err(GrantError::InvalidGrant(INVALID_REFRESH));
        }
        if now >= u.refresh_expires_at {
            return Err(GrantError::InvalidGrant("refresh token has expired"));
        }
        let new_refresh = format!("rt_{}", random_hex(24));
        self.rotated.shard(token).insert(token.to_owned(), i);
        self.refresh.shard(token).remove(token);
        self.spent.lock().expect("spent tokens").push(token.to_owned());
        self.refresh.shard(&new_refresh).insert(new_refresh.clone(), i);
        u.record.refresh_token = Some(new_refresh.clone());
        u.refresh_expires_at = now + self.rules.refresh_ttl;
        u.token_refreshes += 1;
        let access = self.mint_locked(i, &u, now);
        Ok(Tokens {
            access_token: access,
            expires_in: self.rules.access_ttl.num_seconds(),
            refresh_token: new_refresh,
            refresh_token_expires_in: self.rules.refresh_ttl.num_seconds(),
        })
    }

    /// A rotated-away refresh token of the locked user was presented: count it, and in
    /// revoke-family mode revoke the chain and count a violation.
    fn reused_locked(&self, u: &mut UserState) -> GrantError {
        u.refresh_token_reuses += 1;
        self.stats.refresh_token_reuses.fetch_add(1, Ordering::Relaxed);
        match self.rules.refresh_reuse {
            RefreshReuse::Reject => GrantError::InvalidGrant(INVALID_REFRESH),
            RefreshReuse::RevokeFamily => {
                u.violations += 1;
                self.stats.violation(ViolationKind::RefreshReuse);
                self.revoke_locked(u);
                GrantError::InvalidGrant("refresh token was already used: every token of this grant is revoked")
            }
        }
    }

    fn mint_locked(&self, i: usize, u: &UserState, now: DateTime<Utc>) -> String {
        let token = format!("at_{}", random_hex(24));
        self.spent.lock().expect("spent tokens").push(token.clone());
        let grant = Grant {
            user: i,
            region: u.record.region,
            expires_at: now + self.rules.access_ttl,
            generation: u.generation,
        };
        let mut shard = self.access.shard(&token);
        // drop expired grants now and then, so a long demo does not grow without bound
        if shard.len() % 1024 == 1023 {
            shard.retain(|_, g| g.expires_at > now);
        }
        shard.insert(token.clone(), grant);
        token
    }

    /// An access token for a user without a refresh (tests and benchmarks).
    pub fn mint(&self, i: usize) -> String {
        let now = self.clock.now();
        let u = self.user(i);
        self.mint_locked(i, &u, now)
    }

    /// Checks a bearer token against the backend the request went to. Returns the
    /// user and the token's generation.
    pub fn authenticate(&self, token: &str, us: bool) -> Result<(usize, u64), Refusal> {
        let Some(g) = self.access.shard(token).get(token).copied() else {
            return Err(Refusal::Unauthenticated("Not authenticated"));
        };
        // the other backend has never seen this token
        if (g.region == Region::Us) != us {
            return Err(Refusal::Unauthenticated("Not authenticated"));
        }
        if self.clock.now() >= g.expires_at {
            return Err(Refusal::Unauthenticated("Access token expired"));
        }
        Ok((g.user, g.generation))
    }

    fn check_user(u: &UserState, generation: u64) -> Result<(), Refusal> {
        if generation != u.generation {
            return Err(Refusal::Unauthenticated("Access token expired"));
        }
        if u.suspended {
            return Err(Refusal::Forbidden("User account is suspended"));
        }
        Ok(())
    }

    /// `GET /v1/user`.
    pub fn profile(&self, i: usize, generation: u64) -> Result<Profile, Refusal> {
        let u = self.user(i);
        Self::check_user(&u, generation)?;
        Ok(u.profile.clone())
    }

    /// `GET /v1/user/verification`: checks every per-user limit, then issues a
    /// session. Returns the session URL.
    pub fn start_session(&self, i: usize, generation: u64) -> Result<String, Refusal> {
        let now = self.clock.now();
        let mut u = self.user(i);
        Self::check_user(&u, generation)?;
        // forget sessions that count for nothing any more
        let window_start = now - policy::session_window();
        u.slots.retain(|s| s.reserved_at > window_start || s.active_until > now);
        if self.rules.enforce_limits {
            // The API's limits are the policy's cooldowns and caps; unlike a campaign,
            // the API still serves VERIFIED and PENDING users.
            let standing = UserStanding {
                state: if u.record.verification_state == VerificationState::Rejected {
                    VerificationState::Rejected
                } else {
                    VerificationState::Unverified
                },
                rejected_at: u.record.rejected_at,
                consecutive_failures: u.consecutive_failures,
                last_failure_at: u.last_failure_at,
            };
            let slots: Vec<SessionSlot> = u
                .slots
                .iter()
                .map(|s| SessionSlot { reserved_at: s.reserved_at, expires_at: s.active_until })
                .collect();
            if let Verdict::Defer { reason, .. } = policy::evaluate(&standing, &slots, now) {
                u.violations += 1;
                self.stats.violation(ViolationKind::Limit(reason));
                return Err(Refusal::Limit(reason));
            }
        }
        let seq = u.next_seq;
        u.next_seq += 1;
        let expires_at = now + self.rules.session_ttl;
        u.slots.push(Slot { seq, reserved_at: now, active_until: expires_at });
        u.sessions_issued += 1;
        let in_window = u.slots.iter().filter(|s| s.reserved_at > window_start).count() as u64;
        let active = u.slots.iter().filter(|s| s.active_until > now).count() as u64;
        u.max_sessions_24h = u.max_sessions_24h.max(in_window);
        u.max_concurrent = u.max_concurrent.max(active);
        self.stats.sessions_issued.fetch_add(1, Ordering::Relaxed);
        self.stats.max_sessions_24h.fetch_max(in_window, Ordering::Relaxed);
        self.stats.max_concurrent.fetch_max(active, Ordering::Relaxed);
        let id = random_hex(20);
        {
            let mut shard = self.sessions.shard(&id);
            if shard.len() % 4096 == 4095 {
                shard.retain(|_, s| s.expires_at > now);
            }
            shard.insert(id.clone(), Session { user: i, seq, expires_at, used: false });
        }
        drop(u);
        Ok(format!("{}{id}", self.session_prefix))
    }

    /// Every refresh token rotated away and every access token minted so far.
    pub fn spent_tokens(&self) -> Vec<String> {
        self.spent.lock().expect("spent tokens").clone()
    }

    /// The URL of every session still known (issued and not yet pruned as expired).
    pub fn session_urls(&self) -> Vec<String> {
        self.sessions.keys().into_iter().map(|id| format!("{}{id}", self.session_prefix)).collect()
    }

    /// Whether a session page may be shown.
    pub fn session_status(&self, id: &str) -> Result<(), SessionError> {
        let now = self.clock.now();
        match self.sessions.shard(id).get(id) {
            None => Err(SessionError::NotFound),
            Some(s) if s.used => Err(SessionError::AlreadyUsed),
            Some(s) if now >= s.expires_at => Err(SessionError::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Completes a session once. Verified and rejected move the user to PENDING, then
    /// (after the decision delay) to VERIFIED or REJECTED; abandoned counts a failure.
    pub fn complete(self: &Arc<Self>, id: &str, outcome: SessionOutcome) -> Result<(), SessionError> {
        let now = self.clock.now();
        let (user, seq) = {
            let mut shard = self.sessions.shard(id);
            let s = shard.get_mut(id).ok_or(SessionError::NotFound)?;
            if s.used {
                return Err(SessionError::AlreadyUsed);
            }
            if now >= s.expires_at {
                return Err(SessionError::Expired);
            }
            s.used = true;
            (s.user, s.seq)
        };
        // the verification behind this session, as webhooks name it (not the URL's id)
        let kyc_id = uuid::Uuid::new_v4().to_string();
        let user_id = {
            let mut u = self.user(user);
            if let Some(slot) = u.slots.iter_mut().find(|s| s.seq == seq) {
                slot.active_until = slot.active_until.min(now);
            }
            match outcome {
                SessionOutcome::Abandoned => {
                    u.consecutive_failures += 1;
                    u.last_failure_at = Some(now);
                    self.stats.completed_abandoned.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                SessionOutcome::Verified | SessionOutcome::Rejected => set_state(&mut u, VerificationState::Pending),
            }
            u.record.user_id.clone()
        };
        let pending = self.webhook.is_some().then(|| event_body(&user_id, &kyc_id, KycStatus::Pending, now, 0));
        if self.rules.decision_delay.is_zero() {
            // one delivery task for both events keeps them in order
            let decided = self.decide(user, &kyc_id, outcome);
            self.send_webhooks(pending.into_iter().chain(decided).collect());
        } else {
            self.send_webhooks(pending.into_iter().collect());
            let this = Arc::clone(self);
            let delay = self.rules.decision_delay;
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        let decided = this.decide(user, &kyc_id, outcome);
                        this.send_webhooks(decided.into_iter().collect());
                    }
                    () = this.shutdown.cancelled() => {}
                }
            });
        }
        Ok(())
    }

    /// Moves a PENDING user to the outcome; returns the webhook body to send, if any.
    fn decide(&self, user: usize, kyc_id: &str, outcome: SessionOutcome) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let (user_id, status) = {
            let mut u = self.user(user);
            let status = if outcome == SessionOutcome::Verified {
                set_state(&mut u, VerificationState::Verified);
                u.consecutive_failures = 0;
                self.stats.completed_verified.fetch_add(1, Ordering::Relaxed);
                KycStatus::Completed
            } else {
                set_state(&mut u, VerificationState::Rejected);
                u.record.rejected_at = Some(now);
                u.consecutive_failures += 1;
                u.last_failure_at = Some(now);
                self.stats.completed_rejected.fetch_add(1, Ordering::Relaxed);
                KycStatus::Failed
            };
            (u.record.user_id.clone(), status)
        };
        self.webhook.is_some().then(|| event_body(&user_id, kyc_id, status, now, rand::rng().next_u64()))
    }

    fn send_webhooks(&self, bodies: Vec<Vec<u8>>) {
        if let (Some(w), false) = (&self.webhook, bodies.is_empty()) {
            w.send(bodies);
        }
    }

    /// Control: suspend (or reinstate) a user; their calls answer 403.
    pub fn set_suspended(&self, i: usize, suspended: bool) {
        self.user(i).suspended = suspended;
    }

    /// Control: every access token issued so far stops working (401).
    pub fn expire_tokens(&self, i: usize) {
        self.user(i).generation += 1;
    }

    /// Control: the refresh token is revoked (`invalid_grant`) and access tokens die.
    pub fn revoke(&self, i: usize) {
        self.revoke_locked(&mut self.user(i));
    }

    /// Kills the locked user's access tokens and current refresh token.
    fn revoke_locked(&self, u: &mut UserState) {
        u.generation += 1;
        if let Some(t) = u.record.refresh_token.take()
            && self.refresh.shard(&t).remove(&t).is_some()
        {
            // it was handed out, so a test of leaks must still look for it
            self.spent.lock().expect("spent tokens").push(t);
        }
        // a token nobody can present, so that the record stays exportable
        let dead = format!("revoked_{}", random_hex(12));
        u.record.refresh_token = Some(dead);
    }

    /// Control: the user's refresh token has expired (`invalid_grant`).
    pub fn expire_refresh_token(&self, i: usize) {
        let now = self.clock.now();
        self.user(i).refresh_expires_at = now;
    }

    /// Every user's view, in index order.
    pub fn views(&self) -> Vec<UserView> {
        (0..self.users.len()).map(|i| self.view(i)).collect()
    }

    /// A user's view.
    pub fn view(&self, i: usize) -> UserView {
        let now = self.clock.now();
        let u = self.user(i);
        let window_start = now - policy::session_window();
        UserView {
            user_id: u.record.user_id.to_string(),
            email: u.record.email.to_string(),
            region: u.record.region,
            verification_state: u.record.verification_state,
            rejected_at: u.record.rejected_at,
            consecutive_failures: u.consecutive_failures,
            last_failure_at: u.last_failure_at,
            suspended: u.suspended,
            refresh_token: u.record.refresh_token.clone().unwrap_or_default(),
            refresh_token_expires_at: u.refresh_expires_at,
            sessions_issued: u.sessions_issued,
            token_refreshes: u.token_refreshes,
            refresh_token_reuses: u.refresh_token_reuses,
            active_sessions: u.slots.iter().filter(|s| s.active_until > now).count() as u64,
            sessions_last_24h: u.slots.iter().filter(|s| s.reserved_at > window_start).count() as u64,
            violations: u.violations,
            max_sessions_24h: u.max_sessions_24h,
            max_concurrent_sessions: u.max_concurrent,
        }
    }
}

fn set_state(u: &mut UserState, s: VerificationState) {
    u.record.verification_state = s;
    u.profile.verification_state = s;
}

#[cfg(test)]
mod tests {
    use super::RefreshReuse;

    #[test]
    fn refresh_reuse_modes_parse_and_print_their_flag_spelling() {
        for m in RefreshReuse::ALL {
            assert_eq!(m.as_str().parse::<RefreshReuse>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(" Revoke-Family ".parse::<RefreshReuse>(), Ok(RefreshReuse::RevokeFamily));
        assert_eq!(RefreshReuse::default(), RefreshReuse::Reject);
        let err = "revoke".parse::<RefreshReuse>().unwrap_err().to_string();
        assert!(err.contains("\"revoke\"") && err.contains("revoke-family"), "{err}");
    }
}
