//! The eligibility policy: who may be sent a new verification session, and when.
//!
//! These are the Baanx limits (../shared/baanx-api.md) as pure functions over the
//! user's standing, the sessions the ledger holds for them, and an instant. The store
//! evaluates the same rules in the transaction that reserves a session, and the
//! sandbox enforces them on the API side; these functions are the reference.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::VerificationState;

/// At most this many sessions per user in any rolling 24 hours.
pub const MAX_SESSIONS_PER_DAY: usize = 10;
/// At most this many unexpired sessions per user at once.
pub const MAX_ACTIVE_SESSIONS: usize = 3;
/// Consecutive failures that start a cooldown.
pub const FAILURES_BEFORE_COOLDOWN: u32 = 3;

/// The rolling window of the daily cap.
pub fn session_window() -> Duration {
    Duration::hours(24)
}

/// How long after a rejection no new session may be generated.
pub fn rejection_cooldown() -> Duration {
    Duration::hours(24)
}

/// How long after the third consecutive failure no new session may be generated.
pub fn failure_cooldown() -> Duration {
    Duration::hours(1)
}

/// What the policy needs to know about a user, apart from their sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStanding {
    pub state: VerificationState,
    pub rejected_at: Option<DateTime<Utc>>,
    /// Failed or abandoned sessions in a row; a success resets it.
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// A session that counts against the limits: reserved or issued, not one the API
/// definitely refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSlot {
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Why a user is not a target at all (for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    AlreadyVerified,
    Pending,
}

impl SkipReason {
    /// The recorded spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadyVerified => "already_verified",
            SkipReason::Pending => "pending",
        }
    }
}

/// Why a user must wait, never why they are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    RejectionCooldown,
    FailureCooldown,
    DailyCap,
    Concurrency,
}

impl DeferReason {
    /// The recorded spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::RejectionCooldown => "rejection_cooldown",
            DeferReason::FailureCooldown => "failure_cooldown",
            DeferReason::DailyCap => "daily_cap",
            DeferReason::Concurrency => "concurrency",
        }
    }
}

/// The policy's answer for one user at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Eligible,
    Skip(SkipReason),
    Defer { reason: DeferReason, until: DateTime<Utc> },
}

/// The rules that depend on the user's state alone: PENDING and VERIFIED users are
/// never sent a session by a campaign; a rejection or a third failure in a row
/// starts a cooldown.
pub fn standing_verdict(user: &UserStanding, now: DateTime<Utc>) -> Verdict {
    match user.state {
        VerificationState::Verified => return Verdict::Skip(SkipReason::AlreadyVerified),
        VerificationState::Pending => return Verdict::Skip(SkipReason::Pending),
        VerificationState::Unverified | VerificationState::Rejected => {}
    }
    let mut wait: Option<(DeferReason, DateTime<Utc>)> = None;
    // A REJECTED user with no known rejection time has just been rejected, as far as
    // we can tell: the safe reading is "the cooldown starts now". The store dates
    // such a user when it first sees them REJECTED (and migration 0004 dated the
    // rows written before), so this is a fallback: read at every evaluation, it
    // would be a cooldown that never ends.
    if user.state == VerificationState::Rejected {
        let until = user.rejected_at.unwrap_or(now) + rejection_cooldown();
        if until > now {
            wait = Some((DeferReason::RejectionCooldown, until));
        }
    }
    if user.consecutive_failures >= FAILURES_BEFORE_COOLDOWN {
        let until = user.last_failure_at.unwrap_or(now) + failure_cooldown();
        if until > now && wait.is_none_or(|(_, w)| until > w) {
            wait = Some((DeferReason::FailureCooldown, until));
        }
    }
    match wait {
        Some((reason, until)) => Verdict::Defer { reason, until },
        None => Verdict::Eligible,
    }
}

/// The rules that depend on the ledger: at most [`MAX_SESSIONS_PER_DAY`] sessions in
/// any rolling 24 hours and at most [`MAX_ACTIVE_SESSIONS`] unexpired at once.
/// `sessions` may hold older rows; they are ignored.
pub fn ledger_verdict(sessions: &[SessionSlot], now: DateTime<Utc>) -> Verdict {
    let window_start = now - session_window();
    // A session reserved exactly 24 h ago has left the window.
    let mut in_window: Vec<DateTime<Utc>> =
        sessions.iter().map(|s| s.reserved_at).filter(|t| *t > window_start).collect();
    if in_window.len() >= MAX_SESSIONS_PER_DAY {
        in_window.sort_unstable();
        // A slot frees when enough of the oldest leave the window.
        let must_leave = in_window.len() + 1 - MAX_SESSIONS_PER_DAY;
        let until = in_window[must_leave - 1] + session_window();
        return Verdict::Defer { reason: DeferReason::DailyCap, until };
    }
    // A session expiring exactly now is expired.
    let mut active: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.expires_at).filter(|t| *t > now).collect();
    if active.len() >= MAX_ACTIVE_SESSIONS {
        active.sort_unstable();
        let must_expire = active.len() + 1 - MAX_ACTIVE_SESSIONS;
        let until = active[must_expire - 1];
        return Verdict::Defer { reason: DeferReason::Concurrency, until };
    }
    Verdict::Eligible
}

