//! One campaign run: targeting, claiming, the per-user pipeline under the
//! campaign's concurrency and rate, lease heartbeats, and a graceful stop.
//!
//! A run claims users in batches, keeps at most `throttle.concurrency` of them in
//! flight, and exits when nothing is due. Stopping (`--max-duration`, SIGTERM)
//! stops claiming, gives back claims not yet started, lets users in flight finish
//! within a grace period, and records the run as interrupted; the next run resumes.

pub mod adapters;
pub mod approval;
pub mod bounces;
pub mod gates;
pub mod gauges;
pub mod observe;
pub mod outlook;
mod pipeline;
pub mod ports;
pub mod sync;
pub mod worker;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::freshness::FreshStateSettings;
use crate::domain::{CampaignName, CampaignSpec, Clock, TargetReason, TargetStatus, Transition};
use crate::store::campaigns::CANARY_REVIEW;
use crate::store::campaigns::WorkerPauseParams;
use crate::store::runs::{RunCounts, RunFinishParams, RunOutcome, RunStartParams};
use crate::store::targets::{ClaimBatchParams, ClaimCursor, ClaimedTarget};

/// A background claim's outcome, and the cursor it leaves.
type ClaimDone = (Result<Vec<ClaimedTarget>, StoreError>, ClaimCursor);
use crate::store::{Store, StoreError};
use adapters::StoreTokenVault;
pub use ports::{ApiFailure, ApiUser, Deliverer, DeliveryFailure, Outgoing, VerificationApi};
pub use worker::Worker;

/// How a run behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Identifies this worker's claims; unique per process.
    pub worker_id: String,
    /// How long a claim lasts without a heartbeat (`lease_seconds`).
    pub lease: Duration,
    /// Users claimed per statement.
    pub batch_size: usize,
    /// How long a Baanx session lives (the ledger counts it as active until then).
    pub session_ttl: Duration,
    /// Added to a session's life in the ledger, for clock skew with the API
    /// (`session_expiry_margin`, default 5 min).
    pub session_expiry_margin: Duration,
    /// How long users in flight may take to finish once a stop is asked for.
    pub grace: Duration,
    /// Ask `GET /v1/user` before each session (unless the state is fresh enough, see
    /// `fresh_state_max_age`).
    pub fresh_state: bool,
    /// `fresh_state_max_age` and the webhook feed (see `domain::freshness`).
    pub freshness: FreshStateSettings,
    /// Transient failures per target before it is failed.
    pub max_attempts: i64,
    /// This worker's share of the campaign's `throttle.requests_per_second` and
    /// `burst` (`1 / workers`): several workers on one campaign keep to its total.
    pub rate_share: f64,
    /// `public_url`: the base of click-through links, needed by click-mode campaigns.
    pub public_url: Option<url::Url>,
    /// Who started the runs (`--as`, `REVERIFY_ACTOR`, the OS user): the actor of
    /// each run's `run.started` and `run.<outcome>` events. Per-user events carry
    /// the worker id.
    pub actor: String,
    /// `require_approval` as this process's settings ask it: on, asked off (refused
    /// when the database has it on), or as the database says (`None`); see
    /// [`approval::policy`].
    pub require_approval: Option<bool>,
    /// `approvers_file`: who may apply and approve, proven by SSH signatures that a
    /// run checks again before it sends.
    pub approvers: Option<Arc<approval::Approvers>>,
    /// Makes each message's VERP token (derived from `token_key`): with it, a
    /// Message-ID, and with `delivery.return_path` the envelope sender, names the
    /// message a bounce is about.
    pub verp: Option<crate::domain::bounce::VerpKey>,
    /// How often a run seals its audit events while it goes ([`SEAL_EVERY`]).
    pub seal_every: Duration,
}

/// Click mode: where links point and how long they work.
#[derive(Debug, Clone)]
pub(crate) struct ClickLinks {
    pub public_url: url::Url,
    pub ttl: Duration,
    /// The campaign's `fresh_state_max_age`, kept with each link for the click.
    pub fresh_state_max_age: Option<Duration>,
}

impl ClickLinks {
    /// `{public_url}/v/{token}`.
    pub fn url_of(&self, token: &str) -> String {
        format!("{}/v/{token}", self.public_url.as_str().trim_end_matches('/'))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            lease: Duration::from_secs(30),
            batch_size: 100,
            session_ttl: Duration::from_secs(24 * 3600),
            session_expiry_margin: Duration::from_secs(300),
            grace: Duration::from_secs(20),
            fresh_state: true,
            freshness: FreshStateSettings::default(),
            max_attempts: 5,
            rate_share: 1.0,
            public_url: None,
            actor: "engine".into(),
            require_approval: None,
            approvers: None,
            verp: None,
            seal_every: SEAL_EVERY,
        }
    }
}

