//! Trusting a fresh state (issue 29): a user whose state was confirmed within
//! `fresh_state_max_age` (an import, a signed webhook, a sync, an earlier call) is
//! not asked `GET /v1/user` again before the session; an older one is; a silent
//! webhook feed falls back to asking; the later confirmation wins whatever the order
//! the sources arrive in. Every count is the sandbox's, over real HTTP.

use chrono::{DateTime, Duration, Utc};
use reverify::Secret;
use reverify::both_engines;
use reverify::domain::VerificationState;
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::outcomes::{StateApplied, StateSource};
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Env, campaign_toml};

const KEY: &str = "whsec_receiver_for_the_freshness_tests_01";

/// An environment of `n` UNVERIFIED users, imported (and so confirmed) now.
async fn env_of(db: TestDb, n: usize) -> Env {
    let users = reverify::sandbox::users::generate_unverified(n, 11, Utc::now());
    Env::with_sandbox(db, SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() }).await
}

/// The sandbox's request counts: (token refreshes, profiles, sessions).
async fn requests(env: &Env) -> (u64, u64, u64) {
    let s = env.sandbox.stats().await;
    let n = |k: &str| s.requests.get(k).copied().unwrap_or(0);
    (n("POST /v1/auth/oauth/token"), n("GET /v1/user"), n("GET /v1/user/verification"))
}

/// Posts a signed `kyc.status.changed` for `user` to a webhook receiver of `env`'s
/// store, over HTTP; the answer's status.
async fn webhook(env: &Env, event_id: &str, user: &str, status: &str, occurred_at: DateTime<Utc>) -> u16 {
    let body = serde_json::to_vec(&serde_json::json!({
        "api_version": "v1", "event_id": event_id, "event_category": "kyc",
        "event_type": "kyc.status.changed", "user_id": user, "event_object_id": "kyc-1",
        "event_object_status": status, "event_object_changes": ["status"],
        "event_object": { "status": status, "failure_code": null, "failure_reason": null },
        "occurred_at": occurred_at.to_rfc3339(),
    }))
    .unwrap();
    crate::common::WebhookReceiver::start(env.store(), KEY).await.post(body).await
}

/// (state, state_source, state_confirmed_at) as stored.
async fn stored(env: &Env, user: &str) -> (String, Option<String>, Option<i64>) {
    let r = sqlx::query("SELECT verification_state, state_source, state_confirmed_at FROM users WHERE user_id = $1")
        .bind(user)
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    (r.get("verification_state"), r.get("state_source"), r.get("state_confirmed_at"))
}

