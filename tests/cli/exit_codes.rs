use std::time::Duration;

use reverify::both_engines;
use reverify::store::testing::TestDb;

use crate::common::{Bin, campaign, text};

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let bin = env!("CARGO_BIN_EXE_reverify");
    let o = std::process::Command::new(bin).arg("frobnicate").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = std::process::Command::new(bin).args(["run", "--help"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--max-duration") && help.contains("--due") && help.contains("4 when"), "{help}");
}

#[tokio::test]
async fn a_bad_campaign_file_exits_1_naming_file_line_and_column() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 1, None).await;
    let f = bin.write("bad.toml", &campaign("x", "", 10, 2).replace("concurrency", "concurency"));
    let o = bin.run(&["campaign", "validate", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml:") && err.contains("concurency"), "{err}");
    // apply refuses it too, and records nothing
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(1));
    let o = bin.run(&["campaign", "list", "--json"]).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "", "no campaign, no line: {}", text(&o));
}

both_engines!(interrupted_runs_exit_4_and_the_next_run_resumes_without_duplicates, |db: TestDb| async move {
    let bin = Bin::new(&db, 80, Some(Duration::from_millis(150))).await;
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = bin.write("c.toml", &campaign("slow", "", 100, 2));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));

    let o = bin.run(&["run", "slow", "--max-duration", "1s", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let first = bin.outbox_count();
    assert!(first > 0, "some users were notified before the stop");

    let o = bin.run(&["run", "slow", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let per_user = bin.outbox_recipients();
    assert!(per_user.values().all(|n| *n == 1), "a user got two messages: {per_user:?}");
    assert!(bin.outbox_count() > first);

    let o = bin.run(&["campaign", "status", "slow", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(status["notified"].as_u64().unwrap() as usize, bin.outbox_count());
    assert_eq!(status["claimed"], 0);
    assert_eq!(status["pending"], 0);
    assert_eq!(bin.sandbox.stats().await.violations, 0);
});

#[tokio::test]
async fn sigterm_stops_claiming_and_the_state_resumes_cleanly() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 100, Some(Duration::from_millis(100))).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    let f = bin.write("c.toml", &campaign("term", "", 100, 2));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));

    let mut child = bin.command(&["run", "term", "--progress", "none"]).spawn().unwrap();
    // wait for the first message, then SIGTERM
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bin.outbox_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no message within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(4), "interrupted with work left");
    let after_stop = bin.outbox_count();

    // nothing is left claimed: the next run starts at once and finishes the rest
    let o = bin.run(&["campaign", "status", "term", "--json"]).await;
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["claimed"], 0, "claims were released: {s}");
    let o = bin.run(&["run", "term", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(bin.outbox_count() > after_stop);
    let per_user = bin.outbox_recipients();
    assert!(per_user.values().all(|n| *n == 1), "{per_user:?}");
    let o = bin.run(&["campaign", "status", "term", "--json"]).await;
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["notified"].as_u64().unwrap() as usize, bin.outbox_count());
    assert_eq!(bin.sandbox.stats().await.violations, 0);
}

#[test]
fn the_demo_runs_a_whole_campaign_with_nothing_configured() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_reverify"))
        .args(["demo", "--dir", "db", "--users", "60"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("0 limit violations"), "{out}");
    // three addresses bounce (Postmark's webhook, matched by address to the click
    // links), and the follow-up reaches them through the fallback gateway
    assert!(out.contains("bounced                  3 (") && out.contains("fallback sent 3"), "{out}");
    assert!(out.contains("3 sent by the fallback; the partner's gateway (the sandbox) took 3 messages"), "{out}");
    let sent = std::fs::read_dir(dir.path().join("outbox")).unwrap().count();
    assert!(sent > 0 && out.contains(&format!("{sent} messages are in outbox")), "{out}");
    // a second demo in the same place refuses to mix with the first
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_reverify"))
        .args(["demo", "--dir", "db", "--users", "60"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
