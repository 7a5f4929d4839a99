//! Issue 4's proof over a real SMTP server: one email per eligible user carrying
//! that user's own session; ineligible users get nothing and each has a reason;
//! two workers at once notify each user once; retry-failed completes a run that
//! had injected failures; a message whose SMTP connection was lost after its data is
//! recorded `delivery_unknown` and never sent again.

use std::collections::HashMap;
use std::sync::Arc;

use reverify::both_engines;
use reverify::domain::{UserId, VerificationState};
use reverify::engine::Progress;
use reverify::notify::testing::{Fault, ReceivedMail, SmtpServer};
use reverify::sandbox::{SandboxConfig, SessionOutcome, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};

/// The recipient address and the session link of each message.
fn parse(mails: &[ReceivedMail]) -> Vec<(String, String)> {
    mails
        .iter()
        .map(|m| {
            let to = m.header("To").expect("To");
            let to = to.rsplit('<').next().unwrap().trim_end_matches('>').trim().to_owned();
            let text = m.text.clone().expect("a text part");
            let link = text.split_whitespace().find(|w| w.contains("/session/")).expect("a link").to_owned();
            (to, link)
        })
        .collect()
}

async fn env_with_smtp(db: TestDb, users: usize, smtp: &SmtpServer) -> Env {
    let mut env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Generate(users), seed: 11, ..Default::default() })
            .await;
    env.settings.outbox_dir = None;
    env.settings.smtp_url = Some(smtp.url());
    env
}

