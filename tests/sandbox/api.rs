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
