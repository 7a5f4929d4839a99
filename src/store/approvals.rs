//! Four-eyes approval of campaign versions, every applied version's file, and the
//! template versions approvals and runs used (issue 16).
//!
//! An approval is of one version of a campaign (`campaigns.version`): applying a
//! changed file makes a new version, which no approval covers yet. Its `digest` is
//! SHA-256 over the file, the templates the campaign uses and its plan at approval
//! time ([`approval_digest`]). Whoever applied a version cannot approve it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::events::{NewEvent, event_insert};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};
use crate::store::campaigns::CampaignRecord;

/// One applied version of a campaign file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignVersion {
    pub version: i64,
    /// The file's text as applied.
    pub spec_toml: String,
    pub spec_hash: String,
    pub applied_by: String,
    pub applied_at: DateTime<Utc>,
    /// The SSH signature that proved `applied_by` (with `approvers_file`).
    pub signature: Option<String>,
}

/// A recorded approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    pub approval_id: i64,
    pub version: i64,
    pub approver: String,
    pub approved_at: DateTime<Utc>,
    /// [`approval_digest`] of what was approved.
    pub digest: String,
    /// Template name -> its version ([`crate::notify::template_digest`]).
    pub templates: BTreeMap<String, String>,
    /// The plan at approval: targets and exclusions counted by reason.
    pub plan: BTreeMap<String, i64>,
    /// The SSH signature that proved `approver` (with `approvers_file`).
    pub signature: Option<String>,
}

/// A template's files at one version, as kept for evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateVersion {
    pub digest: String,
    pub name: String,
    /// File name -> text.
    pub files: BTreeMap<String, String>,
}

