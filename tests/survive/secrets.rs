//! Secrets stay secret (design.md, invariants 2 and 4): after full runs with errors
//! (500s, 429s, timeouts, suspended and revoked users, a 550 from SMTP), no session
//! URL and no refresh token the sandbox issued appears in any column of any table,
//! in the raw database files, in the trace-level logs of the real binary, in the
//! metrics, or in a panic message. And a wrong token key gives a clear error.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reverify::domain::UserId;
use reverify::engine::{Progress, Worker};
use reverify::notify::testing::{Fault, SmtpServer};
use reverify::sandbox::Faults;
use reverify::store::Backend;
use reverify::store::testing::TestDb;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use crate::common::{Rig, campaign, dump, text};
use crate::summary::{Counts, report};

/// The raw bytes the database keeps: the SQLite files (with -wal and -shm), or a
/// `pg_dump` of the Postgres database.
fn raw_database(db: &TestDb) -> Vec<u8> {
    match db.backend() {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://").to_owned();
            let mut out = Vec::new();
            for suffix in ["", "-wal", "-shm", "-journal"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    out.extend_from_slice(&b);
                }
            }
            assert!(!out.is_empty(), "no SQLite file at {path}");
            out
        }
        Backend::Postgres => {
            let o = std::process::Command::new("pg_dump").arg("--no-owner").arg(&db.url).output().expect("pg_dump");
            assert!(o.status.success(), "pg_dump: {}", String::from_utf8_lossy(&o.stderr));
            o.stdout
        }
    }
}

/// Secrets are ASCII; a lossy view keeps every ASCII byte where it was, and std's
/// substring search is fast even in a debug build.
fn contains(hay: &str, needle: &str) -> bool {
    hay.contains(needle)
}

