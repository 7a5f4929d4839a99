//! Refresh tokens at rest: the store's side of the Baanx client's [`TokenVault`].
//!
//! Tokens are sealed with [`TokenCipher`] (the user id as associated data) into
//! `users.refresh_token_enc`, with the key's id in `users.token_key_id`. A refused
//! token sets `users.consent_required_at`; from then on the vault answers "no
//! token" until a newly consented one is put in place with
//! [`Store::user_token_consented`].

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};
use zeroize::Zeroizing;

use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::sessions::returned_user_ids;
use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::baanx::{TokenVault, VaultError};
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

impl Store {
    /// The user's sealed refresh token; `None` when the user has none (or does not
    /// exist).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_get(&self, user: &UserId) -> Result<Option<SealedToken>, StoreError> {
        if self.is_grouped() {
            // a run's many users in flight: one statement reads a group's tokens
            return self.write_batched(TokenGet { backend: self.backend(), user: user.to_string() }).await;
        }
        let row =
            sqlx::query("SELECT refresh_token_enc, token_key_id, consent_required_at FROM users WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("user_token_get"))?;
        row.as_ref().map_or(Ok(None), sealed_from_row)
    }

    /// Replaces the user's refresh token with a rotated one (consent state kept).
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

    /// Puts a newly consented refresh token in place and clears
    /// `consent_required_at`.
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

    /// The one statement behind both: a new sealed token, and the consent mark
    /// cleared when `consented`.
    async fn user_token_put(
        &self,
        user: &UserId,
        sealed: &[u8],
        key_id: &str,
        now_ms: i64,
        consented: bool,
    ) -> Result<(), StoreError> {
        let args = TokenPut {
            backend: self.backend(),
            user: user.to_string(),
            sealed: sealed.to_vec(),
            key_id: key_id.to_owned(),
            now_ms,
            consented,
        };
        if !self.write_batched(args).await? {
            return Err(StoreError::NotFound { what: "user", key: user.to_string() });
        }
        Ok(())
    }

    /// Marks the user as needing consent again; the first mark's time is kept.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user does not exist, [`StoreError::Query`].
    pub async fn user_consent_required_set(&self, user: &UserId, now_ms: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE users SET consent_required_at = COALESCE(consent_required_at, $2), updated_at = $2 \
             WHERE user_id = $1",
        )
        .bind(user.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(query_err("user_consent_required_set"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "user", key: user.to_string() });
        }
        Ok(())
    }
}

/// The sealed token of a row with `refresh_token_enc`, `token_key_id` and
/// `consent_required_at`.
fn sealed_from_row(row: &sqlx::any::AnyRow) -> Result<Option<SealedToken>, StoreError> {
    let sealed: Option<Vec<u8>> = row.try_get("refresh_token_enc").map_err(query_err("user_token_get"))?;
    let key_id: Option<String> = row.try_get("token_key_id").map_err(query_err("user_token_get"))?;
    let consent_required_at: Option<i64> = row.try_get("consent_required_at").map_err(query_err("user_token_get"))?;
    Ok(match (sealed, key_id) {
        (Some(sealed), Some(key_id)) => Some(SealedToken { sealed, key_id, consent_required_at }),
        _ => None,
    })
}

/// [`Store::user_token_get`] in a group: the tokens of every user asking at that
/// moment, in one statement. It reads inside the group's transaction, so it sees
/// every rotation committed before it.
struct TokenGet {
    backend: Backend,
    user: String,
}

impl BatchWrite for TokenGet {
    type Out = Option<SealedToken>;

    fn run_many<'a>(reads: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Option<SealedToken>>> {
        Box::pin(async move {
            let Some(first) = reads.first() else { return Ok(Vec::new()) };
            let ids = json_rows(reads.iter().map(|r| serde_json::json!([r.user])));
            let args = json_args(first.backend, &[("u", Arg::Text)]);
            let sql = format!(
                "SELECT user_id, refresh_token_enc, token_key_id, consent_required_at FROM users \
                 WHERE user_id IN (SELECT x.u FROM ({args}) AS x)"
            );
            let mut found: std::collections::HashMap<String, Option<SealedToken>> = std::collections::HashMap::new();
            for row in sqlx::query(AssertSqlSafe(sql))
                .bind(ids)
                .fetch_all(&mut **tx)
                .await
                .map_err(query_err("user_token_get"))?
            {
                let user: String = row.try_get("user_id").map_err(query_err("user_token_get"))?;
                found.insert(user, sealed_from_row(&row)?);
            }
            Ok(reads.iter().map(|r| found.get(&r.user).cloned().flatten()).collect())
        })
    }
}

