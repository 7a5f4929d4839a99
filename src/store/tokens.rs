//! Users' tokens at rest: the store's side of the Baanx client's [`TokenVault`].
//!
//! Refresh tokens are sealed with [`TokenCipher`] (the user id as associated data)
//! into `users.refresh_token_enc`, with the key's id in `users.token_key_id`; the last
//! access token minted, sealed the same way (with `"{user}:access"` as associated
//! data, so that one cannot stand in for the other), into `users.access_token_enc`,
//! with the instant after which it is not used. `token_version` changes with every
//! refresh token written. `token_lease_owner`/`token_lease_until` is the user's
//! refresh lease: one process at a time refreshes a user (see `baanx::tokens`).
//!
//! A refused token sets `users.consent_required_at`, but only while the refused token
//! is still the stored one; from then on the vault answers "no token" until a newly
//! consented one is put in place with [`Store::user_token_consented`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::sessions::returned_user_ids;
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::baanx::{Checkout, Grant, LeasedRefresh, StoredAccess, TokenVault, VaultError};
use crate::crypto::TokenCipher;
use crate::domain::{Clock, UserId};

/// A user's sealed refresh token as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// nonce || ciphertext.
    pub sealed: Vec<u8>,
    /// The id of the key it was sealed with.
    pub key_id: String,
    /// When the token was refused, if it was (Unix ms).
    pub consent_required_at: Option<i64>,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("key_id", &self.key_id)
            .field("consent_required_at", &self.consent_required_at)
            .finish_non_exhaustive()
    }
}

/// Everything [`Store::user_tokens_checkout`] read of a user, sealed.
#[derive(Clone, Default)]
pub struct TokenRow {
    /// The refresh token and its key id.
    pub refresh: Option<(Vec<u8>, String)>,
    pub consent_required_at: Option<i64>,
    pub version: i64,
    /// The access token, its key id and the instant after which it is not used.
    pub access: Option<(Vec<u8>, String, DateTime<Utc>)>,
    /// Who holds the refresh lease, and until when.
    pub lease: Option<(String, DateTime<Utc>)>,
    /// Whether this checkout took the lease.
    pub leased: bool,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("has_refresh", &self.refresh.is_some())
            .field("consent_required_at", &self.consent_required_at)
            .field("version", &self.version)
            .field("access_fresh_until", &self.access.as_ref().map(|a| a.2))
            .field("lease", &self.lease)
            .field("leased", &self.leased)
            .finish()
    }
}

/// A sealed token and its key id, to be written.
pub struct SealedWrite<'a> {
    pub sealed: &'a [u8],
    pub key_id: &'a str,
}

