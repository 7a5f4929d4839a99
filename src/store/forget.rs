//! `users forget`: erasure that keeps the evidence.
//!
//! A person's data (email, names, locale, time zone, every token) is removed from
//! the user's row, which stays as a pseudonymous record: the id, the times, the
//! states, the rejection code and reason, the ledger, the targets, the links'
//! hashes, the audit trail. An AML record needs those, and the audit trail is never
//! rewritten (no event holds personal data to begin with). Decisions:
//! - `email` is NOT NULL in the schema (every engine, every reader): it becomes
//!   [`FORGOTTEN_EMAIL`], which is no one's address.
//! - Without a refresh token the user is no longer reachable, so no campaign targets
//!   them again; their open targets are settled `skipped` / `forgotten` and their
//!   click-through links revoked in the same transaction.
//! - Old copies of the row can outlive an UPDATE: in SQLite's free space and WAL, in
//!   Postgres's dead row versions. SQLite is vacuumed and its WAL truncated, Postgres's
//!   `users` table vacuumed, after the commit.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::events::{NewEvent, event_insert};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::UserId;

/// The address a forgotten user's row carries instead of theirs.
pub const FORGOTTEN_EMAIL: &str = "forgotten@erased.invalid";

/// What `users forget` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// Erased now; with how many targets settled and links revoked.
    Now { targets: u64, links: u64 },
    /// Erased before, at this time: nothing changed.
    Already(DateTime<Utc>),
    /// No such user.
    Unknown,
}

impl Store {
    /// Erases user `id`'s personal data and records `user.forgotten` (see the module
    /// docs). Cannot be undone.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_forget(&self, id: &UserId, actor: &str, now: DateTime<Utc>) -> Result<Forgotten, StoreError> {
        let now_ms = to_millis(now);
        let mut tx = self.begin_write().await?;
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT forgotten_at FROM users WHERE user_id = $1{lock}")))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("user_forget read"))?;
        let Some(row) = row else { return Ok(Forgotten::Unknown) };
        if let Some(at) = row.try_get::<Option<i64>, _>("forgotten_at").map_err(query_err("user_forget read"))? {
            return Ok(Forgotten::Already(from_millis(at)));
        }
        sqlx::query(
            "UPDATE users SET email = $2, first_name = NULL, last_name = NULL, locale = NULL, timezone = NULL, \
               refresh_token_enc = NULL, token_key_id = NULL, access_token_enc = NULL, access_token_key_id = NULL, \
               access_token_expires_at = NULL, access_token_fresh_until = NULL, token_lease_owner = NULL, \
               token_lease_until = NULL, token_version = token_version + 1, forgotten_at = $3, updated_at = $3 \
             WHERE user_id = $1",
        )
        .bind(id.as_str())
        .bind(FORGOTTEN_EMAIL)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err("user_forget"))?;
        let targets = sqlx::query(
            "UPDATE campaign_targets SET status = 'skipped', reason = 'forgotten', not_before = NULL, \
               lease_owner = NULL, lease_expires_at = NULL, finalized_at = $2, updated_at = $2 \
             WHERE user_id = $1 AND status IN ('pending', 'deferred', 'claimed')",
        )
        .bind(id.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err("user_forget targets"))?
        .rows_affected();
        let links = sqlx::query(
            "UPDATE verification_links SET revoked_at = $2, revoked_reason = 'forgotten' \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err("user_forget links"))?
        .rows_affected();
        let event = NewEvent {
            actor,
            kind: "user.forgotten",
            campaign_id: None,
            user_id: Some(id),
            detail: Some(serde_json::json!({
                "erased": ["email", "first_name", "last_name", "locale", "timezone", "refresh_token", "access_token"],
                "targets_skipped": targets, "links_revoked": links,
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        tx.commit().await.map_err(query_err("user_forget commit"))?;
        self.scrub_free_space().await?;
        Ok(Forgotten::Now { targets, links })
    }

    /// Rewrites the storage so that no old copy of an erased row is left: SQLite is
    /// vacuumed (free pages and free space inside pages go) and its WAL truncated;
    /// on Postgres the `users` table is vacuumed (its dead row versions go).
    async fn scrub_free_space(&self) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite => {
                sqlx::query("VACUUM").execute(self.pool()).await.map_err(query_err("user_forget vacuum"))?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(self.pool())
                    .await
                    .map_err(query_err("user_forget checkpoint"))?;
            }
            Backend::Postgres => {
                sqlx::query("VACUUM users").execute(self.pool()).await.map_err(query_err("user_forget vacuum"))?;
            }
        }
        Ok(())
    }
}
