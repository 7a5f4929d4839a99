//! Every per-user limit: the last allowed session succeeds, the next gets 429 and is
//! counted as a violation, and the limit lifts at exactly its boundary.

use std::time::Duration as StdDuration;

use chrono::Duration;
use reqwest::StatusCode;
use reverify::domain::{DeferReason, Region, VerificationState};
use reverify::sandbox::SessionOutcome;

use super::common::{Env, record, t0};

fn assert_limited(r: Result<String, (StatusCode, serde_json::Value)>, reason: DeferReason) {
    let (status, body) = r.expect_err("should be refused");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], reason.as_str(), "{body}");
    assert!(body["message"].is_string());
}

#[tokio::test]
async fn tenth_session_in_a_day_ok_eleventh_refused() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    // short sessions, so that the concurrency limit stays out of the way
    let env = Env::start_with(vec![u.clone()], |c| c.session_ttl = StdDuration::from_secs(60)).await;
    let token = env.access_token(&u).await;
    for i in 0..10 {
        env.session(&token, false).await.unwrap_or_else(|e| panic!("session {} refused: {e:?}", i + 1));
        env.clock.advance(Duration::minutes(2));
    }
    assert_limited(env.session(&token, false).await, DeferReason::DailyCap);
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 1);
    assert_eq!(stats.violations_of(DeferReason::DailyCap), 1);
    assert_eq!(stats.too_many_requests.limit, 1);
    assert_eq!(stats.max_sessions_per_user_24h, 10);
    assert_eq!(stats.sessions_issued, 10);
    // the first session was at t0: it leaves the window at exactly t0 + 24 h
    env.clock.set(t0() + Duration::hours(24) - Duration::milliseconds(1));
    // (a new access token: the first one lived 6 h)
    let token = env.access_token(&u).await;
    assert_limited(env.session(&token, false).await, DeferReason::DailyCap);
    env.clock.set(t0() + Duration::hours(24));
    env.session(&token, false).await.expect("a slot freed");
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.violations, stats.max_sessions_per_user_24h), (2, 10));
    assert_eq!(env.sandbox.user(&u.user_id).unwrap().violations, 2);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn third_concurrent_session_ok_fourth_refused() {
    let u = record(1, Region::Intl, VerificationState::Verified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    let first = env.session(&token, false).await.expect("1st");
    env.clock.advance(Duration::hours(1));
    env.session(&token, false).await.expect("2nd");
    env.session(&token, false).await.expect("3rd");
    assert_limited(env.session(&token, false).await, DeferReason::Concurrency);
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.violations_of(DeferReason::Concurrency), stats.max_concurrent_sessions_per_user), (1, 3));
    // the first expires after exactly 24 h
    env.clock.set(t0() + Duration::hours(24) - Duration::milliseconds(1));
    let token = env.access_token(&u).await;
    assert_limited(env.session(&token, false).await, DeferReason::Concurrency);
    env.clock.set(t0() + Duration::hours(24));
    env.session(&token, false).await.expect("a slot freed by expiry");
    // completing a session frees its slot too (and does not count as expired use)
    assert!(!env.sandbox.complete_session(&first, SessionOutcome::Verified), "the first expired");
    assert_limited(env.session(&token, false).await, DeferReason::Concurrency);
    let view = env.sandbox.user(&u.user_id).unwrap();
    assert_eq!(view.active_sessions, 3);
    assert_eq!(env.sandbox.stats().await.max_concurrent_sessions_per_user, 3);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_completed_session_frees_its_concurrency_slot() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    let a = env.session(&token, false).await.unwrap();
    env.session(&token, false).await.unwrap();
    env.session(&token, false).await.unwrap();
    assert_limited(env.session(&token, false).await, DeferReason::Concurrency);
    assert!(env.sandbox.complete_session(&a, SessionOutcome::Verified));
    env.session(&token, false).await.expect("slot freed by completion");
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn cooldown_after_three_consecutive_failures_and_reset_by_success() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let v = record(2, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone(), v.clone()]).await;
    let token = env.access_token(&u).await;
    // two failures: no cooldown
    for _ in 0..2 {
        let s = env.session(&token, false).await.unwrap();
        assert!(env.sandbox.complete_session(&s, SessionOutcome::Abandoned));
    }
    let s = env.session(&token, false).await.expect("two failures are allowed");
    // the third failure (abandoned) starts a 1 h cooldown from its moment
    env.clock.advance(Duration::minutes(5));
    let failed_at = t0() + Duration::minutes(5);
    assert!(env.sandbox.complete_session(&s, SessionOutcome::Abandoned));
    assert_limited(env.session(&token, false).await, DeferReason::FailureCooldown);
    env.clock.set(failed_at + Duration::hours(1) - Duration::milliseconds(1));
    assert_limited(env.session(&token, false).await, DeferReason::FailureCooldown);
    env.clock.set(failed_at + Duration::hours(1));
    env.session(&token, false).await.expect("cooldown over after exactly 1 h");
    assert_eq!(env.sandbox.stats().await.violations_of(DeferReason::FailureCooldown), 2);

    // a verified session resets the run of failures
    let token = env.access_token(&v).await;
    for outcome in
        [SessionOutcome::Abandoned, SessionOutcome::Abandoned, SessionOutcome::Verified, SessionOutcome::Abandoned]
    {
        let s = env.session(&token, false).await.expect("no cooldown");
        assert!(env.sandbox.complete_session(&s, outcome));
    }
    env.session(&token, false).await.expect("only one failure since the success");
    assert_eq!(env.sandbox.user(&v.user_id).unwrap().consecutive_failures, 1);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn twenty_four_hours_after_a_rejection() {
    let mut seeded = record(1, Region::Intl, VerificationState::Rejected);
    seeded.rejected_at = Some(t0() - Duration::hours(23));
    let fresh = record(2, Region::Us, VerificationState::Unverified);
    let env = Env::start(vec![seeded.clone(), fresh.clone()]).await;
    let token = env.access_token(&seeded).await;
    assert_limited(env.session(&token, false).await, DeferReason::RejectionCooldown);
    env.clock.set(t0() + Duration::hours(1) - Duration::milliseconds(1));
    assert_limited(env.session(&token, false).await, DeferReason::RejectionCooldown);
    env.clock.set(t0() + Duration::hours(1));
    env.session(&token, false).await.expect("exactly 24 h after the rejection");

    // a rejection through a session starts the cooldown at the decision
    let token = env.access_token(&fresh).await;
    let s = env.session(&token, true).await.unwrap();
    assert!(env.sandbox.complete_session(&s, SessionOutcome::Rejected));
    let view = env.sandbox.user(&fresh.user_id).unwrap();
    assert_eq!(view.verification_state, VerificationState::Rejected);
    assert_eq!(view.rejected_at, Some(t0() + Duration::hours(1)));
    assert_limited(env.session(&token, true).await, DeferReason::RejectionCooldown);
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations_of(DeferReason::RejectionCooldown), 3);
    assert_eq!(stats.violations, 3);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn limits_can_be_switched_off_for_benchmarks() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| c.enforce_limits = false).await;
    let token = env.access_token(&u).await;
    for _ in 0..12 {
        env.session(&token, false).await.expect("no limits");
    }
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.violations, stats.max_sessions_per_user_24h), (0, 12));
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn parallel_requests_for_one_user_get_exactly_three_sessions() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    let results = futures::future::join_all((0..20).map(|_| env.session(&token, false))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_limited(r, DeferReason::Concurrency);
    }
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.violations, stats.max_concurrent_sessions_per_user), (17, 3));
    // every verification request is in the per-second histogram
    assert_eq!(stats.verification_per_second.iter().sum::<u64>(), 20);
    assert!(stats.verification_busiest_second >= 1 && stats.verification_busiest_second <= 20);
    assert_eq!(stats.requests["GET /v1/user/verification"], 20);
    env.sandbox.shutdown().await;
}
