//! Bounces: what a bounce, a complaint or a soft failure does, in one transaction.
//!
//! This file owns the `bounces` table and composes the statements of the tables a
//! bounce moves (the user's address standing in `users`, the ledger row in
//! `verification_sessions`, the click link in `verification_links`, the target in
//! `campaign_targets`, the audit `events`), each statement in its owner's file.
//!
//! Decisions:
//! - A report counts once per (source, dedupe id): the same bounce delivered twice
//!   changes nothing the second time.
//! - A hard bounce, or the third soft one within [`SOFT_WINDOW`], makes the address
//!   undeliverable: the user is skipped by email until an import brings a different
//!   address (`users::UPSERT_ON_CONFLICT_HEAD`). The ledger row becomes `bounced` (it
//!   keeps counting: the session exists), a click link is revoked, and the target
//!   that was notified with that message becomes `failed` / `bounced`, or, when the
//!   campaign has a fallback channel, `pending` / `fallback` at the next step.
//! - A bounce that names an address other than the user's current one (an import
//!   brought a new address since) is recorded and changes nothing else.
//! - A complaint marks the user `complained` (`delivery.on_complaint` decides what a
//!   campaign does with that); an unknown report is recorded, never guessed as hard.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::events::{TxEvent, event_in_tx};
use super::group::Tx;
use super::links::link_revoke_bounced_in_tx;
use super::sessions::session_bounced_in_tx;
use super::targets::{TargetBounced, target_bounced_in_tx};
use super::users::{decode, user_complained_in_tx, user_undeliverable_in_tx};
use super::{Store, StoreError, query_err, to_millis};
use crate::domain::UserId;
use crate::domain::bounce::{BounceKind, BounceSource, MessageRef};

/// How far back soft bounces count towards a hard one, and how old a message an
/// address-only bounce (Postmark) may be about.
pub const SOFT_WINDOW: chrono::Duration = chrono::Duration::days(7);
/// Soft bounces within [`SOFT_WINDOW`] that count as one hard bounce.
pub const SOFTS_MAKE_HARD: i64 = 3;

/// The message a report is about, as the store found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceMatch {
    pub message: MessageRef,
    /// The user, parsed where the row is read: an id that does not parse is an error.
    pub user_id: UserId,
    /// The campaign that sent it (`None` for a session made outside a campaign).
    pub campaign_id: Option<i64>,
    pub step: i64,
    /// The user's address now.
    pub email: String,
}

/// What [`Store::bounce_record`] records.
#[derive(Debug, Clone)]
pub struct BounceParams<'a> {
    pub source: BounceSource,
    pub dedupe_id: &'a str,
    pub kind: BounceKind,
    pub matched: &'a BounceMatch,
    /// The address the report says failed, when it says one.
    pub reported_address: Option<&'a str>,
    pub status_code: Option<&'a str>,
    /// Already scrubbed of addresses (`domain::bounce::scrub_diagnostic`).
    pub diagnostic: Option<&'a str>,
    pub occurred_at: DateTime<Utc>,
    /// The campaign sends a bounced user through its fallback channel.
    pub fallback: bool,
    pub now: DateTime<Utc>,
}

/// What a report came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceOutcome {
    /// Recorded before: nothing changed.
    Duplicate,
    /// Recorded. `effective` is `Hard` for the soft bounce that made three.
    Recorded { effective: BounceKind, undeliverable: bool, fallback_queued: bool },
}

