//! The shapes of the API's answers, read leniently.
//!
//! `GET /v1/user` carries personal data the worker has no use for (date of birth,
//! SSN, addresses, phone). Decision: those fields are never parsed into a struct, so
//! they cannot reach a log line or a database by accident; the body is read as a
//! JSON map, the few fields the worker needs are picked, and the map is dropped.

use reqwest::StatusCode;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::{ApiEndpoint, BaanxError, scrub_excerpt};
use crate::domain::{DeferReason, EmailAddress, SessionUrl, UserId, VerificationState};

/// What the worker needs of a user's profile. No date of birth, SSN, address or
/// phone number: those are dropped while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub id: UserId,
    pub verification_state: VerificationState,
    /// `None` when absent or not a valid address.
    pub email: Option<EmailAddress>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_of_residence: Option<String>,
    /// ISO 8601 as sent (`createdAt`), when present.
    pub created_at: Option<String>,
}

fn malformed(endpoint: ApiEndpoint, status: StatusCode, body: &[u8], problem: impl Into<String>) -> BaanxError {
    BaanxError::Malformed { endpoint, status, problem: problem.into(), excerpt: scrub_excerpt(body) }
}

fn object(endpoint: ApiEndpoint, status: StatusCode, body: &[u8]) -> Result<Map<String, Value>, BaanxError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(malformed(endpoint, status, body, "not a JSON object")),
        // serde_json's message names line and column, never the content
        Err(e) => Err(malformed(endpoint, status, body, format!("invalid JSON: {e}"))),
    }
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl UserProfile {
    /// Parses a `GET /v1/user` body. Only `id` and `verificationState` are required;
    /// other fields of the wrong type are treated as absent; unknown fields are
    /// ignored.
    ///
    /// # Errors
    /// [`BaanxError::Malformed`] naming the field.
    pub fn parse(status: StatusCode, body: &[u8]) -> Result<Self, BaanxError> {
        let ep = ApiEndpoint::User;
        let m = object(ep, status, body)?;
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(ep, status, body, "field `id` is missing or not a string"))?;
        let id = UserId::parse(id).map_err(|_| malformed(ep, status, body, "field `id` is not a UUID"))?;
        let state = m
            .get("verificationState")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(ep, status, body, "field `verificationState` is missing or not a string"))?;
        let verification_state = state.parse::<VerificationState>().map_err(|_| {
            malformed(
                ep,
                status,
                body,
                "field `verificationState` is not one of UNVERIFIED, PENDING, VERIFIED, REJECTED",
            )
        })?;
        Ok(Self {
            id,
            verification_state,
            email: opt_string(&m, "email").and_then(|e| EmailAddress::parse(&e).ok()),
            first_name: opt_string(&m, "firstName"),
            last_name: opt_string(&m, "lastName"),
            country_of_residence: opt_string(&m, "countryOfResidence"),
            created_at: opt_string(&m, "createdAt"),
        })
    }
}

/// A successful refresh-token grant. Tokens are zeroized on drop and not shown by
/// `Debug`.
pub(crate) struct TokenGrant {
    pub access_token: Zeroizing<String>,
    pub expires_in: std::time::Duration,
    /// `None` when the server did not rotate (the contract says it always does; the
    /// old token is then kept).
    pub refresh_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("expires_in", &self.expires_in)
            .field("rotated", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The contract's access-token lifetime, assumed when `expires_in` is missing.
const DEFAULT_EXPIRES_IN: u64 = 21_600;
/// The longest access-token life believed: a year.
const MAX_EXPIRES_IN: u64 = 366 * 86_400;

impl TokenGrant {
    /// Parses a `POST /v1/auth/oauth/token` success body.
    pub(crate) fn parse(status: StatusCode, body: &[u8]) -> Result<Self, BaanxError> {
        let ep = ApiEndpoint::Token;
        let m = object(ep, status, body)?;
        let access_token = m
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(ep, status, body, "field `access_token` is missing or not a string"))?;
        let expires_in = match m.get("expires_in") {
            None | Some(Value::Null) => DEFAULT_EXPIRES_IN,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| malformed(ep, status, body, "field `expires_in` is not a whole number"))?,
        };
        let refresh_token = m
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| Zeroizing::new(s.to_owned()));
        Ok(Self {
            access_token: Zeroizing::new(access_token.to_owned()),
            // bounded, so that a wild value cannot overflow the expiry instant
            expires_in: std::time::Duration::from_secs(expires_in.min(MAX_EXPIRES_IN)),
            refresh_token,
        })
    }
}

/// The rotated refresh token of a grant that is otherwise unreadable (no access
/// token, say), so that it is not lost: the old one is already dead.
pub(crate) fn salvage_refresh_token(body: &[u8]) -> Option<Zeroizing<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("refresh_token").and_then(Value::as_str).filter(|s| !s.is_empty()).map(|s| Zeroizing::new(s.to_owned()))
}

/// The OAuth error code of a token endpoint refusal (`{"error": "invalid_grant"}`).
pub(crate) fn oauth_error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("error").and_then(Value::as_str).map(str::to_owned)
}

