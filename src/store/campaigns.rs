//! Campaign records: each applied campaign file, its version and its status.
//!
//! The stored spec is the file's own TOML text, and its version changes when the
//! SHA-256 of that text changes: the audit trail can then show exactly what was
//! applied, comments included. Applying keeps the status (a paused campaign stays
//! paused), except that a cancelled campaign cannot be changed at all: cancelling is
//! final, so a new campaign needs a new name.
//!
//! Every applied version and every status change writes an event in the same
//! transaction, and every applied version's text is kept with who applied it
//! (`campaign_versions`, read by [`super::approvals`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::events::{NewEvent, event_insert};
use super::group::Tx;
use super::links::links_revoke_campaign_in_tx;
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::domain::{CampaignName, CampaignSpec, SpecError};

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    /// Runs when due.
    Active,
    /// Kept, but not run until resumed.
    Paused,
    /// Stopped for good.
    Cancelled,
    /// Ran to its end (a one-off campaign); can be cancelled, not resumed.
    Finished,
    /// Its `ends_at` passed: nothing more is sent; outcomes still update its funnel
    /// for `track_outcomes_for`. Final.
    Completed,
}

impl CampaignStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Active => "active",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Cancelled => "cancelled",
            CampaignStatus::Finished => "finished",
            CampaignStatus::Completed => "completed",
        }
    }
}

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CampaignStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(CampaignStatus::Active),
            "paused" => Ok(CampaignStatus::Paused),
            "cancelled" => Ok(CampaignStatus::Cancelled),
            "finished" => Ok(CampaignStatus::Finished),
            "completed" => Ok(CampaignStatus::Completed),
            other => {
                Err(format!("campaign status {other:?} is not one of active, paused, cancelled, finished, completed"))
            }
        }
    }
}

/// A status change asked for by a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Pause,
    Resume,
    Cancel,
}

impl StatusChange {
    fn verb(self) -> &'static str {
        match self {
            StatusChange::Pause => "paused",
            StatusChange::Resume => "resumed",
            StatusChange::Cancel => "cancelled",
        }
    }

    /// The status after the change from `from`: `Ok(None)` when it is already there,
    /// an error message when the change is not allowed.
    pub fn apply_to(self, from: CampaignStatus) -> Result<Option<CampaignStatus>, String> {
        use CampaignStatus::*;
        match (self, from) {
            (StatusChange::Pause, Active) => Ok(Some(Paused)),
            (StatusChange::Pause, Paused) | (StatusChange::Resume, Active) | (StatusChange::Cancel, Cancelled) => {
                Ok(None)
            }
            (StatusChange::Resume, Paused) => Ok(Some(Active)),
            (StatusChange::Cancel, Active | Paused | Finished) => Ok(Some(Cancelled)),
            (StatusChange::Pause | StatusChange::Resume, Cancelled) => {
                Err("it is cancelled, which is final; apply the file under a new name to start again".into())
            }
            (StatusChange::Pause | StatusChange::Resume, Finished) => {
                Err("it has finished; apply the file under a new name to run it again".into())
            }
            (_, Completed) => Err("it has completed (its ends_at passed), which is final; its record stays as it \
                                   is: apply the file under a new name for a new campaign"
                .into()),
        }
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRecord {
    pub campaign_id: i64,
    pub name: CampaignName,
    /// The applied file's TOML text.
    pub spec_toml: String,
    /// Lower-case hex SHA-256 of `spec_toml`.
    pub spec_hash: String,
    pub version: i64,
    pub status: CampaignStatus,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The start of the latest run, whatever its outcome.
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The tick a scheduled run started and no finished run has covered yet: the
    /// next `run --due` resumes it (see [`crate::domain::schedule::due_or_resume`]).
    pub tick_in_progress: Option<DateTime<Utc>>,
    /// The start of the latest run that finished: every tick at or before it is done.
    pub done_through: Option<DateTime<Utc>>,
    /// Why the worker paused the campaign (`canary_review`, `delivery_failure_rate`,
    /// `api_error_rate`); `None` when it is not paused, or a person paused it.
    pub pause_reason: Option<String>,
    /// The figures behind `pause_reason` (a JSON object).
    pub pause_detail: Option<serde_json::Value>,
    /// When a person resumed the campaign after its canary review: from then on the
    /// canary no longer limits a run.
    pub canary_released_at: Option<DateTime<Utc>>,
    /// When the campaign became `completed` (its `ends_at` had passed).
    pub completed_at: Option<DateTime<Utc>>,
}

impl CampaignRecord {
    /// The stored spec, parsed again.
    ///
    /// # Errors
    /// [`SpecError`] when the stored text no longer parses (a newer binary refusing
    /// an older file), naming the campaign.
    pub fn spec(&self) -> Result<CampaignSpec, SpecError> {
        CampaignSpec::from_toml(&self.spec_toml, &format!("campaign {} (version {})", self.name, self.version))
    }
}

/// What `campaign apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    Created,
    Updated,
    Unchanged,
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Updated => "updated",
            ApplyOutcome::Unchanged => "unchanged",
        })
    }
}

