//! Issue 16 through the real binary: `campaign test-send` (every step to one
//! address, a fake link, no Baanx call) and `users forget` (no trace of the person
//! in a dump of either database, the evidence kept).

use reverify::both_engines;
use reverify::store::testing::TestDb;
use sqlx::Row;

use reverify::notify::testing::{Fault, SmtpServer};

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
    assert_eq!(o.status.code(), Some(2), "there is no step 3 (a usage error): {}", text(&o));

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

/// Every text value of `tables`, one per line.
async fn texts_of(db: &TestDb, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let sql = match db.backend() {
            reverify::store::Backend::Postgres => format!("SELECT CAST(t.* AS TEXT) AS v FROM \"{t}\" t"),
            reverify::store::Backend::Sqlite => {
                let cols: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{t}')")))
                        .fetch_all(db.pool())
                        .await
                        .unwrap();
                let cols: Vec<String> = cols.iter().map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '')")).collect();
                format!("SELECT {} AS v FROM \"{t}\"", cols.join(" || ' ' || "))
            }
        };
        for r in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(db.pool()).await.unwrap() {
            out.push_str(&r.try_get::<String, _>("v").unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// The raw files the tables and their indexes live in, read from the data
/// directory (the tests run on the database's machine, as root): what `VACUUM`
/// leaves in a page is there even when no query returns it. SQLite: the file.
async fn heap_files(db: &TestDb) -> Vec<(String, Vec<u8>)> {
    match db.backend() {
        reverify::store::Backend::Sqlite => vec![("the database file".into(), raw_dump(db))],
        reverify::store::Backend::Postgres => {
            sqlx::query("CHECKPOINT").execute(db.pool()).await.unwrap();
            let data: String =
                sqlx::query_scalar("SELECT current_setting('data_directory')").fetch_one(db.pool()).await.unwrap();
            let files: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname || ' ' || pg_relation_filepath(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't') \
                 AND pg_relation_filepath(c.oid) IS NOT NULL",
            )
            .fetch_all(db.pool())
            .await
            .unwrap();
            assert!(!files.is_empty());
            let mut out = Vec::new();
            for line in files {
                let (name, f) = line.split_once(' ').unwrap();
                let mut bytes = Vec::new();
                // a relation over 1 GB continues in f.1, f.2, …
                for seg in std::iter::once(f.to_owned()).chain((1..).map(|i| format!("{f}.{i}"))) {
                    match std::fs::read(std::path::Path::new(&data).join(&seg)) {
                        Ok(b) => bytes.extend(b),
                        Err(_) => break,
                    }
                }
                out.push((format!("{name} ({f})"), bytes));
            }
            out
        }
    }
}

/// Every dashboard page a `viewer` reaches for this story: the campaigns, each
/// campaign's page (its audit trail), the user's page (their timeline). Logs in
/// over HTTP as the login form does.
async fn viewer_pages(bin: &Bin, user: &str) -> String {
    let hash = reverify::ui::auth::hash_password("viewer's long passphrase").unwrap();
    let users = bin.write("ui-users", &format!("vera:viewer:{hash}\n"));
    let mut c = bin.command(&["serve", "--listen", "127.0.0.1:0"]);
    c.env("REVERIFY_UI_LISTEN", "127.0.0.1:0")
        .env("REVERIFY_UI_USERS_FILE", &users)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let base = line.split("dashboard on ").nth(1).unwrap_or_else(|| panic!("{line}")).trim().trim_end_matches('/');
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")).map(|v| v.split(';').next().unwrap().to_owned()))
    };
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login = cookie(&form, "reverify_login").expect("a login cookie");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("user", "vera"), ("password", "viewer's long passphrase"), ("csrf", login.as_str())])
        .finish();
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", format!("reverify_login={login}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let session = cookie(&r, "reverify_session").unwrap_or_else(|| panic!("not logged in: {}", r.status()));
    let mut pages = String::new();
    for path in ["/".to_owned(), "/campaigns/erase".into(), "/campaigns/erase-smtp".into(), format!("/users?id={user}")]
    {
        let r = http.get(format!("{base}{path}")).header("cookie", format!("reverify_session={session}")).send().await;
        let r = r.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        pages.push_str(&r.text().await.unwrap());
    }
    // and another user's page, whose address is not forgotten
    let other = bin.sandbox.users().into_iter().find(|u| u.user_id.as_str() != user).unwrap();
    let r = http
        .get(format!("{base}/users?id={}", other.user_id))
        .header("cookie", format!("reverify_session={session}"))
        .send()
        .await
        .unwrap();
    pages.push_str(&r.text().await.unwrap());
    let _ = child.kill();
    let _ = child.wait();
    pages
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
    let theirs = |bin: &Bin| {
        bin.outbox_messages().into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().contains(&id)).count()
    };
    assert_eq!(theirs(&bin), 1, "their message is in the outbox");
    let others = bin.outbox_count() - 1;

    // a real SMTP server that quotes the recipient, as Postfix does: 550 for the
    // person, 450 (try later, so retried and logged) for everyone else
    let smtp = SmtpServer::start_with(&[Fault::reply(email, 550, None), Fault::reply("@", 450, None)]);
    let file = bin.write("s.toml", &campaign("erase-smtp", "[audience]\nstates = [\"UNVERIFIED\"]\n", 200, 4));
    assert!(bin.run(&["campaign", "apply", file.to_str().unwrap()]).await.status.success());
    let mut c = bin.command(&["run", "erase-smtp"]);
    c.env_remove("REVERIFY_OUTBOX_DIR").env("REVERIFY_SMTP_URL", smtp.url()).env("REVERIFY_LOG_LEVEL", "info");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    let logs = text(&o);
    assert!(logs.contains("<[address]>: Mailbox busy"), "the 450 was retried, and logged scrubbed: {logs}");
    let stored = every_text_value(&db).await;
    // the reproduction: the 450's text lands in run.failed and the run's error
    let runs = texts_of(&db, &["events", "campaign_runs"]).await;
    assert!(runs.contains("deliveries in a row failed (smtp"), "{runs}");
    assert!(runs.contains("<[address]>: Mailbox busy"), "the 450 was recorded, scrubbed: {runs}");
    assert!(logs.contains("<[address]>: Mailbox unavailable"), "the 550 was logged, scrubbed: {logs}");
    let _ = stored;
    // no address of anyone in an error text: not in the logs, not in an event nor a run
    let addresses = bin.sandbox.users().into_iter().map(|u| u.email.as_str().to_owned());
    let events_and_runs = texts_of(&db, &["events", "campaign_runs"]).await;
    for a in addresses.chain([email.to_owned()]) {
        assert!(!logs.contains(&a), "{a} in the logs: {logs}");
        assert!(!events_and_runs.contains(&a), "{a} in an event or a run");
    }

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
    let heap = heap_files(&db).await;
    for trace in [email, first, last, "quillon", "nl-BE", "Europe/Brussels"] {
        assert!(!contains(&dump, trace), "{trace:?} is still in the {:?} dump", db.backend());
        assert!(!values.contains(trace), "{trace:?} is still in a column");
        let found: Vec<&String> = heap.iter().filter(|(_, b)| contains(b, trace)).map(|(f, _)| f).collect();
        assert!(found.is_empty(), "{trace:?} is still in {found:?} ({:?})", db.backend());
    }
    // their messages left the outbox, the others' stayed
    assert_eq!(theirs(&bin), 0, "their message is still in the outbox");
    assert_eq!(bin.outbox_count(), others);
    for p in bin.outbox_messages() {
        assert!(!std::fs::read_to_string(p).unwrap().contains(email));
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 messages removed from the outbox"), "{}", text(&o));
    // a viewer of the dashboard sees no address whole, on any page
    // an actor named by an address: it shows in the audit trail, masked for a viewer
    let o = bin.run(&["--as", "carol.ops@example.org", "campaign", "pause", "erase"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let pages = viewer_pages(&bin, &id).await;
    assert!(pages.contains("c***@e***.org"), "the actor, masked in the audit trail");
    assert!(pages.contains("Audit trail") && pages.contains("Timeline"), "{pages}");
    let mut seen = Vec::new();
    reverify::domain::personal::map_addresses(&pages, |a| {
        seen.push(a.to_owned());
        String::new()
    });
    assert!(seen.is_empty(), "a viewer saw {seen:?}");
    assert!(pages.contains("***@"), "the user pages show the addresses masked");
    // the evidence stays: the row, the ledger, the audit trail (two more events: the
    // erasure, and the outbox's)
    assert_eq!(rows("SELECT COUNT(*) FROM users WHERE user_id = $1 AND forgotten_at IS NOT NULL").await, 1);
    assert_eq!(rows("SELECT COUNT(*) FROM verification_sessions WHERE user_id = $1").await, sessions);
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE user_id = $1").await, events + 2);
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE user_id = $1 AND kind = 'user.forgotten'").await, 1);
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE user_id = $1 AND kind = 'user.outbox_erased'").await, 1);
    let o = bin.run(&["users", "show", &id]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains(first));

    // an import cannot bring the person back, and a second forget changes nothing
    assert!(bin.run(&["users", "import", "person.csv"]).await.status.success());
    assert!(!contains(&raw_dump(&db), email), "a re-import restored the data");
    let o = bin.run(&["users", "forget", &id, "--yes"]).await;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("already forgotten"), "{}", text(&o));
});
