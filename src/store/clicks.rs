//! The transitions of click-through links (`delivery.link = "click"`), each one
//! store function over one named parameter struct: issue a link for a claimed
//! target, record its delivery, start a click, reserve and record the session a
//! click makes. They compose the statements of `links`, `sessions`, `targets`,
//! `users` (through `outcomes`) and `events`, like `store::ledger` does for a run's
//! sessions; link issues and deliveries are batched writes (see `store::group`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{NewEventRow, TxEvent, event_in_tx, events_insert_many_in_tx};
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::links::{LinkNew, LinkRow, link_click_take_in_tx, links_delivered_in_tx, links_insert_in_tx};
use super::outcomes::{ApplyState, Fresh, StateSource, apply_state_fast_or_in_tx, fresh_states, record_fresh_states};
use super::sessions::{
    ClickRow, DeliveryOutcome, DeliveryParams, DeliveryRecord, SessionLife, parse_slots, session_insert_click_in_tx,
    session_read_standing, session_record_click_row,
};
use super::targets::{Claim, target_click_session, target_clicked_in_tx, targets_notified_by_link_in_tx};
use super::users::{STANDING_COLUMNS, standing_from_row, user_lock_in_tx};
use super::{Backend, Store, StoreError, query_err};
use crate::domain::policy::{self, DeferReason, SkipReason, Verdict};
use crate::domain::{SessionStatus, Transition};

/// What [`Store::link_issue`] records.
#[derive(Debug, Clone)]
pub struct LinkIssueParams<'a> {
    /// The target, which must still be this claim's.
    pub claim: &'a Claim,
    pub step: i64,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The hash of the new token ([`super::links::link_token_hash`]).
    pub token_hash: &'a str,
    /// The state `GET /v1/user` just reported, when the campaign asks for one.
    pub fresh: Option<Fresh>,
    /// The campaign's `fresh_state_max_age`, kept with the link for the click.
    pub fresh_state_max_age: Option<std::time::Duration>,
}

/// What issuing a link came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkIssue {
    /// The link is recorded: send it.
    Issued { link_id: i64 },
    /// The user's state holds them back until then (a rejection's or failures'
    /// cooldown): no link yet. The target is deferred.
    Deferred { reason: DeferReason, until: DateTime<Utc> },
    /// VERIFIED or PENDING: the target is skipped.
    Skipped(SkipReason),
    /// The claim was lost.
    LostClaim,
}

/// What a click's first write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickStart {
    /// Go on and make a session.
    Go,
    /// Another click of this link is making (or made) a session at that instant,
    /// less than [`super::links::CLICK_DEBOUNCE_MS`] ago.
    OnItsWay { since: DateTime<Utc> },
}

/// What [`Store::session_reserve_click`] reserves for: a person who clicked link
/// `link_id` of (campaign, user, step).
#[derive(Debug, Clone)]
pub struct ClickReserveParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub link_id: i64,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
    /// The state `GET /v1/user` just reported; `None` when the stored one is fresh
    /// enough.
    pub fresh: Option<Fresh>,
}

/// What a click's reservation came to. Nothing is settled on the target: it was
/// notified, and stays so; the person is told on the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClickReservation {
    Reserved {
        session_id: i64,
    },
    /// A limit holds until then.
    Deferred {
        reason: DeferReason,
        until: DateTime<Utc>,
    },
    /// VERIFIED or PENDING now.
    Skipped(SkipReason),
}

/// How a click's session call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickSession {
    /// The API answered with a URL and the person is being sent to it.
    Delivered,
    /// The API surely made no session (a 4xx answer).
    Refused,
    /// A session may exist (a timeout, a 5xx): it keeps counting.
    Unknown,
}

