//! The sandbox's HTTP surface (axum): the three Baanx endpoints, the session pages,
//! and the `/_sandbox` control endpoints. Each handler is thin: it reads headers,
//! asks [`State`], and maps the answer onto the status codes of baanx-api.md.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::faults::{Fate, ScriptedFault};
use super::state::{GrantError, Refusal, SessionError, SessionOutcome, State};
use super::stats::SandboxRoute;
use crate::domain::UserId;

type Shared = Arc<State>;

/// The router over shared state.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/auth/oauth/token", post(token))
        .route("/v1/user", get(user))
        .route("/v1/user/verification", get(verification))
        .route("/session/{id}", get(session_get).post(session_post))
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/gateway", post(gateway))
        .route("/_sandbox/users/{id}", get(user_view))
        .route("/_sandbox/users/{id}/{action}", post(user_control))
        .fallback(not_found)
        .with_state(state)
}

/// A partner's SMS or push gateway, as far as the fallback channel sees one: it
/// takes the signed JSON post (a message for one user) and counts it.
async fn gateway(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return message(StatusCode::BAD_REQUEST, "not JSON");
    }
    s.stats.gateway_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "queued" }))).into_response()
}

fn message(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "message": msg }))).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": error, "error_description": description }))).into_response()
}

fn too_many(retry_after_secs: u64, msg: &str) -> Response {
    let mut r = message(StatusCode::TOO_MANY_REQUESTS, msg);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// Counts the request and applies its fate: `Some(response)` when a fault answers
/// instead of the handler.
async fn gate(s: &State, e: SandboxRoute) -> Option<Response> {
    s.stats.request(e);
    match s.faults.decide() {
        Fate::Serve(d) if d.is_zero() => None,
        Fate::Serve(d) => {
            tokio::select! {
                () = tokio::time::sleep(d) => None,
                () = s.shutdown.cancelled() => Some(message(StatusCode::SERVICE_UNAVAILABLE, "Sandbox shutting down")),
            }
        }
        Fate::RateCapped => {
            s.stats.throttled_rate_cap.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let secs = s.faults.faults().retry_after.as_secs().max(1);
            Some(too_many(secs, "Too many requests"))
        }
        Fate::Inject(ScriptedFault::ServerError) => {
            s.stats.injected_500.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(message(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error (injected)"))
        }
        Fate::Inject(ScriptedFault::Throttle { retry_after_secs }) => {
            s.stats.throttled_injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(too_many(retry_after_secs, "Too many requests"))
        }
        Fate::Inject(ScriptedFault::Timeout) => {
            s.stats.injected_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Hang: the client times out first and drops the connection, which drops
            // this future; otherwise answer as a gateway would.
            let hang: Duration = s.faults.faults().hang;
            tokio::select! {
                () = tokio::time::sleep(hang) => {}
                () = s.shutdown.cancelled() => {}
            }
            Some(message(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout (injected)"))
        }
    }
}

/// The client key header: `None` when missing, else whether it matches.
fn client_key_matches(s: &State, h: &HeaderMap) -> Option<bool> {
    let v = h.get("x-client-key")?;
    Some(bool::from(v.as_bytes().ct_eq(s.client_key.as_bytes())))
}

fn us_env(h: &HeaderMap) -> bool {
    h.get("x-us-env").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    refresh_token: Option<String>,
}

async fn token(AxState(s): AxState<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&s, SandboxRoute::Token).await {
        return r;
    }
    match client_key_matches(&s, &h) {
        None => return message(StatusCode::UNAUTHORIZED, "Missing x-client-key header"),
        Some(false) => return message(StatusCode::UNAUTHORIZED, "Invalid client key"),
        Some(true) => {}
    }
    let is_form = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let req = if is_form {
        let mut req = TokenRequest { grant_type: None, refresh_token: None };
        for (k, v) in url::form_urlencoded::parse(&body) {
            match k.as_ref() {
                "grant_type" => req.grant_type = Some(v.into_owned()),
                "refresh_token" => req.refresh_token = Some(v.into_owned()),
                _ => {}
            }
        }
        req
    } else {
        match serde_json::from_slice::<TokenRequest>(&body) {
            Ok(r) => r,
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the body must be a JSON object"),
        }
    };
    match req.grant_type.as_deref() {
        Some("refresh_token") => {}
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the refresh_token grant is supported",
            );
        }
    }
    let Some(refresh) = req.refresh_token.filter(|t| !t.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required");
    };
    match s.refresh(&refresh, us_env(&h)) {
        Ok(t) => {
            let mut r = axum::Json(json!({
                "access_token": t.access_token,
                "expires_in": t.expires_in,
                "refresh_token": t.refresh_token,
                "refresh_token_expires_in": t.refresh_token_expires_in,
                "token_type": "Bearer",
            }))
            .into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(GrantError::InvalidGrant(why)) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
    }
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Unauthenticated(m) => message(StatusCode::UNAUTHORIZED, m),
        Refusal::Forbidden(m) => message(StatusCode::FORBIDDEN, m),
        Refusal::Limit(reason) => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "message": format!("Verification session limit reached: {}", reason.as_str()),
                "reason": reason.as_str(),
            })),
        )
            .into_response(),
    }
}

/// The checks every user call makes, in the real API's order: client key present,
/// bearer token valid on this backend, then the client key must be the user's.
fn user_auth(s: &State, h: &HeaderMap) -> Result<(usize, u64), Refusal> {
    let key = client_key_matches(s, h).ok_or(Refusal::Unauthenticated("Missing x-client-key header"))?;
    let token = bearer(h).ok_or(Refusal::Unauthenticated("Not authenticated"))?;
    let who = s.authenticate(token, us_env(h))?;
    if !key {
        return Err(Refusal::Forbidden("Client key does not match the user's client"));
    }
    Ok(who)
}

