//! Shared set-up: a sandbox with a few known users and a plain reqwest client.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use reverify::domain::{EmailAddress, ManualClock, Region, UserId, VerificationState};
use reverify::sandbox::{Sandbox, SandboxConfig, SandboxHandle, UserRecord, UserSource};
use serde_json::Value;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// A user of the given region and state, with a known refresh token.
pub fn record(n: u32, region: Region, state: VerificationState) -> UserRecord {
    UserRecord {
        user_id: UserId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap(),
        email: EmailAddress::parse(&format!("u{n}@example.test")).unwrap(),
        first_name: "Test".into(),
        last_name: format!("User{n}"),
        locale: "en-GB".into(),
        timezone: "Europe/London".into(),
        region,
        country: if region == Region::Us { "US".into() } else { "GB".into() },
        verification_state: state,
        rejected_at: None,
        refresh_token: Some(format!("rt_test_{n}")),
        tags: vec![],
    }
}

/// A running sandbox on a manual clock, and a client.
pub struct Env {
    pub sandbox: SandboxHandle,
    pub clock: ManualClock,
    pub http: reqwest::Client,
}

impl Env {
    pub async fn start(users: Vec<UserRecord>) -> Env {
        Self::start_with(users, |_| {}).await
    }

    pub async fn start_with(users: Vec<UserRecord>, tweak: impl FnOnce(&mut SandboxConfig)) -> Env {
        let clock = ManualClock::new(t0());
        let mut config = SandboxConfig {
            users: UserSource::Records(users),
            clock: Arc::new(clock.clone()),
            ..SandboxConfig::default()
        };
        tweak(&mut config);
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        Env { sandbox, clock, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        self.sandbox.base_url().join(path).unwrap().to_string()
    }

    /// POST /v1/auth/oauth/token with the right client key.
    pub async fn refresh(&self, token: &str, us: bool) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/v1/auth/oauth/token"))
            .header("x-client-key", self.sandbox.client_key())
            .header("x-us-env", if us { "true" } else { "false" })
            .json(&serde_json::json!({ "grant_type": "refresh_token", "refresh_token": token }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// An access token for a user, through the real token endpoint.
    pub async fn access_token(&self, u: &UserRecord) -> String {
        let current = self.sandbox.user(&u.user_id).unwrap().refresh_token;
        let (status, body) = self.refresh(&current, u.region == Region::Us).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A user call with the right client key and region header.
    pub async fn get(&self, path: &str, token: &str, us: bool) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req =
            self.http.get(self.url(path)).header("x-client-key", self.sandbox.client_key()).bearer_auth(token);
        if us {
            req = req.header("x-us-env", "true");
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// GET /v1/user/verification; the session URL on success.
    pub async fn session(&self, token: &str, us: bool) -> Result<String, (StatusCode, Value)> {
        let (status, _, body) = self.get("/v1/user/verification", token, us).await;
        if status == StatusCode::OK { Ok(body["sessionUrl"].as_str().unwrap().to_owned()) } else { Err((status, body)) }
    }
}
