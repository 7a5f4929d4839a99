//! What the client tells of its work, for whoever keeps metrics. `baanx` keeps
//! none itself: the engine installs an observer that feeds the process's metrics.

use std::time::Duration;

use super::error::ApiEndpoint;

/// Hears of every request the client sends. Each method does nothing unless
/// overridden.
pub trait ApiObserver: Send + Sync {
    /// A request to `endpoint` was answered with HTTP `status`, or got no answer
    /// (`None`: connect failure, timeout, reset).
    fn request(&self, _endpoint: ApiEndpoint, _status: Option<u16>) {}

    /// The answer from `endpoint` was read in full `latency` after it was sent.
    fn latency(&self, _endpoint: ApiEndpoint, _latency: Duration) {}

    /// The answer was a 429.
    fn rate_limited(&self) {}

    /// A request waited `wait` on the client's limiter before it was sent.
    fn limiter_wait(&self, _wait: Duration) {}
}

/// Hears nothing: the observer of a client nobody installed one in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl ApiObserver for Unobserved {}
