//! The client: one pooled HTTP connection set, the limiter, the token cache and
//! the retry loop, behind three calls.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::error::{ApiEndpoint, BaanxError, ConsentReason, TransportKind, scrub_excerpt};
use super::limiter::{Limiter, LimiterStats};
use super::model::{UserProfile, error_message, oauth_error_code, parse_session, session_limit};
use super::observer::{ApiObserver, Unobserved};
use super::refresh::{AccessTokens, TokenEndpoint, lease_lost};
use super::retry::{ApiRetryPolicy, parse_retry_after};
use super::tokens::{TokenCache, TokenVault};
use crate::config::{Secret, Settings};
use crate::domain::endpoint::{redact_url, require_https};
use crate::domain::{Clock, Region, SessionUrl, SystemClock, UserId};

/// Paces one caller's requests on top of the client's own limiter: every request the
/// client sends for that caller (a token refresh and a retry included) waits for it
/// first. A campaign's `throttle.requests_per_second` is one.
#[async_trait::async_trait]
pub trait Pacer: Send + Sync {
    /// Returns when the next request may go.
    async fn ready(&self);
}

/// The largest body read; the API's answers are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// Everything the client is built from. [`BaanxConfig::from_settings`] maps the
/// settings onto it; tests build it directly. `Debug` masks credentials in the URL.
#[derive(Clone)]
pub struct BaanxConfig {
    /// `baanx_base_url`.
    pub base_url: url::Url,
    /// `baanx_client_key`, sent as `x-client-key` on every call.
    pub client_key: Secret,
    /// `http_connect_timeout_ms` (default 5 s).
    pub connect_timeout: Duration,
    /// `http_request_timeout_ms` (default 30 s): the whole exchange, body included.
    pub request_timeout: Duration,
    /// `requests_per_second`, per region (default 50).
    pub requests_per_second: f64,
    /// `burst` (default 10).
    pub burst: u32,
    /// `max_concurrency`: requests in flight over all regions (default 64).
    pub max_concurrency: u32,
    /// Retry budget per call.
    pub retry: ApiRetryPolicy,
    /// Access tokens are refreshed this long before they expire (default 5 min).
    pub refresh_margin: Duration,
    /// How long a user's refresh lease lasts without renewal (`lease_seconds`,
    /// default 30 s): another process waits at most about this long on a holder that
    /// died mid-refresh.
    pub refresh_lease: Duration,
    /// Decides when a cached access token is stale (the wall clock by default).
    pub clock: Arc<dyn Clock>,
    /// Hears of every request ([`Unobserved`] by default); the engine installs one
    /// that keeps the metrics.
    pub observer: Arc<dyn ApiObserver>,
}

impl std::fmt::Debug for BaanxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaanxConfig")
            .field("base_url", &redact_url(self.base_url.as_str()))
            .field("client_key", &self.client_key)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("max_concurrency", &self.max_concurrency)
            .field("retry", &self.retry)
            .field("refresh_margin", &self.refresh_margin)
            .field("refresh_lease", &self.refresh_lease)
            .finish_non_exhaustive()
    }
}

impl BaanxConfig {
    /// The client's configuration from the settings.
    ///
    /// # Errors
    /// [`BaanxError::Config`] when `baanx_client_key` is not set.
    pub fn from_settings(s: &Settings) -> Result<Self, BaanxError> {
        let client_key = s.baanx_client_key.clone().ok_or(BaanxError::Config {
            key: "baanx_client_key",
            message: "not set: set REVERIFY_BAANX_CLIENT_KEY or REVERIFY_BAANX_CLIENT_KEY_FILE".into(),
        })?;
        Ok(Self {
            base_url: s.baanx_base_url.clone(),
            client_key,
            connect_timeout: Duration::from_millis(s.http_connect_timeout_ms),
            request_timeout: Duration::from_millis(s.http_request_timeout_ms),
            // the fleet's total, split evenly between `workers` (config.rs)
            requests_per_second: s.requests_per_second * s.rate_share(),
            burst: share_of(s.burst, s.rate_share()),
            max_concurrency: s.max_concurrency,
            retry: ApiRetryPolicy::default(),
            refresh_margin: Duration::from_secs(300),
            refresh_lease: Duration::from_secs(s.lease_seconds),
            clock: Arc::new(SystemClock),
            observer: Arc::new(Unobserved),
        })
    }

