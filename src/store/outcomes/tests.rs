//! Outcomes on both engines: state changes, webhook dedupe and ordering, reminders.

use chrono::{Duration, TimeZone};

use super::*;
use crate::both_engines;
use crate::domain::spec::HumanDuration;
use crate::domain::spec::Reminders;
use crate::domain::{CampaignSpec, EmailAddress, Region, UserId};
use crate::store::events::EventFilter;
use crate::store::testing::TestDb;
use crate::store::users::{SealedToken, UserUpsert};

const A: &str = "6f9619ff-8b86-d011-b42d-00c04fc964f1";
const B: &str = "6f9619ff-8b86-d011-b42d-00c04fc964f2";
const C: &str = "6f9619ff-8b86-d011-b42d-00c04fc964f3";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap()
}

async fn user(s: &Store, id: &str, state: VerificationState) {
    let row = UserUpsert {
        user_id: UserId::parse(id).unwrap(),
        email: EmailAddress::parse(&format!("{}@example.com", &id[..8])).unwrap(),
        first_name: None,
        last_name: None,
        locale: None,
        timezone: None,
        region: Region::Intl,
        country: None,
        verification_state: state,
        rejected_at: None,
        tags: vec![],
        signed_up_at: None,
        token: Some(SealedToken { key_id: "k".into(), ciphertext: vec![1, 2, 3] }),
        state_confirmed_at: None,
        access: None,
    };
    s.user_upsert_batch(&[row], t0() - Duration::days(30)).await.unwrap();
}

async fn campaign(s: &Store) -> i64 {
    let text = "name = \"outcomes\"\n";
    let spec = CampaignSpec::from_toml(text, "t.toml").unwrap();
    s.campaign_apply(&spec, text, "test", t0()).await.unwrap().1.campaign_id
}

/// A target notified at `at` whose session expires a day later.
async fn notified(s: &Store, campaign_id: i64, id: &str, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO campaign_targets (campaign_id, user_id, step, status, attempts, sessions, notifications, \
           created_at, updated_at, notified_at, first_notified_at, session_expires_at) \
         VALUES ($1, $2, 0, 'notified', 1, 1, 1, $3, $3, $3, $3, $4)",
    )
    .bind(campaign_id)
    .bind(id)
    .bind(to_millis(at))
    .bind(to_millis(at + Duration::hours(24)))
    .execute(s.pool())
    .await
    .unwrap();
}

#[derive(Debug, PartialEq)]
struct Target {
    status: String,
    step: i64,
    reason: Option<String>,
    started_at: Option<i64>,
    outcome: Option<String>,
    outcome_at: Option<i64>,
}

async fn target(s: &Store, campaign_id: i64, id: &str) -> Target {
    let r = sqlx::query(
        "SELECT status, step, reason, started_at, outcome, outcome_at FROM campaign_targets \
         WHERE campaign_id = $1 AND user_id = $2",
    )
    .bind(campaign_id)
    .bind(id)
    .fetch_one(s.pool())
    .await
    .unwrap();
    Target {
        status: r.try_get("status").unwrap(),
        step: r.try_get("step").unwrap(),
        reason: r.try_get("reason").unwrap(),
        started_at: r.try_get("started_at").unwrap(),
        outcome: r.try_get("outcome").unwrap(),
        outcome_at: r.try_get("outcome_at").unwrap(),
    }
}

async fn standing(s: &Store, id: &str) -> (String, i64, Option<i64>, Option<i64>) {
    let u = s.user_get(&UserId::parse(id).unwrap()).await.unwrap().unwrap();
    (
        u.verification_state.as_str().to_owned(),
        u.consecutive_failures,
        u.rejected_at.map(to_millis),
        u.synced_at.map(to_millis),
    )
}

fn event(id: &str, user: &str, state: VerificationState, at: DateTime<Utc>) -> KycEvent {
    KycEvent {
        event_id: id.into(),
        user_id: user.into(),
        state,
        occurred_at: Some(at),
        failure_code: None,
        failure_reason: None,
    }
}

