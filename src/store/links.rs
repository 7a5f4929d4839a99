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
//!
//! This file holds the statements of `verification_links`; the transitions that
//! also move a target (issue, delivery, a click) are in `store::clicks`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, Tx, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::UserId;

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

/// A link as the click endpoint finds it by its token.
#[derive(Debug, Clone)]
pub struct LinkRow {
    pub link_id: i64,
    pub campaign_id: i64,
    /// The campaign's name (the metrics' `campaign` label).
    pub campaign_name: String,
    pub user_id: String,
    pub step: i64,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub region: String,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    /// The campaign's `timezone`: the page's dates are written in it when the
    /// user's zone is missing or unknown, as the email's and the send window's are.
    pub campaign_timezone: Option<String>,
    /// When the user's state was last confirmed.
    pub state_confirmed_at: Option<DateTime<Utc>>,
    /// The campaign's `fresh_state_max_age` when the link was sent.
    pub fresh_state_max_age: Option<std::time::Duration>,
}

impl LinkRow {
    /// The zone the link's pages write dates in: the user's, else the campaign's
    /// when the user's is missing or not an IANA zone (the email's rule,
    /// `notify::template::zone_of`); `None` (UTC) when neither is known.
    pub fn zone(&self) -> Option<&str> {
        fn known(z: Option<&str>) -> Option<&str> {
            z.filter(|z| z.trim().parse::<chrono_tz::Tz>().is_ok())
        }
        known(self.timezone.as_deref()).or_else(|| known(self.campaign_timezone.as_deref()))
    }
}

impl Store {
    /// The link whose token hashes to `token_hash`, with what the click page needs
    /// of its user.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn link_find(&self, token_hash: &str) -> Result<Option<LinkRow>, StoreError> {
        let row = sqlx::query(
            "SELECT l.link_id, l.campaign_id, l.user_id, l.step, l.expires_at, l.revoked_at, \
               l.fresh_state_max_age_ms, u.region, u.locale, u.timezone, u.state_confirmed_at, \
               c.timezone AS campaign_timezone, c.name AS campaign_name \
             FROM verification_links l JOIN users u ON u.user_id = l.user_id \
             JOIN campaigns c ON c.campaign_id = l.campaign_id WHERE l.token_hash = $1",
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
            campaign_name: r.try_get("campaign_name").map_err(get)?,
            user_id: r.try_get("user_id").map_err(get)?,
            step: r.try_get("step").map_err(get)?,
            expires_at: from_millis(r.try_get("expires_at").map_err(get)?),
            revoked: r.try_get::<Option<i64>, _>("revoked_at").map_err(get)?.is_some(),
            region: r.try_get("region").map_err(get)?,
            locale: r.try_get("locale").map_err(get)?,
            timezone: r.try_get("timezone").map_err(get)?,
            campaign_timezone: r.try_get("campaign_timezone").map_err(get)?,
            state_confirmed_at: r.try_get::<Option<i64>, _>("state_confirmed_at").map_err(get)?.map(from_millis),
            fresh_state_max_age: r
                .try_get::<Option<i64>, _>("fresh_state_max_age_ms")
                .map_err(get)?
                .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        }))
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
    tx: &mut Tx,
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

/// Revokes every live link of a campaign inside a transaction (it was cancelled).
pub(crate) async fn links_revoke_campaign_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE verification_links SET revoked_at = $2, revoked_reason = 'campaign_cancelled' \
         WHERE campaign_id = $1 AND revoked_at IS NULL",
    )
    .bind(campaign_id)
    .bind(to_millis(now))
    .execute(&mut **tx)
    .await
    .map_err(query_err("campaign_set_status links"))?;
    Ok(())
}

/// Parses a link user's id (the rows hold valid ids; a bad one is a conflict).
pub fn link_user(row: &LinkRow) -> Result<UserId, StoreError> {
    UserId::parse(&row.user_id).map_err(|e| StoreError::Conflict(e.to_string()))
}

/// A link to record, for [`links_insert_in_tx`].
pub(crate) struct LinkNew<'a> {
    pub token_hash: &'a str,
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub fresh_state_max_age: Option<std::time::Duration>,
}

