//! One user, in the order that keeps design.md's invariants 1-3:
//! fresh state → reserve in the ledger → (limiters) → session → message → record.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info_span, warn};

use super::ports::{ApiFailure, ApiUser, DeliveryFailure, Outgoing};
use super::{ClickLinks, RunShared, UserOutcome};
use crate::domain::bounce::MessageRef;
use crate::domain::{SessionUrl, TargetReason, Transition};
use crate::store::clicks::{LinkIssue, LinkIssueParams};
use crate::store::ledger::{ApiFailureParams, Reservation, ReserveParams, SettleIfAmbiguousParams};
use crate::store::links::{link_token_hash, new_link_token};
use crate::store::outcomes::Fresh;
use crate::store::sessions::{DeliveryOutcome, DeliveryParams, DeliveryRecord, IssuedParams, SessionLife};
use crate::store::targets::{ClaimedTarget, SettleParams};

/// Processes one claimed target to a recorded outcome.
pub(crate) async fn process(shared: Arc<RunShared>, mut target: ClaimedTarget) -> UserOutcome {
    let span = info_span!("user", user_id = %target.claim.user_id, step = target.step);
    async move {
        // the claim read the user's tokens: the vault's first checkout starts there
        shared.vault.prime(target.claim.user_id.as_str(), std::mem::take(&mut target.tokens));
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
                UserOutcome::Abandoned
            }
        };
        shared.vault.unprime(target.claim.user_id.as_str());
        count_outcome(shared.campaign_name.as_str(), outcome);
        outcome
    }
    .instrument(span)
    .await
}

async fn process_inner(s: &RunShared, t: &ClaimedTarget) -> Result<UserOutcome, crate::store::StoreError> {
    // the claim parsed the user (a row that does not parse was failed there, never claimed)
    let user = ApiUser { user_id: t.recipient.user_id.clone(), region: t.recipient.region };

    // 0. an earlier attempt that died after fetching a session may have reached the
    // user: record that before any API call can settle the target otherwise. A first
    // attempt has no earlier attempt to look for (a released claim gives its attempt
    // back, and a re-queued target starts again at 0 with its old rows final).
    if t.attempts > 1
        && s.store
            .session_settle_if_ambiguous(SettleIfAmbiguousParams { claim: &t.claim, step: t.step, now: s.now() })
            .await?
    {
        return Ok(UserOutcome::Failed(TargetReason::DeliveryUnknown));
    }

    // 0a. the campaign's end: nothing leaves after ends_at
    if s.ends_at.is_some_and(|e| s.now() >= e) {
        return settle(s, t, Transition::skip(TargetReason::CampaignEnded)).await;
    }

    // 0b. the send window, in the user's zone: outside it the target waits, deferred
    // to the next opening, before any API call, session or link, with its claim
    // given back (the attempt too)
    if let Some(at) = outside_window(s, t) {
        return settle(s, t, Transition::defer(TargetReason::SendWindow, at)).await;
    }

    // 0c. the address (issue 27): a user whose email bounced for good is reached
    // through the fallback channel, or skipped; one who complained, skipped when the
    // campaign suppresses complaints. Before any API call.
    let fallback = match reach(s, t) {
        Ok(fallback) => fallback,
        Err(reason) => return settle(s, t, Transition::skip(reason)).await,
    };

    // 1. a fresh state, so that a user who verified since the import is not asked
    // again; unless the stored one was confirmed within fresh_state_max_age (a
    // webhook, a sync, an import, an earlier call): the reservation reads it then
    let mut fresh = None;
    if s.config.fresh_state && !s.fresh_age.trusts(t.state_confirmed_at, s.now()) {
        let asked_at = s.now();
        match s.api.fresh_state(&user, Some(s)).await {
            Ok(state) => fresh = Some(Fresh { state, asked_at }),
            // no session was asked for: whether a failure was definite does not matter
            Err(f) => return settle(s, t, on_api_failure(s, t, &f).1).await,
        }
    }

    // click mode: a link to our page, the session made at the click
    if let Some(click) = &s.click {
        return send_link(s, t, click, fresh, fallback).await;
    }

    // 2. record it and reserve a ledger row under every per-user limit, in one write
    let reserve = ReserveParams { claim: &t.claim, step: t.step, now: s.now(), life: life(s), fresh };
    let session_id = match s.store.session_reserve(reserve).await? {
        Reservation::Reserved { session_id } => session_id,
        Reservation::Deferred { reason, .. } => return Ok(UserOutcome::Deferred(reason.into())),
        Reservation::Skipped(reason) => return Ok(UserOutcome::Skipped(reason.into())),
        Reservation::Ambiguous => return Ok(UserOutcome::Failed(TargetReason::DeliveryUnknown)),
        Reservation::LostClaim => return Ok(UserOutcome::Abandoned),
    };

    // 3-4. the limiters (the campaign's paces every request, the client's on top), then
    // the session
    let url = match s.api.start_session(&user, Some(s)).await {
        Ok(url) => url,
        Err(f) => {
            let (definite, to) = on_api_failure(s, t, &f);
            s.store
                .session_record_api_failure(ApiFailureParams {
                    claim: &t.claim,
                    session_id,
                    definite,
                    to,
                    now: s.now(),
                    life: life(s),
                })
                .await?;
            return Ok(to.into());
        }
    };
    let issued_at = s.now();
    let still_ours = s
        .store
        .session_mark_issued(IssuedParams { claim: &t.claim, step: t.step, session_id, now: issued_at, life: life(s) })
        .await?;
    crate::telemetry::global().session_issued(s.campaign_name.as_str());
    if !still_ours {
        // Invariant 7: the lease ran out (a stall) and another worker took the target
        // over; it will find this session and send nothing either. The URL is dropped
        // here, unsent; the ledger row stays, `orphaned`, and keeps counting.
        drop(url);
        warn!("the claim was lost before the session could be sent; the session is dropped unsent");
        return Ok(UserOutcome::Abandoned);
    }
    let expires_at =
        issued_at + chrono::Duration::from_std(s.config.session_ttl).unwrap_or(chrono::Duration::hours(24));

    // 5-6. the message (the URL moves into it and is dropped with it), and the record
    send_and_record(s, t, Carrier::Session(session_id), Outbound { url, expires_at, fallback }).await
}