    /// Defaults for everything but the base URL and client key.
    pub fn new(base_url: url::Url, client_key: Secret) -> Self {
        let d = Settings::default();
        Self {
            base_url,
            client_key,
            connect_timeout: Duration::from_millis(d.http_connect_timeout_ms),
            request_timeout: Duration::from_millis(d.http_request_timeout_ms),
            requests_per_second: d.requests_per_second,
            burst: d.burst,
            max_concurrency: d.max_concurrency,
            retry: ApiRetryPolicy::default(),
            refresh_margin: Duration::from_secs(300),
            refresh_lease: Duration::from_secs(d.lease_seconds),
            clock: Arc::new(SystemClock),
            observer: Arc::new(Unobserved),
        }
    }
}

/// `share` of a burst, rounded up and at least 1.
fn share_of(burst: u32, share: f64) -> u32 {
    ((f64::from(burst) * share).ceil() as u32).max(1)
}

/// The Baanx API client. Clones share connections, limiter and token cache.
///
/// Every call waits on the shared [`Limiter`] internally; callers must not
/// acquire it themselves.
#[derive(Clone)]
pub struct BaanxClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: url::Url,
    client_key: HeaderValue,
    retry: ApiRetryPolicy,
    observer: Arc<dyn ApiObserver>,
    limiter: Arc<Limiter>,
    /// The token dance: cache, vault, refresh lease.
    tokens: AccessTokens,
}

impl std::fmt::Debug for BaanxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaanxClient")
            .field("base_url", &redact_url(self.inner.base.as_str()))
            .field("limiter", &self.inner.limiter)
            .finish_non_exhaustive()
    }
}

/// One request to send.
struct Request<'a> {
    endpoint: ApiEndpoint,
    user: &'a UserId,
    region: Region,
    /// The access token of a user call.
    bearer: Option<&'a str>,
    /// The refresh token of a token call.
    refresh_token: Option<&'a str>,
    /// Checked once the limiter admits the request: it goes out only while true.
    fence: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// The caller's own pacing, before the client's limiter.
    pace: Option<&'a dyn Pacer>,
}

impl<'a> Request<'a> {
    fn user_call(
        endpoint: ApiEndpoint,
        user: &'a UserId,
        region: Region,
        token: &'a str,
        pace: Option<&'a dyn Pacer>,
    ) -> Self {
        Self { endpoint, user, region, bearer: Some(token), refresh_token: None, fence: None, pace }
    }
}

