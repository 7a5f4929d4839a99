//! A faithful simulator of the Baanx API (../shared/baanx-api.md) over real HTTP,
//! for demos, tests and benchmarks: the machines that build this project have no
//! internet, and a mock inside the client would test nothing.
//!
//! It serves the token, profile and verification-session endpoints with the real
//! API's checks (client key, bearer expiry, rotation, region, suspension) and per-user
//! limits (the policy in [`crate::domain::policy`]), counts every request that breaks
//! a limit, detects refresh-token reuse (and can revoke the chain for it), injects faults on demand, serves real single-use session pages, and sends
//! signed `kyc.status.changed` webhooks. `GET /_sandbox/stats` and the control
//! endpoints under `/_sandbox/` let tests assert on what it saw.
//!
//! ```no_run
//! # async fn demo() -> Result<(), reverify::sandbox::SandboxError> {
//! use reverify::sandbox::{Sandbox, SandboxConfig, UserSource};
//! let sandbox = Sandbox::start(SandboxConfig { users: UserSource::Generate(10), ..SandboxConfig::default() }).await?;
//! println!("{} {}", sandbox.base_url(), sandbox.client_key());
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::{Clock, SystemClock, UserId};

pub mod bounces;
mod faults;
mod http;
mod rng;
mod state;
mod stats;
pub mod userfile;
pub mod users;
pub mod webhook;

pub use faults::{Faults, FaultsError, Latency, LatencyError, ScriptedFault};
pub use state::{RefreshReuse, RefreshReuseError, SessionOutcome, UserView};
pub use stats::{SandboxRoute, Stats, TooManyRequests, ViolationKind};
pub use userfile::{UserFileError, UserRecord};
pub use webhook::{WebhookTarget, signature};

/// The client key used when none is configured; printed at start.
pub const DEMO_CLIENT_KEY: &str = "sandbox-demo-client-key";

/// Where the sandbox's users come from.
#[derive(Debug, Clone)]
pub enum UserSource {
    /// This many users generated from [`SandboxConfig::seed`].
    Generate(usize),
    /// These users (e.g. from [`userfile::read_users`]); missing refresh tokens are
    /// derived from the seed and the user id.
    Records(Vec<UserRecord>),
}

