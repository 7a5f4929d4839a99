//! Click-through links (`delivery.link = "click"`): one row per message that carries
//! a link to our own public page, `{public_url}/v/{token}`, instead of a Baanx
//! session URL.
//!
//! The token is at least 128 random bits and is stored only as its SHA-256
//! (`token_hash`): the database never holds what would let someone open the link.
//! A link is bound to one (campaign, user, step), works until `expires_at`
//! (`delivery.link_ttl`), and is revoked (`revoked_at`, `revoked_reason`) when the
//! user becomes VERIFIED or the campaign is cancelled. Sending a link makes no
//! Baanx call and takes no session: the session is made when the person clicks
//! (`crate::click`), reserved in the same ledger under every limit.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;

use std::collections::{HashMap, HashSet};

use sqlx::AssertSqlSafe;

use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows};
use super::sessions::{
    DeliveryOutcome, DeliveryRecord, FreshState, STANDING_COLUMNS, SettleArgs, record_fresh_states_of,
    standing_from_row,
};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SkipReason, Verdict};
use crate::domain::{UserId, VerificationState};

/// How long after a click that made a session another click of the same link is
/// told "the first is on its way" instead of making a second session.
pub const CLICK_DEBOUNCE_MS: i64 = 30_000;

/// A new link token: 32 random bytes (256 bits), URL-safe base64 without padding.
pub fn new_link_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a link token.
pub fn link_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What [`Store::link_issue`] records.
#[derive(Debug, Clone)]
pub struct LinkIssueParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    /// The worker that must still hold the target's claim.
    pub worker: &'a str,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The hash of the new token ([`link_token_hash`]).
    pub token_hash: &'a str,
    /// The state `GET /v1/user` just reported, when the campaign asks for one.
    pub fresh: Option<VerificationState>,
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

/// A link as the click endpoint finds it by its token.
#[derive(Debug, Clone)]
pub struct LinkRow {
    pub link_id: i64,
    pub campaign_id: i64,
    pub user_id: String,
    pub step: i64,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub region: String,
    pub locale: Option<String>,
    pub timezone: Option<String>,
}

