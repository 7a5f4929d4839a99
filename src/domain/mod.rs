//! Pure types and rules: identifiers parsed at the edge, the eligibility policy,
//! campaign specs and cron schedules. Nothing here does I/O; time comes in through
//! [`Clock`] so that every rule can be tested at its boundaries.

pub mod clock;
pub mod endpoint;
pub mod ids;
pub mod locale;
pub mod policy;
pub mod schedule;
pub mod session_url;
pub mod spec;
pub mod window;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::{CampaignName, EmailAddress, IdError, Region, UserId, VerificationState};
pub use policy::{DeferReason, SessionSlot, SkipReason, UserStanding, Verdict};
pub use schedule::{CronSchedule, Due, ScheduleError};
pub use session_url::SessionUrl;
pub use spec::{CampaignSpec, SpecError};
