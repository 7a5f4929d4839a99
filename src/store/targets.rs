//! Campaign targets: who a campaign will notify, and the claims that keep two
//! workers from processing the same user.
//!
//! Targeting is one set-based `INSERT … SELECT`; claiming is one statement that
//! flips a batch to `claimed` under a lease (Postgres: `FOR UPDATE SKIP LOCKED`;
//! SQLite: its single writer). A heartbeat renews the lease while the worker lives;
//! a worker that dies leaves claims that expire and are claimed again by the next.

mod followup;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::events::{event_in_tx, events_reminders_queued_in_tx, events_targets_skipped_in_tx};
use super::group::{Arg, BatchWrite, Step, Tx, json_args, json_rows, returned_user_ids};
use super::users::{REACHABLE, TokenRow, token_row};
use super::{Backend, Store, StoreError, query_err, to_millis};
use crate::domain::policy::{self, Verdict};
use crate::domain::spec::{Audience, Reminders};
use crate::domain::{TargetReason, TargetStatus, Transition, VerificationState};

pub use followup::{FollowUpPlan, NO_REMINDER_YET};
pub(crate) use followup::{targets_end_campaign_in_tx, targets_reminder_recheck_in_tx};

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

/// One row of a campaign's progress: how many targets have this status and reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusCount {
    pub status: TargetStatus,
    pub reason: Option<TargetReason>,
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

const DAY_MS: i64 = 86_400_000;

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
                events_targets_skipped_in_tx(&mut tx, campaign_id, reason, now_ms).await?;
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

    /// Records a final or waiting outcome for a target `p.worker` holds (see
    /// [`SettleParams`]), with its audit event. Returns false when the claim was
    /// lost. A batched write.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_settle(&self, p: SettleParams<'_>) -> Result<bool, StoreError> {
        self.write_batched(Settle { claim: Claimed::new(p.campaign_id, p.user_id, p.worker, p.now), to: p.to }).await
    }

    /// Re-queues notified targets for their next reminder, set-based: the user is
    /// still UNVERIFIED (or REJECTED past the 24 h cooldown, with `include_rejected`),
    /// `after` has passed since the last message, the last session has expired, and
    /// fewer than `max` reminders were queued. The target goes back to `pending` with
    /// `step + 1` and reason `reminder`; the ledger still decides whether a session
    /// may be generated. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_reminders(
        &self,
        campaign_id: i64,
        reminders: &Reminders,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.target_requeue_reminders_for(campaign_id, reminders, &Audience::default(), now).await
    }

    /// [`Store::target_requeue_reminders`], leaving out the users the audience's
    /// compliance exclusions keep out (`exclude_rejection_codes`, `max_attempts`): a
    /// user finally rejected after the first message gets no reminder.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_requeue_reminders_for(
        &self,
        campaign_id: i64,
        reminders: &Reminders,
        audience: &Audience,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let excluded = AudienceSql::exclusions_only(audience, 6);
        let now_ms = to_millis(now);
        let after_ms = i64::try_from(reminders.after.0.as_millis()).unwrap_or(i64::MAX / 4);
        let cooldown = policy::rejection_cooldown().num_milliseconds();
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "UPDATE campaign_targets SET status = 'pending', step = step + 1, reason = 'reminder', \
               not_before = NULL, attempts = 0, lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'notified' AND step < $3 AND notified_at <= $4 \
               AND (session_expires_at IS NULL OR session_expires_at <= $2) \
               AND EXISTS (SELECT 1 FROM users u WHERE u.user_id = campaign_targets.user_id AND {REACHABLE} \
                 AND (u.verification_state = 'UNVERIFIED' \
                      OR ($5 = 1 AND u.verification_state = 'REJECTED' \
                          AND COALESCE(u.rejected_at, $2) + {cooldown} <= $2)) \
                 AND {exclusions})",
            exclusions = excluded.clause(),
        );
        let q = sqlx::query(AssertSqlSafe(sql))
            .bind(campaign_id)
            .bind(now_ms)
            .bind(i64::from(reminders.max))
            .bind(now_ms.saturating_sub(after_ms))
            .bind(i64::from(reminders.include_rejected));
        let n = bind_all(q, &excluded.binds)
            .execute(&mut *tx)
            .await
            .map_err(query_err("target_requeue_reminders"))?
            .rows_affected();
        if n > 0 {
            // one audit event per re-queued target, set-based as well
            events_reminders_queued_in_tx(&mut tx, campaign_id, now_ms).await?;
        }
        // The stamped targets that came due and did not qualify wait on (see
        // `followup`): for their time or their session's expiry when either is
        // ahead, for a rejected user's cooldown when the campaign reminds the
        // rejected, else for a change of the user's state.
        let user = |col: &str| format!("(SELECT u.{col} FROM users u WHERE u.user_id = campaign_targets.user_id)");
        let push = format!(
            "UPDATE campaign_targets SET not_before = CASE \
                 WHEN COALESCE(notified_at, 0) + $3 > $2 OR COALESCE(session_expires_at, 0) > $2 THEN \
                   CASE WHEN COALESCE(session_expires_at, 0) > COALESCE(notified_at, 0) + $3 THEN session_expires_at \
                        ELSE COALESCE(notified_at, 0) + $3 END \
                 WHEN $5 = 1 AND {state} = 'REJECTED' AND COALESCE({rejected}, 0) + {cooldown} > $2 \
                   THEN {rejected} + {cooldown} \
                 ELSE {NO_REMINDER_YET} END \
             WHERE campaign_id = $1 AND status = 'notified' AND step < $4 \
               AND not_before IS NOT NULL AND not_before <= $2",
            state = user("verification_state"),
            rejected = user("rejected_at"),
        );
        sqlx::query(AssertSqlSafe(push))
            .bind(campaign_id)
            .bind(now_ms)
            .bind(after_ms)
            .bind(i64::from(reminders.max))
            .bind(i64::from(reminders.include_rejected))
            .execute(&mut *tx)
            .await
            .map_err(query_err("target_requeue_reminders wait"))?;
        tx.commit().await.map_err(query_err("target_requeue_reminders commit"))?;
        Ok(n)
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
                let status: String = r.try_get("status")?;
                let reason: Option<String> = r.try_get("reason")?;
                let decode = |e: crate::domain::status::UnknownValue| sqlx::Error::Decode(Box::new(e));
                Ok(StatusCount {
                    status: status.parse().map_err(decode)?,
                    reason: reason.map(|r| r.parse()).transpose().map_err(decode)?,
                    count: r.try_get("n")?,
                })
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
        state_confirmed_at: r.try_get::<Option<i64>, _>("state_confirmed_at")?.map(super::from_millis),
        tokens: token_row(r)?,
        email_undeliverable: r.try_get::<Option<i64>, _>("email_undeliverable_at")?.is_some(),
        complained: r.try_get::<Option<i64>, _>("complained_at")?.is_some(),
    })
}