/// What a click's first write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickStart {
    /// Go on and make a session.
    Go,
    /// Another click of this link is making (or made) a session at that instant,
    /// less than [`CLICK_DEBOUNCE_MS`] ago.
    OnItsWay { since: DateTime<Utc> },
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
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            step: p.step,
            worker: p.worker.to_owned(),
            now: p.now,
            expires_at: p.expires_at,
            token_hash: p.token_hash.to_owned(),
            fresh: p.fresh,
        })
        .await
    }

    /// The message carrying link `link_id` was delivered, refused, or may have been
    /// delivered: records the link and the target (still `worker`'s claim) in one
    /// transaction, as [`Store::session_record_delivery`] does for a session.
    /// Returns whether the claim still held. The target has no session yet
    /// (`session_expires_at` stays empty until a click makes one), so a reminder
    /// waits only for `reminders.after`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_record_delivery(
        &self,
        campaign_id: i64,
        user_id: &str,
        link_id: i64,
        outcome: impl Into<DeliveryOutcome>,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let outcome = outcome.into();
        self.write_batched(LinkDelivery {
            backend: self.backend(),
            campaign_id,
            user_id: user_id.to_owned(),
            link_id,
            record: outcome.record,
            sent: outcome,
            worker: worker.to_owned(),
            now,
        })
        .await
    }

    /// The link whose token hashes to `token_hash`, with what the click page needs
    /// of its user.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_find(&self, token_hash: &str) -> Result<Option<LinkRow>, StoreError> {
        let row = sqlx::query(
            "SELECT l.link_id, l.campaign_id, l.user_id, l.step, l.expires_at, l.revoked_at, \
               u.region, u.locale, u.timezone \
             FROM verification_links l JOIN users u ON u.user_id = l.user_id WHERE l.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err("link_find"))?;
        let Some(r) = row else { return Ok(None) };
        let get = |e| query_err("link_find")(e);
        Ok(Some(LinkRow {
            link_id: r.try_get("link_id").map_err(get)?,
            campaign_id: r.try_get("campaign_id").map_err(get)?,
            user_id: r.try_get("user_id").map_err(get)?,
            step: r.try_get("step").map_err(get)?,
            expires_at: from_millis(r.try_get("expires_at").map_err(get)?),
            revoked: r.try_get::<Option<i64>, _>("revoked_at").map_err(get)?.is_some(),
            region: r.try_get("region").map_err(get)?,
            locale: r.try_get("locale").map_err(get)?,
            timezone: r.try_get("timezone").map_err(get)?,
        }))
    }

    /// A submitted click of link `link_id`: counts it, marks the target `clicked`
    /// (first time) with an audit event, and takes the link's right to make a
    /// session unless another click took it less than [`CLICK_DEBOUNCE_MS`] ago.
    /// One transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_click_start(
        &self,
        link: &LinkRow,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<ClickStart, StoreError> {
        let now_ms = to_millis(now);
        let mut tx = self.begin_write().await?;
        let took = sqlx::query(
            "UPDATE verification_links SET clicks = clicks + 1, last_click_at = $2, session_started_at = $2 \
             WHERE link_id = $1 AND (session_started_at IS NULL OR session_started_at <= $3)",
        )
        .bind(link.link_id)
        .bind(now_ms)
        .bind(now_ms - CLICK_DEBOUNCE_MS)
        .execute(&mut *tx)
        .await
        .map_err(query_err("link_click_start"))?
        .rows_affected()
            == 1;
        if !took {
            let since: Option<i64> = sqlx::query(
                "UPDATE verification_links SET clicks = clicks + 1, last_click_at = $2 WHERE link_id = $1 \
                 RETURNING session_started_at",
            )
            .bind(link.link_id)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get("session_started_at"))
            .map_err(query_err("link_click_start"))?;
            tx.commit().await.map_err(query_err("link_click_start commit"))?;
            return Ok(ClickStart::OnItsWay { since: from_millis(since.unwrap_or(now_ms)) });
        }
        let first = sqlx::query(
            "UPDATE campaign_targets SET clicks = clicks + 1, clicked_at = COALESCE(clicked_at, $3), updated_at = $3 \
             WHERE campaign_id = $1 AND user_id = $2 RETURNING clicks",
        )
        .bind(link.campaign_id)
        .bind(link.user_id.as_str())
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err("link_click_start target"))?;
        if first.is_some() {
            super::sessions::event_in_tx(
                &mut tx,
                now,
                actor,
                "target.clicked",
                Some(link.campaign_id),
                Some(&link.user_id),
                &serde_json::json!({ "link_id": link.link_id, "step": link.step }),
            )
            .await?;
        }
        tx.commit().await.map_err(query_err("link_click_start commit"))?;
        Ok(ClickStart::Go)
    }

    /// Gives a click's right to make a session back (it made none: the limits, the
    /// user's state, an API refusal), so that the next click may try at once.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_click_release(&self, link_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE verification_links SET session_started_at = NULL WHERE link_id = $1")
            .bind(link_id)
            .execute(self.pool())
            .await
            .map_err(query_err("link_click_release"))?;
        Ok(())
    }
}

/// [`Store::link_issue`]'s write. A group's issues are a few statements whatever
/// their number: the fresh states, the users' standings and claims, the new links;
/// a target the user's state holds back is settled on its own (rare).
struct IssueArgs {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    step: i64,
    worker: String,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    token_hash: String,
    fresh: Option<VerificationState>,
}

impl BatchWrite for IssueArgs {
    type Out = LinkIssue;

    /// A user's two campaigns never share a statement: the second sees the first's
    /// state.
    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<LinkIssue>> {
        Box::pin(issue_many(writes, tx))
    }
}

