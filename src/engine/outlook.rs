//! What comes next for a campaign: its next tick and its next follow-up, inside its
//! life (`campaign show`, `campaign status`, the dashboard).

use chrono::{DateTime, Utc};

use crate::domain::spec::Life;
use crate::store::campaigns::{CampaignRecord, CampaignStatus};
use crate::store::targets::FollowUpPlan;
use crate::store::{Store, StoreError};

/// A campaign's next events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outlook {
    /// The schedule's next tick (active campaigns, inside their life).
    pub next_tick: Option<DateTime<Utc>>,
    /// The next follow-up of held-back users: when, how many, why.
    pub next_follow_up: Option<FollowUpPlan>,
    /// Whether held-back users are followed up between ticks (not `schedule_only`).
    pub follows_up: bool,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// When the campaign completed (its `ends_at` passed).
    pub completed_at: Option<DateTime<Utc>>,
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Outlook {
    /// The outlook's lines for a terminal, `label: text`.
    pub fn lines(&self, status: CampaignStatus) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(t) = self.starts_at {
            out.push(("starts", at(t)));
        }
        if let Some(t) = self.ends_at {
            out.push(("ends", at(t)));
        }
        if let Some(t) = self.completed_at {
            out.push(("completed", format!("{} (no message leaves any more)", at(t))));
            return out;
        }
        out.push(("next tick", self.next_tick.map_or_else(|| "none".into(), at)));
        let follow_up = match (&self.next_follow_up, status) {
            (_, s) if s != CampaignStatus::Active => format!("none while {s}"),
            (_, _) if !self.follows_up => "none: schedule_only (held-back users wait for the next tick)".into(),
            (Some(p), _) => p.describe(),
            (None, _) => "none: nobody waits".into(),
        };
        out.push(("next follow-up", follow_up));
        out
    }
}

/// `c`'s outlook at `now`.
///
/// # Errors
/// [`StoreError`].
pub async fn outlook(store: &Store, c: &CampaignRecord, now: DateTime<Utc>) -> Result<Outlook, StoreError> {
    let spec = c.spec().ok();
    let active = c.status == CampaignStatus::Active;
    let follows_up = spec.as_ref().is_some_and(|s| s.follows_up());
    let running = spec.as_ref().is_some_and(|s| s.life_at(now) != Life::Ended);
    let next_follow_up =
        if active && follows_up && running { store.target_follow_up_plan(c.campaign_id, now).await? } else { None };
    Ok(Outlook {
        next_tick: spec.as_ref().filter(|_| active).and_then(|s| s.next_tick_after(now)),
        next_follow_up,
        follows_up,
        starts_at: spec.as_ref().and_then(|s| s.starts_at).map(|s| s.0),
        ends_at: spec.as_ref().and_then(|s| s.ends_at).map(|s| s.0),
        completed_at: c.completed_at,
    })
}
