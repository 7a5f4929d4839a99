//! Users' tokens at rest: the statements behind the engine's token vault
//! (`engine::adapters::StoreTokenVault`, which implements the Baanx client's
//! `TokenVault` over them).
//!
//! Refresh tokens are sealed with `crypto::TokenCipher` (the user id as associated
//! data) into `users.refresh_token_enc`, with the key's id in `users.token_key_id`; the
//! last access token minted, sealed the same way (with `"{user}:access"` as associated
//! data, so that one cannot stand in for the other), into `users.access_token_enc`,
//! with the instant after which it is not used. `token_version` changes with every
//! refresh token written. `token_lease_owner`/`token_lease_until` is the user's
//! refresh lease: one process at a time refreshes a user (see `baanx::tokens`).
//!
//! A refused token sets `users.consent_required_at`, but only while the refused token
//! is still the stored one; from then on the vault answers "no token" until a newly
//! consented one is put in place with [`Store::user_token_consented`].
//!
//! Reads ([`Store::user_token_get`], [`Store::user_token_load`]) go to the pool; the
//! lease and the grant are batched writes (see `store::group`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use crate::domain::UserId;
use crate::store::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows, returned_user_ids};
use crate::store::{Backend, Store, StoreError, from_millis, query_err, to_millis};

/// A token sealed by `crypto::TokenCipher`, with the id of its key. `Debug` shows
/// the key id and the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    pub key_id: String,
    /// nonce || ciphertext, the user id (or `"{user}:access"`) being the associated data.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedToken {{ key_id: {:?}, {} bytes }}", self.key_id, self.ciphertext.len())
    }
}

/// Everything the store holds of a user's tokens, sealed.
#[derive(Debug, Clone, Default)]
pub struct TokenRow {
    /// The refresh token.
    pub refresh: Option<SealedToken>,
    /// When the refresh token was refused, if it was (Unix ms).
    pub consent_required_at: Option<i64>,
    pub version: i64,
    /// The access token and the instant after which it is not used.
    pub access: Option<(SealedToken, DateTime<Utc>)>,
    /// Who holds the refresh lease, and until when.
    pub lease: Option<(String, DateTime<Utc>)>,
}

/// The refresh token a lease was taken for, and its version.
#[derive(Debug, Clone)]
pub struct LeasedToken {
    pub refresh: SealedToken,
    pub version: i64,
}

/// What [`Store::user_token_store_grant`] writes: a rotated refresh token and a new
/// access token (either may be missing).
pub struct GrantWrite {
    pub refresh: Option<SealedToken>,
    pub access: Option<SealedToken>,
    pub fresh_until: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What [`Store::user_token_lease`] asks for.
#[derive(Debug, Clone)]
pub struct LeaseParams<'a> {
    pub user: &'a UserId,
    pub owner: &'a str,
    pub now: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Take it even when a usable access token is stored (that token was refused).
    pub force: bool,
}

impl Store {
    /// The user's tokens as stored; `None` for an unknown user. A read on the pool.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_get(&self, user: &UserId) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT refresh_token_enc, token_key_id, consent_required_at, token_version, access_token_enc, \
               access_token_key_id, access_token_fresh_until, token_lease_owner, token_lease_until \
             FROM users WHERE user_id = $1",
        )
        .bind(user.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(query_err("user_token_get"))?;
        row.as_ref().map(token_row).transpose().map_err(query_err("user_token_get"))
    }

    /// One atomic step of the one-refresh-at-a-time rule: takes the user's refresh
    /// lease for `owner` until `until`, unless a usable access token is stored (and
    /// `force` is off), the lease is held by another owner and has not run out, or
    /// there is no usable refresh token. Returns the refresh token it was taken for;
    /// `None` when it was not taken. A batched write: one statement serves every user
    /// asking at that moment.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_lease(&self, p: LeaseParams<'_>) -> Result<Option<LeasedToken>, StoreError> {
        self.write_batched(TokenLease {
            backend: self.backend(),
            user: p.user.to_string(),
            owner: p.owner.to_owned(),
            now_ms: to_millis(p.now),
            until_ms: to_millis(p.until),
            force: p.force,
        })
        .await
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
        grant: &GrantWrite,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sealed = |w: &Option<SealedToken>| w.as_ref().map(|w| (w.ciphertext.clone(), w.key_id.clone()));
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
        self.user_token_put(&TokenPut { user, sealed, key_id, now_ms }, false).await
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
        self.user_token_put(&TokenPut { user, sealed, key_id, now_ms }, true).await
    }

    /// The one statement behind both: a new sealed token (a new version), and the
    /// consent mark and the access token cleared when `consented`.
    async fn user_token_put(&self, p: &TokenPut<'_>, consented: bool) -> Result<(), StoreError> {
        let TokenPut { user, sealed, key_id, now_ms } = *p;
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

/// A newly sealed refresh token of `user`, for `Store::user_token_put`.
#[derive(Clone, Copy)]
struct TokenPut<'a> {
    user: &'a UserId,
    sealed: &'a [u8],
    key_id: &'a str,
    now_ms: i64,
}

/// [`Store::user_token_lease`] in a group: the leases of every user asking at that
/// moment in one statement, which returns the refresh tokens it took them for.
struct TokenLease {
    backend: Backend,
    user: String,
    owner: String,
    now_ms: i64,
    until_ms: i64,
    force: bool,
}