/// A target's settlement: what [`Store::target_settle`] and the ledger's
/// transitions record for a target `worker` claimed.
#[derive(Debug, Clone)]
pub struct SettleParams<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    /// The worker that must still hold the target's claim.
    pub worker: &'a str,
    /// Where the target goes: `skipped`, `failed`, `deferred` (with `not_before`), or
    /// `pending` (retry later, with `not_before`).
    pub to: Transition,
    pub now: DateTime<Utc>,
}

/// A target a worker claimed, owned, as the transitions' batched writes carry it.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub campaign_id: i64,
    pub user_id: String,
    /// The worker that must still hold the claim.
    pub worker: String,
    pub now: DateTime<Utc>,
}

impl Claimed {
    pub(crate) fn new(campaign_id: i64, user_id: &str, worker: &str, now: DateTime<Utc>) -> Self {
        Self { campaign_id, user_id: user_id.to_owned(), worker: worker.to_owned(), now }
    }

    /// Records `to` for the target (see [`settle_in_tx`]); whether the claim held.
    pub(crate) async fn settle(&self, tx: &mut Tx, to: Transition) -> Result<bool, StoreError> {
        let p = SettleParams {
            campaign_id: self.campaign_id,
            user_id: &self.user_id,
            worker: &self.worker,
            to,
            now: self.now,
        };
        settle_in_tx(tx, &p).await
    }

    /// Settles the target when the policy holds its user back (deferred or
    /// skipped); whether it did.
    pub(crate) async fn hold_back(&self, tx: &mut Tx, verdict: Verdict) -> Result<bool, StoreError> {
        let to = match verdict {
            Verdict::Eligible => return Ok(false),
            Verdict::Skip(reason) => Transition::skip(reason),
            Verdict::Defer { reason, until } => Transition::defer(reason, until),
        };
        self.settle(tx, to).await?;
        Ok(true)
    }
}

/// [`SettleParams`], owned, as a batched write.
struct Settle {
    claim: Claimed,
    to: Transition,
}

