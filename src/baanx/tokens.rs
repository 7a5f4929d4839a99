//! Where tokens live, and the in-memory cache of access tokens.
//!
//! The client knows nothing of the database: it keeps users' tokens through the
//! [`TokenVault`] seam (implemented over the store in `engine::adapters::StoreTokenVault`, and in memory
//! by [`MemoryVault`] for tests).
//!
//! One refresh per user at a time, across processes. Runs of several campaigns,
//! `users sync`, the daemon and the click endpoint share one database, and a refresh
//! token rotates: presenting one that another process already rotated may revoke the
//! whole chain (reuse detection). So:
//! - in a process, each user has one async mutex around their cached access token
//!   (single flight: two tasks never both refresh; the second takes the first's
//!   result);
//! - across processes, the vault keeps the last access token minted (sealed, with
//!   its expiry): a usable one is used instead of refreshing;
//! - a refresh happens only under the user's refresh lease in the vault (short, with
//!   a timeout, renewed while a slow refresh goes on); a process that finds the lease
//!   taken waits and takes the holder's result;
//! - a refused refresh token (`invalid_grant`) marks consent lost only while it is
//!   still the stored one ([`StoredTokens::version`]); otherwise the newer one is used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::error::VaultError;
use crate::domain::UserId;

/// An access token, with the instant after which it is not used.
pub struct StoredAccess {
    pub token: Zeroizing<String>,
    pub fresh_until: DateTime<Utc>,
}

impl std::fmt::Debug for StoredAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAccess").field("fresh_until", &self.fresh_until).finish_non_exhaustive()
    }
}

/// A user's refresh token as the vault holds it, under the refresh lease.
pub struct LeasedRefresh {
    pub token: Zeroizing<String>,
    /// Changes with every refresh token written for the user.
    pub version: i64,
}

impl std::fmt::Debug for LeasedRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedRefresh").field("version", &self.version).finish_non_exhaustive()
    }
}

/// What [`TokenVault::checkout`] found.
#[derive(Debug)]
pub enum Checkout {
    /// A usable access token is stored (another process, or an earlier run, minted
    /// it): no refresh.
    Fresh(StoredAccess),
    /// This process now holds the user's refresh lease: refresh with this token, then
    /// [`TokenVault::store_grant`] or [`TokenVault::refused`] or
    /// [`TokenVault::release`].
    Leased(LeasedRefresh),
    /// Another process holds the lease until then: ask again (it will have stored its
    /// result, or its lease will have run out).
    Busy { until: DateTime<Utc> },
    /// No refresh token is held, or the user must consent again.
    NoToken,
}

/// The result of a refresh, to be stored under the lease.
pub struct Grant<'a> {
    /// The rotated refresh token; `None` when the server kept the old one.
    pub refresh: Option<&'a str>,
    /// The new access token; `None` when only the rotated refresh token could be read.
    pub access: Option<&'a str>,
    pub fresh_until: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What [`TokenVault::checkout`] asks for: the lease's would-be `owner` until
/// `lease_until`, at `now`; `force` when the stored access token was just refused
/// (a 401) and must not be used.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutAsk<'a> {
    pub owner: &'a str,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    pub force: bool,
}

/// Durable storage of users' tokens, shared by every process on one database.
///
/// Implementations encrypt at rest and make each write durable before returning: the
/// client uses a new access token only after [`TokenVault::store_grant`] returns,
/// because the old refresh token is already dead.
#[async_trait]
pub trait TokenVault: Send + Sync + std::fmt::Debug {
    /// A usable stored access token (unless `force`: the stored one was just refused
    /// with a 401), else the user's refresh lease for `owner` until `lease_until`,
    /// else who holds it. One atomic step.
    ///
    /// # Errors
    /// The store failed, or the refresh token does not decrypt.
    async fn checkout(&self, user: &UserId, ask: CheckoutAsk<'_>) -> Result<Checkout, VaultError>;

    /// Extends `owner`'s lease while a slow refresh goes on; `false` when it was lost.
    ///
    /// # Errors
    /// The store failed.
    async fn renew(&self, user: &UserId, owner: &str, until: DateTime<Utc>) -> Result<bool, VaultError>;

    /// Stores a refresh's result and releases `owner`'s lease, durably.
    ///
    /// # Errors
    /// The store failed; the caller then does not use the new access token.
    async fn store_grant(&self, user: &UserId, owner: &str, grant: &Grant<'_>) -> Result<(), VaultError>;

    /// Releases `owner`'s lease without storing anything (the refresh failed).
    ///
    /// # Errors
    /// The store failed (the lease then runs out by itself).
    async fn release(&self, user: &UserId, owner: &str) -> Result<(), VaultError>;

    /// The refresh token of `version` was refused (`invalid_grant`): marks the user
    /// as needing consent, but only while that token is still the stored one, and
    /// releases the lease. Returns whether it marked; `false` means a newer token was
    /// stored meanwhile and is to be used.
    ///
    /// # Errors
    /// The store failed.
    async fn refused(&self, user: &UserId, owner: &str, version: i64, now: DateTime<Utc>) -> Result<bool, VaultError>;
}

#[derive(Default)]
struct MemoryEntry {
    token: Option<Zeroizing<String>>,
    consent_required: bool,
    version: i64,
    access: Option<(Zeroizing<String>, DateTime<Utc>)>,
    lease: Option<(String, DateTime<Utc>)>,
}

/// A [`TokenVault`] in memory, for unit tests and demos.
#[derive(Default, Clone)]
pub struct MemoryVault {
    inner: Arc<Mutex<HashMap<UserId, MemoryEntry>>>,
}

impl std::fmt::Debug for MemoryVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("MemoryVault").field("users", &n).finish_non_exhaustive()
    }
}