/// Everything a sandbox can be told. Every field documents its default.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where to listen. Default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    /// The base of session URLs, when the sandbox is reached through another address
    /// (a container, a proxy). Default: the listening address.
    pub public_url: Option<url::Url>,
    /// The one accepted `x-client-key`. Default [`DEMO_CLIENT_KEY`].
    pub client_key: Option<String>,
    /// Default: 100 generated users.
    pub users: UserSource,
    /// Seeds user generation (faults have their own seed). Default 1.
    pub seed: u64,
    /// How long a session URL works. Default 24 h.
    pub session_ttl: Duration,
    /// How long an access token works. Default 6 h.
    pub access_token_ttl: Duration,
    /// How long a refresh token works. Default 184 days.
    pub refresh_token_ttl: Duration,
    /// From a completed session (PENDING) to VERIFIED or REJECTED. Default 0: at once.
    pub decision_delay: Duration,
    /// Where to POST signed `kyc.status.changed` events. Default: none.
    pub webhook: Option<WebhookTarget>,
    /// Default: no faults.
    pub faults: Faults,
    /// Enforce the per-user session limits. Default true; turn off only to benchmark
    /// the server itself.
    pub enforce_limits: bool,
    /// What presenting a refresh token that was already rotated away does. Default
    /// [`RefreshReuse::Reject`]: `invalid_grant`, nothing else;
    /// [`RefreshReuse::RevokeFamily`] also revokes the user's chain and counts a
    /// violation. Every reuse counts in [`Stats::refresh_token_reuses`].
    pub refresh_reuse: RefreshReuse,
    /// The source of "now" for tokens, sessions and limits. Default: the system clock;
    /// tests pass a [`crate::domain::ManualClock`] to cross 24 h boundaries at once.
    pub clock: Arc<dyn Clock>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            client_key: None,
            users: UserSource::Generate(100),
            seed: 1,
            session_ttl: Duration::from_secs(24 * 3600),
            access_token_ttl: Duration::from_secs(6 * 3600),
            refresh_token_ttl: Duration::from_secs(184 * 24 * 3600),
            decision_delay: Duration::ZERO,
            webhook: None,
            faults: Faults::default(),
            enforce_limits: true,
            refresh_reuse: RefreshReuse::Reject,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Why a sandbox could not start, or a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Faults(#[from] FaultsError),
    #[error("user {0} appears twice")]
    DuplicateUser(String),
    #[error("refresh token of user {0} is shared with another user")]
    DuplicateToken(String),
    #[error("no user {0} in the sandbox")]
    UnknownUser(String),
    #[error("{0} must be at least 1 millisecond")]
    Duration(&'static str),
    #[error("cannot build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// Starts sandboxes.
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// Binds, builds the users and serves in the background until
    /// [`SandboxHandle::shutdown`].
    ///
    /// # Errors
    /// [`SandboxError`] when the address cannot be bound or the configuration is
    /// inconsistent.
    pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
        let faults = faults::FaultEngine::new(config.faults.clone())?;
        let chrono_of = |d: Duration, name| {
            chrono::Duration::from_std(d)
                .ok()
                .filter(|d| *d >= chrono::Duration::milliseconds(1))
                .ok_or(SandboxError::Duration(name))
        };
        let rules = state::Rules {
            access_ttl: chrono_of(config.access_token_ttl, "access_token_ttl")?,
            refresh_ttl: chrono_of(config.refresh_token_ttl, "refresh_token_ttl")?,
            session_ttl: chrono_of(config.session_ttl, "session_ttl")?,
            decision_delay: config.decision_delay,
            enforce_limits: config.enforce_limits,
            refresh_reuse: config.refresh_reuse,
        };
        let records = build_users(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SandboxError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind { addr: config.listen, source })?;
        let base_url = url::Url::parse(&format!("http://{addr}")).expect("a socket address makes a URL");
        let public = config.public_url.clone().unwrap_or_else(|| base_url.clone());
        let session_prefix = format!("{}/session/", public.as_str().trim_end_matches('/'));
        let stats = Arc::new(stats::Counters::new());
        let webhook = match &config.webhook {
            Some(t) => Some(webhook::Sender::new(t.clone(), Arc::clone(&stats)).map_err(SandboxError::HttpClient)?),
            None => None,
        };
        let client_key = config.client_key.clone().unwrap_or_else(|| DEMO_CLIENT_KEY.to_owned());
        let state = Arc::new(state::State::new(
            records,
            client_key,
            Arc::clone(&config.clock),
            rules,
            stats,
            faults,
            webhook,
            session_prefix,
        ));
        let app = http::router(Arc::clone(&state));
        let stop = state.shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
        tracing::info!(%base_url, "sandbox listening");
        Ok(SandboxHandle { state, base_url, server: tokio::sync::Mutex::new(Some(server)) })
    }
}

fn build_users(config: &SandboxConfig) -> Result<Vec<UserRecord>, SandboxError> {
    let mut records = match &config.users {
        UserSource::Generate(n) => users::generate(*n, config.seed, config.clock.now()),
        UserSource::Records(r) => r.clone(),
    };
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    let mut tokens = std::collections::HashSet::with_capacity(records.len());
    for r in &mut records {
        if !ids.insert(r.user_id.clone()) {
            return Err(SandboxError::DuplicateUser(r.user_id.to_string()));
        }
        let token = r.refresh_token.get_or_insert_with(|| users::default_refresh_token(config.seed, &r.user_id));
        if !tokens.insert(token.clone()) {
            return Err(SandboxError::DuplicateToken(r.user_id.to_string()));
        }
    }
    Ok(records)
}

/// A running sandbox. Dropping it stops the server without waiting;
/// [`SandboxHandle::shutdown`] also waits for it to finish.
#[derive(Debug)]
pub struct SandboxHandle {
    state: Arc<state::State>,
    base_url: url::Url,
    server: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl SandboxHandle {
    /// `http://127.0.0.1:{port}/`: the API base URL (paths start with `/v1`).
    pub fn base_url(&self) -> url::Url {
        self.base_url.clone()
    }

    /// The sandbox's "now" (its configured clock): tests that move a clock import
    /// users at that time, as the API would have seen them.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.state.clock.now()
    }

