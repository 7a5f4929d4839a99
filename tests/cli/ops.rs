//! The binary's telemetry: `reverify daemon` serves /healthz, /readyz and /metrics
//! on `metrics_listen` and stops on SIGTERM; `reverify run` pushes its metrics to
//! `metrics_push_url` (a real Pushgateway).

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
        .env("REVERIFY_WEBHOOK_KEY", "daemon-webhook-key-of-at-least-32-bytes")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited early");
        assert!(Instant::now() < deadline, "the daemon never answered /healthz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
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