impl BatchWrite for Settle {
    /// Whether the claim still held.
    type Out = bool;

    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(w.claim.settle(tx, w.to).await?);
            }
            Ok(out)
        })
    }
}

/// [`Store::target_settle`] inside a transaction already open: the target (while
/// still `p.worker`'s claim) and its `target.<status>` event. A wait for the send
/// window gives the attempt back.
pub(crate) async fn settle_in_tx(tx: &mut Tx, p: &SettleParams<'_>) -> Result<bool, StoreError> {
    let now_ms = to_millis(p.now);
    let Transition { status, reason, not_before } = p.to;
    let n = sqlx::query(concat!(
        "UPDATE campaign_targets SET status = $4, reason = $5, not_before = $6, lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = $7, \
           finalized_at = CASE WHEN $4 IN ('skipped', 'failed') THEN $7 ELSE NULL END, \
           attempts = CASE WHEN $5 = 'send_window' AND attempts > 0 THEN attempts - 1 ELSE attempts END \
         WHERE ",
        our_target!()
    ))
    .bind(p.campaign_id)
    .bind(p.user_id)
    .bind(p.worker)
    .bind(status.as_str())
    .bind(reason.as_str())
    .bind(not_before.map(to_millis))
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_settle"))?
    .rows_affected();
    if n == 1 {
        event_in_tx(
            tx,
            p.now,
            p.worker,
            &format!("target.{status}"),
            Some(p.campaign_id),
            Some(p.user_id),
            &serde_json::json!({ "reason": reason.as_str(), "not_before": not_before }),
        )
        .await?;
    }
    Ok(n == 1)
}

/// The target's side of a recorded delivery, for both engines, as `UPDATE
/// campaign_targets t SET …` (the caller adds what it joins and the fence): when
/// `ok` (an SQL boolean) the target is `notified`, otherwise `failed` with the
/// reason `why` (`delivery_failed`, re-queued by a later run, or `delivery_unknown`,
/// not); either way the claim is released and the session's expiry is taken from
/// `expires_at`. `at` is the time.
pub(crate) fn delivery_target_update(ok: &str, why: &str, at: &str, expires_at: &str) -> String {
    format!(
        "UPDATE campaign_targets AS t SET \
           status = CASE WHEN {ok} THEN 'notified' ELSE 'failed' END, \
           reason = CASE WHEN {ok} THEN NULL ELSE {why} END, \
           notifications = notifications + CASE WHEN {ok} THEN 1 ELSE 0 END, \
           notified_at = CASE WHEN {ok} THEN {at} ELSE notified_at END, \
           first_notified_at = CASE WHEN {ok} THEN COALESCE(first_notified_at, {at}) ELSE first_notified_at END, \
           finalized_at = CASE WHEN {ok} THEN finalized_at ELSE {at} END, \
           lease_owner = NULL, lease_expires_at = NULL, sessions = sessions + 1, updated_at = {at}, \
           session_expires_at = {expires_at}, not_before = NULL"
    )
}

/// One delivery's target, on its own (SQLite; Postgres writes a group's in the
/// delivery statement of `store::ledger`, from [`delivery_target_update`]).
pub(crate) struct TargetDelivered<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub worker: &'a str,
    /// The session whose expiry the target takes.
    pub session_id: i64,
    /// Delivered (`notified`), or not (`failed` with `reason`).
    pub ok: bool,
    pub reason: Option<TargetReason>,
    pub now: DateTime<Utc>,
}

/// Records [`TargetDelivered`] while the target is still the worker's claim;
/// returns whether it was.
pub(crate) async fn target_delivered_in_tx(tx: &mut Tx, d: &TargetDelivered<'_>) -> Result<bool, StoreError> {
    let sql = format!(
        "{} WHERE {}",
        delivery_target_update(
            "$6",
            "$7",
            "$4",
            "(SELECT expires_at FROM verification_sessions WHERE session_id = $5)"
        ),
        our_target!()
    );
    let n = sqlx::query(AssertSqlSafe(sql))
        .bind(d.campaign_id)
        .bind(d.user_id)
        .bind(d.worker)
        .bind(to_millis(d.now))
        .bind(d.session_id)
        .bind(d.ok)
        .bind(d.reason.map(TargetReason::as_str))
        .execute(&mut **tx)
        .await
        .map_err(query_err("session_record_delivery target"))?
        .rows_affected();
    Ok(n == 1)
}