impl MemoryVault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a user's (consented) refresh token in place; any access token is dropped.
    pub fn insert(&self, user: &UserId, token: &str) {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        let e = m.entry(user.clone()).or_default();
        e.token = Some(Zeroizing::new(token.to_owned()));
        e.consent_required = false;
        e.access = None;
        e.version += 1;
    }

    /// The refresh token held for the user now.
    pub fn token(&self, user: &UserId) -> Option<String> {
        let m = self.inner.lock().expect("vault lock poisoned");
        m.get(user).and_then(|e| e.token.as_ref().map(|t| t.to_string()))
    }

    /// True when the user was marked as needing consent.
    pub fn consent_required(&self, user: &UserId) -> bool {
        let m = self.inner.lock().expect("vault lock poisoned");
        m.get(user).is_some_and(|e| e.consent_required)
    }
}

#[async_trait]
impl TokenVault for MemoryVault {
    async fn checkout(&self, user: &UserId, ask: CheckoutAsk<'_>) -> Result<Checkout, VaultError> {
        let CheckoutAsk { owner, now, lease_until, force } = ask;
        let mut m = self.inner.lock().expect("vault lock poisoned");
        let Some(e) = m.get_mut(user) else { return Ok(Checkout::NoToken) };
        if !force && let Some((token, fresh_until)) = e.access.as_ref().filter(|(_, f)| *f > now) {
            return Ok(Checkout::Fresh(StoredAccess { token: token.clone(), fresh_until: *fresh_until }));
        }
        let Some(token) = e.token.clone().filter(|_| !e.consent_required) else { return Ok(Checkout::NoToken) };
        if let Some((holder, until)) = &e.lease
            && holder != owner
            && *until > now
        {
            return Ok(Checkout::Busy { until: *until });
        }
        e.lease = Some((owner.to_owned(), lease_until));
        Ok(Checkout::Leased(LeasedRefresh { token, version: e.version }))
    }

    async fn renew(&self, user: &UserId, owner: &str, until: DateTime<Utc>) -> Result<bool, VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        match m.get_mut(user).and_then(|e| e.lease.as_mut()) {
            Some((holder, at)) if holder == owner => {
                *at = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn store_grant(&self, user: &UserId, owner: &str, grant: &Grant<'_>) -> Result<(), VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        let e = m.entry(user.clone()).or_default();
        if let Some(r) = grant.refresh {
            e.token = Some(Zeroizing::new(r.to_owned()));
            e.version += 1;
        }
        if let Some(a) = grant.access {
            e.access = Some((Zeroizing::new(a.to_owned()), grant.fresh_until));
        }
        if e.lease.as_ref().is_some_and(|(holder, _)| holder == owner) {
            e.lease = None;
        }
        Ok(())
    }

    async fn release(&self, user: &UserId, owner: &str) -> Result<(), VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        if let Some(e) = m.get_mut(user)
            && e.lease.as_ref().is_some_and(|(holder, _)| holder == owner)
        {
            e.lease = None;
        }
        Ok(())
    }

    async fn refused(&self, user: &UserId, owner: &str, version: i64, _now: DateTime<Utc>) -> Result<bool, VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        let e = m.entry(user.clone()).or_default();
        if e.lease.as_ref().is_some_and(|(holder, _)| holder == owner) {
            e.lease = None;
        }
        if e.version != version {
            return Ok(false);
        }
        e.consent_required = true;
        e.access = None;
        Ok(true)
    }
}

/// An access token in memory, with the instant after which it is not used.
pub(crate) struct CachedToken {
    pub token: Zeroizing<String>,
    /// On the client's clock, so that tests can move time.
    pub fresh_until: DateTime<Utc>,
    /// Distinguishes tokens, so that a 401 invalidates only the token it was
    /// answered to, not a newer one another task minted meanwhile.
    pub generation: u64,
}

