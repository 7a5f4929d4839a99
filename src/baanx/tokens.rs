//! Where refresh tokens live, and the in-memory cache of access tokens.
//!
//! The client knows nothing of the database: it persists refresh tokens through
//! the [`TokenVault`] seam (implemented over the store in `store::tokens`, and in
//! memory by [`MemoryVault`] for tests). Access tokens never leave memory.
//!
//! Single flight: each user has one async mutex around their cached access token,
//! and a refresh happens while holding it. Two tasks that need a token for the same
//! user at once therefore never both spend the refresh token (rotation would make
//! the second one's token invalid and wrongly mark the user as needing consent);
//! the second waits and reuses the first one's result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::error::VaultError;
use crate::domain::UserId;

/// Durable storage of users' refresh tokens.
///
/// Implementations encrypt at rest and must make [`TokenVault::store_rotated`]
/// durable before returning: the client uses the new access token only after it
/// returns, because the old refresh token is already dead.
#[async_trait]
pub trait TokenVault: Send + Sync + std::fmt::Debug {
    /// The user's refresh token, or `None` when none is held or the user is marked
    /// as needing consent.
    ///
    /// # Errors
    /// The store failed, or the token does not decrypt.
    async fn load(&self, user: &UserId) -> Result<Option<Zeroizing<String>>, VaultError>;

    /// Replaces the user's refresh token with the rotated one, durably.
    ///
    /// # Errors
    /// The store failed; the caller then does not use the new access token.
    async fn store_rotated(&self, user: &UserId, new_token: &str) -> Result<(), VaultError>;

    /// Records that the refresh token was refused: the user must consent again, and
    /// [`TokenVault::load`] answers `None` until a new token is put in place.
    ///
    /// # Errors
    /// The store failed.
    async fn mark_consent_required(&self, user: &UserId) -> Result<(), VaultError>;
}

#[derive(Default)]
struct MemoryEntry {
    token: Option<Zeroizing<String>>,
    consent_required: bool,
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

    /// Puts a user's (consented) refresh token in place.
    pub fn insert(&self, user: &UserId, token: &str) {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        m.insert(user.clone(), MemoryEntry { token: Some(Zeroizing::new(token.to_owned())), consent_required: false });
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
    async fn load(&self, user: &UserId) -> Result<Option<Zeroizing<String>>, VaultError> {
        let m = self.inner.lock().expect("vault lock poisoned");
        Ok(m.get(user).filter(|e| !e.consent_required).and_then(|e| e.token.clone()))
    }

    async fn store_rotated(&self, user: &UserId, new_token: &str) -> Result<(), VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        m.entry(user.clone()).or_default().token = Some(Zeroizing::new(new_token.to_owned()));
        Ok(())
    }

    async fn mark_consent_required(&self, user: &UserId) -> Result<(), VaultError> {
        let mut m = self.inner.lock().expect("vault lock poisoned");
        m.entry(user.clone()).or_default().consent_required = true;
        Ok(())
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
/// tokens: quadratic in a large campaign) and bounds the memory.
const PRUNE_ABOVE: usize = 10_000;

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
    async fn memory_vault_consent_hides_the_token() {
        let v = MemoryVault::new();
        let u = UserId::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        assert!(v.load(&u).await.unwrap().is_none());
        v.insert(&u, "rt1");
        v.store_rotated(&u, "rt2").await.unwrap();
        assert_eq!(v.load(&u).await.unwrap().as_deref().map(String::as_str), Some("rt2"));
        v.mark_consent_required(&u).await.unwrap();
        assert!(v.load(&u).await.unwrap().is_none());
        assert!(v.consent_required(&u));
        assert!(!format!("{v:?}").contains("rt2"));
    }
}
