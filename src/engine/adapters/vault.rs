//! The token vault over the store: the Baanx client's [`TokenVault`] with tokens
//! sealed by [`TokenCipher`] in `users` (the statements are `store::users::tokens`).
//!
//! A checkout starts from the user's tokens as they stand: a run primes the vault
//! with what its claim read of them ([`StoreTokenVault::prime`]), so that its first
//! checkout of a user needs no statement of its own; any other checkout reads them
//! from the pool. Either way, taking the refresh lease is a write that checks
//! everything again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::baanx::{Checkout, CheckoutAsk, Grant, LeasedRefresh, StoredAccess, TokenVault, VaultError};
use crate::crypto::TokenCipher;
use crate::domain::{Clock, UserId};
use crate::store::users::{GrantWrite, LeaseParams, SealedToken, TokenRow};
use crate::store::{Store, StoreError, to_millis};

/// The associated data an access token is sealed with: not the refresh token's.
fn access_ad(user: &UserId) -> String {
    crate::crypto::access_token_ad(user.as_str())
}

/// Users' token rows as a run's claim read them, by user id as stored: each is taken
/// by the first checkout of its user (or dropped when the user is done), so that it
/// is never used twice.
type Primed = Arc<Mutex<HashMap<String, TokenRow>>>;

/// The [`TokenVault`] over the store: tokens sealed with the user id as associated
/// data. Clones are the same vault: they share what it was primed with.
#[derive(Debug, Clone)]
pub struct StoreTokenVault {
    store: Store,
    cipher: Arc<TokenCipher>,
    clock: Arc<dyn Clock>,
    primed: Primed,
}

impl StoreTokenVault {
    /// A vault over `store`, sealing with `cipher`.
    pub fn new(store: Store, cipher: Arc<TokenCipher>, clock: Arc<dyn Clock>) -> Self {
        Self { store, cipher, clock, primed: Primed::default() }
    }

    /// Primes the vault with the token row a claim read of `user_id` (its text as
    /// stored): the user's next checkout starts from it instead of reading the row
    /// again. Taken by that checkout, or dropped by [`StoreTokenVault::unprime`].
    pub fn prime(&self, user_id: &str, tokens: TokenRow) {
        self.primed.lock().expect("primed tokens lock poisoned").insert(user_id.to_owned(), tokens);
    }

    /// Drops what [`StoreTokenVault::prime`] left for `user_id` and no checkout took
    /// (the user is done without an API call).
    pub fn unprime(&self, user_id: &str) {
        self.take_primed(user_id);
    }

    /// Takes (and forgets) what the vault was primed with for `user_id`.
    fn take_primed(&self, user_id: &str) -> Option<TokenRow> {
        self.primed.lock().expect("primed tokens lock poisoned").remove(user_id)
    }

    /// Seals and stores a newly consented token (import, re-consent), clearing the
    /// consent-required mark.
    ///
    /// # Errors
    /// As [`Store::user_token_consented`].
    pub async fn put_consented(&self, user: &UserId, token: &str) -> Result<(), StoreError> {
        let sealed = self.cipher.seal(user.as_str(), token);
        self.store.user_token_consented(user, &sealed, self.cipher.key_id(), to_millis(self.clock.now())).await
    }

