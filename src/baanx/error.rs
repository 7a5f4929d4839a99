//! Every way a Baanx call can fail, classified in one place.
//!
//! The retry loop asks [`BaanxError::is_retryable`]; the engine asks
//! [`BaanxError::class`] to decide what to record (skip, defer, fail). Messages
//! never carry a session URL, an access token or a refresh token: response bodies
//! only appear as a short excerpt that went through [`scrub_excerpt`].

use std::time::Duration;

use reqwest::StatusCode;

use crate::domain::DeferReason;

/// Which call failed, for messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiEndpoint {
    /// `POST /v1/auth/oauth/token`
    Token,
    /// `GET /v1/user`
    User,
    /// `GET /v1/user/verification`
    Verification,
}

impl ApiEndpoint {
    /// The method and path, as the API spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiEndpoint::Token => "POST /v1/auth/oauth/token",
            ApiEndpoint::User => "GET /v1/user",
            ApiEndpoint::Verification => "GET /v1/user/verification",
        }
    }

    /// A short name for metric labels (which take identifiers, not paths).
    pub fn metric_label(self) -> &'static str {
        match self {
            ApiEndpoint::Token => "token",
            ApiEndpoint::User => "user",
            ApiEndpoint::Verification => "verification",
        }
    }

    /// The path under the base URL.
    pub(crate) fn path(self) -> &'static str {
        match self {
            ApiEndpoint::Token => "v1/auth/oauth/token",
            ApiEndpoint::User => "v1/user",
            ApiEndpoint::Verification => "v1/user/verification",
        }
    }
}

impl std::fmt::Display for ApiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made (refused, DNS, TLS, connect timeout). The
    /// request was never sent.
    Connect,
    /// The request or the response took longer than `http_request_timeout_ms`.
    Timeout,
    /// The connection broke while the request or the body was on the wire.
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "cannot connect",
            TransportKind::Timeout => "timed out",
            TransportKind::Other => "connection failed",
        })
    }
}

/// What a failure means for the caller: the engine maps each class to an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Server trouble, timeouts, rate limits that outlasted the retry budget: try
    /// this user again later (defer).
    Transient,
    /// The API refused a session for a per-user limit (daily cap, concurrent
    /// sessions, a cooldown): defer the user; the ledger should have prevented it.
    UserLimited,
    /// The API refused a freshly minted access token (401 twice): fail the user.
    Unauthorized,
    /// The API will not serve this user (403: suspended, wrong client; other 4xx):
    /// record and do not retry.
    Permanent,
    /// The refresh token is missing or was refused (`invalid_grant`): skip the user
    /// with reason `consent_required` until they consent again.
    ConsentRequired,
    /// The API answered something this client cannot read. Not retried: a
    /// verification session may have been created, and a retry would spend another.
    Malformed,
    /// Our side: configuration or the token vault.
    Internal,
}

impl ErrorClass {
    /// A stable spelling, for recorded reasons and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::UserLimited => "user_limited",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Permanent => "permanent",
            ErrorClass::ConsentRequired => "consent_required",
            ErrorClass::Malformed => "malformed_response",
            ErrorClass::Internal => "internal",
        }
    }
}

/// Why a user needs to consent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentReason {
    /// No refresh token is held for the user, or it was already marked unusable.
    NoToken,
    /// The token endpoint answered `invalid_grant`: the refresh token was revoked,
    /// expired, or already rotated away.
    InvalidGrant,
}

