//! Whether a campaign version may run under four eyes (`require_approval`): it
//! needs an approval of its current version whose templates are the ones a run
//! would render now.

use std::collections::BTreeMap;

use crate::domain::CampaignSpec;
use crate::notify::{Templates, templates_used};
use crate::store::approvals::{Approval, TemplateVersion};
use crate::store::campaigns::CampaignRecord;
use crate::store::{Store, StoreError};

/// The templates `spec` renders, at the versions `templates` holds (a template the
/// campaign names but `templates` lacks is left out: the run's own check refuses
/// the campaign then).
pub fn template_versions(spec: &CampaignSpec, templates: &Templates) -> Vec<TemplateVersion> {
    templates_used(spec)
        .into_iter()
        .filter_map(|name| {
            let files = templates.sources(name)?;
            Some(TemplateVersion {
                digest: templates.digest(name)?,
                name: name.to_owned(),
                files: files.into_iter().collect(),
            })
        })
        .collect()
}

/// Where a campaign's current version stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalState {
    /// Approved, with the templates a run would use now.
    Approved(Approval),
    /// No approval of this version.
    Missing { version: i64, applied_by: String },
    /// Approved, but these templates changed since.
    TemplatesChanged { approval: Approval, changed: Vec<String> },
}

impl ApprovalState {
    /// What is missing for `c` to run, as a sentence; `None` when approved.
    pub fn missing(&self, c: &CampaignRecord) -> Option<String> {
        match self {
            ApprovalState::Approved(_) => None,
            ApprovalState::Missing { version, applied_by } => Some(format!(
                "campaign {} version {version} is not approved, and require_approval is on: someone other than \
                 {applied_by} (who applied it) must run `reverify campaign approve {}`",
                c.name, c.name
            )),
            ApprovalState::TemplatesChanged { approval, changed } => Some(format!(
                "campaign {} version {} was approved by {}, but its template{} {} changed since: \
                 it must be approved again (`reverify campaign approve {}`)",
                c.name,
                approval.version,
                approval.approver,
                if changed.len() == 1 { "" } else { "s" },
                changed.join(", "),
                c.name
            )),
        }
    }
}

/// The state of `c`'s current version; `now` are the templates a run would render
/// (`None`: not compared).
///
/// # Errors
/// [`StoreError::Query`].
pub async fn approval_state(
    store: &Store,
    c: &CampaignRecord,
    now: Option<&[TemplateVersion]>,
) -> Result<ApprovalState, StoreError> {
    let Some(approval) = store.approval_current(c).await? else {
        let applied_by = store
            .campaign_versions(c.campaign_id)
            .await?
            .into_iter()
            .find(|v| v.version == c.version)
            .map_or_else(|| "unknown".to_owned(), |v| v.applied_by);
        return Ok(ApprovalState::Missing { version: c.version, applied_by });
    };
    let Some(now) = now else { return Ok(ApprovalState::Approved(approval)) };
    let current: BTreeMap<&str, &str> = now.iter().map(|t| (t.name.as_str(), t.digest.as_str())).collect();
    let mut changed: Vec<String> = current
        .iter()
        .filter(|(name, digest)| approval.templates.get(**name).map(String::as_str) != Some(**digest))
        .map(|(name, _)| (*name).to_owned())
        .collect();
    changed.extend(approval.templates.keys().filter(|n| !current.contains_key(n.as_str())).cloned());
    Ok(if changed.is_empty() {
        ApprovalState::Approved(approval)
    } else {
        ApprovalState::TemplatesChanged { approval, changed }
    })
}

/// Records `approver`'s approval of `c` at `version` (the version they looked at),
/// over the templates a run would render now (`loaded`) and the plan counted now:
/// what `campaign approve` and the dashboard's Approve button both do.
///
/// # Errors
/// [`StoreError::Conflict`] when the store refuses it (another version was applied
/// meanwhile, or the approver applied this one); other store failures.
pub async fn approve(
    store: &Store,
    c: &CampaignRecord,
    spec: &CampaignSpec,
    loaded: &Templates,
    approver: &str,
    version: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Approval, StoreError> {
    let templates = template_versions(spec, loaded);
    let plan = store
        .campaign_plan(c.campaign_id, &spec.audience, now)
        .await?
        .into_iter()
        .map(|b| (b.bucket, b.count))
        .collect();
    let ask = crate::store::approvals::NewApproval { approver, version, templates: &templates, plan };
    store.campaign_approve(c, &ask, now).await
}
