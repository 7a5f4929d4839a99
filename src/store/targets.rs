//! Campaign targets: who a campaign will notify, and the claims that keep two
//! workers from processing the same user.
//!
//! Targeting is one set-based `INSERT … SELECT`; claiming is one statement that
//! flips a batch to `claimed` under a lease (Postgres: `FOR UPDATE SKIP LOCKED`;
//! SQLite: its single writer). A heartbeat renews the lease while the worker lives;
//! a worker that dies leaves claims that expire and are claimed again by the next.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::domain::VerificationState;
use crate::domain::spec::Audience;

/// What a targeting pass added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targeted {
    /// New targets.
    pub added: u64,
    /// Of those, the ones added as `deferred` (REJECTED inside the cooldown).
    pub deferred: u64,
}

/// A target just claimed, with what the pipeline needs to know of its user.
#[derive(Debug, Clone)]
pub struct ClaimedTarget {
    pub user_id: String,
    pub step: i64,
    pub attempts: i64,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub region: String,
    pub country: Option<String>,
    pub verification_state: String,
}

/// One row of a campaign's progress: how many targets have this status and reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusCount {
    pub status: String,
    pub reason: Option<String>,
    pub count: i64,
}

/// The audience as SQL over `users u`: one predicate per filter (so that `campaign
/// plan` can say which filter excluded a user), with bound values numbered from
/// `first`.
pub(crate) struct AudienceSql {
    pub predicates: Vec<(&'static str, String)>,
    /// Compliance exclusions (`exclude_rejection_codes`, `max_attempts`), each with
    /// the reason `campaign plan` gives for it.
    pub exclusions: Vec<(&'static str, String)>,
    pub binds: Vec<Bind>,
    first: usize,
}

/// A bound value of a built statement.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Int(i64),
    Text(String),
}

impl AudienceSql {
    pub(crate) fn build(a: &Audience, first: usize, backend: Backend) -> Self {
        let mut this = Self { predicates: vec![], exclusions: vec![], binds: vec![], first };
        let list = |this: &mut Self, name: &'static str, column: &str, values: Vec<String>| {
            if !values.is_empty() {
                let marks: Vec<String> = values.into_iter().map(|v| format!("${}", this.mark(Bind::Text(v)))).collect();
                this.predicates.push((name, format!("u.{column} IN ({})", marks.join(", "))));
            }
        };
        list(&mut this, "state", "verification_state", a.states.iter().map(|s| s.as_str().to_owned()).collect());
        list(&mut this, "region", "region", a.regions.iter().map(|r| r.as_str().to_owned()).collect());
        list(&mut this, "country", "country", a.countries.clone());
        if !a.tags.is_empty() {
            // an exact, case-sensitive position search on both engines (see tag_match_sql)
            let found: Vec<String> = a
                .tags
                .iter()
                .map(|t| super::users::tag_match_sql(backend, this.mark(Bind::Text(format!(",{t},")))))
                .collect();
            this.predicates.push(("tags", format!("({})", found.join(" OR "))));
        }
        if let Some(b) = a.signed_up_before {
            let m = this.mark(Bind::Int(to_millis(b)));
            this.predicates.push(("signed_up_before", format!("u.signed_up_at < ${m}")));
        }
        if let Some(af) = a.signed_up_after {
            let m = this.mark(Bind::Int(to_millis(af)));
            this.predicates.push(("signed_up_after", format!("u.signed_up_at >= ${m}")));
        }
        this.push_exclusions(a);
        this
    }

    /// Only the compliance exclusions of `a`: what a reminder must still respect.
    pub(crate) fn exclusions_only(a: &Audience, first: usize) -> Self {
        let mut this = Self { predicates: vec![], exclusions: vec![], binds: vec![], first };
        this.push_exclusions(a);
        this
    }

