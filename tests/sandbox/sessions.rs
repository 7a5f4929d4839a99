//! Session URLs: real pages on the sandbox, single use, expiring; the outcome moves
//! the user's state and sends a signed `kyc.status.changed` webhook.

use std::time::Duration as StdDuration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reverify::domain::{Region, VerificationState};
use reverify::sandbox::WebhookTarget;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::common::{Env, record};

#[tokio::test]
async fn a_session_url_is_a_page_that_works_once() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start(vec![u.clone()]).await;
    let token = env.access_token(&u).await;
    let url = env.session(&token, false).await.unwrap();
    let prefix = format!("{}session/", env.sandbox.base_url());
    assert!(url.starts_with(&prefix), "{url} should point back at the sandbox");
    let page = env.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for outcome in ["verified", "rejected", "abandoned"] {
        assert!(html.contains(&format!("?outcome={outcome}")), "a button for {outcome}");
    }
    let done = env.http.get(format!("{url}?outcome=verified")).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let (_, _, p) = env.get("/v1/user", &token, false).await;
    assert_eq!(p["verificationState"], "VERIFIED", "no decision delay: verified at once");
    // single use: the page and the outcome are gone
    assert_eq!(env.http.get(&url).send().await.unwrap().status(), StatusCode::GONE);
    let again = env.http.post(format!("{url}?outcome=rejected")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::GONE);
    assert_eq!(env.sandbox.user(&u.user_id).unwrap().verification_state, VerificationState::Verified);
    // unknown sessions and bad outcomes
    let unknown = format!("{prefix}0123456789abcdef");
    assert_eq!(env.http.get(&unknown).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let url2 = env.session(&token, false).await.unwrap();
    assert_eq!(env.http.post(format!("{url2}?outcome=maybe")).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.sessions_completed["verified"], 1);
    assert_eq!(stats.sessions_issued, 2);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_session_expires_after_its_ttl() {
    let u = record(1, Region::Intl, VerificationState::Unverified);
    let env = Env::start_with(vec![u.clone()], |c| c.session_ttl = StdDuration::from_secs(3600)).await;
    let token = env.access_token(&u).await;
    let url = env.session(&token, false).await.unwrap();
    env.clock.advance(chrono::Duration::minutes(59));
    assert_eq!(env.http.get(&url).send().await.unwrap().status(), StatusCode::OK);
    env.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(env.http.get(&url).send().await.unwrap().status(), StatusCode::GONE);
    let r = env.http.post(format!("{url}?outcome=verified")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(env.sandbox.user(&u.user_id).unwrap().verification_state, VerificationState::Unverified);
    env.sandbox.shutdown().await;
}

/// A webhook receiver: every POST's headers and raw body go down a channel.
async fn receiver() -> (url::Url, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks/baanx",
        axum::routing::post(move |h: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((h, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url::Url::parse(&format!("http://{addr}/hooks/baanx")).unwrap(), rx)
}

/// Checks the signature independently of the sandbox's own code and returns the event.
fn verified_event(key: &str, h: &HeaderMap, body: &[u8]) -> serde_json::Value {
    let ts = h["x-timestamp"].to_str().unwrap();
    let sig = hex::decode(h["x-signature"].to_str().unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).expect("the signature is HMAC-SHA256 of timestamp.body");
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    assert!(age.abs() <= 300, "timestamp is current");
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn outcomes_send_signed_webhooks_after_the_decision_delay() {
    let (hook, mut events) = receiver().await;
    let key = "whsec_test_key";
    let verified = record(1, Region::Intl, VerificationState::Unverified);
    let rejected = record(2, Region::Us, VerificationState::Unverified);
    let env = Env::start_with(vec![verified.clone(), rejected.clone()], |c| {
        c.webhook = Some(WebhookTarget { url: hook, key: reverify::Secret::new(key) });
        c.decision_delay = StdDuration::from_millis(200);
    })
    .await;

    let token = env.access_token(&verified).await;
    let url = env.session(&token, false).await.unwrap();
    let r = env.http.post(format!("{url}?outcome=verified")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, _, p) = env.get("/v1/user", &token, false).await;
    assert_eq!(p["verificationState"], "PENDING", "pending until the decision");

    let (h, body) = events.recv().await.unwrap();
    let pending = verified_event(key, &h, &body);
    assert_eq!(pending["event_object"]["status"], "pending");
    let (h, body) = events.recv().await.unwrap();
    let done = verified_event(key, &h, &body);
    assert_eq!(done["api_version"], "v1");
    assert_eq!(done["event_category"], "kyc");
    assert_eq!(done["event_type"], "kyc.status.changed");
    assert_eq!(done["user_id"], verified.user_id.as_str());
    assert_eq!(done["event_object"]["status"], "completed");
    assert!(done["event_object"]["failure_code"].is_null());
    assert_eq!(done["event_object_id"], pending["event_object_id"], "one verification");
    assert_ne!(done["event_id"], pending["event_id"]);
    assert!(uuid::Uuid::parse_str(done["event_id"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(done["occurred_at"].as_str().unwrap()).is_ok());
    assert!(!String::from_utf8_lossy(&body).contains(url.rsplit('/').next().unwrap()), "no session id in events");
    let (_, _, p) = env.get("/v1/user", &token, false).await;
    assert_eq!(p["verificationState"], "VERIFIED");

    let token = env.access_token(&rejected).await;
    let url = env.session(&token, true).await.unwrap();
    env.http.get(format!("{url}?outcome=rejected")).send().await.unwrap();
    let (h, body) = events.recv().await.unwrap();
    assert_eq!(verified_event(key, &h, &body)["event_object"]["status"], "pending");
    let (h, body) = events.recv().await.unwrap();
    let failed = verified_event(key, &h, &body);
    assert_eq!(failed["event_object"]["status"], "failed");
    let code = failed["event_object"]["failure_code"].as_str().expect("a failure_code");
    let (_, reason) = reverify::sandbox::webhook::FAILURES
        .iter()
        .find(|(c, _)| *c == code)
        .unwrap_or_else(|| panic!("{code} is not one of the sandbox's rejection codes"));
    assert_eq!(failed["event_object"]["failure_reason"], *reason);
    assert_eq!(env.sandbox.user(&rejected.user_id).unwrap().verification_state, VerificationState::Rejected);

    // abandoning sends nothing and leaves the state
    let other = env.session(&token, true).await;
    assert!(other.is_err(), "rejected: in cooldown");
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.webhooks_delivered, 4);
    assert_eq!(stats.webhooks_failed, 0);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn with_no_decision_delay_the_events_still_arrive_in_order() {
    let (hook, mut events) = receiver().await;
    let u = record(1, Region::Intl, VerificationState::Rejected);
    let env = Env::start_with(vec![u.clone()], |c| {
        c.webhook = Some(WebhookTarget { url: hook, key: reverify::Secret::new("k") });
    })
    .await;
    env.clock.advance(chrono::Duration::hours(25));
    let token = env.access_token(&u).await;
    for outcome in ["verified", "abandoned"] {
        let url = env.session(&token, false).await.unwrap();
        env.http.post(format!("{url}?outcome={outcome}")).send().await.unwrap();
    }
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (h, body) = events.recv().await.unwrap();
        statuses.push(verified_event("k", &h, &body)["event_object"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["pending", "completed"]);
    assert!(events.try_recv().is_err(), "an abandoned session sends nothing");
    env.sandbox.shutdown().await;
}