/// The `fresh_state_max_age` in force for a run of `spec` at `now` (see
/// `domain::freshness`), with the feed's health in `reverify_webhook_feed_healthy`
/// and a warning when a configured feed has gone silent.
///
/// # Errors
/// [`StoreError`] reading the feeds' marks.
pub async fn fresh_state_age(
    store: &Store,
    settings: FreshStateSettings,
    spec: &CampaignSpec,
    now: DateTime<Utc>,
) -> Result<crate::domain::freshness::FreshStateAge, StoreError> {
    use crate::domain::freshness::{Feed, FreshStateAge};
    let feed = if settings.webhook_feed {
        let marks = store.feed_marks().await?;
        let feed = Feed::judge(true, marks.last_heard(), settings.max_silence, now);
        crate::telemetry::global().set_webhook_feed_healthy(feed == Feed::Healthy);
        if feed == Feed::Silent {
            warn!(
                campaign = %spec.name,
                last_webhook = ?marks.webhook,
                last_sync = ?marks.sync,
                max_silence = %humantime::format_duration(settings.max_silence),
                "the webhook feed is silent: every user's state is asked again (fresh_state_max_age 0s)"
            );
        }
        feed
    } else {
        Feed::None
    };
    let campaign = spec.audience.fresh_state_max_age.as_ref().map(|d| d.0);
    Ok(FreshStateAge::resolve(campaign, settings.max_age, feed))
}

/// `host-pid-random`: readable in the database, unique per process.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// The longest a stopped run spends sealing its audit events before it exits
/// (a part of the stop budget the deploy files' grace periods cover).
pub const SEAL_ON_STOP: Duration = Duration::from_secs(2);

/// How often a run seals the audit events committed so far while it goes (issue
/// 30). Sealing only at the end left a 1,000,000-user run a seal of 3,000,000
/// events in its last minute (its costliest statement, and over the 60 s the end
/// allows at ten times that); every few seconds, each seal is a batch or two.
pub const SEAL_EVERY: Duration = Duration::from_secs(10);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker could not be set up: a setting, a template, a stored spec.
    #[error("{0}")]
    Setup(String),
    /// Four eyes: the campaign's version is not approved (the message says what is
    /// missing). Nothing was sent.
    #[error("{0}")]
    Unapproved(String),
}

/// The result of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOutcome {
    Notified,
    Skipped(TargetReason),
    /// Deferred, or pending again for a retry.
    Deferred(TargetReason),
    Failed(TargetReason),
    /// Nothing recorded (claim lost, or the store failed): the lease will expire.
    Abandoned,
}

impl From<Transition> for UserOutcome {
    /// What a target's transition counts as.
    fn from(t: Transition) -> Self {
        match t.status {
            TargetStatus::Skipped => UserOutcome::Skipped(t.reason),
            TargetStatus::Failed => UserOutcome::Failed(t.reason),
            _ => UserOutcome::Deferred(t.reason),
        }
    }
}

/// Live counters of a run, for progress bars and metrics.
#[derive(Debug, Default)]
pub struct Progress {
    pub targeted: AtomicI64,
    /// Of the targeted, those added as `deferred` (REJECTED inside the cooldown):
    /// never claimed by this run, counted in [`RunCounts::deferred`].
    pub deferred_at_targeting: AtomicI64,
    pub claimed: AtomicI64,
    pub notified: AtomicI64,
    pub skipped: AtomicI64,
    pub deferred: AtomicI64,
    pub failed: AtomicI64,
    pub abandoned: AtomicI64,
}