/// Records links in one statement; their ids by user.
pub(crate) async fn links_insert_in_tx(
    backend: Backend,
    links: &[LinkNew<'_>],
    tx: &mut Tx,
) -> Result<HashMap<String, i64>, StoreError> {
    let mut ids: HashMap<String, i64> = HashMap::new();
    if links.is_empty() {
        return Ok(ids);
    }
    let rows = json_rows(links.iter().map(|w| {
        let max_age = w.fresh_state_max_age.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        serde_json::json!([
            w.token_hash,
            w.campaign_id,
            w.user_id,
            w.step,
            to_millis(w.now),
            to_millis(w.expires_at),
            max_age
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
            ("age", Arg::Int),
        ],
    );
    let sql = format!(
        "INSERT INTO verification_links \
           (token_hash, campaign_id, user_id, step, created_at, expires_at, fresh_state_max_age_ms) \
         SELECT x.h, x.c, x.u, x.step, x.at, x.exp, x.age FROM ({from}) AS x RETURNING link_id, user_id"
    );
    for row in
        sqlx::query(AssertSqlSafe(sql)).bind(rows).fetch_all(&mut **tx).await.map_err(query_err("link_issue insert"))?
    {
        let user: String = row.try_get("user_id").map_err(query_err("link_issue insert"))?;
        ids.insert(user, row.try_get("link_id").map_err(query_err("link_issue insert"))?);
    }
    Ok(ids)
}

/// Marks links (link id, when) as delivered, in one statement.
pub(crate) async fn links_delivered_in_tx(
    backend: Backend,
    sent: &[(i64, DateTime<Utc>)],
    tx: &mut Tx,
) -> Result<(), StoreError> {
    if sent.is_empty() {
        return Ok(());
    }
    let rows = json_rows(sent.iter().map(|(link, at)| serde_json::json!([link, to_millis(*at)])));
    let from = json_args(backend, &[("l", Arg::Int), ("at", Arg::Int)]);
    let sql = format!(
        "UPDATE verification_links SET delivered_at = x.at FROM ({from}) AS x \
         WHERE verification_links.link_id = x.l"
    );
    sqlx::query(AssertSqlSafe(sql)).bind(rows).execute(&mut **tx).await.map_err(query_err("link_record_delivery"))?;
    Ok(())
}

/// Counts a click of link `link_id` and takes the link's right to make a session,
/// unless another click took it less than [`CLICK_DEBOUNCE_MS`] ago: then returns
/// when that one did.
pub(crate) async fn link_click_take_in_tx(
    tx: &mut Tx,
    link_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let now_ms = to_millis(now);
    let took = sqlx::query(
        "UPDATE verification_links SET clicks = clicks + 1, last_click_at = $2, session_started_at = $2 \
         WHERE link_id = $1 AND (session_started_at IS NULL OR session_started_at <= $3)",
    )
    .bind(link_id)
    .bind(now_ms)
    .bind(now_ms - CLICK_DEBOUNCE_MS)
    .execute(&mut **tx)
    .await
    .map_err(query_err("link_click_start"))?
    .rows_affected()
        == 1;
    if took {
        return Ok(None);
    }
    let since: Option<i64> = sqlx::query(
        "UPDATE verification_links SET clicks = clicks + 1, last_click_at = $2 WHERE link_id = $1 \
         RETURNING session_started_at",
    )
    .bind(link_id)
    .bind(now_ms)
    .fetch_one(&mut **tx)
    .await
    .and_then(|r| r.try_get("session_started_at"))
    .map_err(query_err("link_click_start"))?;
    Ok(Some(from_millis(since.unwrap_or(now_ms))))
}

/// A link's message bounced: the link is revoked (`bounced`), so nobody clicks a
/// message that never arrived.
pub(crate) async fn link_revoke_bounced_in_tx(tx: &mut Tx, link_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE verification_links SET revoked_at = $2, revoked_reason = 'bounced' \
         WHERE link_id = $1 AND revoked_at IS NULL",
    )
    .bind(link_id)
    .bind(to_millis(now))
    .execute(&mut **tx)
    .await
    .map_err(query_err("link_revoke_bounced"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::LinkRow;

    fn row(user: Option<&str>, campaign: Option<&str>) -> LinkRow {
        LinkRow {
            link_id: 1,
            campaign_id: 1,
            campaign_name: "c".into(),
            user_id: "u1".into(),
            step: 0,
            expires_at: chrono::Utc::now(),
            revoked: false,
            region: "eu".into(),
            locale: Some("de-DE".into()),
            timezone: user.map(Into::into),
            campaign_timezone: campaign.map(Into::into),
            state_confirmed_at: None,
            fresh_state_max_age: None,
        }
    }

    #[test]
    fn a_page_without_the_users_zone_is_dated_in_the_campaigns() {
        assert_eq!(row(Some("Asia/Tokyo"), Some("Europe/Berlin")).zone(), Some("Asia/Tokyo"));
        assert_eq!(row(None, Some("Europe/Berlin")).zone(), Some("Europe/Berlin"));
        assert_eq!(row(Some("not/a zone"), Some("Europe/Berlin")).zone(), Some("Europe/Berlin"));
        assert_eq!(row(None, None).zone(), None);
    }
}