async fn user(AxState(s): AxState<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, SandboxRoute::User).await {
        return r;
    }
    let (i, generation) = match user_auth(&s, &h) {
        Ok(w) => w,
        Err(r) => return refusal(r),
    };
    match s.profile(i, generation) {
        Ok(p) => axum::Json(p).into_response(),
        Err(r) => refusal(r),
    }
}

/// The hot path's answer, serialised without building a JSON map.
#[derive(serde::Serialize)]
struct SessionBody<'a> {
    #[serde(rename = "sessionUrl")]
    session_url: &'a str,
}

async fn verification(AxState(s): AxState<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, SandboxRoute::Verification).await {
        return r;
    }
    let (i, generation) = match user_auth(&s, &h) {
        Ok(w) => w,
        Err(r) => return refusal(r),
    };
    match s.start_session(i, generation) {
        Ok(url) => axum::Json(SessionBody { session_url: &url }).into_response(),
        Err(r) => refusal(r),
    }
}

#[derive(Debug, Deserialize)]
struct OutcomeQuery {
    outcome: Option<String>,
}

/// The start of every session page: readable on a phone as on a desktop.
const PAGE_HEAD: &str =
    "<!doctype html><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";

fn session_error_page(e: SessionError) -> Response {
    let (status, text) = match e {
        SessionError::NotFound => (StatusCode::NOT_FOUND, "This verification link is not valid."),
        SessionError::AlreadyUsed => (StatusCode::GONE, "This verification link has already been used."),
        SessionError::Expired => (StatusCode::GONE, "This verification link has expired."),
    };
    (status, Html(format!("{PAGE_HEAD}<title>Verification</title><p>{text}</p>"))).into_response()
}

fn valid_session_id(id: &str) -> bool {
    id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn session_get(AxState(s): AxState<Shared>, Path(id): Path<String>, Query(q): Query<OutcomeQuery>) -> Response {
    if q.outcome.is_some() {
        return complete(&s, &id, q.outcome.as_deref());
    }
    s.stats.request(SandboxRoute::SessionPage);
    if !valid_session_id(&id) {
        return session_error_page(SessionError::NotFound);
    }
    match s.session_status(&id) {
        Err(e) => session_error_page(e),
        // The id is in the page's form actions only; the page is never cached.
        Ok(()) => {
            let mut r = Html(format!(
                "{PAGE_HEAD}<title>Baanx sandbox: identity verification</title>\
                 <h1>Identity verification (sandbox)</h1>\
                 <p>A real session would ask for an ID document and a selfie. Choose how this one ends.</p>\
                 <form method=\"post\" action=\"{id}?outcome=verified\"><button>Verified</button></form>\
                 <form method=\"post\" action=\"{id}?outcome=rejected\"><button>Rejected</button></form>\
                 <form method=\"post\" action=\"{id}?outcome=abandoned\"><button>Abandon</button></form>"
            ))
            .into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}

async fn session_post(AxState(s): AxState<Shared>, Path(id): Path<String>, Query(q): Query<OutcomeQuery>) -> Response {
    complete(&s, &id, q.outcome.as_deref())
}

fn complete(s: &Shared, id: &str, outcome: Option<&str>) -> Response {
    s.stats.request(SandboxRoute::SessionComplete);
    let Some(outcome) = outcome.and_then(|o| o.parse::<SessionOutcome>().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<!doctype html><p>outcome must be one of verified, rejected, abandoned.</p>".to_owned()),
        )
            .into_response();
    };
    if !valid_session_id(id) {
        return session_error_page(SessionError::NotFound);
    }
    match s.complete(id, outcome) {
        Ok(()) => {
            let text = match outcome {
                SessionOutcome::Verified => "Thank you: your documents were submitted and are being checked.",
                SessionOutcome::Rejected => "Your documents were submitted; the check will fail (sandbox).",
                SessionOutcome::Abandoned => "You left the verification. Ask for a new link to try again.",
            };
            Html(format!("{PAGE_HEAD}<title>Verification</title><p>{text}</p>")).into_response()
        }
        Err(e) => session_error_page(e),
    }
}

async fn stats(AxState(s): AxState<Shared>) -> Response {
    s.stats.request(SandboxRoute::Control);
    axum::Json(s.stats.snapshot()).into_response()
}

fn find_user(s: &State, id: &str) -> Option<usize> {
    s.find(&UserId::parse(id).ok()?)
}

async fn user_view(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    s.stats.request(SandboxRoute::Control);
    match find_user(&s, &id) {
        Some(i) => axum::Json(s.view(i)).into_response(),
        None => message(StatusCode::NOT_FOUND, "No such user"),
    }
}

async fn user_control(AxState(s): AxState<Shared>, Path((id, action)): Path<(String, String)>) -> Response {
    s.stats.request(SandboxRoute::Control);
    let Some(i) = find_user(&s, &id) else {
        return message(StatusCode::NOT_FOUND, "No such user");
    };
    match action.as_str() {
        "suspend" => s.set_suspended(i, true),
        "unsuspend" => s.set_suspended(i, false),
        "expire-tokens" => s.expire_tokens(i),
        "expire-refresh-token" => s.expire_refresh_token(i),
        "revoke" => s.revoke(i),
        _ => return message(StatusCode::NOT_FOUND, "No such action"),
    }
    axum::Json(s.view(i)).into_response()
}

async fn not_found(AxState(s): AxState<Shared>) -> Response {
    s.stats.request(SandboxRoute::NotFound);
    message(StatusCode::NOT_FOUND, "Not found")
}