impl BatchWrite for TokenLease {
    type Out = Option<LeasedToken>;

    fn key(&self) -> Option<&str> {
        Some(&self.user)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Option<LeasedToken>>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let rows =
                json_rows(writes.iter().map(|r| serde_json::json!([r.user, r.owner, r.now_ms, r.until_ms, r.force])));
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
                 RETURNING users.user_id, users.refresh_token_enc, users.token_key_id, users.token_version"
            );
            let mut leased: HashMap<String, LeasedToken> = HashMap::new();
            for row in sqlx::query(AssertSqlSafe(lease))
                .bind(rows)
                .fetch_all(&mut **tx)
                .await
                .map_err(query_err("user_token_lease"))?
            {
                let read = |row: &sqlx::any::AnyRow| -> Result<(String, LeasedToken), sqlx::Error> {
                    let refresh = SealedToken {
                        key_id: row.try_get("token_key_id")?,
                        ciphertext: row.try_get("refresh_token_enc")?,
                    };
                    Ok((row.try_get("user_id")?, LeasedToken { refresh, version: row.try_get("token_version")? }))
                };
                let (user, token) = read(&row).map_err(query_err("user_token_lease"))?;
                leased.insert(user, token);
            }
            Ok(writes.iter().map(|w| leased.remove(&w.user)).collect())
        })
    }
}

/// The [`TokenRow`] of a row holding the users columns it names.
pub(crate) fn token_row(row: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
    let sealed = |data: &str, key: &str| -> Result<Option<SealedToken>, sqlx::Error> {
        let ciphertext: Option<Vec<u8>> = row.try_get(data)?;
        let key_id: Option<String> = row.try_get(key)?;
        Ok(ciphertext.zip(key_id).map(|(ciphertext, key_id)| SealedToken { key_id, ciphertext }))
    };
    let fresh_until: Option<i64> = row.try_get("access_token_fresh_until")?;
    let owner: Option<String> = row.try_get("token_lease_owner")?;
    let until: Option<i64> = row.try_get("token_lease_until")?;
    Ok(TokenRow {
        refresh: sealed("refresh_token_enc", "token_key_id")?,
        consent_required_at: row.try_get("consent_required_at")?,
        version: row.try_get("token_version")?,
        access: sealed("access_token_enc", "access_token_key_id")?.zip(fresh_until.map(from_millis)),
        lease: owner.zip(until.map(from_millis)),
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

impl Store {
    /// The sealed refresh token of a user, or `None` when none is on file.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user, [`StoreError::Query`].
    pub async fn user_token_load(&self, id: &UserId) -> Result<Option<SealedToken>, StoreError> {
        let row = sqlx::query("SELECT refresh_token_enc, token_key_id FROM users WHERE user_id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("user_token_load"))?
            .ok_or_else(|| StoreError::NotFound { what: "user", key: id.to_string() })?;
        sealed_from_row(&row).map_err(query_err("user_token_load"))
    }

    /// Replaces a user's token with `new` only while the stored one is still `old`
    /// (compare and swap), so that re-keying never overwrites a token that Baanx
    /// rotated in the meantime. Returns whether it replaced it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_replace(
        &self,
        id: &UserId,
        old: &SealedToken,
        new: &SealedToken,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE users SET refresh_token_enc = $1, token_key_id = $2, updated_at = $3 \
             WHERE user_id = $4 AND token_key_id = $5 AND refresh_token_enc = $6",
        )
        .bind(new.ciphertext.clone())
        .bind(new.key_id.clone())
        .bind(to_millis(now))
        .bind(id.as_str())
        .bind(old.key_id.clone())
        .bind(old.ciphertext.clone())
        .execute(self.pool())
        .await
        .map_err(query_err("user_token_replace"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` users, in id order after `after`, whose token is sealed with a key
    /// other than `key_id`: the work list of `users rekey`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_tokens_not_under(
        &self,
        key_id: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<(UserId, SealedToken)>, StoreError> {
        let sql = format!(
            "SELECT user_id, refresh_token_enc, token_key_id FROM users \
             WHERE refresh_token_enc IS NOT NULL AND token_key_id <> $1 AND user_id > $2 \
             ORDER BY user_id LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_id)
            .bind(after.map_or("", UserId::as_str))
            .fetch_all(self.pool())
            .await
            .map_err(query_err("user_tokens_not_under"))?;
        rows.iter()
            .map(|row| {
                let id = UserId::parse(&row.try_get::<String, _>("user_id")?).map_err(super::decode)?;
                let sealed = sealed_from_row(row)?.ok_or(sqlx::Error::RowNotFound)?;
                Ok((id, sealed))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("user_tokens_not_under"))
    }
}

fn sealed_from_row(row: &sqlx::any::AnyRow) -> Result<Option<SealedToken>, sqlx::Error> {
    let ct: Option<Vec<u8>> = row.try_get("refresh_token_enc")?;
    let key: Option<String> = row.try_get("token_key_id")?;
    Ok(match (ct, key) {
        (Some(ciphertext), Some(key_id)) => Some(SealedToken { key_id, ciphertext }),
        _ => None,
    })
}
