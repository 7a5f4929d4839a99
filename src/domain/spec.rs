//! Campaign files: the TOML a compliance team writes under `jobs/`, parsed into a
//! [`CampaignSpec`] whose every field is already valid.
//!
//! Parsing has two steps. serde reads the TOML with unknown keys refused, so a typo
//! is an error with a line and column; then [`CampaignSpec::validate`] checks what
//! types cannot (a real time zone, a cron expression, a positive rate).

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{CampaignName, CronSchedule, Region, VerificationState};

/// Why a campaign file was refused. Every variant names the file; parse errors
/// also name the line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{file}:{line}:{column}: {message}")]
    Parse { file: String, line: usize, column: usize, message: String },
    #[error("{file}: `{field}`: {message}")]
    Invalid { file: String, field: String, message: String },
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    /// Too big, or not UTF-8; `message` names the file (and the line and column).
    #[error("{message}")]
    Unusable { file: String, message: String },
}

/// A duration written as text, such as `"72h"`, `"90m"` or `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like \"72h\" or \"30m\": {e}"))
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

/// The notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Email,
    Webhook,
}

/// What a campaign does with a user who complained about a message
/// (`delivery.on_complaint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnComplaint {
    /// Go on asking them (the default): a KYC request is a legal obligation, not
    /// marketing. The complaint is still counted and audited.
    #[default]
    Continue,
    /// Skip them (reason `complained`).
    Suppress,
}

impl OnComplaint {
    fn is_continue(&self) -> bool {
        *self == OnComplaint::Continue
    }
}

/// Where a user whose email is undeliverable is reached instead
/// (`delivery.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// The signed webhook channel, at `delivery.fallback_webhook_url` (the partner's
    /// SMS or push gateway).
    Webhook,
}

/// What a message's link is (`delivery.link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// The Baanx session URL itself, made at send time (single use, 24 h).
    #[default]
    Direct,
    /// A link to our own public page (`{public_url}/v/{token}`); the session is made
    /// only when the person clicks, under every limit. Usable until `link_ttl`.
    Click,
}

impl LinkMode {
    /// The spelling in campaign files and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Direct => "direct",
            LinkMode::Click => "click",
        }
    }
}

/// Who a campaign targets. Every list that is present must match; an absent list
/// matches everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Verification states to target; PENDING and VERIFIED users are never sent a
    /// session, whatever this says.
    #[serde(default = "default_states")]
    pub states: Vec<VerificationState>,
    #[serde(default)]
    pub regions: Vec<Region>,
    /// ISO 3166-1 alpha-2 country codes, upper case.
    #[serde(default)]
    pub countries: Vec<String>,
    /// A user matches when they carry any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    pub signed_up_before: Option<DateTime<Utc>>,
    pub signed_up_after: Option<DateTime<Utc>>,
    /// At most this many users are ever targeted by the campaign.
    pub max_users: Option<u64>,
    /// Users whose last rejection carries one of these `failure_code`s (a final
    /// rejection: fraud, sanctions) are never targeted.
    #[serde(default)]
    pub exclude_rejection_codes: Vec<String>,
    /// Users who have had this many sessions, over all campaigns (the ledger), are
    /// not targeted again.
    pub max_attempts: Option<u32>,
    /// A user whose state was confirmed within this (a fresh-state call, a signed
    /// webhook, `users sync`, an import) is not asked `GET /v1/user` again before the
    /// session. Unset: the setting of that name (see the README).
    pub fresh_state_max_age: Option<HumanDuration>,
}

fn default_states() -> Vec<VerificationState> {
    vec![VerificationState::Unverified, VerificationState::Rejected]
}

impl Default for Audience {
    fn default() -> Self {
        Self {
            states: default_states(),
            regions: vec![],
            countries: vec![],
            tags: vec![],
            signed_up_before: None,
            signed_up_after: None,
            max_users: None,
            exclude_rejection_codes: vec![],
            max_attempts: None,
            fresh_state_max_age: None,
        }
    }
}

