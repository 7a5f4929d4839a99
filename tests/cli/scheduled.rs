use std::time::Duration;

use reverify::both_engines;
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Bin, campaign, text};

/// Two `run --due` processes at once: each due campaign runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_due_runs_run_each_campaign_once() {
    let db = TestDb::postgres().await;
    let bin = Bin::new(&db, 60, Some(std::time::Duration::from_millis(20))).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    // daily at midnight UTC with a 25 h deadline: today's tick is due once the campaign
    // is dated back two days, and no other tick comes due while the test runs
    for name in ["daily-a", "daily-b"] {
        let f = bin.write(
            &format!("{name}.toml"),
            &campaign(name, "schedule = \"0 0 * * *\"\nstarting_deadline = \"25h\"", 200, 4),
        );
        assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));
    }
    sqlx::query("UPDATE campaigns SET created_at = created_at - 172800000")
        .execute(&sqlx::AnyPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();

    let (a, b) = tokio::join!(
        bin.run(&["run", "--due", "--progress", "none"]),
        bin.run(&["run", "--due", "--progress", "none"])
    );
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let rows = sqlx::query("SELECT c.name, COUNT(r.run_id) AS n FROM campaigns c LEFT JOIN campaign_runs r ON r.campaign_id = c.campaign_id GROUP BY c.name")
        .fetch_all(&pool)
        .await
        .unwrap();
    for r in rows {
        let (name, n): (String, i64) = (r.get("name"), r.get("n"));
        assert_eq!(n, 1, "campaign {name} ran {n} times\n{}\n{}", text(&a), text(&b));
    }
    let both = format!("{}{}", String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout));
    let per_target = bin.outbox_per_target();
    assert!(!per_target.is_empty());
    assert!(per_target.values().all(|n| *n == 1), "a user got two messages from one campaign: {per_target:?}");
    assert!(both.contains("finished"), "{both}");
    assert_eq!(bin.sandbox.stats().await.violations, 0);

    // nothing is due again until the next tick
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no campaign is due"), "{}", text(&o));
}

/// The campaign file of the resume tests: daily at midnight UTC, dated back two
/// days, so that today's tick is due (within a 25 h deadline) and no other tick
/// comes while the test runs.
async fn apply_daily(bin: &Bin, db: &TestDb, name: &str) {
    wait_clear_of_midnight().await;
    let f = bin.write(
        &format!("{name}.toml"),
        &campaign(name, "schedule = \"0 0 * * *\"\nstarting_deadline = \"25h\"", 100, 2),
    );
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    sqlx::query("UPDATE campaigns SET created_at = created_at - 172800000").execute(db.pool()).await.unwrap();
}

/// Within two minutes of midnight UTC the next tick could come during the test.
async fn wait_clear_of_midnight() {
    use chrono::Timelike;
    let secs = chrono::Utc::now().num_seconds_from_midnight();
    if secs > 86_400 - 120 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(86_400 - secs) + 5)).await;
    }
}

