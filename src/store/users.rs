//! The user directory: who can be asked to verify, their state, and their sealed
//! refresh token.
//!
//! [`User`] never carries the token, not even sealed: anything printable stays free
//! of it, and the one caller that needs it asks [`Store::user_token_load`].
//!
//! An upsert is one multi-row `INSERT … ON CONFLICT (user_id) DO UPDATE` per
//! [`UPSERT_ROWS_PER_STATEMENT`] rows on both engines, all of one call in one write
//! transaction: one statement round trip for hundreds of rows, and sqlx caches the
//! prepared statement. Imports of millions of rows go through [`UserBulkUpsert`],
//! which stages the rows and writes them at once in key order (see `bulk`).
//!
//! What an upsert keeps from the stored row: a refresh token when the new row has
//! none (a directory export without tokens must not log everyone out), a sign-up
//! time when the new row has none, the state-change time when the state did not
//! change, and the later of the stored and the new rejection time (forgetting a
//! rejection, or an older file moving it back, would allow a session inside the 24 h
//! cooldown; Postgres's `GREATEST` and SQLite's `MAX` differ on NULLs, see
//! `greatest_sql`). A REJECTED user left with no rejection time is dated with the
//! import's time, the first time we see them REJECTED (`fill_first_seen_sql`): the
//! policy reads an unknown time as "now", a cooldown that would never end.
//! Everything else is the directory's to overwrite.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, Tx, json_args, json_rows, returned_user_ids};
use super::{Backend, Store, StoreError, from_millis, greatest_sql, query_err, to_millis};
use crate::domain::{EmailAddress, Region, UserId, UserStanding, VerificationState};

/// Rows per multi-row statement: 17 parameters a row stays far below both engines'
/// limits (Postgres 65535, SQLite 32766).
pub const UPSERT_ROWS_PER_STATEMENT: usize = 500;

/// One user as the directory describes it, for [`Store::user_upsert_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct UserUpsert {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// BCP 47, like `en-GB`.
    pub locale: Option<String>,
    /// IANA, like `Europe/London`.
    pub timezone: Option<String>,
    pub region: Region,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub verification_state: VerificationState,
    /// `None` keeps the stored value.
    pub rejected_at: Option<DateTime<Utc>>,
    /// Each satisfies `domain::spec::is_tag`.
    pub tags: Vec<String>,
    /// `None` keeps the stored value.
    pub signed_up_at: Option<DateTime<Utc>>,
    /// `None` keeps the stored token.
    pub token: Option<SealedToken>,
    /// When the directory knew `verification_state` to be true; `None`: the time of
    /// the upsert. The later confirmation wins: a row confirmed before what is
    /// stored (say, a webhook since) keeps the stored state.
    pub state_confirmed_at: Option<DateTime<Utc>>,
    /// A valid access token, sealed, and when it stops being usable; `None` keeps
    /// the stored one.
    pub access: Option<(SealedToken, DateTime<Utc>)>,
}

/// A stored user, without the token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct User {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub region: Region,
    pub country: Option<String>,
    pub verification_state: VerificationState,
    pub state_changed_at: Option<DateTime<Utc>>,
    /// When the state was last confirmed, and by what (`api`, `webhook`, `sync`,
    /// `import`).
    pub state_confirmed_at: Option<DateTime<Utc>>,
    pub state_source: Option<String>,
    pub rejected_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Whether a sealed refresh token is on file.
    pub has_token: bool,
    /// The key the token is sealed with.
    pub token_key_id: Option<String>,
    /// Set when Baanx refused the token: the user must consent again.
    pub consent_required_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub signed_up_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub synced_at: Option<DateTime<Utc>>,
    /// Since when the address is undeliverable (a hard bounce, or three soft ones
    /// in 7 days), and why: the status code and the server's scrubbed words.
    pub email_undeliverable_at: Option<DateTime<Utc>>,
    pub email_undeliverable_reason: Option<String>,
    /// When the user reported a message as abuse.
    pub complained_at: Option<DateTime<Utc>>,
}

/// Which users to list or count; every field present must match.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub state: Option<VerificationState>,
    pub region: Option<Region>,
    pub tag: Option<String>,
    /// Only users whose address is undeliverable or who complained.
    pub undeliverable: bool,
}

