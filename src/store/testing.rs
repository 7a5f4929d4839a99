//! Fresh databases for tests: a new SQLite file, or a new Postgres database created
//! on the server at `REVERIFY_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the guard drops.
//! A test that cannot reach Postgres fails: Postgres tests are never skipped.

use super::{Backend, Store};

/// A database that exists for one test.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    backend: Backend,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The server test databases are created on.
pub fn postgres_admin_url() -> String {
    std::env::var("REVERIFY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(admin: &str, db: &str) -> String {
    let mut u = url::Url::parse(admin).expect("REVERIFY_TEST_POSTGRES_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

impl TestDb {
    /// A migrated database on `backend`.
    ///
    /// # Panics
    /// When the database cannot be created: a test must not silently skip.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A migrated SQLite file in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::open(&url).await.expect("open sqlite");
        Self { store, url, backend: Backend::Sqlite, pg_name: None, _dir: Some(dir) }
    }

    /// A migrated, newly created Postgres database.
    pub async fn postgres() -> Self {
        let admin_url = postgres_admin_url();
        let name = format!("reverify_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Store::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("Postgres tests need a server at {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin.pool())
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let store = Store::open(&url).await.expect("open postgres test database");
        Self { store, url, backend: Backend::Postgres, pg_name: Some(name), _dir: None }
    }

    /// An existing Postgres database (a private cluster a test started), migrated;
    /// not dropped with the guard.
    pub async fn postgres_at(url: &str) -> Self {
        let store = Store::open(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
        Self { store, url: url.to_owned(), backend: Backend::Postgres, pg_name: None, _dir: None }
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests that check the rows themselves (invariants, dumps).
    pub fn pool(&self) -> &sqlx::AnyPool {
        self.store.pool()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        let store = self.store.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                store.close().await;
                if let Ok(admin) = Store::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(admin.pool())
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs an async test body once on SQLite and once on Postgres:
/// `both_engines!(name, |db: TestDb| async move { ... });` defines `name::sqlite`
/// and `name::postgres`.
#[macro_export]
macro_rules! both_engines {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::store::testing::TestDb::sqlite().await;
                ($body)(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = $crate::store::testing::TestDb::postgres().await;
                ($body)(db).await;
            }
        }
    };
}

/// A test that needs what only Postgres has (a second server process, row locks
/// held across processes): `postgres_only!(name, |db: TestDb| async move { ... });`
/// defines `name::postgres`, so `.ci/run` sees a skipped one as it sees any other.
#[macro_export]
macro_rules! postgres_only {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = $crate::store::testing::TestDb::postgres().await;
                ($body)(db).await;
            }
        }
    };
}
