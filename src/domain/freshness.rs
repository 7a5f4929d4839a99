//! When a stored verification state is trusted instead of asking `GET /v1/user`
//! again (issue 29): the `fresh_state_max_age` a run or a click applies, from the
//! campaign's key, the setting, and the health of the webhook feed.
//!
//! Decisions:
//! - No age configured: `0s` (always ask) without a webhook feed, `6h` with a
//!   healthy one. A feed is configured when `webhook_key` is set; it is healthy
//!   while a signed webhook was accepted, or a `users sync` finished, within
//!   `webhook_feed_max_silence`.
//! - A configured feed that went silent falls back to asking (`0s`) whatever age is
//!   configured: the age was chosen trusting the feed to push every change.
//! - Without a feed, a configured age is the operator's word (the trust is then in
//!   imports, syncs and earlier fresh-state calls) and is used as is.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The age used when a healthy webhook feed is configured and no age is.
pub const DEFAULT_WITH_FEED: Duration = Duration::from_secs(6 * 3600);

/// The settings the age comes from (`fresh_state_max_age`, `webhook_key` set or
/// not, `webhook_feed_max_silence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshStateSettings {
    /// The `fresh_state_max_age` setting; a campaign's key overrides it.
    pub max_age: Option<Duration>,
    /// Whether a webhook feed is configured (`webhook_key` is set).
    pub webhook_feed: bool,
    /// `webhook_feed_max_silence`.
    pub max_silence: Duration,
}

impl Default for FreshStateSettings {
    fn default() -> Self {
        Self { max_age: None, webhook_feed: false, max_silence: Duration::from_secs(24 * 3600) }
    }
}

/// The webhook feed's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// No `webhook_key`: no feed.
    None,
    /// Heard from within `webhook_feed_max_silence`.
    Healthy,
    /// Configured, and silent for longer than `webhook_feed_max_silence`.
    Silent,
}

impl Feed {
    /// The feed as the last signs of life say at `now`: the latest accepted webhook
    /// or finished `users sync`, if any.
    pub fn judge(
        configured: bool,
        last_heard: Option<DateTime<Utc>>,
        max_silence: Duration,
        now: DateTime<Utc>,
    ) -> Feed {
        if !configured {
            return Feed::None;
        }
        let silence = chrono::Duration::from_std(max_silence).unwrap_or(chrono::Duration::MAX);
        match last_heard {
            Some(at) if now - at <= silence => Feed::Healthy,
            _ => Feed::Silent,
        }
    }
}

/// The fresh-state age in force, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshStateAge {
    pub max_age: Duration,
    pub feed: Feed,
    /// Whether an age was configured (campaign key or setting).
    pub configured: bool,
}

impl FreshStateAge {
    /// The age for a campaign whose key says `campaign` and whose setting says
    /// `setting`, with the feed as it stands.
    pub fn resolve(campaign: Option<Duration>, setting: Option<Duration>, feed: Feed) -> FreshStateAge {
        let configured = campaign.or(setting);
        let max_age = match (feed, configured) {
            (Feed::Silent, _) => Duration::ZERO,
            (_, Some(age)) => age,
            (Feed::Healthy, None) => DEFAULT_WITH_FEED,
            (Feed::None, None) => Duration::ZERO,
        };
        FreshStateAge { max_age, feed, configured: configured.is_some() }
    }

    /// Whether a state confirmed at `confirmed_at` is trusted at `now`.
    pub fn trusts(&self, confirmed_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        if self.max_age.is_zero() {
            return false;
        }
        let age = chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX);
        // a confirmation in the future (another process's clock) counts as now
        confirmed_at.is_some_and(|at| now - at.min(now) <= age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    #[test]
    fn the_default_is_to_ask_without_a_feed_and_six_hours_with_a_healthy_one() {
        let day = Duration::from_secs(86_400);
        assert_eq!(Feed::judge(false, Some(t(0)), day, t(1)), Feed::None);
        assert_eq!(Feed::judge(true, Some(t(0)), day, t(24)), Feed::Healthy);
        assert_eq!(Feed::judge(true, Some(t(0)), day, t(25)), Feed::Silent);
        assert_eq!(Feed::judge(true, None, day, t(0)), Feed::Silent);
        assert_eq!(FreshStateAge::resolve(None, None, Feed::None).max_age, Duration::ZERO);
        assert_eq!(FreshStateAge::resolve(None, None, Feed::Healthy).max_age, DEFAULT_WITH_FEED);
    }

    #[test]
    fn a_silent_feed_asks_whatever_is_configured_and_the_campaign_beats_the_setting() {
        let h = |n: u64| Some(Duration::from_secs(n * 3600));
        assert_eq!(FreshStateAge::resolve(h(2), h(6), Feed::Silent).max_age, Duration::ZERO);
        assert_eq!(FreshStateAge::resolve(h(2), h(6), Feed::Healthy).max_age, Duration::from_secs(7200));
        assert_eq!(FreshStateAge::resolve(None, h(6), Feed::None).max_age, Duration::from_secs(6 * 3600));
        assert_eq!(FreshStateAge::resolve(Some(Duration::ZERO), None, Feed::Healthy).max_age, Duration::ZERO);
    }

    #[test]
    fn trust_ends_at_the_age_and_never_without_a_confirmation() {
        let a = FreshStateAge::resolve(Some(Duration::from_secs(6 * 3600)), None, Feed::None);
        assert!(a.trusts(Some(t(0)), t(6)));
        assert!(!a.trusts(Some(t(0)), t(7)));
        assert!(!a.trusts(None, t(0)));
        assert!(a.trusts(Some(t(2)), t(1)), "a confirmation a little ahead of our clock");
        let never = FreshStateAge::resolve(None, None, Feed::None);
        assert!(!never.trusts(Some(t(1)), t(1)));
    }
}
