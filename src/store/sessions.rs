//! The session ledger: one row per verification session the worker asked for,
//! written (`reserved`) *before* the API call, in the same transaction that checks
//! every per-user limit. A crash can only leave a row that counts against the
//! limits without a session behind it, never a session the ledger does not know.
//!
//! Row states: `reserved` → `issued` (the API answered with a URL, held in memory
//! only) → `delivered` | `delivery_failed`; `api_failed` (the API definitely
//! refused: it does not count); `unknown` (a crash, an unclear API failure or an
//! ambiguous delivery left the outcome unknown: it counts). The URL itself is never
//! stored.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{NewEvent, event_insert};
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SessionSlot, SkipReason, UserStanding, Verdict};
use crate::domain::{UserId, VerificationState};

/// How long the ledger counts a session: the API's session lifetime, plus a margin
/// for clock skew with the API (`session_expiry_margin`). The daily cap counts a
/// session from the API's answer plus the margin (`counted_at`), and the
/// concurrency limit until the answer plus the lifetime plus the margin, so that a
/// deferral never comes due before the API frees the slot. Until the API answers,
/// the reservation's own time stands in for the answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLife {
    pub ttl: Duration,
    pub margin: Duration,
}

impl From<Duration> for SessionLife {
    /// A lifetime with no margin.
    fn from(ttl: Duration) -> Self {
        Self { ttl, margin: Duration::ZERO }
    }
}

impl SessionLife {
    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// (counted_at, expires_at) of a session the API answered (or may have) at `at`.
    fn counted_and_expiry(&self, at_ms: i64) -> (i64, i64) {
        let margin = Self::millis(self.margin);
        (at_ms.saturating_add(margin), at_ms.saturating_add(Self::millis(self.ttl)).saturating_add(margin))
    }
}

/// What [`Store::session_mark_issued`] records.
#[derive(Debug, Clone)]
pub struct IssuedParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    /// The worker that must still hold the target's claim.
    pub worker: &'a str,
    pub session_id: i64,
    /// When the API answered.
    pub now: DateTime<Utc>,
    pub life: SessionLife,
}

/// What [`Store::session_record_api_failure`] records.
#[derive(Debug, Clone)]
pub struct ApiFailureParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub session_id: i64,
    /// The API surely created no session (a 4xx answer).
    pub definite: bool,
    pub worker: &'a str,
    pub target_status: &'a str,
    pub reason: &'a str,
    pub not_before: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub life: SessionLife,
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
    /// The state `GET /v1/user` just reported.
    pub fresh: Option<VerificationState>,
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

/// What reserving a session for a claimed target came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// A ledger row is reserved: call the API now.
    Reserved { session_id: i64 },
    /// A limit or cooldown holds; the target is deferred until then.
    Deferred { reason: DeferReason, until: DateTime<Utc> },
    /// The user is not to be sent a session (the target is skipped).
    Skipped(SkipReason),
    /// An earlier attempt fetched a session and may have delivered it before the
    /// worker died; to never notify twice the target is failed `delivery_unknown`.
    Ambiguous,
    /// The claim was lost (the lease expired and another worker took it).
    LostClaim,
}

/// How a delivery ended, as [`Store::session_record_delivery`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryRecord {
    /// The channel accepted the message: the ledger row `delivered`, the target
    /// `notified`.
    Delivered,
    /// It was not delivered (refused, or the channel stayed down): the row
    /// `delivery_failed`, the target `failed` / `delivery_failed`, which a later run
    /// re-queues.
    Failed,
    /// It may have been delivered (an SMTP connection lost after the message data):
    /// the row `unknown` (it keeps counting), the target `failed` /
    /// `delivery_unknown`, which no later run re-queues on its own.
    Unknown,
}

/// A delivery's outcome, and what the message was when known (see
/// [`crate::domain::MessageDigest`]): the latter goes into the audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub record: DeliveryRecord,
    pub sent: Option<crate::domain::MessageDigest>,
}

impl From<DeliveryRecord> for DeliveryOutcome {
    fn from(record: DeliveryRecord) -> Self {
        Self { record, sent: None }
    }
}

impl DeliveryOutcome {
    /// The audit event's detail: `base`, plus the template and message hashes.
    pub(crate) fn detail(&self, mut base: serde_json::Value) -> String {
        if let Some(d) = &self.sent {
            base["template"] = d.template.clone().into();
            base["template_sha256"] = d.template_sha256.clone().into();
            base["message_sha256"] = d.message_sha256.clone().into();
        }
        base.to_string()
    }
}

impl DeliveryRecord {
    /// (ledger row status, audit event kind, target reason).
    fn recorded(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            DeliveryRecord::Delivered => ("delivered", "target.notified", None),
            DeliveryRecord::Failed => ("delivery_failed", "target.failed", Some("delivery_failed")),
            DeliveryRecord::Unknown => ("unknown", "target.failed", Some("delivery_unknown")),
        }
    }
}

