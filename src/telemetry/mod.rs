//! Telemetry: log set-up (human-readable lines on a terminal, JSON lines for
//! Kubernetes), Prometheus metrics, and the operations endpoints a daemon serves.
//! It knows nothing of the database: the engine sets the gauges read from it
//! (`engine::gauges`) and answers the endpoints' questions about it ([`OpsProbe`]).

pub mod liveness;
pub mod metrics;
pub mod server;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;
pub use metrics::{Metrics, global};
pub use server::{
    OpsProbe, OpsServer, OpsStarting, ProbeError, parse_listen, push_instance, push_metrics, serve_ops,
    serve_ops_starting, serve_public, serve_public_on,
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

/// Directives put before every filter (the setting's or `RUST_LOG`'s, which can
/// override them by naming the same target): Postgres notices such as "relation
/// _sqlx_migrations already exists, skipping" are not news at info.
pub const QUIET_DIRECTIVES: &str = "sqlx::postgres::notice=warn";

/// The filter for `level` (a tracing filter such as `info` or
/// `info,reverify=debug`), after [`QUIET_DIRECTIVES`].
///
/// # Errors
/// The filter's parse error.
pub fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::try_new(format!("{QUIET_DIRECTIVES},{level}"))
}

/// Installs the global subscriber, writing to standard error. `RUST_LOG`, when set,
/// wins over `level`. Colours only when standard error is a terminal, so that a
/// pipe, a file or a log collector gets plain lines.
pub fn init(format: LogFormat, level: &str) {
    let chosen = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = chosen
        .as_deref()
        .and_then(|v| filter(v).ok())
        .or_else(|| filter(level).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{QUIET_DIRECTIVES},info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(QuietStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    // A second init (in tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).flatten_event(true).try_init(),
    };
}

/// Standard error for log lines, where a reader that went away (EPIPE: `| head`
/// that exited, a collector restarted) or a closed descriptor (EBADF) loses the
/// line instead of failing the write: a log line that cannot be written must
/// never stop, slow or crash the work it describes. Other errors are returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietStderr;

impl QuietStderr {
    fn quiet(result: std::io::Result<usize>, len: usize) -> std::io::Result<usize> {
        match result {
            Err(e) if is_gone(&e) => Ok(len),
            r => r,
        }
    }
}

/// Whether `e` says the other end of the stream is gone (EPIPE, EBADF).
pub fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(rustix::io::Errno::BADF.raw_os_error())
}

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::quiet(std::io::stderr().write(buf), buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // one locked write per line, so that lines from several threads never mix
        Self::quiet(std::io::stderr().lock().write_all(buf).map(|()| buf.len()), buf.len()).map(|_| ())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::quiet(std::io::stderr().flush().map(|()| 0), 0).map(|_| ())
    }
}

impl<'a> MakeWriter<'a> for QuietStderr {
    type Writer = QuietStderr;

    fn make_writer(&'a self) -> Self::Writer {
        QuietStderr
    }
}

/// Lets through at most one log line per `every` about something that can repeat
/// without bound (a flood of unsigned webhook posts), and counts the ones held
/// back, so that the next line can say how many there were.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new(ThrottleState::default()) }
    }

    /// One more occurrence at `now`: `Some(n)` when a line may be logged now, `n`
    /// being how many occurrences were held back since the last line; `None` when
    /// this one is held back (and counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                s.held_back += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_a_period_through_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(t.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(t.admit(t0 + Duration::from_secs(61)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(200)), Some(1));
    }

    /// Captures what a subscriber built with [`filter`] lets through.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_with(level: &str, emit: impl FnOnce()) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(level).unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn postgres_notices_are_not_logged_at_info() {
        let emit = || {
            tracing::info!(target: "sqlx::postgres::notice", "relation \"_sqlx_migrations\" already exists, skipping");
            tracing::warn!(target: "sqlx::postgres::notice", "a real warning from the server");
            tracing::info!(target: "reverify::engine", "targeting done");
        };
        let text = logged_with("info", emit);
        assert!(!text.contains("already exists"), "{text}");
        assert!(text.contains("a real warning") && text.contains("targeting done"), "{text}");
        let text = logged_with("debug", emit);
        assert!(!text.contains("already exists"), "{text}");
        // naming the target in the setting (or RUST_LOG) still shows them
        let text = logged_with("info,sqlx::postgres::notice=info", emit);
        assert!(text.contains("already exists"), "{text}");
    }

    #[test]
    fn a_reader_gone_is_not_an_error() {
        let gone = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_gone(&gone));
        assert!(is_gone(&std::io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())));
        assert_eq!(QuietStderr::quiet(Err(gone), 5).unwrap(), 5);
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(QuietStderr::quiet(Err(other), 5).is_err());
    }
}
