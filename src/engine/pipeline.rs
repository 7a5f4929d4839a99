//! One user, in the order that keeps design.md's invariants 1-3:
//! fresh state → reserve in the ledger → (limiters) → session → message → record.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info_span, warn};

use super::ports::{ApiFailure, ApiUser, DeliveryFailure, Outgoing};
use super::{ClickLinks, Outcome, RunShared};
use crate::domain::SessionUrl;
use crate::domain::{DeferReason, Region, UserId};
use crate::store::links::{LinkIssue, LinkIssueParams, link_token_hash, new_link_token};
use crate::store::sessions::{
    ApiFailureParams, DeliveryOutcome, DeliveryRecord, IssuedParams, Reservation, SessionLife,
};
use crate::store::targets::ClaimedTarget;

/// Processes one claimed target to a recorded outcome.
pub(crate) async fn process(shared: Arc<RunShared>, target: ClaimedTarget) -> Outcome {
    let span = info_span!("user", user_id = %target.user_id, step = target.step);
    async move {
        let outcome = match process_inner(&shared, &target).await {
            Ok(o) => o,
            Err(e) => {
                // A store error mid-user leaves the claim in place; the lease expires
                // and a later run picks the user up again. Nothing is lost. Decision:
                // the run stops too: with the database gone every further user would
                // wait out the pool's timeout, and a session fetched now could not be
                // recorded (it would come back as delivery_unknown).
                warn!(error = %e, "could not record an outcome; the claim will be retried after its lease");
                shared.store_failed(&e);
                Outcome::Abandoned
            }
        };
        count_outcome(&shared.campaign_name, outcome);
        outcome
    }
    .instrument(span)
    .await
}

async fn process_inner(s: &RunShared, t: &ClaimedTarget) -> Result<Outcome, crate::store::StoreError> {
    let user = match (UserId::parse(&t.user_id), t.region.parse::<Region>()) {
        (Ok(user_id), Ok(region)) => ApiUser { user_id, region },
        _ => return settle(s, t, "failed", "invalid_user_record", None).await,
    };

    // 0. an earlier attempt that died after fetching a session may have reached the
    // user: record that before any API call can settle the target otherwise. A first
    // attempt has no earlier attempt to look for (a released claim gives its attempt
    // back, and a re-queued target starts again at 0 with its old rows final).
    if t.attempts > 1
        && s.store.session_settle_if_ambiguous(s.campaign_id, &t.user_id, t.step, &s.config.worker_id, s.now()).await?
    {
        return Ok(Outcome::Failed("delivery_unknown"));
    }

    // 0b. the send window, in the user's zone: outside it the target waits, deferred
    // to the next opening, before any API call, session or link, with its claim
    // given back (the attempt too)
    if let Some(at) = outside_window(s, t) {
        return settle(s, t, "deferred", SEND_WINDOW, Some(at)).await;
    }

    // 1. a fresh state, so that a user who verified since the import is not asked again
    let mut fresh = None;
    if s.config.fresh_state {
        match s.api.fresh_state(&user, Some(s)).await {
            Ok(state) => fresh = Some(state),
            Err(f) => return api_failed_before_reserve(s, t, f).await,
        }
    }

    // click mode: a link to our page, the session made at the click
    if let Some(click) = &s.click {
        return send_link(s, t, click, fresh).await;
    }

    // 2. record it and reserve a ledger row under every per-user limit, in one write
    let session_id = match s
        .store
        .session_reserve_fresh(s.campaign_id, &t.user_id, t.step, &s.config.worker_id, s.now(), life(s), fresh)
        .await?
    {
        Reservation::Reserved { session_id } => session_id,
        Reservation::Deferred { reason, .. } => return Ok(Outcome::Deferred(reason.as_str())),
        Reservation::Skipped(reason) => return Ok(Outcome::Skipped(reason.as_str())),
        Reservation::Ambiguous => return Ok(Outcome::Failed("delivery_unknown")),
        Reservation::LostClaim => return Ok(Outcome::Abandoned),
    };

    // 3-4. the limiters (the campaign's paces every request, the client's on top), then
    // the session
    let url = match s.api.start_session(&user, Some(s)).await {
        Ok(url) => url,
        Err(f) => {
            let (definite, status, reason, not_before) = classify_session_failure(s, t, &f);
            s.store
                .session_record_api_failure(ApiFailureParams {
                    campaign_id: s.campaign_id,
                    user_id: &t.user_id,
                    session_id,
                    definite,
                    worker: &s.config.worker_id,
                    target_status: status,
                    reason,
                    not_before,
                    now: s.now(),
                    life: life(s),
                })
                .await?;
            return Ok(outcome_of(status, reason));
        }
    };
    let issued_at = s.now();
    let still_ours = s
        .store
        .session_mark_issued(IssuedParams {
            campaign_id: s.campaign_id,
            user_id: &t.user_id,
            step: t.step,
            worker: &s.config.worker_id,
            session_id,
            now: issued_at,
            life: life(s),
        })
        .await?;
    crate::telemetry::global().session_issued(&s.campaign_name);
    if !still_ours {
        // Invariant 7: the lease ran out (a stall) and another worker took the target
        // over; it will find this session and send nothing either. The URL is dropped
        // here, unsent; the ledger row stays, `orphaned`, and keeps counting.
        drop(url);
        warn!("the claim was lost before the session could be sent; the session is dropped unsent");
        return Ok(Outcome::Abandoned);
    }
    let expires_at =
        issued_at + chrono::Duration::from_std(s.config.session_ttl).unwrap_or(chrono::Duration::hours(24));

    // 5. the message; the URL moves into it and is dropped with it
    let delivered = deliver(s, t, url, expires_at).await;

    // 6. the record
    let kept = s
        .store
        .session_record_delivery(s.campaign_id, &t.user_id, session_id, delivered.clone(), &s.config.worker_id, s.now())
        .await?;
    let delivered = delivered.record;
    if !kept {
        warn!("the claim expired while the message was being sent; the ledger row stands");
    }
    debug!(?delivered, "user done");
    Ok(delivered_outcome(delivered))
}