/// Both sets of rules; the latest wait wins, so a deferred user is retried only when
/// every limit allows it.
pub fn evaluate(user: &UserStanding, sessions: &[SessionSlot], now: DateTime<Utc>) -> Verdict {
    match (standing_verdict(user, now), ledger_verdict(sessions, now)) {
        (Verdict::Skip(r), _) => Verdict::Skip(r),
        (Verdict::Eligible, v) => v,
        (v, Verdict::Eligible) => v,
        (Verdict::Defer { reason: a, until: ua }, Verdict::Defer { reason: b, until: ub }) => {
            if ub > ua {
                Verdict::Defer { reason: b, until: ub }
            } else {
                Verdict::Defer { reason: a, until: ua }
            }
        }
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn user(state: VerificationState) -> UserStanding {
        UserStanding { state, rejected_at: None, consecutive_failures: 0, last_failure_at: None }
    }

    fn slot(reserved_at: DateTime<Utc>, ttl: Duration) -> SessionSlot {
        SessionSlot { reserved_at, expires_at: reserved_at + ttl }
    }

    #[test]
    fn states() {
        let now = t0();
        assert_eq!(standing_verdict(&user(VerificationState::Unverified), now), Verdict::Eligible);
        assert_eq!(
            standing_verdict(&user(VerificationState::Verified), now),
            Verdict::Skip(SkipReason::AlreadyVerified)
        );
        assert_eq!(standing_verdict(&user(VerificationState::Pending), now), Verdict::Skip(SkipReason::Pending));
    }

    #[test]
    fn rejection_cooldown_boundary_is_exactly_24h() {
        let now = t0();
        let mut u = user(VerificationState::Rejected);
        u.rejected_at = Some(now - Duration::hours(24));
        assert_eq!(standing_verdict(&u, now), Verdict::Eligible, "exactly 24 h is enough");
        u.rejected_at = Some(now - Duration::hours(24) + Duration::milliseconds(1));
        assert_eq!(
            standing_verdict(&u, now),
            Verdict::Defer { reason: DeferReason::RejectionCooldown, until: now + Duration::milliseconds(1) }
        );
        u.rejected_at = None;
        assert_eq!(
            standing_verdict(&u, now),
            Verdict::Defer { reason: DeferReason::RejectionCooldown, until: now + Duration::hours(24) },
            "an unknown rejection time is read as now"
        );
    }

    #[test]
    fn failure_cooldown_starts_at_the_third_and_resets() {
        let now = t0();
        let mut u = user(VerificationState::Unverified);
        u.last_failure_at = Some(now - Duration::minutes(10));
        u.consecutive_failures = 2;
        assert_eq!(standing_verdict(&u, now), Verdict::Eligible, "two failures: no cooldown");
        u.consecutive_failures = 3;
        assert_eq!(
            standing_verdict(&u, now),
            Verdict::Defer { reason: DeferReason::FailureCooldown, until: now + Duration::minutes(50) }
        );
        u.last_failure_at = Some(now - Duration::hours(1));
        assert_eq!(standing_verdict(&u, now), Verdict::Eligible, "cooldown over after exactly 1 h");
        // A success resets the counter: the store writes 0.
        u.last_failure_at = Some(now - Duration::minutes(1));
        u.consecutive_failures = 0;
        assert_eq!(standing_verdict(&u, now), Verdict::Eligible);
    }

    #[test]
    fn the_longer_cooldown_wins() {
        let now = t0();
        let u = UserStanding {
            state: VerificationState::Rejected,
            rejected_at: Some(now - Duration::hours(1)),
            consecutive_failures: 3,
            last_failure_at: Some(now - Duration::minutes(30)),
        };
        assert_eq!(
            standing_verdict(&u, now),
            Verdict::Defer { reason: DeferReason::RejectionCooldown, until: now + Duration::hours(23) }
        );
    }

    #[test]
    fn tenth_session_allowed_eleventh_deferred() {
        let now = t0();
        // short-lived sessions so that concurrency does not interfere
        let nine: Vec<SessionSlot> =
            (0..9).map(|i| slot(now - Duration::hours(20) + Duration::hours(i), Duration::minutes(1))).collect();
        assert_eq!(ledger_verdict(&nine, now), Verdict::Eligible, "the 10th is allowed");
        let mut ten = nine.clone();
        ten.push(slot(now - Duration::minutes(5), Duration::minutes(1)));
        assert_eq!(
            ledger_verdict(&ten, now),
            Verdict::Defer { reason: DeferReason::DailyCap, until: now + Duration::hours(4) },
            "the 11th waits until the oldest leaves the window"
        );
        // the oldest reserved exactly 24 h ago is out of the window
        let mut edge = ten.clone();
        edge[0].reserved_at = now - Duration::hours(24);
        assert_eq!(ledger_verdict(&edge, now), Verdict::Eligible);
    }

    #[test]
    fn third_concurrent_allowed_fourth_deferred() {
        let now = t0();
        let two = vec![
            slot(now - Duration::hours(2), Duration::hours(24)),
            slot(now - Duration::hours(1), Duration::hours(24)),
        ];
        assert_eq!(ledger_verdict(&two, now), Verdict::Eligible, "the 3rd is allowed");
        let mut three = two.clone();
        three.push(slot(now, Duration::hours(24)));
        assert_eq!(
            ledger_verdict(&three, now),
            Verdict::Defer { reason: DeferReason::Concurrency, until: now + Duration::hours(22) },
            "the 4th waits for the first to expire"
        );
        // a session expiring exactly now no longer counts
        three[0].expires_at = now;
        assert_eq!(ledger_verdict(&three, now), Verdict::Eligible);
    }

    #[test]
    fn evaluate_combines() {
        let now = t0();
        let u = user(VerificationState::Verified);
        assert_eq!(evaluate(&u, &[], now), Verdict::Skip(SkipReason::AlreadyVerified));
        let u = user(VerificationState::Unverified);
        let three: Vec<SessionSlot> = (0..3).map(|_| slot(now, Duration::hours(1))).collect();
        assert_eq!(
            evaluate(&u, &three, now),
            Verdict::Defer { reason: DeferReason::Concurrency, until: now + Duration::hours(1) }
        );
    }
}
