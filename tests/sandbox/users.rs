//! Users: generated deterministically from a seed; exported and re-loaded intact.

use std::sync::Arc;

use reqwest::StatusCode;
use reverify::domain::{ManualClock, Region, VerificationState};
use reverify::sandbox::{Sandbox, SandboxConfig, Stats, UserSource, userfile};

use super::common::{Env, t0};

async fn generated(seed: u64, n: usize) -> reverify::sandbox::SandboxHandle {
    Sandbox::start(SandboxConfig {
        users: UserSource::Generate(n),
        seed,
        clock: Arc::new(ManualClock::new(t0())),
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn generation_is_deterministic_from_the_seed() {
    let a = generated(7, 200).await;
    let b = generated(7, 200).await;
    let c = generated(8, 200).await;
    assert_eq!(a.users(), b.users());
    assert_ne!(a.users(), c.users());
    let users = a.users();
    assert_eq!(users.len(), 200);
    assert_eq!(users[41].email.as_str(), "user42@example.test");
    for s in VerificationState::ALL {
        assert!(users.iter().any(|u| u.verification_state == s), "{s}");
    }
    assert!(users.iter().any(|u| u.region == Region::Us));
    assert!(users.iter().all(|u| u.refresh_token.is_some() && !u.timezone.is_empty() && !u.locale.is_empty()));
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn export_then_seed_round_trips_and_the_tokens_work() {
    let dir = tempfile::tempdir().unwrap();
    let first = generated(11, 50).await;
    let csv = dir.path().join("users.csv");
    userfile::write_users(&csv, &first.users()).unwrap();
    first.shutdown().await;

    let loaded = userfile::read_users(&csv).unwrap();
    assert_eq!(loaded.len(), 50);
    let env = Env::start(loaded.clone()).await;
    assert_eq!(env.sandbox.users(), loaded, "the same users, tokens included");
    let us = loaded.iter().find(|u| u.region == Region::Us).unwrap();
    let (status, body) = env.refresh(us.refresh_token.as_deref().unwrap(), true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // a second export has the rotated token
    let again = dir.path().join("again.csv");
    userfile::write_users(&again, &env.sandbox.users()).unwrap();
    let reread = userfile::read_users(&again).unwrap();
    let same = reread.iter().find(|u| u.user_id == us.user_id).unwrap();
    assert_eq!(same.refresh_token.as_deref(), body["refresh_token"].as_str());
    env.sandbox.shutdown().await;

    // JSON Lines with the same keys; a missing refresh token is derived from the seed
    let jsonl = dir.path().join("users.jsonl");
    std::fs::write(
        &jsonl,
        format!("{{\"user_id\":\"{}\",\"email\":\"x@example.test\",\"tags\":\"a;b\"}}\n", loaded[0].user_id),
    )
    .unwrap();
    let users = userfile::read_users(&jsonl).unwrap();
    assert_eq!(users[0].tags, vec!["a", "b"]);
    let env = Env::start(users).await;
    assert!(env.sandbox.users()[0].refresh_token.is_some());
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn stats_and_user_views_over_http() {
    let h = generated(3, 5).await;
    let user = h.users()[0].clone();
    let http = reqwest::Client::new();
    let view: serde_json::Value = http
        .get(h.base_url().join(&format!("/_sandbox/users/{}", user.user_id)).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["user_id"], user.user_id.as_str());
    assert_eq!(view["refresh_token"], user.refresh_token.as_deref().unwrap());
    let r = http.get(h.base_url().join("/_sandbox/users/not-a-user").unwrap()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http.get(h.base_url().join("/nowhere").unwrap()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let stats: Stats =
        http.get(h.base_url().join("/_sandbox/stats").unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats.requests["/_sandbox"], 3, "{stats:?}");
    assert_eq!(stats.requests["not found"], 1);
    assert_eq!(stats.violations, 0);
    h.shutdown().await;
}
