//! The states of the ledger's rows and why a target is where it is: enums, stored
//! as the text they spell (`as_str`), parsed back with `FromStr`. The schema's
//! `CHECK` constraints list the same spellings; a test compares them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::policy::{DeferReason, SkipReason};

/// Declares a text-stored enum: its variants with their spellings, `ALL`,
/// `as_str`, `Display` and `FromStr`.
macro_rules! stored_text {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the documented order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { what: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

/// A stored spelling no variant has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

stored_text! {
    /// Where a campaign target stands (`campaign_targets.status`).
    ///
    /// `pending` → `claimed` (a worker's lease) → `notified` | `skipped` | `deferred`
    /// (due again at `not_before`) | `failed` | `pending` (a retry); `notified` →
    /// `converted` when its user verifies, or `pending` again for a reminder.
    TargetStatus {
        Pending = "pending",
        Claimed = "claimed",
        Notified = "notified",
        Skipped = "skipped",
        Deferred = "deferred",
        Failed = "failed",
        Converted = "converted",
    }
}

impl TargetStatus {
    /// The order a campaign's progress lists them in (`campaign status`, the
    /// dashboard): the waiting ones, then the outcomes.
    pub const BY_PROGRESS: [TargetStatus; 7] = [
        TargetStatus::Pending,
        TargetStatus::Claimed,
        TargetStatus::Deferred,
        TargetStatus::Notified,
        TargetStatus::Converted,
        TargetStatus::Skipped,
        TargetStatus::Failed,
    ];

    /// Not yet settled: pending, claimed or deferred.
    pub fn is_waiting(self) -> bool {
        matches!(self, TargetStatus::Pending | TargetStatus::Claimed | TargetStatus::Deferred)
    }

    /// Shown in a progress listing even when no target has it.
    pub fn shown_when_zero(self) -> bool {
        matches!(self, TargetStatus::Pending | TargetStatus::Notified)
    }
}

stored_text! {
    /// A row of the session ledger (`verification_sessions.status`).
    ///
    /// `reserved` (before the API call; it counts) → `issued` (the API answered with
    /// a URL, held in memory only) → `delivered` | `delivery_failed`; `api_failed`
    /// (the API surely made no session: it does not count); `unknown` (a crash, an
    /// unclear API failure or an ambiguous delivery: it counts); `orphaned` (issued
    /// after the claim was lost, never sent: it counts).
    SessionStatus {
        Reserved = "reserved",
        Issued = "issued",
        Delivered = "delivered",
        DeliveryFailed = "delivery_failed",
        ApiFailed = "api_failed",
        Unknown = "unknown",
        Orphaned = "orphaned",
        /// Delivered, then bounced (a hard bounce, or the third soft one in 7 days):
        /// the person never saw it. It keeps counting: the session exists.
        Bounced = "bounced",
    }
}

stored_text! {
    /// Why a target is skipped, deferred, failed or waiting (`campaign_targets.reason`).
    TargetReason {
        // waiting for a limit (deferred)
        RejectionCooldown = "rejection_cooldown",
        FailureCooldown = "failure_cooldown",
        DailyCap = "daily_cap",
        Concurrency = "concurrency",
        /// Baanx refused with its own per-user limit and did not say which.
        ApiSessionLimit = "api_session_limit",
        /// Outside the campaign's send window in the user's zone.
        SendWindow = "send_window",
        // not to be asked (skipped)
        AlreadyVerified = "already_verified",
        Pending = "pending",
        ConsentRequired = "consent_required",
        Forgotten = "forgotten",
        ExcludedRejectionCode = "excluded_rejection_code",
        MaxAttempts = "max_attempts",
        // failed
        Forbidden = "forbidden",
        ApiRefused = "api_refused",
        InvalidUserRecord = "invalid_user_record",
        DeliveryFailed = "delivery_failed",
        DeliveryUnknown = "delivery_unknown",
        /// The message bounced for good (issue 27): the address is undeliverable.
        Bounced = "bounced",
        // skipped by email
        /// The user's address bounced for good and the campaign has no fallback.
        EmailUndeliverable = "email_undeliverable",
        /// The user complained about a message and the campaign's
        /// `delivery.on_complaint` is `suppress`.
        Complained = "complained",
        /// Re-queued to be sent through the campaign's fallback channel after a bounce.
        Fallback = "fallback",
        // retried later (pending), or failed once out of attempts
        RateLimited = "rate_limited",
        ApiUnavailable = "api_unavailable",
        /// The run stopped (a setting or the API's answer made every user fail alike).
        RunStopped = "run_stopped",
        /// Re-queued for a reminder.
        Reminder = "reminder",
        /// The campaign's `ends_at` passed before the user could be asked (skipped).
        CampaignEnded = "campaign_ended",
    }
}

impl From<DeferReason> for TargetReason {
    fn from(r: DeferReason) -> Self {
        match r {
            DeferReason::RejectionCooldown => TargetReason::RejectionCooldown,
            DeferReason::FailureCooldown => TargetReason::FailureCooldown,
            DeferReason::DailyCap => TargetReason::DailyCap,
            DeferReason::Concurrency => TargetReason::Concurrency,
        }
    }
}

impl From<SkipReason> for TargetReason {
    fn from(r: SkipReason) -> Self {
        match r {
            SkipReason::AlreadyVerified => TargetReason::AlreadyVerified,
            SkipReason::Pending => TargetReason::Pending,
        }
    }
}

/// Where a claimed target goes: its new status, the reason, and when it is due
/// again (deferred or pending targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub status: TargetStatus,
    pub reason: TargetReason,
    pub not_before: Option<DateTime<Utc>>,
}

impl Transition {
    /// `status` for `reason`, due again at `not_before`.
    pub fn new(status: TargetStatus, reason: TargetReason, not_before: Option<DateTime<Utc>>) -> Self {
        Self { status, reason, not_before }
    }

    /// Skipped for good.
    pub fn skip(reason: impl Into<TargetReason>) -> Self {
        Self::new(TargetStatus::Skipped, reason.into(), None)
    }

    /// Failed for good.
    pub fn fail(reason: TargetReason) -> Self {
        Self::new(TargetStatus::Failed, reason, None)
    }

    /// Deferred until `until`.
    pub fn defer(reason: impl Into<TargetReason>, until: DateTime<Utc>) -> Self {
        Self::new(TargetStatus::Deferred, reason.into(), Some(until))
    }

    /// Pending again, due at `at` (now when `None`).
    pub fn retry(reason: TargetReason, at: Option<DateTime<Utc>>) -> Self {
        Self::new(TargetStatus::Pending, reason, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings of the first `CHECK (status IN (…))` after `from` in `sql`.
    fn checked(sql: &str, from: &str) -> Vec<String> {
        let rest = &sql[sql.find(from).expect(from)..];
        let open = "CHECK (status IN (";
        let list = &rest[rest.find(open).expect("a check") + open.len()..];
        let mut values: Vec<String> =
            list[..list.find("))").expect("end")].split(',').map(|v| v.trim().trim_matches('\'').to_owned()).collect();
        values.sort();
        values
    }

    fn spellings<T: Copy>(all: &[T], f: impl Fn(T) -> &'static str) -> Vec<String> {
        let mut values: Vec<String> = all.iter().map(|v| f(*v).to_owned()).collect();
        values.sort();
        values
    }

    #[test]
    fn the_enums_spell_what_the_schema_allows() {
        for engine in ["postgres", "sqlite"] {
            let read = |file: &str| std::fs::read_to_string(format!("migrations/{engine}/{file}")).unwrap();
            let initial = read("0001_initial.sql");
            let targets = checked(&initial, "CREATE TABLE campaign_targets");
            assert_eq!(targets, spellings(TargetStatus::ALL, TargetStatus::as_str), "{engine}: campaign_targets");
            // migration 0003 added `orphaned` to the ledger's check, 0016 `bounced`
            let later = read("0016_bounces.sql");
            let at = later.find("'bounced'").and_then(|i| later[..i].rfind("CHECK")).expect("the ledger's check");
            let sessions = checked(&later[at..], "CHECK");
            assert_eq!(
                sessions,
                spellings(SessionStatus::ALL, SessionStatus::as_str),
                "{engine}: verification_sessions"
            );
        }
    }

    #[test]
    fn every_value_reads_back() {
        for s in TargetStatus::ALL {
            assert_eq!(s.as_str().parse::<TargetStatus>(), Ok(*s));
        }
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>(), Ok(*s));
        }
        for r in TargetReason::ALL {
            assert_eq!(r.as_str().parse::<TargetReason>(), Ok(*r));
        }
        assert!("sent".parse::<TargetStatus>().is_err());
        for d in [
            DeferReason::RejectionCooldown,
            DeferReason::FailureCooldown,
            DeferReason::DailyCap,
            DeferReason::Concurrency,
        ] {
            assert_eq!(TargetReason::from(d).as_str(), d.as_str());
        }
        for s in [SkipReason::AlreadyVerified, SkipReason::Pending] {
            assert_eq!(TargetReason::from(s).as_str(), s.as_str());
        }
    }
}