/// A click's session reached the person: the target takes its expiry (a run syncs
/// the user once it has expired, and a reminder waits for it) and counts it.
pub(crate) async fn target_click_session(store: &Store, session_id: i64, expires_at: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaign_targets SET session_expires_at = $2, sessions = sessions + 1 \
         WHERE campaign_id = (SELECT campaign_id FROM verification_sessions WHERE session_id = $1) \
           AND user_id = (SELECT user_id FROM verification_sessions WHERE session_id = $1)",
    )
    .bind(session_id)
    .bind(expires_at)
    .execute(store.pool())
    .await
    .map_err(query_err("session_record_click target"))?;
    Ok(())
}

/// Counts a click on the target and dates its first; `false` when there is no such
/// target.
pub(crate) async fn target_clicked_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let first = sqlx::query(
        "UPDATE campaign_targets SET clicks = clicks + 1, clicked_at = COALESCE(clicked_at, $3), updated_at = $3 \
         WHERE campaign_id = $1 AND user_id = $2 RETURNING clicks",
    )
    .bind(campaign_id)
    .bind(user_id)
    .bind(to_millis(now))
    .fetch_optional(&mut **tx)
    .await
    .map_err(query_err("link_click_start target"))?;
    Ok(first.is_some())
}

/// Claimed targets whose message carried a link: `notified`
/// while still the worker's claim, in one statement; returns those it moved. No
/// session yet: `session_expires_at` stays empty until a click makes one, so that a
/// reminder waits only for `reminders.after`.
pub(crate) async fn targets_notified_by_link_in_tx(
    backend: Backend,
    notified: &[&Claimed],
    tx: &mut Tx,
) -> Result<HashSet<String>, StoreError> {
    if notified.is_empty() {
        return Ok(HashSet::new());
    }
    let rows =
        json_rows(notified.iter().map(|c| serde_json::json!([c.campaign_id, c.user_id, c.worker, to_millis(c.now)])));
    let from = json_args(backend, &[("c", Arg::Int), ("u", Arg::Text), ("w", Arg::Text), ("at", Arg::Int)]);
    let sql = format!(
        "UPDATE campaign_targets SET status = 'notified', reason = NULL, \
           notifications = notifications + 1, notified_at = x.at, \
           first_notified_at = COALESCE(first_notified_at, x.at), lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = x.at, session_expires_at = NULL, not_before = NULL \
         FROM ({from}) AS x WHERE campaign_targets.campaign_id = x.c AND campaign_targets.user_id = x.u \
           AND {ours} RETURNING campaign_targets.user_id",
        ours = ours!("campaign_targets.", "x.w"),
    );
    returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "link_record_delivery target").await
}

/// A target of the user that has had a message no later than the change (`$2`), in
/// a campaign whose outcomes are still tracked at `$3` (a completed campaign's, for
/// its `track_outcomes_for`).
const AFTER_MESSAGE: &str = "user_id = $1 AND notified_at IS NOT NULL AND notified_at <= $2 \
     AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.campaign_id = campaign_targets.campaign_id \
       AND c.outcomes_until < $3)";

/// How a user's new state moves their targets that had a message no later than
/// the change (see `outcomes::apply_state_in_tx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterMessage {
    /// The user started (PENDING or a decision): `started_at`, the first time.
    Started,
    /// VERIFIED: the target converts.
    Converted,
    /// REJECTED: the outcome is recorded (the target stays where it is).
    Rejected,
}

impl AfterMessage {
    /// The audit event of each target it moved.
    pub(crate) fn event_kind(self) -> &'static str {
        match self {
            AfterMessage::Started => "target.started",
            AfterMessage::Converted => "target.converted",
            AfterMessage::Rejected => "target.rejected",
        }
    }
}