/// Tags as stored: `,a,b,` (or empty), so that one tag is the substring `,tag,`.
pub fn tags_to_column(tags: &[String]) -> String {
    if tags.is_empty() { String::new() } else { format!(",{},", tags.join(",")) }
}

/// The stored `,a,b,` form back to a list.
pub fn tags_from_column(s: &str) -> Vec<String> {
    s.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// SQL that is true when the `tags` column holds the tag bound at parameter
/// `$param` (bind `,tag,`). A position search rather than `LIKE`: SQLite's `LIKE`
/// ignores ASCII case and Postgres's does not, and tags may hold `_`, which `LIKE`
/// would read as a wildcard; `instr`/`strpos` are exact on both.
pub fn tag_match_sql(backend: Backend, param: usize) -> String {
    match backend {
        Backend::Postgres => format!("strpos(tags, ${param}) > 0"),
        Backend::Sqlite => format!("instr(tags, ${param}) > 0"),
    }
}

const USER_COLUMNS: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, state_changed_at, state_confirmed_at, state_source, rejected_at, consecutive_failures, \
     last_failure_at, refresh_token_enc IS NOT NULL AS has_token, token_key_id, consent_required_at, tags, signed_up_at, \
     created_at, updated_at, synced_at, email_undeliverable_at, email_undeliverable_reason, complained_at";

pub(crate) fn decode<E: std::error::Error + Send + Sync + 'static>(e: E) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_millis))
}

fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    let has_token = match row.try_get::<bool, _>("has_token") {
        Ok(b) => b,
        // SQLite answers a comparison with an integer
        Err(_) => row.try_get::<i64, _>("has_token")? != 0,
    };
    Ok(User {
        user_id: UserId::parse(&row.try_get::<String, _>("user_id")?).map_err(decode)?,
        email: EmailAddress::parse(&row.try_get::<String, _>("email")?).map_err(decode)?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        locale: row.try_get("locale")?,
        timezone: row.try_get("timezone")?,
        region: row.try_get::<String, _>("region")?.parse().map_err(decode)?,
        country: row.try_get("country")?,
        verification_state: row.try_get::<String, _>("verification_state")?.parse().map_err(decode)?,
        state_changed_at: opt_time(row, "state_changed_at")?,
        state_confirmed_at: opt_time(row, "state_confirmed_at")?,
        state_source: row.try_get("state_source")?,
        rejected_at: opt_time(row, "rejected_at")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        last_failure_at: opt_time(row, "last_failure_at")?,
        has_token,
        token_key_id: row.try_get("token_key_id")?,
        consent_required_at: opt_time(row, "consent_required_at")?,
        tags: tags_from_column(&row.try_get::<String, _>("tags")?),
        signed_up_at: opt_time(row, "signed_up_at")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        synced_at: opt_time(row, "synced_at")?,
        email_undeliverable_at: opt_time(row, "email_undeliverable_at")?,
        email_undeliverable_reason: row.try_get("email_undeliverable_reason")?,
        complained_at: opt_time(row, "complained_at")?,
    })
}

/// The columns an upsert writes, in binding order: 19 from the row, then three times.
const UPSERT_COLUMNS: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, rejected_at, refresh_token_enc, token_key_id, tags, signed_up_at, \
     state_confirmed_at, state_source, access_token_enc, access_token_key_id, access_token_fresh_until, \
     state_changed_at, created_at, updated_at";

/// Values an upsert binds per row from [`UserUpsert`] ([`bind_row`]).
const ROW_VALUES: usize = 19;

/// What an existing row keeps and takes (see the module docs). A forgotten user's
/// row takes nothing: an import cannot bring an erased person's data back.
fn upsert_on_conflict(backend: Backend) -> String {
    format!(
        "{UPSERT_ON_CONFLICT_HEAD}rejected_at = {}, {UPSERT_ON_CONFLICT_TAIL}",
        greatest_sql(backend, &["excluded.rejected_at", "users.rejected_at"])
    )
}

