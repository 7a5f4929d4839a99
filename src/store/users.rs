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

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::group::{Arg, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, greatest_sql, query_err, to_millis};
use crate::domain::{EmailAddress, Region, UserId, VerificationState};

/// Rows per multi-row statement: 17 parameters a row stays far below both engines'
/// limits (Postgres 65535, SQLite 32766).
pub const UPSERT_ROWS_PER_STATEMENT: usize = 500;

/// A refresh token sealed by `crypto::TokenCipher`, with the id of its key.
/// `Debug` shows the key id and the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    pub key_id: String,
    /// nonce || ciphertext, the user id being the associated data.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedToken {{ key_id: {:?}, {} bytes }}", self.key_id, self.ciphertext.len())
    }
}

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
}

/// Which users to list or count; every field present must match.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub state: Option<VerificationState>,
    pub region: Option<Region>,
    pub tag: Option<String>,
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
     verification_state, state_changed_at, rejected_at, consecutive_failures, last_failure_at, \
     refresh_token_enc IS NOT NULL AS has_token, token_key_id, consent_required_at, tags, signed_up_at, \
     created_at, updated_at, synced_at";

fn decode<E: std::error::Error + Send + Sync + 'static>(e: E) -> sqlx::Error {
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
    })
}

/// The columns an upsert writes, in binding order: 14 from the row, then three times.
const UPSERT_COLUMNS: &str = "user_id, email, first_name, last_name, locale, timezone, region, country, \
     verification_state, rejected_at, refresh_token_enc, token_key_id, tags, signed_up_at, \
     state_changed_at, created_at, updated_at";

/// What an existing row keeps and takes (see the module docs). A forgotten user's
/// row takes nothing: an import cannot bring an erased person's data back.
fn upsert_on_conflict(backend: Backend) -> String {
    format!(
        "{UPSERT_ON_CONFLICT_HEAD}rejected_at = {}, {UPSERT_ON_CONFLICT_TAIL}",
        greatest_sql(backend, &["excluded.rejected_at", "users.rejected_at"])
    )
}

const UPSERT_ON_CONFLICT_HEAD: &str = " ON CONFLICT (user_id) DO UPDATE SET \
     email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name, \
     locale = excluded.locale, timezone = excluded.timezone, region = excluded.region, \
     country = excluded.country, \
     state_changed_at = CASE WHEN users.verification_state = excluded.verification_state \
         THEN users.state_changed_at ELSE excluded.state_changed_at END, \
     verification_state = excluded.verification_state, ";

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

/// The upsert for `rows` rows: 17 parameters a row, the row's 14 then "now" thrice.
fn upsert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::with_capacity(900 + rows * 80);
    sql.push_str(&format!("INSERT INTO users ({UPSERT_COLUMNS}) VALUES "));
    values_sql(&mut sql, backend, rows, 17);
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

/// Binds one row's 14 values, in [`UPSERT_COLUMNS`] order.
fn bind_row<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    r: &UserUpsert,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
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
            q = bind_row(q, r).bind(now_ms).bind(now_ms).bind(now_ms);
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

    /// The sealed refresh token of a user, or `None` when none is on file.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user, [`StoreError::Query`].
    pub async fn user_token_load(&self, id: &UserId) -> Result<Option<SealedToken>, StoreError> {
        let row = sqlx::query("SELECT refresh_token_enc, token_key_id FROM users WHERE user_id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("user_token_load"))?
            .ok_or_else(|| StoreError::NotFound { what: "user", key: id.to_string() })?;
        sealed_from_row(&row).map_err(query_err("user_token_load"))
    }

    /// Replaces a user's token with `new` only while the stored one is still `old`
    /// (compare and swap), so that re-keying never overwrites a token that Baanx
    /// rotated in the meantime. Returns whether it replaced it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_token_replace(
        &self,
        id: &UserId,
        old: &SealedToken,
        new: &SealedToken,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE users SET refresh_token_enc = $1, token_key_id = $2, updated_at = $3 \
             WHERE user_id = $4 AND token_key_id = $5 AND refresh_token_enc = $6",
        )
        .bind(new.ciphertext.clone())
        .bind(new.key_id.clone())
        .bind(to_millis(now))
        .bind(id.as_str())
        .bind(old.key_id.clone())
        .bind(old.ciphertext.clone())
        .execute(self.pool())
        .await
        .map_err(query_err("user_token_replace"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` users, in id order after `after`, whose token is sealed with a key
    /// other than `key_id`: the work list of `users rekey`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn user_tokens_not_under(
        &self,
        key_id: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<(UserId, SealedToken)>, StoreError> {
        let sql = format!(
            "SELECT user_id, refresh_token_enc, token_key_id FROM users \
             WHERE refresh_token_enc IS NOT NULL AND token_key_id <> $1 AND user_id > $2 \
             ORDER BY user_id LIMIT {limit}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_id)
            .bind(after.map_or("", UserId::as_str))
            .fetch_all(self.pool())
            .await
            .map_err(query_err("user_tokens_not_under"))?;
        rows.iter()
            .map(|row| {
                let id = UserId::parse(&row.try_get::<String, _>("user_id")?).map_err(decode)?;
                let sealed = sealed_from_row(row)?.ok_or(sqlx::Error::RowNotFound)?;
                Ok((id, sealed))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("user_tokens_not_under"))
    }
}

fn sealed_from_row(row: &AnyRow) -> Result<Option<SealedToken>, sqlx::Error> {
    let ct: Option<Vec<u8>> = row.try_get("refresh_token_enc")?;
    let key: Option<String> = row.try_get("token_key_id")?;
    Ok(match (ct, key) {
        (Some(ciphertext), Some(key_id)) => Some(SealedToken { key_id, ciphertext }),
        _ => None,
    })
}

mod bulk;

pub use bulk::UserBulkUpsert;

#[cfg(test)]
mod tests;