/// A failure of the token vault (the store behind [`super::TokenVault`]).
pub type VaultError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed Baanx call. `Display` and `Debug` never show a session URL or a token.
#[derive(Debug, thiserror::Error)]
pub enum BaanxError {
    /// A setting is missing or wrong.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    /// The token endpoint refused the client itself (401 other than
    /// `invalid_grant`: a wrong or missing `baanx_client_key`). Every user would
    /// fail the same way, so the caller should stop, not fail users one by one.
    #[error("{endpoint}: the API refused the client ({status}: {message}); check baanx_client_key")]
    ClientRefused { endpoint: ApiEndpoint, status: StatusCode, message: String },
    /// The user must consent again before anything can be done for them.
    #[error("user {user_id} must consent again: {}", match .reason {
        ConsentReason::NoToken => "no usable refresh token is held",
        ConsentReason::InvalidGrant => "the refresh token was refused (invalid_grant)",
    })]
    ConsentRequired { user_id: String, reason: ConsentReason },
    /// 401 even with a freshly minted access token.
    #[error("{endpoint} for user {user_id}: 401 Unauthorized even after minting a new access token")]
    Unauthorized { endpoint: ApiEndpoint, user_id: String },
    /// 403: the user is suspended or disabled, or belongs to another client.
    #[error("{endpoint} for user {user_id}: 403 Forbidden ({message})")]
    Forbidden { endpoint: ApiEndpoint, user_id: String, message: String },
    /// 429, with the delay the server asked for.
    #[error("{endpoint}: 429 Too Many Requests (retry after {})", fmt_retry_after(*.retry_after))]
    RateLimited { endpoint: ApiEndpoint, retry_after: Option<Duration> },
    /// 429 on `GET /v1/user/verification` naming a per-user session limit: no
    /// retry can help before the limit lifts, and it says nothing about the rate of
    /// the whole client, so it neither retries nor slows other users down.
    #[error("{endpoint} for user {user_id}: session limit reached ({})", .reason.map_or("unspecified", DeferReason::as_str))]
    SessionLimit { endpoint: ApiEndpoint, user_id: String, reason: Option<DeferReason> },
    /// 5xx.
    #[error("{endpoint}: server error {status} ({excerpt})")]
    Server { endpoint: ApiEndpoint, status: StatusCode, excerpt: String },
    /// Another status this client does not expect (4xx other than 401/403/429, 3xx).
    #[error("{endpoint}: unexpected status {status} ({excerpt})")]
    UnexpectedStatus { endpoint: ApiEndpoint, status: StatusCode, excerpt: String },
    /// Connect errors, timeouts, broken connections.
    #[error("{endpoint}: {kind}")]
    Transport {
        endpoint: ApiEndpoint,
        kind: TransportKind,
        #[source]
        source: reqwest::Error,
    },
    /// A body that is not the JSON the contract promises.
    #[error("{endpoint}: malformed response (status {status}): {problem}; body starts {excerpt:?}")]
    Malformed { endpoint: ApiEndpoint, status: StatusCode, problem: String, excerpt: String },
    /// Retrying did not help within the attempt and time budget.
    #[error("{endpoint}: gave up after {attempts} attempts in {:.1}s", .elapsed.as_secs_f64())]
    GaveUp {
        endpoint: ApiEndpoint,
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: Box<BaanxError>,
    },
    /// The token vault failed to load or persist a refresh token.
    #[error("token vault, user {user_id}: {action} failed")]
    Vault {
        user_id: String,
        action: &'static str,
        #[source]
        source: VaultError,
    },
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "unspecified".to_owned(),
    }
}

impl BaanxError {
    /// What the failure means for the caller.
    pub fn class(&self) -> ErrorClass {
        match self {
            BaanxError::Config { .. } | BaanxError::Vault { .. } | BaanxError::ClientRefused { .. } => {
                ErrorClass::Internal
            }
            BaanxError::ConsentRequired { .. } => ErrorClass::ConsentRequired,
            BaanxError::Unauthorized { .. } => ErrorClass::Unauthorized,
            BaanxError::Forbidden { .. } | BaanxError::UnexpectedStatus { .. } => ErrorClass::Permanent,
            BaanxError::RateLimited { .. }
            | BaanxError::Server { .. }
            | BaanxError::Transport { .. }
            | BaanxError::GaveUp { .. } => ErrorClass::Transient,
            BaanxError::SessionLimit { .. } => ErrorClass::UserLimited,
            BaanxError::Malformed { .. } => ErrorClass::Malformed,
        }
    }