/// The state, its change time and its confirmation move only when the row's
/// confirmation is no earlier than the stored one ([`LATER_CONFIRMATION`]). A
/// different address clears what bounces and complaints said of the old one.
const UPSERT_ON_CONFLICT_HEAD: &str = " ON CONFLICT (user_id) DO UPDATE SET \
     email_undeliverable_at = CASE WHEN lower(users.email) = lower(excluded.email) \
         THEN users.email_undeliverable_at ELSE NULL END, \
     email_undeliverable_reason = CASE WHEN lower(users.email) = lower(excluded.email) \
         THEN users.email_undeliverable_reason ELSE NULL END, \
     complained_at = CASE WHEN lower(users.email) = lower(excluded.email) THEN users.complained_at ELSE NULL END, \
     email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name, \
     locale = excluded.locale, timezone = excluded.timezone, region = excluded.region, \
     country = excluded.country, \
     state_changed_at = CASE WHEN users.verification_state = excluded.verification_state \
           OR NOT (users.state_confirmed_at IS NULL OR users.state_confirmed_at <= excluded.state_confirmed_at) \
         THEN users.state_changed_at ELSE excluded.state_changed_at END, \
     verification_state = CASE WHEN users.state_confirmed_at IS NULL \
           OR users.state_confirmed_at <= excluded.state_confirmed_at \
         THEN excluded.verification_state ELSE users.verification_state END, \
     state_source = CASE WHEN users.state_confirmed_at IS NULL \
           OR users.state_confirmed_at <= excluded.state_confirmed_at \
         THEN excluded.state_source ELSE users.state_source END, \
     state_confirmed_at = CASE WHEN users.state_confirmed_at IS NULL \
           OR users.state_confirmed_at <= excluded.state_confirmed_at \
         THEN excluded.state_confirmed_at ELSE users.state_confirmed_at END, \
     access_token_enc = COALESCE(excluded.access_token_enc, users.access_token_enc), \
     access_token_key_id = CASE WHEN excluded.access_token_enc IS NULL \
         THEN users.access_token_key_id ELSE excluded.access_token_key_id END, \
     access_token_fresh_until = CASE WHEN excluded.access_token_enc IS NULL \
         THEN users.access_token_fresh_until ELSE excluded.access_token_fresh_until END, ";

const UPSERT_ON_CONFLICT_TAIL: &str = "refresh_token_enc = COALESCE(excluded.refresh_token_enc, users.refresh_token_enc), \
     token_key_id = CASE WHEN excluded.refresh_token_enc IS NULL \
         THEN users.token_key_id ELSE excluded.token_key_id END, \
     consent_required_at = CASE WHEN excluded.refresh_token_enc IS NULL \
         THEN users.consent_required_at ELSE NULL END, \
     tags = excluded.tags, \
     signed_up_at = COALESCE(excluded.signed_up_at, users.signed_up_at), \
     updated_at = excluded.updated_at \
     WHERE users.forgotten_at IS NULL";