/// Appends an audit event inside a transaction (see [`super::events::event_insert`]).
pub(crate) async fn event_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    at: DateTime<Utc>,
    actor: &str,
    kind: &str,
    campaign_id: Option<i64>,
    user_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    let user_id = user_id.and_then(|u| UserId::parse(u).ok());
    let event = NewEvent { actor, kind, campaign_id, user_id: user_id.as_ref(), detail: Some(detail.clone()) };
    event_insert(tx, &event, at).await.map(|_| ())
}

/// What an earlier, interrupted attempt at this step left behind: every `reserved`,
/// `issued` or `delivered` row becomes `unknown` (it keeps counting). When one had
/// been issued or delivered, a message may have reached the user: the target is
/// failed `delivery_unknown` and `true` is returned.
async fn settle_earlier_attempts(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    campaign_id: i64,
    user_id: &str,
    step: i64,
    worker: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now_ms = to_millis(now);
    let earlier = sqlx::query(
        "SELECT session_id, status FROM verification_sessions \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status IN ('reserved', 'issued', 'delivered')",
    )
    .bind(campaign_id)
    .bind(user_id)
    .bind(step)
    .fetch_all(&mut **tx)
    .await
    .map_err(query_err("session_reserve earlier"))?;
    let mut ambiguous = false;
    for row in &earlier {
        let status: String = row.try_get("status").map_err(query_err("session_reserve earlier"))?;
        let id: i64 = row.try_get("session_id").map_err(query_err("session_reserve earlier"))?;
        // A reserved row never reached a message: the session may exist, so it
        // keeps counting, as `unknown`. An issued or delivered one may have
        // reached the user.
        if status != "reserved" {
            ambiguous = true;
        }
        sqlx::query("UPDATE verification_sessions SET status = 'unknown', updated_at = $2 WHERE session_id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(query_err("session_reserve mark unknown"))?;
    }
    if ambiguous {
        settle_in_tx(tx, campaign_id, user_id, worker, "failed", "delivery_unknown", None, now).await?;
    }
    Ok(ambiguous)
}

impl Store {
    /// Reserves a session for a target `worker` has claimed, if every per-user limit
    /// allows it now; otherwise settles the target as deferred or skipped. One
    /// transaction; on Postgres the user's row is locked so that two campaigns
    /// reserving for one user at once are serialised.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn session_reserve(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
        life: impl Into<SessionLife>,
    ) -> Result<Reservation, StoreError> {
        self.session_reserve_fresh(campaign_id, user_id, step, worker, now, life, None).await
    }

    /// [`Store::session_reserve`], after recording in the same transaction the state
    /// `GET /v1/user` just reported (as [`Store::user_apply_state`] does for `users sync`), so
    /// that the reservation is judged on it. One write where there were two: nothing
    /// outside happens between them.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn session_reserve_fresh(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
        life: impl Into<SessionLife>,
        fresh: Option<VerificationState>,
    ) -> Result<Reservation, StoreError> {
        let args = ReserveArgs {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            step,
            worker: worker.to_owned(),
            now,
            life: life.into(),
            fresh,
        };
        self.write_batched(args).await
    }

    /// Settles a claimed target whose earlier attempt at this step may have reached
    /// the user (a ledger row `issued` or `delivered`: the worker died before it
    /// recorded the outcome) as failed `delivery_unknown`, before any API call is
    /// made for it. Returns `true` when it did. Without this, a later failure of the
    /// fresh-state call (a refresh token lost to a crash mid-rotation, a 403) would
    /// record `skipped`/`failed` with that reason for a user who was sent a message.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_settle_if_ambiguous(
        &self,
        campaign_id: i64,
        user_id: &str,
        step: i64,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // the common case (a first attempt) is one indexed read, no write lock
        let any = sqlx::query(
            "SELECT session_id FROM verification_sessions \
             WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status IN ('issued', 'delivered') LIMIT 1",
        )
        .bind(campaign_id)
        .bind(user_id)
        .bind(step)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err("session_settle_if_ambiguous"))?;
        if any.is_none() {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        let mine = sqlx::query(concat!("SELECT attempts FROM campaign_targets WHERE ", our_target!()))
            .bind(campaign_id)
            .bind(user_id)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("session_settle_if_ambiguous fence"))?;
        if mine.is_none() {
            return Ok(false);
        }
        let settled = settle_earlier_attempts(&mut tx, campaign_id, user_id, step, worker, now).await?;
        tx.commit().await.map_err(query_err("session_settle_if_ambiguous commit"))?;
        Ok(settled)
    }

    /// The API answered with a session: from here a message may reach the user, so
    /// the target must still be this worker's claim. Returns `false` when it is not
    /// (the lease ran out during a stall and another worker took the target over):
    /// the row is then recorded `orphaned` (it keeps counting) and the caller drops
    /// the URL unsent. Either way the session counts from the API's answer.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_mark_issued(&self, p: IssuedParams<'_>) -> Result<bool, StoreError> {
        let (counted_at, expires_at) = p.life.counted_and_expiry(to_millis(p.now));
        self.write_batched(MarkIssued {
            backend: self.backend(),
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            worker: p.worker.to_owned(),
            session_id: p.session_id,
            now_ms: to_millis(p.now),
            counted_at,
            expires_at,
        })
        .await
    }

    /// The API call failed. `definite` means the API surely created no session (a
    /// 4xx answer): the row stops counting. Otherwise it is `unknown` and keeps
    /// counting, as a session the API may have made as late as now. The target is
    /// settled as given.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_api_failure(&self, p: ApiFailureParams<'_>) -> Result<bool, StoreError> {
        struct Args {
            session_id: i64,
            definite: bool,
            counted_at: i64,
            expires_at: i64,
            settle: SettleArgs,
        }
        fn record<'a>(a: &'a Args, tx: &'a mut Tx) -> Step<'a, bool> {
            Box::pin(async move {
                let sql = if a.definite {
                    "UPDATE verification_sessions SET status = 'api_failed', updated_at = $2 WHERE session_id = $1"
                } else {
                    "UPDATE verification_sessions SET status = 'unknown', updated_at = $2, \
                       counted_at = CASE WHEN counted_at > $3 THEN counted_at ELSE $3 END, \
                       expires_at = CASE WHEN expires_at > $4 THEN expires_at ELSE $4 END \
                     WHERE session_id = $1"
                };
                let q = sqlx::query(sql).bind(a.session_id).bind(to_millis(a.settle.now));
                let q = if a.definite { q } else { q.bind(a.counted_at).bind(a.expires_at) };
                q.execute(&mut **tx).await.map_err(query_err("session_record_api_failure"))?;
                a.settle.run(tx).await
            })
        }
        let (counted_at, expires_at) = p.life.counted_and_expiry(to_millis(p.now));
        let settle =
            SettleArgs::new(p.campaign_id, p.user_id, p.worker, p.target_status, p.reason, p.not_before, p.now);
        self.write(Args { session_id: p.session_id, definite: p.definite, counted_at, expires_at, settle }, record)
            .await
    }

    /// How the message's delivery ended (see [`DeliveryRecord`]): records the ledger
    /// row, the target (its claim released) and an audit event in one transaction.
    /// Delivered targets become `notified`; an undelivered one `failed` /
    /// `delivery_failed`, re-queued by a later run; one that may have arrived `failed` /
    /// `delivery_unknown`, not re-queued. Returns whether the target was still
    /// `worker`'s claim (and so was settled).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_delivery(
        &self,
        campaign_id: i64,
        user_id: &str,
        session_id: i64,
        outcome: impl Into<DeliveryOutcome>,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let outcome = outcome.into();
        let args = DeliveryArgs {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            session_id,
            record: outcome.record,
            sent: outcome,
            worker: worker.to_owned(),
            now,
        };
        self.write_batched(args).await
    }

    /// Sessions the ledger counts for a campaign (everything but definite API refusals).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_count(&self, campaign_id: i64) -> Result<i64, StoreError> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM verification_sessions WHERE campaign_id = $1 AND status <> 'api_failed' \
             AND status <> 'reserved'",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(query_err("session_count"))
    }
}