/// What [`Store::user_token_store_grant`] writes: a rotated refresh token and a new
/// access token (either may be missing).
pub struct GrantWrite<'a> {
    pub refresh: Option<SealedWrite<'a>>,
    pub access: Option<SealedWrite<'a>>,
    pub fresh_until: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// The user's sealed refresh token; `None` when the user has none (or does not
    /// exist).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_get(&self, user: &UserId) -> Result<Option<SealedToken>, StoreError> {
        let row =
            sqlx::query("SELECT refresh_token_enc, token_key_id, consent_required_at FROM users WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("user_token_get"))?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Option<Vec<u8>> = row.try_get("refresh_token_enc").map_err(query_err("user_token_get"))?;
        let key_id: Option<String> = row.try_get("token_key_id").map_err(query_err("user_token_get"))?;
        let consent_required_at: Option<i64> =
            row.try_get("consent_required_at").map_err(query_err("user_token_get"))?;
        Ok(match (sealed, key_id) {
            (Some(sealed), Some(key_id)) => Some(SealedToken { sealed, key_id, consent_required_at }),
            _ => None,
        })
    }

    /// One atomic step of the one-refresh-at-a-time rule: takes the user's refresh
    /// lease for `owner` until `lease_until`, unless a usable access token is stored
    /// (and `force` is off), the lease is held by another owner and has not run out,
    /// or there is no usable refresh token; then reads the user's tokens. In a run's
    /// group, one pair of statements serves every user asking at that moment.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user, [`StoreError::Query`].
    pub async fn user_tokens_checkout(
        &self,
        user: &UserId,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        force: bool,
    ) -> Result<TokenRow, StoreError> {
        let args = TokenCheckout {
            backend: self.backend(),
            user: user.to_string(),
            owner: owner.to_owned(),
            now_ms: to_millis(now),
            until_ms: to_millis(lease_until),
            force,
        };
        self.write_batched(args).await?.ok_or_else(|| StoreError::NotFound { what: "user", key: user.to_string() })
    }

    /// Extends `owner`'s refresh lease; `false` when `owner` no longer holds it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_lease_renew(
        &self,
        user: &UserId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET token_lease_until = $3 WHERE user_id = $1 AND token_lease_owner = $2")
            .bind(user.as_str())
            .bind(owner)
            .bind(to_millis(until))
            .execute(self.pool())
            .await
            .map_err(query_err("user_token_lease_renew"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases `owner`'s refresh lease, if it still holds it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_lease_release(&self, user: &UserId, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE users SET token_lease_owner = NULL, token_lease_until = NULL \
             WHERE user_id = $1 AND token_lease_owner = $2",
        )
        .bind(user.as_str())
        .bind(owner)
        .execute(self.pool())
        .await
        .map_err(query_err("user_token_lease_release"))?;
        Ok(())
    }

    /// Stores a refresh's result (the rotated refresh token, which bumps the token
    /// version, and the new access token) and releases `owner`'s lease.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user does not exist, [`StoreError::Query`].
    pub async fn user_token_store_grant(
        &self,
        user: &UserId,
        owner: &str,
        grant: &GrantWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sealed = |w: &Option<SealedWrite<'_>>| w.as_ref().map(|w| (w.sealed.to_vec(), w.key_id.to_owned()));
        let args = GrantPut {
            backend: self.backend(),
            user: user.to_string(),
            owner: owner.to_owned(),
            refresh: sealed(&grant.refresh),
            access: sealed(&grant.access),
            fresh_until_ms: to_millis(grant.fresh_until),
            expires_at_ms: to_millis(grant.expires_at),
            now_ms: to_millis(now),
        };
        if !self.write_batched(args).await? {
            return Err(StoreError::NotFound { what: "user", key: user.to_string() });
        }
        Ok(())
    }

    /// The refresh token of `version` was refused: marks the user as needing consent
    /// (the first mark's time is kept) and forgets the access token, but only while
    /// `version` is still the stored one; releases `owner`'s lease either way.
    /// Returns whether it marked.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_refused(
        &self,
        user: &UserId,
        owner: &str,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let now_ms = to_millis(now);
        let mut tx = self.begin_write().await?;
        let marked = sqlx::query(
            "UPDATE users SET consent_required_at = COALESCE(consent_required_at, $3), \
               access_token_enc = NULL, access_token_key_id = NULL, access_token_fresh_until = NULL, \
               access_token_expires_at = NULL, updated_at = $3 \
             WHERE user_id = $1 AND token_version = $2",
        )
        .bind(user.as_str())
        .bind(version)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err("user_token_refused"))?
        .rows_affected()
            == 1;
        sqlx::query(
            "UPDATE users SET token_lease_owner = NULL, token_lease_until = NULL \
             WHERE user_id = $1 AND token_lease_owner = $2",
        )
        .bind(user.as_str())
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(query_err("user_token_refused"))?;
        tx.commit().await.map_err(query_err("user_token_refused commit"))?;
        Ok(marked)
    }

    /// Replaces the user's refresh token with a rotated one (consent state kept), as
    /// a refresh outside the lease would. Tests and tools; a run goes through
    /// [`Store::user_token_store_grant`].
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user does not exist, [`StoreError::Query`].
    pub async fn user_token_store_rotated(
        &self,
        user: &UserId,
        sealed: &[u8],
        key_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.user_token_put(user, sealed, key_id, now_ms, false).await
    }

    /// Puts a newly consented refresh token in place, clears `consent_required_at`
    /// and forgets any access token (it belonged to the old consent).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user does not exist, [`StoreError::Query`].
    pub async fn user_token_consented(
        &self,
        user: &UserId,
        sealed: &[u8],
        key_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.user_token_put(user, sealed, key_id, now_ms, true).await
    }

    /// The one statement behind both: a new sealed token (a new version), and the
    /// consent mark and the access token cleared when `consented`.
    async fn user_token_put(
        &self,
        user: &UserId,
        sealed: &[u8],
        key_id: &str,
        now_ms: i64,
        consented: bool,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE users SET refresh_token_enc = $2, token_key_id = $3, updated_at = $4, \
               token_version = token_version + 1, \
               consent_required_at = CASE WHEN $5 THEN NULL ELSE consent_required_at END, \
               access_token_enc = CASE WHEN $5 THEN NULL ELSE access_token_enc END, \
               access_token_fresh_until = CASE WHEN $5 THEN NULL ELSE access_token_fresh_until END \
             WHERE user_id = $1",
        )
        .bind(user.as_str())
        .bind(sealed.to_vec())
        .bind(key_id)
        .bind(now_ms)
        .bind(consented)
        .execute(self.pool())
        .await
        .map_err(query_err("user_token_put"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "user", key: user.to_string() });
        }
        Ok(())
    }
}

