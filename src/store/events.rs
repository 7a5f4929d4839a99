//! The audit trail: an append-only log of who did what, when and why, for
//! compliance. Nothing here updates or deletes an event.
//!
//! Writers that change state append their event in the same transaction as the
//! change ([`event_insert`] on the transaction's connection), so that the log and
//! the data cannot disagree. Readers page by `event_id`, which both engines hand out
//! in commit order for a single writer and in insertion order otherwise: good enough
//! for "what happened to this campaign", and every event carries its own time.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::group::{Arg, Tx, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::UserId;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// A person (`--as`, `REVERIFY_ACTOR`, the OS user), a worker id, or `webhook`.
    pub actor: &'a str,
    /// Dotted, noun first: `campaign.applied`, `campaign.paused`, `users.imported`.
    pub kind: &'a str,
    pub campaign_id: Option<i64>,
    pub user_id: Option<&'a UserId>,
    /// Anything else worth keeping; never a token or a session URL.
    pub detail: Option<serde_json::Value>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    pub campaign_id: Option<i64>,
    /// As stored: events outlive users, so this is not re-parsed into a `UserId`.
    pub user_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Which events to list. Both `None` lists every event.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub campaign_id: Option<i64>,
    pub user_id: Option<UserId>,
    pub kind: Option<String>,
}

/// Appends `event` on `conn` (a pool connection or an open transaction) and returns
/// its id.
///
/// # Errors
/// [`StoreError::Query`].
pub async fn event_insert(
    conn: &mut sqlx::AnyConnection,
    event: &NewEvent<'_>,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_id",
    )
    .bind(to_millis(at))
    .bind(event.actor)
    .bind(event.kind)
    .bind(event.campaign_id)
    .bind(event.user_id.map(UserId::as_str))
    .bind(event.detail.as_ref().map(serde_json::Value::to_string))
    .fetch_one(conn)
    .await
    .map_err(query_err("event_insert"))?;
    row.try_get::<i64, _>("event_id").map_err(query_err("event_insert"))
}

/// An audit event for [`event_in_tx`]: [`NewEvent`] with its detail borrowed.
#[derive(Clone, Copy)]
pub(crate) struct TxEvent<'a> {
    pub actor: &'a str,
    pub kind: &'a str,
    pub campaign_id: Option<i64>,
    /// The user, parsed where the caller read it: an id that does not parse is the
    /// caller's error, never dropped here.
    pub user_id: Option<&'a UserId>,
    pub detail: &'a serde_json::Value,
}

/// Appends an audit event inside a transaction (see [`event_insert`]).
pub(crate) async fn event_in_tx(tx: &mut Tx, at: DateTime<Utc>, e: &TxEvent<'_>) -> Result<(), StoreError> {
    let TxEvent { actor, kind, campaign_id, user_id, detail } = *e;
    let event = NewEvent { actor, kind, campaign_id, user_id, detail: Some(detail.clone()) };
    event_insert(tx, &event, at).await.map(|_| ())
}

/// An event of a batch, its detail already JSON text.
pub(crate) struct NewEventRow<'a> {
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub kind: &'a str,
    pub campaign_id: i64,
    pub user_id: &'a str,
    pub detail: &'a str,
}

/// Appends a batch of events in one statement, in their order.
pub(crate) async fn events_insert_many_in_tx(
    backend: Backend,
    events: &[NewEventRow<'_>],
    tx: &mut Tx,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = json_rows(
        events
            .iter()
            .map(|e| serde_json::json!([to_millis(e.at), e.actor, e.kind, e.campaign_id, e.user_id, e.detail])),
    );
    let from = json_args(
        backend,
        &[("at", Arg::Int), ("w", Arg::Text), ("k", Arg::Text), ("c", Arg::Int), ("u", Arg::Text), ("d", Arg::Text)],
    );
    let sql = format!(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         SELECT x.at, x.w, x.k, x.c, x.u, x.d FROM ({from}) AS x ORDER BY x.n"
    );
    sqlx::query(AssertSqlSafe(sql)).bind(rows).execute(&mut **tx).await.map_err(query_err("events insert"))?;
    Ok(())
}

/// One `target.reminder_queued` event per target of the campaign that a reminder
/// re-queued at `now_ms` (set-based, as the re-queue itself).
pub(crate) async fn events_reminders_queued_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         SELECT $2, 'engine', 'target.reminder_queued', campaign_id, user_id, \
           '{\"step\":' || CAST(step AS TEXT) || '}' \
         FROM campaign_targets \
         WHERE campaign_id = $1 AND status = 'pending' AND reason = 'reminder' AND updated_at = $2",
    )
    .bind(campaign_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_requeue_reminders events"))?;
    Ok(())
}

