//! The operations endpoints a daemon serves (`/healthz`, `/readyz`, `/metrics`)
//! and the Pushgateway push a one-shot run ends with.
//!
//! Decisions:
//! - Two kinds of listener. The operations listener (`metrics_listen`) serves
//!   `/healthz`, `/readyz` and `/metrics` and is never meant to be public. The
//!   public one (`reverify serve --listen`, `reverify daemon --webhook-listen`)
//!   serves the Baanx webhook receiver and `/healthz` only: what the scrape and the
//!   readiness probe tell (campaign names, target counts, whether the database
//!   answers) stays off the internet.
//! - `/healthz` says that the process answers and, on the operations listener,
//!   that the daemon's scheduler loop still completes passes ([`super::liveness`]);
//!   `/readyz` asks the database
//!   (`SELECT 1`, at most [`READY_TIMEOUT`]), so that Kubernetes stops routing to a
//!   worker that lost its database without restarting it.
//! - The daemon binds before it opens (and migrates) the database
//!   ([`serve_ops_starting`]): a long migration answers `/healthz` all along, so a
//!   liveness or startup probe never kills it half-way, and `/readyz` answers 503
//!   `starting` until [`OpsStarting::ready`] says the database is migrated.
//! - `/metrics` refreshes the targets-by-status and last-success gauges from the
//!   database on each scrape (bounded by the same timeout; on failure the last
//!   values stay), so the gauges are as fresh as the scrape and nobody has to
//!   schedule a refresh.
//! - Answers carry no error detail: a probe's body is read by anyone who can reach
//!   the port. The cause goes to the log.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::TelemetryError;
use super::metrics::{self, Metrics};
use crate::domain::endpoint::redact_url;