async fn issue_many(writes: &[&IssueArgs], tx: &mut Tx) -> Result<Vec<LinkIssue>, StoreError> {
    let Some(backend) = writes.first().map(|w| w.backend) else { return Ok(Vec::new()) };
    let fresh: Vec<FreshState<'_>> = writes
        .iter()
        .filter_map(|w| w.fresh.map(|state| FreshState { user_id: &w.user_id, now: w.now, state }))
        .collect();
    record_fresh_states_of(backend, &fresh, tx).await?;

    let rows = json_rows(writes.iter().map(|w| serde_json::json!([w.user_id, w.campaign_id, w.worker])));
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
        let row = found.get(&w.user_id).ok_or_else(|| StoreError::NotFound { what: "user", key: w.user_id.clone() })?;
        if row.try_get::<Option<i64>, _>("mine").map_err(query_err("link_issue fence"))?.is_none() {
            out.push(Some(LinkIssue::LostClaim));
            continue;
        }
        let settle = |status: &str, reason: &str, until: Option<DateTime<Utc>>| {
            SettleArgs::new(w.campaign_id, &w.user_id, &w.worker, status, reason, until, w.now)
        };
        out.push(match policy::standing_verdict(&standing_from_row(row)?, w.now) {
            Verdict::Skip(reason) => {
                settle("skipped", reason.as_str(), None).run(tx).await?;
                Some(LinkIssue::Skipped(reason))
            }
            Verdict::Defer { reason, until } => {
                settle("deferred", reason.as_str(), Some(until)).run(tx).await?;
                Some(LinkIssue::Deferred { reason, until })
            }
            Verdict::Eligible => {
                eligible.push(w);
                None
            }
        });
    }

    let mut ids: HashMap<String, i64> = HashMap::new();
    if !eligible.is_empty() {
        let rows = json_rows(eligible.iter().map(|w| {
            serde_json::json!([
                w.token_hash,
                w.campaign_id,
                w.user_id,
                w.step,
                to_millis(w.now),
                to_millis(w.expires_at)
            ])
        }));
        let from = json_args(
            backend,
            &[
                ("h", Arg::Text),
                ("c", Arg::Int),
                ("u", Arg::Text),
                ("step", Arg::Int),
                ("at", Arg::Int),
                ("exp", Arg::Int),
            ],
        );
        let sql = format!(
            "INSERT INTO verification_links (token_hash, campaign_id, user_id, step, created_at, expires_at) \
             SELECT x.h, x.c, x.u, x.step, x.at, x.exp FROM ({from}) AS x RETURNING link_id, user_id"
        );
        for row in sqlx::query(AssertSqlSafe(sql))
            .bind(rows)
            .fetch_all(&mut **tx)
            .await
            .map_err(query_err("link_issue insert"))?
        {
            let user: String = row.try_get("user_id").map_err(query_err("link_issue insert"))?;
            ids.insert(user, row.try_get("link_id").map_err(query_err("link_issue insert"))?);
        }
    }
    out.into_iter()
        .zip(writes)
        .map(|(decided, w)| match decided {
            Some(r) => Ok(r),
            None => ids
                .get(&w.user_id)
                .map(|link_id| LinkIssue::Issued { link_id: *link_id })
                .ok_or_else(|| StoreError::Conflict(format!("no link came back for user {}", w.user_id))),
        })
        .collect()
}