/// [`Store::user_tokens_checkout`] in a group: the leases of every user asking at
/// that moment in one statement, then their tokens in another. It runs inside the
/// group's transaction, so it sees every token committed before it.
struct TokenCheckout {
    backend: Backend,
    user: String,
    owner: String,
    now_ms: i64,
    until_ms: i64,
    force: bool,
}

impl BatchWrite for TokenCheckout {
    type Out = Option<TokenRow>;

    fn key(&self) -> Option<&str> {
        Some(&self.user)
    }

    fn run_many<'a>(reads: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Option<TokenRow>>> {
        Box::pin(async move {
            let Some(first) = reads.first() else { return Ok(Vec::new()) };
            let rows =
                json_rows(reads.iter().map(|r| serde_json::json!([r.user, r.owner, r.now_ms, r.until_ms, r.force])));
            let args = json_args(
                first.backend,
                &[("u", Arg::Text), ("o", Arg::Text), ("now", Arg::Int), ("until", Arg::Int), ("f", Arg::Bool)],
            );
            let lease = format!(
                "UPDATE users SET token_lease_owner = x.o, token_lease_until = x.until FROM ({args}) AS x \
                 WHERE users.user_id = x.u AND users.refresh_token_enc IS NOT NULL \
                   AND users.consent_required_at IS NULL \
                   AND (x.f OR users.access_token_enc IS NULL OR users.access_token_fresh_until IS NULL \
                        OR users.access_token_fresh_until <= x.now) \
                   AND (users.token_lease_until IS NULL OR users.token_lease_until <= x.now \
                        OR users.token_lease_owner = x.o) \
                 RETURNING users.user_id"
            );
            let leased: HashSet<String> = returned_user_ids(
                sqlx::query(AssertSqlSafe(lease)).bind(rows.clone()),
                tx,
                "user_tokens_checkout lease",
            )
            .await?;
            let read = format!(
                "SELECT user_id, refresh_token_enc, token_key_id, consent_required_at, token_version, \
                   access_token_enc, access_token_key_id, access_token_fresh_until, token_lease_owner, token_lease_until \
                 FROM users WHERE user_id IN (SELECT x.u FROM ({args}) AS x)"
            );
            let mut found: HashMap<String, TokenRow> = HashMap::new();
            for row in sqlx::query(AssertSqlSafe(read))
                .bind(rows)
                .fetch_all(&mut **tx)
                .await
                .map_err(query_err("user_tokens_checkout"))?
            {
                let user: String = row.try_get("user_id").map_err(query_err("user_tokens_checkout"))?;
                let mut t = token_row(&row).map_err(query_err("user_tokens_checkout"))?;
                t.leased = leased.contains(&user);
                found.insert(user, t);
            }
            Ok(reads.iter().map(|r| found.get(&r.user).cloned()).collect())
        })
    }
}

fn token_row(row: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
    let refresh: Option<Vec<u8>> = row.try_get("refresh_token_enc")?;
    let key_id: Option<String> = row.try_get("token_key_id")?;
    let access: Option<Vec<u8>> = row.try_get("access_token_enc")?;
    let access_key: Option<String> = row.try_get("access_token_key_id")?;
    let fresh_until: Option<i64> = row.try_get("access_token_fresh_until")?;
    let owner: Option<String> = row.try_get("token_lease_owner")?;
    let until: Option<i64> = row.try_get("token_lease_until")?;
    Ok(TokenRow {
        refresh: refresh.zip(key_id),
        consent_required_at: row.try_get("consent_required_at")?,
        version: row.try_get("token_version")?,
        access: match (access, access_key, fresh_until) {
            (Some(a), Some(k), Some(f)) => Some((a, k, from_millis(f))),
            _ => None,
        },
        lease: owner.zip(until.map(from_millis)),
        leased: false,
    })
}

/// [`Store::user_token_store_grant`]'s write; a group's grants go in one statement.
/// A user forgotten while the refresh was in flight (`users forget` in another
/// process) keeps no token: the grant only releases the lease.
struct GrantPut {
    backend: Backend,
    user: String,
    owner: String,
    refresh: Option<(Vec<u8>, String)>,
    access: Option<(Vec<u8>, String)>,
    fresh_until_ms: i64,
    expires_at_ms: i64,
    now_ms: i64,
}

impl BatchWrite for GrantPut {
    /// Whether the user was there to update.
    type Out = bool;