/// Whether `t` is reached by email (`Ok(false)`), through the campaign's fallback
/// channel (`Ok(true)`), or not at all (the skip reason).
fn reach(s: &RunShared, t: &ClaimedTarget) -> Result<bool, TargetReason> {
    if !s.reach.email {
        return Ok(false);
    }
    if t.complained && s.reach.suppress_complaints {
        return Err(TargetReason::Complained);
    }
    match (t.email_undeliverable, s.reach.fallback) {
        (false, _) => Ok(false),
        (true, true) => Ok(true),
        (true, false) => Err(TargetReason::EmailUndeliverable),
    }
}

/// What carried a message: a session's ledger row, or a click-through link.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    Session(i64),
    Link(i64),
}

/// A message to send: its link (in memory only), until when the link works, and
/// whether it goes through the campaign's fallback channel.
struct Outbound {
    url: SessionUrl,
    expires_at: DateTime<Utc>,
    fallback: bool,
}

/// Sends the message and records how it went, for the carrier.
async fn send_and_record(
    s: &RunShared,
    t: &ClaimedTarget,
    carrier: Carrier,
    out: Outbound,
) -> Result<UserOutcome, crate::store::StoreError> {
    let Outbound { url, expires_at, fallback } = out;
    let token = s.config.verp.as_ref().map(|k| {
        k.token(match carrier {
            Carrier::Session(id) => MessageRef::Session(id),
            Carrier::Link(id) => MessageRef::Link(id),
        })
    });
    let delivered = deliver(s, t, Sending { url, expires_at, bounce_token: token, fallback }).await;
    let (Carrier::Session(id) | Carrier::Link(id)) = carrier;
    let p = DeliveryParams { claim: &t.claim, id, outcome: delivered.clone(), now: s.now() };
    let kept = match carrier {
        Carrier::Session(_) => s.store.session_record_delivery(p).await?,
        Carrier::Link(_) => s.store.link_record_delivery(p).await?,
    };
    let delivered = delivered.record;
    if fallback && kept && delivered == DeliveryRecord::Delivered {
        s.store.target_fallback_sent(&t.claim, s.now()).await?;
    }
    if !kept {
        warn!(?carrier, "the claim expired while the message was being sent; the record stands");
    }
    debug!(?delivered, "user done");
    Ok(delivered_outcome(delivered))
}

/// What a delivery's outcome counts as: the target's transition when it was not
/// delivered (the store records the same, see `sessions::DeliveryRecord::recorded`).
fn delivered_outcome(delivered: DeliveryRecord) -> UserOutcome {
    match delivered.recorded().2 {
        None => UserOutcome::Notified,
        Some(reason) => Transition::fail(reason).into(),
    }
}

/// One message on its way: the link (in memory only), until when it works, its VERP
/// token, and whether it goes through the fallback channel.
struct Sending {
    url: SessionUrl,
    expires_at: DateTime<Utc>,
    bounce_token: Option<String>,
    fallback: bool,
}