/// How users are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    #[serde(default)]
    pub channel: Channel,
    /// A template directory name under `jobs/templates/`.
    #[serde(default = "default_template")]
    pub template: String,
    /// The From header, e.g. `Compliance <compliance@example.com>`.
    pub from: Option<String>,
    pub reply_to: Option<String>,
    /// The subject: one line for every locale, or `[delivery.subject]` with a line
    /// per locale (see [`super::subject::Subject`]); absent, each template's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<super::subject::Subject>,
    /// For the webhook channel: where to POST.
    pub webhook_url: Option<String>,
    /// `direct` (default) or `click`: see [`LinkMode`].
    #[serde(default)]
    pub link: LinkMode,
    /// How long a click-through link works (default 14 days).
    #[serde(default = "default_link_ttl")]
    pub link_ttl: HumanDuration,
    /// The locale of the templates used when neither the user's locale nor its
    /// language has one (default `en`).
    #[serde(default = "default_locale")]
    pub default_locale: String,
    /// `"09:00-19:00"`: the hours, in each user's time zone, when messages may leave
    /// (absent: any hour). See [`super::window::SendWindow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_window: Option<String>,
    /// `["mon", …]`: the days a window opens on (absent: every day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_days: Option<Vec<String>>,
    /// Adds `X-Reverify-Campaign` and `X-Reverify-Step` to every email (default
    /// false: a campaign's name is internal, and recipients can read headers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_headers: bool,
    /// The envelope sender of every email, with `{token}` in its local part
    /// (`bounces+{token}@example.com`): each message's own opaque token, so that an
    /// asynchronous bounce finds its message without trusting the bounce's headers
    /// (VERP). Absent: the From address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_path: Option<String>,
    /// A user whose email is undeliverable is sent through this channel instead,
    /// with a new session (absent: they are skipped, reason `email_undeliverable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Where the webhook fallback posts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_webhook_url: Option<String>,
    /// `continue` (default) or `suppress`: see [`OnComplaint`].
    #[serde(default, skip_serializing_if = "OnComplaint::is_continue")]
    pub on_complaint: OnComplaint,
    /// The campaign's `[brand]` (not part of `[delivery]`): set from the spec by
    /// [`CampaignSpec::delivery_for_step`] and by the worker.
    #[serde(skip)]
    pub brand: Option<Brand>,
    /// The campaign's `timezone` (not part of `[delivery]`): a message's dates are
    /// written in it when the user's zone is missing or unknown, as the send
    /// window reads it. Set like `brand`.
    #[serde(skip)]
    pub zone: Option<String>,
}

/// `[brand]`: who the message is from, as people know them: in the subject, the
/// signature and the footer. Per campaign, or global in the settings; a campaign's
/// field wins over the global one ([`Brand::over`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Brand {
    /// The company's name, as on its cards and in its app: `Example Bank`.
    pub name: Option<String>,
    /// Where people check that a message is genuine, typed by hand (https).
    pub support_url: Option<String>,
    /// Where people write to.
    pub support_email: Option<String>,
    /// The postal address in the footer.
    pub address: Option<String>,
    /// The app's name, for "you can also start from the app".
    pub app_name: Option<String>,
}

impl Brand {
    /// This brand's fields, each falling back to `global`'s.
    pub fn over(&self, global: &Brand) -> Brand {
        let pick = |mine: &Option<String>, theirs: &Option<String>| mine.clone().or_else(|| theirs.clone());
        Brand {
            name: pick(&self.name, &global.name),
            support_url: pick(&self.support_url, &global.support_url),
            support_email: pick(&self.support_email, &global.support_email),
            address: pick(&self.address, &global.address),
            app_name: pick(&self.app_name, &global.app_name),
        }
    }

    /// What types cannot check, as (field under `brand.`, message).
    ///
    /// # Errors
    /// The first field at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [
            ("name", &self.name),
            ("support_url", &self.support_url),
            ("support_email", &self.support_email),
            ("address", &self.address),
            ("app_name", &self.app_name),
        ] {
            if let Some(v) = v
                && (v.trim().is_empty() || v.contains(['\n', '\r']))
            {
                return Err((field, "must be one non-empty line; leave it out instead".into()));
            }
        }
        if let Some(u) = &self.support_url {
            match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "https" => {}
                Ok(_) => return Err(("support_url", format!("{u:?} must start with https://"))),
                Err(e) => return Err(("support_url", format!("{u:?} is not a URL: {e}"))),
            }
        }
        if let Some(e) = &self.support_email
            && super::EmailAddress::parse(e).is_err()
        {
            return Err(("support_email", format!("{e:?} is not an email address")));
        }
        Ok(())
    }
}

impl Delivery {
    /// The delivery of message `step` of a target: this one for the first (0), with
    /// the reminders' template for a reminder (1 and on).
    pub fn for_step(&self, step: u32, reminders: Option<&Reminders>) -> Delivery {
        let mut d = self.clone();
        if step > 0
            && let Some(r) = reminders
        {
            d.template = r.template.clone();
        }
        d
    }

    /// What `campaign validate` warns about, as (field, message): a campaign may
    /// mean it, but it is rarely right.
    pub fn warnings(&self) -> Vec<(&'static str, String)> {
        self.subject
            .as_ref()
            .and_then(super::subject::Subject::warning)
            .map(|w| ("delivery.subject", w))
            .into_iter()
            .collect()
    }