    fn key(&self) -> Option<&str> {
        Some(&self.user)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let hex = |t: &Option<(Vec<u8>, String)>| t.as_ref().map(|(s, _)| hex::encode(s)).unwrap_or_default();
            let key = |t: &Option<(Vec<u8>, String)>| t.as_ref().map(|(_, k)| k.clone()).unwrap_or_default();
            let rows = json_rows(writes.iter().map(|w| {
                serde_json::json!([
                    w.user,
                    w.owner,
                    w.refresh.is_some(),
                    hex(&w.refresh),
                    key(&w.refresh),
                    w.access.is_some(),
                    hex(&w.access),
                    key(&w.access),
                    w.fresh_until_ms,
                    w.expires_at_ms,
                    w.now_ms
                ])
            }));
            // the sealed bytes travel as hex inside the JSON
            let from = json_args(
                first.backend,
                &[
                    ("u", Arg::Text),
                    ("o", Arg::Text),
                    ("hr", Arg::Bool),
                    ("rt", Arg::Hex),
                    ("rk", Arg::Text),
                    ("ha", Arg::Bool),
                    ("at", Arg::Hex),
                    ("ak", Arg::Text),
                    ("fu", Arg::Int),
                    ("ex", Arg::Int),
                    ("now", Arg::Int),
                ],
            );
            let sql = format!(
                "UPDATE users SET \
                   refresh_token_enc = CASE WHEN x.hr AND users.forgotten_at IS NULL THEN x.rt ELSE users.refresh_token_enc END, \
                   token_key_id = CASE WHEN x.hr AND users.forgotten_at IS NULL THEN x.rk ELSE users.token_key_id END, \
                   token_version = users.token_version + CASE WHEN x.hr THEN 1 ELSE 0 END, \
                   access_token_enc = CASE WHEN x.ha AND users.forgotten_at IS NULL THEN x.at ELSE users.access_token_enc END, \
                   access_token_key_id = CASE WHEN x.ha AND users.forgotten_at IS NULL THEN x.ak ELSE users.access_token_key_id END, \
                   access_token_fresh_until = CASE WHEN x.ha AND users.forgotten_at IS NULL THEN x.fu ELSE users.access_token_fresh_until END, \
                   access_token_expires_at = CASE WHEN x.ha AND users.forgotten_at IS NULL THEN x.ex ELSE users.access_token_expires_at END, \
                   token_lease_owner = CASE WHEN users.token_lease_owner = x.o THEN NULL \
                     ELSE users.token_lease_owner END, \
                   token_lease_until = CASE WHEN users.token_lease_owner = x.o THEN NULL \
                     ELSE users.token_lease_until END, \
                   updated_at = x.now \
                 FROM ({from}) AS x WHERE users.user_id = x.u RETURNING users.user_id"
            );
            let done =
                returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "user_token_store_grant").await?;
            Ok(writes.iter().map(|w| done.contains(&w.user)).collect())
        })
    }
}

/// The associated data an access token is sealed with: not the refresh token's.
fn access_ad(user: &UserId) -> String {
    format!("{user}:access")
}

/// The [`TokenVault`] over the store: tokens sealed with the user id as associated
/// data.
#[derive(Debug, Clone)]
pub struct StoreTokenVault {
    store: Store,
    cipher: Arc<TokenCipher>,
    clock: Arc<dyn Clock>,
}