both_engines!(a_user_verified_by_webhook_after_targeting_is_neither_asked_nor_messaged, |db: TestDb| async move {
    let env = env_of(db, 6).await;
    let c = env.apply(&campaign_toml("fresh", "[audience]\nfresh_state_max_age = \"6h\"")).await;
    let spec = c.spec().unwrap();
    // targeted first: the webhook comes between the import and the user's turn
    let added = env.store().target_add_matching_counted(c.campaign_id, &spec.audience, Utc::now()).await.unwrap();
    assert_eq!(added.added, 6);
    let verified = env.sandbox.users()[0].clone();
    let at = Utc::now();
    assert_eq!(webhook(&env, "evt-v-1", verified.user_id.as_str(), "completed", at).await, 200);
    assert_eq!(stored(&env, verified.user_id.as_str()).await.1.as_deref(), Some("webhook"));

    let report = env.run(&c).await;
    assert_eq!(report.counts.notified, 5, "{report:?}");
    let (tokens, profiles, sessions) = requests(&env).await;
    assert_eq!(profiles, 0, "every state was confirmed within the age: no GET /v1/user");
    assert_eq!(sessions, 5, "a session for each user still UNVERIFIED, none for the verified one");
    assert_eq!(tokens, 5, "a token for each session's user, none for the verified one");
    let messages = env.messages();
    assert_eq!(messages.len(), 5);
    assert!(messages.iter().all(|m| !m.contains(verified.email.as_str())), "the verified user was messaged");
    let (status, reason): (String, Option<String>) = {
        let r = sqlx::query("SELECT status, reason FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
            .bind(c.campaign_id)
            .bind(verified.user_id.as_str())
            .fetch_one(env.db.pool())
            .await
            .unwrap();
        (r.get("status"), r.get("reason"))
    };
    assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("already_verified")));
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

both_engines!(a_state_older_than_the_age_is_asked_again, |db: TestDb| async move {
    let env = env_of(db, 6).await;
    // three users last confirmed 7 hours ago, three just now (the import)
    let old = Utc::now() - Duration::hours(7);
    for u in env.sandbox.users().iter().take(3) {
        sqlx::query("UPDATE users SET state_confirmed_at = $2, state_source = 'sync' WHERE user_id = $1")
            .bind(u.user_id.as_str())
            .bind(old.timestamp_millis())
            .execute(env.db.pool())
            .await
            .unwrap();
    }
    let c = env.apply(&campaign_toml("aged", "[audience]\nfresh_state_max_age = \"6h\"")).await;
    let report = env.run(&c).await;
    assert_eq!(report.counts.notified, 6, "{report:?}");
    let (_, profiles, sessions) = requests(&env).await;
    assert_eq!(profiles, 3, "only the states older than 6h are asked again");
    assert_eq!(sessions, 6);
    // the call confirmed them again, as of when it was asked
    for u in env.sandbox.users().iter().take(3) {
        let (state, source, at) = stored(&env, u.user_id.as_str()).await;
        assert_eq!((state.as_str(), source.as_deref()), ("UNVERIFIED", Some("api")));
        assert!(at.unwrap() > old.timestamp_millis() + 3_600_000, "{at:?}");
    }

    // without the key (and no webhook feed) every state is asked: the default is 0s
    let c = env.apply(&campaign_toml("always", "")).await;
    env.run(&c).await;
    let (_, profiles, _) = requests(&env).await;
    assert_eq!(profiles, 3 + 6, "the default without a feed asks every user");
});

/// The webhook feed's gauge is one per process: the two engines' runs of the test
/// below take turns.
static FEED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn feed_gauge() -> String {
    reverify::telemetry::global()
        .encode()
        .lines()
        .find(|l| l.starts_with("reverify_webhook_feed_healthy "))
        .unwrap_or("reverify_webhook_feed_healthy (absent)")
        .to_owned()
}

both_engines!(a_silent_feed_falls_back_to_asking_and_a_live_one_is_trusted, |db: TestDb| async move {
    let _turn = FEED.lock().await;
    let mut env = env_of(db, 4).await;
    env.settings.webhook_key = Some(Secret::new(KEY));
    // nothing heard yet: silent, whatever the import confirmed
    let c = env.apply(&campaign_toml("silent", "")).await;
    let report = env.run(&c).await;
    assert_eq!(report.counts.notified, 4, "{report:?}");
    assert_eq!(feed_gauge(), "reverify_webhook_feed_healthy 0");
    assert_eq!(requests(&env).await.1, 4, "a silent feed: every state asked");
    // a campaign's own age does not outlive a silent feed either
    let c = env.apply(&campaign_toml("silent-keyed", "[audience]\nfresh_state_max_age = \"6h\"")).await;
    env.run(&c).await;
    assert_eq!(requests(&env).await.1, 8);

    // a signed webhook (for a user of no campaign's concern) brings it to life
    let other = uuid::Uuid::new_v4().to_string();
    assert_eq!(webhook(&env, "evt-alive", &other, "pending", Utc::now()).await, 200);
    let c = env.apply(&campaign_toml("live", "")).await;
    let report = env.run(&c).await;
    assert_eq!(report.counts.notified, 4, "{report:?}");
    assert_eq!(feed_gauge(), "reverify_webhook_feed_healthy 1");
    assert_eq!(requests(&env).await.1, 8, "a healthy feed: the default 6h trusts the last calls' states");
});

both_engines!(the_later_confirmation_wins_whatever_the_order_of_arrival, |db: TestDb| async move {
    let env = env_of(db, 1).await;
    let store = env.store().clone();
    let user = env.sandbox.users()[0].user_id.to_string();
    // in the past: a webhook's time is never taken to be after our "now"
    let t0 = Utc::now() - Duration::seconds(60);
    let at = |s: i64| t0 + Duration::seconds(s);
    let stale = |a: StateApplied| matches!(a, StateApplied::Stale);
    // the import's confirmation is older than every source below
    sqlx::query("UPDATE users SET state_confirmed_at = $1, state_changed_at = $1 WHERE user_id = $2")
        .bind((t0 - Duration::hours(1)).timestamp_millis())
        .bind(&user)
        .execute(env.db.pool())
        .await
        .unwrap();

    // process A asks at +1 s; a webhook says the user VERIFIED at +2 s and arrives
    // first; A's answer (UNVERIFIED) arrives after it: A saw an older state
    assert_eq!(webhook(&env, "evt-race-1", &user, "completed", at(2)).await, 200);
    let a = StateSource::fresh_state("process-a").asked(at(1));
    let applied = store.user_apply_state(&user, VerificationState::Unverified, at(5), &a).await.unwrap();
    assert!(stale(applied), "{applied:?}");
    assert_eq!(stored(&env, &user).await, ("VERIFIED".into(), Some("webhook".into()), Some(at(2).timestamp_millis())));

    // process B asks at +3 s and hears REJECTED: the latest confirmation, it wins
    let b = StateSource::fresh_state("process-b").asked(at(3));
    let applied = store.user_apply_state(&user, VerificationState::Rejected, at(4), &b).await.unwrap();
    assert!(matches!(applied, StateApplied::Applied { changed: true, .. }), "{applied:?}");
    assert_eq!(stored(&env, &user).await, ("REJECTED".into(), Some("api".into()), Some(at(3).timestamp_millis())));

    // a late webhook of a change at +2.5 s changes nothing, and neither does an
    // import of an export taken before B asked
    assert_eq!(webhook(&env, "evt-race-2", &user, "pending", at(2) + Duration::milliseconds(500)).await, 200);
    env.upsert_users(|_, r| {
        r.verification_state = VerificationState::Unverified;
        r.state_confirmed_at = Some(at(2));
    })
    .await;
    assert_eq!(stored(&env, &user).await, ("REJECTED".into(), Some("api".into()), Some(at(3).timestamp_millis())));

    // the same state confirmed later moves the confirmation only
    let sync = StateSource::sync("cli").asked(at(6));
    store.user_apply_state(&user, VerificationState::Rejected, at(6), &sync).await.unwrap();
    assert_eq!(stored(&env, &user).await, ("REJECTED".into(), Some("sync".into()), Some(at(6).timestamp_millis())));
    // and an import without a time is a confirmation at the import's time
    env.upsert_users(|_, r| r.verification_state = VerificationState::Unverified).await;
    let (state, source, _) = stored(&env, &user).await;
    assert_eq!((state.as_str(), source.as_deref()), ("UNVERIFIED", Some("import")));
});

both_engines!(a_recontact_costs_one_request_and_a_first_contact_two, |db: TestDb| async move {
    let env = env_of(db, 8).await;
    let fresh = "[audience]\nfresh_state_max_age = \"6h\"";
    // first contact: imported now (fresh), no access token: a refresh and the session
    let first = env.apply(&campaign_toml("first", fresh)).await;
    assert_eq!(env.run(&first).await.counts.notified, 8);
    assert_eq!(requests(&env).await, (8, 0, 8), "(tokens, profiles, sessions) of the first contact");
    // re-contact within the access token's life: the session alone
    let again = env.apply(&campaign_toml("again", fresh)).await;
    assert_eq!(env.run(&again).await.counts.notified, 8);
    assert_eq!(requests(&env).await, (8, 0, 16), "(tokens, profiles, sessions) after the re-contact");
    assert_eq!(env.sandbox.stats().await.violations, 0);
});
