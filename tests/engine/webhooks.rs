//! `POST /webhooks/baanx` over real HTTP: bad signatures, stale timestamps, replays,
//! unknown users and oversized bodies are refused or ignored and change nothing; a
//! valid event is committed before the answer.

use chrono::Utc;
use reverify::Secret;
use reverify::both_engines;
use reverify::domain::{UserId, VerificationState};
use reverify::sandbox::signature;
use reverify::store::events::EventFilter;
use reverify::store::testing::TestDb;

use crate::common::Env;

const KEY: &str = "whsec_receiver";

fn body(event_id: &str, user: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "api_version": "v1",
        "event_id": event_id,
        "event_category": "kyc",
        "event_type": "kyc.status.changed",
        "user_id": user,
        "event_object_id": "kyc-1",
        "event_object_status": status,
        "event_object_changes": ["status"],
        "event_object": { "status": status, "failure_code": null, "failure_reason": null },
        "occurred_at": Utc::now().to_rfc3339(),
    }))
    .unwrap()
}

struct Poster {
    url: String,
    http: reqwest::Client,
}

impl Poster {
    /// Posts `body` signed with `key` at `ts` (Unix seconds); returns status and result.
    async fn post(&self, key: &str, ts: i64, body: &[u8]) -> (u16, String) {
        let ts = ts.to_string();
        let sig = signature(key.as_bytes(), &ts, body);
        self.send(Some((&ts, &sig)), body).await
    }

    async fn send(&self, headers: Option<(&str, &str)>, body: &[u8]) -> (u16, String) {
        let mut req = self.http.post(&self.url).header("content-type", "application/json").body(body.to_vec());
        if let Some((ts, sig)) = headers {
            req = req.header("X-Timestamp", ts).header("X-Signature", sig);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let result = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["result"].as_str().map(str::to_owned))
            .unwrap_or(text);
        (status, result)
    }
}

both_engines!(only_signed_fresh_new_events_change_anything, |db: TestDb| async move {
    let env = Env::new(db, 10).await;
    let store = env.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = reverify::webhooks::webhook_router(store.clone(), Secret::new(KEY));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let p = Poster { url: format!("http://{addr}/webhooks/baanx"), http: reqwest::Client::new() };

    let target = env
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.verification_state == VerificationState::Unverified)
        .expect("an UNVERIFIED user")
        .user_id;
    let state = || {
        let (store, id) = (store.clone(), target.clone());
        async move { store.user_get(&id).await.unwrap().unwrap().verification_state }
    };
    let changes = || {
        let (store, id) = (store.clone(), target.clone());
        async move {
            let f = EventFilter { user_id: Some(id), kind: Some("user.state_changed".into()), campaign_id: None };
            store.event_list(&f, 0, 100).await.unwrap().len()
        }
    };
    let now = Utc::now().timestamp();
    let good = body("evt-1", target.as_str(), "completed");

    // refused: no headers, a wrong key, a tampered body, a bad hex signature
    assert_eq!(p.send(None, &good).await.0, 401);
    assert_eq!(p.post("not-the-key", now, &good).await.0, 401);
    let ts = now.to_string();
    let sig = signature(KEY.as_bytes(), &ts, &good);
    let tampered = body("evt-1", target.as_str(), "failed");
    assert_eq!(p.send(Some((&ts, &sig)), &tampered).await.0, 401);
    assert_eq!(p.send(Some((&ts, "zz-not-hex")), &good).await.0, 401);
    // refused: correctly signed but more than 300 s off, either way (from a fresh
    // clock reading, with a margin: a slow machine may be seconds past `now` here)
    let fresh = || Utc::now().timestamp();
    assert_eq!(p.post(KEY, fresh() - 330, &good).await.0, 401);
    assert_eq!(p.post(KEY, fresh() + 330, &good).await.0, 401);
    // refused: too big, before anything is parsed
    let mut big = good.clone();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    assert_eq!(p.post(KEY, now, &big).await.0, 413);
    // refused: signed but not an event
    assert_eq!(p.post(KEY, now, b"{not json").await.0, 400);
    assert_eq!(state().await, VerificationState::Unverified, "a refused request changed the user");
    assert_eq!(changes().await, 0);
    // a valid event (its id is new: no refused request recorded it): applied, and
    // committed by the time the answer arrives
    assert_eq!(p.post(KEY, fresh() - 290, &good).await, (200, "applied".into()));
    assert_eq!(state().await, VerificationState::Verified);
    assert_eq!(changes().await, 1);
    // the same event again (Baanx retries with a fresh signature): acknowledged, ignored
    let metric = |text: &str, series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    };
    let dup = r#"reverify_webhook_events_total{result="duplicate"}"#;
    let timed = "reverify_webhook_duration_seconds_count";
    let before = reverify::telemetry::global().encode();
    assert_eq!(p.post(KEY, Utc::now().timestamp(), &good).await, (200, "duplicate".into()));
    let after = reverify::telemetry::global().encode();
    assert!(metric(&after, dup) > metric(&before, dup), "{after}");
    assert!(metric(&after, timed) > metric(&before, timed), "{after}");
    assert!(metric(&after, r#"reverify_webhook_events_total{result="applied"}"#) >= 1.0, "{after}");
    assert_eq!(changes().await, 1);
    // a late, older pending event does not undo the decision
    let late = serde_json::to_vec(&serde_json::json!({
        "event_id": "evt-0", "event_type": "kyc.status.changed", "user_id": target.as_str(),
        "event_object": { "status": "pending" }, "occurred_at": "2020-01-01T00:00:00Z",
    }))
    .unwrap();
    assert_eq!(p.post(KEY, now, &late).await, (200, "stale".into()));
    assert_eq!(state().await, VerificationState::Verified);
    // an unknown user: acknowledged and logged
    let ghost = UserId::parse("00000000-0000-4000-8000-00000000dead").unwrap();
    assert_eq!(p.post(KEY, now, &body("evt-2", ghost.as_str(), "failed")).await, (200, "unknown_user".into()));
    // another event type: acknowledged, ignored
    let other = serde_json::to_vec(&serde_json::json!({
        "event_id": "evt-3", "event_type": "card.created", "user_id": target.as_str(),
    }))
    .unwrap();
    assert_eq!(p.post(KEY, now, &other).await, (200, "ignored".into()));
    assert_eq!(changes().await, 1);
});
