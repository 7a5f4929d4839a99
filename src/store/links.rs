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

use super::group::{Step, Tx};
use super::sessions::{DeliveryRecord, SettleArgs};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::policy::{self, DeferReason, SkipReason, UserStanding, Verdict};
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
        struct Args {
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
        fn issue<'a>(a: &'a Args, tx: &'a mut Tx) -> Step<'a, LinkIssue> {
            Box::pin(async move {
                if let Some(state) = a.fresh {
                    let source = super::outcomes::StateSource::fresh_state("engine");
                    super::outcomes::apply_state_in_tx(tx, a.backend, &a.user_id, state, a.now, &source).await?;
                }
                let lock = match a.backend {
                    Backend::Postgres => " FOR UPDATE OF u",
                    Backend::Sqlite => "",
                };
                let sql = format!(
                    "SELECT u.verification_state, u.rejected_at, u.consecutive_failures, u.last_failure_at, \
                       (SELECT t.attempts FROM campaign_targets t WHERE t.campaign_id = $2 AND t.user_id = u.user_id \
                          AND {ours}) AS mine \
                     FROM users u WHERE u.user_id = $1{lock}",
                    ours = ours!("t.", "$3"),
                );
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(a.user_id.as_str())
                    .bind(a.campaign_id)
                    .bind(a.worker.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(query_err("link_issue read"))?
                else {
                    return Err(StoreError::NotFound { what: "user", key: a.user_id.clone() });
                };
                if row.try_get::<Option<i64>, _>("mine").map_err(query_err("link_issue fence"))?.is_none() {
                    return Ok(LinkIssue::LostClaim);
                }
                let settle = |status: &str, reason: &str, until: Option<DateTime<Utc>>| {
                    SettleArgs::new(a.campaign_id, &a.user_id, &a.worker, status, reason, until, a.now)
                };
                match policy::standing_verdict(&standing(&row)?, a.now) {
                    Verdict::Skip(reason) => {
                        settle("skipped", reason.as_str(), None).run(tx).await?;
                        return Ok(LinkIssue::Skipped(reason));
                    }
                    Verdict::Defer { reason, until } => {
                        settle("deferred", reason.as_str(), Some(until)).run(tx).await?;
                        return Ok(LinkIssue::Deferred { reason, until });
                    }
                    Verdict::Eligible => {}
                }
                let link_id: i64 = sqlx::query(
                    "INSERT INTO verification_links (token_hash, campaign_id, user_id, step, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING link_id",
                )
                .bind(a.token_hash.as_str())
                .bind(a.campaign_id)
                .bind(a.user_id.as_str())
                .bind(a.step)
                .bind(to_millis(a.now))
                .bind(to_millis(a.expires_at))
                .fetch_one(&mut **tx)
                .await
                .and_then(|r| r.try_get("link_id"))
                .map_err(query_err("link_issue insert"))?;
                Ok(LinkIssue::Issued { link_id })
            })
        }
        let args = Args {
            backend: self.backend(),
            campaign_id: p.campaign_id,
            user_id: p.user_id.to_owned(),
            step: p.step,
            worker: p.worker.to_owned(),
            now: p.now,
            expires_at: p.expires_at,
            token_hash: p.token_hash.to_owned(),
            fresh: p.fresh,
        };
        self.write(args, issue).await
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
        record: DeliveryRecord,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        struct Args {
            link_id: i64,
            record: DeliveryRecord,
            settle: SettleArgs,
        }
        fn rec<'a>(a: &'a Args, tx: &'a mut Tx) -> Step<'a, bool> {
            Box::pin(async move {
                let now_ms = to_millis(a.settle.now());
                if a.record != DeliveryRecord::Failed {
                    sqlx::query("UPDATE verification_links SET delivered_at = $2 WHERE link_id = $1")
                        .bind(a.link_id)
                        .bind(now_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(query_err("link_record_delivery"))?;
                }
                match a.record {
                    DeliveryRecord::Delivered => {
                        let n = sqlx::query(concat!(
                            "UPDATE campaign_targets SET status = 'notified', reason = NULL, \
                               notifications = notifications + 1, notified_at = $4, \
                               first_notified_at = COALESCE(first_notified_at, $4), lease_owner = NULL, \
                               lease_expires_at = NULL, updated_at = $4, session_expires_at = NULL WHERE ",
                            our_target!()
                        ))
                        .bind(a.settle.campaign_id())
                        .bind(a.settle.user_id())
                        .bind(a.settle.worker())
                        .bind(now_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(query_err("link_record_delivery target"))?
                        .rows_affected();
                        if n == 1 {
                            super::sessions::event_in_tx(
                                tx,
                                a.settle.now(),
                                a.settle.worker(),
                                "target.notified",
                                Some(a.settle.campaign_id()),
                                Some(a.settle.user_id()),
                                &serde_json::json!({ "link_id": a.link_id, "link": "click" }),
                            )
                            .await?;
                        }
                        Ok(n == 1)
                    }
                    DeliveryRecord::Failed | DeliveryRecord::Unknown => a.settle.run(tx).await,
                }
            })
        }
        let reason = match record {
            DeliveryRecord::Unknown => "delivery_unknown",
            _ => "delivery_failed",
        };
        let settle = SettleArgs::new(campaign_id, user_id, worker, "failed", reason, None, now);
        self.write(Args { link_id, record, settle }, rec).await
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

fn standing(r: &sqlx::any::AnyRow) -> Result<UserStanding, StoreError> {
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

/// Parses a link user's id (the rows hold valid ids; a bad one is a conflict).
pub fn link_user(row: &LinkRow) -> Result<UserId, StoreError> {
    UserId::parse(&row.user_id).map_err(|e| StoreError::Conflict(e.to_string()))
}