/// What [`Store::session_record_click`] records.
#[derive(Debug, Clone, Copy)]
pub struct ClickRecordParams {
    pub session_id: i64,
    pub outcome: ClickSession,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

impl Store {
    /// Records a link for a target `worker` has claimed, after recording the fresh
    /// state when there is one; or settles the target when the user's state holds
    /// them back. One transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_issue(&self, p: LinkIssueParams<'_>) -> Result<LinkIssue, StoreError> {
        self.write_batched(IssueArgs {
            backend: self.backend(),
            claim: p.claim.clone(),
            now: p.now,
            step: p.step,
            expires_at: p.expires_at,
            token_hash: p.token_hash.to_owned(),
            fresh: p.fresh,
            fresh_state_max_age: p.fresh_state_max_age,
        })
        .await
    }

    /// The message carrying link `p.id` was delivered, refused, or may have
    /// been delivered: records the link and the target (still `p.claim`'s) in
    /// one transaction, as [`Store::session_record_delivery`] does for a session.
    /// Returns whether the claim still held. The target has no session yet
    /// (`session_expires_at` stays empty until a click makes one), so a reminder
    /// waits only for `reminders.after`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_record_delivery(&self, p: DeliveryParams<'_>) -> Result<bool, StoreError> {
        self.write_batched(LinkDelivery {
            backend: self.backend(),
            claim: p.claim.clone(),
            now: p.now,
            link_id: p.id,
            record: p.outcome.record,
            sent: p.outcome,
        })
        .await
    }

    /// A submitted click of link `link_id`: counts it, marks the target `clicked`
    /// (first time) with an audit event, and takes the link's right to make a
    /// session unless another click took it less than
    /// [`super::links::CLICK_DEBOUNCE_MS`] ago. One transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_click_start(
        &self,
        link: &LinkRow,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<ClickStart, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(since) = link_click_take_in_tx(&mut tx, link.link_id, now).await? {
            tx.commit().await.map_err(query_err("link_click_start commit"))?;
            return Ok(ClickStart::OnItsWay { since });
        }
        // the link's user, read with the link: an id that does not parse is an error
        let user_id = super::links::link_user(link)?;
        if target_clicked_in_tx(&mut tx, link.campaign_id, user_id.as_str(), now).await? {
            event_in_tx(
                &mut tx,
                now,
                &TxEvent {
                    actor,
                    kind: "target.clicked",
                    campaign_id: Some(link.campaign_id),
                    user_id: Some(&user_id),
                    detail: &serde_json::json!({ "link_id": link.link_id, "step": link.step }),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(query_err("link_click_start commit"))?;
        Ok(ClickStart::Go)
    }

    /// Reserves a session for a person who clicked a link, under every per-user
    /// limit, in one transaction: the fresh state is recorded, the user's row locked,
    /// and the sessions read after the lock (see `sessions::session_read_standings`),
    /// so that a click and a run (or two clicks) reserving for one user at once are
    /// serialised. The row carries the link.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user, [`StoreError::Query`].
    pub async fn session_reserve_click(&self, p: ClickReserveParams<'_>) -> Result<ClickReservation, StoreError> {
        let backend = self.backend();
        let mut tx = self.begin_write().await?;
        if let Some(f) = p.fresh {
            let source = StateSource::fresh_state("click").asked(f.asked_at);
            apply_state_fast_or_in_tx(
                &mut tx,
                backend,
                &ApplyState { user_id: p.user_id, state: f.state, now: p.now, src: &source },
            )
            .await?;
        }
        user_lock_in_tx(&mut tx, backend, p.user_id).await?;
        let row = session_read_standing(&mut tx, backend, p.user_id, p.now)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "user", key: p.user_id.to_owned() })?;
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve_click read"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;
        let out = match policy::evaluate(&standing_from_row(&row)?, &slots, p.now) {
            Verdict::Skip(reason) => ClickReservation::Skipped(reason),
            Verdict::Defer { reason, until } => ClickReservation::Deferred { reason, until },
            Verdict::Eligible => {
                let session_id = session_insert_click_in_tx(
                    &mut tx,
                    &ClickRow {
                        campaign_id: p.campaign_id,
                        user_id: p.user_id,
                        step: p.step,
                        link_id: p.link_id,
                        now: p.now,
                        life: p.life,
                    },
                )
                .await?;
                ClickReservation::Reserved { session_id }
            }
        };
        tx.commit().await.map_err(query_err("session_reserve_click commit"))?;
        Ok(out)
    }

    /// How a click's session call ended: `delivered` (the person is sent to the URL
    /// at once; it counts from the answer plus the margin, and the target takes its
    /// expiry), `api_failed`, or `unknown` (counted, as a session made as late as
    /// now).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_click(&self, p: ClickRecordParams) -> Result<(), StoreError> {
        let status = match p.outcome {
            ClickSession::Delivered => SessionStatus::Delivered,
            ClickSession::Refused => SessionStatus::ApiFailed,
            ClickSession::Unknown => SessionStatus::Unknown,
        };
        let expires_at = session_record_click_row(self, p.session_id, status, p.now, p.life).await?;
        if p.outcome == ClickSession::Delivered {
            // the target's session: a run syncs the user once it has expired, and a
            // reminder waits for it
            target_click_session(self, p.session_id, expires_at).await?;
        }
        Ok(())
    }
}

