//! Every SQL statement, for both engines.
//!
//! One [`Store`] wraps a `sqlx::AnyPool` on Postgres or SQLite. Statements are
//! written once with `$1..$n` placeholders (SQLite accepts them too) wherever the
//! dialects agree, and per engine where they do not (`FOR UPDATE SKIP LOCKED`, bulk
//! upserts). Every time is a BIGINT of Unix milliseconds, bound from the worker's
//! clock, never the database's.
//!
//! Statement functions are named noun first (`user_upsert_batch`,
//! `campaign_get_by_name`, `session_reserve`). Each table's statements live in one
//! file (`users`, `targets`, `sessions`, `links`, `events`, …); the transitions
//! that move several tables at once compose them in `ledger` (a run's sessions) and
//! `clicks` (click-through links), and `outcomes` applies a user's new state.
//! Writes on a run's hot path go through the batching service (`group`).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions, Executor};

/// How long a Postgres transaction may sit idle (its process frozen) before the
/// server ends it and frees its locks.
pub const IDLE_IN_TRANSACTION: &str = "15s";
/// How long a Postgres statement waits for a lock: longer than
/// [`IDLE_IN_TRANSACTION`], so that a waiter outlasts a frozen holder.
pub const LOCK_TIMEOUT: &str = "30s";

/// "The target is still this worker's claim", as every per-user statement tests it:
/// `CASE WHEN status = 'claimed' THEN lease_owner = OWNER ELSE FALSE END` rather than
/// `status = 'claimed' AND lease_owner = OWNER`. The same test, but one no index can
/// serve, so the planner finds the row by its primary key. With the plain form a
/// cached generic plan took `campaign_targets_claim` (campaign, status) and walked
/// every 'claimed' entry of the campaign, dead ones included: 8,000 index entries per
/// statement by the middle of a 20,000-user run, most of Postgres's CPU (issue 8).
/// `ours!("$3")`, or `ours!("t.", "$3")` for a table alias.
macro_rules! ours {
    ($owner:literal) => {
        ours!("", $owner)
    };
    ($alias:literal, $owner:literal) => {
        concat!("CASE WHEN ", $alias, "status = 'claimed' THEN ", $alias, "lease_owner = ", $owner, " ELSE FALSE END")
    };
}

/// A per-user statement's target, fenced by [`ours!`]: binds $1 campaign, $2 user,
/// $3 worker.
macro_rules! our_target {
    () => {
        concat!("campaign_id = $1 AND user_id = $2 AND ", ours!("$3"))
    };
}

pub mod anchor;
pub mod approvals;
pub mod bounces;
pub mod campaigns;
pub mod chain;
pub mod clicks;
pub mod dashboard;
pub mod events;
pub mod feeds;
pub mod forget;
pub mod group;
pub mod leases;
pub mod ledger;
#[cfg(test)]
mod ledger_tests;
pub mod links;
pub mod outcomes;
pub mod progress;
pub mod report;
pub mod runs;
pub mod sessions;
pub mod settings;
pub mod targets;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod users;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Which engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The engine's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A failure of the store. Messages never carry a password or a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database_url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{op}: {source}")]
    Query { op: &'static str, source: sqlx::Error },
    #[error("{what} not found: {key}")]
    NotFound { what: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
}

/// Wraps a sqlx error with the name of the statement that failed.
#[doc(hidden)]
pub fn query_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// The database: a connection pool and its engine.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Set by [`Store::with_group_commit`]: writes go through shared transactions.
    group: Option<group::Group>,
    /// How this process seals the audit chain: its key and anchor
    /// ([`Store::with_sealing`]).
    sealing: std::sync::Arc<chain::Sealing>,
}

pub use crate::domain::endpoint::redact_url;
pub use targets::Claim;

/// The connect parameters sqlx's Postgres driver reads; it ignores any other one
/// with a warning that prints its value.
const PG_PARAMETERS: [&str; 17] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
];