/// `rows` groups of `per_row` placeholders. Postgres numbers them (`$1…`); SQLite
/// gets anonymous `?`: sqlx finds a named parameter's index through
/// `sqlite3_bind_parameter_name`, a linear search, which made binding a statement of
/// 7000 parameters quadratic (83% of an import's time, measured with perf).
fn values_sql(sql: &mut String, backend: Backend, rows: usize, per_row: usize) {
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for i in 0..per_row {
            if i > 0 {
                sql.push(',');
            }
            match backend {
                Backend::Postgres => sql.push_str(&format!("${}", 1 + r * per_row + i)),
                Backend::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
}

/// The upsert for `rows` rows: 22 parameters a row, the row's 19 then "now" thrice.
fn upsert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::with_capacity(1400 + rows * 100);
    sql.push_str(&format!("INSERT INTO users ({UPSERT_COLUMNS}) VALUES "));
    values_sql(&mut sql, backend, rows, ROW_VALUES + 3);
    sql.push_str(&upsert_on_conflict(backend));
    sql
}

/// Gives the REJECTED users among those an upsert just wrote (`users_written`, a
/// subquery of user ids) that still have no rejection time the time they were first
/// seen REJECTED, `now` (a placeholder): without it the policy reads an unknown
/// time as "now" at every evaluation and the 24 h cooldown never ends. A separate
/// statement because the upsert's row is also its `excluded` row: filling it there
/// would read as a rejection at import time and, under "the later time wins",
/// replace an older time already on file.
fn fill_first_seen_sql(now: &str, users_written: &str) -> String {
    format!(
        "UPDATE users SET rejected_at = {now} \
         WHERE verification_state = 'REJECTED' AND rejected_at IS NULL AND user_id IN ({users_written})"
    )
}

/// Binds one row's [`ROW_VALUES`] values, in [`UPSERT_COLUMNS`] order; a row with no
/// confirmation time takes `confirmed_default` (`None`: left NULL, for staging).
fn bind_row<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    r: &UserUpsert,
    confirmed_default: Option<i64>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let access = r.access.as_ref();
    q.bind(r.user_id.as_str().to_owned())
        .bind(r.email.as_str().to_owned())
        .bind(r.first_name.clone())
        .bind(r.last_name.clone())
        .bind(r.locale.clone())
        .bind(r.timezone.clone())
        .bind(r.region.as_str())
        .bind(r.country.clone())
        .bind(r.verification_state.as_str())
        .bind(r.rejected_at.map(to_millis))
        .bind(r.token.as_ref().map(|t| t.ciphertext.clone()))
        .bind(r.token.as_ref().map(|t| t.key_id.clone()))
        .bind(tags_to_column(&r.tags))
        .bind(r.signed_up_at.map(to_millis))
        .bind(r.state_confirmed_at.map(to_millis).or(confirmed_default))
        .bind("import")
        .bind(access.map(|(t, _)| t.ciphertext.clone()))
        .bind(access.map(|(t, _)| t.key_id.clone()))
        .bind(access.map(|(_, until)| to_millis(*until)))
}

/// Runs the upsert statements for `rows` (no user id twice) on `conn`.
async fn upsert_on(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    rows: &[&UserUpsert],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = to_millis(now);
    for chunk in rows.chunks(UPSERT_ROWS_PER_STATEMENT) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(upsert_sql(backend, chunk.len())));
        for r in chunk {
            q = bind_row(q, r, Some(now_ms)).bind(now_ms).bind(now_ms).bind(now_ms);
        }
        q.execute(&mut *conn).await.map_err(query_err("user_upsert_batch"))?;
    }
    let unknown: Vec<&str> = rows
        .iter()
        .filter(|r| r.verification_state == VerificationState::Rejected && r.rejected_at.is_none())
        .map(|r| r.user_id.as_str())
        .collect();
    if !unknown.is_empty() {
        let ids = json_rows(unknown.iter().map(|u| serde_json::json!([u])));
        let from = json_args(backend, &[("u", Arg::Text)]);
        sqlx::query(sqlx::AssertSqlSafe(fill_first_seen_sql("$2", &format!("SELECT x.u FROM ({from}) AS x"))))
            .bind(ids)
            .bind(now_ms)
            .execute(&mut *conn)
            .await
            .map_err(query_err("user_upsert_batch first seen"))?;
    }
    Ok(())
}

/// `rows` without repeated user ids, the last of each kept: one statement cannot
/// touch a row twice (Postgres refuses).
fn last_of_each(rows: &[UserUpsert]) -> Vec<&UserUpsert> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        last.insert(r.user_id.as_str(), i);
    }
    rows.iter().enumerate().filter(|(i, r)| last[r.user_id.as_str()] == *i).map(|(_, r)| r).collect()
}

impl Store {
    /// Inserts or updates `rows` by user id in one write transaction (see the module
    /// docs for what an update keeps). When one user id appears twice, the later row
    /// wins. Returns the number of distinct users written.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing of the call is written then.
    pub async fn user_upsert_batch(&self, rows: &[UserUpsert], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let unique = last_of_each(rows);
        if unique.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        upsert_on(&mut tx, self.backend(), &unique, now).await?;
        tx.commit().await.map_err(query_err("user_upsert_batch commit"))?;
        Ok(unique.len() as u64)
    }

