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
//! - Old copies of the row outlive an UPDATE: in SQLite's free pages and WAL, in
//!   Postgres's dead row versions. A plain `VACUUM` on Postgres is not enough: it
//!   marks a dead version's space free but leaves its bytes in the page, where the
//!   raw heap file still showed 3 of 6 forgotten addresses after `VACUUM` and a
//!   `CHECKPOINT`; overwriting the row with blanks first does not help either, as
//!   the blank is a new version and the old one stays. So after the commit SQLite is
//!   vacuumed (the file rewritten) and its WAL truncated, and Postgres's `users` is
//!   rewritten with `VACUUM FULL` (a new heap file and new indexes; the old files
//!   are unlinked). That holds an exclusive lock on `users` while it runs (about a
//!   second per 100,000 users here): workers wait for it, up to their lock timeout.
//! - What remains elsewhere, and is documented for operators (README, "Forgetting
//!   a user"): the write-ahead log and its archive, replicas' WAL, and backups, until
//!   they are recycled or expire; on SQLite, the file system's free blocks.
//! - Error texts: addresses and names are scrubbed where they enter (notify's and
//!   the API client's errors), so no event, run or log line holds one; texts kept
//!   from before that (a run's `error`, a campaign's `pause_detail`) are cleaned of
//!   the user's address here. Sealed events are never rewritten.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::campaigns::campaigns_scrub_address_in_tx;
use super::events::{NewEvent, event_insert};
use super::links::links_revoke_user_in_tx;
use super::runs::runs_scrub_address_in_tx;
use super::targets::targets_forget_user_in_tx;
use super::users::user_erase_in_tx;
use super::{Backend, Store, StoreError, from_millis, query_err};
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
        let mut tx = self.begin_write().await?;
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT forgotten_at, email FROM users WHERE user_id = $1{lock}")))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err("user_forget read"))?;
        let Some(row) = row else { return Ok(Forgotten::Unknown) };
        if let Some(at) = row.try_get::<Option<i64>, _>("forgotten_at").map_err(query_err("user_forget read"))? {
            drop(tx);
            // the rewrite may not have run (a lock timeout, a crash): run it again
            self.scrub_free_space(id).await?;
            return Ok(Forgotten::Already(from_millis(at)));
        }
        let email: String = row.try_get("email").map_err(query_err("user_forget read"))?;
        // texts kept from before errors were scrubbed where they enter
        runs_scrub_address_in_tx(&mut tx, &email, crate::domain::personal::ADDRESS).await?;
        campaigns_scrub_address_in_tx(&mut tx, &email, crate::domain::personal::ADDRESS).await?;
        user_erase_in_tx(&mut tx, id.as_str(), FORGOTTEN_EMAIL, now).await?;
        // the bounce diagnostics go with the person (they were scrubbed of the
        // address, but say what a server said about their mailbox)
        let targets = targets_forget_user_in_tx(&mut tx, id.as_str(), now).await?;
        let bounces = super::bounces::bounces_forget_user_in_tx(&mut tx, id.as_str()).await?;
        let links = links_revoke_user_in_tx(&mut tx, id.as_str(), "forgotten", now).await?;
        let event = NewEvent {
            actor,
            kind: "user.forgotten",
            campaign_id: None,
            user_id: Some(id),
            detail: Some(serde_json::json!({
                "erased": ["email", "first_name", "last_name", "locale", "timezone", "refresh_token", "access_token",
                    "bounces"],
                "targets_skipped": targets, "links_revoked": links, "bounces_erased": bounces,
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        tx.commit().await.map_err(query_err("user_forget commit"))?;
        self.scrub_free_space(id).await?;
        Ok(Forgotten::Now { targets, links })
    }

    /// Rewrites the storage so that no old copy of an erased row is left: SQLite is
    /// vacuumed (free pages and free space inside pages go) and its WAL truncated;
    /// on Postgres `users` and `campaign_runs` are rewritten (`VACUUM FULL`), so
    /// that their heap files hold no dead row version (see the module docs).
    async fn scrub_free_space(&self, id: &UserId) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite => {
                sqlx::query("VACUUM").execute(self.pool()).await.map_err(query_err("user_forget vacuum"))?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(self.pool())
                    .await
                    .map_err(query_err("user_forget checkpoint"))?;
            }
            Backend::Postgres => {
                self.wait_for_older_snapshots(id).await?;
                let filenode = |table: &'static str| async move {
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                        "SELECT pg_relation_filenode('{table}')::text"
                    )))
                    .fetch_one(self.pool())
                    .await
                    .map_err(query_err("user_forget filenode"))
                };
                for table in ["users", "campaign_runs", "campaigns"] {
                    let before = filenode(table).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM FULL {table}")))
                        .execute(self.pool())
                        .await
                        .map_err(query_err("user_forget vacuum full"))?;
                    // a role that does not own the table gets a warning, not an error,
                    // and nothing rewritten
                    if filenode(table).await? == before {
                        return Err(StoreError::Conflict(format!(
                            "the personal data is erased, but the old row versions are still in {table}'s \
                             heap file: VACUUM FULL {table} was skipped (this database role does not own it); \
                             run `reverify users forget ID --yes` again as the owner (or grant MAINTAIN on \
                             Postgres 17)"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until no other session of this database holds a snapshot older than
    /// the erasure (up to [`SNAPSHOT_WAIT`]): `VACUUM FULL` copies a dead row version
    /// that such a snapshot may still see (an autovacuum `ANALYZE` of a busy
    /// database is enough), and the address would survive in the new file.
    async fn wait_for_older_snapshots(&self, id: &UserId) -> Result<(), StoreError> {
        // the transaction that wrote the erased row
        let xid: Option<String> = sqlx::query_scalar("SELECT xmin::text FROM users WHERE user_id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("user_forget xmin"))?;
        let Some(xid) = xid else { return Ok(()) };
        let deadline = std::time::Instant::now() + SNAPSHOT_WAIT;
        loop {
            let older: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL \
                 AND age(backend_xmin) >= age($1::xid) LIMIT 1",
            )
            .bind(xid.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("user_forget snapshots"))?;
            match older {
                None => return Ok(()),
                Some(pid) if std::time::Instant::now() >= deadline => {
                    return Err(StoreError::Conflict(format!(
                        "the personal data is erased, but session {pid} has held a snapshot older than the \
                         erasure for {}s, which would keep the old row version through the rewrite: run \
                         `reverify users forget ID --yes` again once it ends",
                        SNAPSHOT_WAIT.as_secs()
                    )));
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }
}

/// How long `users forget` waits for older snapshots before its rewrite.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
