//! Pure types and rules: identifiers parsed at the edge, the eligibility policy,
//! campaign specs, cron schedules and the user file format. Nothing here opens a
//! file or a connection; time comes in through [`Clock`] so that every rule can be
//! tested at its boundaries.

pub mod bounce;
pub mod clock;
pub mod endpoint;
pub mod freshness;
pub mod ids;
pub mod locale;
pub mod personal;
pub mod policy;
pub mod proxies;
pub mod recipient;
pub mod schedule;
pub mod session_url;
pub mod spec;
pub mod status;
pub mod subject;
pub mod userfile;
pub mod window;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::{CampaignName, EmailAddress, IdError, Region, UserId, VerificationState};
pub use locale::Locale;
pub use policy::{DeferReason, SessionSlot, SkipReason, UserStanding, Verdict};
pub use recipient::{Recipient, TimeZone};
pub use schedule::{CronSchedule, Due, ScheduleError};
pub use session_url::SessionUrl;
pub use status::{SessionStatus, TargetReason, TargetStatus, Transition};

/// What a delivered message was, for the audit trail: the template it was rendered
/// from at which version, and the SHA-256 of the exact message with its link
/// replaced by [`LINK_PLACEHOLDER`] (the link is a credential and never kept).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageDigest {
    /// The template's name; `None` for a webhook (its payload is fixed).
    pub template: Option<String>,
    /// The template's version (`notify::template_digest` over its files).
    pub template_sha256: Option<String>,
    /// Email: SHA-256 of the JSON array `[subject, text body, HTML body]`; webhook:
    /// of the JSON payload.
    pub message_sha256: String,
}

/// What stands for the link in a message whose hash is kept.
pub const LINK_PLACEHOLDER: &str = "{link}";
pub use spec::{CampaignSpec, SpecError};