    /// The send window, when the campaign has one (validated with the spec).
    pub fn window(&self) -> Option<super::window::SendWindow> {
        if self.send_window.is_none() && self.send_days.is_none() {
            return None;
        }
        super::window::SendWindow::parse(self.send_window.as_deref(), self.send_days.as_deref()).ok()
    }
}

fn default_locale() -> String {
    "en".into()
}

fn default_link_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(14 * 86_400))
}

fn default_template() -> String {
    "default".into()
}

/// How fast this campaign may go; the global limits still apply on top.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests allowed above the steady rate in a burst.
    pub burst: Option<u32>,
}

fn default_rps() -> f64 {
    10.0
}

fn default_concurrency() -> u32 {
    8
}

impl Default for Throttle {
    fn default() -> Self {
        Self { requests_per_second: default_rps(), concurrency: default_concurrency(), burst: None }
    }
}

/// Reminders to users who were notified and have not verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reminders {
    /// How long after the last message a reminder is due (and after the last session expired).
    pub after: HumanDuration,
    /// At most this many reminders per user.
    #[serde(default = "default_max_reminders")]
    pub max: u32,
    #[serde(default = "default_reminder_template")]
    pub template: String,
    /// Re-queue users who were rejected, once their 24 h cooldown is over.
    #[serde(default)]
    pub include_rejected: bool,
}

fn default_max_reminders() -> u32 {
    2
}

fn default_reminder_template() -> String {
    "reminder".into()
}

/// A gradual start (`[rollout]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The first run sends to at most this many targets, then the campaign pauses
    /// with reason `canary_review` until `campaign resume`.
    pub canary: Option<u64>,
}

/// Thresholds that pause a campaign by itself (`[halt]`): once a run has processed
/// `min_sample` users, a rate above its threshold stops the run and pauses the
/// campaign with the reason and the figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Halt {
    /// Failed deliveries over attempted deliveries (0 to 1).
    pub delivery_failure_rate: Option<f64>,
    /// Users whose Baanx calls failed (unavailable, rate limited, refused) over users
    /// processed (0 to 1).
    pub api_error_rate: Option<f64>,
    /// Hard-bounced messages over messages delivered (0 to 1), judged as bounces
    /// arrive (issue 27): protects the sender's reputation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_rate: Option<f64>,
    /// How many users (deliveries, for the delivery rate) a run must have seen before
    /// a rate is judged.
    #[serde(default = "default_min_sample")]
    pub min_sample: u64,
}

fn default_min_sample() -> u64 {
    20
}

/// A whole campaign file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub name: CampaignName,
    #[serde(default)]
    pub description: String,
    /// Cron, 5-field crontab or 6/7-field with seconds; absent means "only when run by hand".
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// A tick missed by more than this is not run late.
    #[serde(default = "default_deadline")]
    pub starting_deadline: HumanDuration,
    #[serde(default)]
    pub audience: Audience,
    #[serde(default = "default_delivery")]
    pub delivery: Delivery,
    #[serde(default)]
    pub throttle: Throttle,
    pub reminders: Option<Reminders>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub halt: Option<Halt>,
    /// Nothing is targeted before this instant (RFC 3339; absent: from the apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Instant>,
    /// No message leaves after this instant (RFC 3339): the campaign becomes
    /// `completed`, and its waiting targets are skipped (`campaign_ended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Instant>,
    /// Run only at the schedule's ticks: users held back wait for the next tick
    /// instead of being followed up when their hold ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub schedule_only: bool,
    /// How long after `ends_at` outcomes (webhooks, `users sync`) still update the
    /// campaign's funnel (default 30 days).
    #[serde(default = "default_track_outcomes_for")]
    pub track_outcomes_for: HumanDuration,
    /// `[brand]`: see [`Brand`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<Brand>,
}

/// An RFC 3339 instant in a campaign file, written as a TOML date-time
/// (`ends_at = 2026-12-31T18:00:00Z`) or a string (`"2026-12-31T18:00:00+01:00"`).
/// The offset is required: an instant must not depend on where the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "InstantText", into = "String")]
pub struct Instant(pub DateTime<Utc>);

#[derive(Deserialize)]
#[serde(untagged)]
enum InstantText {
    Text(String),
    Toml(toml::value::Datetime),
}

impl TryFrom<InstantText> for Instant {
    type Error = String;
    fn try_from(v: InstantText) -> Result<Self, String> {
        let text = match v {
            InstantText::Text(s) => s,
            InstantText::Toml(d) => d.to_string(),
        };
        DateTime::parse_from_rfc3339(&text).map(|d| Instant(d.with_timezone(&Utc))).map_err(|e| {
            format!("{text:?} is not an RFC 3339 instant like 2026-12-31T18:00:00Z (with its offset): {e}")
        })
    }
}