both_engines!(each_eligible_user_gets_one_email_with_their_own_session, |db: TestDb| async move {
    let smtp = SmtpServer::start();
    let env = env_with_smtp(db, 80, &smtp).await;
    // Users the sandbox knows as VERIFIED or PENDING are stored as UNVERIFIED, so that
    // they become targets and the run's fresh state must catch them.
    sqlx::query(
        "UPDATE users SET verification_state = 'UNVERIFIED' WHERE verification_state IN ('VERIFIED', 'PENDING')",
    )
    .execute(&sqlx::AnyPool::connect(&env.db.url).await.unwrap())
    .await
    .unwrap();
    let c = env.apply(&campaign_toml("proof", "")).await;
    let report = env.run(&c).await;

    let users = env.sandbox.users();
    let now = chrono::Utc::now();
    let eligible: HashMap<String, &reverify::sandbox::UserRecord> = users
        .iter()
        .filter(|u| match u.verification_state {
            VerificationState::Unverified => true,
            VerificationState::Rejected => u.rejected_at.is_some_and(|r| now - r >= chrono::Duration::hours(24)),
            _ => false,
        })
        .map(|u| (u.email.as_str().to_owned(), u))
        .collect();
    let mails = smtp.messages();
    let sent = parse(&mails);
    assert_eq!(sent.len(), eligible.len(), "one email per eligible user");
    assert_eq!(report.counts.notified as usize, eligible.len());
    let mut seen = HashMap::new();
    for (to, _) in &sent {
        assert!(eligible.contains_key(to), "{to} is not eligible but got an email");
        *seen.entry(to.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1));

    // each link is the session the sandbox issued for that very user: completing it
    // verifies that user and nobody else
    for (to, link) in sent.iter().take(10) {
        let user = eligible[to];
        assert!(env.sandbox.complete_session(link, SessionOutcome::Verified), "the link works once");
        let view = env.sandbox.user(&user.user_id).unwrap();
        assert_eq!(view.verification_state, VerificationState::Verified, "{to}'s link verified {to}");
        assert!(!env.sandbox.complete_session(link, SessionOutcome::Verified), "and only once");
    }

    // every ineligible user got nothing and has a recorded reason
    let pool = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    for u in users.iter().filter(|u| !eligible.contains_key(u.email.as_str())) {
        let row = sqlx::query("SELECT status, reason FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
            .bind(c.campaign_id)
            .bind(u.user_id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
        let (status, reason): (String, Option<String>) = (row.get("status"), row.get("reason"));
        let expected = match u.verification_state {
            VerificationState::Verified => ("skipped", "already_verified"),
            VerificationState::Pending => ("skipped", "pending"),
            _ => ("deferred", "rejection_cooldown"),
        };
        assert_eq!((status.as_str(), reason.as_deref()), (expected.0, Some(expected.1)), "{}", u.email);
    }
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

async fn two_workers_at_once_on_postgres_notify_each_user_once(db: TestDb) {
    let smtp = SmtpServer::start();
    let env = env_with_smtp(db, 150, &smtp).await;
    let c = env.apply(&campaign_toml("pair", "")).await;
    let (a, b) = (env.worker(), env.worker());
    let (ra, rb) = tokio::join!(
        a.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()),
        b.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new())
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let sent = parse(&smtp.messages());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (to, _) in &sent {
        *seen.entry(to.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(sent.len() as i64, ra.counts.notified + rb.counts.notified);
    assert_eq!(env.sandbox.stats().await.violations, 0);
}
reverify::postgres_only!(
    two_workers_at_once_on_postgres_notify_each_user_once,
    two_workers_at_once_on_postgres_notify_each_user_once
);

both_engines!(retry_failed_completes_a_run_with_injected_failures, |db: TestDb| async move {
    let smtp = SmtpServer::start();
    let env = env_with_smtp(db, 60, &smtp).await;
    let c = env.apply(&campaign_toml("flaky", "")).await;
    // suspend a few users: 403, failed/forbidden; then lift it and retry
    let victims: Vec<UserId> = env
        .sandbox
        .users()
        .into_iter()
        .filter(|u| u.verification_state == VerificationState::Unverified)
        .take(3)
        .map(|u| u.user_id)
        .collect();
    for v in &victims {
        env.sandbox.suspend(v).unwrap();
    }
    let first = env.run(&c).await;
    assert_eq!(first.counts.failed, 3, "{first:?}");
    let before = smtp.messages().len();
    for v in &victims {
        env.sandbox.unsuspend(v).unwrap();
    }
    assert_eq!(env.store().target_requeue_failed(c.campaign_id, chrono::Utc::now()).await.unwrap(), 3);
    let second = env.run(&c).await;
    assert_eq!(second.counts.notified, 3, "{second:?}");
    assert_eq!(smtp.messages().len(), before + 3);
    let p = env.store().campaign_progress(c.campaign_id, chrono::Utc::now()).await.unwrap();
    assert_eq!(p.count(reverify::domain::TargetStatus::Failed), 0);
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

both_engines!(a_message_lost_after_its_data_is_delivery_unknown_and_not_resent, |db: TestDb| async move {
    let mut env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Generate(30), seed: 11, ..Default::default() }).await;
    let victim = env
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.verification_state == VerificationState::Unverified)
        .expect("an unverified user");
    let address = victim.email.as_str().to_owned();
    // the server keeps the victim's message, then drops the connection before its reply,
    // every time: a resend would show as a second stored message
    let smtp = SmtpServer::start_with(&[Fault::accept_then_drop(&address, None)]);
    env.settings.outbox_dir = None;
    env.settings.smtp_url = Some(smtp.url());
    let c = env.apply(&campaign_toml("lost", "")).await;
    let first = env.run(&c).await;
    let to_victim = || parse(&smtp.messages()).into_iter().filter(|(to, _)| *to == address).count();
    assert_eq!(to_victim(), 1, "one attempt, and the message arrived");
    assert_eq!(first.counts.failed, 1, "{first:?}");
    let others = first.counts.notified;
    assert!(others > 0, "{first:?}");

    let pool = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    let target = || async {
        let row = sqlx::query(
            "SELECT status, reason, lease_owner, finalized_at FROM campaign_targets \
             WHERE campaign_id = $1 AND user_id = $2",
        )
        .bind(c.campaign_id)
        .bind(victim.user_id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        let fin: Option<i64> = row.get("finalized_at");
        let owner: Option<String> = row.get("lease_owner");
        (row.get::<String, _>("status"), row.get::<Option<String>, _>("reason"), owner, fin.is_some())
    };
    assert_eq!(target().await, ("failed".into(), Some("delivery_unknown".into()), None, true));
    let ledger: Vec<String> =
        sqlx::query("SELECT status FROM verification_sessions WHERE campaign_id = $1 AND user_id = $2")
            .bind(c.campaign_id)
            .bind(victim.user_id.as_str())
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("status"))
            .collect();
    assert_eq!(ledger, ["unknown"], "the session keeps counting against the user's limits");
    let event: String =
        sqlx::query("SELECT detail FROM events WHERE campaign_id = $1 AND user_id = $2 AND kind = 'target.failed'")
            .bind(c.campaign_id)
            .bind(victim.user_id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("detail");
    assert!(event.contains("delivery_unknown"), "{event}");

    // the next run re-queues undelivered targets, not this one: nothing is sent again
    let second = env.run(&c).await;
    assert_eq!(second.counts.notified, 0, "{second:?}");
    assert_eq!(to_victim(), 1, "never resent");
    assert_eq!(smtp.messages().len() as i64, others + 1);
    assert_eq!(target().await, ("failed".into(), Some("delivery_unknown".into()), None, true));
    let p = env.store().campaign_progress(c.campaign_id, chrono::Utc::now()).await.unwrap();
    assert_eq!(p.count(reverify::domain::TargetStatus::Failed), 1);
    assert_eq!(env.sandbox.stats().await.violations, 0);
});