both_engines!(a_state_change_moves_the_user_and_their_targets_together, |db: TestDb| async move {
    let s = &db.store;
    user(s, A, VerificationState::Unverified).await;
    let c = campaign(s).await;
    notified(s, c, A, t0()).await;

    // PENDING after the message: started
    let at1 = t0() + Duration::minutes(10);
    let r = s.user_apply_state(A, VerificationState::Pending, at1, &StateSource::sync("t")).await.unwrap();
    assert!(matches!(r, StateApplied::Applied { changed: true, started: 1, .. }), "{r:?}");
    assert_eq!(target(s, c, A).await.started_at, Some(to_millis(at1)));
    assert_eq!(standing(s, A).await, ("PENDING".into(), 0, None, Some(to_millis(at1))));

    // REJECTED: the time, a failure, the outcome; the target stays notified
    let at2 = t0() + Duration::minutes(40);
    s.user_apply_state(A, VerificationState::Rejected, at2, &StateSource::sync("t")).await.unwrap();
    assert_eq!(standing(s, A).await, ("REJECTED".into(), 1, Some(to_millis(at2)), Some(to_millis(at2))));
    let t = target(s, c, A).await;
    assert_eq!(
        (t.status.as_str(), t.outcome.as_deref(), t.started_at),
        ("notified", Some("rejected"), Some(to_millis(at1)))
    );
    // the same answer again counts nothing twice
    s.user_apply_state(A, VerificationState::Rejected, at2 + Duration::minutes(1), &StateSource::sync("t"))
        .await
        .unwrap();
    assert_eq!(standing(s, A).await.1, 1);

    // VERIFIED: converted, the count reset
    let at3 = t0() + Duration::hours(30);
    let r = s.user_apply_state(A, VerificationState::Verified, at3, &StateSource::sync("t")).await.unwrap();
    assert!(matches!(r, StateApplied::Applied { converted: 1, .. }), "{r:?}");
    let t = target(s, c, A).await;
    assert_eq!(
        (t.status.as_str(), t.outcome.as_deref(), t.outcome_at),
        ("converted", Some("verified"), Some(to_millis(at3)))
    );
    assert_eq!(standing(s, A).await.1, 0);

    let kinds: Vec<String> = s
        .event_list(&EventFilter { campaign_id: Some(c), ..Default::default() }, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["campaign.applied", "target.started", "target.rejected", "target.converted"]);

    // an unknown user changes nothing and says so
    let r = s.user_apply_state(B, VerificationState::Verified, at3, &StateSource::sync("t")).await.unwrap();
    assert_eq!(r, StateApplied::UnknownUser);
});

both_engines!(webhooks_are_applied_once_and_never_out_of_order, |db: TestDb| async move {
    let s = &db.store;
    user(s, A, VerificationState::Unverified).await;
    let c = campaign(s).await;
    notified(s, c, A, t0()).await;
    let done = t0() + Duration::minutes(5);
    let now = t0() + Duration::minutes(6);

    // the decision arrives before the pending event that preceded it
    let r = s.webhook_apply(&event("e-done", A, VerificationState::Rejected, done), now).await.unwrap();
    assert!(matches!(r, WebhookResult::Recorded(StateApplied::Applied { rejected: 1, .. })), "{r:?}");
    for (id, at) in [("e-pending-tie", done), ("e-pending-early", done - Duration::minutes(2))] {
        let r = s.webhook_apply(&event(id, A, VerificationState::Pending, at), now).await.unwrap();
        assert_eq!(r, WebhookResult::Recorded(StateApplied::Stale), "{id}");
    }
    assert_eq!(standing(s, A).await.0, "REJECTED");
    // a replay of the decision: acknowledged, nothing counted twice
    let r = s.webhook_apply(&event("e-done", A, VerificationState::Rejected, done), now).await.unwrap();
    assert_eq!(r, WebhookResult::Duplicate);
    assert_eq!(standing(s, A).await.1, 1, "one failure, not two");
    // the rejection is dated on our clock (conservative), the outcome on the sender's
    assert_eq!(standing(s, A).await.2, Some(to_millis(now)));
    assert_eq!(target(s, c, A).await.outcome_at, Some(to_millis(done)));
    // a webhook never stamps synced_at: it is not a GET /v1/user
    assert_eq!(standing(s, A).await.3, None);

    // an unknown user: acknowledged, remembered, audited
    let r = s.webhook_apply(&event("e-ghost", B, VerificationState::Verified, done), now).await.unwrap();
    assert_eq!(r, WebhookResult::Recorded(StateApplied::UnknownUser));
    let r = s.webhook_apply(&event("e-ghost", B, VerificationState::Verified, done), now).await.unwrap();
    assert_eq!(r, WebhookResult::Duplicate);
    let ghost = EventFilter { kind: Some("webhook.unknown_user".into()), ..Default::default() };
    assert_eq!(s.event_list(&ghost, 0, 10).await.unwrap().len(), 1);
});

