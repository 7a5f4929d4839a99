//! Verification states from `GET /v1/user`, for `users sync` and for the start of
//! a run, and the run's outcome bookkeeping (expired sessions, reminders).
//!
//! Users stream from the store in keyset pages; each page is asked about with at
//! most `concurrency` calls in flight, under the Baanx client's global limiter, and
//! each answer is applied in its own transaction (`Store::user_apply_state`). A
//! failed call is counted and left for the next sync; it never stops the others.

use std::sync::Arc;

use futures::StreamExt as _;
use tracing::{info, warn};

use super::EngineError;
use super::adapters::BaanxApi;
use super::ports::{ApiFailure, ApiUser, VerificationApi};
use crate::config::Settings;
use crate::domain::{CampaignSpec, Clock, Region, SystemClock, UserId};
use crate::store::outcomes::{StateApplied, StateSource, SyncCandidate, SyncFilter};
use crate::store::{Store, StoreError};

/// Users read per page.
pub const SYNC_PAGE: i64 = 500;

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Users asked about.
    pub checked: u64,
    /// Users whose state changed.
    pub changed: u64,
    /// Targets converted (VERIFIED after a message).
    pub converted: u64,
    /// Users whose refresh token was refused: they must consent again.
    pub consent_required: u64,
    /// Calls that failed (forbidden, unavailable, rate limited): tried again next time.
    pub failed: u64,
}

impl SyncReport {
    fn add(&mut self, o: &SyncOne) {
        self.checked += 1;
        match o {
            SyncOne::Applied(StateApplied::Applied { changed, converted, .. }) => {
                self.changed += u64::from(*changed);
                self.converted += converted;
            }
            SyncOne::Applied(_) => {}
            SyncOne::ConsentRequired => self.consent_required += 1,
            SyncOne::Failed => self.failed += 1,
        }
    }
}

enum SyncOne {
    Applied(StateApplied),
    ConsentRequired,
    Failed,
}

/// The Baanx client alone (no notifier), built as [`super::Worker::from_settings`]
/// builds it ([`super::adapters::baanx_from_settings`]): the store is its token vault.
///
/// # Errors
/// [`EngineError::Setup`] naming the setting that is missing or wrong.
pub fn baanx_api_from_settings(settings: &Settings, store: Store) -> Result<BaanxApi, EngineError> {
    let (client, _vault) = super::adapters::baanx_from_settings(settings, store, Arc::new(SystemClock))?;
    Ok(BaanxApi(client))
}

/// What every step of a sync works with: the store, the API, the clock and who
/// the sync's events name.
#[derive(Clone, Copy)]
pub struct SyncCtx<'a> {
    /// Where the users are read and their new states applied.
    pub store: &'a Store,
    /// Who is asked for each user's state.
    pub api: &'a dyn VerificationApi,
    /// When each call is asked and each state applied.
    pub clock: &'a dyn Clock,
    /// Who the sync's events name.
    pub actor: &'a str,
}

async fn sync_one(ctx: SyncCtx<'_>, c: &SyncCandidate) -> Result<SyncOne, StoreError> {
    let SyncCtx { store, api, clock, actor } = ctx;
    let (Ok(user_id), Ok(region)) = (UserId::parse(&c.user_id), c.region.parse::<Region>()) else {
        warn!(user_id = %c.user_id, "stored user record is not valid; not synced");
        return Ok(SyncOne::Failed);
    };
    let asked_at = clock.now();
    match api.fresh_state(&ApiUser { user_id, region }, None).await {
        Ok(state) => {
            let source = StateSource::sync(actor).asked(asked_at);
            let applied = store.user_apply_state(&c.user_id, state, clock.now(), &source).await?;
            Ok(SyncOne::Applied(applied))
        }
        Err(ApiFailure::ConsentRequired) => Ok(SyncOne::ConsentRequired),
        Err(f) => {
            warn!(user_id = %c.user_id, failure = %f, "sync failed for this user; the next sync tries again");
            Ok(SyncOne::Failed)
        }
    }
}

