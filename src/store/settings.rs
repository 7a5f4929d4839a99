//! The settings the database holds (table `settings`), so that no runner's
//! environment can switch them off (issue 24): `require_approval`. Every change is
//! a `settings.changed` event in the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::events::{NewEvent, event_insert};
use super::{Store, StoreError, from_millis, query_err, to_millis};

/// A stored setting and who set it when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredSetting {
    pub key: String,
    pub value: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// A change to record.
#[derive(Debug, Clone)]
pub struct SettingChange<'a> {
    pub key: &'a str,
    pub value: &'a str,
    /// The proven principal, or the label (`--as`) when no proof is asked.
    pub actor: &'a str,
    /// `set_at` of the row this change replaces (millis; 0: none), as the signed
    /// message names it: a change signed against another state is refused.
    pub replaces: i64,
    /// What proved the actor (the signature), kept in the event.
    pub proof: Option<&'a str>,
    /// Other keys set (or, with `None`, removed) in the same transaction, for
    /// example the approvers a signed `require_approval` pins.
    pub also: &'a [(&'a str, Option<&'a str>)],
}

impl Store {
    /// The setting `key`, if the database holds one.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn setting_get(&self, key: &str) -> Result<Option<StoredSetting>, StoreError> {
        let row = sqlx::query("SELECT key, value, set_by, set_at FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("setting_get"))?;
        row.map(|r| {
            Ok(StoredSetting {
                key: r.try_get("key")?,
                value: r.try_get("value")?,
                set_by: r.try_get("set_by")?,
                set_at: from_millis(r.try_get("set_at")?),
            })
        })
        .transpose()
        .map_err(query_err("setting_get"))
    }

    /// Sets `change.key` to `change.value` and records a `settings.changed` event
    /// (old and new value, the proof), in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the setting changed since `change.replaces`;
    /// [`StoreError::Query`].
    pub async fn setting_set(&self, change: &SettingChange<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let old = sqlx::query("SELECT value, set_at FROM settings WHERE key = $1")
            .bind(change.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("setting_set"))?;
        let (old_value, old_at): (Option<String>, i64) = match old {
            Some(r) => (
                Some(r.try_get("value").map_err(query_err("setting_set"))?),
                r.try_get("set_at").map_err(query_err("setting_set"))?,
            ),
            None => (None, 0),
        };
        if old_at != change.replaces {
            return Err(StoreError::Conflict(format!(
                "setting {} changed since this change was prepared (sign it again)",
                change.key
            )));
        }
        // set_at only moves forward, so that a signed change names one state
        let at = to_millis(now).max(old_at + 1);
        sqlx::query(
            "INSERT INTO settings (key, value, set_by, set_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, set_by = excluded.set_by, set_at = excluded.set_at",
        )
        .bind(change.key)
        .bind(change.value)
        .bind(change.actor)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(query_err("setting_set"))?;
        for (key, value) in change.also {
            match value {
                Some(v) => sqlx::query(
                    "INSERT INTO settings (key, value, set_by, set_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, set_by = excluded.set_by, \
                     set_at = excluded.set_at",
                )
                .bind(*key)
                .bind(*v)
                .bind(change.actor)
                .bind(at),
                None => sqlx::query("DELETE FROM settings WHERE key = $1").bind(*key),
            }
            .execute(&mut *tx)
            .await
            .map_err(query_err("setting_set also"))?;
        }
        let event = NewEvent {
            actor: change.actor,
            kind: "settings.changed",
            campaign_id: None,
            user_id: None,
            detail: Some(serde_json::json!({
                "key": change.key, "from": old_value, "to": change.value, "signature": change.proof,
                "also": change.also.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        tx.commit().await.map_err(query_err("setting_set commit"))
    }
}