impl From<Instant> for String {
    fn from(i: Instant) -> String {
        i.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

fn default_track_outcomes_for() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

impl Default for Delivery {
    fn default() -> Self {
        default_delivery()
    }
}

fn default_delivery() -> Delivery {
    Delivery {
        channel: Channel::Email,
        template: default_template(),
        from: None,
        reply_to: None,
        subject: None,
        webhook_url: None,
        link: LinkMode::Direct,
        link_ttl: default_link_ttl(),
        default_locale: default_locale(),
        send_window: None,
        send_days: None,
        trace_headers: false,
        return_path: None,
        fallback: None,
        fallback_webhook_url: None,
        on_complaint: OnComplaint::Continue,
        brand: None,
        zone: None,
    }
}

/// The largest campaign file read. A real one is a few KiB; a bigger file is a
/// wrong file, refused before it is read whole (and before TOML parsing time grows
/// with it).
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

impl CampaignSpec {
    /// The delivery of message `step` (see [`Delivery::for_step`]).
    pub fn delivery_for_step(&self, step: u32) -> Delivery {
        let mut d = self.delivery.for_step(step, self.reminders.as_ref());
        d.brand.clone_from(&self.brand);
        d.zone = Some(self.timezone.clone());
        d
    }

    /// Parses and validates campaign TOML; `file` is only used in errors.
    ///
    /// # Errors
    /// [`SpecError`] naming `file`, and the line and column or the field.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, SpecError> {
        let spec: CampaignSpec = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            SpecError::Parse { file: file.to_owned(), line, column, message: plain_types(e.message()) }
        })?;
        spec.validate(file).map_err(|e| locate(e, text))?;
        Ok(spec)
    }

    /// Checks what only the moment of an apply can tell: an `ends_at` already past.
    /// `text` is the file's, for the line and column.
    ///
    /// # Errors
    /// [`SpecError::Parse`] naming the line and column of `ends_at`.
    pub fn validate_at_apply(&self, text: &str, file: &str, now: DateTime<Utc>) -> Result<(), SpecError> {
        match self.ends_at {
            Some(end) if end.0 <= now => Err(locate(
                SpecError::Invalid {
                    file: file.to_owned(),
                    field: "ends_at".into(),
                    message: format!(
                        "{} has already passed; a campaign that ended cannot be applied (set a later ends_at)",
                        String::from(end)
                    ),
                },
                text,
            )),
            _ => Ok(()),
        }
    }

    /// The campaign's life at `now`: before `starts_at`, running, or after `ends_at`.
    pub fn life_at(&self, now: DateTime<Utc>) -> Life {
        if self.ends_at.is_some_and(|e| now >= e.0) {
            Life::Ended
        } else if self.starts_at.is_some_and(|s| now < s.0) {
            Life::NotStarted
        } else {
            Life::Running
        }
    }

    /// The schedule's next tick after `now` inside the campaign's life (from
    /// `starts_at`, before `ends_at`); `None` without a schedule or a tick to come.
    pub fn next_tick_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let from = match self.starts_at {
            // a tick exactly at starts_at is the campaign's first
            Some(s) if s.0 > now => s.0 - chrono::Duration::milliseconds(1),
            _ => now,
        };
        self.cron()?.next_after(from, self.tz()).filter(|t| self.ends_at.is_none_or(|e| *t < e.0))
    }

    /// Whether users held back are followed up between ticks (not `schedule_only`).
    pub fn follows_up(&self) -> bool {
        !self.schedule_only
    }

    /// The checks that types cannot express.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the field.
    pub fn validate(&self, file: &str) -> Result<(), SpecError> {
        let invalid = |field: &str, message: String| {
            Err(SpecError::Invalid { file: file.to_owned(), field: field.to_owned(), message })
        };
        if self.timezone.parse::<Tz>().is_err() {
            return invalid("timezone", format!("{:?} is not an IANA time zone", self.timezone));
        }
        if let Some(s) = &self.schedule
            && let Err(e) = CronSchedule::parse(s)
        {
            return invalid("schedule", e.to_string());
        }
        if self.schedule_only && self.schedule.is_none() {
            return invalid(
                "schedule_only",
                "needs a schedule: without one the campaign only runs by hand, and its held-back users would \
                 never be asked again"
                    .into(),
            );
        }
        if let (Some(start), Some(end)) = (self.starts_at, self.ends_at)
            && end <= start
        {
            return invalid("ends_at", format!("{} is not after starts_at {}", String::from(end), String::from(start)));
        }
        let a = &self.audience;
        if a.states.is_empty() {
            return invalid("audience.states", "must name at least one state".into());
        }
        for s in &a.states {
            if matches!(s, VerificationState::Pending | VerificationState::Verified) {
                return invalid(
                    "audience.states",
                    format!("{s} users are never sent a session; use UNVERIFIED and/or REJECTED"),
                );
            }
        }
        for c in &a.countries {
            if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                return invalid("audience.countries", format!("{c:?} is not an ISO 3166-1 alpha-2 code like \"GB\""));
            }
        }
        for t in &a.tags {
            if !is_tag(t) {
                return invalid("audience.tags", format!("{t:?} is not a tag: use 1-64 of A-Z a-z 0-9 . _ : -"));
            }
        }
        if let (Some(b), Some(af)) = (a.signed_up_before, a.signed_up_after)
            && af >= b
        {
            return invalid("audience.signed_up_after", "must be before audience.signed_up_before".into());
        }
        if a.max_users == Some(0) {
            return invalid("audience.max_users", "must be at least 1".into());
        }
        for c in &a.exclude_rejection_codes {
            if !is_failure_code(c) {
                return invalid(
                    "audience.exclude_rejection_codes",
                    format!("{c:?} is not a failure code: use 1-64 of A-Z a-z 0-9 _ . -"),
                );
            }
        }
        if a.max_attempts == Some(0) {
            return invalid("audience.max_attempts", "must be at least 1".into());
        }
        if let Some(r) = &self.rollout
            && r.canary == Some(0)
        {
            return invalid("rollout.canary", "must be at least 1".into());
        }
        if let Some(h) = &self.halt {
            for (field, rate) in [
                ("halt.delivery_failure_rate", h.delivery_failure_rate),
                ("halt.api_error_rate", h.api_error_rate),
                ("halt.bounce_rate", h.bounce_rate),
            ] {
                if let Some(r) = rate
                    && !(r.is_finite() && r > 0.0 && r <= 1.0)
                {
                    return invalid(
                        field,
                        format!("{r} is not a rate: use a fraction above 0 and at most 1, like 0.2"),
                    );
                }
            }
            if h.delivery_failure_rate.is_none() && h.api_error_rate.is_none() && h.bounce_rate.is_none() {
                return invalid("halt", "set delivery_failure_rate, api_error_rate and/or bounce_rate".into());
            }
            if h.min_sample == 0 {
                return invalid("halt.min_sample", "must be at least 1".into());
            }
        }
        let d = &self.delivery;
        if !is_template_name(&d.template) {
            return invalid("delivery.template", format!("{:?} is not a template directory name", d.template));
        }
        match d.channel {
            Channel::Email => {
                for (field, value) in [("delivery.from", &d.from), ("delivery.reply_to", &d.reply_to)] {
                    if let Some(v) = value
                        && let Err(e) = v.parse::<lettre::message::Mailbox>()
                    {
                        return invalid(field, format!("{v:?} is not a mailbox: {e}"));
                    }
                }
            }
            // the body carries a session link: https, or plain http on this host only
            Channel::Webhook => match &d.webhook_url {
                None => return invalid("delivery.webhook_url", "the webhook channel needs a URL".into()),
                Some(u) => match url::Url::parse(u) {
                    Ok(parsed) => {
                        if let Err(m) = super::endpoint::require_https(&parsed) {
                            return invalid("delivery.webhook_url", m);
                        }
                    }
                    Err(e) => {
                        let shown = super::endpoint::redact_url(u);
                        return invalid("delivery.webhook_url", format!("{shown:?} is not a URL: {e}"));
                    }
                },
            },
        }
        if let Some(rp) = &d.return_path {
            if d.channel != Channel::Email {
                return invalid("delivery.return_path", "only the email channel has an envelope sender".into());
            }
            if let Err(m) = super::bounce::ReturnPath::parse(rp) {
                return invalid("delivery.return_path", m);
            }
        }
        match (d.fallback, &d.fallback_webhook_url) {
            (Some(Fallback::Webhook), None) => {
                return invalid("delivery.fallback_webhook_url", "the webhook fallback needs a URL".into());
            }
            (None, Some(_)) => {
                return invalid("delivery.fallback", "fallback_webhook_url is set: set fallback = \"webhook\"".into());
            }
            (Some(_), Some(_)) if d.channel != Channel::Email => {
                return invalid("delivery.fallback", "a fallback is for the email channel".into());
            }
            (Some(_), Some(u)) => match url::Url::parse(u) {
                Ok(parsed) => {
                    if let Err(m) = super::endpoint::require_https(&parsed) {
                        return invalid("delivery.fallback_webhook_url", m);
                    }
                }
                Err(e) => {
                    let shown = super::endpoint::redact_url(u);
                    return invalid("delivery.fallback_webhook_url", format!("{shown:?} is not a URL: {e}"));
                }
            },
            (None, None) => {}
        }
        if d.link == LinkMode::Click
            && (d.link_ttl.0 < Duration::from_secs(3600) || d.link_ttl.0 > Duration::from_secs(90 * 86_400))
        {
            return invalid("delivery.link_ttl", "must be from 1h to 90d".into());
        }
        if let Some(Err(m)) = d.subject.as_ref().map(super::subject::Subject::check) {
            return invalid("delivery.subject", m);
        }
        if let Some(Err((field, m))) = self.brand.as_ref().map(Brand::check) {
            return invalid(&format!("brand.{field}"), m);
        }
        if super::locale::normalize(&d.default_locale).is_none() {
            return invalid(
                "delivery.default_locale",
                format!("{:?} is not a locale tag like \"en\" or \"de-DE\"", d.default_locale),
            );
        }
        if let Err(e) = super::window::SendWindow::parse(d.send_window.as_deref(), d.send_days.as_deref()) {
            return invalid(e.field, e.message);
        }
        let t = &self.throttle;
        if !(t.requests_per_second.is_finite() && t.requests_per_second > 0.0 && t.requests_per_second <= 100_000.0) {
            return invalid("throttle.requests_per_second", "must be more than 0 and at most 100000".into());
        }
        if t.concurrency == 0 || t.concurrency > 1024 {
            return invalid("throttle.concurrency", "must be 1 to 1024".into());
        }
        if let Some(r) = &self.reminders {
            if r.after.0 < Duration::from_secs(3600) {
                return invalid("reminders.after", "must be at least 1h".into());
            }
            if r.max > 10 {
                return invalid("reminders.max", "must be at most 10".into());
            }
            if !is_template_name(&r.template) {
                return invalid("reminders.template", format!("{:?} is not a template directory name", r.template));
            }
        }
        Ok(())
    }

    /// The parsed schedule, when there is one. Validation has already accepted it.
    pub fn cron(&self) -> Option<CronSchedule> {
        self.schedule.as_deref().and_then(|s| CronSchedule::parse(s).ok())
    }

    /// The parsed time zone. Validation has already accepted it.
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(Tz::UTC)
    }
}

