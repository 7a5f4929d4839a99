//! The binary's telemetry: `reverify daemon` serves /healthz, /readyz and /metrics
//! on `metrics_listen` (from before its migrations: /healthz answers while they
//! run, /readyz once they are done) and stops on SIGTERM; `reverify run` pushes its
//! metrics to `metrics_push_url` (a real Pushgateway).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use reverify::store::testing::TestDb;
use reverify::telemetry::testing::Pushgateway;

use crate::common::{Bin, campaign, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_probes_and_metrics_until_sigterm() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 3, None).await;
    // a campaign with no schedule: the daemon keeps it but never runs it
    let f = bin.write("ops.toml", &campaign("ops-daemon", "", 100, 2));
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = bin
        .command(&["daemon"])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("REVERIFY_WEBHOOK_KEY", "daemon-webhook-key")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    // /healthz answers from the start, /readyz once the schema is checked
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited early");
        assert!(Instant::now() < deadline, "the daemon never answered /readyz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"reverify_targets{campaign="ops-daemon",status="pending"} 0"#), "{metrics}");
    // the Baanx webhook receiver is mounted beside them: an unsigned event is refused
    let r = http.post(format!("{base}/webhooks/baanx")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(http.get(format!("{base}/healthz")).send().await.is_err(), "the port is closed after the exit");
}

/// The daemon binds `metrics_listen` before it migrates: while another session
/// holds the migrations table (as a concurrent migration would), /healthz answers
/// and /readyz and the webhook receiver say 503 `starting`; once the table is free
/// and the schema checked, /readyz is 200 and the receiver answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_answers_healthz_while_it_migrates_and_is_ready_after() {
    let db = TestDb::postgres().await;
    let bin = Bin::new(&db, 3, None).await;
    let mut blocker = db.pool().begin().await.unwrap();
    // the store's sessions end a transaction idle for 15 s; this one must last
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0").execute(&mut *blocker).await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = bin
        .command(&["daemon"])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("REVERIFY_WEBHOOK_KEY", "daemon-webhook-key")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited early");
        assert!(Instant::now() < deadline, "/healthz did not answer while the migrations waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the daemon is inside its migration, waiting on the table
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '_sqlx_migrations'::regclass",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon never reached its migration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "starting\n");
    let r = http.post(format!("{base}/webhooks/baanx")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 503, "the receiver waits for the schema");
    assert_eq!(http.get(format!("{base}/metrics")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);

    blocker.rollback().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited after its migration");
        assert!(Instant::now() < deadline, "/readyz never became ready after the migration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http.post(format!("{base}/webhooks/baanx")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401, "ready: an unsigned event is refused by the receiver itself");
    assert_eq!(http.get(format!("{base}/no-such-path")).send().await.unwrap().status(), 404);

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pushes_its_metrics_to_the_pushgateway() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 5, None).await;
    let pgw = Pushgateway::start().await;
    let o = bin.run(&["users", "import", bin.path("users.csv").to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = bin.write("push.toml", &campaign("ops-push", "", 1000, 4));
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let mut c = bin.command(&["run", "ops-push", "--progress", "none"]);
    c.env("REVERIFY_METRICS_PUSH_URL", &pgw.url);
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let sent = bin.outbox_count();
    assert!(sent > 0);

    let body = pgw.scrape().await;
    let instance = reverify::telemetry::push_instance();
    let grouping = format!(r#"instance="{instance}",job="reverify""#);
    for line in [
        format!(r#"reverify_sessions_issued_total{{campaign="ops-push",{grouping}}} {sent}"#),
        format!(r#"reverify_notifications_total{{campaign="ops-push",{grouping},outcome="sent",reason="ok"}} {sent}"#),
        format!(r#"reverify_targets{{campaign="ops-push",{grouping},status="notified"}} {sent}"#),
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
}
