//! Bulk upsert for imports of up to millions of users.
//!
//! Postgres takes the rows batch by batch with the statements of
//! [`Store::user_upsert_batch`], committing every [`POSTGRES_COMMIT_ROWS`] rows: its
//! B-tree on `user_id` stays in shared buffers, and the server, not this process,
//! is the bottleneck, mostly one WAL flush per commit (250 commits of 4000 rows
//! took 40-60 s for a million users on a loaded machine).
//!
//! SQLite cannot do that fast: user ids are random UUIDs, so every batch inserts
//! into pages all over the `user_id` index, which outgrows SQLite's small page
//! cache; each commit then rewrites thousands of index pages (measured: 430 s for a
//! million users, most of it writing the same pages again). So on SQLite rows are
//! staged in a temporary table on one connection, and [`UserBulkUpsert::finish`]
//! upserts them all in one statement ordered by user id, which walks the index once
//! in key order (appends, on a first import). A side effect worth having: on SQLite
//! an import is all or nothing.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Connection as _};

use super::{
    UPSERT_COLUMNS, UPSERT_ON_CONFLICT, UPSERT_ROWS_PER_STATEMENT, UserUpsert, bind_row, last_of_each, upsert_on,
    values_sql,
};
use crate::store::{Backend, Store, StoreError, query_err, to_millis};

/// Rows per Postgres transaction in a bulk upsert.
pub const POSTGRES_COMMIT_ROWS: u64 = 25_000;

const STAGE_COLUMNS: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, rejected_at, refresh_token_enc, token_key_id, tags, signed_up_at";

/// An upsert of many rows, pushed in batches and finished once.
pub struct UserBulkUpsert {
    inner: Inner,
    rows: u64,
}

enum Inner {
    /// The open transaction and how many rows it holds.
    Postgres { store: Store, tx: Option<sqlx::Transaction<'static, Any>>, pending: u64 },
    /// The connection that owns the temporary staging table.
    Sqlite(PoolConnection<Any>),
}

impl Store {
    /// Starts a bulk upsert (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_bulk_begin(&self) -> Result<UserBulkUpsert, StoreError> {
        let inner = match self.backend() {
            Backend::Postgres => Inner::Postgres { store: self.clone(), tx: None, pending: 0 },
            Backend::Sqlite => {
                let mut conn = self.pool().acquire().await.map_err(query_err("user_bulk_begin"))?;
                // Column types as in `users`; `seq` keeps file order for "last row wins".
                sqlx::raw_sql(
                    "CREATE TEMP TABLE IF NOT EXISTS users_import (seq INTEGER PRIMARY KEY, \
                     user_id TEXT NOT NULL, email TEXT NOT NULL, first_name TEXT, last_name TEXT, locale TEXT, \
                     timezone TEXT, region TEXT NOT NULL, country TEXT, verification_state TEXT NOT NULL, \
                     rejected_at INTEGER, refresh_token_enc BLOB, token_key_id TEXT, tags TEXT NOT NULL, \
                     signed_up_at INTEGER); \
                     DELETE FROM temp.users_import;",
                )
                .execute(&mut *conn)
                .await
                .map_err(query_err("user_bulk_begin"))?;
                Inner::Sqlite(conn)
            }
        };
        Ok(UserBulkUpsert { inner, rows: 0 })
    }
}

impl UserBulkUpsert {
    /// Adds rows. On Postgres they are written now and committed every
    /// [`POSTGRES_COMMIT_ROWS`] rows and at the end; on SQLite all at
    /// [`UserBulkUpsert::finish`].
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn push(&mut self, rows: &[UserUpsert], now: DateTime<Utc>) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Postgres { store, tx, pending } => {
                let open = match tx {
                    Some(t) => t,
                    None => tx.insert(store.begin_write().await?),
                };
                upsert_on(open, Backend::Postgres, &last_of_each(rows), now).await?;
                *pending += rows.len() as u64;
                if *pending >= POSTGRES_COMMIT_ROWS
                    && let Some(t) = tx.take()
                {
                    t.commit().await.map_err(query_err("user_bulk_push commit"))?;
                    *pending = 0;
                }
            }
            Inner::Sqlite(conn) => {
                let mut tx = conn.begin().await.map_err(query_err("user_bulk_push"))?;
                for chunk in rows.chunks(UPSERT_ROWS_PER_STATEMENT) {
                    let mut sql = format!("INSERT INTO temp.users_import ({STAGE_COLUMNS}) VALUES ");
                    values_sql(&mut sql, Backend::Sqlite, chunk.len(), 14);
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for r in chunk {
                        q = bind_row(q, r);
                    }
                    q.execute(&mut *tx).await.map_err(query_err("user_bulk_push"))?;
                }
                tx.commit().await.map_err(query_err("user_bulk_push"))?;
            }
        }
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Writes what is staged (SQLite) and returns the number of rows pushed.
    ///
    /// # Errors
    /// [`StoreError::Query`]; on SQLite nothing of the bulk upsert is written then.
    pub async fn finish(self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = match self.inner {
            Inner::Postgres { tx, .. } => {
                if let Some(t) = tx {
                    t.commit().await.map_err(query_err("user_bulk_finish commit"))?;
                }
                return Ok(self.rows);
            }
            Inner::Sqlite(conn) => conn,
        };
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(query_err("user_bulk_finish"))?;
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join's ON.
        let sql = format!(
            "INSERT INTO users ({UPSERT_COLUMNS}) SELECT {STAGE_COLUMNS}, $1, $1, $1 FROM temp.users_import \
             WHERE true ORDER BY user_id, seq{UPSERT_ON_CONFLICT}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await
            .map_err(query_err("user_bulk_finish"))?;
        sqlx::query("DELETE FROM temp.users_import").execute(&mut *tx).await.map_err(query_err("user_bulk_finish"))?;
        tx.commit().await.map_err(query_err("user_bulk_finish commit"))?;
        Ok(self.rows)
    }
}