/// [`Store::link_issue`]'s write. A group's issues are a few statements whatever
/// their number: the fresh states, the users' standings and claims, the new links;
/// a target the user's state holds back is settled on its own (rare).
struct IssueArgs {
    backend: Backend,
    claim: Claim,
    now: DateTime<Utc>,
    step: i64,
    expires_at: DateTime<Utc>,
    token_hash: String,
    fresh: Option<Fresh>,
    fresh_state_max_age: Option<std::time::Duration>,
}

impl BatchWrite for IssueArgs {
    type Out = LinkIssue;

    /// A user's two campaigns never share a statement: the second sees the first's
    /// state.
    fn key(&self) -> Option<&str> {
        Some(self.claim.user_id.as_str())
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<LinkIssue>> {
        Box::pin(issue_many(writes, tx))
    }
}

async fn issue_many(writes: &[&IssueArgs], tx: &mut Tx) -> Result<Vec<LinkIssue>, StoreError> {
    let Some(backend) = writes.first().map(|w| w.backend) else { return Ok(Vec::new()) };
    record_fresh_states(backend, &fresh_states(writes.iter().map(|w| (&w.claim, w.now, w.fresh))), tx).await?;

    let rows = json_rows(
        writes.iter().map(|w| serde_json::json!([w.claim.user_id.as_str(), w.claim.campaign_id, w.claim.worker])),
    );
    let from = json_args(backend, &[("u", Arg::Text), ("c", Arg::Int), ("w", Arg::Text)]);
    let sql = format!(
        "SELECT u.user_id, {STANDING_COLUMNS}, \
           (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = u.user_id \
              AND {ours}) AS mine \
         FROM ({from}) AS x JOIN users u ON u.user_id = x.u",
        ours = ours!("t.", "x.w"),
    );
    let mut found: HashMap<String, sqlx::any::AnyRow> = HashMap::new();
    for row in
        sqlx::query(AssertSqlSafe(sql)).bind(rows).fetch_all(&mut **tx).await.map_err(query_err("link_issue read"))?
    {
        found.insert(row.try_get::<String, _>("user_id").map_err(query_err("link_issue read"))?, row);
    }

    let mut out: Vec<Option<LinkIssue>> = Vec::with_capacity(writes.len());
    let mut eligible: Vec<&IssueArgs> = Vec::new();
    for w in writes {
        let c = &w.claim;
        let row = found
            .get(c.user_id.as_str())
            .ok_or_else(|| StoreError::NotFound { what: "user", key: c.user_id.to_string() })?;
        if row.try_get::<Option<i64>, _>("mine").map_err(query_err("link_issue fence"))?.is_none() {
            out.push(Some(LinkIssue::LostClaim));
            continue;
        }
        let verdict = policy::standing_verdict(&standing_from_row(row)?, w.now);
        let decided = match verdict {
            Verdict::Skip(reason) => Some(LinkIssue::Skipped(reason)),
            Verdict::Defer { reason, until } => Some(LinkIssue::Deferred { reason, until }),
            Verdict::Eligible => None,
        };
        if decided.is_some() {
            c.hold_back(tx, verdict, w.now).await?;
        } else {
            eligible.push(w);
        }
        out.push(decided);
    }

    let new: Vec<LinkNew<'_>> = eligible
        .iter()
        .map(|w| LinkNew {
            token_hash: &w.token_hash,
            campaign_id: w.claim.campaign_id,
            user_id: w.claim.user_id.as_str(),
            step: w.step,
            now: w.now,
            expires_at: w.expires_at,
            fresh_state_max_age: w.fresh_state_max_age,
        })
        .collect();
    let ids = links_insert_in_tx(backend, &new, tx).await?;
    out.into_iter()
        .zip(writes)
        .map(|(decided, w)| match decided {
            Some(r) => Ok(r),
            None => ids
                .get(w.claim.user_id.as_str())
                .map(|link_id| LinkIssue::Issued { link_id: *link_id })
                .ok_or_else(|| StoreError::Conflict(format!("no link came back for user {}", w.claim.user_id))),
        })
        .collect()
}

/// [`Store::link_record_delivery`]'s write: a group's deliveries in three statements
/// (the links, the targets still claimed by their worker, the audit events); a
/// failed or unknown delivery settles its target on its own.
struct LinkDelivery {
    backend: Backend,
    claim: Claim,
    now: DateTime<Utc>,
    link_id: i64,
    record: DeliveryRecord,
    sent: DeliveryOutcome,
}

impl BatchWrite for LinkDelivery {
    /// Whether the target was still this worker's claim.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(record_many(writes, tx))
    }
}