    /// One user, or `None`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_get(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("user_get"))?;
        row.as_ref().map(user_from_row).transpose().map_err(query_err("user_get"))
    }

    /// Up to `limit` users matching `filter` with a user id above `after`, in user id
    /// order. Call again with the last id to page through the rest.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_list(
        &self,
        filter: &UserFilter,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let (mut sql, binds) = self.user_where(&format!("SELECT {USER_COLUMNS} FROM users"), filter, after);
        sql.push_str(&format!(" ORDER BY user_id LIMIT {limit}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(query_err("user_list"))?;
        rows.iter().map(user_from_row).collect::<Result<_, _>>().map_err(query_err("user_list"))
    }

    /// How many users match `filter`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_count(&self, filter: &UserFilter) -> Result<i64, StoreError> {
        let (sql, binds) = self.user_where("SELECT COUNT(*) AS n FROM users", filter, None);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let row = q.fetch_one(self.pool()).await.map_err(query_err("user_count"))?;
        row.try_get::<i64, _>("n").map_err(query_err("user_count"))
    }

    /// `base` with a WHERE clause for `filter` and `after`, and the text values to bind
    /// in order.
    fn user_where(&self, base: &str, filter: &UserFilter, after: Option<&UserId>) -> (String, Vec<String>) {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        if let Some(s) = filter.state {
            binds.push(s.as_str().to_owned());
            clauses.push(format!("verification_state = ${}", binds.len()));
        }
        if let Some(r) = filter.region {
            binds.push(r.as_str().to_owned());
            clauses.push(format!("region = ${}", binds.len()));
        }
        if let Some(t) = &filter.tag {
            binds.push(format!(",{t},"));
            clauses.push(tag_match_sql(self.backend(), binds.len()));
        }
        if filter.undeliverable {
            clauses.push("(email_undeliverable_at IS NOT NULL OR complained_at IS NOT NULL)".to_owned());
        }
        if let Some(a) = after {
            binds.push(a.as_str().to_owned());
            clauses.push(format!("user_id > ${}", binds.len()));
        }
        let mut sql = base.to_owned();
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        (sql, binds)
    }
}

/// A state `GET /v1/user` just reported, to be recorded in a batch.
pub(crate) struct FreshState<'a> {
    pub user_id: &'a str,
    pub now: DateTime<Utc>,
    /// When the call was made: the confirmation's time.
    pub asked_at: DateTime<Utc>,
    pub state: VerificationState,
}

/// SQL for the `SET` of a confirmation at `at` (a placeholder or column, Unix ms)
/// by `source` (a placeholder or literal): it moves `state_confirmed_at` forward
/// only, and `state_source` with it, so that the later confirmation wins whatever
/// the order the writes arrive in. (Both engines read the old row on the right.)
pub(crate) fn confirm_sql(at: &str, source: &str) -> String {
    let later = format!("(users.state_confirmed_at IS NULL OR users.state_confirmed_at <= {at})");
    format!(
        "state_confirmed_at = CASE WHEN {later} THEN {at} ELSE users.state_confirmed_at END, \
         state_source = CASE WHEN {later} THEN {source} ELSE users.state_source END"
    )
}

/// The fresh states that change nothing, recorded in one statement for all: only
/// `synced_at` moves, and for a user REJECTED as before the rejection time as a
/// sync moves it ([`rejected_at_seen_sql`]). Returns the users it recorded; a
/// change goes the whole way of `outcomes::apply_state_in_tx`, one user at a time.
pub(crate) async fn users_unchanged_states_in_tx(
    backend: Backend,
    fresh: &[FreshState<'_>],
    tx: &mut Tx,
) -> Result<HashSet<String>, StoreError> {
    if fresh.is_empty() {
        return Ok(HashSet::new());
    }
    let rows =
        json_rows(fresh.iter().map(|f| {
            serde_json::json!([f.user_id, to_millis(f.now), f.state.as_str(), to_millis(f.asked_at.min(f.now))])
        }));
    let from = json_args(backend, &[("u", Arg::Text), ("at", Arg::Int), ("st", Arg::Text), ("asked", Arg::Int)]);
    let sql = format!(
        "UPDATE users SET synced_at = x.at, {confirm}, \
           rejected_at = CASE WHEN x.st = 'REJECTED' THEN {rejected} ELSE users.rejected_at END \
         FROM ({from}) AS x \
         WHERE users.user_id = x.u AND users.verification_state = x.st RETURNING users.user_id",
        confirm = confirm_sql("x.asked", "'api'"),
        rejected = rejected_at_seen_sql(backend, "users", None, "x.at")
    );
    returned_user_ids(sqlx::query(AssertSqlSafe(sql)).bind(rows), tx, "user_apply_state unchanged").await
}

/// Locks the user's row until the transaction ends (Postgres; SQLite's
/// `BEGIN IMMEDIATE` serialises writers already), so that two writers reserving
/// for one user at once are serialised.
pub(crate) async fn user_lock_in_tx(tx: &mut Tx, backend: Backend, user_id: &str) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(query_err("session_reserve_click lock"))?;
    }
    Ok(())
}

