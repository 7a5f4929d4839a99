//! Claims: one statement flips a batch of due targets to `claimed` under a lease
//! (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: its single writer); a heartbeat
//! renews the lease while the worker lives, and a release hands targets back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use crate::domain::{EmailAddress, Locale, Recipient, TimeZone, UserId};
use crate::store::users::{TokenRow, decode, token_row};
use crate::store::{Backend, Store, StoreError, query_err, to_millis};

/// A target a worker holds: the campaign, the user and the worker whose claim it
/// is. Every per-user write of a run takes it (with the instant), and acts only
/// while the target is still this worker's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub campaign_id: i64,
    pub user_id: UserId,
    /// The worker that must still hold the claim.
    pub worker: String,
}

/// A target just claimed, with what the pipeline needs to know of its user.
#[derive(Debug, Clone)]
pub struct ClaimedTarget {
    /// Whose claim it is.
    pub claim: Claim,
    pub step: i64,
    pub attempts: i64,
    /// The user, every field parsed by the claim ([`claimed_from_row`]).
    pub recipient: Recipient,
    pub country: Option<String>,
    /// When that state was last confirmed (a fresh-state call, a signed webhook, a
    /// sync or an import): a run trusts it within `fresh_state_max_age`.
    pub state_confirmed_at: Option<DateTime<Utc>>,
    /// The user's tokens, sealed, as the claim read them: the run's token vault
    /// starts from them instead of reading them again (`engine::adapters::vault`).
    pub tokens: TokenRow,
    /// The user's address bounced for good (issue 27): no email reaches them.
    pub email_undeliverable: bool,
    /// The user reported a message as abuse.
    pub complained: bool,
}

/// What a claim reads of each target and its user (`t`: the target, `u`: the user),
/// the user's sealed tokens included (see [`ClaimedTarget::tokens`]).
const CLAIMED_COLUMNS: &str = "t.user_id, t.step, t.attempts, u.email, u.first_name, u.last_name, u.locale, \
     u.timezone, u.region, u.country, u.verification_state, u.state_confirmed_at, u.refresh_token_enc, u.token_key_id, \
     u.consent_required_at, u.token_version, u.access_token_enc, u.access_token_key_id, \
     u.access_token_fresh_until, u.token_lease_owner, u.token_lease_until, u.email_undeliverable_at, u.complained_at";

/// Where a run's claims have got to, so that each claim starts where the last one
/// ended instead of walking again past every target already taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimCursor {
    /// The highest user id claimed so far: fresh pending targets are taken in user
    /// id order after it. `None`: from the start.
    pub after: Option<String>,
    /// Also look for claims whose lease expired (a dead worker's). The walk over
    /// the campaign's claimed rows grows with every target claimed, so a run does
    /// it on its first claim, once a lease, and on its last.
    pub rescue: bool,
}

impl ClaimCursor {
    /// From the start, expired claims included: a run's first claim.
    pub fn start() -> Self {
        Self { after: None, rescue: true }
    }
}

/// The `picked` CTE of a claim: up to `limit` targets of campaign `$1` due at `$2`.
/// Expired claims first (a dead worker's users waited longest; only when the
/// cursor says so), then deferred targets whose time has come, then pending ones
/// with a retry time, then fresh pending ones (no `not_before`) in user id order
/// after the cursor `$5`.
///
/// Each kind is read where it lies and nowhere else, so that a claim costs the
/// same at the millionth target as at the first. The first three are ranges of
/// `campaign_targets_claim`. The fresh pending targets are a range of the primary
/// key from the cursor on: a claim never walks the entries that targets already
/// taken left behind in any index (dead until a vacuum; at 1,000,000 users a
/// claim walked hundreds of thousands of them, and a run slowed to a crawl). Their
/// filter is a `CASE`, which no index serves, so that the planner takes the primary
/// key. Postgres locks what it picks, skipping rows another worker holds.
fn due_targets(backend: Backend, limit: i64, rescue: bool) -> String {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let part = |filter: &str, order: &str| {
        format!(
            "SELECT * FROM (SELECT campaign_id, user_id FROM campaign_targets \
               WHERE campaign_id = $1 AND {filter} {order} LIMIT {limit} {lock}) AS x"
        )
    };
    let mut parts = Vec::with_capacity(4);
    if rescue {
        parts.push(part("status = 'claimed' AND lease_expires_at < $2", ""));
    }
    parts.push(part("status = 'deferred' AND not_before <= $2", ""));
    parts.push(part("status = 'pending' AND not_before <= $2", ""));
    // (the row comparison and the order make it the primary key's range, not
    // `campaign_targets_by_user`'s, which holds every campaign's targets)
    parts.push(part(
        "(campaign_id, user_id) > ($1, $5) AND CASE WHEN status = 'pending' THEN not_before IS NULL ELSE FALSE END",
        "ORDER BY campaign_id, user_id",
    ));
    format!("picked AS ({} LIMIT {limit})", parts.join(" UNION ALL "))
}