both_engines!(reminders_wait_for_expiry_and_stop_at_max, |db: TestDb| async move {
    let s = &db.store;
    user(s, A, VerificationState::Unverified).await;
    user(s, B, VerificationState::Verified).await;
    user(s, C, VerificationState::Unverified).await;
    let c = campaign(s).await;
    for id in [A, B, C] {
        notified(s, c, id, t0()).await;
    }
    let mut rem = Reminders {
        after: HumanDuration(std::time::Duration::from_secs(3600)),
        max: 1,
        template: "reminder".into(),
        include_rejected: false,
    };
    // `after` has passed but the session has not expired
    assert_eq!(s.target_requeue_reminders(c, &rem, t0() + Duration::hours(2)).await.unwrap(), 0);
    // C was rejected meanwhile
    s.user_apply_state(C, VerificationState::Rejected, t0() + Duration::hours(3), &StateSource::sync("t"))
        .await
        .unwrap();

    let day1 = t0() + Duration::hours(25);
    assert_eq!(s.target_requeue_reminders(c, &rem, day1).await.unwrap(), 1, "only the UNVERIFIED user");
    let t = target(s, c, A).await;
    assert_eq!((t.status.as_str(), t.step, t.reason.as_deref()), ("pending", 1, Some("reminder")));
    assert_eq!(target(s, c, B).await.status, "notified", "a VERIFIED user is not reminded");

    // the reminder goes out; after the next expiry, max = 1 holds
    sqlx::query(
        "UPDATE campaign_targets SET status = 'notified', reason = NULL, notified_at = $3, session_expires_at = $4 \
         WHERE campaign_id = $1 AND user_id = $2",
    )
    .bind(c)
    .bind(A)
    .bind(to_millis(day1))
    .bind(to_millis(day1 + Duration::hours(24)))
    .execute(s.pool())
    .await
    .unwrap();
    assert_eq!(s.target_requeue_reminders(c, &rem, day1 + Duration::hours(30)).await.unwrap(), 0);
    assert_eq!(target(s, c, A).await.step, 1);

    // include_rejected: C only once the 24 h cooldown from the rejection has passed
    rem.include_rejected = true;
    assert_eq!(s.target_requeue_reminders(c, &rem, t0() + Duration::hours(26)).await.unwrap(), 0);
    assert_eq!(s.target_requeue_reminders(c, &rem, t0() + Duration::hours(27)).await.unwrap(), 1);
    let t = target(s, c, C).await;
    assert_eq!((t.status.as_str(), t.step, t.outcome.as_deref()), ("pending", 1, Some("rejected")));

    let queued = s
        .event_list(&EventFilter { kind: Some("target.reminder_queued".into()), ..Default::default() }, 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].detail, Some(serde_json::json!({ "step": 1 })));

    // the funnel counts from the same rows
    let f = s.campaign_funnel(c, day1 + Duration::hours(30)).await.unwrap();
    assert_eq!((f.targeted, f.notified, f.verified, f.rejected), (3, 3, 0, 1));
});

both_engines!(a_rejection_webhook_for_a_rejected_user_moves_the_time_forward_only, |db: TestDb| async move {
    let s = &db.store;
    let rejected = |at: DateTime<Utc>| UserUpsert {
        user_id: UserId::parse(A).unwrap(),
        email: EmailAddress::parse("6f9619ff@example.com").unwrap(),
        first_name: None,
        last_name: None,
        locale: None,
        timezone: None,
        region: Region::Intl,
        country: None,
        verification_state: VerificationState::Rejected,
        rejected_at: Some(at),
        tags: vec![],
        signed_up_at: None,
        token: None,
        state_confirmed_at: None,
        access: None,
    };
    // rejected ten days ago, on file since thirty
    s.user_upsert_batch(&[rejected(t0() - Duration::days(10))], t0() - Duration::days(30)).await.unwrap();

    // Baanx rejects again (the PENDING in between was lost): the cooldown starts at
    // the receive time, as for a change of state
    let now = t0() + Duration::minutes(1);
    let r = s.webhook_apply(&event("e-1", A, VerificationState::Rejected, t0()), now).await.unwrap();
    assert!(matches!(r, WebhookResult::Recorded(StateApplied::Applied { changed: false, .. })), "{r:?}");
    assert_eq!(standing(s, A).await.2, Some(to_millis(now)));
    // a webhook never stamps synced_at
    assert_eq!(standing(s, A).await.3, None);

    // a time on file later than the receive time (a directory's) is not moved back
    let later = t0() + Duration::hours(5);
    s.user_upsert_batch(&[rejected(later)], now).await.unwrap();
    let r = s.webhook_apply(&event("e-2", A, VerificationState::Rejected, now), now + Duration::minutes(1)).await;
    assert!(matches!(r, Ok(WebhookResult::Recorded(StateApplied::Applied { .. }))), "{r:?}");
    assert_eq!(standing(s, A).await.2, Some(to_millis(later)));
});
