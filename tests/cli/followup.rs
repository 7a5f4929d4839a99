//! The daemon on real time (issue 23): users whose rejection cooldown ends 20–40 s
//! after the campaign's tick are taken by the daemon within a minute of it, with no
//! tick between and no run by hand.

use std::time::Duration;

use chrono::Utc;
use reverify::domain::VerificationState;
use reverify::sandbox::{Sandbox, SandboxConfig, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Bin, campaign, text};

/// Six users rejected a day ago less 20 to 40 s, and eighteen who never verified; a
/// campaign whose daily tick is due once, now. Returns the rejected users with the
/// time each one's cooldown ends.
async fn cooldowns_ending_soon(db: &TestDb) -> (Bin, Vec<(String, chrono::DateTime<Utc>)>) {
    let generated =
        Sandbox::start(SandboxConfig { users: UserSource::Generate(24), seed: 5, ..Default::default() }).await.unwrap();
    let now = Utc::now();
    let mut records = generated.users();
    generated.shutdown().await;
    let mut rejected = Vec::new();
    for (i, u) in records.iter_mut().enumerate() {
        if i < 6 {
            u.verification_state = VerificationState::Rejected;
            let ends_in = chrono::Duration::seconds(20 + 4 * i64::try_from(i).unwrap());
            u.rejected_at = Some(now - chrono::Duration::hours(24) + ends_in);
            rejected.push((u.user_id.as_str().to_owned(), now + ends_in));
        } else {
            u.verification_state = VerificationState::Unverified;
            u.rejected_at = None;
        }
    }
    let bin =
        Bin::with_sandbox(db, SandboxConfig { users: UserSource::Records(records), seed: 5, ..Default::default() })
            .await;
    assert_eq!(bin.run(&["users", "import", "users.csv"]).await.status.code(), Some(0));
    // a daily tick at midnight, dated back so that today's is due once, now
    let f = bin.write("cool.toml", &campaign("cool", "schedule = \"0 0 * * *\"\nstarting_deadline = \"25h\"", 100, 4));
    assert_eq!(bin.run(&["campaign", "apply", f.to_str().unwrap()]).await.status.code(), Some(0));
    sqlx::query("UPDATE campaigns SET created_at = created_at - 172800000").execute(db.pool()).await.unwrap();
    (bin, rejected)
}

/// Each target's status and first message time (ms).
async fn taken(db: &TestDb) -> std::collections::HashMap<String, (String, Option<i64>)> {
    sqlx::query("SELECT user_id, status, first_notified_at FROM campaign_targets")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("user_id"), (r.get::<String, _>("status"), r.get::<Option<i64>, _>("first_notified_at"))))
        .collect()
}

/// Every rejected user was taken within a minute after their cooldown ended, never
/// before; one run targeted (the tick's), the others followed up; one message each.
async fn assert_taken_in_time(db: &TestDb, bin: &Bin, rejected: &[(String, chrono::DateTime<Utc>)]) {
    let t = taken(db).await;
    for (user, due) in rejected {
        let at = chrono::DateTime::from_timestamp_millis(t[user].1.unwrap()).unwrap();
        let lag = (at - *due).num_milliseconds();
        assert!((0..60_000).contains(&lag), "{user}: taken {lag} ms after its cooldown ended");
    }
    let r =
        sqlx::query("SELECT COUNT(*) AS n, SUM(CASE WHEN targeted > 0 THEN 1 ELSE 0 END) AS ticks FROM campaign_runs")
            .fetch_one(db.pool())
            .await
            .unwrap();
    let (n, ticks): (i64, Option<i64>) = (r.get("n"), r.get("ticks"));
    assert!(n >= 2, "{n} runs");
    assert_eq!(ticks, Some(1), "one run targeted");
    assert!(bin.outbox_per_target().values().all(|n| *n == 1));
    assert_eq!(bin.sandbox.stats().await.violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_takes_users_when_their_cooldown_ends_between_ticks() {
    let db = TestDb::sqlite().await;
    let (bin, rejected) = cooldowns_ending_soon(&db).await;
    let mut daemon = bin
        .command(&["daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let t = taken(&db).await;
        if t.len() == 24 && t.values().all(|(s, _)| s == "notified") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("not every user was taken within 120 s: {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_taken_in_time(&db, &bin, &rejected).await;
    let o = bin.run(&["campaign", "status", "cool"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("next follow-up none: nobody waits"), "{}", text(&o));

    // SIGTERM: the daemon stops cleanly
    let pid = daemon.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The same through `run --due` started every 5 s, as cron would (the shipped
/// CronJob: every 5 minutes): each invocation with nothing due exits 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_due_every_few_seconds_takes_users_when_their_cooldown_ends() {
    let db = TestDb::postgres().await;
    let (bin, rejected) = cooldowns_ending_soon(&db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut idle = 0;
    loop {
        let o = bin.run(&["run", "--due", "--progress", "none"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        if String::from_utf8_lossy(&o.stdout).contains("no campaign is due; next at") {
            idle += 1;
        }
        let t = taken(&db).await;
        if t.len() == 24 && t.values().all(|(s, _)| s == "notified") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not every user was taken within 120 s: {t:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(idle > 0, "no invocation found nothing due");
    assert_taken_in_time(&db, &bin, &rejected).await;
    let o = bin.run(&["run", "--due", "--progress", "none"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("no campaign is due"), "{}", text(&o));
}