impl Store {
    /// Reserves a session for a person who clicked a link, under every per-user
    /// limit, in one transaction: the fresh state is recorded, the user's row locked,
    /// and the sessions read after the lock (see [`read_standings`]), so that a click
    /// and a run (or two clicks) reserving for one user at once are serialised. The
    /// row carries the link.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user, [`StoreError::Query`].
    pub async fn session_reserve_click(&self, p: ClickReserveParams<'_>) -> Result<ClickReservation, StoreError> {
        let backend = self.backend();
        let mut tx = self.begin_write().await?;
        if let Some(state) = p.fresh {
            let source = super::outcomes::StateSource::fresh_state("click");
            super::outcomes::apply_state_fast_or_in_tx(&mut tx, backend, p.user_id, state, p.now, &source).await?;
        }
        if backend == Backend::Postgres {
            sqlx::query("SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE")
                .bind(p.user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err("session_reserve_click lock"))?;
        }
        let now_ms = to_millis(p.now);
        let window_start = now_ms - policy::session_window().num_milliseconds();
        let sql = format!(
            "SELECT {STANDING_COLUMNS}, {slots} AS slots FROM users u WHERE u.user_id = $1",
            slots = counted_sessions_sql(backend, "$2", "$3"),
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(p.user_id)
            .bind(window_start)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("session_reserve_click read"))?
            .ok_or_else(|| StoreError::NotFound { what: "user", key: p.user_id.to_owned() })?;
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve_click read"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;
        let out = match policy::evaluate(&standing_from_row(&row)?, &slots, p.now) {
            Verdict::Skip(reason) => ClickReservation::Skipped(reason),
            Verdict::Defer { reason, until } => ClickReservation::Deferred { reason, until },
            Verdict::Eligible => {
                let (counted_at, expires_at) = p.life.counted_and_expiry(now_ms);
                let session_id: i64 = sqlx::query(
                    "INSERT INTO verification_sessions (user_id, campaign_id, step, status, reserved_at, expires_at, \
                       updated_at, counted_at, link_id) VALUES ($1, $2, $3, 'reserved', $4, $5, $4, $6, $7) \
                     RETURNING session_id",
                )
                .bind(p.user_id)
                .bind(p.campaign_id)
                .bind(p.step)
                .bind(now_ms)
                .bind(expires_at)
                .bind(counted_at)
                .bind(p.link_id)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get("session_id"))
                .map_err(query_err("session_reserve_click insert"))?;
                ClickReservation::Reserved { session_id }
            }
        };
        tx.commit().await.map_err(query_err("session_reserve_click commit"))?;
        Ok(out)
    }

    /// How a click's session call ended: `delivered` (the person is sent to the URL
    /// at once; it counts from the answer plus the margin), `api_failed`, or
    /// `unknown` (counted, as a session made as late as now).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn session_record_click(
        &self,
        session_id: i64,
        outcome: ClickSession,
        now: DateTime<Utc>,
        life: SessionLife,
    ) -> Result<(), StoreError> {
        let now_ms = to_millis(now);
        let (counted_at, expires_at) = life.counted_and_expiry(now_ms);
        let (status, issued) = match outcome {
            ClickSession::Delivered => ("delivered", Some(now_ms)),
            ClickSession::Refused => ("api_failed", None),
            ClickSession::Unknown => ("unknown", None),
        };
        sqlx::query(
            "UPDATE verification_sessions SET status = $2, issued_at = $3, updated_at = $4, \
               counted_at = CASE WHEN $2 = 'api_failed' OR counted_at > $5 THEN counted_at ELSE $5 END, \
               expires_at = CASE WHEN $2 = 'api_failed' OR expires_at > $6 THEN expires_at ELSE $6 END \
             WHERE session_id = $1",
        )
        .bind(session_id)
        .bind(status)
        .bind(issued)
        .bind(now_ms)
        .bind(counted_at)
        .bind(expires_at)
        .execute(self.pool())
        .await
        .map_err(query_err("session_record_click"))?;
        if outcome == ClickSession::Delivered {
            // the target's session: a run syncs the user once it has expired, and a
            // reminder waits for it
            sqlx::query(
                "UPDATE campaign_targets SET session_expires_at = $2, sessions = sessions + 1 \
                 WHERE campaign_id = (SELECT campaign_id FROM verification_sessions WHERE session_id = $1) \
                   AND user_id = (SELECT user_id FROM verification_sessions WHERE session_id = $1)",
            )
            .bind(session_id)
            .bind(expires_at)
            .execute(self.pool())
            .await
            .map_err(query_err("session_record_click target"))?;
        }
        Ok(())
    }
}