impl StoreTokenVault {
    /// A vault over `store`, sealing with `cipher`.
    pub fn new(store: Store, cipher: Arc<TokenCipher>, clock: Arc<dyn Clock>) -> Self {
        Self { store, cipher, clock }
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
            Some(t) if t.consent_required_at.is_none() => {
                Ok(Some(self.cipher.open(user.as_str(), &t.key_id, &t.sealed)?))
            }
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl TokenVault for StoreTokenVault {
    async fn checkout(
        &self,
        user: &UserId,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        force: bool,
    ) -> Result<Checkout, VaultError> {
        let mut force = force;
        loop {
            let row = match self.store.user_tokens_checkout(user, owner, now, lease_until, force).await {
                Ok(row) => row,
                Err(StoreError::NotFound { .. }) => return Ok(Checkout::NoToken),
                Err(e) => return Err(e.into()),
            };
            if row.leased {
                let Some((sealed, key_id)) = &row.refresh else { return Ok(Checkout::NoToken) };
                let token = self.cipher.open(user.as_str(), key_id, sealed)?;
                return Ok(Checkout::Leased(LeasedRefresh { token, version: row.version }));
            }
            if row.refresh.is_none() || row.consent_required_at.is_some() {
                return Ok(Checkout::NoToken);
            }
            if !force && let Some((sealed, key_id, fresh_until)) = row.access.as_ref().filter(|a| a.2 > now) {
                match self.cipher.open(&access_ad(user), key_id, sealed) {
                    Ok(token) => return Ok(Checkout::Fresh(StoredAccess { token, fresh_until: *fresh_until })),
                    // sealed under a key since retired: a refresh replaces it
                    Err(_) => {
                        force = true;
                        continue;
                    }
                }
            }
            let until = row.lease.map_or(now, |(_, until)| until);
            return Ok(Checkout::Busy { until });
        }
    }

    async fn renew(&self, user: &UserId, owner: &str, until: DateTime<Utc>) -> Result<bool, VaultError> {
        Ok(self.store.user_token_lease_renew(user, owner, until).await?)
    }

    async fn store_grant(&self, user: &UserId, owner: &str, grant: &Grant<'_>) -> Result<(), VaultError> {
        let refresh = grant.refresh.map(|t| self.cipher.seal(user.as_str(), t));
        let access = grant.access.map(|t| self.cipher.seal(&access_ad(user), t));
        let key_id = self.cipher.key_id();
        let write = GrantWrite {
            refresh: refresh.as_deref().map(|sealed| SealedWrite { sealed, key_id }),
            access: access.as_deref().map(|sealed| SealedWrite { sealed, key_id }),
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
        let Checkout::Leased(_) = vault.checkout(&user, "run", Utc::now(), later(30), false).await.unwrap() else {
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
        assert!(matches!(vault.checkout(&user, "a", now, later(30), false).await.unwrap(), Checkout::NoToken));
        insert_user(&db.store, ID).await;
        assert!(matches!(vault.checkout(&user, "a", now, later(30), false).await.unwrap(), Checkout::NoToken));

        vault.put_consented(&user, "rt-first-token").await.unwrap();
        let stored = db.store.user_token_get(&user).await.unwrap().unwrap();
        assert!(!stored.sealed.windows(14).any(|w| w == b"rt-first-token"), "stored in clear");
        assert_eq!(stored.key_id, cipher.key_id());
        assert!(!format!("{stored:?}").contains("rt-first"));

        // a takes the lease; b must wait for it, and may take it once it ran out
        let Checkout::Leased(a) = vault.checkout(&user, "a", now, later(30), false).await.unwrap() else { panic!() };
        assert_eq!(a.token.as_str(), "rt-first-token");
        let Checkout::Busy { until } = vault.checkout(&user, "b", now, later(30), false).await.unwrap() else {
            panic!()
        };
        assert!(until > now);
        assert!(matches!(vault.checkout(&user, "b", later(31), later(60), false).await.unwrap(), Checkout::Leased(_)));
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
        let Checkout::Fresh(f) = vault.checkout(&user, "c", now, later(30), false).await.unwrap() else { panic!() };
        assert_eq!(f.token.as_str(), "at-second-token");
        assert_eq!(vault.refresh_token(&user).await.unwrap().unwrap().as_str(), "rt-second-token");

        // a refusal of the first token, rotated away since, does not mark consent lost
        let Checkout::Leased(c) = vault.checkout(&user, "c", now, later(30), true).await.unwrap() else { panic!() };
        assert!(!vault.refused(&user, "c", a.version, now).await.unwrap());
        assert!(db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.is_none());
        // the lease was released, and the current token's refusal marks it
        let Checkout::Leased(c2) = vault.checkout(&user, "d", now, later(30), true).await.unwrap() else { panic!() };
        assert_eq!(c2.version, c.version);
        assert!(vault.refused(&user, "d", c2.version, now).await.unwrap());
        assert!(matches!(vault.checkout(&user, "d", now, later(30), false).await.unwrap(), Checkout::NoToken));
        let first_mark = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        assert!(vault.refused(&user, "d", c2.version, later(5)).await.unwrap());
        let again = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        assert_eq!(first_mark, again, "the first refusal's time is kept");

        vault.put_consented(&user, "rt-third-token").await.unwrap();
        let Checkout::Leased(t) = vault.checkout(&user, "d", now, later(30), false).await.unwrap() else { panic!() };
        assert_eq!(t.token.as_str(), "rt-third-token", "a new consent drops the old access token");
        vault.release(&user, "d").await.unwrap();

        // a ciphertext moved onto another user's row does not open
        let other = UserId::parse("7f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        insert_user(&db.store, other.as_str()).await;
        let moved = db.store.user_token_get(&user).await.unwrap().unwrap();
        db.store.user_token_store_rotated(&other, &moved.sealed, &moved.key_id, 1).await.unwrap();
        assert!(vault.checkout(&other, "d", now, later(30), false).await.is_err());
    });
}