/// The lower-case hex SHA-256 of a campaign file's text.
pub fn spec_hash(toml_text: &str) -> String {
    hex::encode(Sha256::digest(toml_text.as_bytes()))
}

const CAMPAIGN_COLUMNS: &str = "campaign_id, name, spec, spec_hash, version, status, schedule, timezone, \
     created_at, updated_at, last_run_at, next_run_at, tick_in_progress, done_through, pause_reason, pause_detail, \
     canary_released_at, completed_at";

fn decode(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

fn campaign_from_row(row: &AnyRow) -> Result<CampaignRecord, sqlx::Error> {
    let opt_time = |col: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(from_millis))
    };
    Ok(CampaignRecord {
        campaign_id: row.try_get("campaign_id")?,
        name: CampaignName::parse(&row.try_get::<String, _>("name")?).map_err(|e| decode(e.to_string()))?,
        spec_toml: row.try_get("spec")?,
        spec_hash: row.try_get("spec_hash")?,
        version: row.try_get("version")?,
        status: row.try_get::<String, _>("status")?.parse().map_err(decode)?,
        schedule: row.try_get("schedule")?,
        timezone: row.try_get("timezone")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        last_run_at: opt_time("last_run_at")?,
        next_run_at: opt_time("next_run_at")?,
        tick_in_progress: opt_time("tick_in_progress")?,
        done_through: opt_time("done_through")?,
        pause_reason: row.try_get("pause_reason")?,
        pause_detail: row.try_get::<Option<String>, _>("pause_detail")?.and_then(|d| serde_json::from_str(&d).ok()),
        canary_released_at: opt_time("canary_released_at")?,
        completed_at: opt_time("completed_at")?,
    })
}

/// Replaces `address` in every campaign's `pause_detail` (`users forget`: texts
/// kept from before errors were scrubbed where they enter).
pub(crate) async fn campaigns_scrub_address_in_tx(tx: &mut Tx, address: &str, with: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaigns SET pause_detail = REPLACE(pause_detail, $1, $2) WHERE pause_detail LIKE '%' || $1 || '%'",
    )
    .bind(address)
    .bind(with)
    .execute(&mut **tx)
    .await
    .map_err(query_err("user_forget texts"))?;
    Ok(())
}

/// What [`Store::campaign_apply_signed`] applies: `spec`, read from `toml_text`,
/// by `actor`, with the version and armored signature when `signed`.
#[derive(Debug, Clone, Copy)]
pub struct ApplySignedParams<'a> {
    /// The parsed campaign file.
    pub spec: &'a CampaignSpec,
    /// The file's text, kept as the version.
    pub toml_text: &'a str,
    /// Who applies it.
    pub actor: &'a str,
    /// The version the signature names and the armored signature.
    pub signed: Option<(i64, &'a str)>,
    /// When it is applied.
    pub now: DateTime<Utc>,
}