impl Progress {
    fn record(&self, o: UserOutcome) {
        let c = match o {
            UserOutcome::Notified => &self.notified,
            UserOutcome::Skipped(_) => &self.skipped,
            UserOutcome::Deferred(_) => &self.deferred,
            UserOutcome::Failed(_) => &self.failed,
            UserOutcome::Abandoned => &self.abandoned,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot for the run record. `deferred` counts the users deferred by the
    /// pipeline and those deferred at targeting.
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            targeted: self.targeted.load(Ordering::Relaxed),
            notified: self.notified.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed) + self.deferred_at_targeting.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Claimed users with a recorded outcome so far (users deferred at targeting
    /// were never claimed: not counted).
    pub fn done(&self) -> i64 {
        [&self.notified, &self.skipped, &self.deferred, &self.failed, &self.abandoned]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// What a run needs: the campaign, the store, the two ports, a clock.
pub struct Run {
    pub store: Store,
    pub api: Arc<dyn VerificationApi>,
    pub deliverer: Arc<dyn Deliverer>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub campaign_id: i64,
    pub spec: CampaignSpec,
    pub progress: Arc<Progress>,
    /// Why the run runs: by hand, a scheduled tick (recorded as the campaign's tick
    /// in progress until a run finishes), or a follow-up between ticks.
    pub kind: RunKind,
    /// The approval this run checked and runs under (`require_approval`), recorded
    /// in its `run.started` event.
    pub approval: Option<approval::RunApproval>,
    /// The API client's token vault, primed with what the run's claims read of their
    /// users' tokens (see [`StoreTokenVault::prime`]).
    pub vault: Arc<StoreTokenVault>,
}

/// Why a run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// By hand (`run NAME`, `run --all`): targeting, then every user due.
    Manual,
    /// A scheduled tick (`run --due`, the daemon): as by hand; the tick stays the
    /// campaign's tick in progress until a run finishes.
    Tick(DateTime<Utc>),
    /// Follow-up between ticks (`run --due`, the daemon): nobody new is targeted; the
    /// users whose hold ended are taken. With `linger_until`, the run goes on taking
    /// users as they come due until then, instead of ending when none is due.
    FollowUp { linger_until: Option<DateTime<Utc>> },
}

impl RunKind {
    /// The scheduled tick, for a tick's run.
    pub fn tick(self) -> Option<DateTime<Utc>> {
        match self {
            RunKind::Tick(t) => Some(t),
            RunKind::Manual | RunKind::FollowUp { .. } => None,
        }
    }

    /// The spelling in the run's `run.started` event and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Manual => "manual",
            RunKind::Tick(_) => "tick",
            RunKind::FollowUp { .. } => "follow_up",
        }
    }
}

/// How long a lingering follow-up run waits for the next user at most before it
/// looks again (a user re-queued by another process, a lease that expired).
const LINGER_LOOK: Duration = Duration::from_secs(5);

/// A lingering follow-up run waits for a user due at most this far ahead; it ends
/// when the next is later (the daemon wakes for that one).
const LINGER_NEAR: Duration = Duration::from_secs(30);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub run_id: i64,
    pub outcome: RunOutcome,
    pub counts: RunCounts,
    /// Set when the run paused the campaign: `canary_review`, or a halt's reason
    /// (`delivery_failure_rate`, `api_error_rate`).
    pub paused: Option<&'static str>,
}

pub(crate) struct RunShared {
    store: Store,
    api: Arc<dyn VerificationApi>,
    deliverer: Arc<dyn Deliverer>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    campaign_name: CampaignName,
    limiter: DefaultDirectRateLimiter,
    /// Cancelled when a failure makes going on pointless (a misconfigured channel).
    abort: CancellationToken,
    abort_reason: std::sync::Mutex<Option<String>>,
    /// Set when a user's processing failed on the store: the run ends as failed.
    store_failure: std::sync::Mutex<Option<String>>,
    /// Deliveries in a row that the channel gave up on (reset by a success).
    undelivered_in_a_row: std::sync::atomic::AtomicU32,
    /// Set for a `delivery.link = "click"` campaign.
    click: Option<ClickLinks>,
    /// `delivery.send_window` / `send_days`, read in each user's zone.
    window: Option<crate::domain::window::SendWindow>,
    /// The campaign's `timezone`: the window's zone for a user without a valid one.
    campaign_zone: chrono_tz::Tz,
    /// The campaign's `ends_at`: no message leaves after it.
    ends_at: Option<DateTime<Utc>>,
    /// See [`Run::vault`].
    vault: Arc<StoreTokenVault>,
    /// How recent a stored state must be to skip `GET /v1/user`, for this run.
    fresh_age: crate::domain::freshness::FreshStateAge,
    /// Who the campaign's email cannot or must not reach, and what then.
    reach: Reach,
}

/// What a campaign does with a user whose address bounced or who complained
/// (issue 27): its channel, `delivery.fallback` and `delivery.on_complaint`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reach {
    /// The campaign sends email (bounces and complaints are about email).
    email: bool,
    /// `delivery.fallback` is set: an undeliverable user is sent through it.
    fallback: bool,
    /// `delivery.on_complaint = "suppress"`.
    suppress_complaints: bool,
}

impl Reach {
    fn of(d: &crate::domain::spec::Delivery) -> Self {
        Self {
            email: d.channel == crate::domain::spec::Channel::Email,
            fallback: d.fallback.is_some(),
            suppress_complaints: d.on_complaint == crate::domain::spec::OnComplaint::Suppress,
        }
    }
}

/// Deliveries in a row that may fail for want of the channel (SMTP refusing
/// connections, a webhook endpoint down) before the run stops. Decision: each such
/// user has already spent a session (it counts against their daily cap and is
/// requeued later), so a channel that is down must stop the run, not drain the
/// campaign; a few in a row tell a dead channel from one bad mailbox.
const MAX_UNDELIVERED_IN_A_ROW: u32 = 5;