async fn secrets_stay_secret(db: TestDb) {
    let engine = db.backend().as_str();
    let faults = Faults {
        error_rate: 0.05,
        throttle_rate: 0.01,
        retry_after: Duration::from_secs(1),
        timeout_rate: 0.01,
        hang: Duration::from_secs(2),
        seed: 13,
        ..Faults::default()
    };
    let mut rig = Rig::new(db, 120, 51, faults).await;
    let mut tokens: Vec<String> = rig.sandbox.users().iter().filter_map(|u| u.refresh_token.clone()).collect();
    let users = rig.sandbox.users();
    for u in users.iter().skip(1).step_by(20) {
        rig.sandbox.suspend(&u.user_id).unwrap();
    }
    for u in users.iter().skip(2).step_by(20) {
        rig.sandbox.revoke(&u.user_id).unwrap();
    }
    let smtp = SmtpServer::start_with(&[Fault::reply("user1", 550, None)]);
    rig.smtp_url = Some(smtp.url());
    let initial = tokens.clone();

    // 0. a wrong key, before anything else has touched the users: a clear error, not garbage, and no token in it
    let other = reverify::crypto::TokenCipher::generate_key();
    let c3 = std::fs::write(rig.path("c3.toml"), campaign("wrong-key", 500, 4));
    c3.unwrap();
    assert!(rig.run(&["campaign", "apply", rig.path("c3.toml").to_str().unwrap()]).await.status.success());
    let mut cmd = rig.command(&["run", "wrong-key", "--progress", "none"]);
    cmd.env("REVERIFY_TOKEN_KEY", &other);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let wrong_key_exit = o.status.code();
    let all = text(&o);
    assert!(!all.contains("panicked"), "{all}");
    assert!(initial.iter().all(|t| !all.contains(t.as_str())), "{all}");
    assert_ne!(o.status.code(), Some(0), "a run with the wrong key must not succeed quietly: {all}");
    assert!(all.contains("token_key") || all.contains("key"), "the error does not name the key: {all}");
    let id = UserId::parse(users[5].user_id.as_str()).unwrap();
    let mut cmd = rig.command(&["users", "show", id.as_str()]);
    cmd.env("REVERIFY_TOKEN_KEY", &other);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let show = text(&o);
    assert!(!show.contains("panicked") && initial.iter().all(|t| !show.contains(t.as_str())), "{show}");

    // 1. the real binary, logging everything
    let file = rig.path("c.toml");
    std::fs::write(&file, campaign("secrets", 500, 16)).unwrap();
    assert!(rig.run(&["campaign", "apply", file.to_str().unwrap()]).await.status.success());
    let mut cmd = rig.command(&["run", "secrets", "--progress", "log"]);
    cmd.env("REVERIFY_LOG_LEVEL", "trace").env("REVERIFY_HTTP_REQUEST_TIMEOUT_MS", "500");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
    let mut logs = out.stdout.clone();
    logs.extend_from_slice(&out.stderr);

    // 2. an in-process run, so that this process's metrics hold a real run
    let c2 = rig.apply(&campaign("secrets-metrics", 500, 16)).await;
    let mut settings = rig.settings();
    settings.http_request_timeout_ms = 500;
    let worker = Worker::from_settings(&settings, rig.db.store.clone()).unwrap();
    worker.run_campaign(&c2, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    let metrics =
        format!("{}\n{}", reverify::telemetry::global().encode(), reverify::telemetry::global().encode_prometheus());

    // what there is to leak
    let mails = smtp.messages();
    let mut urls: Vec<String> = rig.sandbox.session_urls();
    for m in &mails {
        let body = format!("{}{}", m.text.clone().unwrap_or_default(), m.html_unescaped().unwrap_or_default());
        for word in body.split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>') {
            if word.contains("/session/") {
                urls.push(word.to_owned());
            }
        }
    }
    urls.sort();
    urls.dedup();
    tokens.extend(rig.sandbox.users().into_iter().filter_map(|u| u.refresh_token));
    let rotated = rig.sandbox.spent_tokens();
    // each user is refreshed once (the second run takes the stored access tokens):
    // enough rotated refresh tokens, and access tokens, which are stored too, sealed
    let (rts, ats) = (
        rotated.iter().filter(|t| t.starts_with("rt_")).count(),
        rotated.iter().filter(|t| t.starts_with("at_")).count(),
    );
    assert!(rts >= 50 && ats >= 50, "few rotations: {rts} refresh and {ats} access tokens");
    tokens.extend(rotated);
    tokens.sort();
    tokens.dedup();
    // the session id alone is the credential: look for it, not only the whole URL
    let ids: Vec<String> = urls.iter().map(|u| u.rsplit('/').next().unwrap().to_owned()).collect();
    assert!(ids.len() > 50, "too few sessions to prove anything: {}", ids.len());
    assert!(ids.iter().all(|i| i.len() >= 16), "{ids:?}");
    assert!(!mails.is_empty() && mails.iter().any(|m| ids.iter().any(|i| m.raw.contains(i.as_str()))), "control");

    let rows = dump(&rig.db).await.into_bytes();
    let raw = raw_database(&rig.db);
    let mut leaks = Vec::new();
    for (place, hay) in
        [("rows", &rows), ("raw database", &raw), ("logs", &logs), ("metrics", &metrics.clone().into_bytes())]
    {
        let hay = String::from_utf8_lossy(hay);
        for s in ids.iter().chain(tokens.iter()) {
            if contains(&hay, s) {
                leaks.push(format!("{place}: {s}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
    let log_text = String::from_utf8_lossy(&logs);
    assert!(!log_text.contains("panicked"), "{log_text}");
    assert!(logs.len() > 10_000 && log_text.contains("TRACE"), "trace logs were not captured: {} bytes", logs.len());

    // refresh tokens are sealed at rest, each under the key id
    let sealed =
        sqlx::query("SELECT COUNT(*) AS n FROM users WHERE refresh_token_enc IS NOT NULL AND token_key_id IS NOT NULL")
            .fetch_one(rig.db.pool())
            .await
            .unwrap()
            .try_get::<i64, _>("n")
            .unwrap();
    assert!(sealed >= 100, "{sealed}");

    let first_error = all.lines().find(|l| l.contains("error")).unwrap_or("").chars().take(160).collect::<String>();
    report(
        format!(
            "secrets: engine={engine} session_urls={} tokens={} (refresh: initial, rotated away, current; access) log_bytes={} db_bytes={} metrics_bytes={} leaks={} \
             wrong_key_exit={:?} wrong_key_error={first_error:?}",
            ids.len(),
            tokens.len(),
            logs.len(),
            rows.len() + raw.len(),
            metrics.len(),
            leaks.len(),
            wrong_key_exit,
        ),
        Counts { violations: leaks.len() as u64, ..Counts::default() },
    );
}

reverify::both_engines!(secrets_stay_secret, secrets_stay_secret);