/// A `campaign_versions` row for [`version_insert`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct VersionRow<'a> {
    pub campaign_id: i64,
    pub version: i64,
    /// The file's text and its hash.
    pub text: &'a str,
    pub hash: &'a str,
    /// Who applied it, and the armored signature when it was signed.
    pub actor: &'a str,
    pub signature: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Records an applied version inside the apply's transaction.
pub(crate) async fn version_insert(conn: &mut sqlx::AnyConnection, row: &VersionRow<'_>) -> Result<(), StoreError> {
    let VersionRow { campaign_id, version, text, hash, actor, signature, now } = *row;
    sqlx::query(
        "INSERT INTO campaign_versions (campaign_id, version, spec, spec_hash, applied_by, applied_at, signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(campaign_id)
    .bind(version)
    .bind(text)
    .bind(hash)
    .bind(actor)
    .bind(to_millis(now))
    .bind(signature)
    .execute(conn)
    .await
    .map_err(query_err("campaign_version insert"))?;
    Ok(())
}

impl Store {
    /// Creates the campaign `spec` describes, or updates it when `toml_text` differs
    /// from the applied version (bumping the version and keeping the status), and
    /// records the applied version in the audit trail. `toml_text` is the file `spec`
    /// was parsed from.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the campaign is cancelled and the file changed,
    /// [`StoreError::Query`].
    pub async fn campaign_apply(
        &self,
        spec: &CampaignSpec,
        toml_text: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(ApplyOutcome, CampaignRecord), StoreError> {
        self.campaign_apply_signed(&ApplySignedParams { spec, toml_text, actor, signed: None, now }).await
    }

    /// [`Store::campaign_apply`] by a proven `actor`: `signed` is the version the
    /// signature names and the armored signature, kept with the version. An
    /// unchanged file whose current version has no signature becomes a new,
    /// signed version (so that a version applied before signatures were required
    /// can be proven).
    ///
    /// # Errors
    /// As [`Store::campaign_apply`]; [`StoreError::Conflict`] when the version the
    /// file would get is not the one signed (another apply came between).
    pub async fn campaign_apply_signed(
        &self,
        p: &ApplySignedParams<'_>,
    ) -> Result<(ApplyOutcome, CampaignRecord), StoreError> {
        let ApplySignedParams { spec, toml_text, actor, signed, now } = *p;
        let hash = spec_hash(toml_text);
        let next_run = spec.cron().and_then(|c| c.next_after(now, spec.tz())).map(to_millis);
        let mut tx = self.begin_write().await?;
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "", // BEGIN IMMEDIATE already holds the write lock
        };
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = $1{lock}");
        let existing = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(spec.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("campaign_apply select"))?
            .map(|r| campaign_from_row(&r))
            .transpose()
            .map_err(query_err("campaign_apply select"))?;
        let unsigned_now = match &existing {
            Some(c) if c.spec_hash == hash && signed.is_some() => {
                sqlx::query("SELECT signature FROM campaign_versions WHERE campaign_id = $1 AND version = $2")
                    .bind(c.campaign_id)
                    .bind(c.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_err("campaign_apply signature"))?
                    .map(|r| r.try_get::<Option<String>, _>("signature"))
                    .transpose()
                    .map_err(query_err("campaign_apply signature"))?
                    .flatten()
                    .is_none()
            }
            _ => false,
        };
        let next = existing.as_ref().map_or(1, |c| c.version + 1);
        if let Some((v, _)) = signed
            && v != next
            && !existing.as_ref().is_some_and(|c| c.spec_hash == hash && !unsigned_now)
        {
            return Err(StoreError::Conflict(format!(
                "the signature is for version {v} of campaign {}, but this apply makes version {next}: \
                 print the message again (campaign digest {} --file FILE) and sign that",
                spec.name, spec.name
            )));
        }
        let (outcome, id, version) = match existing {
            Some(c) if c.spec_hash == hash && !unsigned_now => return Ok((ApplyOutcome::Unchanged, c)),
            Some(c) if c.status == CampaignStatus::Cancelled => {
                return Err(StoreError::Conflict(format!(
                    "campaign {} is cancelled (version {}), which is final: give the changed file a new name",
                    c.name, c.version
                )));
            }
            Some(c) if c.status == CampaignStatus::Completed => {
                let ended = c.completed_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                return Err(StoreError::Conflict(format!(
                    "campaign {} completed at {} (its ends_at had passed): its record is final, ends_at included; \
                     give the changed file a new name to start a new campaign",
                    c.name,
                    ended.unwrap_or_default()
                )));
            }
            Some(c) => {
                sqlx::query(
                    "UPDATE campaigns SET spec = $1, spec_hash = $2, version = version + 1, schedule = $3, \
                     timezone = $4, next_run_at = $5, updated_at = $6 WHERE campaign_id = $7",
                )
                .bind(toml_text)
                .bind(hash.as_str())
                .bind(spec.schedule.clone())
                .bind(spec.timezone.as_str())
                .bind(next_run)
                .bind(to_millis(now))
                .bind(c.campaign_id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("campaign_apply update"))?;
                (ApplyOutcome::Updated, c.campaign_id, c.version + 1)
            }
            None => {
                // A concurrent first apply of the same name fails on the unique name
                // and the caller sees a clear error; applying again then updates.
                let row = sqlx::query(
                    "INSERT INTO campaigns (name, spec, spec_hash, version, status, schedule, timezone, \
                     created_at, updated_at, next_run_at) VALUES ($1, $2, $3, 1, 'active', $4, $5, $6, $6, $7) \
                     RETURNING campaign_id",
                )
                .bind(spec.name.as_str())
                .bind(toml_text)
                .bind(hash.as_str())
                .bind(spec.schedule.clone())
                .bind(spec.timezone.as_str())
                .bind(to_millis(now))
                .bind(next_run)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err("campaign_apply insert"))?;
                let id: i64 = row.try_get("campaign_id").map_err(query_err("campaign_apply insert"))?;
                (ApplyOutcome::Created, id, 1)
            }
        };
        let event = NewEvent {
            actor,
            kind: "campaign.applied",
            campaign_id: Some(id),
            user_id: None,
            detail: Some(serde_json::json!({
                "name": spec.name.as_str(), "version": version, "spec_hash": hash, "outcome": outcome,
                "signature": signed.map(|(_, sig)| sig),
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        let row = VersionRow {
            campaign_id: id,
            version,
            text: toml_text,
            hash: &hash,
            actor,
            signature: signed.map(|(_, s)| s),
            now,
        };
        version_insert(&mut tx, &row).await?;
        tx.commit().await.map_err(query_err("campaign_apply commit"))?;
        let record = self
            .campaign_get(&spec.name)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "campaign", key: spec.name.to_string() })?;
        Ok((outcome, record))
    }

    /// The campaign called `name`, or `None`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_get(&self, name: &CampaignName) -> Result<Option<CampaignRecord>, StoreError> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("campaign_get"))?;
        row.as_ref().map(campaign_from_row).transpose().map_err(query_err("campaign_get"))
    }

    /// Every campaign, by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_list(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY name");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.pool()).await.map_err(query_err("campaign_list"))?;
        rows.iter().map(campaign_from_row).collect::<Result<_, _>>().map_err(query_err("campaign_list"))
    }

    /// Pauses, resumes or cancels a campaign and records it. Returns the status
    /// before and after; equal when it already was where it was asked to go (no
    /// event then).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown campaign, [`StoreError::Conflict`]
    /// naming the campaign for a change that is not allowed (resuming a cancelled
    /// campaign), [`StoreError::Query`].
    pub async fn campaign_set_status(
        &self,
        name: &CampaignName,
        change: StatusChange,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(CampaignStatus, CampaignStatus), StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT campaign_id, status, pause_reason FROM campaigns WHERE name = $1{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("campaign_set_status"))?
            .ok_or_else(|| StoreError::NotFound { what: "campaign", key: name.to_string() })?;
        let id: i64 = row.try_get("campaign_id").map_err(query_err("campaign_set_status"))?;
        let from: CampaignStatus = row
            .try_get::<String, _>("status")
            .map_err(query_err("campaign_set_status"))?
            .parse()
            .map_err(|e: String| query_err("campaign_set_status")(decode(e)))?;
        let to = match change.apply_to(from) {
            Ok(Some(to)) => to,
            Ok(None) => return Ok((from, from)),
            Err(why) => {
                return Err(StoreError::Conflict(format!("campaign {name} cannot be {}: {why}", change.verb())));
            }
        };
        let pause_reason: Option<String> = row.try_get("pause_reason").map_err(query_err("campaign_set_status"))?;
        // A resume ends a canary review: the canary limits no later run. Any change
        // by a person clears the worker's pause reason.
        let released =
            (change == StatusChange::Resume && pause_reason.as_deref() == Some(CANARY_REVIEW)).then(|| to_millis(now));
        sqlx::query(
            "UPDATE campaigns SET status = $1, updated_at = $2, pause_reason = NULL, pause_detail = NULL, \
               canary_released_at = COALESCE(canary_released_at, $4) WHERE campaign_id = $3",
        )
        .bind(to.as_str())
        .bind(to_millis(now))
        .bind(id)
        .bind(released)
        .execute(&mut *tx)
        .await
        .map_err(query_err("campaign_set_status"))?;
        let kind = match change {
            StatusChange::Pause => "campaign.paused",
            StatusChange::Resume => "campaign.resumed",
            StatusChange::Cancel => "campaign.cancelled",
        };
        let event = NewEvent {
            actor,
            kind,
            campaign_id: Some(id),
            user_id: None,
            detail: Some(serde_json::json!({
                "name": name.as_str(), "from": from, "to": to, "after_pause_reason": pause_reason,
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        if to == CampaignStatus::Cancelled {
            // its click-through links die with it
            links_revoke_campaign_in_tx(&mut tx, id, now).await?;
        }
        tx.commit().await.map_err(query_err("campaign_set_status commit"))?;
        Ok((from, to))
    }
}

/// The pause reason after a canary's first run.
pub const CANARY_REVIEW: &str = "canary_review";
/// The pause reasons of `[halt]`: the rate that was crossed.
pub const HALT_REASONS: [&str; 3] = ["delivery_failure_rate", "api_error_rate", "bounce_rate"];

/// Whether a pause reason is a halt's.
pub fn is_halt_reason(reason: &str) -> bool {
    HALT_REASONS.contains(&reason)
}

/// What [`Store::campaign_pause_by_worker`] pauses, and why.
#[derive(Debug, Clone, Copy)]
pub struct WorkerPauseParams<'a> {
    /// The campaign to pause.
    pub campaign_id: i64,
    /// A short code: [`CANARY_REVIEW`], a halt's rate.
    pub reason: &'a str,
    /// The figures behind it, kept with the pause and in its event.
    pub detail: &'a serde_json::Value,
    /// Who the `campaign.paused` event names.
    pub actor: &'a str,
    /// When it pauses.
    pub now: DateTime<Utc>,
}

/// What [`Store::campaign_complete`] completes.
#[derive(Debug, Clone, Copy)]
pub struct CompleteParams<'a> {
    /// The campaign to complete.
    pub campaign_id: i64,
    /// The campaign's `ends_at`, which has passed.
    pub ends_at: DateTime<Utc>,
    /// Until when outcomes still update its funnel.
    pub outcomes_until: DateTime<Utc>,
    /// Who the event names.
    pub actor: &'a str,
    /// When it completes.
    pub now: DateTime<Utc>,
}

impl Store {
    /// The worker pauses an active campaign by itself, for `reason` (a short code:
    /// [`CANARY_REVIEW`], a halt's rate), with the figures in `detail`, and records
    /// `campaign.paused` with both. Returns false when the campaign was not active
    /// (a person paused or cancelled it meanwhile): nothing changes then.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_pause_by_worker(&self, p: &WorkerPauseParams<'_>) -> Result<bool, StoreError> {
        let WorkerPauseParams { campaign_id, reason, detail, actor, now } = *p;
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE campaigns SET status = 'paused', pause_reason = $2, pause_detail = $3, updated_at = $4 \
             WHERE campaign_id = $1 AND status = 'active'",
        )
        .bind(campaign_id)
        .bind(reason)
        .bind(detail.to_string())
        .bind(to_millis(now))
        .execute(&mut *tx)
        .await
        .map_err(query_err("campaign_pause_by_worker"))?
        .rows_affected();
        if n == 1 {
            let event = NewEvent {
                actor,
                kind: "campaign.paused",
                campaign_id: Some(campaign_id),
                user_id: None,
                detail: Some(
                    serde_json::json!({ "from": "active", "to": "paused", "reason": reason, "figures": detail }),
                ),
            };
            event_insert(&mut tx, &event, now).await?;
        }
        tx.commit().await.map_err(query_err("campaign_pause_by_worker commit"))?;
        Ok(n == 1)
    }

    /// Completes a campaign whose `ends_at` has passed (active or paused): nothing
    /// more is sent, its waiting targets are skipped (`campaign_ended`), and
    /// outcomes update its funnel until `outcomes_until`. Returns how many targets
    /// were skipped, or `None` when it was not active or paused (another process
    /// completed it first, or a person cancelled it).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_complete(&self, p: &CompleteParams<'_>) -> Result<Option<u64>, StoreError> {
        let CompleteParams { campaign_id, ends_at, outcomes_until, actor, now } = *p;
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE campaigns SET status = 'completed', completed_at = $2, outcomes_until = $3, \
               pause_reason = NULL, pause_detail = NULL, next_run_at = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status IN ('active', 'paused')",
        )
        .bind(campaign_id)
        .bind(to_millis(now))
        .bind(to_millis(outcomes_until))
        .execute(&mut *tx)
        .await
        .map_err(query_err("campaign_complete"))?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        let skipped = super::targets::targets_end_campaign_in_tx(&mut tx, campaign_id, now).await?;
        let event = NewEvent {
            actor,
            kind: "campaign.completed",
            campaign_id: Some(campaign_id),
            user_id: None,
            detail: Some(serde_json::json!({
                "ends_at": ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "skipped_campaign_ended": skipped,
                "outcomes_until": outcomes_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        tx.commit().await.map_err(query_err("campaign_complete commit"))?;
        Ok(Some(skipped))
    }

    /// Whether a person resumed the campaign after its canary review.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_canary_released(&self, campaign_id: i64) -> Result<bool, StoreError> {
        sqlx::query("SELECT canary_released_at FROM campaigns WHERE campaign_id = $1")
            .bind(campaign_id)
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>("canary_released_at"))
            .map(|t| t.is_some())
            .map_err(query_err("campaign_canary_released"))
    }

    /// How many of the campaign's targets have been sent a message or a session (a
    /// ledger row or a link for the campaign): what a canary counts.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_canary_spent(&self, campaign_id: i64) -> Result<i64, StoreError> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM campaign_targets t WHERE t.campaign_id = $1 \
               AND (t.notifications > 0 OR t.first_notified_at IS NOT NULL \
                    OR EXISTS (SELECT 1 FROM verification_sessions s \
                               WHERE s.campaign_id = $1 AND s.user_id = t.user_id AND s.status <> 'api_failed') \
                    OR EXISTS (SELECT 1 FROM verification_links l WHERE l.campaign_id = $1 AND l.user_id = t.user_id))",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .and_then(|r| r.try_get::<i64, _>("n"))
        .map_err(query_err("campaign_canary_spent"))
    }
}

#[cfg(test)]
mod tests;