fn delivered_outcome(delivered: DeliveryRecord) -> Outcome {
    match delivered {
        DeliveryRecord::Delivered => Outcome::Notified,
        DeliveryRecord::Failed => Outcome::Failed("delivery_failed"),
        DeliveryRecord::Unknown => Outcome::Failed("delivery_unknown"),
    }
}

/// Sends one message through the campaign's channel; what happened, as recorded.
async fn deliver(s: &RunShared, t: &ClaimedTarget, url: SessionUrl, expires_at: DateTime<Utc>) -> DeliveryOutcome {
    let record = match s.deliverer.deliver(Outgoing { campaign: &s.campaign_name, target: t, url, expires_at }).await {
        Ok(sent) => {
            s.delivery_outcome(true, None);
            return DeliveryOutcome { record: DeliveryRecord::Delivered, sent };
        }
        Err(DeliveryFailure::Permanent(why)) => {
            warn!(reason = %why, "delivery failed");
            DeliveryRecord::Failed
        }
        Err(DeliveryFailure::GaveUp(why)) => {
            warn!(reason = %why, "delivery failed");
            s.delivery_outcome(false, Some(&why));
            DeliveryRecord::Failed
        }
        Err(DeliveryFailure::Ambiguous(why)) => {
            // it may have arrived: recorded delivery_unknown, never sent again on its own
            warn!(reason = %why, "delivery outcome unknown");
            s.delivery_outcome(false, Some(&why));
            DeliveryRecord::Unknown
        }
        Err(DeliveryFailure::Setup(why)) => {
            s.abort(format!("notification channel: {why}"));
            DeliveryRecord::Failed
        }
    };
    record.into()
}

/// Click mode's send step: a link to our own page instead of a session. No session
/// call, no ledger row: the session is made when the person clicks (`crate::click`).
/// The fresh state, when the campaign asks for one, is recorded with the link.
async fn send_link(
    s: &RunShared,
    t: &ClaimedTarget,
    click: &ClickLinks,
    fresh: Option<crate::domain::VerificationState>,
) -> Result<Outcome, crate::store::StoreError> {
    let token = new_link_token();
    let expires_at = s.now() + chrono::Duration::from_std(click.ttl).unwrap_or(chrono::Duration::days(14));
    let hash = link_token_hash(&token);
    let issued = s
        .store
        .link_issue(LinkIssueParams {
            campaign_id: s.campaign_id,
            user_id: &t.user_id,
            step: t.step,
            worker: &s.config.worker_id,
            now: s.now(),
            expires_at,
            token_hash: &hash,
            fresh,
        })
        .await?;
    let link_id = match issued {
        LinkIssue::Issued { link_id } => link_id,
        LinkIssue::Deferred { reason, .. } => return Ok(Outcome::Deferred(reason.as_str())),
        LinkIssue::Skipped(reason) => return Ok(Outcome::Skipped(reason.as_str())),
        LinkIssue::LostClaim => return Ok(Outcome::Abandoned),
    };
    let url = SessionUrl::new(click.url_of(&token));
    drop(token);
    let delivered = deliver(s, t, url, expires_at).await;
    let kept = s
        .store
        .link_record_delivery(s.campaign_id, &t.user_id, link_id, delivered.clone(), &s.config.worker_id, s.now())
        .await?;
    let delivered = delivered.record;
    if !kept {
        warn!("the claim expired while the message was being sent");
    }
    Ok(delivered_outcome(delivered))
}

/// The reason a target waits for its send window.
pub(crate) const SEND_WINDOW: &str = "send_window";

/// When the campaign has a send window and `t`'s user is outside it now: the
/// instant it next opens, in the user's zone (the campaign's when theirs is missing
/// or unknown, counted in `reverify_timezone_fallbacks_total`).
fn outside_window(s: &RunShared, t: &ClaimedTarget) -> Option<DateTime<Utc>> {
    let window = s.window.as_ref()?;
    let (tz, fell_back) = crate::domain::window::user_zone(t.timezone.as_deref(), s.campaign_zone);
    if fell_back {
        crate::telemetry::global().timezone_fallback(&s.campaign_name);
    }
    window.next_opening(s.now(), tz)
}