/// The sessions of [`Store::session_reserve`]'s read: `counted_at:expires_at`
/// pairs of Unix milliseconds, comma-separated (empty: none).
fn parse_slots(text: &str) -> Result<Vec<SessionSlot>, StoreError> {
    let bad = || StoreError::Conflict(format!("session_reserve: unreadable session list {text:?}"));
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (r, e) = pair.split_once(':').ok_or_else(bad)?;
            let (r, e) = (r.trim().parse::<i64>().map_err(|_| bad())?, e.trim().parse::<i64>().map_err(|_| bad())?);
            Ok(SessionSlot { reserved_at: from_millis(r), expires_at: from_millis(e) })
        })
        .collect()
}

/// What [`Store::session_reserve_fresh`] writes with.
struct ReserveArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    step: i64,
    worker: String,
    now: DateTime<Utc>,
    life: SessionLife,
    fresh: Option<VerificationState>,
}

impl BatchWrite for ReserveArgs {
    type Out = Reservation;

    /// Two reservations for one user (two campaigns) never share a statement: the
    /// second must count the first's session.
    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Reservation>> {
        Box::pin(reserve_many(writes, tx))
    }
}

/// The reservations of a group (one per user), in four statements whatever their
/// number: the fresh states, the users' standings (locked on Postgres), the new
/// ledger rows, plus a statement for each target that is deferred or skipped.
async fn reserve_many(writes: &[&ReserveArgs], tx: &mut Tx) -> Result<Vec<Reservation>, StoreError> {
    let Some(backend) = writes.first().map(|w| w.backend) else { return Ok(Vec::new()) };
    record_fresh_states(backend, writes, tx).await?;
    let mut standing = read_standings(backend, writes, tx).await?;

    // decide each, in the order given
    let mut out: Vec<Option<Reservation>> = Vec::with_capacity(writes.len());
    let mut eligible: Vec<&ReserveArgs> = Vec::new();
    for w in writes {
        let row =
            standing.remove(&w.user_id).ok_or_else(|| StoreError::NotFound { what: "user", key: w.user_id.clone() })?;
        // fence: the target must still be ours
        let Some(attempts) = row.try_get::<Option<i64>, _>("mine").map_err(query_err("session_reserve fence"))? else {
            out.push(Some(Reservation::LostClaim));
            continue;
        };
        // What an earlier, interrupted attempt at this step left behind. A first
        // attempt has none (a released claim never got this far, and a re-queued
        // target's old rows are already final), so only a rescued claim looks. The
        // sessions read above stay right: the rows it settles turn `unknown`, which
        // still counts.
        if attempts > 1 && settle_earlier_attempts(tx, w.campaign_id, &w.user_id, w.step, &w.worker, w.now).await? {
            out.push(Some(Reservation::Ambiguous));
            continue;
        }
        let user_standing = standing_from_row(&row)?;
        let slots: Option<String> = row.try_get("slots").map_err(query_err("session_reserve ledger"))?;
        let slots = parse_slots(slots.as_deref().unwrap_or(""))?;
        let (campaign_id, user_id, worker, now) = (w.campaign_id, w.user_id.as_str(), w.worker.as_str(), w.now);
        out.push(match policy::evaluate(&user_standing, &slots, now) {
            Verdict::Eligible => {
                eligible.push(w);
                None
            }
            Verdict::Defer { reason, until } => {
                settle_in_tx(tx, campaign_id, user_id, worker, "deferred", reason.as_str(), Some(until), now).await?;
                Some(Reservation::Deferred { reason, until })
            }
            Verdict::Skip(reason) => {
                settle_in_tx(tx, campaign_id, user_id, worker, "skipped", reason.as_str(), None, now).await?;
                Some(Reservation::Skipped(reason))
            }
        });
    }

    let mut ids = insert_reservations(backend, &eligible, tx).await?;
    out.into_iter()
        .zip(writes)
        .map(|(decided, w)| match decided {
            Some(r) => Ok(r),
            None => ids
                .remove(&w.user_id)
                .map(|session_id| Reservation::Reserved { session_id })
                .ok_or_else(|| StoreError::Conflict(format!("no ledger row came back for user {}", w.user_id))),
        })
        .collect()
}