impl RunShared {
    /// Stops the run: no new user is claimed, and the run is recorded as failed.
    fn abort(&self, reason: String) {
        let mut r = self.abort_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            tracing::error!(%reason, "stopping the run");
            *r = Some(reason);
        }
        self.abort.cancel();
    }

    /// The store failed under a user: no new user is claimed, and the run is
    /// recorded as failed with this error.
    fn store_failed(&self, e: &StoreError) {
        let mut f = self.store_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.is_none() {
            tracing::error!(error = %e, "the database failed; stopping the run");
            *f = Some(e.to_string());
        }
        self.abort.cancel();
    }

    /// Counts a delivery; stops the run after [`MAX_UNDELIVERED_IN_A_ROW`] that the
    /// channel gave up on in a row.
    fn delivery_outcome(&self, delivered: bool, why: Option<&str>) {
        if delivered {
            self.undelivered_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.undelivered_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= MAX_UNDELIVERED_IN_A_ROW {
            self.abort(format!(
                "notification channel unavailable: {n} deliveries in a row failed ({})",
                why.unwrap_or("no reason")
            ));
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// The campaign's own rate (`throttle.requests_per_second`) paces every Baanx request
/// made for the campaign (token refreshes, profiles, sessions, retries); the client's
/// global limiter applies on top of it.
#[async_trait::async_trait]
impl crate::baanx::Pacer for RunShared {
    async fn ready(&self) {
        self.limiter.until_ready().await;
    }
}

fn campaign_quota(spec: &CampaignSpec, share: f64) -> Quota {
    let share = if share.is_finite() && share > 0.0 { share.min(1.0) } else { 1.0 };
    let rps = (spec.throttle.requests_per_second * share).max(0.001);
    let period = Duration::from_secs_f64(1.0 / rps);
    let burst = ((f64::from(spec.throttle.burst.unwrap_or(1).max(1)) * share).ceil() as u32).max(1);
    Quota::with_period(period).expect("period is positive").allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
}

/// A lingering follow-up run with nothing due now: how long to wait before looking
/// again (until the next user is due, at most [`LINGER_LOOK`]), or `None` when the
/// run ends (no horizon, past it or past the campaign's end, or nobody due within
/// [`LINGER_NEAR`] and before it).
async fn linger(
    store: &Store,
    campaign_id: i64,
    now: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Option<Duration>, StoreError> {
    let Some(until) = until else { return Ok(None) };
    if now >= until || ends_at.is_some_and(|e| now >= e) {
        return Ok(None);
    }
    let Some(next) = store.target_next_follow_up(campaign_id, now).await? else { return Ok(None) };
    // a user due later than that is the daemon's to wake for: the run ends
    if next >= until || next > now + chrono::Duration::from_std(LINGER_NEAR).unwrap_or_default() {
        return Ok(None);
    }
    let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
    Ok(Some(wait.clamp(Duration::from_millis(50), LINGER_LOOK)))
}

impl Run {
    /// Runs the campaign until nothing is due, or until `stop` is cancelled.
    ///
    /// # Errors
    /// [`EngineError`] when the store fails outside a single user's processing.
    pub async fn execute(self, stop: CancellationToken) -> Result<RunReport, EngineError> {
        let worker = self.config.worker_id.clone();
        let (store, clock, campaign_id) = (self.store.clone(), self.clock.clone(), self.campaign_id);
        let actor = self.config.actor.clone();
        let run_id = store
            .run_start_with(
                &RunStartParams {
                    campaign_id,
                    worker: &worker,
                    actor: &actor,
                    now: clock.now(),
                    tick: self.kind.tick(),
                },
                self.approval.as_ref().map(|a| a.detail()),
            )
            .await?;
        info!(campaign = %self.spec.name, run_id, kind = self.kind.as_str(), "run started");
        let result = self.execute_inner(stop).await;
        let (outcome, error, counts) = match &result {
            Ok((o, counts, _)) => (*o, None, *counts),
            Err((e, p)) => (RunOutcome::Failed, Some(e.to_string()), p.counts()),
        };
        // bounded: with the database gone, the pool would wait its whole timeout
        let finish = store.run_finish(RunFinishParams {
            run_id,
            campaign_id,
            worker: &worker,
            actor: &actor,
            outcome,
            counts,
            error: error.as_deref(),
            now: clock.now(),
        });
        match tokio::time::timeout(Duration::from_secs(10), finish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not record the end of the run"),
            Err(_) => warn!("could not record the end of the run: the database did not answer within 10 s"),
        }
        // the run's events join the audit chain (store::chain). Bounded: after a stop
        // (SIGTERM) within the deploy files' grace period; the seal commits batch by
        // batch, and the next seal takes what is left.
        let bound = if outcome == RunOutcome::Interrupted { SEAL_ON_STOP } else { Duration::from_secs(60) };
        match tokio::time::timeout(bound, store.audit_seal(clock.now())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not seal the run's audit events; the next seal will"),
            Err(_) => warn!(
                seconds = bound.as_secs(),
                "the run's audit events were not all sealed in time; the next seal will"
            ),
        }
        match result {
            Ok((outcome, counts, paused)) => Ok(RunReport { run_id, outcome, counts, paused }),
            Err((e, _)) => Err(e),
        }
    }

    async fn execute_inner(
        self,
        stop: CancellationToken,
    ) -> Result<(RunOutcome, RunCounts, Option<&'static str>), (EngineError, Arc<Progress>)> {
        let progress = self.progress.clone();
        let fail = |e: StoreError| (EngineError::Store(e), progress.clone());
        let now = self.clock.now();
        self.prepare(now).await.map_err(fail)?;
        let click = self.click_links().map_err(|e| (e, progress.clone()))?;
        let fresh_age = fresh_state_age(&self.store, self.config.freshness, &self.spec, now).await.map_err(fail)?;
        let shared = self.shared(fresh_age, click);
        let halt = halt_on(&stop, &shared.abort);
        let heartbeat = Heartbeat::spawn(&self);
        let canary = self.canary().await.map_err(fail)?;
        let mut claims = ClaimLoop::new(&self, &shared, &halt, canary.map(|(n, spent)| (n - spent).max(0)));
        claims.run().await;
        let ClaimLoop { queue, in_flight, store_error, tripped, canary_left, .. } = claims;
        let store_failure = shared.store_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let store_down = store_error.is_some() || store_failure.is_some();
        let interrupted = stop.is_cancelled() || store_error.is_some() || tripped.is_some();
        self.wind_down(queue, in_flight, store_down).await;
        heartbeat.end().await;
        if let Some(e) = store_error {
            return Err((EngineError::Store(e), progress));
        }
        if let Some(e) = store_failure {
            return Err((EngineError::Setup(format!("the database failed: {e}")), progress));
        }
        let aborted = shared.abort_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(reason) = aborted {
            return Err((EngineError::Setup(reason), progress));
        }
        let ended = Ended { interrupted, stopped: stop.is_cancelled(), tripped, canary, canary_left };
        let (outcome, paused) = self.gates_after(ended).await.map_err(fail)?;
        Ok((outcome, progress.counts(), paused))
    }

    /// What a run does before it claims: failed deliveries re-queued, the targets a
    /// compliance exclusion now keeps out skipped (issue 16), the users whose
    /// session expired synced and due reminders queued (issue 6), and, unless the
    /// run is a follow-up, the audience targeted.
    async fn prepare(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let progress = &self.progress;
        self.store.target_requeue_delivery_failed(self.campaign_id, now).await?;
        // users a compliance exclusion now keeps out are not claimed (issue 16)
        let excluded = self.store.target_skip_excluded(self.campaign_id, &self.spec.audience, now).await?;
        if excluded > 0 {
            info!(campaign = %self.spec.name, excluded, "waiting targets skipped by the audience's exclusions");
        }
        // outcomes (issue 6): sync users whose session expired, then queue due reminders
        let ctx =
            sync::SyncCtx { store: &self.store, api: &*self.api, clock: &*self.clock, actor: &self.config.worker_id };
        sync::before_run(ctx, self.campaign_id, &self.spec, self.config.fresh_state).await?;
        // only a tick (or a person) adds users: follow-up takes those already targeted
        if !matches!(self.kind, RunKind::FollowUp { .. }) {
            let targeted = self.store.target_add_matching_counted(self.campaign_id, &self.spec.audience, now).await?;
            progress.targeted.store(i64::try_from(targeted.added).unwrap_or(i64::MAX), Ordering::Relaxed);
            progress
                .deferred_at_targeting
                .store(i64::try_from(targeted.deferred).unwrap_or(i64::MAX), Ordering::Relaxed);
            info!(campaign = %self.spec.name, added = targeted.added, deferred = targeted.deferred, "targeting done");
        }
        Ok(())
    }

    /// Click mode's links, or `None` for direct links.
    ///
    /// # Errors
    /// [`EngineError::Setup`] when click mode has no `public_url`.
    fn click_links(&self) -> Result<Option<ClickLinks>, EngineError> {
        match self.spec.delivery.link {
            crate::domain::spec::LinkMode::Direct => Ok(None),
            crate::domain::spec::LinkMode::Click => {
                let public_url = self.config.public_url.clone().ok_or_else(|| {
                    EngineError::Setup(format!(
                        "campaign {} sends click-through links (delivery.link = \"click\"): set public_url \
                         (REVERIFY_PUBLIC_URL), the https address where `reverify serve` or the daemon's \
                         public_listen answers /v/{{token}}",
                        self.spec.name
                    ))
                })?;
                Ok(Some(ClickLinks {
                    public_url,
                    ttl: self.spec.delivery.link_ttl.0,
                    fresh_state_max_age: self.spec.audience.fresh_state_max_age.as_ref().map(|d| d.0),
                }))
            }
        }
    }

    /// What every user of the run shares (see [`RunShared`]).
    fn shared(&self, fresh_age: crate::domain::freshness::FreshStateAge, click: Option<ClickLinks>) -> Arc<RunShared> {
        Arc::new(RunShared {
            fresh_age,
            reach: Reach::of(&self.spec.delivery),
            store: self.store.clone(),
            api: self.api.clone(),
            deliverer: self.deliverer.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            campaign_name: self.spec.name.clone(),
            limiter: RateLimiter::direct(campaign_quota(&self.spec, self.config.rate_share)),
            abort: CancellationToken::new(),
            abort_reason: std::sync::Mutex::new(None),
            store_failure: std::sync::Mutex::new(None),
            undelivered_in_a_row: std::sync::atomic::AtomicU32::new(0),
            click,
            window: self.spec.delivery.window(),
            campaign_zone: self.spec.timezone.parse().unwrap_or(chrono_tz::Tz::UTC),
            // no claim after the campaign's end
            ends_at: self.spec.ends_at.map(|e| e.0),
            vault: self.vault.clone(),
        })
    }

    /// `[rollout] canary`: until a person resumes the campaign after its review,
    /// runs claim no more targets than the canary has left (every claim may become
    /// a message and a session). The canary's size and what it has sent so far.
    async fn canary(&self) -> Result<Option<(i64, i64)>, StoreError> {
        match self.spec.rollout.and_then(|r| r.canary) {
            Some(n) if !self.store.campaign_canary_released(self.campaign_id).await? => {
                let spent = self.store.campaign_canary_spent(self.campaign_id).await?;
                Ok(Some((i64::try_from(n).unwrap_or(i64::MAX), spent)))
            }
            _ => Ok(None),
        }
    }

    /// After the claiming: what was claimed but not started is given back (with
    /// the store down, their leases will do it: trying would only wait out the
    /// pool's timeout), and the users in flight finish within the grace period
    /// (short when the store is down: they cannot record anything).
    async fn wind_down(
        &self,
        mut queue: VecDeque<ClaimedTarget>,
        mut in_flight: JoinSet<UserOutcome>,
        store_down: bool,
    ) {
        if store_down {
            queue.clear();
        }
        if !queue.is_empty() {
            let ids: Vec<String> = queue.drain(..).map(|t| String::from(t.claim.user_id)).collect();
            if let Err(e) =
                self.store.target_release(self.campaign_id, &self.config.worker_id, &ids, self.clock.now()).await
            {
                warn!(error = %e, "could not release unstarted claims; they will expire with their lease");
            }
        }
        let grace = if store_down { self.config.grace.min(Duration::from_secs(5)) } else { self.config.grace };
        let deadline = tokio::time::Instant::now() + grace;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
                Ok(Some(r)) => self.progress.record(r.unwrap_or(UserOutcome::Abandoned)),
                Ok(None) => break,
                Err(_) => {
                    warn!(left = in_flight.len(), "grace period over; unfinished users are left to their leases");
                    in_flight.abort_all();
                    break;
                }
            }
        }
    }

    /// The gates after a run that ended well: the reminders of the users it
    /// notified stamped, and the campaign paused when a halt threshold tripped or
    /// the canary ran. The run's outcome and why the campaign was paused.
    async fn gates_after(&self, ended: Ended) -> Result<(RunOutcome, Option<&'static str>), StoreError> {
        // the reminders of the users notified by this run wait on the claim index
        if let Some(reminders) = &self.spec.reminders {
            self.store.target_stamp_reminders(self.campaign_id, reminders).await?;
        }
        let mut outcome = if ended.interrupted { RunOutcome::Interrupted } else { RunOutcome::Finished };
        let actor = self.config.worker_id.as_str();
        let mut paused = None;
        if let Some(t) = ended.tripped {
            let pause = WorkerPauseParams {
                campaign_id: self.campaign_id,
                reason: t.reason,
                detail: &t.detail,
                actor,
                now: self.clock.now(),
            };
            self.store.campaign_pause_by_worker(&pause).await?;
            crate::telemetry::global().set_campaign_halted(self.spec.name.as_str(), true);
            paused = Some(t.reason);
        } else if let Some((n, _)) = ended.canary
            && !ended.stopped
        {
            // the canary ran: a person reviews it before anyone else is sent anything
            // (a run stopped from outside leaves the rest of the canary to the next)
            let sent = self.store.campaign_canary_spent(self.campaign_id).await?;
            let detail = serde_json::json!({ "canary": n, "sent": sent });
            let pause = WorkerPauseParams {
                campaign_id: self.campaign_id,
                reason: CANARY_REVIEW,
                detail: &detail,
                actor,
                now: self.clock.now(),
            };
            self.store.campaign_pause_by_worker(&pause).await?;
            info!(campaign = %self.spec.name, canary = n, sent, "canary sent; the campaign is paused for review");
            if ended.canary_left == Some(0) {
                // work is left: the tick stays in progress, resumed after `campaign resume`
                outcome = RunOutcome::Interrupted;
            }
            paused = Some(CANARY_REVIEW);
        }
        Ok((outcome, paused))
    }
}

/// How the claiming ended, for [`Run::gates_after`].
struct Ended {
    /// Stopped from outside, by the store or by a halt threshold.
    interrupted: bool,
    /// Stopped from outside.
    stopped: bool,
    tripped: Option<gates::Tripped>,
    /// The canary's size and what it had sent when the run started.
    canary: Option<(i64, i64)>,
    canary_left: Option<i64>,
}

/// A token cancelled when a stop is asked from outside or the run aborts from
/// inside: it ends the claiming.
fn halt_on(stop: &CancellationToken, abort: &CancellationToken) -> CancellationToken {
    let halt = CancellationToken::new();
    let (h, stop, abort) = (halt.clone(), stop.clone(), abort.clone());
    tokio::spawn(async move {
        tokio::select! { _ = stop.cancelled() => {}, _ = abort.cancelled() => {} }
        h.cancel();
    });
    halt
}

/// Renews the run's claims every third of a lease while the run lives, and seals
/// the audit events committed so far every [`SEAL_EVERY`].
struct Heartbeat {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sealer: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn spawn(run: &Run) -> Self {
        let stop = CancellationToken::new();
        let campaign_id = run.campaign_id;
        let (store, clock, worker, lease, hb_stop) =
            (run.store.clone(), run.clock.clone(), run.config.worker_id.clone(), run.config.lease, stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = hb_stop.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = store.target_heartbeat(campaign_id, &worker, clock.now(), lease).await {
                            warn!(error = %e, "lease heartbeat failed");
                        }
                    }
                }
            }
        });
        let (store, clock, seal_stop, every) =
            (run.store.clone(), run.clock.clone(), stop.clone(), run.config.seal_every);
        let sealer = tokio::spawn(async move {
            // the first seal one period in, not at once: a short run seals at its end
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = seal_stop.cancelled() => break,
                    _ = tick.tick() => {
                        // sealers take turns on the chain's head; a failure is only
                        // late sealing, which the run's end (or the next seal) makes up
                        if let Err(e) = store.audit_seal(clock.now()).await {
                            warn!(error = %e, "could not seal the run's audit events so far; the run's end will");
                        }
                    }
                }
            }
        });
        Self { stop, task, sealer }
    }

    /// Stops it; a heartbeat stuck on a dead database is not waited for. A seal
    /// under way is given [`SEAL_ON_STOP`] to finish its batch (its anchor line is
    /// written before it commits), then cut short; the run's end seals the rest.
    async fn end(self) {
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
        let mut sealer = self.sealer;
        if tokio::time::timeout(SEAL_ON_STOP, &mut sealer).await.is_err() {
            sealer.abort();
            let _ = sealer.await;
        }
    }
}

