//! Claims: one statement flips a batch of due targets to `claimed` under a lease
//! (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: its single writer); a heartbeat
//! renews the lease while the worker lives, and a release hands targets back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use crate::domain::{EmailAddress, Locale, Recipient, TargetReason, TimeZone, Transition, UserId};
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
    // `ORDER BY not_before`: the order `campaign_targets_claim` holds each status's
    // entries in. Without it, a generic plan (a prepared statement's, from its sixth
    // run on) guessed that a third of the pending targets had a `not_before` due and
    // scanned the whole table for the first few of them: at 1,000,000 targets, a
    // quarter of a second and 20,000 pages a claim, for none (issue 30).
    let part = |filter: &str| {
        format!(
            "SELECT * FROM (SELECT campaign_id, user_id FROM campaign_targets \
               WHERE campaign_id = $1 AND {filter} ORDER BY not_before LIMIT {limit} {lock}) AS x"
        )
    };
    let mut parts = Vec::with_capacity(4);
    if rescue {
        parts.push(part("status = 'claimed' AND lease_expires_at < $2"));
    }
    parts.push(part("status = 'deferred' AND not_before <= $2"));
    parts.push(part("status = 'pending' AND not_before <= $2"));
    // (the row comparison and the order make it the primary key's range, not
    // `campaign_targets_by_user`'s, which holds every campaign's targets)
    let fresh = match backend {
        // No `campaign_id = $1` here: beside an equality on the key's first column,
        // Postgres's B-tree starts the scan where that equality starts, at the
        // campaign's first target, and reads the row comparison only as a filter, so
        // every claim walked the entries of every target claimed before it (three
        // per target: each update that moves `status` adds one). At 300,000 targets
        // done that was 5,700 pages and 86 ms a claim, and the run slowed with the
        // campaign's size (issue 30). `campaign_id <= $1` bounds the end of the range
        // without taking its start.
        Backend::Postgres => {
            "(campaign_id, user_id) > ($1, $5) AND campaign_id <= $1 \
             AND CASE WHEN status = 'pending' THEN not_before IS NULL ELSE FALSE END"
        }
        Backend::Sqlite => {
            "campaign_id = $1 AND (campaign_id, user_id) > ($1, $5) \
             AND CASE WHEN status = 'pending' THEN not_before IS NULL ELSE FALSE END"
        }
    };
    parts.push(format!(
        "SELECT * FROM (SELECT campaign_id, user_id FROM campaign_targets WHERE {fresh} \
         ORDER BY campaign_id, user_id LIMIT {limit} {lock}) AS x"
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
            return self.parsed(&p, &rows).await;
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
        self.parsed(&p, &rows).await
    }

    /// The claimed rows, parsed. A row that does not parse (an address, a region or
    /// a locale that an import would have refused, written some other way) is failed
    /// `invalid_user_record` at once, with a warning naming the user and the error:
    /// one bad row neither stops the run nor comes back at every claim.
    async fn parsed(
        &self,
        p: &ClaimBatchParams<'_>,
        rows: &[sqlx::any::AnyRow],
    ) -> Result<Vec<ClaimedTarget>, StoreError> {
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            match claimed_from_row(r, p) {
                Ok(t) => claimed.push(t),
                Err(e) => {
                    let raw: String = r.try_get("user_id").map_err(query_err("target_claim_batch row"))?;
                    tracing::warn!(user = %raw, error = %e, "a claimed user's record does not parse: target failed");
                    self.fail_unparsable(p, &raw).await?;
                }
            }
        }
        Ok(claimed)
    }

    /// Fails the target of a claimed user whose record does not parse: through
    /// [`Store::target_settle`] (its `target.failed` event included) when the id is
    /// one, else by the same fenced update with no event, since an event names its
    /// user by a parsed id (the warning names the stored text).
    async fn fail_unparsable(&self, p: &ClaimBatchParams<'_>, raw_user_id: &str) -> Result<(), StoreError> {
        let to = Transition::fail(TargetReason::InvalidUserRecord);
        if let Ok(user_id) = UserId::parse(raw_user_id)
            && user_id.as_str() == raw_user_id
        {
            let claim = Claim { campaign_id: p.campaign_id, user_id, worker: p.worker.to_owned() };
            return self.target_settle(super::SettleParams { claim: &claim, to, now: p.now }).await.map(|_| ());
        }
        let now = to_millis(p.now);
        sqlx::query(concat!(
            "UPDATE campaign_targets SET status = $4, reason = $5, not_before = NULL, lease_owner = NULL, \
               lease_expires_at = NULL, finalized_at = $6, updated_at = $6 WHERE ",
            our_target!()
        ))
        .bind(p.campaign_id)
        .bind(raw_user_id)
        .bind(p.worker)
        .bind(to.status.as_str())
        .bind(to.reason.as_str())
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(query_err("target_claim_batch invalid row"))?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use sqlx::Row as _;

    use super::due_targets;
    use crate::postgres_only;
    use crate::store::Backend;
    use crate::store::testing::TestDb;

    /// The shared buffers (hit or read) Postgres touched to find a claim's targets
    /// of `campaign` after `after`, from `EXPLAIN (ANALYZE, BUFFERS)` of the claim's
    /// `picked` as a prepared statement, with a generic plan (`generic`: what a run's
    /// prepared claim gets from its sixth execution on) or a custom one.
    async fn claim_buffers(db: &TestDb, campaign: i64, after: &str, generic: bool) -> (i64, String) {
        let picked = due_targets(Backend::Postgres, 100, false);
        let mode = if generic { "force_generic_plan" } else { "force_custom_plan" };
        let mut tx = db.store.pool().begin().await.unwrap();
        for sql in [
            format!("SET LOCAL plan_cache_mode = {mode}"),
            // $3 and $4 (the claim's owner and lease) are the UPDATE's, not the CTE's
            format!(
                "PREPARE probe (bigint, bigint, text, bigint, text) AS WITH {picked} \
                 SELECT * FROM picked WHERE $3 IS NOT NULL AND $4 IS NOT NULL"
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await.unwrap();
        }
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE probe ({campaign}, 0, 'w', 0, '{after}')");
        let lines: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
            .fetch_all(&mut *tx)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect();
        // a prepared statement outlives the transaction, on the pool's connection
        sqlx::raw_sql("DEALLOCATE probe").execute(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        let plan = lines.join("\n");
        // the first line is the top node, the first `Buffers:` line its buffers
        assert!(lines[0].contains("rows=100 "), "{plan}");
        let buffers =
            lines.iter().find_map(|l| l.trim().strip_prefix("Buffers: shared ")).unwrap_or_else(|| panic!("{plan}"));
        let n = buffers
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| matches!(*k, "hit" | "read"))
            .map(|(_, v)| v.parse::<i64>().unwrap())
            .sum();
        (n, plan)
    }

    // Issue 30: a claim's cost did not depend on how far the run had come only in
    // intent. Beside `campaign_id = $1`, the B-tree scan of the fresh targets started
    // at the campaign's first entry and walked every target already taken (three
    // entries each once claimed and notified): at 1,000,000 users the claim was the
    // run's costliest statement and the run slowed as it went.
    postgres_only!(a_claim_far_into_a_campaign_reads_no_more_than_the_first, |db: TestDb| async move {
        let pool = db.store.pool();
        sqlx::query(
            "INSERT INTO users (user_id, email, region, verification_state, refresh_token_enc, token_key_id, \
               created_at, updated_at) \
             SELECT 'u' || lpad(g::text, 6, '0'), 'u' || g || '@example.test', 'intl', 'UNVERIFIED', '\\x01', 'k', 0, 0 \
             FROM generate_series(1, 20000) AS g",
        )
        .execute(pool)
        .await
        .unwrap();
        let mut campaigns = Vec::new();
        for name in ["far", "fresh"] {
            let id: i64 = sqlx::query(
                "INSERT INTO campaigns (name, spec, spec_hash, status, created_at, updated_at) \
                 VALUES ($1, '', '', 'active', 0, 0) RETURNING campaign_id",
            )
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get("campaign_id")
            .unwrap();
            db.store
                .target_add_matching(id, &crate::domain::spec::Audience::default(), chrono::Utc::now())
                .await
                .unwrap();
            campaigns.push(id);
        }
        let (far, fresh) = (campaigns[0], campaigns[1]);
        // the first 19,000 targets of `far` claimed, then notified, as a run leaves them
        for status in ["claimed", "notified"] {
            sqlx::query("UPDATE campaign_targets SET status = $1 WHERE campaign_id = $2 AND user_id <= 'u019000'")
                .bind(status)
                .bind(far)
                .execute(pool)
                .await
                .unwrap();
        }
        let targets: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM campaign_targets").fetch_one(pool).await.unwrap().get("n");
        assert_eq!(targets, 40_000);
        sqlx::query("ANALYZE campaign_targets").execute(pool).await.unwrap();
        for generic in [false, true] {
            let (at_start, _) = claim_buffers(&db, fresh, "", generic).await;
            let (far_in, plan) = claim_buffers(&db, far, "u019000", generic).await;
            // 100 targets are about 100 heap pages and a few index pages; the walk
            // over 57,000 entries before the cursor was over 400 more, and a scan of
            // the table over 700
            assert!(
                far_in <= at_start + at_start / 2 && at_start < 400,
                "generic plan {generic}: a claim after 19,000 targets done touched {far_in} buffers, one at \
                 the start {at_start}:\n{plan}"
            );
        }
    });
}