/// One HTTP answer, read in full.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl BaanxClient {
    /// Builds the client: rustls, pooled keep-alive connections, the configured
    /// timeouts, no redirects (the API has none, and a redirect must not carry the
    /// bearer elsewhere).
    ///
    /// # Errors
    /// [`BaanxError::Config`] for a client key that is not a valid header value or a
    /// base URL that cannot be a base.
    pub fn new(cfg: BaanxConfig, vault: Arc<dyn TokenVault>) -> Result<Self, BaanxError> {
        let mut client_key = HeaderValue::from_str(cfg.client_key.expose()).map_err(|_| BaanxError::Config {
            key: "baanx_client_key",
            message: "contains characters not allowed in an HTTP header".into(),
        })?;
        client_key.set_sensitive(true);
        let mut base = cfg.base_url.clone();
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            let shown = redact_url(base.as_str());
            return Err(BaanxError::Config {
                key: "baanx_base_url",
                message: format!("{shown} is not an http(s) URL"),
            });
        }
        // the client key and bearer tokens travel on it: https, or plain http on this host
        require_https(&base).map_err(|message| BaanxError::Config { key: "baanx_base_url", message })?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.max_concurrency as usize)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reverify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BaanxError::Config {
                key: "baanx_base_url",
                message: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                client_key,
                retry: cfg.retry,
                observer: cfg.observer,
                limiter: Arc::new(Limiter::new(cfg.requests_per_second, cfg.burst, cfg.max_concurrency)),
                tokens: AccessTokens {
                    refresh_margin: cfg.refresh_margin,
                    refresh_lease: cfg.refresh_lease.max(Duration::from_millis(100)),
                    owner: format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..12]),
                    clock: cfg.clock,
                    vault,
                    cache: TokenCache::default(),
                },
            }),
        })
    }

    /// The shared limiter, for its counters and pause state. Calls already wait on
    /// it; do not acquire it around them.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// The limiter's counters.
    pub fn stats(&self) -> LimiterStats {
        self.inner.limiter.stats()
    }

    /// Forgets every cached access token; the next call for a user mints one.
    pub fn forget_access_tokens(&self) {
        self.inner.tokens.cache.clear();
    }

    /// `GET /v1/user`: the user's current profile and verification state.
    ///
    /// # Errors
    /// Any [`BaanxError`]; see [`BaanxError::class`] for what each means.
    pub async fn get_user(&self, user: &UserId, region: Region) -> Result<UserProfile, BaanxError> {
        self.get_user_paced(user, region, None).await
    }

    /// [`BaanxClient::get_user`], every request of it (the token refresh included)
    /// paced by `pace` too.
    ///
    /// # Errors
    /// Any [`BaanxError`]; see [`BaanxError::class`] for what each means.
    #[tracing::instrument(name = "baanx.get_user", skip_all, fields(user_id = %user, region = %region))]
    pub async fn get_user_paced(
        &self,
        user: &UserId,
        region: Region,
        pace: Option<&dyn Pacer>,
    ) -> Result<UserProfile, BaanxError> {
        let answer = self.user_call(ApiEndpoint::User, user, region, pace).await?;
        let profile = UserProfile::parse(answer.status, &answer.body)?;
        if &profile.id != user {
            return Err(BaanxError::Malformed {
                endpoint: ApiEndpoint::User,
                status: answer.status,
                problem: format!("answered for user {} instead", profile.id),
                excerpt: String::new(),
            });
        }
        Ok(profile)
    }

    /// `GET /v1/user/verification`: a new verification session. The URL comes back
    /// in [`SessionUrl`], which shows nothing of itself.
    ///
    /// Decision: a timeout or a connection broken mid-request is *not* retried
    /// here, unlike on the other calls: the server may have created the session,
    /// and a retry would spend another of the user's 10 a day without the ledger
    /// knowing. The caller records such a session as `unknown` (counted).
    ///
    /// # Errors
    /// Any [`BaanxError`]; see [`BaanxError::class`] for what each means.
    pub async fn start_verification(&self, user: &UserId, region: Region) -> Result<SessionUrl, BaanxError> {
        self.start_verification_paced(user, region, None).await
    }

    /// [`BaanxClient::start_verification`], every request of it (the token refresh
    /// included) paced by `pace` too.
    ///
    /// # Errors
    /// Any [`BaanxError`]; see [`BaanxError::class`] for what each means.
    #[tracing::instrument(name = "baanx.start_verification", skip_all, fields(user_id = %user, region = %region))]
    pub async fn start_verification_paced(
        &self,
        user: &UserId,
        region: Region,
        pace: Option<&dyn Pacer>,
    ) -> Result<SessionUrl, BaanxError> {
        let answer = self.user_call(ApiEndpoint::Verification, user, region, pace).await?;
        parse_session(answer.status, &answer.body)
    }

    /// A user call with the 401 rule: on 401, mint a new access token once and
    /// send once more; a second 401 is [`BaanxError::Unauthorized`].
    async fn user_call(
        &self,
        endpoint: ApiEndpoint,
        user: &UserId,
        region: Region,
        pace: Option<&dyn Pacer>,
    ) -> Result<Answer, BaanxError> {
        let tokens = &self.inner.tokens;
        let http = TokenCall { client: self, region, pace };
        let (token, generation) = tokens.access_token(user, None, &http).await?;
        match self.with_retries(endpoint, || self.send(Request::user_call(endpoint, user, region, &token, pace))).await
        {
            Err(BaanxError::Unauthorized { .. }) => {
                tracing::debug!(endpoint = endpoint.as_str(), "401: minting a new access token and retrying once");
                let (token, _) = tokens.access_token(user, Some(generation), &http).await?;
                self.with_retries(endpoint, || self.send(Request::user_call(endpoint, user, region, &token, pace)))
                    .await
            }
            other => other,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the budget is spent.
    async fn with_retries<F, Fut>(&self, endpoint: ApiEndpoint, mut attempt: F) -> Result<Answer, BaanxError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Answer, BaanxError>>,
    {
        let policy = &self.inner.retry;
        let started = Instant::now();
        let (mut failures, mut rate_limited) = (0u32, 0u32);
        loop {
            let err = match attempt().await {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            // Decision (issue 13): a session call that may have reached the server (a
            // timeout, a connection broken after sending, a 5xx) is never sent again
            // on the same reservation: the session may exist, and a retry would spend
            // another of the user's sessions behind the ledger's back.
            let ambiguous = matches!(
                err,
                BaanxError::Transport { kind: TransportKind::Timeout | TransportKind::Other, .. }
                    | BaanxError::Server { .. }
            );
            if !err.is_retryable() || (endpoint == ApiEndpoint::Verification && ambiguous) {
                return Err(err);
            }
            let delay = if let BaanxError::RateLimited { retry_after, .. } = &err {
                rate_limited += 1;
                if rate_limited >= policy.max_rate_limited_attempts {
                    return Err(give_up(endpoint, failures + rate_limited, started, err));
                }
                // the pause is global: the next acquire waits for it
                self.inner.limiter.on_rate_limited(*retry_after)
            } else {
                failures += 1;
                if failures >= policy.max_attempts {
                    return Err(give_up(endpoint, failures + rate_limited, started, err));
                }
                policy.backoff(failures)
            };
            if started.elapsed() + delay > policy.max_elapsed {
                return Err(give_up(endpoint, failures + rate_limited, started, err));
            }
            tracing::debug!(
                endpoint = endpoint.as_str(),
                error = %err,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "retrying"
            );
            if !matches!(err, BaanxError::RateLimited { .. }) {
                tokio::time::sleep(delay).await;
            }
            self.inner.limiter.count_retry();
        }
    }

    /// Sends one request through the limiter and classifies the answer.
    async fn send(&self, req: Request<'_>) -> Result<Answer, BaanxError> {
        let Request { endpoint, user, region, bearer, refresh_token, fence, pace } = req;
        let inner = &self.inner;
        let url = inner.base.join(endpoint.path()).expect("a relative path joins onto a base URL");
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert("x-client-key", inner.client_key.clone());
        headers.insert("x-us-env", HeaderValue::from_static(if region == Region::Us { "true" } else { "false" }));
        if let Some(token) = bearer {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| BaanxError::Malformed {
                endpoint,
                status: StatusCode::OK,
                problem: "the access token is not a valid header value".into(),
                excerpt: String::new(),
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let request = match refresh_token {
            Some(rt) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let body = serde_json::to_vec(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": rt}))
                    .expect("a JSON object serializes");
                inner.http.post(url).headers(headers).body(body)
            }
            None => inner.http.get(url).headers(headers),
        };

        if let Some(pace) = pace {
            pace.ready().await;
        }
        let admission = inner.limiter.acquire(region).await;
        inner.observer.limiter_wait(admission.waited());
        // the limiter may have kept us a while: a refresh goes out only under its lease
        if fence.is_some_and(|alive| !alive()) {
            return Err(lease_lost(user));
        }
        let sent = Instant::now();
        let transport = |e: reqwest::Error| {
            let kind = if e.is_connect() {
                TransportKind::Connect
            } else if e.is_timeout() {
                TransportKind::Timeout
            } else {
                TransportKind::Other
            };
            tracing::trace!(endpoint = endpoint.as_str(), %kind, "baanx transport failure");
            BaanxError::Transport { endpoint, kind, source: e.without_url() }
        };
        let answered = request.send().await;
        inner.observer.request(endpoint, answered.as_ref().ok().map(|r| r.status().as_u16()));
        let mut response = answered.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(BaanxError::Malformed {
                    endpoint,
                    status,
                    problem: format!("body larger than {MAX_BODY} bytes"),
                    excerpt: scrub_excerpt(&body),
                });
            }
            body.extend_from_slice(&chunk);
        }
        drop(admission);
        tracing::trace!(
            endpoint = endpoint.as_str(),
            status = status.as_u16(),
            latency_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX),
            "baanx answered"
        );
        inner.observer.latency(endpoint, sent.elapsed());
        if status != StatusCode::TOO_MANY_REQUESTS {
            inner.limiter.on_success();
        } else {
            inner.observer.rate_limited();
        }
        classify(endpoint, user, Answer { status, retry_after, body })
    }
}

/// The client's side of a refresh for one call: the token request, sent in the
/// call's region and paced as it is.
struct TokenCall<'a> {
    client: &'a BaanxClient,
    region: Region,
    pace: Option<&'a dyn Pacer>,
}