/// The ledger rows (alias `s`) of sessions Baanx issued, which the user may have
/// taken and been rejected on: `issued` (in flight, or its worker died), `delivered`,
/// `unknown` with an issue time (an interrupted attempt that got a session), and
/// `delivery_failed` (the channel gave up, which may follow a timeout after the
/// message was in fact handed over), and `bounced` (delivered, then bounced). Not `reserved` (no session yet) nor `api_failed`
/// (none was made): neither has an issue time.
const ISSUED_SESSION: &str =
    "s.issued_at IS NOT NULL AND s.status IN ('issued', 'delivered', 'unknown', 'delivery_failed', 'bounced')";

/// SQL for the rejection time of a user of table (or alias) `users` whom a source
/// reports REJECTED: never earlier than the stored time, than `at` (the receive
/// time of a rejection webhook), or than the issue time of the user's latest session
/// (seen REJECTED after we sent a session, they may have been rejected on it, and
/// Baanx counts its 24 h from then: later is the safe side); `first_seen` when none
/// of these is known, so that the cooldown has a fixed end instead of starting
/// again at each evaluation.
pub(crate) fn rejected_at_seen_sql(backend: Backend, users: &str, at: Option<&str>, first_seen: &str) -> String {
    let stored = format!("{users}.rejected_at");
    let issued = format!(
        "(SELECT MAX(s.issued_at) FROM verification_sessions s WHERE s.user_id = {users}.user_id AND {ISSUED_SESSION})"
    );
    let mut values = vec![stored.as_str()];
    values.extend(at);
    values.push(issued.as_str());
    format!("COALESCE({}, {first_seen})", greatest_sql(backend, &values))
}

/// A user's standing, as [`standing_from_row`] reads it, from `users u`.
pub(crate) const STANDING_COLUMNS: &str =
    "u.verification_state, u.rejected_at, u.consecutive_failures, u.last_failure_at";

/// The policy's view of a user, from a row with [`STANDING_COLUMNS`].
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

/// A user reachable by a campaign: a refresh token on file and no pending re-consent.
pub(crate) const REACHABLE: &str = "u.refresh_token_enc IS NOT NULL AND u.consent_required_at IS NULL";

/// A reported state that equals the stored one: only `synced_at` moves (and, for
/// REJECTED, the rejection time as [`rejected_at_seen_sql`] says), without reading
/// the user first. Returns whether it was unchanged (and so recorded).
pub(crate) async fn user_state_unchanged_in_tx(
    tx: &mut Tx,
    backend: Backend,
    p: &StateUnchanged<'_>,
) -> Result<bool, StoreError> {
    let StateUnchanged { user_id, state, now, confirmed: (confirmed_at, source) } = *p;
    let confirm = confirm_sql("$4", "$5");
    let sql = if state == VerificationState::Rejected {
        format!(
            "UPDATE users SET synced_at = $2, {confirm}, rejected_at = {} \
             WHERE user_id = $1 AND verification_state = $3",
            rejected_at_seen_sql(backend, "users", None, "$2")
        )
    } else {
        format!("UPDATE users SET synced_at = $2, {confirm} WHERE user_id = $1 AND verification_state = $3")
    };
    let unchanged = sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(to_millis(now))
        .bind(state.as_str())
        .bind(confirmed_at)
        .bind(source)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_apply_state unchanged"))?
        .rows_affected();
    Ok(unchanged == 1)
}

