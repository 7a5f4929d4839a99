//! Refresh-token reuse detection: a token that was rotated away, presented again, is
//! always counted; with `revoke-family` it also kills the user's whole chain and is a
//! violation.

use reqwest::StatusCode;
use reverify::domain::{Region, VerificationState};
use reverify::sandbox::{RefreshReuse, UserRecord, ViolationKind};
use serde_json::Value;

use super::common::{Env, record};

/// Refreshes with `token`, expecting success: (new refresh token, access token).
async fn rotate(env: &Env, token: &str) -> (String, String) {
    let (status, body) = env.refresh(token, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body["refresh_token"].as_str().unwrap().to_owned(), body["access_token"].as_str().unwrap().to_owned())
}

async fn assert_invalid_grant(env: &Env, token: &str, what: &str) {
    let (status, body) = env.refresh(token, false).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{what}: {body}");
    assert!(body["error_description"].is_string(), "{what}: {body}");
}

async fn stats_json(env: &Env) -> Value {
    env.http.get(env.url("/_sandbox/stats")).send().await.unwrap().json().await.unwrap()
}

async fn user_json(env: &Env, u: &UserRecord) -> Value {
    let r = env.http.get(env.url(&format!("/_sandbox/users/{}", u.user_id))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn two_users() -> (UserRecord, UserRecord) {
    (record(1, Region::Intl, VerificationState::Unverified), record(2, Region::Intl, VerificationState::Unverified))
}

#[tokio::test]
async fn revoke_family_kills_the_whole_chain_on_reuse_and_counts_a_violation() {
    let (u, other) = two_users();
    let env = Env::start_with(vec![u.clone(), other.clone()], |c| c.refresh_reuse = RefreshReuse::RevokeFamily).await;
    let older_access = env.sandbox.mint_access_token(&u.user_id).unwrap();
    // A -> B
    let (b, access_b) = rotate(&env, "rt_test_1").await;
    assert_eq!(env.get("/v1/user", &access_b, false).await.0, StatusCode::OK);

    // A again: refused, and the chain dies with it
    assert_invalid_grant(&env, "rt_test_1", "the reused token A").await;
    assert_invalid_grant(&env, &b, "the newest refresh token B, revoked with its chain").await;
    for (token, what) in [(&access_b, "the access token minted from B"), (&older_access, "an older access token")] {
        assert_eq!(env.get("/v1/user", token, false).await.0, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(env.get("/v1/user/verification", token, false).await.0, StatusCode::UNAUTHORIZED, "{what}");
    }

    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations_of(ViolationKind::RefreshReuse), 1, "{:?}", stats.violations_by_kind);
    assert_eq!(stats.violations, 1, "the reuse is in the total");
    assert_eq!(stats.refresh_token_reuses, 1, "B, revoked rather than rotated, is no reuse");
    assert_eq!((stats.sessions_issued, stats.too_many_requests.limit), (0, 0), "a reuse is not a 429");
    let json = stats_json(&env).await;
    assert_eq!(json["violations_by_kind"]["refresh_reuse"], 1, "{json}");
    assert_eq!(json["violations"], 1, "{json}");
    assert_eq!(json["refresh_token_reuses"], 1, "{json}");

    // the revoked token is exported as dead, and still listed among the handed-out ones
    let view = env.sandbox.user(&u.user_id).unwrap();
    assert_ne!(view.refresh_token, b);
    assert_invalid_grant(&env, &view.refresh_token, "the placeholder of a revoked chain").await;
    assert!(env.sandbox.spent_tokens().contains(&b));
    // another user's chain is untouched
    rotate(&env, "rt_test_2").await;
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn reject_mode_only_refuses_the_reused_token() {
    let (u, _) = two_users();
    let env = Env::start(vec![u.clone()]).await;
    let (b, _) = rotate(&env, "rt_test_1").await;
    assert_invalid_grant(&env, "rt_test_1", "the reused token").await;
    let (_, access_c) = rotate(&env, &b).await;
    assert_eq!(env.get("/v1/user", &access_c, false).await.0, StatusCode::OK, "the chain lives on");

    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{:?}", stats.violations_by_kind);
    assert_eq!(stats.violations_of(ViolationKind::RefreshReuse), 0);
    assert_eq!(stats.refresh_token_reuses, 1, "the reuse is seen all the same");
    let json = stats_json(&env).await;
    assert_eq!((json["refresh_token_reuses"].as_u64(), json["violations"].as_u64()), (Some(1), Some(0)), "{json}");
    assert_eq!(json["violations_by_kind"]["refresh_reuse"], 0, "{json}");
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_rotated_token_sent_to_the_other_backend_is_no_reuse() {
    let (u, _) = two_users();
    let env = Env::start_with(vec![u.clone()], |c| c.refresh_reuse = RefreshReuse::RevokeFamily).await;
    let (b, _) = rotate(&env, "rt_test_1").await;
    // the US backend never saw this international user's tokens
    let (status, body) = env.refresh("rt_test_1", true).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.refresh_token_reuses, stats.violations), (0, 0));
    rotate(&env, &b).await;
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn every_user_view_counts_refreshes_reuses_and_sessions() {
    let (u, other) = two_users();
    let env = Env::start_with(vec![u.clone(), other.clone()], |c| c.refresh_reuse = RefreshReuse::RevokeFamily).await;
    let (b, access) = rotate(&env, "rt_test_1").await;
    env.session(&access, false).await.unwrap();
    rotate(&env, &b).await;
    // an older token of the chain than the last one rotated away
    assert_invalid_grant(&env, "rt_test_1", "reuse").await;
    assert_invalid_grant(&env, &b, "reuse after the chain was revoked").await;

    let views = env.sandbox.user_views();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].user_id, u.user_id.as_str());
    assert_eq!(
        (views[0].token_refreshes, views[0].refresh_token_reuses, views[0].sessions_issued, views[0].violations),
        (2, 2, 1, 2)
    );
    assert_eq!(views[1].user_id, other.user_id.as_str());
    assert_eq!((views[1].token_refreshes, views[1].refresh_token_reuses, views[1].sessions_issued), (0, 0, 0));
    assert_eq!(env.sandbox.user(&u.user_id).unwrap(), views[0]);

    let json = user_json(&env, &u).await;
    assert_eq!(
        (&json["token_refreshes"], &json["refresh_token_reuses"], &json["sessions_issued"], &json["violations"]),
        (&Value::from(2), &Value::from(2), &Value::from(1), &Value::from(2)),
        "{json}"
    );
    let json = user_json(&env, &other).await;
    assert_eq!((&json["token_refreshes"], &json["refresh_token_reuses"]), (&Value::from(0), &Value::from(0)), "{json}");
    let stats = env.sandbox.stats().await;
    assert_eq!((stats.refresh_token_reuses, stats.violations_of(ViolationKind::RefreshReuse)), (2, 2));
    env.sandbox.shutdown().await;
}
