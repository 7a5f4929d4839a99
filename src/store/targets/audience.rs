//! The audience as SQL (`AudienceSql`): who a campaign targets, added in one
//! set-based `INSERT … SELECT`, and the compliance exclusions that skip targets
//! already added.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use crate::domain::VerificationState;
use crate::domain::spec::Audience;
use crate::store::events::events_targets_skipped_in_tx;
use crate::store::users::REACHABLE;
use crate::store::{Backend, Store, StoreError, query_err, to_millis};

/// What a targeting pass added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targeted {
    /// New targets.
    pub added: u64,
    /// Of those, the ones added as `deferred` (REJECTED inside the cooldown).
    pub deferred: u64,
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
                .map(|t| crate::store::users::tag_match_sql(backend, this.mark(Bind::Text(format!(",{t},")))))
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
}