    /// The user's refresh token, opened; `None` when none is held or consent is
    /// required. For tests and tools.
    ///
    /// # Errors
    /// The store failed, or the token does not decrypt.
    pub async fn refresh_token(&self, user: &UserId) -> Result<Option<zeroize::Zeroizing<String>>, VaultError> {
        match self.store.user_token_get(user).await? {
            Some(t) if t.consent_required_at.is_none() => match &t.refresh {
                Some(r) => Ok(Some(self.cipher.open(user.as_str(), &r.key_id, &r.ciphertext)?)),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl TokenVault for StoreTokenVault {
    async fn checkout(&self, user: &UserId, ask: CheckoutAsk<'_>) -> Result<Checkout, VaultError> {
        let CheckoutAsk { owner, now, lease_until, force } = ask;
        let mut force = force;
        loop {
            // what the tokens are: a usable access token needs no write at all
            let primed = if force { None } else { self.take_primed(user.as_str()) };
            let row = match primed {
                Some(row) => row,
                None => match self.store.user_token_get(user).await? {
                    Some(row) => row,
                    None => return Ok(Checkout::NoToken),
                },
            };
            if row.refresh.is_none() || row.consent_required_at.is_some() {
                return Ok(Checkout::NoToken);
            }
            if !force && let Some((sealed, fresh_until)) = row.access.as_ref().filter(|a| a.1 > now) {
                match self.cipher.open(&access_ad(user), &sealed.key_id, &sealed.ciphertext) {
                    Ok(token) => return Ok(Checkout::Fresh(StoredAccess { token, fresh_until: *fresh_until })),
                    // sealed under a key since retired: a refresh replaces it
                    Err(_) => {
                        force = true;
                        continue;
                    }
                }
            }
            // a refresh is needed: the lease, which checks all of the above again
            let lease = LeaseParams { user, owner, now, until: lease_until, force };
            return Ok(match self.store.user_token_lease(lease).await? {
                Some(leased) => {
                    let token = self.cipher.open(user.as_str(), &leased.refresh.key_id, &leased.refresh.ciphertext)?;
                    Checkout::Leased(LeasedRefresh { token, version: leased.version })
                }
                None => Checkout::Busy { until: row.lease.map_or(now, |(_, until)| until) },
            });
        }
    }

    async fn renew(&self, user: &UserId, owner: &str, until: DateTime<Utc>) -> Result<bool, VaultError> {
        Ok(self.store.user_token_lease_renew(user, owner, until).await?)
    }

    async fn store_grant(&self, user: &UserId, owner: &str, grant: &Grant<'_>) -> Result<(), VaultError> {
        let refresh = grant.refresh.map(|t| self.cipher.seal(user.as_str(), t));
        let access = grant.access.map(|t| self.cipher.seal(&access_ad(user), t));
        let sealed = |ciphertext: Vec<u8>| SealedToken { key_id: self.cipher.key_id().to_owned(), ciphertext };
        let write = GrantWrite {
            refresh: refresh.map(sealed),
            access: access.map(sealed),
            fresh_until: grant.fresh_until,
            expires_at: grant.expires_at,
        };
        self.store.user_token_store_grant(user, owner, &write, self.clock.now()).await?;
        Ok(())
    }

    async fn release(&self, user: &UserId, owner: &str) -> Result<(), VaultError> {
        Ok(self.store.user_token_lease_release(user, owner).await?)
    }

    async fn refused(&self, user: &UserId, owner: &str, version: i64, now: DateTime<Utc>) -> Result<bool, VaultError> {
        Ok(self.store.user_token_refused(user, owner, version, now).await?)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;
    use crate::both_engines;
    use crate::config::Secret;
    use crate::domain::SystemClock;
    use crate::store::testing::TestDb;

    const ID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    async fn insert_user(store: &Store, id: &str) {
        sqlx::query(
            "INSERT INTO users (user_id, email, region, verification_state, created_at, updated_at) \
             VALUES ($1, 'a@example.com', 'intl', 'UNVERIFIED', 0, 0)",
        )
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    }

    fn later(s: i64) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(s)
    }

    both_engines!(a_grant_that_lands_after_users_forget_stores_no_token, |db: TestDb| async move {
        let cipher =
            Arc::new(TokenCipher::from_secrets(Some(&Secret::new(TokenCipher::generate_key())), None).unwrap());
        let vault = StoreTokenVault::new(db.store.clone(), cipher, Arc::new(SystemClock));
        let user = UserId::parse(ID).unwrap();
        insert_user(&db.store, ID).await;
        vault.put_consented(&user, "rt-first-token").await.unwrap();
        // a run takes the lease to refresh; meanwhile the person is forgotten
        let Checkout::Leased(_) = vault
            .checkout(&user, CheckoutAsk { owner: "run", now: Utc::now(), lease_until: later(30), force: false })
            .await
            .unwrap()
        else {
            panic!()
        };
        let forgotten = db.store.user_forget(&user, "dpo", Utc::now()).await.unwrap();
        assert!(matches!(forgotten, crate::store::forget::Forgotten::Now { .. }), "{forgotten:?}");
        let grant = Grant {
            refresh: Some("rt-second-token"),
            access: Some("at-second-token"),
            fresh_until: later(600),
            expires_at: later(900),
        };
        vault.store_grant(&user, "run", &grant).await.unwrap();
        let row = sqlx::query(
            "SELECT CASE WHEN refresh_token_enc IS NULL THEN 1 ELSE 0 END AS r, \
               CASE WHEN access_token_enc IS NULL THEN 1 ELSE 0 END AS a, \
               CASE WHEN token_lease_owner IS NULL THEN 1 ELSE 0 END AS l FROM users WHERE user_id = $1",
        )
        .bind(ID)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        let none = |c: &str| row.try_get::<i32, _>(c).unwrap() == 1;
        assert!(none("r") && none("a"), "the grant wrote a token back into a forgotten user's row");
        assert!(none("l"), "and the lease is free");
    });

    both_engines!(tokens_are_sealed_leased_rotated_and_refused, |db: TestDb| async move {
        let cipher =
            Arc::new(TokenCipher::from_secrets(Some(&Secret::new(TokenCipher::generate_key())), None).unwrap());
        let vault = StoreTokenVault::new(db.store.clone(), cipher.clone(), Arc::new(SystemClock));
        let user = UserId::parse(ID).unwrap();
        let now = Utc::now();
        // unknown user: no token
        assert!(matches!(
            vault.checkout(&user, CheckoutAsk { owner: "a", now, lease_until: later(30), force: false }).await.unwrap(),
            Checkout::NoToken
        ));
        insert_user(&db.store, ID).await;
        assert!(matches!(
            vault.checkout(&user, CheckoutAsk { owner: "a", now, lease_until: later(30), force: false }).await.unwrap(),
            Checkout::NoToken
        ));

        vault.put_consented(&user, "rt-first-token").await.unwrap();
        let stored = db.store.user_token_get(&user).await.unwrap().unwrap().refresh.unwrap();
        assert!(!stored.ciphertext.windows(14).any(|w| w == b"rt-first-token"), "stored in clear");
        assert_eq!(stored.key_id, cipher.key_id());
        assert!(!format!("{stored:?}").contains("rt-first"));

        // a takes the lease; b must wait for it, and may take it once it ran out
        let Checkout::Leased(a) =
            vault.checkout(&user, CheckoutAsk { owner: "a", now, lease_until: later(30), force: false }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(a.token.as_str(), "rt-first-token");
        let Checkout::Busy { until } =
            vault.checkout(&user, CheckoutAsk { owner: "b", now, lease_until: later(30), force: false }).await.unwrap()
        else {
            panic!()
        };
        assert!(until > now);
        assert!(matches!(
            vault
                .checkout(&user, CheckoutAsk { owner: "b", now: later(31), lease_until: later(60), force: false })
                .await
                .unwrap(),
            Checkout::Leased(_)
        ));
        assert!(!vault.renew(&user, "a", later(40)).await.unwrap(), "a lost its lease to b");
        vault.release(&user, "b").await.unwrap();

        // a's grant: the rotated refresh token and the access token, both sealed
        let grant = Grant {
            refresh: Some("rt-second-token"),
            access: Some("at-second-token"),
            fresh_until: later(600),
            expires_at: later(900),
        };
        vault.store_grant(&user, "a", &grant).await.unwrap();
        let row = sqlx::query("SELECT refresh_token_enc, access_token_enc FROM users WHERE user_id = $1")
            .bind(ID)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        for col in ["refresh_token_enc", "access_token_enc"] {
            let bytes: Vec<u8> = row.try_get(col).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"-second-"), "{col} in clear");
        }
        // anyone now takes the stored access token instead of refreshing
        let Checkout::Fresh(f) =
            vault.checkout(&user, CheckoutAsk { owner: "c", now, lease_until: later(30), force: false }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(f.token.as_str(), "at-second-token");
        assert_eq!(vault.refresh_token(&user).await.unwrap().unwrap().as_str(), "rt-second-token");

        // a refusal of the first token, rotated away since, does not mark consent lost
        let Checkout::Leased(c) =
            vault.checkout(&user, CheckoutAsk { owner: "c", now, lease_until: later(30), force: true }).await.unwrap()
        else {
            panic!()
        };
        assert!(!vault.refused(&user, "c", a.version, now).await.unwrap());
        assert!(db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.is_none());
        // the lease was released, and the current token's refusal marks it
        let Checkout::Leased(c2) =
            vault.checkout(&user, CheckoutAsk { owner: "d", now, lease_until: later(30), force: true }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(c2.version, c.version);
        assert!(vault.refused(&user, "d", c2.version, now).await.unwrap());
        assert!(matches!(
            vault.checkout(&user, CheckoutAsk { owner: "d", now, lease_until: later(30), force: false }).await.unwrap(),
            Checkout::NoToken
        ));
        let first_mark = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        assert!(vault.refused(&user, "d", c2.version, later(5)).await.unwrap());
        let again = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        assert_eq!(first_mark, again, "the first refusal's time is kept");

        vault.put_consented(&user, "rt-third-token").await.unwrap();
        let Checkout::Leased(t) =
            vault.checkout(&user, CheckoutAsk { owner: "d", now, lease_until: later(30), force: false }).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(t.token.as_str(), "rt-third-token", "a new consent drops the old access token");
        vault.release(&user, "d").await.unwrap();

        // a ciphertext moved onto another user's row does not open
        let other = UserId::parse("7f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        insert_user(&db.store, other.as_str()).await;
        let moved = db.store.user_token_get(&user).await.unwrap().unwrap().refresh.unwrap();
        db.store.user_token_store_rotated(&other, &moved.ciphertext, &moved.key_id, 1).await.unwrap();
        assert!(
            vault
                .checkout(&other, CheckoutAsk { owner: "d", now, lease_until: later(30), force: false })
                .await
                .is_err()
        );
    });
}