    /// The address the sandbox listens on.
    pub fn addr(&self) -> SocketAddr {
        let host = self.base_url.host_str().unwrap_or("127.0.0.1");
        let port = self.base_url.port().unwrap_or(80);
        format!("{host}:{port}").parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The accepted `x-client-key`.
    pub fn client_key(&self) -> &str {
        &self.state.client_key
    }

    /// What the sandbox has seen so far.
    pub async fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }

    /// Every user as the import format has them now, refresh tokens included (the
    /// current, rotated ones).
    pub fn users(&self) -> Vec<UserRecord> {
        self.state.records()
    }

    /// Every user's view (standing, sessions and counters), in the order of
    /// [`SandboxHandle::users`].
    pub fn user_views(&self) -> Vec<UserView> {
        self.state.views()
    }

    /// The URL of every session issued (until expired ones are pruned), for tests
    /// that must prove no URL was stored or logged anywhere.
    pub fn session_urls(&self) -> Vec<String> {
        self.state.session_urls()
    }

    /// Every refresh token rotated away and every access token minted so far (the
    /// current refresh tokens are in [`SandboxHandle::users`]).
    pub fn spent_tokens(&self) -> Vec<String> {
        self.state.spent_tokens()
    }

    fn index(&self, user: &UserId) -> Result<usize, SandboxError> {
        self.state.find(user).ok_or_else(|| SandboxError::UnknownUser(user.to_string()))
    }

    /// One user's standing, sessions and counters.
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn user(&self, user: &UserId) -> Result<UserView, SandboxError> {
        Ok(self.state.view(self.index(user)?))
    }

    /// Suspends a user: their calls answer 403 until [`SandboxHandle::unsuspend`].
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn suspend(&self, user: &UserId) -> Result<(), SandboxError> {
        self.state.set_suspended(self.index(user)?, true);
        Ok(())
    }

    /// Lifts a suspension.
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn unsuspend(&self, user: &UserId) -> Result<(), SandboxError> {
        self.state.set_suspended(self.index(user)?, false);
        Ok(())
    }

    /// Expires every access token the user holds (their next call gets 401).
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn expire_tokens(&self, user: &UserId) -> Result<(), SandboxError> {
        self.state.expire_tokens(self.index(user)?);
        Ok(())
    }

    /// Expires the user's refresh token (the next refresh gets `invalid_grant`).
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn expire_refresh_token(&self, user: &UserId) -> Result<(), SandboxError> {
        self.state.expire_refresh_token(self.index(user)?);
        Ok(())
    }

    /// Revokes the user's consent: refresh gives `invalid_grant`, access tokens die.
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn revoke(&self, user: &UserId) -> Result<(), SandboxError> {
        self.state.revoke(self.index(user)?);
        Ok(())
    }

    /// An access token for the user, without spending their refresh token.
    ///
    /// # Errors
    /// [`SandboxError::UnknownUser`].
    pub fn mint_access_token(&self, user: &UserId) -> Result<String, SandboxError> {
        Ok(self.state.mint(self.index(user)?))
    }

    /// Makes the next `count` API requests (any `/v1` endpoint) fail with `fault`,
    /// before any random fault or rate cap.
    pub fn fail_next(&self, fault: ScriptedFault, count: usize) {
        self.state.faults.push(fault, count);
    }

    /// Drops the scripted faults not yet met (see [`SandboxHandle::fail_next`]).
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Completes a session as its page would, from its URL. `false` when the session
    /// is unknown, already used or expired.
    pub fn complete_session(&self, session_url: &str, outcome: SessionOutcome) -> bool {
        let id = session_url.rsplit('/').next().unwrap_or_default();
        self.state.complete(id, outcome).is_ok()
    }

    /// Stops serving: new connections are refused, hung and delayed requests end, and
    /// in-flight ones finish (bounded by 5 seconds).
    pub async fn shutdown(&self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.server.lock().await.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}