/// `database_url` without the query parameters the driver would ignore and whose
/// value is a secret (`sslpassword`, say): sqlx logs an ignored parameter with its
/// value, so such a one is dropped here and named (without its value) in a warning.
fn without_ignored_secrets(database_url: &str) -> String {
    let Ok(mut u) = url::Url::parse(database_url) else { return database_url.to_owned() };
    let known = |k: &str| PG_PARAMETERS.contains(&k) || k == "options" || k.starts_with("options[");
    let dropped: Vec<String> = u
        .query_pairs()
        .filter(|(k, _)| !known(k) && crate::domain::endpoint::is_secret_key(k))
        .map(|(k, _)| k.into_owned())
        .collect();
    if dropped.is_empty() {
        return database_url.to_owned();
    }
    let kept: Vec<(String, String)> =
        u.query_pairs().filter(|(k, _)| !dropped.contains(&k.to_string())).map(|(k, v)| (k.into(), v.into())).collect();
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    tracing::warn!(parameters = %dropped.join(", "), "database_url: parameters this client does not support were ignored");
    u.to_string()
}

impl Store {
    /// Connects to `database_url` (`postgres://…` or `sqlite://FILE`, created when
    /// missing) without running migrations.
    ///
    /// # Errors
    /// [`StoreError::Url`] for an unknown scheme, [`StoreError::Connect`] when the
    /// database does not answer.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(database_url);
        let backend = if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            Backend::Postgres
        } else if database_url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Url { url: shown, message: "use postgres://USER@HOST/DB or sqlite://FILE".into() });
        };
        let url = match backend {
            // create the file when missing, unless the URL says otherwise
            Backend::Sqlite if !database_url.contains("mode=") => {
                let sep = if database_url.contains('?') { '&' } else { '?' };
                format!("{database_url}{sep}mode=rwc")
            }
            Backend::Postgres => without_ignored_secrets(database_url),
            Backend::Sqlite => database_url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Url { url: shown.clone(), message: e.to_string() })?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(5));
        let pool_options = match backend {
            // Every session bounds what a stalled peer can cost the fleet (issue 13): a
            // transaction left idle by a frozen process (a paused VM, a starved pod, a
            // partition) is ended by the server after IDLE_IN_TRANSACTION, which frees
            // the users' rows it locked; a statement waits for a lock at most
            // LOCK_TIMEOUT, longer than that, so that a waiter outlasts a frozen
            // holder rather than failing; TCP keepalives find a peer that is gone. No
            // transaction of ours waits on anything but the database.
            Backend::Postgres => {
                AnyPoolOptions::new().max_connections(16).min_connections(0).after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(AssertSqlSafe(format!(
                            "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'; \
                         SET lock_timeout = '{LOCK_TIMEOUT}'; \
                         SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
                         SET tcp_keepalives_count = 3; SET client_min_messages = warning;"
                        )))
                        .await?;
                        Ok(())
                    })
                })
            }
            // One connection: SQLite takes one writer at a time, and a second
            // connection of this process waiting for the write lock would sleep in
            // SQLite's busy handler (1, 2, 5 … 100 ms naps) where waiting in the pool's
            // queue hands the connection over at once. Other processes on the same
            // file still meet `busy_timeout`.
            Backend::Sqlite => AnyPoolOptions::new().max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000;",
                    )
                    .await?;
                    Ok(())
                })
            }),
        }
        .acquire_timeout(Duration::from_secs(30))
        // No reaping of idle or old connections, so no pool maintenance task: sqlx
        // 0.9's reads its idle count while `release` can have it wrapped below zero
        // for a moment (the connection pushed and its permit freed before the count
        // goes up, so a concurrent acquire decrements first), and then loops over
        // ~2^64 without yielding, one worker at 100 % CPU for good (a `campaign
        // apply` seen spinning for 17 minutes). A worker keeps its few connections.
        .idle_timeout(None)
        .max_lifetime(None);
        let pool =
            pool_options.connect_with(options).await.map_err(|source| StoreError::Connect { url: shown, source })?;
        Ok(Self { pool, backend, group: None, sealing: Default::default() })
    }

    /// Connects and brings the schema up to date.
    ///
    /// # Errors
    /// As [`Store::connect`] and [`Store::migrate`].
    pub async fn open(database_url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(database_url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the engine's pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Migrate`].
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            // a schema already up to date needs nothing: the application's role of
            // deploy/sql/events-append-only.sql may not create anything, not even
            // sqlx's bookkeeping table, which the migrator creates before it reads it
            Backend::Postgres if self.postgres_schema_is_current().await => {}
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether every migration is applied (and none failed): read from sqlx's
    /// bookkeeping table, `false` on any error (no table yet: the migrator runs).
    async fn postgres_schema_is_current(&self) -> bool {
        let applied: Result<Vec<i64>, _> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await;
        let mut wanted: Vec<i64> = POSTGRES_MIGRATIONS.iter().map(|m| m.version).collect();
        wanted.sort_unstable();
        applied.is_ok_and(|a| a == wanted)
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for statements in this module.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`), so that two writers wait for each other instead of
    /// failing when a read lock cannot be upgraded.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        match self.backend {
            Backend::Postgres => self.pool.begin().await,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(query_err("begin transaction"))
    }

    /// A write transaction for grouped and batched writes. On Postgres, it plans no
    /// sequential scan and no hash or merge join: a batched statement joins its
    /// arguments (a JSON array) to a table by key, and a plan made while the table
    /// was small (a seq scan, under a hash join or a nested loop) would be cached on
    /// the connection and kept as the table grows to millions of rows. An index
    /// lookup per argument costs the same at every size. Every statement a group
    /// runs goes by key.
    pub(crate) async fn begin_batch(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        match self.backend {
            Backend::Postgres => {
                self.pool.begin_with("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off").await
            }
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(query_err("begin transaction"))
    }

    /// Checks that the database answers (`SELECT 1`), for `/readyz`.
    ///
    /// # Errors
    /// [`StoreError::Query`] when no connection can be had or the query fails.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(query_err("ping"))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Unix milliseconds of an instant, as stored.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of stored Unix milliseconds.
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// SQL for the latest of `values` (SQL expressions), NULLs ignored; NULL when all
/// are. Postgres's `GREATEST` ignores NULLs; SQLite's scalar `MAX(a, b, …)` is NULL
/// as soon as one argument is, so each argument is first replaced by the first
/// non-NULL value of the list read from it (a rotation): every non-NULL value is
/// picked by its own rotation, and a NULL only when all are.
pub(crate) fn greatest_sql(backend: Backend, values: &[&str]) -> String {
    match values {
        [] => "NULL".to_owned(),
        [one] => (*one).to_owned(),
        _ => match backend {
            Backend::Postgres => format!("GREATEST({})", values.join(", ")),
            Backend::Sqlite => {
                let rotations: Vec<String> = (0..values.len())
                    .map(|i| {
                        let rotated: Vec<&str> = values[i..].iter().chain(&values[..i]).copied().collect();
                        format!("COALESCE({})", rotated.join(", "))
                    })
                    .collect();
                format!("MAX({})", rotations.join(", "))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::both_engines;
    use crate::store::testing::TestDb;
    use sqlx::Row;

    both_engines!(migrations_are_idempotent_and_writes_commit, |db: TestDb| async move {
        db.store.migrate().await.unwrap();
        let mut tx = db.store.begin_write().await.unwrap();
        sqlx::query(
            "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) VALUES ($1, $2, $3, NULL, NULL, NULL)",
        )
        .bind(to_millis(Utc::now()))
        .bind("test")
        .bind("probe")
        .execute(&mut *tx)
        .await
        .map_err(query_err("event insert"))
        .unwrap();
        tx.commit().await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events")
            .fetch_one(db.store.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, 1);
    });

    both_engines!(greatest_ignores_nulls, |db: TestDb| async move {
        const NONE: &str = "CAST(NULL AS BIGINT)";
        let b = db.backend();
        for (values, want) in [
            (vec![NONE, NONE], None),
            (vec![NONE, "CAST(2 AS BIGINT)"], Some(2)),
            (vec!["CAST(3 AS BIGINT)", NONE], Some(3)),
            (vec!["CAST(3 AS BIGINT)", "CAST(5 AS BIGINT)", NONE], Some(5)),
            (vec![NONE, "CAST(7 AS BIGINT)", "CAST(5 AS BIGINT)"], Some(7)),
            (vec!["CAST(1 AS BIGINT)", NONE, "CAST(4 AS BIGINT)"], Some(4)),
        ] {
            let sql = format!("SELECT {} AS v", greatest_sql(b, &values));
            let got: Option<i64> =
                sqlx::query(sqlx::AssertSqlSafe(sql.clone())).fetch_one(db.store.pool()).await.unwrap().get("v");
            assert_eq!(got, want, "{sql}");
        }
    });

    // Migration 0004 dates the REJECTED users written before the store did: rerun here
    // on rows written as the old code wrote them.
    both_engines!(migration_0004_dates_rejections_without_a_time, |db: TestDb| async move {
        let insert = "INSERT INTO users (user_id, email, region, verification_state, state_changed_at, rejected_at, \
                        created_at, updated_at) VALUES ($1, 'u@example.test', 'intl', $2, $3, $4, 1, $5)";
        let rows = [
            ("00000000-0000-4000-8000-000000000001", "REJECTED", Some(100), None, 300),
            ("00000000-0000-4000-8000-000000000002", "REJECTED", None, None, 300),
            ("00000000-0000-4000-8000-000000000003", "REJECTED", Some(100), Some(50), 300),
            ("00000000-0000-4000-8000-000000000004", "UNVERIFIED", Some(100), None, 300),
        ];
        for (id, state, changed, rejected, updated) in rows {
            sqlx::query(insert)
                .bind(id)
                .bind(state)
                .bind(changed)
                .bind(rejected)
                .bind(updated)
                .execute(db.store.pool())
                .await
                .unwrap();
        }
        let sql = match db.backend() {
            Backend::Postgres => include_str!("../../migrations/postgres/0004_rejection_first_seen.sql"),
            Backend::Sqlite => include_str!("../../migrations/sqlite/0004_rejection_first_seen.sql"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(db.store.pool()).await.unwrap();
        let got: Vec<Option<i64>> = sqlx::query("SELECT rejected_at FROM users ORDER BY user_id")
            .fetch_all(db.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("rejected_at"))
            .collect();
        assert_eq!(got, [Some(100), Some(300), Some(50), None]);
    });

    #[tokio::test]
    async fn unknown_scheme_is_a_clear_error() {
        let e = Store::connect("mysql://root:pw@localhost/x").await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("postgres://") && !msg.contains("pw@"), "{msg}");
    }

    #[test]
    fn millis_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(from_millis(to_millis(t)), t);
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn secrets_the_driver_would_ignore_are_dropped_before_it_logs_them() {
        let u = without_ignored_secrets("postgres://u@h/db?sslmode=require&sslpassword=hunter2&password=pw");
        assert_eq!(u, "postgres://u@h/db?sslmode=require&password=pw");
        let u = without_ignored_secrets("postgres://u@h/db?client_secret=x");
        assert_eq!(u, "postgres://u@h/db");
        let same = "postgres://u:p@h/db?sslmode=disable&application_name=a";
        assert_eq!(without_ignored_secrets(same), same);
    }

    #[tokio::test]
    async fn connect_errors_never_show_a_password() {
        for url in [
            "postgres://u:hunter2@db/x?sslmode=bogus",
            "postgres://u@db/x?password=hunter2&sslpassword=hunter2&sslmode=bogus",
            "postgres://u:hunter2@db:notaport/x",
            "mysql://u:hunter2@db/x?token=hunter2",
        ] {
            let e = Store::connect(url).await.unwrap_err();
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains("hunter2"), "{shown}");
            }
        }
    }
}