/// A user's stored state, as [`user_state_lock_in_tx`] reads it (times in Unix ms).
pub(crate) struct StoredState {
    pub state: VerificationState,
    pub changed_at: Option<i64>,
    pub confirmed_at: Option<i64>,
}

/// The user's stored state, when it changed and when it was last confirmed, the
/// row locked on Postgres; `None` for an unknown user.
pub(crate) async fn user_state_lock_in_tx(
    tx: &mut Tx,
    backend: Backend,
    user_id: &str,
) -> Result<Option<StoredState>, StoreError> {
    let lock = match backend {
        Backend::Postgres => {
            "SELECT verification_state, state_changed_at, state_confirmed_at FROM users WHERE user_id = $1 FOR UPDATE"
        }
        Backend::Sqlite => {
            "SELECT verification_state, state_changed_at, state_confirmed_at FROM users WHERE user_id = $1"
        }
    };
    let Some(row) =
        sqlx::query(lock).bind(user_id).fetch_optional(&mut **tx).await.map_err(query_err("user_apply_state read"))?
    else {
        return Ok(None);
    };
    let old: String = row.try_get("verification_state").map_err(query_err("user_apply_state read"))?;
    let old = old.parse::<VerificationState>().map_err(|e| StoreError::Conflict(e.to_string()))?;
    let changed_at: Option<i64> = row.try_get("state_changed_at").map_err(query_err("user_apply_state read"))?;
    let confirmed_at: Option<i64> = row.try_get("state_confirmed_at").map_err(query_err("user_apply_state read"))?;
    Ok(Some(StoredState { state: old, changed_at, confirmed_at }))
}

/// A reported state equal to the stored one, for [`user_state_unchanged_in_tx`].
#[derive(Clone, Copy)]
pub(crate) struct StateUnchanged<'a> {
    pub user_id: &'a str,
    pub state: VerificationState,
    pub now: DateTime<Utc>,
    /// When the source confirmed it (Unix ms), and the source's `state_source`.
    pub confirmed: (i64, &'a str),
}

/// A change of a user's state, for [`user_state_change_in_tx`].
pub(crate) struct StateChange<'a> {
    pub user_id: &'a str,
    pub new: VerificationState,
    /// When it happened (the sender's time, never in our future).
    pub at_ms: i64,
    /// When a sync or a fresh state saw it (not a webhook).
    pub synced: Option<i64>,
    pub now_ms: i64,
    /// When the source confirmed it (Unix ms), and the source's `state_source`.
    pub confirmed: (i64, &'static str),
}

/// Records a change of state: a rejection is dated now (never before a time
/// already known) and counts a consecutive failure; a verification resets the count.
pub(crate) async fn user_state_change_in_tx(
    tx: &mut Tx,
    backend: Backend,
    c: &StateChange<'_>,
) -> Result<(), StoreError> {
    let rejected = (c.new == VerificationState::Rejected).then_some(c.now_ms);
    // 1: a failure, 2: a success resets the count, 0: neither
    let failures: i64 = match c.new {
        VerificationState::Rejected => 1,
        VerificationState::Verified => 2,
        _ => 0,
    };
    let rejected_at = if rejected.is_some() {
        rejected_at_seen_sql(backend, "users", Some("$4"), "$4")
    } else {
        "rejected_at".to_owned()
    };
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE users SET verification_state = $2, state_changed_at = $3, \
           rejected_at = {rejected_at}, last_failure_at = COALESCE($4, last_failure_at), \
           consecutive_failures = CASE WHEN $5 = 1 THEN consecutive_failures + 1 \
                                       WHEN $5 = 2 THEN 0 ELSE consecutive_failures END, \
           synced_at = COALESCE($6, synced_at), updated_at = $7, \
           state_confirmed_at = $8, state_source = $9 \
         WHERE user_id = $1"
    )))
    .bind(c.user_id)
    .bind(c.new.as_str())
    .bind(c.at_ms)
    .bind(rejected)
    .bind(failures)
    .bind(c.synced)
    .bind(c.now_ms)
    .bind(c.confirmed.0)
    .bind(c.confirmed.1)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_apply_state update"))?;
    Ok(())
}

