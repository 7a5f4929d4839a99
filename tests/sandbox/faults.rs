//! Fault flags do what they say, and random faults follow the seed.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reverify::domain::{Region, VerificationState};
use reverify::sandbox::{Faults, Latency, ScriptedFault};

use super::common::{Env, record};

async fn statuses(env: &Env, token: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(env.get("/v1/user", token, false).await.0);
    }
    out
}

#[tokio::test]
async fn error_and_throttle_rates_inject_500_and_429_with_retry_after() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| {
        c.faults = Faults { throttle_rate: 1.0, retry_after: Duration::from_secs(7), ..Faults::default() }
    })
    .await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    let (status, headers, body) = env.get("/v1/user/verification", &token, false).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "7");
    assert!(body["message"].is_string());
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.too_many_requests.injected, stats.violations), (1, 0), "injected 429s are no violation");
    env.sandbox.shutdown().await;

    let env = Env::start_with(vec![u.clone()], |c| c.faults = Faults { error_rate: 1.0, ..Faults::default() }).await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    assert_eq!(statuses(&env, &token, 3).await, vec![StatusCode::INTERNAL_SERVER_ERROR; 3]);
    assert_eq!(env.sandbox.stats().await.injected_server_errors, 3);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn random_faults_follow_the_seed() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let faults = Faults { error_rate: 0.3, throttle_rate: 0.2, seed: 42, ..Faults::default() };
    let mut runs = Vec::new();
    for seed in [42, 42, 43] {
        let env = Env::start_with(vec![u.clone()], |c| c.faults = Faults { seed, ..faults.clone() }).await;
        let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
        runs.push(statuses(&env, &token, 60).await);
        env.sandbox.shutdown().await;
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert_ne!(runs[0], runs[2], "another seed, other faults");
    let count = |s| runs[0].iter().filter(|x| **x == s).count();
    assert!(count(StatusCode::INTERNAL_SERVER_ERROR) > 5, "{:?}", runs[0]);
    assert!(count(StatusCode::TOO_MANY_REQUESTS) > 3, "{:?}", runs[0]);
    assert!(count(StatusCode::OK) > 15, "{:?}", runs[0]);
}

#[tokio::test]
async fn timeouts_hang_past_the_client_timeout_and_do_not_block_shutdown() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| {
        c.faults = Faults { timeout_rate: 1.0, hang: Duration::from_secs(600), ..Faults::default() }
    })
    .await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let err = client
        .get(env.url("/v1/user/verification"))
        .header("x-client-key", env.sandbox.client_key())
        .bearer_auth(&token)
        .send()
        .await
        .expect_err("the request hangs");
    assert!(err.is_timeout(), "{err}");
    // a second request left hanging while the sandbox stops
    let pending = tokio::spawn({
        let url = env.url("/v1/user");
        let key = env.sandbox.client_key().to_owned();
        let token = token.clone();
        async move { reqwest::Client::new().get(url).header("x-client-key", key).bearer_auth(token).send().await }
    });
    while env.sandbox.stats().await.injected_timeouts < 2 {
        tokio::task::yield_now().await;
    }
    env.sandbox.shutdown().await;
    let answered = pending.await.unwrap();
    assert!(answered.is_err() || answered.unwrap().status().is_server_error(), "released by the shutdown");
    assert_eq!(env.sandbox.stats().await.injected_timeouts, 2);
}

#[tokio::test]
async fn latency_delays_each_request() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| {
        c.faults = Faults { latency: Latency::Fixed(Duration::from_millis(150)), ..Faults::default() }
    })
    .await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    let start = Instant::now();
    assert_eq!(env.get("/v1/user", &token, false).await.0, StatusCode::OK);
    // a lower bound only: the request cannot be answered before the injected delay
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_rate_cap_answers_429_without_counting_a_violation() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env =
        Env::start_with(vec![u.clone()], |c| c.faults = Faults { rate_cap: Some(1.0), ..Faults::default() }).await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    // a burst of 10 at a cap of 1/s: the bucket holds one request, so at least 8 of
    // them are refused however slow this machine is
    let burst = futures::future::join_all((0..10).map(|_| env.get("/v1/user", &token, false))).await;
    let capped: Vec<_> = burst.iter().filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(capped.len() >= 8, "{:?}", burst.iter().map(|b| b.0).collect::<Vec<_>>());
    assert!(capped.iter().all(|(_, h, _)| h["retry-after"] == "1"));
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.too_many_requests.rate_cap, capped.len() as u64);
    assert_eq!(stats.violations, 0);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn scripted_faults_come_first() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.sandbox.mint_access_token(&u.user_id).unwrap();
    env.sandbox.fail_next(ScriptedFault::ServerError, 2);
    env.sandbox.fail_next(ScriptedFault::Throttle { retry_after_secs: 3 }, 1);
    let got = statuses(&env, &token, 4).await;
    assert_eq!(
        got,
        vec![
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::OK
        ]
    );
    // control endpoints are never faulted
    env.sandbox.fail_next(ScriptedFault::ServerError, 1);
    let r = env.http.get(env.url("/_sandbox/stats")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    env.sandbox.shutdown().await;
}