    fn push_exclusions(&mut self, a: &Audience) {
        let this = self;
        if !a.exclude_rejection_codes.is_empty() {
            // the last rejection's code, kept until a later decision replaces it: a
            // final rejection stays final whatever the state reads later
            let marks: Vec<String> =
                a.exclude_rejection_codes.iter().map(|c| format!("${}", this.mark(Bind::Text(c.clone())))).collect();
            this.exclusions.push((
                "excluded_rejection_code",
                format!("(u.failure_code IS NULL OR u.failure_code NOT IN ({}))", marks.join(", ")),
            ));
        }
        if let Some(max) = a.max_attempts {
            let m = this.mark(Bind::Int(i64::from(max)));
            this.exclusions.push((
                "max_attempts",
                format!("(SELECT COUNT(*) FROM verification_sessions s WHERE {SESSION_HAD}) < ${m}"),
            ));
        }
    }

    /// Binds a value and returns its placeholder's number.
    fn mark(&mut self, b: Bind) -> usize {
        self.binds.push(b);
        self.first + self.binds.len() - 1
    }

    /// All predicates and exclusions joined with AND.
    pub(crate) fn clause(&self) -> String {
        if self.predicates.is_empty() && self.exclusions.is_empty() {
            return "TRUE".into();
        }
        self.predicates.iter().chain(&self.exclusions).map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(" AND ")
    }
}

pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Int(i) => q.bind(*i),
            Bind::Text(s) => q.bind(s.as_str()),
        };
    }
    q
}

/// The ledger rows (alias `s`) of user `u` that `audience.max_attempts` counts: every
/// session reserved for them in any campaign, except those the API certainly never
/// made (`api_failed`). Decision: a reservation still in flight, an `unknown` or an
/// `orphaned` row may be a session the person received, so it counts.
const SESSION_HAD: &str = "s.user_id = u.user_id AND s.status <> 'api_failed'";

/// A user reachable by a campaign: a refresh token on file and no pending re-consent.
pub(crate) const REACHABLE: &str = "u.refresh_token_enc IS NOT NULL AND u.consent_required_at IS NULL";

const DAY_MS: i64 = 86_400_000;

/// What a claim reads of each target and its user (`t`: the target, `u`: the user).
const CLAIMED_COLUMNS: &str = "t.user_id, t.step, t.attempts, u.email, u.first_name, u.last_name, u.locale, \
     u.timezone, u.region, u.country, u.verification_state";

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

impl Store {
    /// Adds every user who matches `audience`, is reachable, and is not a target of
    /// the campaign yet. A REJECTED user still inside the 24 h cooldown is added as
    /// `deferred` until it ends, never dropped. Respects `audience.max_users`.
    /// Returns how many targets were added.
    ///
    /// A million rows in one statement must stay cheap per row, hence three choices
    /// (issue 8; each was measured on Postgres, a 1,000,000-user campaign):
    /// - `campaign_targets` has no foreign keys: their per-row RI triggers were most
    ///   of the time. The campaign is checked once here instead, and a target's user
    ///   comes from `users` in the same statement (users are never deleted).
    /// - No `ON CONFLICT`: it makes Postgres insert speculatively (a second WAL
    ///   record and an index pre-check per row). `NOT EXISTS` already leaves out
    ///   existing targets, and passes cannot overlap: the advisory lock on Postgres
    ///   (taken before the INSERT, whose snapshot therefore sees the last pass's
    ///   rows), the single writer on SQLite.
    /// - Rows go in in user id order, so that the primary key and `user_id` index
    ///   grow at their right edge instead of at random leaves.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown campaign, [`StoreError::Query`].
    pub async fn target_add_matching(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(self.target_add_matching_counted(campaign_id, audience, now).await?.added)
    }

