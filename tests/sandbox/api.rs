//! Tokens, headers and the profile: the checks the real API makes on every call.

use reqwest::StatusCode;
use reverify::domain::{Region, VerificationState};

use super::common::{Env, record};

#[tokio::test]
async fn refresh_rotates_and_the_old_token_dies_at_once() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let (status, body) = env.refresh("rt_test_1", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 21600);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["refresh_token_expires_in"].as_i64().unwrap() >= 184 * 86400);
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, "rt_test_1");
    let (status, body) = env.refresh("rt_test_1", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].is_string());
    let (status, _) = env.refresh(&rotated, false).await;
    assert_eq!(status, StatusCode::OK, "the rotated token works once");
    assert_ne!(env.sandbox.users()[0].refresh_token.as_deref(), Some(rotated.as_str()), "export has the newest");
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn access_tokens_expire_after_the_ttl_and_on_demand() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    env.clock.advance(chrono::Duration::hours(6) - chrono::Duration::milliseconds(1));
    let (status, _, body) = env.get("/v1/user", &token, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    env.clock.advance(chrono::Duration::milliseconds(1));
    let (status, _, body) = env.get("/v1/user", &token, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired after exactly 6 h");
    assert!(body["message"].is_string());

    // the control endpoint kills a fresh token at once
    let token = env.access_token(&u).await;
    let r = env.http.post(env.url(&format!("/_sandbox/users/{}/expire-tokens", u.user_id))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _, _) = env.get("/v1/user/verification", &token, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.sandbox.stats().await.sessions_issued, 0);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn bearer_must_be_present_well_formed_and_known() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let key = env.sandbox.client_key().to_owned();
    for auth in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer at_unknown"), Some("Bearer a b")] {
        let mut req = env.http.get(env.url("/v1/user")).header("x-client-key", &key);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["message"].is_string(), "{auth:?}");
    }
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn client_key_missing_or_wrong() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| c.client_key = Some("ck_right".into())).await;
    assert_eq!(env.sandbox.client_key(), "ck_right");
    let body = serde_json::json!({ "grant_type": "refresh_token", "refresh_token": "rt_test_1" });
    for key in [None, Some("ck_wrong")] {
        let mut req = env.http.post(env.url("/v1/auth/oauth/token")).json(&body);
        if let Some(k) = key {
            req = req.header("x-client-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "token call with {key:?}");
        let b: serde_json::Value = r.json().await.unwrap();
        assert!(b["message"].is_string());
    }
    // the refresh token was not spent by the refused calls
    let token = env.access_token(&u).await;
    let r = env.http.get(env.url("/v1/user")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "user call without a client key");
    let r =
        env.http.get(env.url("/v1/user")).bearer_auth(&token).header("x-client-key", "ck_wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "user call with another client's key");
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_region_header_must_match_the_user() {
    let us = record(1, Region::Us, VerificationState::Unverified);
    let intl = record(2, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![us.clone(), intl.clone()]).await;
    // a US refresh token is unknown to the international backend
    let (status, body) = env.refresh("rt_test_1", false).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let us_token = env.access_token(&us).await;
    let intl_token = env.access_token(&intl).await;
    assert_eq!(env.get("/v1/user", &us_token, false).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(env.get("/v1/user", &intl_token, true).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(env.get("/v1/user/verification", &us_token, false).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, profile) = env.get("/v1/user", &us_token, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["countryOfResidence"], "US");
    assert!(profile["ssn"].is_string() && profile["usState"].is_string());
    let (status, _, profile) = env.get("/v1/user", &intl_token, false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(profile["ssn"].is_null());
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn profile_has_the_documented_fields() {
    let u = record(1, Region::Intl, VerificationState::Rejected);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    let (status, _, p) = env.get("/v1/user", &token, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["id"], u.user_id.as_str());
    assert_eq!(p["email"], "u1@example.test");
    assert_eq!(p["verificationState"], "REJECTED");
    for f in [
        "firstName",
        "lastName",
        "dateOfBirth",
        "phoneNumber",
        "phoneCountryCode",
        "addressLine1",
        "city",
        "zip",
        "countryOfResidence",
        "countryOfNationality",
        "createdAt",
    ] {
        assert!(p[f].is_string(), "{f} missing in {p}");
    }
    for f in ["addressLine2", "usState", "ssn"] {
        assert!(p.get(f).is_some(), "{f} (nullable) missing");
    }
    assert!(chrono::NaiveDate::parse_from_str(p["dateOfBirth"].as_str().unwrap(), "%Y-%m-%d").is_ok());
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn suspended_users_get_403_and_revoked_or_expired_refresh_tokens_invalid_grant() {
    let a = record(1, Region::Intl, VerificationState::Unverified);
    let b = record(2, Region::Intl, VerificationState::Unverified);
    let c = record(3, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![a.clone(), b.clone(), c.clone()]).await;
    let token = env.access_token(&a).await;
    let r = env.http.post(env.url(&format!("/_sandbox/users/{}/suspend", a.user_id))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(env.get("/v1/user", &token, false).await.0, StatusCode::FORBIDDEN);
    assert_eq!(env.get("/v1/user/verification", &token, false).await.0, StatusCode::FORBIDDEN);
    env.sandbox.unsuspend(&a.user_id).unwrap();
    assert_eq!(env.get("/v1/user", &token, false).await.0, StatusCode::OK);

    let r = env.http.post(env.url(&format!("/_sandbox/users/{}/revoke", b.user_id))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = env.refresh("rt_test_2", false).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));

    env.clock.advance(chrono::Duration::days(184));
    let (status, body) = env.refresh("rt_test_3", false).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "184 days on");

    let r =
        env.http.post(env.url("/_sandbox/users/00000000-0000-4000-8000-999999999999/suspend")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn token_request_errors_are_oauth_errors() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u]).await;
    let post = |body: reqwest::Body, ct: &'static str| {
        env.http
            .post(env.url("/v1/auth/oauth/token"))
            .header("x-client-key", env.sandbox.client_key())
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases = [
        (r#"{"grant_type":"password","refresh_token":"x"}"#, "unsupported_grant_type"),
        (r#"{"refresh_token":"x"}"#, "invalid_request"),
        (r#"{"grant_type":"refresh_token"}"#, "invalid_request"),
        ("not json", "invalid_request"),
    ];
    for (body, error) in cases {
        let r = post(body.into(), "application/json").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(b["error"], error, "{body}");
    }
    // the form encoding of OAuth works too
    let r = post("grant_type=refresh_token&refresh_token=rt_test_1".into(), "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    env.sandbox.shutdown().await;
}