/// The longest `/readyz` (and the gauge refresh of `/metrics`) waits on the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a push to the Pushgateway may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the operations endpoints ask of the layer that owns the database
/// (`engine::gauges::StoreProbe`): telemetry itself knows nothing of it.
#[async_trait::async_trait]
pub trait OpsProbe: Send + Sync {
    /// Whether the database answers (`/readyz`).
    async fn ping(&self) -> Result<(), ProbeError>;
    /// Sets the gauges of the global metrics that are read from the database
    /// (before each `/metrics` answer).
    async fn refresh_gauges(&self) -> Result<(), ProbeError>;
    /// What is degraded without making the process unready (a bounce mailbox that
    /// is down): one line each, added to `/readyz`'s answer, which stays 200.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Why an [`OpsProbe`] failed; logged, never served.
pub type ProbeError = Box<dyn std::error::Error + Send + Sync>;

/// A running operations server.
#[derive(Debug)]
pub struct OpsServer {
    /// The address it listens on (the real port when asked for port 0).
    pub local_addr: SocketAddr,
    /// Ends when the shutdown token is cancelled and open requests are answered.
    pub handle: JoinHandle<Result<(), std::io::Error>>,
}

/// What the endpoints serve from: empty until the database is open and migrated.
#[derive(Clone)]
struct Ops {
    ready: Arc<OnceLock<Ready>>,
    metrics: &'static Metrics,
}

struct Ready {
    probe: Arc<dyn OpsProbe>,
    /// Routes beside the operations endpoints (the webhook receiver).
    extra: Router,
}

/// The handle [`serve_ops_starting`] returns: hands the server its probe once the
/// database is open and migrated.
#[derive(Debug)]
pub struct OpsStarting {
    ready: Arc<OnceLock<Ready>>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

impl OpsStarting {
    /// From now on `/readyz` and `/metrics` ask `probe`, and `extra`'s routes answer.
    pub fn ready(self, probe: Arc<dyn OpsProbe>, extra: Router) {
        let _ = self.ready.set(Ready { probe, extra });
    }
}

/// Parses `metrics_listen`: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every
/// interface.
///
/// # Errors
/// [`TelemetryError::Listen`] naming the setting.
pub fn parse_listen(value: &str) -> Result<SocketAddr, TelemetryError> {
    let v = value.trim();
    let full = if v.starts_with(':') { format!("0.0.0.0{v}") } else { v.to_owned() };
    full.parse().map_err(|_| TelemetryError::Listen {
        addr: value.to_owned(),
        message: "metrics_listen must be HOST:PORT, [IPV6]:PORT or :PORT (e.g. 0.0.0.0:9090)".into(),
    })
}

/// The router, over the global metrics.
pub fn router(probe: Arc<dyn OpsProbe>) -> Router {
    let (router, starting) = starting_router();
    starting.ready(probe, Router::new());
    router
}

/// The router before the database is open: `/healthz` answers, the rest says 503
/// `starting` until [`OpsStarting::ready`].
fn starting_router() -> (Router, OpsStarting) {
    let ready = Arc::new(OnceLock::new());
    let router = Router::new()
        .route("/healthz", get(healthz_ops))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .fallback(extra_routes)
        .with_state(Ops { ready: ready.clone(), metrics: metrics::global() });
    (router, OpsStarting { ready })
}

/// Binds `listen` and serves the operations endpoints until `shutdown` is
/// cancelled. Binding happens before this returns, so a taken port is an error
/// here, not a log line later.
///
/// # Errors
/// [`TelemetryError::Listen`] when the address cannot be bound.
pub async fn serve_ops(
    listen: SocketAddr,
    probe: Arc<dyn OpsProbe>,
    shutdown: CancellationToken,
) -> Result<OpsServer, TelemetryError> {
    let bind_err = |e: std::io::Error| TelemetryError::Listen { addr: listen.to_string(), message: e.to_string() };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    info!(%local_addr, "serving /healthz, /readyz and /metrics");
    Ok(OpsServer { local_addr, handle: spawn(listener, router(probe), shutdown) })
}

/// Binds `listen` and serves `routes` (the Baanx webhook receiver) and `/healthz`,
/// and nothing else, until `shutdown` is cancelled: the listener that may face the
/// internet. `/metrics` and `/readyz` answer 404 here.
///
/// # Errors
/// The bind error; the caller names its setting or flag.
pub async fn serve_public(
    listen: SocketAddr,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<OpsServer, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_public_on(listener, routes, shutdown)
}

/// [`serve_public`] on a listener already bound (when its address must be known
/// before the routes can be built: a sandbox told to send its webhooks there).
///
/// # Errors
/// When the listener's address cannot be read.
pub fn serve_public_on(
    listener: tokio::net::TcpListener,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<OpsServer, std::io::Error> {
    let local_addr = listener.local_addr()?;
    let app = Router::new().route("/healthz", get(healthz)).merge(routes);
    // with each request's peer address: the click routes limit per client address
    let handle = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok(OpsServer { local_addr, handle })
}

fn spawn(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> JoinHandle<Result<(), std::io::Error>> {
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    })
}

/// Binds `listen` and serves the operations endpoints before the database is
/// open: `/healthz` answers at once; `/readyz` answers 503 `starting` until
/// [`OpsStarting::ready`] is called once the database is migrated. `/metrics`
/// serves the process's metrics throughout, and the gauges read from the database
/// once it is there.
///
/// # Errors
/// As [`serve_ops`].
pub async fn serve_ops_starting(
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(OpsServer, OpsStarting), TelemetryError> {
    let bind_err = |e: std::io::Error| TelemetryError::Listen { addr: listen.to_string(), message: e.to_string() };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    info!(%local_addr, "serving /healthz, /readyz and /metrics");
    let (app, starting) = starting_router();
    Ok((OpsServer { local_addr, handle: spawn(listener, app, shutdown) }, starting))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `/healthz` of the operations listener, the liveness probe's: also fails (503)
/// when the daemon's scheduler loop has not completed a pass within its window
/// ([`super::liveness`]).
async fn healthz_ops() -> Response {
    match super::liveness::liveness().stale() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(quiet) => {
            warn!(quiet_seconds = quiet.as_secs(), "liveness: the scheduler loop has completed no pass");
            (StatusCode::SERVICE_UNAVAILABLE, "scheduler loop stale\n").into_response()
        }
    }
}

/// The answer of every endpoint that needs the database before it is migrated.
fn starting() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
}

/// Any other path: the extra routes once ready (their own 404 included).
async fn extra_routes(State(ops): State<Ops>, request: Request) -> Response {
    match ops.ready.get() {
        Some(ready) => match ready.extra.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => starting(),
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let Some(ready) = ops.ready.get() else {
        debug!("not ready: the database is not open (or not migrated) yet");
        return starting();
    };
    match tokio::time::timeout(READY_TIMEOUT, ready.probe.ping()).await {
        Ok(Ok(())) => {
            let mut body = "ready\n".to_owned();
            for note in ready.probe.notes() {
                body.push_str(&note);
                body.push('\n');
            }
            (StatusCode::OK, body).into_response()
        }
        Ok(Err(e)) => {
            warn!(error = %e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
        Err(_) => {
            warn!(timeout_ms = READY_TIMEOUT.as_millis() as u64, "not ready: the database did not answer in time");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the 0.0.4 text.
async fn metrics_handler(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    if let Some(ready) = ops.ready.get() {
        match tokio::time::timeout(READY_TIMEOUT, ready.probe.refresh_gauges()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "target gauges not refreshed"),
            Err(_) => debug!("target gauges not refreshed: the database did not answer in time"),
        }
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (metrics::OPENMETRICS_CONTENT_TYPE, ops.metrics.encode())
    } else {
        (metrics::PROMETHEUS_CONTENT_TYPE, ops.metrics.encode_prometheus())
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The grouping URL `{base}/metrics/job/{job}/instance/{instance}`, each value one
/// percent-encoded path segment.
///
/// # Errors
/// [`TelemetryError::PushUrl`] for a URL that is not http(s) or an empty job or
/// instance (the Pushgateway refuses empty grouping values).
pub fn push_url(base: &str, job: &str, instance: &str) -> Result<url::Url, TelemetryError> {
    push_url_grouped(base, job, ("instance", instance))
}

/// The grouping URL `{base}/metrics/job/{job}/{key}/{value}`.
///
/// # Errors
/// As [`push_url`].
pub fn push_url_grouped(base: &str, job: &str, (key, value): (&str, &str)) -> Result<url::Url, TelemetryError> {
    let bad = |message: &str| TelemetryError::PushUrl { url: redact_url(base), message: message.to_owned() };
    let mut url = url::Url::parse(base.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad("metrics_push_url must be an http(s) URL"));
    }
    if job.is_empty() || value.is_empty() {
        return Err(bad("the job and instance must not be empty"));
    }
    {
        let mut segments = url.path_segments_mut().map_err(|()| bad("metrics_push_url cannot take a path"))?;
        segments.pop_if_empty().extend(["metrics", "job", job, key, value]);
    }
    Ok(url)
}

/// The Pushgateway `instance` of this process: the host name (a Kubernetes pod's
/// name, a systemd host's name), so that each host's last run stays visible.
pub fn push_instance() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Replaces the group `job`/`instance` on the Pushgateway at `base`
/// (`metrics_push_url`) with the global metrics, in the Prometheus text format (a
/// PUT: the group then holds exactly this run's numbers), and, for each campaign
/// that ended a run in this process, the group `job`/`campaign` with that last
/// run's gauges ([`Metrics::last_runs`]): a failed run stays visible until the
/// campaign runs again, whatever other runs push meanwhile.
///
/// # Errors
/// [`TelemetryError::PushUrl`] for a bad URL, [`TelemetryError::Push`] when the
/// Pushgateway cannot be reached or does not answer 2xx.
pub async fn push_metrics(base: &str, job: &str, instance: &str) -> Result<(), TelemetryError> {
    push_metrics_of(metrics::global(), base, job, instance).await
}

/// [`push_metrics`] for a given registry.
///
/// # Errors
/// As [`push_metrics`].
pub async fn push_metrics_of(metrics: &Metrics, base: &str, job: &str, instance: &str) -> Result<(), TelemetryError> {
    let url = push_url(base, job, instance)?;
    put_group(url, metrics.encode_prometheus()).await?;
    // each campaign that ran here: its last run under its own key, which a run of
    // other campaigns (or of none) never replaces
    for (campaign, text) in metrics.last_runs() {
        put_group(push_url_grouped(base, job, ("campaign", &campaign))?, text).await?;
    }
    Ok(())
}

/// Replaces the group at `url` with `body` (Prometheus text).
async fn put_group(url: url::Url, body: String) -> Result<(), TelemetryError> {
    let shown = redact_url(url.as_str());
    let fail = |message: String| TelemetryError::Push { url: shown.clone(), message };
    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .build()
        .map_err(|e| fail(format!("cannot build HTTP client: {e}")))?;
    let response = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, metrics::PROMETHEUS_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let excerpt: String = body.chars().take(200).collect();
        return Err(fail(format!("answered {status}: {}", excerpt.trim())));
    }
    debug!(url = %shown, "metrics pushed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":9090").unwrap(), "0.0.0.0:9090".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(parse_listen("[::]:9090").unwrap(), "[::]:9090".parse().unwrap());
        let e = parse_listen("localhost").unwrap_err().to_string();
        assert!(e.contains("metrics_listen") && e.contains("localhost"), "{e}");
    }

    #[test]
    fn push_urls_are_grouping_keys() {
        let u = push_url("http://pgw:9091", "reverify", "host-1").unwrap();
        assert_eq!(u.as_str(), "http://pgw:9091/metrics/job/reverify/instance/host-1");
        let u = push_url("http://pgw:9091/prefix/", "reverify", "a b/c").unwrap();
        assert_eq!(u.as_str(), "http://pgw:9091/prefix/metrics/job/reverify/instance/a%20b%2Fc");
        let e = push_url("http://u:secret@pgw:9091", "reverify", "").unwrap_err().to_string();
        assert!(e.contains("empty") && !e.contains("secret"), "{e}");
        assert!(push_url("ftp://pgw", "j", "i").is_err());
    }
}