/// The claim loop: claims batches (the next in the background once the queue
/// runs low, so that claiming overlaps the users in flight instead of pausing
/// them), runs up to `concurrency` users at once, watches the halt thresholds,
/// and ends when nothing is left, on a halt or when the store fails.
struct ClaimLoop<'a> {
    run: &'a Run,
    shared: &'a Arc<RunShared>,
    halt: &'a CancellationToken,
    concurrency: usize,
    /// How many targets a claim asks for.
    want: i64,
    ends_at: Option<DateTime<Utc>>,
    linger_until: Option<DateTime<Utc>>,
    queue: VecDeque<ClaimedTarget>,
    in_flight: JoinSet<UserOutcome>,
    claiming: Option<tokio::task::JoinHandle<ClaimDone>>,
    /// Each claim goes on from where the last ended; expired claims are looked
    /// for on the first claim, once a lease, and on the pass from the start that
    /// ends the run.
    cursor: ClaimCursor,
    rescued_at: tokio::time::Instant,
    exhausted: bool,
    /// A lingering follow-up run's next look for due users.
    look_again: Option<tokio::time::Instant>,
    store_error: Option<StoreError>,
    canary_left: Option<i64>,
    halt_watch: gates::HaltWatch,
    tripped: Option<gates::Tripped>,
}