    /// True when the same request may be sent again after a pause: 429, 5xx,
    /// connect errors and timeouts. Nothing else is retried (the 401 path is a
    /// re-authentication, not a retry). [`BaanxError::GaveUp`] is not retryable:
    /// the budget is spent.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BaanxError::RateLimited { .. } | BaanxError::Server { .. } | BaanxError::Transport { .. })
    }

    /// True when a `GET /v1/user/verification` failed in a way that may still
    /// have created a session on the server: the request timed out or the
    /// connection broke after it was sent, or a 2xx answer could not be read. The
    /// engine records such a ledger row as `unknown` (it counts against the
    /// user's limits) rather than `api_failed`.
    pub fn may_have_created_session(&self) -> bool {
        match self {
            BaanxError::Transport { endpoint: ApiEndpoint::Verification, kind, .. } => {
                matches!(kind, TransportKind::Timeout | TransportKind::Other)
            }
            BaanxError::Server { endpoint: ApiEndpoint::Verification, .. } => true,
            BaanxError::Malformed { endpoint: ApiEndpoint::Verification, status, .. } => status.is_success(),
            BaanxError::GaveUp { last, .. } => last.may_have_created_session(),
            _ => false,
        }
    }

    /// True when the user must consent again (engine skip reason `consent_required`).
    pub fn is_consent_required(&self) -> bool {
        matches!(self, BaanxError::ConsentRequired { .. })
    }

    /// The HTTP status behind the failure, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            BaanxError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            BaanxError::Forbidden { .. } => Some(StatusCode::FORBIDDEN),
            BaanxError::RateLimited { .. } | BaanxError::SessionLimit { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            BaanxError::Server { status, .. }
            | BaanxError::ClientRefused { status, .. }
            | BaanxError::UnexpectedStatus { status, .. }
            | BaanxError::Malformed { status, .. } => Some(*status),
            BaanxError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// How many characters of a body an error keeps.
pub(crate) const EXCERPT_CHARS: usize = 160;

/// A short, safe excerpt of a response body for an error message.
///
/// Decision: an excerpt helps an operator see "the proxy answered HTML" or "the
/// JSON was cut off", but a body may hold a session URL or a token. So the value
/// of every JSON key that names a token, a URL or a session is replaced, every
/// URL-like run (`scheme://…`, `www.…`) is replaced, and so is any unbroken run of
/// 24 or more token-ish characters (a bearer credential that is neither). What
/// survives is short words and punctuation, which is what a human needs.
pub fn scrub_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * EXCERPT_CHARS)]);
    let text = redact_sensitive_keys(&text);
    // a person's address, wherever it stands (a body may echo the user)
    let text = crate::domain::personal::redact_addresses(&text);
    let text = redact_long_runs(&text);
    let mut out: String = text.chars().filter(|c| !c.is_control() || *c == ' ').take(EXCERPT_CHARS).collect();
    if text.chars().count() > EXCERPT_CHARS || body.len() > 4 * EXCERPT_CHARS {
        out.push('…');
    }
    out
}

fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "url", "session", "secret", "password", "ssn", "birth", "address", "mail", "name", "phone"]
        .iter()
        .any(|w| k.contains(w))
}

