//! A deliberately broken Baanx: it grants tokens, then answers user calls with
//! cut-off JSON, HTML, or a 401 that no fresh token cures. The sandbox is a faithful
//! API and never does these; this stub exists only for those rows of the table.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reverify::baanx::{BaanxClient, BaanxError, ErrorClass, MemoryVault};
use reverify::domain::{Region, UserId};

use crate::common::{USER_A, fast_config};

const SECRET_URL: &str = "https://verify.example/s/SECRETSESSION0123456789";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    TruncatedJson,
    Html,
    AlwaysUnauthorized,
    /// The token endpoint rotates but sends no access token.
    GrantWithoutAccessToken,
}

struct Stub {
    mode: Mutex<Mode>,
    tokens: AtomicU64,
    user_calls: AtomicU64,
    bearers: Mutex<Vec<String>>,
}

async fn token(State(s): State<Arc<Stub>>) -> Response {
    let n = s.tokens.fetch_add(1, Ordering::SeqCst) + 1;
    if *s.mode.lock().unwrap() == Mode::GrantWithoutAccessToken {
        return axum::Json(serde_json::json!({"refresh_token": format!("rt_stub_{n}_0123456789abcdef")}))
            .into_response();
    }
    axum::Json(serde_json::json!({
        "access_token": format!("at_stub_{n}_0123456789abcdef"),
        "expires_in": 21600,
        "refresh_token": format!("rt_stub_{n}_0123456789abcdef"),
    }))
    .into_response()
}

async fn user_call(State(s): State<Arc<Stub>>, h: HeaderMap) -> Response {
    s.user_calls.fetch_add(1, Ordering::SeqCst);
    let bearer = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    s.bearers.lock().unwrap().push(bearer);
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::TruncatedJson => {
            (StatusCode::OK, [("content-type", "application/json")], format!(r#"{{"sessionUrl": "{SECRET_URL}"#))
                .into_response()
        }
        Mode::Html => (
            StatusCode::OK,
            [("content-type", "text/html")],
            format!("<html><body>Maintenance. Your link: {SECRET_URL}</body></html>"),
        )
            .into_response(),
        Mode::AlwaysUnauthorized | Mode::GrantWithoutAccessToken => {
            (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"message": "Not authenticated"}))).into_response()
        }
    }
}

async fn start(mode: Mode) -> (Arc<Stub>, url::Url) {
    let stub = Arc::new(Stub {
        mode: Mutex::new(mode),
        tokens: AtomicU64::new(0),
        user_calls: AtomicU64::new(0),
        bearers: Mutex::new(vec![]),
    });
    let app = Router::new()
        .route("/v1/auth/oauth/token", post(token))
        .route("/v1/user", get(user_call))
        .route("/v1/user/verification", get(user_call))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (stub, url::Url::parse(&format!("http://{addr}")).unwrap())
}

fn client(base: url::Url) -> (BaanxClient, MemoryVault, UserId) {
    let vault = MemoryVault::new();
    let user = UserId::parse(USER_A).unwrap();
    vault.insert(&user, "rt_initial_0123456789abcdef");
    let c = BaanxClient::new(fast_config(base, "stub-key"), Arc::new(vault.clone())).unwrap();
    (c, vault, user)
}

fn assert_hidden(e: &BaanxError) {
    let shown = format!("{e} | {e:?} | {:?}", std::error::Error::source(e));
    assert!(!shown.contains("SECRETSESSION") && !shown.contains("verify.example"), "leaked: {shown}");
    assert!(!shown.contains("at_stub_") && !shown.contains("rt_stub_") && !shown.contains("rt_initial"), "{shown}");
}

#[tokio::test]
async fn truncated_json_is_malformed_with_status_and_scrubbed_excerpt() {
    let (stub, base) = start(Mode::TruncatedJson).await;
    let (c, _, user) = client(base);
    let e = c.start_verification(&user, Region::Intl).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Malformed, "{e}");
    assert_eq!(e.status(), Some(reqwest::StatusCode::OK));
    let msg = e.to_string();
    assert!(msg.contains("200") && msg.contains("sessionUrl") && msg.contains("[redacted]"), "{msg}");
    assert_hidden(&e);
    // a malformed answer is not retried: it may already have created a session
    assert_eq!(stub.user_calls.load(Ordering::SeqCst), 1);

    let e = c.get_user(&user, Region::Intl).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Malformed, "{e}");
    assert_hidden(&e);
}

#[tokio::test]
async fn an_html_page_is_malformed_and_hides_the_url_it_contains() {
    let (_stub, base) = start(Mode::Html).await;
    let (c, _, user) = client(base);
    let e = c.start_verification(&user, Region::Intl).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Malformed, "{e}");
    assert!(e.to_string().contains("Maintenance"), "the excerpt should help a human: {e}");
    assert_hidden(&e);
}

#[tokio::test]
async fn a_second_401_is_unauthorized_after_exactly_one_refresh() {
    let (stub, base) = start(Mode::AlwaysUnauthorized).await;
    let (c, vault, user) = client(base);
    let e = c.get_user(&user, Region::Intl).await.unwrap_err();
    assert!(matches!(e, BaanxError::Unauthorized { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Unauthorized);
    assert_hidden(&e);
    // one token for the first try, one fresh one for the single retry
    assert_eq!(stub.tokens.load(Ordering::SeqCst), 2);
    assert_eq!(stub.user_calls.load(Ordering::SeqCst), 2);
    let bearers = stub.bearers.lock().unwrap().clone();
    assert_eq!(bearers, ["Bearer at_stub_1_0123456789abcdef", "Bearer at_stub_2_0123456789abcdef"]);
    // each rotation was persisted
    assert_eq!(vault.token(&user).as_deref(), Some("rt_stub_2_0123456789abcdef"));
}

#[tokio::test]
async fn an_unreadable_grant_still_keeps_the_rotated_refresh_token() {
    let (stub, base) = start(Mode::GrantWithoutAccessToken).await;
    let (c, vault, user) = client(base);
    let e = c.get_user(&user, Region::Intl).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Malformed, "{e}");
    assert!(e.to_string().contains("access_token"), "{e}");
    assert_hidden(&e);
    assert_eq!(vault.token(&user).as_deref(), Some("rt_stub_1_0123456789abcdef"));
    assert_eq!(stub.user_calls.load(Ordering::SeqCst), 0);
}