/// The fresh states of `writes` that carry one. An unchanged state only moves
/// `synced_at`, and for a user REJECTED as before the rejection time as a sync does
/// (no earlier than our latest session, a first-seen time when none is known: see
/// [`super::outcomes::rejected_at_seen_sql`]), in one statement for all; a change
/// goes the whole way of [`super::outcomes::apply_state_in_tx`], one user at a time
/// (rare: a user who verified or was rejected since the import).
async fn record_fresh_states(backend: Backend, writes: &[&ReserveArgs], tx: &mut Tx) -> Result<(), StoreError> {
    let fresh: Vec<FreshState<'_>> = writes
        .iter()
        .filter_map(|w| w.fresh.map(|state| FreshState { user_id: &w.user_id, now: w.now, state }))
        .collect();
    record_fresh_states_of(backend, &fresh, tx).await
}

/// A state `GET /v1/user` just reported, to be recorded in a batch.
pub(crate) struct FreshState<'a> {
    pub user_id: &'a str,
    pub now: DateTime<Utc>,
    pub state: VerificationState,
}

/// [`record_fresh_states`] for any batch of fresh states (the runs' reservations,
/// the click-through links' send step).
pub(crate) async fn record_fresh_states_of(
    backend: Backend,
    fresh: &[FreshState<'_>],
    tx: &mut Tx,
) -> Result<(), StoreError> {
    if fresh.is_empty() {
        return Ok(());
    }
    let rows = json_rows(fresh.iter().map(|f| serde_json::json!([f.user_id, to_millis(f.now), f.state.as_str()])));
    let from = json_args(backend, &[("u", Arg::Text), ("at", Arg::Int), ("st", Arg::Text)]);
    let sql = format!(
        "UPDATE users SET synced_at = x.at, \
           rejected_at = CASE WHEN x.st = 'REJECTED' THEN {rejected} ELSE users.rejected_at END \
         FROM ({from}) AS x \
         WHERE users.user_id = x.u AND users.verification_state = x.st RETURNING users.user_id",
        rejected = super::outcomes::rejected_at_seen_sql(backend, "users", None, "x.at")
    );
    let unchanged =
        returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "user_apply_state unchanged").await?;
    let source = super::outcomes::StateSource::fresh_state("engine");
    for f in fresh {
        if !unchanged.contains(f.user_id) {
            super::outcomes::apply_state_in_tx(tx, backend, f.user_id, f.state, f.now, &source).await?;
        }
    }
    Ok(())
}