impl<'a> ClaimLoop<'a> {
    fn new(run: &'a Run, shared: &'a Arc<RunShared>, halt: &'a CancellationToken, canary_left: Option<i64>) -> Self {
        let concurrency = usize::try_from(run.spec.throttle.concurrency).unwrap_or(1).max(1);
        let linger_until = match run.kind {
            RunKind::FollowUp { linger_until } => linger_until,
            RunKind::Manual | RunKind::Tick(_) => None,
        };
        Self {
            run,
            shared,
            halt,
            concurrency,
            want: i64::try_from(run.config.batch_size.max(concurrency)).unwrap_or(100),
            ends_at: run.spec.ends_at.map(|e| e.0),
            linger_until,
            queue: VecDeque::new(),
            in_flight: JoinSet::new(),
            claiming: None,
            cursor: ClaimCursor::start(),
            rescued_at: tokio::time::Instant::now(),
            exhausted: false,
            look_again: None,
            store_error: None,
            canary_left,
            halt_watch: gates::HaltWatch::default(),
            tripped: None,
        }
    }

    /// Claims, runs and waits until the run has nothing left or must stop; then
    /// waits for a claim still running (one statement), so that what it claimed is
    /// given back rather than left to its lease.
    async fn run(&mut self) {
        loop {
            if self.halt.is_cancelled() {
                break;
            }
            if self.canary_left == Some(0) || self.ends_at.is_some_and(|e| self.run.clock.now() >= e) {
                self.exhausted = true;
            }
            self.claim_if_low();
            while self.in_flight.len() < self.concurrency {
                let Some(t) = self.queue.pop_front() else { break };
                self.in_flight.spawn(pipeline::process(self.shared.clone(), t));
            }
            if self.in_flight.is_empty()
                && self.queue.is_empty()
                && self.claiming.is_none()
                && self.look_again.is_none()
            {
                // exhausted: nothing queued, nothing in flight, nothing left to claim
                break;
            }
            if self.step().await.is_break() {
                break;
            }
        }
        if let Some(c) = self.claiming.take() {
            match tokio::time::timeout(Duration::from_secs(5), c).await {
                Ok(Ok((Ok(batch), _))) => {
                    self.run.progress.claimed.fetch_add(i64::try_from(batch.len()).unwrap_or(0), Ordering::Relaxed);
                    self.queue.extend(batch);
                }
                Ok(Ok((Err(e), _))) if self.store_error.is_none() => self.store_error = Some(e),
                _ => {}
            }
        }
    }