impl Store {
    /// The message a VERP token stands for, with its user and campaign.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn bounce_find_message(&self, message: MessageRef) -> Result<Option<BounceMatch>, StoreError> {
        let sql = match message {
            MessageRef::Session(_) => {
                "SELECT s.user_id, s.campaign_id, s.step, u.email FROM verification_sessions s \
                 JOIN users u ON u.user_id = s.user_id WHERE s.session_id = $1"
            }
            MessageRef::Link(_) => {
                "SELECT l.user_id, l.campaign_id, l.step, u.email FROM verification_links l \
                 JOIN users u ON u.user_id = l.user_id WHERE l.link_id = $1"
            }
        };
        let (MessageRef::Session(id) | MessageRef::Link(id)) = message;
        let row = sqlx::query(sql).bind(id).fetch_optional(self.pool()).await.map_err(query_err("bounce_find"))?;
        row.map(|r| {
            Ok(BounceMatch {
                message,
                user_id: UserId::parse(&r.try_get::<String, _>("user_id")?).map_err(decode)?,
                campaign_id: r.try_get("campaign_id")?,
                step: r.try_get("step")?,
                email: r.try_get("email")?,
            })
        })
        .transpose()
        .map_err(query_err("bounce_find row"))
    }

    /// The latest message delivered to `address` within [`SOFT_WINDOW`] of `now`: a
    /// ledger row or a click link, whichever is later. For reports that name only
    /// the address (Postmark).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn bounce_find_by_address(
        &self,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BounceMatch>, StoreError> {
        let since = to_millis(now - SOFT_WINDOW);
        let rows = sqlx::query(
            "SELECT * FROM ( \
               SELECT 's' AS kind, s.session_id AS id, s.user_id, s.campaign_id, s.step, u.email, \
                      s.updated_at AS at \
               FROM users u JOIN verification_sessions s ON s.user_id = u.user_id \
               WHERE lower(u.email) = lower($1) AND s.status IN ('delivered', 'bounced') AND s.updated_at >= $2 \
               UNION ALL \
               SELECT 'l' AS kind, l.link_id AS id, l.user_id, l.campaign_id, l.step, u.email, \
                      l.delivered_at AS at \
               FROM users u JOIN verification_links l ON l.user_id = u.user_id \
               WHERE lower(u.email) = lower($1) AND l.delivered_at IS NOT NULL AND l.delivered_at >= $2 \
             ) m ORDER BY at DESC LIMIT 1",
        )
        .bind(address.trim())
        .bind(since)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("bounce_find_by_address"))?;
        let Some(r) = rows.first() else { return Ok(None) };
        let kind: String = r.try_get("kind").map_err(query_err("bounce_find_by_address row"))?;
        let id: i64 = r.try_get("id").map_err(query_err("bounce_find_by_address row"))?;
        let message = if kind == "l" { MessageRef::Link(id) } else { MessageRef::Session(id) };
        Ok(Some(BounceMatch {
            message,
            user_id: UserId::parse(
                &r.try_get::<String, _>("user_id").map_err(query_err("bounce_find_by_address row"))?,
            )
            .map_err(|e| query_err("bounce_find_by_address row")(decode(e)))?,
            campaign_id: r.try_get("campaign_id").map_err(query_err("bounce_find_by_address row"))?,
            step: r.try_get("step").map_err(query_err("bounce_find_by_address row"))?,
            email: r.try_get("email").map_err(query_err("bounce_find_by_address row"))?,
        }))
    }

    /// Records one report about a matched message and applies what it does (see
    /// the module documentation), in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn bounce_record(&self, p: BounceParams<'_>) -> Result<BounceOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = bounce_record_in_tx(&mut tx, &p).await?;
        tx.commit().await.map_err(query_err("bounce_record commit"))?;
        Ok(outcome)
    }

    /// What `[halt] bounce_rate` judges: the campaign's targets whose message bounced
    /// for good, and those it ever sent a message to.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn bounce_rate_figures(&self, campaign_id: i64) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(bounced_at) AS bounced, COUNT(first_notified_at) AS sent FROM campaign_targets \
             WHERE campaign_id = $1",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .map_err(query_err("bounce_rate_figures"))?;
        let bounced: i64 = r.try_get("bounced").map_err(query_err("bounce_rate_figures row"))?;
        let sent: i64 = r.try_get("sent").map_err(query_err("bounce_rate_figures row"))?;
        Ok((bounced, sent))
    }

    /// A campaign's bounces by kind, each (source, dedupe id) once.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn bounce_counts(&self, campaign_id: i64) -> Result<Vec<(BounceKind, i64)>, StoreError> {
        let rows = sqlx::query("SELECT kind, COUNT(*) AS n FROM bounces WHERE campaign_id = $1 GROUP BY kind")
            .bind(campaign_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("bounce_counts"))?;
        let mut out = Vec::new();
        for r in &rows {
            let kind: String = r.try_get("kind").map_err(query_err("bounce_counts row"))?;
            let n: i64 = r.try_get("n").map_err(query_err("bounce_counts row"))?;
            if let Ok(k) = kind.parse() {
                out.push((k, n));
            }
        }
        Ok(out)
    }
}