/// The `user_id` column of the rows a statement returns.
pub(crate) async fn returned_user_ids(
    q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    tx: &mut Tx,
    op: &'static str,
) -> Result<HashSet<String>, StoreError> {
    q.fetch_all(&mut **tx)
        .await
        .map_err(query_err(op))?
        .iter()
        .map(|r| r.try_get::<String, _>("user_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err(op))
}

/// A user's standing, as [`standing_from_row`] reads it, from `users u`.
pub(crate) const STANDING_COLUMNS: &str =
    "u.verification_state, u.rejected_at, u.consecutive_failures, u.last_failure_at";

/// The sessions that count against the limits of user `u` at `now` (SQL values or
/// columns), with `window_start` = `now` - 24 h, as one `counted_at:expires_at,…`
/// column: the one definition of which ledger rows count (everything the API may
/// have made: not a definite refusal) for the runs' reservations and the clicks'.
fn counted_sessions_sql(backend: Backend, window_start: &str, now: &str) -> String {
    let concat = match backend {
        Backend::Postgres => "string_agg(s.counted_at || ':' || s.expires_at, ',')",
        Backend::Sqlite => "group_concat(s.counted_at || ':' || s.expires_at, ',')",
    };
    format!(
        "(SELECT {concat} FROM verification_sessions s WHERE s.user_id = u.user_id \
           AND s.status <> 'api_failed' AND (s.counted_at > {window_start} OR s.expires_at > {now}))"
    )
}

/// Each user's standing, our claim on the target and the user's sessions that
/// count, by user id. The users' rows are locked first, in a statement of their own
/// (on Postgres, in id order, so that two groups never wait on each other in a
/// circle), and only then read, in a later statement: under READ COMMITTED each
/// statement reads from a snapshot taken when it starts, so a read in the locking
/// statement itself would miss a reservation committed while it waited for the lock
/// (seen: a fourth concurrent session reached the API). SQLite's BEGIN IMMEDIATE
/// serialises writers already. The sessions come as "counted_at:expires_at,…".
async fn read_standings(
    backend: Backend,
    writes: &[&ReserveArgs],
    tx: &mut Tx,
) -> Result<HashMap<String, sqlx::any::AnyRow>, StoreError> {
    let rows = json_rows(writes.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let window_start = now_ms - policy::session_window().num_milliseconds();
        serde_json::json!([w.user_id, w.campaign_id, w.worker, window_start, now_ms])
    }));
    let from =
        json_args(backend, &[("u", Arg::Text), ("c", Arg::Int), ("w", Arg::Text), ("ws", Arg::Int), ("now", Arg::Int)]);
    if backend == Backend::Postgres {
        let lock = format!(
            "SELECT u.user_id FROM users u WHERE u.user_id IN (SELECT x.u FROM ({from}) AS x) \
             ORDER BY u.user_id FOR UPDATE"
        );
        sqlx::query(AssertSqlSafe(lock))
            .bind(rows.clone())
            .fetch_all(&mut **tx)
            .await
            .map_err(query_err("session_reserve lock"))?;
    }
    let sql = format!(
        "SELECT u.user_id, {STANDING_COLUMNS}, \
           (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = u.user_id \
              AND {ours}) AS mine, \
           {slots} AS slots \
         FROM ({from}) AS x JOIN users u ON u.user_id = x.u",
        ours = ours!("t.", "x.w"),
        slots = counted_sessions_sql(backend, "x.ws", "x.now"),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_reserve user"))?;
    rows.into_iter()
        .map(|r| Ok((r.try_get::<String, _>("user_id").map_err(query_err("session_reserve user"))?, r)))
        .collect()
}

/// The ledger rows of the eligible, `reserved`, in one statement; their ids by user.
async fn insert_reservations(
    backend: Backend,
    eligible: &[&ReserveArgs],
    tx: &mut Tx,
) -> Result<HashMap<String, i64>, StoreError> {
    if eligible.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = json_rows(eligible.iter().map(|w| {
        let now_ms = to_millis(w.now);
        let (counted, expires) = w.life.counted_and_expiry(now_ms);
        serde_json::json!([w.user_id, w.campaign_id, w.step, now_ms, expires, counted])
    }));
    let args = json_args(
        backend,
        &[("u", Arg::Text), ("c", Arg::Int), ("step", Arg::Int), ("at", Arg::Int), ("exp", Arg::Int), ("ca", Arg::Int)],
    );
    let sql = format!(
        "INSERT INTO verification_sessions \
           (user_id, campaign_id, step, status, reserved_at, expires_at, updated_at, counted_at) \
         SELECT x.u, x.c, x.step, 'reserved', x.at, x.exp, x.at, x.ca FROM ({args}) AS x RETURNING session_id, user_id"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_reserve insert"))?
        .iter()
        .map(|r| Ok((r.try_get::<String, _>("user_id")?, r.try_get::<i64, _>("session_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_err("session_reserve insert"))
}

/// [`Store::session_mark_issued`]: `reserved` → `issued` where the target is still
/// the worker's claim, for many sessions in one statement; the others → `orphaned`.
struct MarkIssued {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    worker: String,
    session_id: i64,
    now_ms: i64,
    counted_at: i64,
    expires_at: i64,
}

impl BatchWrite for MarkIssued {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let Some(first) = writes.first() else { return Ok(Vec::new()) };
            let rows = json_rows(writes.iter().map(|w| {
                serde_json::json!([
                    w.session_id,
                    w.now_ms,
                    w.campaign_id,
                    w.user_id,
                    w.worker,
                    w.counted_at,
                    w.expires_at
                ])
            }));
            let args = json_args(
                first.backend,
                &[
                    ("id", Arg::Int),
                    ("at", Arg::Int),
                    ("c", Arg::Int),
                    ("u", Arg::Text),
                    ("w", Arg::Text),
                    ("ca", Arg::Int),
                    ("exp", Arg::Int),
                ],
            );
            // The fence reads the target by its key; a takeover commits under the
            // target's row, so a claim seen here was ours when this group committed.
            let sql = format!(
                "UPDATE verification_sessions SET                    status = CASE WHEN verification_sessions.status = 'reserved' AND EXISTS (                        SELECT 1 FROM campaign_targets t WHERE t.campaign_id = x.c AND t.user_id = x.u AND {fence})                      THEN 'issued' ELSE 'orphaned' END,                    issued_at = x.at, updated_at = x.at, counted_at = x.ca,                    expires_at = CASE WHEN verification_sessions.expires_at > x.exp                      THEN verification_sessions.expires_at ELSE x.exp END                  FROM ({args}) AS x                  WHERE verification_sessions.session_id = x.id                    AND verification_sessions.status IN ('reserved', 'unknown')                  RETURNING verification_sessions.session_id, verification_sessions.status",
                fence = ours!("t.", "x.w"),
            );
            let issued: HashSet<i64> = sqlx::query(AssertSqlSafe(sql))
                .bind(rows)
                .fetch_all(&mut **tx)
                .await
                .map_err(query_err("session_mark_issued"))?
                .iter()
                .filter(|r| r.try_get::<String, _>("status").is_ok_and(|st| st == "issued"))
                .map(|r| r.try_get::<i64, _>("session_id"))
                .collect::<Result<_, _>>()
                .map_err(query_err("session_mark_issued"))?;
            Ok(writes.iter().map(|w| issued.contains(&w.session_id)).collect())
        })
    }
}

/// What [`Store::session_record_delivery`] writes with.
struct DeliveryArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    session_id: i64,
    record: DeliveryRecord,
    sent: DeliveryOutcome,
    worker: String,
    now: DateTime<Utc>,
}

impl DeliveryArgs {
    /// (ledger row status, audit event kind, target reason, event detail).
    fn recorded(&self) -> (&'static str, &'static str, Option<&'static str>, String) {
        let (session_status, event_kind, reason) = self.record.recorded();
        let detail = self.sent.detail(serde_json::json!({ "session_id": self.session_id, "reason": reason }));
        (session_status, event_kind, reason, detail)
    }
}

impl BatchWrite for DeliveryArgs {
    /// Whether the target was still this worker's claim (and so was settled).
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            match writes.first().map(|w| w.backend) {
                None => Ok(Vec::new()),
                Some(Backend::Postgres) => record_deliveries_pg(writes, tx).await,
                Some(Backend::Sqlite) => {
                    let mut kept = Vec::with_capacity(writes.len());
                    for w in writes {
                        kept.push(record_delivery_sqlite(w, tx).await?);
                    }
                    Ok(kept)
                }
            }
        })
    }
}