/// A user tag: 1-64 of `[A-Za-z0-9._:-]`. Tags are stored as `,a,b,` so a comma
/// can never be part of one.
pub fn is_tag(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// A Baanx `failure_code` as campaign files name it: 1-64 of `[A-Za-z0-9_.-]`.
pub fn is_failure_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_template_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Where a campaign is in its life (`starts_at`, `ends_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    NotStarted,
    Running,
    Ended,
}

/// A field error of a top-level key (`ends_at`, `starts_at`, `schedule_only`) turned
/// into one with the key's line and column in `text`; other errors as they are.
fn locate(e: SpecError, text: &str) -> SpecError {
    let SpecError::Invalid { file, field, message } = e else { return e };
    if !matches!(field.as_str(), "ends_at" | "starts_at" | "schedule_only") {
        return SpecError::Invalid { file, field, message };
    }
    // the key at the start of a line before the first table header
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix(field.as_str())
            && rest.trim_start().starts_with('=')
        {
            let (line, column) = line_col(text, offset + (line.len() - trimmed.len()));
            return SpecError::Parse { file, line, column, message: format!("`{field}`: {message}") };
        }
        offset += line.len();
    }
    SpecError::Invalid { file, field, message }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A TOML error message with Rust's type names put the way a person writes them:
/// "expected u32" becomes "expected a whole number from 0 to 4,294,967,295".
pub fn plain_types(message: &str) -> String {
    const NAMES: [(&str, &str); 9] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65,535"),
        ("expected u32", "expected a whole number from 0 to 4,294,967,295"),
        ("expected u64", "expected a whole number from 0 to 18,446,744,073,709,551,615"),
        ("expected usize", "expected a whole number from 0 to 18,446,744,073,709,551,615"),
        ("expected i32", "expected a whole number from -2,147,483,648 to 2,147,483,647"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_owned();
    for (rust, plain) in NAMES {
        // whole words only: "u32" and not the start of another name
        let mut from = 0;
        while let Some(i) = out[from..].find(rust).map(|i| from + i) {
            let end = i + rust.len();
            if out[end..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                from = end;
                continue;
            }
            out.replace_range(i..end, plain);
            from = i + plain.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "kyc-refresh-q4"
description = "Unverified users and rejections older than 24 h"
schedule = "0 9 * * 1-5"
timezone = "Europe/London"

[audience]
states = ["UNVERIFIED", "REJECTED"]
regions = ["intl", "us"]

[delivery]
channel = "email"
from = "Compliance <compliance@example.com>"
subject = "Please verify your identity"

[throttle]
requests_per_second = 20
concurrency = 8
"#;

    #[test]
    fn the_issue_example_is_a_whole_campaign() {
        let spec = CampaignSpec::from_toml(EXAMPLE, "jobs/x.toml").unwrap();
        assert_eq!(spec.name.as_str(), "kyc-refresh-q4");
        assert_eq!(spec.audience.regions, vec![Region::Intl, Region::Us]);
        assert_eq!(spec.throttle.concurrency, 8);
        assert_eq!(spec.starting_deadline.0, Duration::from_secs(3600));
        assert!(spec.cron().is_some());
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = EXAMPLE.replace("concurrency = 8", "concurency = 8");
        let err = CampaignSpec::from_toml(&text, "jobs/x.toml").unwrap_err();
        match &err {
            SpecError::Parse { file, line, column, message } => {
                assert_eq!(file, "jobs/x.toml");
                assert_eq!(*line, 18);
                assert_eq!(*column, 1);
                assert!(message.contains("concurency"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with("jobs/x.toml:18:1: "));
    }

    #[test]
    fn type_error_names_the_line() {
        let text = EXAMPLE.replace("concurrency = 8", "concurrency = \"eight\"");
        let SpecError::Parse { line, .. } = CampaignSpec::from_toml(&text, "f").unwrap_err() else {
            panic!("expected a parse error")
        };
        assert_eq!(line, 18);
        let text = EXAMPLE.replace("concurrency = 8", "concurrency = -1");
        let e = CampaignSpec::from_toml(&text, "f").unwrap_err().to_string();
        assert!(e.contains("a whole number from 0 to 4,294,967,295") && !e.contains("u32"), "{e}");
    }

    #[test]
    fn plain_types_replaces_whole_names_only() {
        assert_eq!(
            plain_types("invalid type: string, expected u32"),
            "invalid type: string, expected a whole number from 0 to 4,294,967,295"
        );
        assert_eq!(plain_types("expected u320x"), "expected u320x");
        assert_eq!(
            plain_types("expected u8 or expected u8"),
            "expected a whole number from 0 to 255 or expected a whole number from 0 to 255"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            ("timezone = \"Europe/London\"", "timezone = \"Mars/Olympus\"", "timezone"),
            ("schedule = \"0 9 * * 1-5\"", "schedule = \"0 9 * *\"", "schedule"),
            ("states = [\"UNVERIFIED\", \"REJECTED\"]", "states = [\"VERIFIED\"]", "audience.states"),
            ("from = \"Compliance <compliance@example.com>\"", "from = \"not a mailbox\"", "delivery.from"),
            ("requests_per_second = 20", "requests_per_second = 0", "throttle.requests_per_second"),
            ("concurrency = 8", "concurrency = 0", "throttle.concurrency"),
        ];
        for (from, to, field) in cases {
            let text = EXAMPLE.replace(from, to);
            match CampaignSpec::from_toml(&text, "f") {
                Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{to}"),
                Err(SpecError::Parse { message, .. }) => {
                    // states and names are checked by serde: still an error, with a line
                    assert_eq!(field, "audience.states", "{to}: {message}");
                }
                other => panic!("{to}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_name_is_a_parse_error_with_position() {
        let text = EXAMPLE.replace("kyc-refresh-q4", "KYC refresh");
        let SpecError::Parse { line, message, .. } = CampaignSpec::from_toml(&text, "f").unwrap_err() else { panic!() };
        assert_eq!(line, 2);
        assert!(message.contains("campaign name"), "{message}");
    }

    #[test]
    fn webhook_channel_needs_a_url() {
        let text = EXAMPLE.replace("channel = \"email\"", "channel = \"webhook\"");
        assert!(matches!(
            CampaignSpec::from_toml(&text, "f"),
            Err(SpecError::Invalid { field, .. }) if field == "delivery.webhook_url"
        ));
    }

    #[test]
    fn webhook_urls_are_https_except_to_loopback() {
        let hook =
            |u: &str| EXAMPLE.replace("channel = \"email\"", &format!("channel = \"webhook\"\nwebhook_url = \"{u}\""));
        for ok in ["https://push.example.com/hook", "http://127.0.0.1:9/hook", "http://[::1]:9/", "http://localhost/h"]
        {
            CampaignSpec::from_toml(&hook(ok), "f").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["http://push.example.com/hook?token=hunter2", "ftp://push.example.com/", "not a url"] {
            let e = CampaignSpec::from_toml(&hook(bad), "jobs/p.toml").unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("jobs/p.toml: `delivery.webhook_url`: "), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn reminders_parse() {
        let text = format!("{EXAMPLE}\n[reminders]\nafter = \"72h\"\nmax = 2\n");
        let spec = CampaignSpec::from_toml(&text, "f").unwrap();
        let r = spec.reminders.unwrap();
        assert_eq!(r.after.0, Duration::from_secs(72 * 3600));
        assert_eq!(r.max, 2);
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                CampaignSpec::from_toml(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the example campaigns in jobs/");
    }

    /// A campaign file with `head` as its top-level keys.
    fn with_life(head: &str) -> String {
        format!("name = \"life\"\nschedule = \"0 9 * * *\"\n{head}\n[delivery]\nfrom = \"a@example.com\"\n")
    }

    #[test]
    fn a_life_is_two_rfc3339_instants_in_order() {
        // a TOML date-time or a string, the offset required
        let spec = CampaignSpec::from_toml(
            &with_life("starts_at = 2026-12-01T09:00:00Z\nends_at = \"2026-12-31T18:00:00+01:00\""),
            "f",
        )
        .unwrap();
        assert_eq!(spec.starts_at.unwrap().0.to_rfc3339(), "2026-12-01T09:00:00+00:00");
        assert_eq!(spec.ends_at.unwrap().0.to_rfc3339(), "2026-12-31T17:00:00+00:00");
        assert_eq!(spec.track_outcomes_for.0, Duration::from_secs(30 * 86_400));
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(spec.life_at(at("2026-11-30T00:00:00Z")), Life::NotStarted);
        assert_eq!(spec.life_at(at("2026-12-10T00:00:00Z")), Life::Running);
        assert_eq!(spec.life_at(at("2026-12-31T17:00:00Z")), Life::Ended);
        // ticks inside the life only: the first at 09:00 on starts_at's day, none after the end
        assert_eq!(spec.next_tick_after(at("2026-11-01T00:00:00Z")), Some(at("2026-12-01T09:00:00Z")));
        assert_eq!(spec.next_tick_after(at("2026-12-31T10:00:00Z")), None);

        // each mistake names the file, the line and the column of the key
        for (head, line, says) in [
            ("starts_at = \"2026-12-31T00:00:00Z\"\nends_at = \"2026-12-01T00:00:00Z\"", 4, "is not after starts_at"),
            ("ends_at = \"31/12/2026\"", 3, "not an RFC 3339 instant"),
            ("ends_at = 2026-12-31T18:00:00", 3, "with its offset"),
            ("schedule_only = true", 3, "needs a schedule"),
        ] {
            let mut text = with_life(head);
            if head.starts_with("schedule_only") {
                text = text.replace("schedule = \"0 9 * * *\"\n", "description = \"x\"\n");
            }
            let e = CampaignSpec::from_toml(&text, "jobs/life.toml").unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("jobs/life.toml:{line}:")), "{head}: {shown}");
            assert!(shown.contains(says), "{head}: {shown}");
        }
    }

    #[test]
    fn an_ends_at_already_past_is_refused_at_apply_with_its_place() {
        let text = with_life("ends_at = \"2026-01-01T00:00:00Z\"");
        let spec = CampaignSpec::from_toml(&text, "f").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let e = spec.validate_at_apply(&text, "jobs/old.toml", now).unwrap_err().to_string();
        assert!(e.starts_with("jobs/old.toml:3:1: `ends_at`: 2026-01-01T00:00:00Z has already passed"), "{e}");
        let before = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z").unwrap().with_timezone(&Utc);
        assert!(spec.validate_at_apply(&text, "f", before).is_ok());
    }

    #[test]
    fn a_fresh_state_max_age_that_is_not_a_duration_is_refused_with_its_place() {
        let head = "name = \"fresh\"\n[delivery]\nfrom = \"a@example.com\"\n[audience]\n";
        let ok = CampaignSpec::from_toml(&format!("{head}fresh_state_max_age = \"6h\"\n"), "f").unwrap();
        assert_eq!(ok.audience.fresh_state_max_age, Some(HumanDuration(Duration::from_secs(6 * 3600))));
        for bad in ["\"-1h\"", "\"soon\"", "6"] {
            let text = format!("{head}fresh_state_max_age = {bad}\n");
            let e = CampaignSpec::from_toml(&text, "jobs/fresh.toml").unwrap_err().to_string();
            assert!(e.starts_with("jobs/fresh.toml:5:"), "{bad}: {e}");
        }
    }
}
