//! What the notifier tells of its work, for whoever keeps metrics: the engine
//! installs an observer that feeds the process's metrics.

use super::template::LocaleMatch;
use crate::domain::CampaignName;

/// Hears of what the notifier does. Each method does nothing unless overridden.
pub trait NotifyObserver: Send + Sync + std::fmt::Debug {
    /// A message of `campaign` was rendered in another locale than the user's
    /// (`matched` says which).
    fn locale_fallback(&self, _campaign: &CampaignName, _matched: LocaleMatch) {}

    /// One delivery attempt on `channel` (`smtp`, `outbox`, `webhook`) ended with
    /// `result` (`ok`, `transient`, `permanent`, `unknown`, `error`) after `took`.
    fn attempt(&self, _channel: &'static str, _result: &'static str, _took: std::time::Duration) {}
}

/// Hears nothing: the observer of a notifier nobody installed one in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unheard;

impl NotifyObserver for Unheard {}