/// What is approved: the lower-case hex SHA-256 of the JSON object
/// `{"campaign_sha256": …, "templates": {name: digest, …}, "plan": {bucket: count, …}}`
/// (keys sorted, no white space).
pub fn approval_digest(spec_hash: &str, templates: &BTreeMap<String, String>, plan: &BTreeMap<String, i64>) -> String {
    let doc = serde_json::json!({ "campaign_sha256": spec_hash, "plan": plan, "templates": templates });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// Whether two actors are one person: the dashboard records its people as
/// `ui:NAME`, the command line as `NAME`, so that `alice` applying a version and
/// `ui:alice` approving it are the same pair of eyes.
pub fn same_person(a: &str, b: &str) -> bool {
    // case and white space do not make another person (` Alice` is `alice`)
    let person = |s: &str| s.trim().strip_prefix("ui:").unwrap_or(s.trim()).trim().to_lowercase();
    person(a) == person(b)
}

/// An approval to record.
#[derive(Debug, Clone)]
pub struct NewApproval<'a> {
    pub approver: &'a str,
    /// The version the approver looked at: refused when another was applied meanwhile.
    pub version: i64,
    pub templates: &'a [TemplateVersion],
    pub plan: BTreeMap<String, i64>,
    /// The SSH signature that proved `approver`, when one was asked.
    pub signature: Option<&'a str>,
    /// The proven principal who applied this version, when the caller checked the
    /// version's own signature: four eyes compares with it instead of the label.
    pub applied_by: Option<&'a str>,
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, sqlx::Error> {
    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn approval_from_row(r: &sqlx::any::AnyRow) -> Result<Approval, sqlx::Error> {
    let json = |col: &str| -> Result<serde_json::Value, sqlx::Error> {
        serde_json::from_str(&r.try_get::<String, _>(col)?).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(Approval {
        approval_id: r.try_get("approval_id")?,
        version: r.try_get("version")?,
        approver: r.try_get("approver")?,
        approved_at: from_millis(r.try_get("approved_at")?),
        digest: r.try_get("digest")?,
        templates: decode(json("templates")?)?,
        plan: decode(json("plan")?)?,
        signature: r.try_get("signature")?,
    })
}

impl Store {
    /// Every applied version of the campaign, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn campaign_versions(&self, campaign_id: i64) -> Result<Vec<CampaignVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, spec, spec_hash, applied_by, applied_at, signature FROM campaign_versions \
             WHERE campaign_id = $1 ORDER BY version",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("campaign_versions"))?;
        rows.iter()
            .map(|r| {
                Ok(CampaignVersion {
                    version: r.try_get("version")?,
                    spec_toml: r.try_get("spec")?,
                    spec_hash: r.try_get("spec_hash")?,
                    applied_by: r.try_get("applied_by")?,
                    applied_at: from_millis(r.try_get("applied_at")?),
                    signature: r.try_get("signature")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_err("campaign_versions"))
    }

    /// Every approval of the campaign, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn approval_list(&self, campaign_id: i64) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(
            "SELECT approval_id, version, approver, approved_at, digest, templates, plan, signature FROM campaign_approvals \
             WHERE campaign_id = $1 ORDER BY approval_id",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("approval_list"))?;
        rows.iter().map(approval_from_row).collect::<Result<_, _>>().map_err(query_err("approval_list"))
    }

    /// The latest approval of the campaign's current version, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn approval_current(&self, c: &CampaignRecord) -> Result<Option<Approval>, StoreError> {
        Ok(self.approval_list(c.campaign_id).await?.into_iter().rev().find(|a| a.version == c.version))
    }

    /// Records `approval` of `c`'s current version with its digest, the template
    /// versions it covers and a `campaign.approved` event, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another version was applied meanwhile, when
    /// the approver applied this version (four eyes), or when this version is
    /// already approved with the same templates; [`StoreError::Query`].
    pub async fn campaign_approve(
        &self,
        c: &CampaignRecord,
        approval: &NewApproval<'_>,
        now: DateTime<Utc>,
    ) -> Result<Approval, StoreError> {
        let templates: BTreeMap<String, String> =
            approval.templates.iter().map(|t| (t.name.clone(), t.digest.clone())).collect();
        let mut tx = self.begin_write().await?;
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT version, spec_hash FROM campaigns WHERE campaign_id = $1{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(c.campaign_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_err("campaign_approve"))?;
        let version: i64 = row.try_get("version").map_err(query_err("campaign_approve"))?;
        let spec_hash: String = row.try_get("spec_hash").map_err(query_err("campaign_approve"))?;
        if version != approval.version {
            return Err(StoreError::Conflict(format!(
                "campaign {} is at version {version} now, not {}: look at it again (campaign show) before approving",
                c.name, approval.version
            )));
        }
        let applied_by: String =
            sqlx::query("SELECT applied_by FROM campaign_versions WHERE campaign_id = $1 AND version = $2")
                .bind(c.campaign_id)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err("campaign_approve applier"))?
                .map(|r| r.try_get("applied_by"))
                .transpose()
                .map_err(query_err("campaign_approve applier"))?
                .unwrap_or_default();
        let applied_by = approval.applied_by.map_or(applied_by, str::to_owned);
        if same_person(&applied_by, approval.approver) {
            let how = if approval.signature.is_some() {
                "another approver must sign with their own key (approvers_file)"
            } else {
                "another person must approve it, under their own name"
            };
            return Err(StoreError::Conflict(format!(
                "campaign {} version {version} was applied by {applied_by}, who cannot approve it too: {how} (four eyes)",
                c.name
            )));
        }
        let earlier = sqlx::query(
            "SELECT approver, templates, signature FROM campaign_approvals WHERE campaign_id = $1 AND version = $2 \
             ORDER BY approval_id DESC LIMIT 1",
        )
        .bind(c.campaign_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err("campaign_approve earlier"))?;
        if let Some(r) = earlier {
            let by: String = r.try_get("approver").map_err(query_err("campaign_approve earlier"))?;
            let same: String = r.try_get("templates").map_err(query_err("campaign_approve earlier"))?;
            let signed: Option<String> = r.try_get("signature").map_err(query_err("campaign_approve earlier"))?;
            // an unsigned approval does not stand in the way of a signed one (a run
            // with approvers_file honours only the signed)
            let superseded = signed.is_none() && approval.signature.is_some();
            if !superseded && serde_json::from_str::<BTreeMap<String, String>>(&same).ok().as_ref() == Some(&templates)
            {
                return Err(StoreError::Conflict(format!(
                    "campaign {} version {version} is already approved (by {by})",
                    c.name
                )));
            }
        }
        let digest = approval_digest(&spec_hash, &templates, &approval.plan);
        let templates_json = serde_json::to_string(&templates).unwrap_or_default();
        let plan_json = serde_json::to_string(&approval.plan).unwrap_or_default();
        let id: i64 = sqlx::query(
            "INSERT INTO campaign_approvals (campaign_id, version, approver, approved_at, digest, templates, plan, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING approval_id",
        )
        .bind(c.campaign_id)
        .bind(version)
        .bind(approval.approver)
        .bind(to_millis(now))
        .bind(digest.as_str())
        .bind(templates_json)
        .bind(plan_json)
        .bind(approval.signature)
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get("approval_id"))
        .map_err(query_err("campaign_approve insert"))?;
        template_versions_insert(&mut tx, approval.templates, now).await?;
        let event = NewEvent {
            actor: approval.approver,
            kind: "campaign.approved",
            campaign_id: Some(c.campaign_id),
            user_id: None,
            detail: Some(serde_json::json!({
                "name": c.name.as_str(), "version": version, "spec_hash": spec_hash, "digest": digest,
                "templates": templates, "plan": approval.plan, "applied_by": applied_by,
                "signature": approval.signature,
            })),
        };
        event_insert(&mut tx, &event, now).await?;
        tx.commit().await.map_err(query_err("campaign_approve commit"))?;
        Ok(Approval {
            approval_id: id,
            version,
            approver: approval.approver.to_owned(),
            approved_at: from_millis(to_millis(now)),
            digest,
            templates,
            plan: approval.plan.clone(),
            signature: approval.signature.map(str::to_owned),
        })
    }

    /// Keeps template versions (by digest; a known one is left as it is).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn template_versions_record(
        &self,
        templates: &[TemplateVersion],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if templates.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool().acquire().await.map_err(query_err("template_versions_record"))?;
        template_versions_insert(&mut conn, templates, now).await
    }

    /// The kept template versions among `digests`, by name then digest.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn template_versions_get(&self, digests: &[String]) -> Result<Vec<TemplateVersion>, StoreError> {
        let mut out = Vec::new();
        for d in digests {
            let row = sqlx::query("SELECT digest, name, sources FROM template_versions WHERE digest = $1")
                .bind(d.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("template_versions_get"))?;
            if let Some(r) = row {
                let sources: String = r.try_get("sources").map_err(query_err("template_versions_get"))?;
                out.push(TemplateVersion {
                    digest: r.try_get("digest").map_err(query_err("template_versions_get"))?,
                    name: r.try_get("name").map_err(query_err("template_versions_get"))?,
                    files: serde_json::from_str(&sources).unwrap_or_default(),
                });
            }
        }
        out.sort_by(|a, b| (&a.name, &a.digest).cmp(&(&b.name, &b.digest)));
        Ok(out)
    }
}

async fn template_versions_insert(
    conn: &mut sqlx::AnyConnection,
    templates: &[TemplateVersion],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for t in templates {
        sqlx::query(
            "INSERT INTO template_versions (digest, name, sources, first_seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(t.digest.as_str())
        .bind(t.name.as_str())
        .bind(serde_json::to_string(&t.files).unwrap_or_default())
        .bind(to_millis(now))
        .execute(&mut *conn)
        .await
        .map_err(query_err("template_versions insert"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