    /// [`Store::target_add_matching`], also counting the targets added as
    /// `deferred` (REJECTED users inside the rejection cooldown), for the run's
    /// summary. They are counted in the same transaction, among the deferred
    /// targets created at `now` (the claim index's range of deferred targets); no
    /// statement runs when the audience cannot hold a REJECTED user or nothing was
    /// added.
    ///
    /// # Errors
    /// As [`Store::target_add_matching`].
    pub async fn target_add_matching_counted(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<Targeted, StoreError> {
        let now_ms = to_millis(now);
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // one targeting pass per campaign at a time, so max_users holds
            sqlx::query("SELECT pg_advisory_xact_lock(7305, CAST($1 AS INTEGER))")
                .bind(campaign_id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("target_add_matching lock"))?;
        }
        // what the foreign key checked per row, once (campaigns are never deleted)
        sqlx::query("SELECT campaign_id FROM campaigns WHERE campaign_id = $1")
            .bind(campaign_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("target_add_matching campaign"))?
            .ok_or_else(|| StoreError::NotFound { what: "campaign", key: campaign_id.to_string() })?;
        let limit = match audience.max_users {
            None => None,
            Some(max) => {
                let have: i64 = sqlx::query("SELECT COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1")
                    .bind(campaign_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query_err("target_add_matching count"))?
                    .try_get("n")
                    .map_err(query_err("target_add_matching count"))?;
                let room = i64::try_from(max).unwrap_or(i64::MAX).saturating_sub(have);
                if room <= 0 {
                    tx.commit().await.map_err(query_err("target_add_matching commit"))?;
                    return Ok(Targeted::default());
                }
                Some(room)
            }
        };
        let aud = AudienceSql::build(audience, 3, self.backend());
        let cooling = "u.verification_state = 'REJECTED' AND COALESCE(u.rejected_at, $2) + 86400000 > $2";
        let sql = format!(
            "INSERT INTO campaign_targets \
               (campaign_id, user_id, step, status, reason, attempts, not_before, sessions, notifications, created_at, updated_at) \
             SELECT $1, u.user_id, 0, \
               CASE WHEN {cooling} THEN 'deferred' ELSE 'pending' END, \
               CASE WHEN {cooling} THEN 'rejection_cooldown' ELSE NULL END, \
               0, \
               CASE WHEN {cooling} THEN COALESCE(u.rejected_at, $2) + {DAY_MS} ELSE NULL END, \
               0, 0, $2, $2 \
             FROM users u \
             WHERE {clause} AND {REACHABLE} \
               AND NOT EXISTS (SELECT 1 FROM campaign_targets t WHERE t.campaign_id = $1 AND t.user_id = u.user_id) \
             ORDER BY u.user_id{limit}",
            clause = aud.clause(),
            limit = match limit {
                Some(n) => format!(" LIMIT {n}"),
                None => String::new(),
            },
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(now_ms);
        let added =
            bind_all(q, &aud.binds).execute(&mut *tx).await.map_err(query_err("target_add_matching"))?.rows_affected();
        let may_cool = audience.states.is_empty() || audience.states.contains(&VerificationState::Rejected);
        let deferred = if added == 0 || !may_cool {
            0
        } else {
            let n: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM campaign_targets \
                 WHERE campaign_id = $1 AND status = 'deferred' AND reason = 'rejection_cooldown' AND created_at = $2",
            )
            .bind(campaign_id)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(query_err("target_add_matching deferred"))?;
            u64::try_from(n).unwrap_or(0)
        };
        tx.commit().await.map_err(query_err("target_add_matching commit"))?;
        Ok(Targeted { added, deferred })
    }

