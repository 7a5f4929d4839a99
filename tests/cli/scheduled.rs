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