/// A REJECTED user reported REJECTED again, for [`user_rejected_again_in_tx`].
pub(crate) struct RejectedAgain<'a> {
    pub user_id: &'a str,
    /// When a sync or a fresh state saw it (not a webhook).
    pub synced: Option<i64>,
    pub now_ms: i64,
    pub webhook: bool,
    /// When the source confirmed it (Unix ms), and the source's `state_source`.
    pub confirmed: (i64, &'static str),
}

/// REJECTED again: a rejection webhook is a rejection received now; any source may
/// date it after our latest session (see [`rejected_at_seen_sql`]).
pub(crate) async fn user_rejected_again_in_tx(
    tx: &mut Tx,
    backend: Backend,
    r: &RejectedAgain<'_>,
) -> Result<(), StoreError> {
    let at = r.webhook.then_some("$3");
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE users SET synced_at = COALESCE($2, synced_at), rejected_at = {}, {} WHERE user_id = $1",
        rejected_at_seen_sql(backend, "users", at, "$3"),
        confirm_sql("$4", "$5")
    )))
    .bind(r.user_id)
    .bind(r.synced)
    .bind(r.now_ms)
    .bind(r.confirmed.0)
    .bind(r.confirmed.1)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_apply_state rejected again"))?;
    Ok(())
}

/// The same state confirmed again: `synced_at` moves (a sync or a fresh state),
/// and the confirmation when it is the later one.
pub(crate) async fn user_confirmed_in_tx(
    tx: &mut Tx,
    user_id: &str,
    synced: Option<i64>,
    (confirmed_at, source): (i64, &str),
) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE users SET synced_at = COALESCE($2, synced_at), {} WHERE user_id = $1",
        confirm_sql("$3", "$4")
    )))
    .bind(user_id)
    .bind(synced)
    .bind(confirmed_at)
    .bind(source)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_apply_state confirmed"))?;
    Ok(())
}

/// Records (or clears) the user's last rejection code and reason.
pub(crate) async fn user_failure_in_tx(
    tx: &mut Tx,
    user_id: &str,
    code: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET failure_code = $2, failure_reason = $3 WHERE user_id = $1")
        .bind(user_id)
        .bind(code)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_apply_state failure"))?;
    Ok(())
}

mod bulk;
mod tokens;

pub use bulk::UserBulkUpsert;
pub(crate) use tokens::token_row;
pub use tokens::{GrantWrite, LeaseParams, LeasedToken, SealedToken, TokenRow};

/// A hard bounce: the user's address is undeliverable from `now`, for `reason`
/// (the status code and the scrubbed diagnostic). Returns whether it was not
/// already (the first hard bounce since the address came).
pub(crate) async fn user_undeliverable_in_tx(
    tx: &mut Tx,
    user_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE users SET email_undeliverable_at = $2, email_undeliverable_reason = $3, updated_at = $2 \
         WHERE user_id = $1 AND email_undeliverable_at IS NULL",
    )
    .bind(user_id)
    .bind(to_millis(now))
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_undeliverable"))?
    .rows_affected();
    Ok(n > 0)
}

/// A complaint: the user reported a message as abuse (the first time is kept).
pub(crate) async fn user_complained_in_tx(tx: &mut Tx, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET complained_at = COALESCE(complained_at, $2), updated_at = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(to_millis(now))
        .execute(&mut **tx)
        .await
        .map_err(query_err("user_complained"))?;
    Ok(())
}

/// Erases a user's personal data from their row (`users forget`): the address
/// becomes `placeholder`, the names, locale, time zone and every token go, the
/// token version moves on and `forgotten_at` is stamped.
pub(crate) async fn user_erase_in_tx(
    tx: &mut Tx,
    user_id: &str,
    placeholder: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE users SET email = $2, first_name = NULL, last_name = NULL, locale = NULL, timezone = NULL, \
           refresh_token_enc = NULL, token_key_id = NULL, access_token_enc = NULL, access_token_key_id = NULL, \
           access_token_expires_at = NULL, access_token_fresh_until = NULL, token_lease_owner = NULL, \
           token_lease_until = NULL, token_version = token_version + 1, forgotten_at = $3, updated_at = $3, \
           email_undeliverable_reason = NULL \
         WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(placeholder)
    .bind(to_millis(now))
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_forget"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
