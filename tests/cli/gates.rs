//! Issue 16 through the real binary: `campaign test-send` (every step to one
//! address, a fake link, no Baanx call) and `users forget` (no trace of the person
//! in a dump of either database, the evidence kept).

use reverify::both_engines;
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Bin, campaign, text};

const FAKE_LINK: &str = "https://test-send.invalid/this-is-a-test-message-not-a-verification-link";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_send_sends_every_step_with_a_fake_link_and_no_baanx_call() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 5, None).await;
    assert!(bin.run(&["users", "import", "users.csv"]).await.status.success());
    let file = bin.write("c.toml", &campaign("trial", "[reminders]\nafter = \"72h\"\nmax = 2\n", 50, 2));
    let o = bin.run(&["campaign", "apply", file.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", text(&o));

    let o = bin.run(&["campaign", "test-send", "trial", "--to", "ops@example.org"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let mut steps = Vec::new();
    for path in bin.outbox_messages() {
        let m = std::fs::read_to_string(path).unwrap();
        let to = m.lines().find_map(|l| l.strip_prefix("To: ")).expect("a To: header");
        assert!(to.ends_with("<ops@example.org>") || to == "ops@example.org", "{m}");
        assert!(m.contains(FAKE_LINK), "the fake link: {m}");
        assert!(!m.contains("/session/"), "no real session link: {m}");
        steps.push(m.lines().find_map(|l| l.strip_prefix("X-Reverify-Step: ")).unwrap().trim().to_owned());
    }
    steps.sort();
    assert_eq!(steps, ["0", "1", "2"], "the first message and both reminders");

    // one step, with a real user's data
    let user = bin.sandbox.users().into_iter().next().unwrap();
    let id = user.user_id.to_string();
    let o = bin.run(&["campaign", "test-send", "trial", "--to", "ops@example.org", "--user", &id, "--step", "1"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(bin.outbox_count(), 4);
    let o = bin.run(&["campaign", "test-send", "trial", "--to", "ops@example.org", "--step", "3"]).await;
    assert_eq!(o.status.code(), Some(1), "there is no step 3: {}", text(&o));

    let stats = bin.sandbox.stats().await;
    assert_eq!(stats.requests.values().sum::<u64>(), 0, "no Baanx call: {:?}", stats.requests);
    assert_eq!(stats.sessions_issued, 0);
    let o = bin.run(&["campaign", "status", "trial", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["sessions_issued"], 0, "{status}");

    // audited, without the address
    let o = bin.run(&["campaign", "audit", "trial", "--json"]).await;
    let audit = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(audit.matches("campaign.test_sent").count(), 2, "one per test-send that sent: {audit}");
    assert!(!audit.contains("ops@example.org"), "{audit}");
}

/// The first column of every row `q` returns, as text.
async fn names(pool: &sqlx::AnyPool, q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>) -> Vec<String> {
    q.fetch_all(pool).await.unwrap().iter().map(|r| r.try_get::<String, _>(0).unwrap()).collect()
}

/// Every text value of every table, via SQL: what a reader of the database sees.
async fn every_text_value(db: &TestDb) -> String {
    let pool = db.pool();
    let mut out = String::new();
    let tables = names(
        pool,
        match db.backend() {
            reverify::store::Backend::Postgres => sqlx::query(
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = 'public'",
            ),
            reverify::store::Backend::Sqlite => sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'"),
        },
    )
    .await;
    assert!(tables.iter().any(|t| t == "users"), "{tables:?}");
    for t in tables {
        // every column as text: a row's whole content, whatever the column types
        let cols = names(pool, match db.backend() {
            reverify::store::Backend::Postgres => sqlx::query(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            )
            .bind(t.clone()),
            reverify::store::Backend::Sqlite => {
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{t}')")))
            }
        })
        .await;
        for c in cols {
            // (a SQLite blob as hex: as text it need not be UTF-8)
            let sql = match db.backend() {
                reverify::store::Backend::Postgres => format!("SELECT CAST(\"{c}\" AS TEXT) AS v FROM \"{t}\""),
                reverify::store::Backend::Sqlite => format!(
                    "SELECT CASE WHEN typeof(\"{c}\") = 'blob' THEN hex(\"{c}\") ELSE CAST(\"{c}\" AS TEXT) END AS v \
                     FROM \"{t}\""
                ),
            };
            for r in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap() {
                if let Ok(Some(v)) = r.try_get::<Option<String>, _>("v") {
                    out.push_str(&v);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// The whole stored form: pg_dump's output for Postgres, the file's bytes (and its
/// WAL's) for SQLite.
fn raw_dump(db: &TestDb) -> Vec<u8> {
    match db.backend() {
        reverify::store::Backend::Postgres => {
            let o =
                std::process::Command::new("pg_dump").arg("--no-owner").arg(&db.url).output().expect("pg_dump runs");
            assert!(o.status.success(), "pg_dump: {}", String::from_utf8_lossy(&o.stderr));
            o.stdout
        }
        reverify::store::Backend::Sqlite => {
            let path = db.url.strip_prefix("sqlite://").unwrap().split('?').next().unwrap().to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            for extra in ["-wal", "-journal"] {
                if let Ok(more) = std::fs::read(format!("{path}{extra}")) {
                    bytes.extend(more);
                }
            }
            bytes
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

both_engines!(users_forget_leaves_no_trace_and_keeps_the_evidence, |db: TestDb| async move {
    let bin = Bin::new(&db, 12, None).await;
    assert!(bin.run(&["users", "import", "users.csv"]).await.status.success());
    let user = bin
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.verification_state == reverify::domain::VerificationState::Unverified && u.refresh_token.is_some())
        .expect("an UNVERIFIED user");
    let id = user.user_id.to_string();
    // distinctive personal data, so that any trace of it is found
    let (email, first, last) = ("quillon.fernsby.7f3a@example.test", "Quillonia", "Fernsbyworth");
    bin.write(
        "person.csv",
        &format!(
            "user_id,email,region,verification_state,first_name,last_name,locale,timezone\n\
             {id},{email},{},UNVERIFIED,{first},{last},nl-BE,Europe/Brussels\n",
            user.region.as_str()
        ),
    );
    let o = bin.run(&["users", "import", "person.csv"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let file = bin.write("c.toml", &campaign("erase", "[audience]\nstates = [\"UNVERIFIED\"]\n", 200, 4));
    assert!(bin.run(&["campaign", "apply", file.to_str().unwrap()]).await.status.success());
    let o = bin.run(&["run", "erase"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(contains(&raw_dump(&db), email), "the data is there before");

    let pool = db.pool();
    let rows = |sql: &'static str| {
        let id = id.clone();
        async move { sqlx::query(sql).bind(id).fetch_one(pool).await.unwrap().try_get::<i64, _>(0).unwrap() }
    };
    let sessions = rows("SELECT COUNT(*) FROM verification_sessions WHERE user_id = $1").await;
    let events = rows("SELECT COUNT(*) FROM events WHERE user_id = $1").await;
    assert!(sessions >= 1 && events >= 1, "{sessions} sessions, {events} events");

    // not without a confirmation
    let o = bin.run(&["users", "forget", &id]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"), "{}", text(&o));
    assert!(contains(&raw_dump(&db), email), "nothing changed");

    let o = bin.run(&["users", "forget", &id, "--yes"]).await;
    assert!(o.status.success(), "{}", text(&o));

    let dump = raw_dump(&db);
    let values = every_text_value(&db).await;
    for trace in [email, first, last, "quillon", "nl-BE", "Europe/Brussels"] {
        assert!(!contains(&dump, trace), "{trace:?} is still in the {:?} dump", db.backend());
        assert!(!values.contains(trace), "{trace:?} is still in a column");
    }
    // the evidence stays: the row, the ledger, the audit trail (one more event)
    assert_eq!(rows("SELECT COUNT(*) FROM users WHERE user_id = $1 AND forgotten_at IS NOT NULL").await, 1);
    assert_eq!(rows("SELECT COUNT(*) FROM verification_sessions WHERE user_id = $1").await, sessions);
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE user_id = $1").await, events + 1);
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE user_id = $1 AND kind = 'user.forgotten'").await, 1);
    let o = bin.run(&["users", "show", &id]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains(first));

    // an import cannot bring the person back, and a second forget changes nothing
    assert!(bin.run(&["users", "import", "person.csv"]).await.status.success());
    assert!(!contains(&raw_dump(&db), email), "a re-import restored the data");
    let o = bin.run(&["users", "forget", &id, "--yes"]).await;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("already forgotten"), "{}", text(&o));
});