    /// Settles `skipped` the campaign's waiting targets (pending, deferred) whose
    /// user the audience's compliance exclusions now keep out: a rejection code that
    /// arrived after the user was targeted (a deferred rejection, say), or sessions
    /// had in other campaigns since. The reason is the exclusion's (`excluded_rejection_code`,
    /// `max_attempts`), with a `target.skipped` event each. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_skip_excluded(
        &self,
        campaign_id: i64,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let excluded = AudienceSql::exclusions_only(audience, 3);
        if excluded.exclusions.is_empty() {
            return Ok(0);
        }
        let now_ms = to_millis(now);
        let mut tx = self.begin_write().await?;
        let mut total = 0;
        for (reason, pred) in &excluded.exclusions {
            let sql = format!(
                "UPDATE campaign_targets SET status = 'skipped', reason = '{reason}', not_before = NULL, \
                   finalized_at = $2, updated_at = $2 \
                 WHERE campaign_id = $1 AND status IN ('pending', 'deferred') \
                   AND EXISTS (SELECT 1 FROM users u WHERE u.user_id = campaign_targets.user_id AND NOT ({pred}))"
            );
            let q = sqlx::query(AssertSqlSafe(sql)).bind(campaign_id).bind(now_ms);
            let n = bind_all(q, &excluded.binds)
                .execute(&mut *tx)
                .await
                .map_err(query_err("target_skip_excluded"))?
                .rows_affected();
            if n > 0 {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
                     SELECT $2, 'engine', 'target.skipped', campaign_id, user_id, '{{\"reason\":\"{reason}\"}}' \
                     FROM campaign_targets WHERE campaign_id = $1 AND status = 'skipped' AND reason = '{reason}' \
                       AND updated_at = $2"
                )))
                .bind(campaign_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(query_err("target_skip_excluded events"))?;
            }
            total += n;
        }
        tx.commit().await.map_err(query_err("target_skip_excluded commit"))?;
        Ok(total)
    }

    /// Targets whose message could not be delivered become eligible again: a later
    /// run calls this first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_delivery_failed(
        &self,
        campaign_id: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET status = 'pending', reason = NULL, not_before = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'failed' AND reason = 'delivery_failed'",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected())
        .map_err(query_err("target_requeue_delivery_failed"))
    }

    /// Re-queues every failed target of a campaign (`campaign retry-failed`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_failed(&self, campaign_id: i64, now: DateTime<Utc>) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET status = 'pending', reason = NULL, not_before = NULL, attempts = 0, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'failed'",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected())
        .map_err(query_err("target_requeue_failed"))
    }

    /// Claims up to `limit` targets that are due (pending, or deferred until now or
    /// earlier) or whose claim expired, for `worker`, until `now + lease`. The
    /// whole campaign is looked at; a run claims with [`Store::target_claim_next`].
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_claim_batch(
        &self,
        campaign_id: i64,
        worker: &str,
        limit: i64,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedTarget>, StoreError> {
        self.target_claim_next(campaign_id, worker, limit, now, lease, &mut ClaimCursor::start()).await
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
        campaign_id: i64,
        worker: &str,
        limit: i64,
        now: DateTime<Utc>,
        lease: Duration,
        cursor: &mut ClaimCursor,
    ) -> Result<Vec<ClaimedTarget>, StoreError> {
        let claimed = self.claim(campaign_id, worker, limit, now, lease, cursor).await?;
        if let Some(last) = claimed.iter().map(|t| t.user_id.as_str()).max()
            && cursor.after.as_deref().is_none_or(|a| last > a)
        {
            cursor.after = Some(last.to_owned());
        }
        Ok(claimed)
    }

    async fn claim(
        &self,
        campaign_id: i64,
        worker: &str,
        limit: i64,
        now: DateTime<Utc>,
        lease: Duration,
        cursor: &ClaimCursor,
    ) -> Result<Vec<ClaimedTarget>, StoreError> {
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
                .map(claimed_from_row)
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
        rows.iter().map(claimed_from_row).collect::<Result<_, _>>().map_err(query_err("target_claim_batch row"))
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

    /// Records a final or waiting outcome for a target `worker` holds: `status` is
    /// one of `skipped`, `failed`, `deferred` (with `not_before`), or `pending` (retry
    /// later, with `not_before`). Returns false when the claim was lost.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    #[allow(clippy::too_many_arguments)]
    pub async fn target_settle(
        &self,
        campaign_id: i64,
        user_id: &str,
        worker: &str,
        status: &str,
        reason: &str,
        not_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let args = super::sessions::SettleArgs::new(campaign_id, user_id, worker, status, reason, not_before, now);
        self.write(args, super::sessions::SettleArgs::write).await
    }

    /// The campaign's targets counted by status and reason.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_counts(&self, campaign_id: i64) -> Result<Vec<StatusCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, reason, COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1 \
             GROUP BY status, reason ORDER BY status, reason",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("target_counts"))?;
        rows.iter()
            .map(|r| {
                Ok(StatusCount { status: r.try_get("status")?, reason: r.try_get("reason")?, count: r.try_get("n")? })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("target_counts row"))
    }
}

fn claimed_from_row(r: &sqlx::any::AnyRow) -> Result<ClaimedTarget, sqlx::Error> {
    Ok(ClaimedTarget {
        user_id: r.try_get("user_id")?,
        step: r.try_get("step")?,
        attempts: r.try_get("attempts")?,
        email: r.try_get("email")?,
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        locale: r.try_get("locale")?,
        timezone: r.try_get("timezone")?,
        region: r.try_get("region")?,
        country: r.try_get("country")?,
        verification_state: r.try_get("verification_state")?,
    })
}