async fn bounce_record_in_tx(tx: &mut Tx, p: &BounceParams<'_>) -> Result<BounceOutcome, StoreError> {
    let m = p.matched;
    let now_ms = to_millis(p.now);
    let (session_id, link_id) = match m.message {
        MessageRef::Session(id) => (Some(id), None),
        MessageRef::Link(id) => (None, Some(id)),
    };
    let inserted = sqlx::query(
        "INSERT INTO bounces (source, dedupe_id, kind, user_id, campaign_id, session_id, link_id, status_code, \
           diagnostic, occurred_at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (source, dedupe_id) DO NOTHING",
    )
    .bind(p.source.as_str())
    .bind(p.dedupe_id)
    .bind(p.kind.as_str())
    .bind(m.user_id.as_str())
    .bind(m.campaign_id)
    .bind(session_id)
    .bind(link_id)
    .bind(p.status_code)
    .bind(p.diagnostic)
    .bind(to_millis(p.occurred_at.min(p.now)))
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("bounce_record insert"))?
    .rows_affected();
    if inserted == 0 {
        return Ok(BounceOutcome::Duplicate);
    }
    let effective = match p.kind {
        BounceKind::Soft if soft_count_in_tx(tx, m.user_id.as_str(), p.now).await? >= SOFTS_MAKE_HARD => {
            BounceKind::Hard
        }
        k => k,
    };
    // an address replaced since the message was sent: the new one is not at fault
    let current = p.reported_address.is_none_or(|a| a.trim().eq_ignore_ascii_case(m.email.trim()));
    let mut detail = serde_json::json!({
        "source": p.source.as_str(),
        "kind": p.kind.as_str(),
        "effective": effective.as_str(),
        "status_code": p.status_code,
        "current_address": current,
    });
    let mut undeliverable = false;
    let mut fallback_queued = false;
    match effective {
        BounceKind::Hard if current => {
            let reason = reason_text(p.status_code, p.diagnostic, p.kind);
            undeliverable = user_undeliverable_in_tx(tx, m.user_id.as_str(), &reason, p.now).await?;
            match m.message {
                MessageRef::Session(id) => session_bounced_in_tx(tx, id, p.now).await?,
                MessageRef::Link(id) => link_revoke_bounced_in_tx(tx, id, p.now).await?,
            }
            if let Some(campaign_id) = m.campaign_id {
                let moved = target_bounced_in_tx(
                    tx,
                    TargetBounced {
                        campaign_id,
                        user_id: m.user_id.as_str(),
                        step: m.step,
                        diagnostic: &reason,
                        fallback: p.fallback,
                        now: p.now,
                    },
                )
                .await?;
                fallback_queued = moved && p.fallback;
                detail["target_moved"] = moved.into();
                detail["fallback"] = fallback_queued.into();
            }
        }
        BounceKind::Complaint if current => {
            user_complained_in_tx(tx, m.user_id.as_str(), p.now).await?;
        }
        _ => {}
    }
    let kind = match effective {
        BounceKind::Complaint => "message.complained",
        _ => "message.bounced",
    };
    event_in_tx(
        tx,
        p.now,
        &TxEvent { actor: "bounces", kind, campaign_id: m.campaign_id, user_id: Some(&m.user_id), detail: &detail },
    )
    .await?;
    if undeliverable {
        let d = serde_json::json!({ "source": p.source.as_str(), "status_code": p.status_code });
        event_in_tx(
            tx,
            p.now,
            &TxEvent {
                actor: "bounces",
                kind: "user.email_undeliverable",
                campaign_id: None,
                user_id: Some(&m.user_id),
                detail: &d,
            },
        )
        .await?;
    }
    Ok(BounceOutcome::Recorded { effective, undeliverable, fallback_queued })
}

/// The user's soft bounces received within [`SOFT_WINDOW`] of `now` (this one
/// included).
async fn soft_count_in_tx(tx: &mut Tx, user_id: &str, now: DateTime<Utc>) -> Result<i64, StoreError> {
    sqlx::query("SELECT COUNT(*) AS n FROM bounces WHERE user_id = $1 AND kind = 'soft' AND received_at >= $2")
        .bind(user_id)
        .bind(to_millis(now - SOFT_WINDOW))
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(query_err("bounce_record softs"))
}

/// What is kept of why: the status code and the remote server's (scrubbed) words.
fn reason_text(status: Option<&str>, diagnostic: Option<&str>, kind: BounceKind) -> String {
    let mut parts: Vec<&str> = vec![];
    if kind == BounceKind::Soft {
        parts.push("3 soft bounces in 7 days;");
    }
    parts.extend(status);
    parts.extend(diagnostic);
    let text = parts.join(" ");
    if text.is_empty() { "bounced".to_owned() } else { text }
}

/// `users forget`: the person's bounce records go with them.
pub(crate) async fn bounces_forget_user_in_tx(tx: &mut Tx, user_id: &str) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM bounces WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map(|r| r.rows_affected())
        .map_err(query_err("bounces forget"))
}