impl TokenEndpoint for TokenCall<'_> {
    async fn present(
        &self,
        user: &UserId,
        refresh_token: &str,
        alive: &(dyn Fn() -> bool + Sync),
    ) -> Result<(StatusCode, Vec<u8>), BaanxError> {
        let answer = self
            .client
            .with_retries(ApiEndpoint::Token, || async {
                if !alive() {
                    return Err(lease_lost(user));
                }
                let req = Request {
                    endpoint: ApiEndpoint::Token,
                    user,
                    region: self.region,
                    bearer: None,
                    refresh_token: Some(refresh_token),
                    fence: Some(alive),
                    pace: self.pace,
                };
                self.client.send(req).await
            })
            .await?;
        Ok((answer.status, answer.body))
    }

    fn minted(&self) {
        self.client.inner.limiter.count_token_refresh();
    }
}

fn give_up(endpoint: ApiEndpoint, attempts: u32, started: Instant, last: BaanxError) -> BaanxError {
    tracing::debug!(endpoint = endpoint.as_str(), attempts, error = %last, "giving up");
    BaanxError::GaveUp { endpoint, attempts, elapsed: started.elapsed(), last: Box::new(last) }
}

/// The one place a status becomes an outcome.
fn classify(endpoint: ApiEndpoint, user: &UserId, answer: Answer) -> Result<Answer, BaanxError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let user_id = user.to_string();
    if endpoint == ApiEndpoint::Token
        && matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED)
        && oauth_error_code(&answer.body).as_deref() == Some("invalid_grant")
    {
        return Err(BaanxError::ConsentRequired { user_id, reason: ConsentReason::InvalidGrant });
    }
    Err(match status {
        // on the token endpoint a 401 is about the client, not the user's token
        StatusCode::UNAUTHORIZED if endpoint == ApiEndpoint::Token => {
            BaanxError::ClientRefused { endpoint, status, message: error_message(&answer.body) }
        }
        StatusCode::UNAUTHORIZED => BaanxError::Unauthorized { endpoint, user_id },
        StatusCode::FORBIDDEN => BaanxError::Forbidden { endpoint, user_id, message: error_message(&answer.body) },
        // a per-user session limit (no Retry-After, the body names it) is not a
        // sign that the client is too fast: no global pause, no retry
        StatusCode::TOO_MANY_REQUESTS if endpoint == ApiEndpoint::Verification && answer.retry_after.is_none() => {
            match session_limit(&answer.body) {
                Some(reason) => BaanxError::SessionLimit { endpoint, user_id, reason },
                None => BaanxError::RateLimited { endpoint, retry_after: None },
            }
        }
        StatusCode::TOO_MANY_REQUESTS => BaanxError::RateLimited { endpoint, retry_after: answer.retry_after },
        s if s.is_server_error() => BaanxError::Server { endpoint, status: s, excerpt: scrub_excerpt(&answer.body) },
        s => BaanxError::UnexpectedStatus { endpoint, status: s, excerpt: scrub_excerpt(&answer.body) },
    })
}
