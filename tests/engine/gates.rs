//! Issue 16's gates, end to end: a canary caps the first run and pauses the
//! campaign; `[halt]` pauses it on a storm of SMTP failures from a real server; a
//! user finally rejected (a fraud code, from a signed webhook) is never targeted,
//! nor a user past `max_attempts` sessions.

use std::sync::Arc;

use chrono::Utc;
use reverify::both_engines;
use reverify::domain::VerificationState;
use reverify::engine::Progress;
use reverify::notify::testing::{Fault, SmtpServer};
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::campaigns::{CampaignStatus, StatusChange};
use reverify::store::testing::TestDb;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};

/// Only users UNVERIFIED in the sandbox: each claim is a session and a message.
const UNVERIFIED: &str = "[audience]\nstates = [\"UNVERIFIED\"]\n";

async fn count(env: &Env, sql: &'static str, campaign_id: i64) -> i64 {
    sqlx::query(sql).bind(campaign_id).fetch_one(env.db.pool()).await.unwrap().try_get::<i64, _>(0).unwrap()
}

fn eligible(env: &Env) -> usize {
    env.sandbox
        .users()
        .iter()
        .filter(|u| u.verification_state == VerificationState::Unverified && u.refresh_token.is_some())
        .count()
}

both_engines!(a_canary_of_10_sends_10_then_pauses_until_resumed, |db: TestDb| async move {
    let env = Env::new(db, 60).await;
    let all = eligible(&env);
    assert!(all > 20, "the population must exceed the canary: {all}");
    let c = env.apply(&campaign_toml("canary", &format!("{UNVERIFIED}[rollout]\ncanary = 10\n"))).await;

    let report = env.run(&c).await;
    assert_eq!(report.paused, Some("canary_review"), "{report:?}");
    assert_eq!(report.counts.notified, 10, "{report:?}");
    assert_eq!(env.messages().len(), 10, "exactly 10 messages");
    assert_eq!(env.sandbox.stats().await.sessions_issued, 10, "exactly 10 sessions at Baanx");
    let ledger = "SELECT COUNT(*) FROM verification_sessions WHERE campaign_id = $1";
    assert_eq!(count(&env, ledger, c.campaign_id).await, 10, "10 ledger rows");
    let stored = env.store().campaign_get(&c.name).await.unwrap().unwrap();
    assert_eq!(stored.status, CampaignStatus::Paused);
    assert_eq!(stored.pause_reason.as_deref(), Some("canary_review"));
    assert_eq!(stored.pause_detail.as_ref().unwrap()["sent"], 10);

    // a second run while paused for review sends nothing more (the engine itself
    // holds the cap, whoever starts a run)
    let again = env.run(&stored).await;
    assert_eq!(again.counts.notified, 0, "{again:?}");
    assert_eq!(env.messages().len(), 10);

    // a person resumes: the canary is released and the rest are sent
    env.store().campaign_set_status(&c.name, StatusChange::Resume, "test", Utc::now()).await.unwrap();
    let resumed = env.store().campaign_get(&c.name).await.unwrap().unwrap();
    assert!(resumed.canary_released_at.is_some());
    assert_eq!(resumed.pause_reason, None);
    let rest = env.run(&resumed).await;
    assert_eq!(rest.paused, None, "{rest:?}");
    assert_eq!(env.messages().len(), all, "everyone else after the review");
    assert_eq!(env.store().campaign_get(&c.name).await.unwrap().unwrap().status, CampaignStatus::Active);
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

both_engines!(an_smtp_failure_storm_halts_and_pauses_the_campaign, |db: TestDb| async move {
    // every recipient refused for good (550 at RCPT TO) by a real SMTP server
    let smtp = SmtpServer::start_with(&[Fault::reply("@example.test", 550, None)]);
    let mut env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Generate(80), seed: 7, ..Default::default() }).await;
    env.settings.outbox_dir = None;
    env.settings.smtp_url = Some(smtp.url());
    let all = eligible(&env);
    let halt = "[halt]\ndelivery_failure_rate = 0.5\nmin_sample = 5\n";
    let toml = campaign_toml("storm", &format!("{UNVERIFIED}{halt}")).replace("concurrency = 16", "concurrency = 2");
    let c = env.apply(&toml).await;

    let report = env
        .worker()
        .run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new())
        .await
        .expect("a halt is not a failed run");
    assert_eq!(report.paused, Some("delivery_failure_rate"), "{report:?}");
    assert_eq!(report.outcome, reverify::store::runs::RunOutcome::Interrupted);
    assert_eq!(report.counts.notified, 0);
    assert!(report.counts.failed >= 5, "{report:?}");
    assert!((report.counts.failed as usize) < all / 2, "stopped early, not after the whole campaign: {report:?}");
    let stored = env.store().campaign_get(&c.name).await.unwrap().unwrap();
    assert_eq!(stored.status, CampaignStatus::Paused);
    assert_eq!(stored.pause_reason.as_deref(), Some("delivery_failure_rate"));
    let figures = stored.pause_detail.clone().expect("the figures");
    assert!(figures["failed"].as_i64().unwrap() >= 5, "{figures}");
    assert_eq!(figures["threshold"], 0.5);
    assert!(smtp.messages().is_empty());

    // the audit trail has it, and the gauge says so (also after a read from the database)
    let events = env
        .store()
        .event_list(
            &reverify::store::events::EventFilter {
                campaign_id: Some(c.campaign_id),
                kind: Some("campaign.paused".into()),
                ..Default::default()
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail.as_ref().unwrap()["reason"], "delivery_failure_rate");
    let metrics = reverify::telemetry::global();
    reverify::engine::gauges::refresh_gauges(env.store()).await.unwrap();
    let text = metrics.encode();
    assert!(text.contains("reverify_campaign_halted{campaign=\"storm\"} 1"), "{text}");

    // resuming clears it
    env.store().campaign_set_status(&c.name, StatusChange::Resume, "test", Utc::now()).await.unwrap();
    reverify::engine::gauges::refresh_gauges(env.store()).await.unwrap();
    assert!(metrics.encode().contains("reverify_campaign_halted{campaign=\"storm\"} 0"));
});