/// Syncs one page with at most `concurrency` calls in flight.
async fn sync_page(
    ctx: SyncCtx<'_>,
    page: &[SyncCandidate],
    concurrency: usize,
    report: &mut SyncReport,
) -> Result<(), StoreError> {
    // collected first: a stream over a borrowing closure trips the compiler's Send
    // check (higher-ranked lifetimes) when a run is spawned
    let calls: Vec<_> = page.iter().map(|c| sync_one(ctx, c)).collect();
    let mut results = futures::stream::iter(calls).buffer_unordered(concurrency.max(1));
    while let Some(r) = results.next().await {
        report.add(&r?);
    }
    Ok(())
}

/// `reverify users sync`: refreshes every reachable user `filter` selects.
///
/// # Errors
/// [`StoreError`] when the store fails; API failures are counted, not raised.
pub async fn sync_users(ctx: SyncCtx<'_>, filter: &SyncFilter, concurrency: usize) -> Result<SyncReport, StoreError> {
    let report = sync_pages(ctx, concurrency, Pages::Users(filter)).await?;
    // a sync that went through is a sign of life of the state feed
    ctx.store.feed_heard(crate::store::feeds::StateFeed::Sync, ctx.clock.now()).await?;
    Ok(report)
}

/// Which users a sync goes through, page by page in user id order.
#[derive(Clone, Copy)]
enum Pages<'a> {
    /// `users sync`'s.
    Users(&'a SyncFilter),
    /// A campaign's notified users whose session expired.
    Expired { campaign_id: i64 },
}

/// Syncs page after page of users until a page comes back short.
async fn sync_pages(ctx: SyncCtx<'_>, concurrency: usize, pages: Pages<'_>) -> Result<SyncReport, StoreError> {
    let SyncCtx { store, clock, .. } = ctx;
    let mut report = SyncReport::default();
    let mut after = String::new();
    loop {
        let page = match pages {
            Pages::Users(filter) => store.user_sync_page(filter, &after, SYNC_PAGE).await?,
            Pages::Expired { campaign_id } => {
                store.target_expired_unsynced(campaign_id, clock.now(), &after, SYNC_PAGE).await?
            }
        };
        let Some(last) = page.last() else { break };
        after = last.user_id.clone();
        sync_page(ctx, &page, concurrency, &mut report).await?;
        if (page.len() as i64) < SYNC_PAGE {
            break;
        }
    }
    Ok(report)
}

/// Syncs a campaign's notified users whose session has expired and who were not
/// synced since: their outcome is known by now, and a reminder must not go to a
/// user who verified without a webhook reaching us.
///
/// # Errors
/// [`StoreError`] when the store fails.
pub async fn sync_expired(ctx: SyncCtx<'_>, campaign_id: i64, concurrency: usize) -> Result<SyncReport, StoreError> {
    sync_pages(ctx, concurrency, Pages::Expired { campaign_id }).await
}

/// What a run does before it targets: syncs the users whose session expired (when
/// the run may call `GET /v1/user`), then re-queues the reminders that are due.
/// Returns the number of reminders queued.
///
/// # Errors
/// [`StoreError`] when the store fails.
pub(crate) async fn before_run(
    ctx: SyncCtx<'_>,
    campaign_id: i64,
    spec: &CampaignSpec,
    fresh_state: bool,
) -> Result<u64, StoreError> {
    let SyncCtx { store, clock, .. } = ctx;
    if fresh_state {
        let concurrency = usize::try_from(spec.throttle.concurrency).unwrap_or(1);
        let r = sync_expired(ctx, campaign_id, concurrency).await?;
        if r.checked > 0 {
            info!(campaign = %spec.name, checked = r.checked, changed = r.changed, converted = r.converted,
                  failed = r.failed, "synced users whose session expired");
        }
    }
    let Some(reminders) = &spec.reminders else { return Ok(0) };
    let queued = store.target_requeue_reminders_for(campaign_id, reminders, &spec.audience, clock.now()).await?;
    if queued > 0 {
        info!(campaign = %spec.name, queued, "reminders queued");
    }
    Ok(queued)
}