/// Sends one message through the campaign's channel; what happened, as recorded.
async fn deliver(s: &RunShared, t: &ClaimedTarget, m: Sending) -> DeliveryOutcome {
    let out = Outgoing {
        campaign: &s.campaign_name,
        recipient: &t.recipient,
        step: t.step,
        url: m.url,
        expires_at: m.expires_at,
        bounce_token: m.bounce_token,
        fallback: m.fallback,
    };
    let record = match s.deliverer.deliver(out).await {
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
    fresh: Option<Fresh>,
    fallback: bool,
) -> Result<UserOutcome, crate::store::StoreError> {
    let token = new_link_token();
    let expires_at = s.now() + chrono::Duration::from_std(click.ttl).unwrap_or(chrono::Duration::days(14));
    let hash = link_token_hash(&token);
    let issued = s
        .store
        .link_issue(LinkIssueParams {
            claim: &t.claim,
            step: t.step,
            now: s.now(),
            expires_at,
            token_hash: &hash,
            fresh,
            fresh_state_max_age: click.fresh_state_max_age,
        })
        .await?;
    let link_id = match issued {
        LinkIssue::Issued { link_id } => link_id,
        LinkIssue::Deferred { reason, .. } => return Ok(UserOutcome::Deferred(reason.into())),
        LinkIssue::Skipped(reason) => return Ok(UserOutcome::Skipped(reason.into())),
        LinkIssue::LostClaim => return Ok(UserOutcome::Abandoned),
    };
    let url = SessionUrl::new(click.url_of(&token));
    drop(token);
    send_and_record(s, t, Carrier::Link(link_id), Outbound { url, expires_at, fallback }).await
}

/// When the campaign has a send window and `t`'s user is outside it now: the
/// instant it next opens, in the user's zone (the campaign's when theirs is missing
/// or unknown, counted in `reverify_timezone_fallbacks_total`).
fn outside_window(s: &RunShared, t: &ClaimedTarget) -> Option<DateTime<Utc>> {
    let window = s.window.as_ref()?;
    let tz = t.recipient.zone().unwrap_or_else(|| {
        crate::telemetry::global().timezone_fallback(s.campaign_name.as_str());
        s.campaign_zone
    });
    window.next_opening(s.now(), tz)
}

/// How long the ledger counts a session (see [`SessionLife`]).
fn life(s: &RunShared) -> SessionLife {
    SessionLife { ttl: s.config.session_ttl, margin: s.config.session_expiry_margin }
}

/// Records `to` for the target (still this worker's claim).
async fn settle(s: &RunShared, t: &ClaimedTarget, to: Transition) -> Result<UserOutcome, crate::store::StoreError> {
    s.store.target_settle(SettleParams { claim: &t.claim, to, now: s.now() }).await?;
    Ok(to.into())
}

/// Exponential backoff for a target that hit a transient failure: 1, 2, 4 … 60 min.
fn retry_at(s: &RunShared, attempts: i64, hint: Option<Duration>) -> DateTime<Utc> {
    let exp = u32::try_from(attempts.clamp(1, 7) - 1).unwrap_or(0);
    let backoff = Duration::from_secs(60 * 2u64.pow(exp)).min(Duration::from_secs(3600));
    let wait = hint.map_or(backoff, |h| h.max(Duration::from_secs(1)));
    s.now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(1))
}

/// The one mapping from a failed API call (the fresh state or the session) to the
/// target's transition, with whether the failure was definite (the API surely made
/// no session: only a 5xx, a timeout or an unreadable answer may hide one). A
/// fatal failure stops the run and gives the target back.
fn on_api_failure(s: &RunShared, t: &ClaimedTarget, f: &ApiFailure) -> (bool, Transition) {
    let out_of_attempts = t.attempts >= s.config.max_attempts;
    match f {
        ApiFailure::ConsentRequired => (true, Transition::skip(TargetReason::ConsentRequired)),
        ApiFailure::Forbidden(_) => (true, Transition::fail(TargetReason::Forbidden)),
        ApiFailure::Refused(_) => (true, Transition::fail(TargetReason::ApiRefused)),
        ApiFailure::UserLimited { reason } => {
            // a rejection's cooldown is 24 hours, the other limits lift within the hour
            let wait = if *reason == TargetReason::RejectionCooldown {
                crate::domain::policy::rejection_cooldown()
            } else {
                chrono::Duration::hours(1)
            };
            (true, Transition::new(crate::domain::TargetStatus::Deferred, *reason, Some(s.now() + wait)))
        }
        ApiFailure::Fatal(why) => {
            s.abort(why.clone());
            (true, Transition::retry(TargetReason::RunStopped, None))
        }
        ApiFailure::RateLimited { .. } if out_of_attempts => (true, Transition::fail(TargetReason::RateLimited)),
        ApiFailure::RateLimited { retry_after } => {
            (true, Transition::retry(TargetReason::RateLimited, Some(retry_at(s, t.attempts, *retry_after))))
        }
        ApiFailure::Unavailable(_) if out_of_attempts => (false, Transition::fail(TargetReason::ApiUnavailable)),
        ApiFailure::Unavailable(_) => {
            (false, Transition::retry(TargetReason::ApiUnavailable, Some(retry_at(s, t.attempts, None))))
        }
    }
}

/// The outcome in the metrics, as (outcome, reason) labels: reason codes only.
fn count_outcome(campaign: &str, outcome: UserOutcome) {
    let (kind, reason) = match outcome {
        UserOutcome::Notified => ("sent", "ok"),
        UserOutcome::Failed(r) => ("failed", r.as_str()),
        UserOutcome::Skipped(r) => ("skipped", r.as_str()),
        UserOutcome::Deferred(r) => ("deferred", r.as_str()),
        UserOutcome::Abandoned => ("abandoned", "unrecorded"),
    };
    crate::telemetry::global().notification(campaign, kind, reason);
}