/// What [`Store::target_claim_batch`] and [`Store::target_claim_next`] claim: up
/// to `limit` due targets of `campaign_id` for `worker`, until `now + lease`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimBatchParams<'a> {
    /// The campaign whose targets are claimed.
    pub campaign_id: i64,
    /// The worker that claims them.
    pub worker: &'a str,
    /// How many at most.
    pub limit: i64,
    /// When the claim is made.
    pub now: DateTime<Utc>,
    /// How long the claim holds.
    pub lease: Duration,
}

impl Store {
    /// Claims up to `limit` targets that are due (pending, or deferred until now or
    /// earlier) or whose claim expired, for `worker`, until `now + lease`. The
    /// whole campaign is looked at; a run claims with [`Store::target_claim_next`].
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_claim_batch(&self, p: ClaimBatchParams<'_>) -> Result<Vec<ClaimedTarget>, StoreError> {
        self.target_claim_next(p, &mut ClaimCursor::start()).await
    }

    /// [`Store::target_claim_batch`] from where `cursor` says, moving it on. Fresh
    /// pending targets before the cursor are not looked at: a run that finds
    /// nothing after its cursor claims once more from the start before it ends
    /// (targets given back or re-queued meanwhile wait at most until then).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_claim_next(
        &self,
        p: ClaimBatchParams<'_>,
        cursor: &mut ClaimCursor,
    ) -> Result<Vec<ClaimedTarget>, StoreError> {
        let claimed = self.claim(p, cursor).await?;
        if let Some(last) = claimed.iter().map(|t| t.claim.user_id.as_str()).max()
            && cursor.after.as_deref().is_none_or(|a| last > a)
        {
            cursor.after = Some(last.to_owned());
        }
        Ok(claimed)
    }

    async fn claim(&self, p: ClaimBatchParams<'_>, cursor: &ClaimCursor) -> Result<Vec<ClaimedTarget>, StoreError> {
        let ClaimBatchParams { campaign_id, worker, limit, now, lease } = p;
        let after = cursor.after.as_deref().unwrap_or("");
        let now_ms = to_millis(now);
        let expires = now_ms + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // The limit is written into the text, not bound: a generic plan that sees
        // `LIMIT $n` assumes a tenth of the table and joins the claimed rows back by
        // scanning an index whole. The text stays the same for a run's every claim.
        let limit = limit.clamp(1, 100_000);
        let picked = due_targets(self.backend(), limit, cursor.rescue);
        if self.backend() == Backend::Postgres {
            // One statement: claim, then read each claimed row's user by primary key.
            // The lateral subquery (kept apart by OFFSET 0) makes that a lookup per
            // row; a plain join let the planner hash all of `users`.
            let sql = format!(
                "WITH {picked}, \
                 claimed AS (UPDATE campaign_targets t SET status = 'claimed', lease_owner = $3, \
                       lease_expires_at = $4, claimed_at = $2, attempts = t.attempts + 1, updated_at = $2 \
                     FROM picked WHERE t.campaign_id = picked.campaign_id AND t.user_id = picked.user_id \
                     RETURNING t.user_id, t.step, t.attempts) \
                 SELECT {CLAIMED_COLUMNS} FROM claimed t \
                 CROSS JOIN LATERAL (SELECT * FROM users u WHERE u.user_id = t.user_id OFFSET 0) u"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(campaign_id)
                .bind(now_ms)
                .bind(worker)
                .bind(expires)
                .bind(after)
                .fetch_all(self.pool())
                .await
                .map_err(query_err("target_claim_batch"))?;
            return rows
                .iter()
                .map(|r| claimed_from_row(r, &p))
                .collect::<Result<_, _>>()
                .map_err(query_err("target_claim_batch row"));
        }
        let sql = format!(
            "WITH {picked} \
             UPDATE campaign_targets SET status = 'claimed', lease_owner = $3, lease_expires_at = $4, \
               claimed_at = $2, attempts = attempts + 1, updated_at = $2 \
             WHERE campaign_id = $1 AND user_id IN (SELECT user_id FROM picked) RETURNING user_id"
        );
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(now_ms)
            .bind(worker)
            .bind(expires)
            .bind(after)
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err("target_claim_batch"))?
            .iter()
            .map(|r| r.try_get::<String, _>("user_id"))
            .collect::<Result<_, _>>()
            .map_err(query_err("target_claim_batch"))?;
        // exactly the rows this claim took (not every row claimed in the same
        // millisecond by this worker)
        let rows = if ids.is_empty() {
            vec![]
        } else {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {CLAIMED_COLUMNS} FROM campaign_targets t JOIN users u ON u.user_id = t.user_id \
                 WHERE t.campaign_id = $1 AND t.user_id IN (SELECT value FROM json_each($2))"
            )))
            .bind(campaign_id)
            .bind(serde_json::Value::from(ids).to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err("target_claim_batch read"))?
        };
        tx.commit().await.map_err(query_err("target_claim_batch commit"))?;
        rows.iter()
            .map(|r| claimed_from_row(r, &p))
            .collect::<Result<_, _>>()
            .map_err(query_err("target_claim_batch row"))
    }

    /// Renews every claim `worker` holds on the campaign until `now + lease`. Returns
    /// how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_heartbeat(
        &self,
        campaign_id: i64,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let expires = to_millis(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // On Postgres, rows locked at this moment (a user's record being written in
        // a group) are skipped, not waited for: waiting would hold up every group
        // that wants a row this statement already renewed, and a skipped row is
        // renewed by the next beat, well inside the lease.
        let sql = match self.backend() {
            Backend::Postgres => {
                "UPDATE campaign_targets t SET lease_expires_at = $1 \
                 FROM (SELECT campaign_id, user_id FROM campaign_targets \
                       WHERE campaign_id = $3 AND status = 'claimed' AND lease_owner = $2 FOR UPDATE SKIP LOCKED) mine \
                 WHERE t.campaign_id = mine.campaign_id AND t.user_id = mine.user_id"
            }
            Backend::Sqlite => {
                "UPDATE campaign_targets SET lease_expires_at = $1 \
                 WHERE campaign_id = $3 AND status = 'claimed' AND lease_owner = $2"
            }
        };
        sqlx::query(sql)
            .bind(expires)
            .bind(worker)
            .bind(campaign_id)
            .execute(self.pool())
            .await
            .map(|r| r.rows_affected())
            .map_err(query_err("target_heartbeat"))
    }

    /// Gives back claims that `worker` has not started on (a stopping run), so that
    /// the next run takes them at once. The attempt is not counted.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_release(
        &self,
        campaign_id: i64,
        worker: &str,
        user_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut released = 0;
        for chunk in user_ids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
            let sql = format!(
                concat!(
                    "UPDATE campaign_targets SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
                       attempts = attempts - 1, updated_at = $3 \
                     WHERE campaign_id = $1 AND user_id IN ({}) AND ",
                    ours!("$2")
                ),
                marks.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(worker).bind(to_millis(now));
            for id in chunk {
                q = q.bind(id.as_str());
            }
            released += q.execute(self.pool()).await.map_err(query_err("target_release"))?.rows_affected();
        }
        Ok(released)
    }
}