/// [`Store::link_record_delivery`]'s write: a group's deliveries in three statements
/// (the links, the targets still claimed by their worker, the audit events); a
/// failed or unknown delivery settles its target on its own.
struct LinkDelivery {
    backend: Backend,
    campaign_id: i64,
    user_id: String,
    link_id: i64,
    record: DeliveryRecord,
    sent: DeliveryOutcome,
    worker: String,
    now: DateTime<Utc>,
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
    let sent: Vec<&&LinkDelivery> = writes.iter().filter(|w| w.record != DeliveryRecord::Failed).collect();
    if !sent.is_empty() {
        let rows = json_rows(sent.iter().map(|w| serde_json::json!([w.link_id, to_millis(w.now)])));
        let from = json_args(backend, &[("l", Arg::Int), ("at", Arg::Int)]);
        let sql = format!(
            "UPDATE verification_links SET delivered_at = x.at FROM ({from}) AS x \
             WHERE verification_links.link_id = x.l"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(rows)
            .execute(&mut **tx)
            .await
            .map_err(query_err("link_record_delivery"))?;
    }
    let delivered: Vec<&&LinkDelivery> = writes.iter().filter(|w| w.record == DeliveryRecord::Delivered).collect();
    let mut kept: HashSet<String> = HashSet::new();
    if !delivered.is_empty() {
        let rows = json_rows(
            delivered.iter().map(|w| serde_json::json!([w.campaign_id, w.user_id, w.worker, to_millis(w.now)])),
        );
        let from = json_args(backend, &[("c", Arg::Int), ("u", Arg::Text), ("w", Arg::Text), ("at", Arg::Int)]);
        // no session yet: `session_expires_at` stays empty until a click makes one,
        // so that a reminder waits only for `reminders.after`
        let sql = format!(
            "UPDATE campaign_targets SET status = 'notified', reason = NULL, \
               notifications = notifications + 1, notified_at = x.at, \
               first_notified_at = COALESCE(first_notified_at, x.at), lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = x.at, session_expires_at = NULL \
             FROM ({from}) AS x WHERE campaign_targets.campaign_id = x.c AND campaign_targets.user_id = x.u \
               AND {ours} RETURNING campaign_targets.user_id",
            ours = ours!("campaign_targets.", "x.w"),
        );
        kept = super::sessions::returned_user_ids(
            sqlx::query(AssertSqlSafe(sql)).bind(rows),
            tx,
            "link_record_delivery target",
        )
        .await?;
        let events: Vec<&&&LinkDelivery> = delivered.iter().filter(|w| kept.contains(&w.user_id)).collect();
        if !events.is_empty() {
            let rows = json_rows(events.iter().map(|w| {
                let detail = w.sent.detail(serde_json::json!({ "link_id": w.link_id, "link": "click" }));
                serde_json::json!([to_millis(w.now), w.worker, w.campaign_id, w.user_id, detail])
            }));
            let from = json_args(
                backend,
                &[("at", Arg::Int), ("w", Arg::Text), ("c", Arg::Int), ("u", Arg::Text), ("d", Arg::Text)],
            );
            let sql = format!(
                "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                 SELECT x.at, x.w, 'target.notified', x.c, x.u, x.d FROM ({from}) AS x ORDER BY x.n"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(rows)
                .execute(&mut **tx)
                .await
                .map_err(query_err("link_record_delivery event"))?;
        }
    }
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w.record {
            DeliveryRecord::Delivered => kept.contains(&w.user_id),
            DeliveryRecord::Failed | DeliveryRecord::Unknown => {
                let reason = if w.record == DeliveryRecord::Unknown { "delivery_unknown" } else { "delivery_failed" };
                SettleArgs::new(w.campaign_id, &w.user_id, &w.worker, "failed", reason, None, w.now).run(tx).await?
            }
        });
    }
    Ok(out)
}

/// Revokes every live link of a user inside a transaction (the user became VERIFIED).
pub(crate) async fn links_revoke_user_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    sqlx::query(
        "UPDATE verification_links SET revoked_at = $2, revoked_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(to_millis(now))
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map(|d| d.rows_affected())
    .map_err(query_err("links_revoke_user"))
}

/// Parses a link user's id (the rows hold valid ids; a bad one is a conflict).
pub fn link_user(row: &LinkRow) -> Result<UserId, StoreError> {
    UserId::parse(&row.user_id).map_err(|e| StoreError::Conflict(e.to_string()))
}
