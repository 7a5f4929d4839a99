//! Whether the daemon's scheduler loop is alive, for the liveness probe.
//!
//! Decisions:
//! - The loop says it is alive by completing passes ([`Liveness::beat`]), a failed
//!   pass included: a database that is down is `/readyz`'s business, and restarting
//!   the process would not bring it back. What only a restart cures is a loop that
//!   no longer completes passes at all (a hung statement, a deadlock in the
//!   process), while the HTTP server still answers.
//! - The window is twice the loop's longest sleep plus a margin for one pass's own
//!   work ([`window_for`]), so that neither a long sleep nor a slow pass reads as
//!   dead.
//! - Nothing is watched until a loop asks ([`Liveness::watch`]): a one-shot run, or
//!   a daemon still migrating its database, is alive as long as it answers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The margin added to twice the longest sleep: a pass waits at most the store's
/// lock timeout (30 s) on any one statement.
pub const MARGIN: Duration = Duration::from_secs(30);

/// The liveness window of a loop whose longest sleep is `longest_sleep`.
pub fn window_for(longest_sleep: Duration) -> Duration {
    longest_sleep * 2 + MARGIN
}

/// The last completed pass of the watched loop, and its window.
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    /// Milliseconds after `base` of the last pass.
    last_ms: AtomicU64,
    /// The window in milliseconds; 0 while no loop is watched.
    window_ms: AtomicU64,
}

/// The process's one [`Liveness`].
pub fn liveness() -> &'static Liveness {
    static LIVENESS: OnceLock<Liveness> = OnceLock::new();
    LIVENESS.get_or_init(Liveness::new)
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    /// A liveness that watches nothing yet.
    pub fn new() -> Self {
        Self { base: Instant::now(), last_ms: AtomicU64::new(0), window_ms: AtomicU64::new(0) }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts watching a loop that completes a pass at least every `window`; its
    /// start counts as a pass.
    pub fn watch(&self, window: Duration) {
        self.beat();
        self.window_ms.store(u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    /// Stops watching (the loop returned: the process is stopping).
    pub fn unwatch(&self) {
        self.window_ms.store(0, Ordering::Relaxed);
    }

    /// The watched loop completed a pass now.
    pub fn beat(&self) {
        self.last_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        super::global().set_scheduler_pass(unix);
    }

    /// How long the watched loop has gone without a pass, when that is longer than
    /// its window; `None` while it is alive or nothing is watched.
    pub fn stale(&self) -> Option<Duration> {
        let window = self.window_ms.load(Ordering::Relaxed);
        if window == 0 {
            return None;
        }
        let quiet = self.elapsed_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        (quiet > window).then(|| Duration::from_millis(quiet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stale_only_past_its_window() {
        let l = Liveness::new();
        assert_eq!(l.stale(), None, "nothing watched");
        l.watch(Duration::from_millis(30));
        assert_eq!(l.stale(), None, "just started");
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.stale().is_some_and(|q| q >= Duration::from_millis(60)), "{:?}", l.stale());
        l.beat();
        assert_eq!(l.stale(), None, "a pass makes it alive again");
        std::thread::sleep(Duration::from_millis(60));
        l.unwatch();
        assert_eq!(l.stale(), None, "a stopping loop is not stale");
        assert_eq!(window_for(Duration::from_secs(30)), Duration::from_secs(90));
    }
}