/// Replaces the string value of sensitive JSON keys with `[redacted]`, also when
/// the body is cut off inside the value.
fn redact_sensitive_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &after[..close];
        out.push('"');
        out.push_str(key);
        out.push('"');
        rest = &after[close + 1..];
        let trimmed = rest.trim_start();
        if is_sensitive_key(key) && trimmed.starts_with(':') {
            let value = trimmed[1..].trim_start();
            out.push_str(": ");
            if let Some(v) = value.strip_prefix('"') {
                out.push_str("\"[redacted]\"");
                // skip to the closing quote, honouring escapes; a cut-off value ends the text
                let mut escaped = false;
                let mut end = None;
                for (i, c) in v.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = Some(i + 1);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                match end {
                    Some(e) => rest = &v[e..],
                    None => return out,
                }
            } else {
                rest = value;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_run_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=:%?&#@!$*,;[]".contains(c)
}

/// Replaces URL-like and credential-like runs of characters.
fn redact_long_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let lower = run.to_ascii_lowercase();
        let urlish = lower.contains("://") || lower.contains("www.");
        let longish = run.chars().filter(|c| c.is_ascii_alphanumeric() || "-_./+=~%".contains(*c)).count() >= 24;
        if urlish || longish {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_run_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_urls_and_tokens_never_survive_an_excerpt() {
        let cases: [&[u8]; 6] = [
            br#"{"sessionUrl": "https://verify.example/s/abc123secret"#,
            br#"{"sessionUrl":"https://verify.example/s/abc123secret","x":1}"#,
            br#"{"access_token":"abc123secret","refresh_token":"rt-abc123secret-2"}"#,
            b"<html>go to https://verify.example/s/abc123secret now</html>",
            b"<html>go to verify.example/s/abc123secretabc123secret now</html>",
            br#"{"sessionUrl": "verify.example/s/abc123secret", "#,
        ];
        for body in cases {
            let e = scrub_excerpt(body);
            assert!(!e.contains("abc123secret"), "{e}");
            assert!(!e.contains("verify.example/s"), "{e}");
        }
    }

    #[test]
    fn a_persons_address_and_names_never_survive_an_excerpt() {
        let body = br#"{"id":"u1","email":"jane.doe@example.com","firstName":"Jane","lastName":"Doe","note":"write to jane.doe@example.com"}"#;
        let e = scrub_excerpt(body);
        assert!(!e.contains("jane.doe") && !e.contains("Jane") && !e.contains("Doe"), "{e}");
        let e = scrub_excerpt(b"<p>No account for Jane.Doe@Example.com</p>");
        assert_eq!(e, "<p>No account for [address]</p>");
    }

    #[test]
    fn harmless_text_stays_readable() {
        assert_eq!(
            scrub_excerpt(b"<html><body>502 Bad Gateway</body></html>"),
            "<html><body>502 Bad Gateway</body></html>"
        );
        assert_eq!(scrub_excerpt(br#"{"message": "Not authenticated"}"#), r#"{"message": "Not authenticated"}"#);
        assert_eq!(scrub_excerpt(br#"{"id": 12, "sessionUrl": 5}"#), r#"{"id": 12, "sessionUrl": 5}"#);
        let long = "x ".repeat(500);
        let e = scrub_excerpt(long.as_bytes());
        assert!(e.ends_with('…') && e.chars().count() == EXCERPT_CHARS + 1, "{e}");
    }

    #[test]
    fn classification() {
        let e = BaanxError::RateLimited { endpoint: ApiEndpoint::User, retry_after: Some(Duration::from_secs(2)) };
        assert!(e.is_retryable());
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("2.0s"), "{e}");
        let e = BaanxError::Forbidden { endpoint: ApiEndpoint::User, user_id: "u".into(), message: "suspended".into() };
        assert!(!e.is_retryable());
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = BaanxError::ConsentRequired { user_id: "u".into(), reason: ConsentReason::InvalidGrant };
        assert!(!e.is_retryable() && e.is_consent_required());
        assert_eq!(e.class().as_str(), "consent_required");
        let gave_up = BaanxError::GaveUp {
            endpoint: ApiEndpoint::Verification,
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(BaanxError::Server {
                endpoint: ApiEndpoint::Verification,
                status: StatusCode::BAD_GATEWAY,
                excerpt: String::new(),
            }),
        };
        assert!(!gave_up.is_retryable());
        assert!(gave_up.may_have_created_session(), "a 5xx may hide a session");
        let cut = BaanxError::Malformed {
            endpoint: ApiEndpoint::Verification,
            status: StatusCode::OK,
            problem: String::new(),
            excerpt: String::new(),
        };
        assert!(cut.may_have_created_session());
        assert_eq!(gave_up.class(), ErrorClass::Transient);
        assert_eq!(gave_up.status(), Some(StatusCode::BAD_GATEWAY));
    }
}