/// Every delivery of a group in one statement (data-modifying CTEs run as one):
/// the ledger rows, the targets still claimed by their worker, the audit events.
async fn record_deliveries_pg(writes: &[&DeliveryArgs], tx: &mut Tx) -> Result<Vec<bool>, StoreError> {
    let rows = json_rows(writes.iter().map(|w| {
        let (session_status, event_kind, reason, detail) = w.recorded();
        serde_json::json!([
            w.campaign_id,
            w.user_id,
            w.worker,
            to_millis(w.now),
            w.session_id,
            w.record == DeliveryRecord::Delivered,
            reason,
            session_status,
            event_kind,
            detail
        ])
    }));
    let target = delivery_target_update("x.ok", "x.why", "x.at", "s.expires_at");
    let sql = format!(
        "WITH x AS ({args}), \
              s AS (UPDATE verification_sessions s SET status = x.st, updated_at = x.at FROM x \
                    WHERE s.session_id = x.sid RETURNING s.session_id, s.expires_at), \
              t AS ({target} FROM x JOIN s ON s.session_id = x.sid \
                    WHERE t.campaign_id = x.c AND t.user_id = x.u AND {fence} \
                    RETURNING t.campaign_id, t.user_id), \
              e AS (INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                    SELECT x.at, x.w, x.kind, x.c, x.u, x.detail FROM x ORDER BY x.n) \
         SELECT x.n, EXISTS (SELECT 1 FROM t WHERE t.campaign_id = x.c AND t.user_id = x.u) AS kept \
         FROM x ORDER BY x.n",
        fence = ours!("t.", "x.w"),
        args = json_args(
            Backend::Postgres,
            &[
                ("c", Arg::Int),
                ("u", Arg::Text),
                ("w", Arg::Text),
                ("at", Arg::Int),
                ("sid", Arg::Int),
                ("ok", Arg::Bool),
                ("why", Arg::Text),
                ("st", Arg::Text),
                ("kind", Arg::Text),
                ("detail", Arg::Text),
            ]
        ),
    );
    let kept = sqlx::query(AssertSqlSafe(sql))
        .bind(rows)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery"))?
        .iter()
        .map(|r| r.try_get::<bool, _>("kept"))
        .collect::<Result<Vec<bool>, _>>()
        .map_err(query_err("session_record_delivery"))?;
    Ok(kept)
}