/// One user's slot; its mutex is the single-flight lock.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// When the slot map grows past this many users, every idle slot is dropped, fresh
/// or not: a campaign touches each user once, a few milliseconds apart, so an idle
/// token is rarely needed again, and a dropped one only costs a refresh. Dropping
/// all idle slots at once keeps the pruning amortised O(1) per user (pruning only the
/// stale ones made every new user walk the whole map once it was full of fresh
/// tokens: quadratic in a large campaign) and bounds the memory: a few times the
/// users a run has in flight (384 and a prefetched claim's as many), which at 10,000
/// slots was about 4 MB of a million-user run's peak RSS (issue 30).
const PRUNE_ABOVE: usize = 2_048;

/// Access tokens by user.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<UserId, Slot>>,
    generations: AtomicU64,
}

impl TokenCache {
    /// The user's slot, created when missing.
    pub fn slot(&self, user: &UserId) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock poisoned");
        if slots.len() > PRUNE_ABOVE && !slots.contains_key(user) {
            // keep only the slots in use (someone holds the Arc)
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots.entry(user.clone()).or_default().clone()
    }

    /// A new generation number.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forgets every cached access token (the refresh tokens stay in the vault).
    pub fn clear(&self) {
        self.slots.lock().expect("token cache lock poisoned").clear();
    }
}

/// How long a token that lives `lifetime` is used: until `margin` before it
/// expires, but at least half its life, so that a short-lived token (a sandbox
/// configured with seconds) is still cached rather than refreshed on every call.
pub(crate) fn usable_for(lifetime: Duration, margin: Duration) -> Duration {
    lifetime.saturating_sub(margin).max(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_slots_are_pruned_in_bulk_and_held_ones_kept() {
        let uid = |i: usize| UserId::parse(&format!("00000000-0000-4000-8000-{i:012}")).unwrap();
        let cache = TokenCache::default();
        let held = cache.slot(&uid(0));
        for i in 1..=PRUNE_ABOVE {
            let _ = cache.slot(&uid(i));
        }
        assert_eq!(cache.slots.lock().unwrap().len(), PRUNE_ABOVE + 1, "no pruning up to the cap");
        let _ = cache.slot(&uid(PRUNE_ABOVE + 1));
        let slots = cache.slots.lock().unwrap();
        assert_eq!(slots.len(), 2, "every idle slot went at once: the held one and the new one stay");
        assert!(slots.contains_key(&uid(0)));
        drop(slots);
        drop(held);
    }

    #[test]
    fn usable_window() {
        let m = Duration::from_secs(300);
        assert_eq!(usable_for(Duration::from_secs(21_600), m), Duration::from_secs(21_300));
        assert_eq!(usable_for(Duration::from_secs(4), m), Duration::from_secs(2));
        assert_eq!(usable_for(Duration::ZERO, m), Duration::ZERO);
    }

    #[tokio::test]
    async fn memory_vault_leases_and_refusals() {
        let v = MemoryVault::new();
        let u = UserId::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(30);
        assert!(matches!(
            v.checkout(&u, CheckoutAsk { owner: "a", now, lease_until: later, force: false }).await.unwrap(),
            Checkout::NoToken
        ));
        v.insert(&u, "rt1");
        let Checkout::Leased(l) =
            v.checkout(&u, CheckoutAsk { owner: "a", now, lease_until: later, force: false }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(l.token.as_str(), "rt1");
        // another owner waits while the lease lasts, and may take it after
        assert!(matches!(
            v.checkout(&u, CheckoutAsk { owner: "b", now, lease_until: later, force: false }).await.unwrap(),
            Checkout::Busy { .. }
        ));
        assert!(matches!(
            v.checkout(&u, CheckoutAsk { owner: "b", now: later, lease_until: later, force: false }).await.unwrap(),
            Checkout::Leased(_)
        ));
        v.release(&u, "b").await.unwrap();
        let grant = Grant { refresh: Some("rt2"), access: Some("at2"), fresh_until: later, expires_at: later };
        v.store_grant(&u, "a", &grant).await.unwrap();
        let Checkout::Fresh(a) =
            v.checkout(&u, CheckoutAsk { owner: "b", now, lease_until: later, force: false }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(a.token.as_str(), "at2");
        // a refusal of an older version does not mark consent lost
        assert!(!v.refused(&u, "b", l.version, now).await.unwrap());
        assert!(!v.consent_required(&u));
        let Checkout::Leased(l2) =
            v.checkout(&u, CheckoutAsk { owner: "b", now, lease_until: later, force: true }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(l2.token.as_str(), "rt2");
        assert!(v.refused(&u, "b", l2.version, now).await.unwrap());
        assert!(v.consent_required(&u));
        assert!(matches!(
            v.checkout(&u, CheckoutAsk { owner: "b", now, lease_until: later, force: false }).await.unwrap(),
            Checkout::NoToken
        ));
        assert!(!format!("{v:?}").contains("rt2"));
    }
}
