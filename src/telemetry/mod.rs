//! Telemetry: log set-up (human-readable lines on a terminal, JSON lines for
//! Kubernetes), Prometheus metrics, and the operations endpoints a daemon serves.

pub mod metrics;
pub mod server;
#[doc(hidden)]
pub mod testing;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
pub use metrics::{Metrics, global, refresh_target_gauges};
pub use server::{
    OpsServer, OpsStarting, parse_listen, push_instance, push_metrics, serve_ops, serve_ops_starting, serve_ops_with,
};

/// Why the operations server could not start or a push failed. Messages never
/// carry a password from a URL.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `metrics_listen` is not an address, or it cannot be bound.
    #[error("metrics_listen {addr}: {message}")]
    Listen { addr: String, message: String },
    /// `metrics_push_url` cannot make a Pushgateway URL.
    #[error("metrics_push_url {url}: {message}")]
    PushUrl { url: String, message: String },
    /// The Pushgateway could not be reached or refused the push.
    #[error("pushing metrics to {url} failed: {message}")]
    Push { url: String, message: String },
}

/// Installs the global subscriber, writing to standard error. `RUST_LOG`, when set,
/// wins over `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (in tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).flatten_event(true).try_init(),
    };
}
