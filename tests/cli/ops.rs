//! The binary's telemetry: `reverify daemon` serves /healthz, /readyz and /metrics
//! on `metrics_listen` (from before its migrations: /healthz answers while they
//! run, /readyz once they are done) and stops on SIGTERM; the public webhook
//! listener (`serve`, `daemon --webhook-listen`) serves only the webhook and
//! /healthz, and a flood of unsigned posts is counted, not logged; `reverify run`
//! pushes its metrics to `metrics_push_url` (a real Pushgateway) on every
//! invocation; logs are plain lines a tool can read, and a closed or broken
//! standard error changes no exit code.

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reverify::store::testing::TestDb;
use reverify::telemetry::testing::Pushgateway;

use crate::common::{Bin, campaign, text};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `base`/healthz answers 200, while `child` lives.
async fn wait_healthy(http: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the process exited early");
        assert!(Instant::now() < deadline, "{base}/healthz never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then the exit status.
async fn terminate(child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap()
}

/// The value of the sample line that starts with `series ` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_probes_and_metrics_until_sigterm() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 3, None).await;
    // a campaign with no schedule: the daemon keeps it but never runs it
    let f = bin.write("ops.toml", &campaign("ops-daemon", "", 100, 2));
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let hook_port = free_port();
    let hooks = format!("http://127.0.0.1:{hook_port}");
    let mut child = bin
        .command(&["daemon", "--webhook-listen", &format!("127.0.0.1:{hook_port}")])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("REVERIFY_WEBHOOK_KEY", "daemon-webhook-key-of-at-least-32-bytes")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    // the Baanx webhook receiver is on its own listener: an unsigned event is refused
    // there, and the operations listener does not take webhooks
    wait_healthy(&http, &hooks, &mut child).await;
    let r = http.post(format!("{hooks}/webhooks/baanx")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(format!("{base}/webhooks/baanx")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    for path in ["/metrics", "/readyz"] {
        assert_eq!(http.get(format!("{hooks}{path}")).send().await.unwrap().status(), 404, "{path}");
    }

    assert_eq!(terminate(child).await.code(), Some(0));
    assert!(http.get(format!("{base}/healthz")).send().await.is_err(), "the port is closed after the exit");
    assert!(http.get(format!("{hooks}/healthz")).send().await.is_err(), "the port is closed after the exit");
}

/// Issue 25 item 5: the liveness probe (`/healthz` on metrics_listen) fails when
/// the scheduler loop completes no pass within twice its longest sleep plus a
/// margin (70 s at `--poll 1s`: the longest sleep is the 20 s backoff), while
/// `/readyz` (the database) stays 200; it passes again once the loop runs. The loop
/// is frozen, not the process, through the testing build's freeze file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_when_the_scheduler_loop_is_frozen() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 3, None).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let freeze = bin.path("freeze");
    let mut child = bin
        .command(&["daemon", "--poll", "1s"])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("REVERIFY_TESTING_FREEZE_FILE", &freeze)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, &mut child).await;
    let last_pass = || async {
        let m = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        sample(&m, "reverify_scheduler_last_pass_timestamp_seconds").unwrap_or(0.0)
    };
    // passes complete: the gauge moves
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_pass().await == 0.0 {
        assert!(Instant::now() < deadline, "no pass was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = last_pass().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(last_pass().await > first, "a pass a second moves the gauge");

    std::fs::write(&freeze, "").unwrap();
    let frozen_at = Instant::now();
    let deadline = frozen_at + Duration::from_secs(110);
    loop {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.text().await.unwrap(), "scheduler loop stale\n");
            break;
        }
        assert!(Instant::now() < deadline, "/healthz never failed with the loop frozen");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited = frozen_at.elapsed();
    assert!(waited >= Duration::from_secs(65), "failed too early, after {waited:?}: the window is 70 s");
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200, "the database still answers");
    assert!(child.try_wait().unwrap().is_none(), "the process is alive, only its loop is not");

    std::fs::remove_file(&freeze).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if http.get(format!("{base}/healthz")).send().await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz did not recover once the loop ran again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(terminate(child).await.code(), Some(0));
}

/// Item 5: `reverify serve`'s public listener answers the webhook and /healthz and
/// 404 to /metrics and /readyz, which are on metrics_listen; 1,000 unsigned posts
/// are 1,000 in `reverify_webhook_rejected_total` and at most two log lines, and
/// the log (standard error, not a terminal) has no colour escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_metrics_off_the_public_listener_and_a_flood_out_of_the_log() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 1, None).await;
    let (public, ops) = (free_port(), free_port());
    let (hooks, base) = (format!("http://127.0.0.1:{public}"), format!("http://127.0.0.1:{ops}"));
    let log_path = bin.path("serve.log");
    let mut child = bin
        .command(&["serve", "--listen", &format!("127.0.0.1:{public}")])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{ops}"))
        .env("REVERIFY_WEBHOOK_KEY", "serve-webhook-key-of-at-least-32-bytes!")
        .env("REVERIFY_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &hooks, &mut child).await;
    wait_healthy(&http, &base, &mut child).await;
    for path in ["/metrics", "/readyz"] {
        assert_eq!(http.get(format!("{hooks}{path}")).send().await.unwrap().status(), 404, "public {path}");
        assert_eq!(http.get(format!("{base}{path}")).send().await.unwrap().status(), 200, "ops {path}");
    }
    assert_eq!(http.post(format!("{base}/webhooks/baanx")).body("{}").send().await.unwrap().status(), 404);

    for i in 0..1000 {
        let r = http.post(format!("{hooks}/webhooks/baanx")).body(format!("{{\"n\":{i}}}")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let bad = http
        .post(format!("{hooks}/webhooks/baanx"))
        .header("X-Timestamp", "1")
        .header("X-Signature", "00ff")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(sample(&metrics, r#"reverify_webhook_rejected_total{reason="unsigned"}"#), Some(1000.0), "{metrics}");
    assert_eq!(sample(&metrics, r#"reverify_webhook_rejected_total{reason="bad_signature"}"#), Some(1.0), "{metrics}");

    // an event written while serve runs (as an accepted webhook or a click writes
    // one) is in the audit chain once serve has stopped
    let event = reverify::store::events::NewEvent {
        actor: "webhook",
        kind: "user.verification_changed",
        campaign_id: None,
        user_id: None,
        detail: None,
    };
    let id = db.store.event_append(&event, chrono::Utc::now()).await.unwrap();
    assert_eq!(terminate(child).await.code(), Some(0));
    let sealed: Option<i64> = sqlx::query_scalar("SELECT chain_seq FROM events WHERE event_id = $1")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(sealed.is_some(), "serve stopped without sealing the events written while it ran");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let about = log.lines().filter(|l| l.contains("webhook refused")).count();
    assert!((1..=2).contains(&about), "{about} lines about refused webhooks:\n{log}");
    assert!(log.contains("webhook receiver listening"), "{log}");
    assert!(!log.contains('\x1b'), "colour escapes in a log that is not a terminal:\n{log:?}");
}

/// The daemon binds `metrics_listen` before it migrates: while another session
/// holds the migrations table (as a concurrent migration would), /healthz answers
/// and /readyz (and any other path) says 503 `starting`; once the table is free and
/// the schema checked, /readyz is 200, and the webhook receiver is not on this
/// listener (it has its own, `--webhook-listen`).
async fn the_daemon_answers_healthz_while_it_migrates_and_is_ready_after(db: TestDb) {
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
    assert_eq!(r.status(), 503, "everything but /healthz and /metrics waits for the schema");
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
    assert_eq!(r.status(), 404, "the webhook receiver is never on the operations listener");
    assert_eq!(http.get(format!("{base}/no-such-path")).send().await.unwrap().status(), 404);

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
reverify::postgres_only!(
    the_daemon_answers_healthz_while_it_migrates_and_is_ready_after,
    the_daemon_answers_healthz_while_it_migrates_and_is_ready_after
);

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
        format!(r#"reverify_runs_total{{campaign="ops-push",{grouping},outcome="finished"}} 1"#),
        format!(r#"reverify_run_duration_seconds_count{{campaign="ops-push",{grouping}}} 1"#),
        format!(r#"reverify_baanx_requests_total{{code="200",endpoint="verification",{grouping}}} {sent}"#),
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    let success =
        sample(&body, &format!(r#"reverify_last_success_timestamp_seconds{{campaign="ops-push",{grouping}}}"#))
            .unwrap_or_else(|| panic!("no last success in\n{body}"));
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(success > now - 120.0 && success <= now + 1.0, "last success {success}, now {now}");
    assert!(
        body.lines().any(|l| l.starts_with("reverify_build_info{") && l.contains(&grouping) && l.ends_with(" 1")),
        "{body}"
    );
}

/// Item 7: every `reverify run` pushes, even one that found nothing due (with the
/// last success read from the database) and one that failed (outcome failed),
/// before any campaign started or in a campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_pushes_even_with_nothing_due_or_failing() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 3, None).await;
    let pgw = Pushgateway::start().await;
    let instance = reverify::telemetry::push_instance();
    let grouping = format!(r#"instance="{instance}",job="reverify""#);
    let o = bin.run(&["users", "import", bin.path("users.csv").to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = bin.write("due.toml", &campaign("ops-due", "", 1000, 4));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));
    // a run by hand, not pushed: its success is in the database only
    let o = bin.run(&["run", "ops-due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!pgw.scrape().await.contains("job=\"reverify\""), "pushed without metrics_push_url");

    let run = |args: &[&str]| {
        let mut c = bin.command(args);
        c.env("REVERIFY_METRICS_PUSH_URL", &pgw.url);
        async move { tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap() }
    };
    // nothing is due (the campaign has no schedule): still a push, with the last success
    let o = run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no campaign is due"), "{}", text(&o));
    let body = pgw.scrape().await;
    assert!(body.lines().any(|l| l.starts_with("push_time_seconds{") && l.contains(&grouping)), "{body}");
    assert!(
        sample(&body, &format!(r#"reverify_last_success_timestamp_seconds{{campaign="ops-due",{grouping}}}"#))
            .is_some(),
        "{body}"
    );
    assert!(
        body.lines().filter(|l| l.starts_with("reverify_runs_total{")).all(|l| l.ends_with(" 0")),
        "nothing ran:\n{body}"
    );

    // a run that fails before any campaign starts: one failed run, pushed
    let o = run(&["run", "no-such-campaign", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let body = pgw.scrape().await;
    let failed = format!(r#"reverify_runs_total{{campaign="",{grouping},outcome="failed"}}"#);
    assert_eq!(sample(&body, &failed), Some(1.0), "{body}");

    // a campaign whose run fails (its templates are gone since it was applied): one
    // failed run, pushed
    let f = bin.write("broken.toml", &campaign("ops-broken", "", 1000, 4));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));
    let empty = bin.path("no-templates");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = bin.command(&["run", "ops-broken", "--progress", "none"]);
    c.env("REVERIFY_METRICS_PUSH_URL", &pgw.url).env("REVERIFY_TEMPLATES_DIR", &empty);
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let body = pgw.scrape().await;
    let broken = format!(r#"reverify_runs_total{{campaign="ops-broken",{grouping},outcome="failed"}}"#);
    assert_eq!(sample(&body, &broken), Some(1.0), "{body}");
    let took = format!(r#"reverify_run_duration_seconds_count{{campaign="ops-broken",{grouping}}}"#);
    assert_eq!(sample(&body, &took), Some(1.0), "{body}");
    assert!(
        sample(&body, &format!(r#"reverify_last_success_timestamp_seconds{{campaign="ops-broken",{grouping}}}"#))
            .is_none(),
        "{body}"
    );
    // the campaign's own group keeps its failed run...
    let last_failed =
        r#"reverify_last_run_timestamp_seconds{campaign="ops-broken",instance="",job="reverify",outcome="failed"}"#;
    assert!(sample(&body, last_failed).is_some(), "{body}");
    // ...when a later run --due with nothing due replaces the process's group
    let o = run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let body = pgw.scrape().await;
    assert_eq!(sample(&body, &broken), Some(0.0), "the process's group is this run's: {body}");
    assert!(sample(&body, last_failed).is_some(), "an empty run erased the failed run: {body}");
}

/// Item 6: the summary line counts the users deferred at targeting (REJECTED inside
/// the 24 h cooldown), and the run's log lines carry no colour escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_users_deferred_at_targeting() {
    let db = TestDb::sqlite().await;
    use reverify::domain::VerificationState;
    let bin = Bin::new(&db, 30, None).await;
    // five users the sandbox has UNVERIFIED; two of them imported as REJECTED an
    // hour ago, so that targeting defers them (the API is never asked about them)
    let mut users: Vec<_> =
        bin.sandbox.users().into_iter().filter(|u| u.verification_state == VerificationState::Unverified).collect();
    assert!(users.len() >= 5, "{} UNVERIFIED users", users.len());
    users.truncate(5);
    for u in users.iter_mut().take(2) {
        u.verification_state = VerificationState::Rejected;
        u.rejected_at = Some(chrono::Utc::now() - chrono::Duration::hours(1));
    }
    reverify::sandbox::userfile::write_users(&bin.path("users.csv"), &users).unwrap();
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = bin.write("c.toml", &campaign("ops-deferred", "", 1000, 4));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));
    let mut c = bin.command(&["run", "ops-deferred", "--progress", "log"]);
    c.env("REVERIFY_LOG_LEVEL", "info");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("5 newly targeted, 3 notified, 0 skipped, 2 deferred, 0 failed"), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("targeting done"), "{err}");
    assert!(!err.contains('\x1b'), "colour escapes in a piped log:\n{err:?}");
}

/// Item 6: a standard error that is closed (`2>&-`) or whose reader is gone (a
/// broken pipe) changes no exit code: 0 for a run that worked, 1 (not a panic's
/// 101) for one that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_broken_stderr_changes_no_exit_code() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 4, None).await;
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = bin.write("c.toml", &campaign("ops-stderr", "", 1000, 4));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));

    for (args, code) in [
        (&["run", "ops-stderr", "--progress", "log"][..], 0),
        (&["run", "no-such-campaign"][..], 1),
        (&["campaign", "show", "no-such-campaign"][..], 1),
    ] {
        // a pipe whose read end is closed before the process starts: every write
        // to standard error fails with EPIPE
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut c = bin.command(args);
        c.env("REVERIFY_LOG_LEVEL", "debug").stdout(Stdio::piped()).stderr(writer);
        let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?} with a broken stderr: {}", text(&o));

        // standard error closed
        let c = bin.command(&[]);
        let program = c.get_program().to_owned();
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c").arg("exec \"$0\" \"$@\" 2>&-").arg(program).args(args);
        sh.env_clear().envs(c.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))));
        sh.env("REVERIFY_LOG_LEVEL", "debug").current_dir(bin.dir.path());
        let o = tokio::task::spawn_blocking(move || sh.output().unwrap()).await.unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?} with stderr closed: {}", text(&o));
    }
}

/// Item 6: Postgres notices ("relation _sqlx_migrations already exists, skipping")
/// are not logged at info, end to end. Two things keep them out today: the
/// `sqlx::postgres::notice=warn` directive (its unit test is
/// `telemetry::tests::postgres_notices_are_not_logged_at_info`) and the sessions'
/// `client_min_messages = warning`; this guards the pair.
async fn postgres_notices_stay_out_of_an_info_log(db: TestDb) {
    let bin = Bin::new(&db, 1, None).await;
    for _ in 0..2 {
        let mut c = bin.command(&["migrate"]);
        c.env("REVERIFY_LOG_LEVEL", "info");
        let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("already exists") && !err.contains("notice"), "{err}");
    }
}
reverify::postgres_only!(postgres_notices_stay_out_of_an_info_log, postgres_notices_stay_out_of_an_info_log);

/// A password or token in a URL setting never reaches the terminal or the logs:
/// not in a connection error, not in the driver's warning about a parameter it
/// ignores, not in the message about a bad value.
#[test]
fn credentials_in_urls_are_masked_in_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("REVERIFY_DATABASE_URL", "postgres://u:hunter2@db:notaport/x?sslpassword=hunter3", &["migrate"]),
        (
            "REVERIFY_DATABASE_URL",
            "postgres://u:hunter2@127.0.0.1:5432/x?password=hunter3&sslpassword=hunter4&sslmode=bogus",
            &["migrate"],
        ),
        ("REVERIFY_SMTP_URL", "https://mailer:hunter2@smtp.example.com/?token=hunter3", &["campaign", "list"]),
        ("REVERIFY_METRICS_PUSH_URL", "http://u:hunter2@pgw:notaport/?secret=hunter3", &["campaign", "list"]),
        (
            "REVERIFY_BAANX_BASE_URL",
            "http://partner:hunter2@api.baanx.com/?client_secret=hunter3",
            &["campaign", "list"],
        ),
    ];
    for (var, value, args) in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_reverify"))
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("REVERIFY_DATABASE_URL", format!("sqlite://{}", dir.path().join("r.db").display()))
            .env("REVERIFY_LOG_LEVEL", "trace")
            .env(var, value)
            .output()
            .unwrap();
        let all = text(&o);
        assert_eq!(o.status.code(), Some(1), "{var}={value}: {all}");
        assert!(all.contains("***"), "{var}: the URL is not shown at all: {all}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!all.contains(secret), "{var}={value}: {secret} is shown: {all}");
        }
    }
}

/// Issue 16: the daemon skips a due campaign that is not approved, counts it once
/// per tick in `reverify_campaign_unapproved_skips_total`, sends nothing, and runs
/// it once it is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_skips_an_unapproved_campaign_and_counts_it() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 3, None).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    let f = bin.write("d.toml", &campaign("ops-4e", "schedule = \"0 0 * * *\"\nstarting_deadline = \"25h\"", 1000, 2));
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap(), "--as", "alice"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    sqlx::query("UPDATE campaigns SET created_at = created_at - 172800000").execute(db.pool()).await.unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = bin
        .command(&["daemon"])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("REVERIFY_REQUIRE_APPROVAL", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, &mut child).await;
    let series = r#"reverify_campaign_unapproved_skips_total{campaign="ops-4e"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        if sample(&metrics, series) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bin.outbox_count(), 0, "an unapproved campaign sent something");

    // approved by another person: the daemon's next pass (at most a minute) runs it
    let o = bin.run(&["campaign", "approve", "ops-4e", "--as", "bob"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(90);
    while bin.outbox_count() == 0 {
        assert!(Instant::now() < deadline, "the approved campaign never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(sample(&metrics, series), Some(1.0), "counted once for the tick, not once a pass");
    assert_eq!(terminate(child).await.code(), Some(0));
}