/// One delivery on SQLite: its statements one after another (SQLite runs them in
/// process, so a statement costs little of its own).
async fn record_delivery_sqlite(a: &DeliveryArgs, tx: &mut Tx) -> Result<bool, StoreError> {
    let DeliveryArgs { campaign_id, ref user_id, session_id, record, ref worker, now, .. } = *a;
    let (session_status, event_kind, reason, detail) = a.recorded();
    let now_ms = to_millis(now);
    sqlx::query("UPDATE verification_sessions SET status = $2, updated_at = $3 WHERE session_id = $1")
        .bind(session_id)
        .bind(session_status)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery"))?;
    let target = format!(
        "{} WHERE {}",
        delivery_target_update(
            "$6",
            "$7",
            "$4",
            "(SELECT expires_at FROM verification_sessions WHERE session_id = $5)"
        ),
        our_target!()
    );
    let n = sqlx::query(AssertSqlSafe(target))
        .bind(campaign_id)
        .bind(user_id.as_str())
        .bind(worker.as_str())
        .bind(now_ms)
        .bind(session_id)
        .bind(record == DeliveryRecord::Delivered)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery target"))?
        .rows_affected();
    sqlx::query("INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(now_ms)
        .bind(worker.as_str())
        .bind(event_kind)
        .bind(campaign_id)
        .bind(user_id.as_str())
        .bind(detail)
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery event"))?;
    Ok(n == 1)
}

/// The target's side of a recorded delivery, for both engines, as `UPDATE
/// campaign_targets t SET …` (the caller adds what it joins and the fence): when
/// `ok` (an SQL boolean) the target is `notified`, otherwise `failed` with the
/// reason `why` (`delivery_failed`, re-queued by a later run, or `delivery_unknown`,
/// not); either way the claim is released and the session's expiry is taken from
/// `expires_at`. `at` is the time.
fn delivery_target_update(ok: &str, why: &str, at: &str, expires_at: &str) -> String {
    format!(
        "UPDATE campaign_targets AS t SET \
           status = CASE WHEN {ok} THEN 'notified' ELSE 'failed' END, \
           reason = CASE WHEN {ok} THEN NULL ELSE {why} END, \
           notifications = notifications + CASE WHEN {ok} THEN 1 ELSE 0 END, \
           notified_at = CASE WHEN {ok} THEN {at} ELSE notified_at END, \
           first_notified_at = CASE WHEN {ok} THEN COALESCE(first_notified_at, {at}) ELSE first_notified_at END, \
           finalized_at = CASE WHEN {ok} THEN finalized_at ELSE {at} END, \
           lease_owner = NULL, lease_expires_at = NULL, sessions = sessions + 1, updated_at = {at}, \
           session_expires_at = {expires_at}"
    )
}

pub(crate) fn standing_from_row(r: &sqlx::any::AnyRow) -> Result<UserStanding, StoreError> {
    let state: String = r.try_get("verification_state").map_err(query_err("user standing"))?;
    let state = state.parse::<VerificationState>().map_err(|e| StoreError::Conflict(e.to_string()))?;
    let rejected_at: Option<i64> = r.try_get("rejected_at").map_err(query_err("user standing"))?;
    let failures: i64 = r.try_get("consecutive_failures").map_err(query_err("user standing"))?;
    let last_failure_at: Option<i64> = r.try_get("last_failure_at").map_err(query_err("user standing"))?;
    Ok(UserStanding {
        state,
        rejected_at: rejected_at.map(from_millis),
        consecutive_failures: u32::try_from(failures).unwrap_or(u32::MAX),
        last_failure_at: last_failure_at.map(from_millis),
    })
}

/// A target's settlement, owned, to be written in a group (see [`settle_in_tx`]).
pub(crate) struct SettleArgs {
    campaign_id: i64,
    user_id: String,
    worker: String,
    status: String,
    reason: String,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl SettleArgs {
    pub(crate) fn new(
        campaign_id: i64,
        user_id: &str,
        worker: &str,
        status: &str,
        reason: &str,
        not_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            campaign_id,
            user_id: user_id.to_owned(),
            worker: worker.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            not_before,
            now,
        }
    }

    pub(crate) async fn run(&self, tx: &mut Tx) -> Result<bool, StoreError> {
        let a = self;
        settle_in_tx(tx, a.campaign_id, &a.user_id, &a.worker, &a.status, &a.reason, a.not_before, a.now).await
    }

    /// As a write of its own (see [`Store::write`]).
    pub(crate) fn write<'a>(a: &'a SettleArgs, tx: &'a mut Tx) -> Step<'a, bool> {
        Box::pin(a.run(tx))
    }
}

/// [`Store::target_settle`] inside a transaction already open.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    campaign_id: i64,
    user_id: &str,
    worker: &str,
    status: &str,
    reason: &str,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now_ms = to_millis(now);
    let n = sqlx::query(concat!(
        "UPDATE campaign_targets SET status = $4, reason = $5, not_before = $6, lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = $7, \
           finalized_at = CASE WHEN $4 IN ('skipped', 'failed') THEN $7 ELSE NULL END, \
           attempts = CASE WHEN $5 = 'send_window' AND attempts > 0 THEN attempts - 1 ELSE attempts END \
         WHERE ",
        our_target!()
    ))
    .bind(campaign_id)
    .bind(user_id)
    .bind(worker)
    .bind(status)
    .bind(reason)
    .bind(not_before.map(to_millis))
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_settle"))?
    .rows_affected();
    if n == 1 {
        event_in_tx(
            tx,
            now,
            worker,
            &format!("target.{status}"),
            Some(campaign_id),
            Some(user_id),
            &serde_json::json!({ "reason": reason, "not_before": not_before }),
        )
        .await?;
    }
    Ok(n == 1)
}