    /// Starts the next claim in the background when the queue runs low.
    fn claim_if_low(&mut self) {
        if self.claiming.is_some()
            || self.exhausted
            || self.look_again.is_some()
            || self.queue.len() >= self.concurrency
        {
            return;
        }
        let run = self.run;
        let (store, clock, worker, lease) =
            (run.store.clone(), run.clock.clone(), run.config.worker_id.clone(), run.config.lease);
        let campaign_id = run.campaign_id;
        let want = self.canary_left.map_or(self.want, |left| self.want.min(left));
        let mut next = self.cursor.clone();
        next.rescue |= self.rescued_at.elapsed() >= lease;
        self.claiming = Some(tokio::spawn(async move {
            let claimed = store
                .target_claim_next(
                    ClaimBatchParams { campaign_id, worker: &worker, limit: want, now: clock.now(), lease },
                    &mut next,
                )
                .await;
            (claimed, next)
        }));
    }

    /// Waits for the next thing to happen: a halt, the time to look again, a user
    /// done, or a claim back.
    async fn step(&mut self) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        let look_again = self.look_again;
        tokio::select! {
            _ = self.halt.cancelled() => return ControlFlow::Break(()),
            _ = tokio::time::sleep_until(look_again.unwrap_or_else(tokio::time::Instant::now)), if look_again.is_some() => {
                self.look_again = None;
            }
            joined = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                if let Some(r) = joined {
                    self.user_done(r.unwrap_or(UserOutcome::Abandoned));
                }
            }
            claimed = async { self.claiming.as_mut().expect("guarded").await }, if self.claiming.is_some() => {
                self.claiming = None;
                let (claimed, next) = claimed.unwrap_or_else(|e| {
                    (Err(StoreError::Conflict(format!("claim task failed: {e}"))), self.cursor.clone())
                });
                return self.claimed(claimed, next).await;
            }
        }
        ControlFlow::Continue(())
    }

    /// Counts a user's outcome; crosses a halt threshold, and the run stops.
    fn user_done(&mut self, o: UserOutcome) {
        self.run.progress.record(o);
        if let Some(h) = &self.run.spec.halt {
            self.halt_watch.record(o);
            if self.tripped.is_none()
                && let Some(t) = self.halt_watch.check(h)
            {
                warn!(campaign = %self.run.spec.name, reason = t.reason, figures = %t.detail,
                      "halt threshold crossed; stopping the run and pausing the campaign");
                self.tripped = Some(t);
                self.halt.cancel();
            }
        }
    }

    /// A claim came back: its targets queued, the cursor moved on; an empty one
    /// passes once more from the start, or lingers (a follow-up), or ends the run.
    async fn claimed(
        &mut self,
        claimed: Result<Vec<ClaimedTarget>, StoreError>,
        next: ClaimCursor,
    ) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        let batch = match claimed {
            Ok(batch) => batch,
            Err(e) => {
                self.store_error = Some(e);
                return ControlFlow::Break(());
            }
        };
        let n = i64::try_from(batch.len()).unwrap_or(0);
        self.run.progress.claimed.fetch_add(n, Ordering::Relaxed);
        if let Some(left) = &mut self.canary_left {
            *left = (*left - n).max(0);
        }
        if next.rescue {
            self.rescued_at = tokio::time::Instant::now();
        }
        self.cursor = ClaimCursor { rescue: false, ..next };
        if batch.is_empty() {
            // nothing after the cursor: one pass from the start (targets given back
            // or re-queued meanwhile) before the run ends
            if self.cursor.after.is_some() {
                self.cursor = ClaimCursor::start();
            } else {
                // a follow-up run waits for the next user due before its horizon,
                // then passes from the start
                let run = self.run;
                match linger(&run.store, run.campaign_id, run.clock.now(), self.ends_at, self.linger_until).await {
                    Ok(Some(wait)) => {
                        self.look_again = Some(tokio::time::Instant::now() + wait);
                        self.cursor = ClaimCursor::start();
                    }
                    Ok(None) => self.exhausted = true,
                    Err(e) => {
                        self.store_error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        self.queue.extend(batch);
        ControlFlow::Continue(())
    }
}
