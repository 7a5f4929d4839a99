//! One campaign, start to end.

use std::collections::HashMap;

use reverify::both_engines;
use reverify::domain::VerificationState;
use reverify::store::runs::RunOutcome;
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Env, campaign_toml};

/// The user id each message went to (from the To: address, which the sandbox
/// derives from the user's number) and the session URL in it.
fn recipients(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("To: "))
                .map(|to| to.rsplit('<').next().unwrap_or(to).trim_end_matches('>').trim().to_owned())
                .expect("a To: header")
        })
        .collect()
}

async fn all_text_of(db: &TestDb) -> String {
    // every text and blob column of every table, as the database holds them
    let mut out = String::new();
    for table in ["users", "campaigns", "campaign_runs", "campaign_targets", "verification_sessions", "events"] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .fetch_all(&db.store_pool())
            .await
            .unwrap();
        for r in rows {
            for i in 0..r.len() {
                if let Ok(Some(s)) = r.try_get::<Option<String>, _>(i) {
                    out.push_str(&s);
                    out.push('\n');
                }
            }
        }
    }
    out
}

trait PoolOf {
    fn store_pool(&self) -> sqlx::AnyPool;
}

impl PoolOf for TestDb {
    fn store_pool(&self) -> sqlx::AnyPool {
        sqlx::AnyPool::connect_lazy(&self.url).unwrap()
    }
}

both_engines!(a_campaign_notifies_each_eligible_user_once_within_every_limit, |db: TestDb| async move {
    let env = Env::new(db, 120).await;
    let c = env.apply(&campaign_toml("kyc", "")).await;
    let report = env.run(&c).await;
    assert_eq!(report.outcome, RunOutcome::Finished);

    let users = env.sandbox.users();
    let now = chrono::Utc::now();
    let eligible_now: Vec<_> = users
        .iter()
        .filter(|u| match u.verification_state {
            VerificationState::Unverified => true,
            VerificationState::Rejected => u.rejected_at.is_some_and(|r| now - r >= chrono::Duration::hours(24)),
            _ => false,
        })
        .collect();
    assert!(eligible_now.len() > 20, "the generated mix has eligible users");

    let messages = env.messages();
    let to = recipients(&messages);
    let mut per_address: HashMap<&str, usize> = HashMap::new();
    for t in &to {
        *per_address.entry(t.as_str()).or_default() += 1;
    }
    assert!(per_address.values().all(|n| *n == 1), "someone got two messages: {per_address:?}");
    assert_eq!(messages.len(), eligible_now.len(), "every eligible user got a message");
    for u in &eligible_now {
        assert!(per_address.contains_key(u.email.as_str()), "{} was not notified", u.email);
    }

    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{:?}", stats.violations_by_kind);
    assert_eq!(stats.sessions_issued as usize, messages.len(), "one session per message");
    assert_eq!(report.counts.notified as usize, messages.len());

    // the status counts equal the rows, and every target has a final or waiting state
    let progress = env.store().campaign_progress(c.campaign_id, chrono::Utc::now()).await.unwrap();
    assert_eq!(progress.count(reverify::domain::TargetStatus::Notified) as usize, messages.len());
    assert_eq!(progress.count(reverify::domain::TargetStatus::Claimed), 0, "no claim left behind");
    assert_eq!(progress.sessions_issued as usize, messages.len());
    let rejected_recently = users.iter().filter(|u| u.verification_state == VerificationState::Rejected).count()
        - (eligible_now.len() - users.iter().filter(|u| u.verification_state == VerificationState::Unverified).count());
    assert_eq!(
        progress.count(reverify::domain::TargetStatus::Deferred) as usize,
        rejected_recently,
        "{:?}",
        progress.by_status
    );

    // no session URL anywhere in the database
    let text = all_text_of(&env.db).await;
    assert!(!text.contains("/session/"), "a session URL was stored");
    for m in &messages {
        let url = m.lines().find(|l| l.contains("/session/")).expect("the message carries the link");
        let id = url.split("/session/").nth(1).unwrap().split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap();
        assert!(!text.contains(id), "a session id was stored");
    }

    // a second run has nothing to do and sends nothing
    let again = env.run(&c).await;
    assert_eq!(again.counts.notified, 0);
    assert_eq!(env.messages().len(), messages.len());
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

// Issue 30: a run seals its audit events while it goes, not all at its end (a
// million-user run's end was a seal of three million events, over the minute the
// end allows at ten times that size). The sandbox answers slowly so that the run
// lasts several sealing periods; the chain must move before the run ends, and the
// run's end leaves nothing unsealed.
both_engines!(a_run_seals_its_audit_events_as_it_goes, |db: TestDb| async move {
    use std::sync::Arc;
    use std::time::Duration;

    use reverify::engine::Progress;
    use reverify::sandbox::{Faults, Latency, SandboxConfig, UserSource};
    use tokio_util::sync::CancellationToken;

    let faults = Faults { latency: Latency::Fixed(Duration::from_millis(40)), ..Default::default() };
    let env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Generate(60), seed: 7, faults, ..Default::default() })
            .await;
    let toml = "name = \"sealed\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\n\
                [throttle]\nrequests_per_second = 5000\nconcurrency = 2\n";
    let c = env.apply(toml).await;
    let mut worker = env.worker();
    worker.config.seal_every = Duration::from_millis(150);
    let pool = env.db.store_pool();
    let sealed = || async {
        sqlx::query("SELECT COUNT(*) AS n FROM events WHERE chain_seq IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<i64, _>("n")
    };
    let before = sealed().await;
    let run = tokio::spawn(async move {
        worker.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.expect("run")
    });
    // about 60 users × 3 requests × 40 ms / 2 at a time: several seconds
    // (moved while users were still to be sent: not the end's seal)
    let waiting = || async {
        sqlx::query("SELECT COUNT(*) AS n FROM campaign_targets WHERE status IN ('pending', 'claimed')")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<i64, _>("n")
    };
    let mut moved_during_the_run = false;
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (left, now_sealed) = (waiting().await, sealed().await);
        if left > 0 && now_sealed > before {
            moved_during_the_run = true;
        }
    }
    let report = run.await.unwrap();
    assert!(report.counts.notified > 0, "{report:?}");
    assert!(moved_during_the_run, "no event was sealed before the run ended");
    let unsealed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE chain_seq IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(unsealed, 0, "the run's end seals what is left");
});