async fn record_many(writes: &[&LinkDelivery], tx: &mut Tx) -> Result<Vec<bool>, StoreError> {
    let Some(backend) = writes.first().map(|w| w.backend) else { return Ok(Vec::new()) };
    // the link reached (or may have reached) the user
    let sent: Vec<(i64, DateTime<Utc>)> =
        writes.iter().filter(|w| w.record != DeliveryRecord::Failed).map(|w| (w.link_id, w.now)).collect();
    links_delivered_in_tx(backend, &sent, tx).await?;
    let delivered: Vec<&&LinkDelivery> = writes.iter().filter(|w| w.record == DeliveryRecord::Delivered).collect();
    let notified: Vec<(&Claim, DateTime<Utc>)> = delivered.iter().map(|w| (&w.claim, w.now)).collect();
    let kept: HashSet<String> = targets_notified_by_link_in_tx(backend, &notified, tx).await?;
    let details: Vec<(&LinkDelivery, String)> = delivered
        .iter()
        .filter(|w| kept.contains(w.claim.user_id.as_str()))
        .map(|w| (**w, w.sent.detail(serde_json::json!({ "link_id": w.link_id, "link": "click" })).to_string()))
        .collect();
    let events: Vec<NewEventRow<'_>> = details
        .iter()
        .map(|(w, detail)| NewEventRow {
            at: w.now,
            actor: &w.claim.worker,
            kind: "target.notified",
            campaign_id: w.claim.campaign_id,
            user_id: w.claim.user_id.as_str(),
            detail,
        })
        .collect();
    events_insert_many_in_tx(backend, &events, tx).await?;
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w.record.recorded().2 {
            None => kept.contains(w.claim.user_id.as_str()),
            Some(reason) => w.claim.settle(tx, Transition::fail(reason), w.now).await?,
        });
    }
    Ok(out)
}