/// The per-user limit a 429 names, when it names one: `Some(reason)` for a body
/// such as `{"message": "Verification session limit reached: daily_cap",
/// "reason": "daily_cap"}`, `Some(None)` for a limit message without a known
/// reason, `None` for a plain rate limit.
pub(crate) fn session_limit(body: &[u8]) -> Option<Option<DeferReason>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let reason = v.get("reason").and_then(Value::as_str).and_then(|r| {
        [DeferReason::DailyCap, DeferReason::Concurrency, DeferReason::FailureCooldown, DeferReason::RejectionCooldown]
            .into_iter()
            .find(|d| d.as_str() == r)
    });
    let says_limit =
        v.get("message").and_then(Value::as_str).is_some_and(|m| m.to_ascii_lowercase().contains("limit reached"));
    (reason.is_some() || says_limit).then_some(reason)
}

/// The `message` of an error body (`{"message": "Not authenticated"}`), scrubbed.
pub(crate) fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    match v.as_ref().and_then(|v| v.get("message").or_else(|| v.get("error"))).and_then(Value::as_str) {
        Some(m) => scrub_excerpt(m.as_bytes()),
        None => scrub_excerpt(body),
    }
}

/// Parses a `GET /v1/user/verification` body into the URL, which goes straight into
/// its redacting type. A malformed body's excerpt is scrubbed of the URL.
pub(crate) fn parse_session(status: StatusCode, body: &[u8]) -> Result<SessionUrl, BaanxError> {
    let ep = ApiEndpoint::Verification;
    let m = object(ep, status, body)?;
    let raw = m
        .get("sessionUrl")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(ep, status, body, "field `sessionUrl` is missing or not a string"))?;
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => Ok(SessionUrl::new(raw.to_owned())),
        _ => Err(malformed(ep, status, body, "field `sessionUrl` is not an http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    #[test]
    fn profile_is_lenient_and_drops_personal_data() {
        let body = format!(
            r#"{{"id":"{ID}","verificationState":"REJECTED","email":"a@example.com","firstName":7,
            "ssn":"123-45-6789","dateOfBirth":"1990-01-01","addressLine1":"1 Main St","newField":{{"x":1}}}}"#
        );
        let p = UserProfile::parse(StatusCode::OK, body.as_bytes()).unwrap();
        assert_eq!(p.id.as_str(), ID);
        assert_eq!(p.verification_state, VerificationState::Rejected);
        assert_eq!(p.email.as_ref().map(EmailAddress::as_str), Some("a@example.com"));
        assert_eq!(p.first_name, None);
        let shown = format!("{p:?}");
        assert!(!shown.contains("123-45") && !shown.contains("1990") && !shown.contains("Main"), "{shown}");
    }

    #[test]
    fn profile_errors_name_the_field() {
        let e = UserProfile::parse(StatusCode::OK, br#"{"verificationState":"PENDING"}"#).unwrap_err();
        assert!(e.to_string().contains("`id`"), "{e}");
        let body = format!(r#"{{"id":"{ID}","verificationState":"DONE"}}"#);
        let e = UserProfile::parse(StatusCode::OK, body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("`verificationState`"), "{e}");
        let e = UserProfile::parse(StatusCode::OK, b"<html>oops").unwrap_err();
        assert!(e.to_string().contains("invalid JSON") && e.to_string().contains("200"), "{e}");
    }

    #[test]
    fn session_url_is_checked_and_never_shown() {
        let u = parse_session(StatusCode::OK, br#"{"sessionUrl":"https://v.example/s/abc123secret"}"#).unwrap();
        assert_eq!(u.expose(), "https://v.example/s/abc123secret");
        for body in [
            &br#"{"sessionUrl":"javascript:abc123secret"}"#[..],
            br#"{"sessionUrl":"https://v.example/s/abc123secret""#,
            br#"{"url":"https://v.example/s/abc123secret"}"#,
        ] {
            let e = parse_session(StatusCode::OK, body).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("abc123secret"), "{shown}");
        }
    }

    #[test]
    fn token_grant() {
        let g =
            TokenGrant::parse(StatusCode::OK, br#"{"access_token":"at1","expires_in":21600,"refresh_token":"rt2"}"#)
                .unwrap();
        assert_eq!(g.access_token.as_str(), "at1");
        assert_eq!(g.expires_in.as_secs(), 21600);
        assert_eq!(g.refresh_token.as_deref().map(String::as_str), Some("rt2"));
        assert!(!format!("{g:?}").contains("at1"));
        let e =
            TokenGrant::parse(StatusCode::OK, br#"{"expires_in":5,"refresh_token":"rt-secret-value"}"#).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("rt-secret-value"));
        assert_eq!(
            salvage_refresh_token(br#"{"expires_in":5,"refresh_token":"rt-secret-value"}"#)
                .as_deref()
                .map(String::as_str),
            Some("rt-secret-value")
        );
        assert_eq!(
            session_limit(br#"{"message":"Verification session limit reached: daily_cap","reason":"daily_cap"}"#),
            Some(Some(DeferReason::DailyCap))
        );
        assert_eq!(session_limit(br#"{"message":"Session limit reached"}"#), Some(None));
        assert_eq!(session_limit(br#"{"message":"Too many requests"}"#), None);
        assert_eq!(session_limit(b"slow down"), None);
        assert_eq!(
            oauth_error_code(br#"{"error":"invalid_grant","error_description":"x"}"#).as_deref(),
            Some("invalid_grant")
        );
    }
}