/// Shrinks the campaign's starting_deadline to a minute (re-applying its file), so
/// that today's tick is long past it: a tick in progress is resumed regardless.
async fn shrink_deadline(bin: &Bin, name: &str) {
    let f = bin.write(
        &format!("{name}.toml"),
        &campaign(name, "schedule = \"0 0 * * *\"\nstarting_deadline = \"1m\"", 100, 2),
    );
    let o = bin.run(&["campaign", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Every target of the campaign has an outcome: nothing pending, claimed or due,
/// and no user got two messages. After a kill, a message written just before it
/// may be recorded as `failed`/`delivery_unknown` (at most once, by design).
async fn assert_all_done(bin: &Bin, name: &str, killed: bool) -> serde_json::Value {
    let o = bin.run(&["campaign", "status", name, "--json"]).await;
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!((&s["pending"], &s["claimed"], &s["due_now"]), (&0.into(), &0.into(), &0.into()), "{s}");
    assert!(s["targeted"].as_u64().unwrap() > 0, "{s}");
    let per_target = bin.outbox_per_target();
    assert!(per_target.values().all(|n| *n == 1), "a user got two messages: {per_target:?}");
    let (notified, failed) = (s["notified"].as_u64().unwrap() as usize, s["failed"].as_u64().unwrap() as usize);
    if killed {
        assert!((notified..=notified + failed).contains(&bin.outbox_count()), "{s}");
    } else {
        assert_eq!(notified, bin.outbox_count(), "{s}");
    }
    s
}

async fn run_outcomes(db: &TestDb) -> Vec<String> {
    sqlx::query("SELECT outcome FROM campaign_runs ORDER BY run_id")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("outcome"))
        .collect()
}

// A scheduled run stopped by --max-duration (exit 4) is resumed by the next
// `run --due`, before the next tick and past the starting deadline, and finishes.
both_engines!(an_interrupted_scheduled_run_is_resumed_by_the_next_due_run, |db: TestDb| async move {
    let bin = Bin::new(&db, 40, Some(Duration::from_millis(100))).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    apply_daily(&bin, &db, "resume-stop").await;

    let o = bin.run(&["run", "--due", "--max-duration", "1s", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let first = bin.outbox_count();
    assert!(first > 0, "some users were notified before the stop\n{}", text(&o));
    let o = bin.run(&["campaign", "show", "resume-stop"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming:"), "{}", text(&o));

    shrink_deadline(&bin, "resume-stop").await;
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("resume-stop: resuming the run of the tick at") && out.contains("finished"), "{out}");
    assert!(bin.outbox_count() > first);
    assert_all_done(&bin, "resume-stop", false).await;
    assert_eq!(run_outcomes(&db).await, ["interrupted", "finished"]);
    assert_eq!(bin.sandbox.stats().await.violations, 0);

    // the tick is done: nothing is due until the next one
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no campaign is due"), "{}", text(&o));
    let o = bin.run(&["campaign", "show", "resume-stop"]).await;
    assert!(!String::from_utf8_lossy(&o.stdout).contains("resuming:"), "{}", text(&o));
});

// A scheduled run killed with SIGKILL leaves its campaign lease to expire; the next
// `run --due` after it takes the tick up and finishes it.
both_engines!(a_killed_scheduled_run_is_resumed_once_its_lease_expires, |db: TestDb| async move {
    let bin = Bin::new(&db, 40, Some(Duration::from_millis(100))).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    apply_daily(&bin, &db, "resume-kill").await;

    let mut child = bin
        .command(&["run", "--due", "--progress", "none"])
        .env("REVERIFY_LEASE_SECONDS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bin.outbox_count() < 3 {
        assert!(std::time::Instant::now() < deadline, "no message within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    let killed_at = bin.outbox_count();

    // past the dead run's campaign lease (and its claims' leases)
    tokio::time::sleep(Duration::from_secs(3)).await;
    shrink_deadline(&bin, "resume-kill").await;
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("resume-kill: resuming the run of the tick at") && out.contains("finished"), "{out}");
    assert!(bin.outbox_count() > killed_at);
    assert_all_done(&bin, "resume-kill", true).await;
    assert_eq!(run_outcomes(&db).await, ["running", "finished"], "the killed run never recorded its end");
    assert_eq!(bin.sandbox.stats().await.violations, 0);
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("no campaign is due"), "{}", text(&o));
});

/// The daemon resumes a tick that a `run --due` left unfinished, at its first pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_resumes_an_interrupted_tick() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 30, Some(Duration::from_millis(100))).await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    apply_daily(&bin, &db, "resume-daemon").await;
    let o = bin.run(&["run", "--due", "--max-duration", "1s", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    shrink_deadline(&bin, "resume-daemon").await;

    let mut child = bin
        .command(&["daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while run_outcomes(&db).await != ["interrupted", "finished"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not finish the tick: {:?}",
            run_outcomes(&db).await
        );
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_all_done(&bin, "resume-daemon", false).await;
    assert_eq!(bin.sandbox.stats().await.violations, 0);
}