/// One claimed row, its user parsed into a [`Recipient`] (the one place a claimed
/// user's fields are parsed): a row that does not parse is an error of the claim
/// (a decode error, so [`StoreError::Query`]), never dropped or defaulted. A time
/// zone that names no zone is kept as [`TimeZone::Unknown`] (a run reads the
/// campaign's zone for it, as it always has).
fn claimed_from_row(r: &sqlx::any::AnyRow, p: &ClaimBatchParams<'_>) -> Result<ClaimedTarget, sqlx::Error> {
    let raw_id: String = r.try_get("user_id")?;
    let user_id = UserId::parse(&raw_id).map_err(decode)?;
    if user_id.as_str() != raw_id {
        // every write of the run is keyed by this id: it must be the stored text
        return Err(decode(crate::domain::IdError::UserId(raw_id)));
    }
    let recipient = Recipient {
        user_id: user_id.clone(),
        email: EmailAddress::parse(&r.try_get::<String, _>("email")?).map_err(decode)?,
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        locale: r.try_get::<Option<String>, _>("locale")?.map(|l| Locale::parse(&l)).transpose().map_err(decode)?,
        time_zone: r.try_get::<Option<String>, _>("timezone")?.map(TimeZone::from),
        region: r.try_get::<String, _>("region")?.parse().map_err(decode)?,
        verification_state: r.try_get::<String, _>("verification_state")?.parse().map_err(decode)?,
    };
    Ok(ClaimedTarget {
        claim: Claim { campaign_id: p.campaign_id, user_id, worker: p.worker.to_owned() },
        step: r.try_get("step")?,
        attempts: r.try_get("attempts")?,
        recipient,
        country: r.try_get("country")?,
        state_confirmed_at: r.try_get::<Option<i64>, _>("state_confirmed_at")?.map(crate::store::from_millis),
        tokens: token_row(r)?,
        email_undeliverable: r.try_get::<Option<i64>, _>("email_undeliverable_at")?.is_some(),
        complained: r.try_get::<Option<i64>, _>("complained_at")?.is_some(),
    })
}