/// [`Store::user_token_put`]'s write; a group's token rotations go in one statement.
struct TokenPut {
    backend: Backend,
    user: String,
    sealed: Vec<u8>,
    key_id: String,
    now_ms: i64,
    consented: bool,
}

impl BatchWrite for TokenPut {
    /// Whether the user was there to update.
    type Out = bool;

    fn key(&self) -> Option<&str> {
        Some(&self.user)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let rows = json_rows(
                writes
                    .iter()
                    .map(|w| serde_json::json!([w.user, hex::encode(&w.sealed), w.key_id, w.now_ms, w.consented])),
            );
            // the sealed bytes travel as hex inside the JSON
            let from = json_args(
                first.backend,
                &[("u", Arg::Text), ("tok", Arg::Hex), ("k", Arg::Text), ("at", Arg::Int), ("ok", Arg::Bool)],
            );
            let sql = format!(
                "UPDATE users SET refresh_token_enc = x.tok, token_key_id = x.k, updated_at = x.at, \
                   consent_required_at = CASE WHEN x.ok THEN NULL ELSE consent_required_at END \
                 FROM ({from}) AS x WHERE users.user_id = x.u RETURNING users.user_id"
            );
            let done = returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "user_token_put").await?;
            Ok(writes.iter().map(|w| done.contains(&w.user)).collect())
        })
    }
}

/// The [`TokenVault`] over the store: tokens sealed with the user id as associated
/// data, times from the worker's clock.
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
}

#[async_trait]
impl TokenVault for StoreTokenVault {
    async fn load(&self, user: &UserId) -> Result<Option<Zeroizing<String>>, VaultError> {
        match self.store.user_token_get(user).await? {
            Some(t) if t.consent_required_at.is_none() => {
                Ok(Some(self.cipher.open(user.as_str(), &t.key_id, &t.sealed)?))
            }
            _ => Ok(None),
        }
    }

    async fn store_rotated(&self, user: &UserId, new_token: &str) -> Result<(), VaultError> {
        let sealed = self.cipher.seal(user.as_str(), new_token);
        self.store.user_token_store_rotated(user, &sealed, self.cipher.key_id(), to_millis(self.clock.now())).await?;
        Ok(())
    }

    async fn mark_consent_required(&self, user: &UserId) -> Result<(), VaultError> {
        self.store.user_consent_required_set(user, to_millis(self.clock.now())).await?;
        Ok(())
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

    both_engines!(tokens_are_sealed_rotated_and_refused, |db: TestDb| async move {
        let cipher =
            Arc::new(TokenCipher::from_secrets(Some(&Secret::new(TokenCipher::generate_key())), None).unwrap());
        let vault = StoreTokenVault::new(db.store.clone(), cipher.clone(), Arc::new(SystemClock));
        let user = UserId::parse(ID).unwrap();
        // unknown user: no token, and writes say so
        assert!(vault.load(&user).await.unwrap().is_none());
        assert!(vault.store_rotated(&user, "rt").await.is_err());
        insert_user(&db.store, ID).await;
        assert!(vault.load(&user).await.unwrap().is_none());

        vault.put_consented(&user, "rt-first-token").await.unwrap();
        let stored = db.store.user_token_get(&user).await.unwrap().unwrap();
        assert!(!stored.sealed.windows(14).any(|w| w == b"rt-first-token"), "stored in clear");
        assert_eq!(stored.key_id, cipher.key_id());
        assert!(!format!("{stored:?}").contains("rt-first"));
        assert_eq!(vault.load(&user).await.unwrap().unwrap().as_str(), "rt-first-token");

        vault.store_rotated(&user, "rt-second-token").await.unwrap();
        assert_eq!(vault.load(&user).await.unwrap().unwrap().as_str(), "rt-second-token");

        vault.mark_consent_required(&user).await.unwrap();
        assert!(vault.load(&user).await.unwrap().is_none());
        let first_mark = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        vault.mark_consent_required(&user).await.unwrap();
        let again = db.store.user_token_get(&user).await.unwrap().unwrap().consent_required_at.unwrap();
        assert_eq!(first_mark, again, "the first refusal's time is kept");

        vault.put_consented(&user, "rt-third-token").await.unwrap();
        assert_eq!(vault.load(&user).await.unwrap().unwrap().as_str(), "rt-third-token");

        // a ciphertext moved onto another user's row does not open
        let other = UserId::parse("7f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        insert_user(&db.store, other.as_str()).await;
        let moved = db.store.user_token_get(&user).await.unwrap().unwrap();
        db.store.user_token_store_rotated(&other, &moved.sealed, &moved.key_id, 1).await.unwrap();
        assert!(vault.load(&other).await.is_err());
    });
}
