//! Issue 13's single-process items, each with a test that fails without its change:
//! an ambiguous session answer is never sent again on the same reservation (item 6),
//! and a per-user 429 for the rejection cooldown defers the user by 24 hours, not
//! one (item 4).

use std::sync::Arc;

use chrono::Utc;
use reverify::both_engines;
use reverify::domain::VerificationState;
use reverify::engine::Progress;
use reverify::sandbox::{SandboxConfig, ScriptedFault, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};

fn one_user(state: VerificationState, rejected_hours_ago: Option<i64>) -> SandboxConfig {
    let mut users = reverify::sandbox::users::generate_unverified(1, 5, Utc::now());
    users[0].verification_state = state;
    users[0].rejected_at = rejected_hours_ago.map(|h| Utc::now() - chrono::Duration::hours(h));
    SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() }
}

async fn sessions(env: &Env) -> Vec<(String, Option<i64>)> {
    sqlx::query("SELECT status, issued_at FROM verification_sessions")
        .fetch_all(env.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("status"), r.get("issued_at")))
        .collect()
}

both_engines!(a_5xx_to_the_session_call_is_not_sent_again_on_the_same_reservation, |db: TestDb| async move {
    let env = Env::with_sandbox(db, one_user(VerificationState::Unverified, None)).await;
    let c = env.apply(&campaign_toml("ambiguous", "")).await;
    let mut worker = env.worker();
    worker.config.fresh_state = false;
    // the access token first, so that the next request is the session call
    let user = env.sandbox.users()[0].clone();
    worker.client.get_user(&user.user_id, user.region).await.unwrap();
    env.sandbox.fail_next(ScriptedFault::ServerError, 1);
    let report = worker.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    assert_eq!(report.counts.notified, 0, "{report:?}");
    let stats = env.sandbox.stats().await;
    assert_eq!(
        stats.requests.get("GET /v1/user/verification").copied(),
        Some(1),
        "the session call was sent again after a 5xx: {stats:?}"
    );
    // the reservation stays a live session in the ledger, and the user is tried later
    assert_eq!(sessions(&env).await, vec![("unknown".to_owned(), None)]);
    let row = sqlx::query("SELECT status, reason, not_before FROM campaign_targets WHERE campaign_id = $1")
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("status"), "pending");
    assert_eq!(row.get::<Option<String>, _>("reason").as_deref(), Some("api_unavailable"));
    assert!(row.get::<Option<i64>, _>("not_before").is_some());
});

both_engines!(the_apis_rejection_cooldown_defers_a_user_by_a_day, |db: TestDb| async move {
    // rejected an hour ago at Baanx; the database has not heard yet
    let env = Env::with_sandbox(db, one_user(VerificationState::Rejected, Some(1))).await;
    sqlx::query("UPDATE users SET verification_state = 'UNVERIFIED', rejected_at = NULL")
        .execute(env.db.pool())
        .await
        .unwrap();
    let c = env.apply(&campaign_toml("rejected", "")).await;
    let mut worker = env.worker();
    worker.config.fresh_state = false;
    let before = Utc::now();
    worker.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    let row = sqlx::query("SELECT status, reason, not_before FROM campaign_targets WHERE campaign_id = $1")
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("status"), "deferred");
    assert_eq!(row.get::<Option<String>, _>("reason").as_deref(), Some("rejection_cooldown"));
    let not_before = reverify::store::from_millis(row.get::<Option<i64>, _>("not_before").unwrap());
    assert!(not_before >= before + chrono::Duration::hours(24), "deferred only until {not_before}");
});