/// How long the ledger counts a session (see [`SessionLife`]).
fn life(s: &RunShared) -> SessionLife {
    SessionLife { ttl: s.config.session_ttl, margin: s.config.session_expiry_margin }
}

/// When the API's own per-user limit refused, the wait before asking again: a
/// rejection's cooldown is 24 hours, the other limits lift within the hour.
fn user_limited_until(s: &RunShared, reason: &str) -> DateTime<Utc> {
    let wait = if reason == DeferReason::RejectionCooldown.as_str() {
        crate::domain::policy::rejection_cooldown()
    } else {
        chrono::Duration::hours(1)
    };
    s.now() + wait
}

fn outcome_of(status: &str, reason: &'static str) -> Outcome {
    match status {
        "skipped" => Outcome::Skipped(reason),
        "failed" => Outcome::Failed(reason),
        _ => Outcome::Deferred(reason),
    }
}

async fn settle(
    s: &RunShared,
    t: &ClaimedTarget,
    status: &str,
    reason: &'static str,
    not_before: Option<DateTime<Utc>>,
) -> Result<Outcome, crate::store::StoreError> {
    s.store.target_settle(s.campaign_id, &t.user_id, &s.config.worker_id, status, reason, not_before, s.now()).await?;
    Ok(outcome_of(status, reason))
}

/// Exponential backoff for a target that hit a transient failure: 1, 2, 4 … 60 min.
fn retry_at(s: &RunShared, attempts: i64, hint: Option<Duration>) -> DateTime<Utc> {
    let exp = u32::try_from(attempts.clamp(1, 7) - 1).unwrap_or(0);
    let backoff = Duration::from_secs(60 * 2u64.pow(exp)).min(Duration::from_secs(3600));
    let wait = hint.map_or(backoff, |h| h.max(Duration::from_secs(1)));
    s.now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(1))
}

async fn api_failed_before_reserve(
    s: &RunShared,
    t: &ClaimedTarget,
    f: ApiFailure,
) -> Result<Outcome, crate::store::StoreError> {
    match f {
        ApiFailure::ConsentRequired => settle(s, t, "skipped", "consent_required", None).await,
        ApiFailure::Forbidden(_) => settle(s, t, "failed", "forbidden", None).await,
        ApiFailure::Refused(_) => settle(s, t, "failed", "api_refused", None).await,
        ApiFailure::UserLimited { reason } => {
            let at = user_limited_until(s, reason);
            settle(s, t, "deferred", reason, Some(at)).await
        }
        ApiFailure::Fatal(why) => {
            s.abort(why);
            settle(s, t, "pending", "run_stopped", None).await
        }
        ApiFailure::RateLimited { retry_after } => {
            if t.attempts >= s.config.max_attempts {
                return settle(s, t, "failed", "rate_limited", None).await;
            }
            let at = retry_at(s, t.attempts, retry_after);
            settle(s, t, "pending", "rate_limited", Some(at)).await
        }
        ApiFailure::Unavailable(_) => {
            if t.attempts >= s.config.max_attempts {
                return settle(s, t, "failed", "api_unavailable", None).await;
            }
            let at = retry_at(s, t.attempts, None);
            settle(s, t, "pending", "api_unavailable", Some(at)).await
        }
    }
}

/// (definite, target status, reason, retry time) for a failed session call.
fn classify_session_failure(
    s: &RunShared,
    t: &ClaimedTarget,
    f: &ApiFailure,
) -> (bool, &'static str, &'static str, Option<DateTime<Utc>>) {
    let out_of_attempts = t.attempts >= s.config.max_attempts;
    match f {
        ApiFailure::ConsentRequired => (true, "skipped", "consent_required", None),
        ApiFailure::Forbidden(_) => (true, "failed", "forbidden", None),
        ApiFailure::Refused(_) => (true, "failed", "api_refused", None),
        ApiFailure::UserLimited { reason } => (true, "deferred", reason, Some(user_limited_until(s, reason))),
        ApiFailure::Fatal(why) => {
            s.abort(why.clone());
            (true, "pending", "run_stopped", None)
        }
        ApiFailure::RateLimited { .. } if out_of_attempts => (true, "failed", "rate_limited", None),
        ApiFailure::RateLimited { retry_after } => {
            (true, "pending", "rate_limited", Some(retry_at(s, t.attempts, *retry_after)))
        }
        ApiFailure::Unavailable(_) if out_of_attempts => (false, "failed", "api_unavailable", None),
        ApiFailure::Unavailable(_) => (false, "pending", "api_unavailable", Some(retry_at(s, t.attempts, None))),
    }
}

/// The outcome in the metrics, as (outcome, reason) labels: reason codes only.
fn count_outcome(campaign: &str, outcome: Outcome) {
    let (kind, reason) = match outcome {
        Outcome::Notified => ("sent", "ok"),
        Outcome::Failed(r) => ("failed", r),
        Outcome::Skipped(r) => ("skipped", r),
        Outcome::Deferred(r) => ("deferred", r),
        Outcome::Abandoned => ("abandoned", "unrecorded"),
    };
    crate::telemetry::global().notification(campaign, kind, reason);
}
