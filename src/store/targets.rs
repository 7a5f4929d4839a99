//! Campaign targets: who a campaign will notify, and the claims that keep two
//! workers from processing the same user.
//!
//! Targeting is one set-based `INSERT … SELECT`; claiming is one statement that
//! flips a batch to `claimed` under a lease (Postgres: `FOR UPDATE SKIP LOCKED`;
//! SQLite: its single writer). A heartbeat renews the lease while the worker lives;
//! a worker that dies leaves claims that expire and are claimed again by the next.
//!
//! The parts: `audience.rs` (the audience as SQL, targeting, the exclusions),
//! `claims.rs` (claiming, the heartbeat, the release), `transitions.rs` (every
//! other change of a target's status) and `followup.rs` (when held-back targets
//! come due, the reminder stamps).

mod audience;
mod claims;
mod followup;
mod transitions;

pub use audience::Targeted;
pub(crate) use audience::{AudienceSql, bind_all};
pub use claims::{Claim, ClaimBatchParams, ClaimCursor, ClaimedTarget};
pub(crate) use transitions::{
    AfterMessage, TargetBounced, TargetDelivered, delivery_target_update, target_bounced_in_tx, target_click_session,
    target_clicked_in_tx, target_delivered_in_tx, targets_after_message_in_tx, targets_forget_user_in_tx,
    targets_notified_by_link_in_tx,
};
pub use transitions::{SettleParams, StatusCount};

pub use followup::{FollowUpPlan, NO_REMINDER_YET};
pub(crate) use followup::{targets_end_campaign_in_tx, targets_reminder_recheck_in_tx};