/// One `target.skipped` event with `reason` per target of the campaign skipped
/// for that reason at `now_ms` (set-based, as the skip itself). `reason` is a
/// `TargetReason`'s text (no quote or backslash), written into the JSON detail.
pub(crate) async fn events_targets_skipped_in_tx(
    tx: &mut Tx,
    campaign_id: i64,
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         SELECT $2, 'engine', 'target.skipped', campaign_id, user_id, '{{\"reason\":\"{reason}\"}}' \
         FROM campaign_targets WHERE campaign_id = $1 AND status = 'skipped' AND reason = '{reason}' \
           AND updated_at = $2"
    )))
    .bind(campaign_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_err("target_skip_excluded events"))?;
    Ok(())
}

/// The events part of a statement that appends one event per row of `rows`
/// (a CTE or a table expression), in `rows.order`: `at`, `actor`, `kind`,
/// `campaign_id`, `user_id` and `detail` are the expressions given.
pub(crate) fn events_insert_select(cols: [&str; 6], rows: &str, order: &str) -> String {
    let [at, actor, kind, campaign_id, user_id, detail] = cols;
    format!(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         SELECT {at}, {actor}, {kind}, {campaign_id}, {user_id}, {detail} FROM {rows} ORDER BY {order}"
    )
}

impl Store {
    /// Appends one event in a transaction of its own.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn event_append(&self, event: &NewEvent<'_>, at: DateTime<Utc>) -> Result<i64, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(query_err("event_append"))?;
        event_insert(&mut conn, event, at).await
    }

    /// Up to `limit` events matching `filter` with an id above `after` (0 for the
    /// first page), oldest first. Call again with the last id to stream the rest.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn event_list(&self, filter: &EventFilter, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT event_id, at, actor, kind, campaign_id, user_id, detail FROM events WHERE event_id > $1",
        );
        let mut n = 1;
        let mut next = |col: &str, sql: &mut String| {
            n += 1;
            sql.push_str(&format!(" AND {col} = ${n}"));
        };
        if filter.campaign_id.is_some() {
            next("campaign_id", &mut sql);
        }
        if filter.user_id.is_some() {
            next("user_id", &mut sql);
        }
        if filter.kind.is_some() {
            next("kind", &mut sql);
        }
        sql.push_str(" ORDER BY event_id LIMIT ");
        sql.push_str(&limit.to_string());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after);
        if let Some(c) = filter.campaign_id {
            q = q.bind(c);
        }
        if let Some(u) = &filter.user_id {
            q = q.bind(u.as_str().to_owned());
        }
        if let Some(k) = &filter.kind {
            q = q.bind(k.clone());
        }
        let rows = q.fetch_all(self.pool()).await.map_err(query_err("event_list"))?;
        rows.iter().map(event_from_row).collect::<Result<_, _>>().map_err(query_err("event_list"))
    }
}

pub(crate) fn event_from_row(row: &sqlx::any::AnyRow) -> Result<Event, sqlx::Error> {
    let detail: Option<String> = row.try_get("detail")?;
    let detail = match detail {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?),
    };
    Ok(Event {
        event_id: row.try_get("event_id")?,
        at: from_millis(row.try_get("at")?),
        actor: row.try_get("actor")?,
        kind: row.try_get("kind")?,
        campaign_id: row.try_get("campaign_id")?,
        user_id: row.try_get("user_id")?,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::both_engines;
    use crate::store::testing::TestDb;

    both_engines!(events_append_and_page, |db: TestDb| async move {
        let s = &db.store;
        let u = UserId::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        let t0 = Utc::now();
        for i in 0..5 {
            let ev = NewEvent {
                actor: "cli:test@host",
                kind: if i % 2 == 0 { "a.even" } else { "a.odd" },
                campaign_id: Some(if i < 3 { 1 } else { 2 }),
                user_id: (i == 4).then_some(&u),
                detail: Some(serde_json::json!({ "i": i })),
            };
            s.event_append(&ev, t0).await.unwrap();
        }
        let first = s.event_list(&EventFilter { campaign_id: Some(1), ..Default::default() }, 0, 2).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].detail, Some(serde_json::json!({ "i": 0 })));
        assert_eq!(first[0].at.timestamp_millis(), t0.timestamp_millis());
        let rest = s
            .event_list(&EventFilter { campaign_id: Some(1), ..Default::default() }, first[1].event_id, 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].detail, Some(serde_json::json!({ "i": 2 })));
        let by_user =
            s.event_list(&EventFilter { user_id: Some(u.clone()), ..Default::default() }, 0, 10).await.unwrap();
        assert_eq!(by_user.len(), 1);
        assert_eq!(by_user[0].user_id.as_deref(), Some(u.as_str()));
        let odd = s.event_list(&EventFilter { kind: Some("a.odd".into()), ..Default::default() }, 0, 10).await.unwrap();
        assert_eq!(odd.len(), 2);
        assert!(odd.iter().all(|e| e.kind == "a.odd" && e.actor == "cli:test@host"));
    });
}