/// A signed `kyc.status.changed` "failed" event for `user` with `code`.
fn rejection(user: &str, code: &str, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "api_version": "v1",
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_category": "kyc",
        "event_type": "kyc.status.changed",
        "user_id": user,
        "event_object_id": "kyc-1",
        "event_object_status": "failed",
        "event_object_changes": ["status"],
        "event_object": { "status": "failed", "failure_code": code, "failure_reason": reason },
        "occurred_at": Utc::now().to_rfc3339(),
    }))
    .unwrap()
}

both_engines!(final_rejections_and_spent_attempts_are_not_invited, |db: TestDb| async move {
    let env = Env::new(db, 40).await;
    let store = env.store().clone();
    let key = "whsec_gates_receiver";
    let receiver = crate::common::WebhookReceiver::start(&store, key).await;
    let post = |body: Vec<u8>| receiver.post(body);
    let mut unverified = env
        .sandbox
        .users()
        .into_iter()
        .filter(|u| u.verification_state == VerificationState::Unverified && u.refresh_token.is_some());
    let fraud = unverified.next().unwrap().user_id;
    let document = unverified.next().unwrap().user_id;
    assert_eq!(post(rejection(fraud.as_str(), "FRAUD_SUSPECTED", "Declined after a fraud review")).await, 200);
    assert_eq!(post(rejection(document.as_str(), "DOCUMENT_EXPIRED", "The document has expired")).await, 200);
    let pool = env.db.pool();
    let failure = |id: String| async move {
        let r = sqlx::query("SELECT failure_code, failure_reason FROM users WHERE user_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        (r.try_get::<Option<String>, _>(0).unwrap(), r.try_get::<Option<String>, _>(1).unwrap())
    };
    assert_eq!(
        failure(fraud.to_string()).await,
        (Some("FRAUD_SUSPECTED".into()), Some("Declined after a fraud review".into()))
    );

    let audience = "[audience]\nexclude_rejection_codes = [\"FRAUD_SUSPECTED\", \"SANCTIONS_MATCH\"]\n";
    let c = env.apply(&campaign_toml("no-fraud", audience)).await;
    let plan = store.campaign_plan(c.campaign_id, &c.spec().unwrap().audience, Utc::now()).await.unwrap();
    let bucket = |b: &str| plan.iter().find(|p| p.bucket == b).map_or(0, |p| p.count);
    assert_eq!(bucket("excluded_rejection_code"), 1, "{plan:?}");
    env.run(&c).await;
    let targeted = |id: String, campaign: i64| {
        let pool = env.db.pool().clone();
        async move {
            sqlx::query("SELECT status FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
                .bind(campaign)
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .map(|r| r.try_get::<String, _>(0).unwrap())
        }
    };
    assert_eq!(targeted(fraud.to_string(), c.campaign_id).await, None, "the fraud rejection is never targeted");
    assert_eq!(
        targeted(document.to_string(), c.campaign_id).await.as_deref(),
        Some("deferred"),
        "a document rejection waits out its cooldown"
    );
    assert!(!env.messages().iter().any(|m| m.contains(&format!("{fraud}"))));

    // a final code that arrives after the user was targeted: the waiting target is
    // skipped at the next run, never claimed
    assert_eq!(post(rejection(document.as_str(), "FRAUD_SUSPECTED", "Declined after a fraud review")).await, 200);
    env.run(&c).await;
    let row = sqlx::query("SELECT status, reason FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
        .bind(c.campaign_id)
        .bind(document.to_string())
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(
        (row.try_get::<String, _>(0).unwrap(), row.try_get::<Option<String>, _>(1).unwrap()),
        ("skipped".to_owned(), Some("excluded_rejection_code".to_owned()))
    );

    // max_attempts counts every campaign's sessions: those notified above had one
    let notified = count(
        &env,
        "SELECT COUNT(*) FROM verification_sessions WHERE campaign_id = $1 AND status <> 'api_failed'",
        c.campaign_id,
    )
    .await;
    assert!(notified > 0);
    let second = env.apply(&campaign_toml("capped", "[audience]\nmax_attempts = 1\n")).await;
    let plan = store.campaign_plan(second.campaign_id, &second.spec().unwrap().audience, Utc::now()).await.unwrap();
    let bucket = |b: &str| plan.iter().find(|p| p.bucket == b).map_or(0, |p| p.count);
    assert_eq!(bucket("max_attempts"), notified, "{plan:?}");
    let before = env.sandbox.stats().await.sessions_issued;
    env.run(&second).await;
    let had = "SELECT COUNT(*) FROM campaign_targets t WHERE t.campaign_id = $1 AND EXISTS \
               (SELECT 1 FROM verification_sessions s WHERE s.user_id = t.user_id AND s.campaign_id <> $1)";
    assert_eq!(count(&env, had, second.campaign_id).await, 0, "nobody with a session is targeted again");
    assert!(env.sandbox.stats().await.sessions_issued >= before);
});
