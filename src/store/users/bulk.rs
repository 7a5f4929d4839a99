//! Bulk upsert for imports of up to millions of users.
//!
//! User ids are random UUIDs, so upserting batch by batch inserts into pages all
//! over the `user_id` index, and every commit writes thousands of them again. On
//! SQLite, whose page cache is small, that took 430 s for a million users; on
//! Postgres the server spent its time on one WAL flush per commit (40-60 s).
//!
//! So rows are staged in a temporary table on one connection (no index, and on
//! Postgres no WAL), and [`UserBulkUpsert::finish`] upserts them all in one
//! statement ordered by user id, which walks the index once in key order (appends,
//! on a first import). When a user id was pushed twice, the later row wins. A side
//! effect worth having: an import is all or nothing on both engines.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Connection as _};

use super::{
    ROW_VALUES, UPSERT_COLUMNS, UPSERT_ROWS_PER_STATEMENT, UserUpsert, bind_row, fill_first_seen_sql,
    upsert_on_conflict, values_sql,
};
use crate::domain::VerificationState;
use crate::store::{Backend, Store, StoreError, query_err, to_millis};

const STAGE_COLUMNS: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, rejected_at, refresh_token_enc, token_key_id, tags, signed_up_at, \
     state_confirmed_at, state_source, access_token_enc, access_token_key_id, access_token_fresh_until";

/// [`STAGE_COLUMNS`] as the final upsert selects them: a row without a
/// confirmation time is confirmed at the import's time (`$1`).
const STAGED_VALUES: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, rejected_at, refresh_token_enc, token_key_id, tags, signed_up_at, \
     COALESCE(state_confirmed_at, $1), state_source, access_token_enc, access_token_key_id, \
     access_token_fresh_until";

/// An upsert of many rows, pushed in batches and written at [`UserBulkUpsert::finish`].
pub struct UserBulkUpsert {
    /// The connection that owns the temporary staging table.
    conn: PoolConnection<Any>,
    backend: Backend,
    rows: u64,
    /// Rows pushed REJECTED without a rejection time (see `fill_first_seen_sql`).
    rejected_unknown: u64,
}

impl Store {
    /// Starts a bulk upsert (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_bulk_begin(&self) -> Result<UserBulkUpsert, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(query_err("user_bulk_begin"))?;
        // Column types as in `users`; `seq` keeps push order for "last row wins".
        // A pooled connection may still hold the table from an earlier import.
        let create = match self.backend() {
            Backend::Postgres => {
                "CREATE TEMP TABLE IF NOT EXISTS users_import (seq BIGINT GENERATED ALWAYS AS IDENTITY, \
                 user_id TEXT NOT NULL, email TEXT NOT NULL, first_name TEXT, last_name TEXT, locale TEXT, \
                 timezone TEXT, region TEXT NOT NULL, country TEXT, verification_state TEXT NOT NULL, \
                 rejected_at BIGINT, refresh_token_enc BYTEA, token_key_id TEXT, tags TEXT NOT NULL, \
                 signed_up_at BIGINT, state_confirmed_at BIGINT, state_source TEXT, access_token_enc BYTEA, \
                 access_token_key_id TEXT, access_token_fresh_until BIGINT); \
                 TRUNCATE users_import;"
            }
            Backend::Sqlite => {
                "CREATE TEMP TABLE IF NOT EXISTS users_import (seq INTEGER PRIMARY KEY, \
                 user_id TEXT NOT NULL, email TEXT NOT NULL, first_name TEXT, last_name TEXT, locale TEXT, \
                 timezone TEXT, region TEXT NOT NULL, country TEXT, verification_state TEXT NOT NULL, \
                 rejected_at INTEGER, refresh_token_enc BLOB, token_key_id TEXT, tags TEXT NOT NULL, \
                 signed_up_at INTEGER, state_confirmed_at INTEGER, state_source TEXT, access_token_enc BLOB, \
                 access_token_key_id TEXT, access_token_fresh_until INTEGER); \
                 DELETE FROM users_import;"
            }
        };
        sqlx::raw_sql(create).execute(&mut *conn).await.map_err(query_err("user_bulk_begin"))?;
        Ok(UserBulkUpsert { conn, backend: self.backend(), rows: 0, rejected_unknown: 0 })
    }
}

impl UserBulkUpsert {
    /// Stages rows; nothing is visible to others before [`UserBulkUpsert::finish`].
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn push(&mut self, rows: &[UserUpsert]) -> Result<(), StoreError> {
        let mut tx = self.conn.begin().await.map_err(query_err("user_bulk_push"))?;
        for chunk in rows.chunks(UPSERT_ROWS_PER_STATEMENT) {
            let mut sql = format!("INSERT INTO users_import ({STAGE_COLUMNS}) VALUES ");
            values_sql(&mut sql, self.backend, chunk.len(), ROW_VALUES);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = bind_row(q, r, None);
            }
            q.execute(&mut *tx).await.map_err(query_err("user_bulk_push"))?;
        }
        tx.commit().await.map_err(query_err("user_bulk_push"))?;
        self.rows += rows.len() as u64;
        self.rejected_unknown += rows
            .iter()
            .filter(|r| r.verification_state == VerificationState::Rejected && r.rejected_at.is_none())
            .count() as u64;
        Ok(())
    }

    /// Upserts everything staged in one transaction and returns the number of rows
    /// pushed.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing of the bulk upsert is written then.
    pub async fn finish(mut self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let on_conflict = upsert_on_conflict(self.backend);
        let sql = match self.backend {
            // One statement may not update a row twice on Postgres: keep the last push.
            Backend::Postgres => format!(
                "INSERT INTO users ({UPSERT_COLUMNS}) SELECT DISTINCT ON (user_id) {STAGED_VALUES}, $1, $1, $1 \
                 FROM users_import ORDER BY user_id, seq DESC{on_conflict}"
            ),
            // SQLite applies repeated keys in order, so the last push wins as well;
            // `WHERE true` keeps it from reading ON CONFLICT as a join's ON.
            Backend::Sqlite => format!(
                "INSERT INTO users ({UPSERT_COLUMNS}) SELECT {STAGED_VALUES}, $1, $1, $1 FROM users_import \
                 WHERE true ORDER BY user_id, seq{on_conflict}"
            ),
        };
        let begin = match self.backend {
            Backend::Postgres => "BEGIN",
            Backend::Sqlite => "BEGIN IMMEDIATE",
        };
        let mut tx = self.conn.begin_with(begin).await.map_err(query_err("user_bulk_finish"))?;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await
            .map_err(query_err("user_bulk_finish"))?;
        if self.rejected_unknown > 0 {
            let unknown =
                "SELECT user_id FROM users_import WHERE verification_state = 'REJECTED' AND rejected_at IS NULL";
            sqlx::query(sqlx::AssertSqlSafe(fill_first_seen_sql("$1", unknown)))
                .bind(to_millis(now))
                .execute(&mut *tx)
                .await
                .map_err(query_err("user_bulk_finish first seen"))?;
        }
        tx.commit().await.map_err(query_err("user_bulk_finish commit"))?;
        let clear = match self.backend {
            Backend::Postgres => "TRUNCATE users_import",
            Backend::Sqlite => "DELETE FROM users_import",
        };
        sqlx::raw_sql(clear).execute(&mut *self.conn).await.map_err(query_err("user_bulk_finish"))?;
        Ok(self.rows)
    }
}