/// Moves the user's targets for `which`, binding `$1` user, `$2` the change's time,
/// `$3` now; returns the campaigns of the targets it moved.
pub(crate) async fn targets_after_message_in_tx(
    tx: &mut Tx,
    which: AfterMessage,
    user_id: &str,
    at_ms: i64,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    let sql = match which {
        AfterMessage::Started => format!(
            "UPDATE campaign_targets SET started_at = $2, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND started_at IS NULL RETURNING campaign_id"
        ),
        AfterMessage::Converted => format!(
            "UPDATE campaign_targets SET status = 'converted', reason = NULL, not_before = NULL, \
               outcome = 'verified', outcome_at = $2, finalized_at = $3, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') RETURNING campaign_id"
        ),
        AfterMessage::Rejected => format!(
            "UPDATE campaign_targets SET outcome = 'rejected', outcome_at = $2, updated_at = $3 \
             WHERE {AFTER_MESSAGE} AND status IN ('notified', 'pending', 'deferred') \
               AND (outcome IS NULL OR outcome_at < $2) RETURNING campaign_id"
        ),
    };
    sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(at_ms)
        .bind(to_millis(now))
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("user_apply_state targets"))?
        .iter()
        .map(|r| r.try_get::<i64, _>("campaign_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err("user_apply_state targets"))
}

/// What [`target_bounced_in_tx`] moves: the target notified at `step` with the
/// message that bounced.
pub(crate) struct TargetBounced<'a> {
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub step: i64,
    pub diagnostic: &'a str,
    /// Re-queue for the campaign's fallback channel (`pending` / `fallback`, the
    /// next step, due now) instead of `failed` / `bounced`.
    pub fallback: bool,
    pub now: DateTime<Utc>,
}

/// A notified target's message bounced for good. Every such target keeps when and
/// why (`bounced_at`, `bounce_diagnostic`: the funnel's `bounced` stage, the
/// report's columns). Returns whether the target moved (it was still `notified` at
/// that step).
pub(crate) async fn target_bounced_in_tx(tx: &mut Tx, b: TargetBounced<'_>) -> Result<bool, StoreError> {
    let sql = if b.fallback {
        "UPDATE campaign_targets SET status = 'pending', reason = 'fallback', step = step + 1, attempts = 0, \
           not_before = NULL, lease_owner = NULL, lease_expires_at = NULL, \
           bounced_at = COALESCE(bounced_at, $4), bounce_diagnostic = $5, updated_at = $4 \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status = 'notified'"
    } else {
        "UPDATE campaign_targets SET status = 'failed', reason = 'bounced', not_before = NULL, \
           lease_owner = NULL, lease_expires_at = NULL, finalized_at = $4, \
           bounced_at = COALESCE(bounced_at, $4), bounce_diagnostic = $5, updated_at = $4 \
         WHERE campaign_id = $1 AND user_id = $2 AND step = $3 AND status = 'notified'"
    };
    let n = sqlx::query(sql)
        .bind(b.campaign_id)
        .bind(b.user_id)
        .bind(b.step)
        .bind(to_millis(b.now))
        .bind(b.diagnostic)
        .execute(&mut **tx)
        .await
        .map_err(query_err("target_bounced"))?
        .rows_affected();
    if n == 0 {
        // it moved on (a reminder, a conversion): it still keeps the bounce
        sqlx::query(
            "UPDATE campaign_targets SET bounced_at = COALESCE(bounced_at, $3), \
               bounce_diagnostic = COALESCE(bounce_diagnostic, $4) \
             WHERE campaign_id = $1 AND user_id = $2",
        )
        .bind(b.campaign_id)
        .bind(b.user_id)
        .bind(to_millis(b.now))
        .bind(b.diagnostic)
        .execute(&mut **tx)
        .await
        .map_err(query_err("target_bounced keep"))?;
    }
    Ok(n > 0)
}

/// A forgotten user's open targets are settled `skipped` / `forgotten`, and every
/// target of theirs loses its bounce diagnostic (it says what a server said about
/// their mailbox). Returns how many targets were settled.
pub(crate) async fn targets_forget_user_in_tx(
    tx: &mut Tx,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let now_ms = to_millis(now);
    let settled = sqlx::query(
        "UPDATE campaign_targets SET status = 'skipped', reason = 'forgotten', not_before = NULL, \
           lease_owner = NULL, lease_expires_at = NULL, finalized_at = $2, updated_at = $2 \
         WHERE user_id = $1 AND status IN ('pending', 'deferred', 'claimed')",
    )
    .bind(user_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_forget targets"))?
    .rows_affected();
    sqlx::query("UPDATE campaign_targets SET bounce_diagnostic = NULL WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_forget bounce diagnostics"))?;
    Ok(settled)
}

impl Store {
    /// The claimed target's message went out through the campaign's fallback
    /// channel (the funnel's `fallback sent`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn target_fallback_sent(
        &self,
        campaign_id: i64,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE campaign_targets SET fallback_sent_at = COALESCE(fallback_sent_at, $3) \
             WHERE campaign_id = $1 AND user_id = $2",
        )
        .bind(campaign_id)
        .bind(user_id)
        .bind(to_millis(now))
        .execute(self.pool())
        .await
        .map_err(query_err("target_fallback_sent"))?;
        Ok(())
    }
}
