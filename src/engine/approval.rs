//! Whether a campaign version may run under four eyes (`require_approval`): it
//! needs an approval of its current version whose templates are the ones a run
//! would render now.
//!
//! Issue 24 binds this to people and to the database:
//! - `require_approval` is held by the database ([`policy`]); a process's settings
//!   may turn it on, never off.
//! - With `approvers_file`, applying and approving each take an SSH signature
//!   (namespace `reverify`) over a message naming the campaign, the version and
//!   what is approved ([`apply_message`], [`approve_message`]); the recorded actor
//!   is the principal the key proves, and four eyes means two principals.
//! - Before a run sends, it recomputes the version's digest from the file and the
//!   templates it would render, and checks it, and the signatures, again
//!   ([`approval_verified`]): a row written by hand does not pass.

use std::collections::BTreeMap;

use crate::crypto::sshsig::{self, Signers, SshSigError};
use crate::domain::CampaignSpec;
use crate::notify::{Templates, templates_used};
use crate::store::approvals::{Approval, TemplateVersion, approval_digest, same_person};
use crate::store::campaigns::{CampaignRecord, spec_hash};
use crate::store::settings::StoredSetting;
use crate::store::{Store, StoreError};

/// The database setting that holds four eyes: `false`, `true`, or `signed`
/// (approvals need SSH signatures by the approvers [`APPROVERS`] pins).
pub const REQUIRE_APPROVAL: &str = "require_approval";
/// The database setting that pins the approvers (the `allowed_signers` text) while
/// `require_approval` is `signed`: a runner pointing `approvers_file` at a file of
/// its own is refused.
pub const APPROVERS: &str = "approvers";

/// What is signed to apply `version` of campaign `name`, whose file has SHA-256
/// `file_sha256` (`campaign digest NAME --file FILE` prints it).
pub fn apply_message(name: &str, version: i64, file_sha256: &str) -> String {
    format!("reverify campaign apply\ncampaign: {name}\nversion: {version}\nfile-sha256: {file_sha256}\n")
}

/// What is signed to approve `version` of campaign `name`, whose approval digest
/// ([`approval_digest`]) is `digest` (`campaign digest NAME --version N` prints it).
pub fn approve_message(name: &str, version: i64, digest: &str) -> String {
    format!("reverify campaign approve\ncampaign: {name}\nversion: {version}\ndigest: {digest}\n")
}

/// What is signed to set a database setting `key` to `value`, replacing the state
/// set at `replaces` (milliseconds; 0 when never set), so that a signature is good
/// for one change only (`settings digest KEY VALUE` prints it).
pub fn setting_message(key: &str, value: &str, replaces: i64) -> String {
    format!("reverify settings set\n{key}: {value}\nreplaces: {replaces}\n")
}

/// The approvers (`approvers_file`): its text, as the database pins it, and the
/// keys it lists.
#[derive(Debug, Clone)]
pub struct Approvers {
    pub text: String,
    pub signers: Signers,
}

impl Approvers {
    /// Reads and parses an `allowed_signers` file.
    ///
    /// # Errors
    /// [`SshSigError`] naming the file and line.
    pub fn load(path: &std::path::Path) -> Result<Self, SshSigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SshSigError::Key { path: path.display().to_string(), message: format!("cannot read: {e}") })?;
        Self::parse(&text, path)
    }

    /// Parses the text of an `allowed_signers` file (`path` names it in errors).
    ///
    /// # Errors
    /// [`SshSigError::AllowedSigners`] naming the line.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, SshSigError> {
        let signers = Signers::AllowedSigners(sshsig::AllowedSigners::parse(text, path)?);
        Ok(Self { text: text.to_owned(), signers })
    }
}

/// Checks `signature` over `message` against the approvers; returns the principal.
///
/// # Errors
/// [`SshSigError`]: not a signature, another namespace or message, a key not listed.
pub fn prove(approvers: &Approvers, message: &str, signature: &str) -> Result<String, SshSigError> {
    sshsig::verify(&approvers.signers, sshsig::NAMESPACE, message.as_bytes(), signature)
}

/// Four eyes as the database and this process's settings make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A version runs only once approved.
    pub required: bool,
    /// Approvals (and applies) need SSH signatures: the database says so
    /// (`require_approval = signed`), or this process has `approvers_file` set.
    pub signed: bool,
    /// The database's row, if any.
    pub stored: Option<StoredSetting>,
    /// The approvers the database pins (`signed`), as text.
    pub pinned: Option<String>,
}

/// The policy in force: the database's `require_approval`, which `ask` (this
/// process's `require_approval` setting) may turn on but never off.
/// `approvers` is this process's `approvers_file` text.
///
/// # Errors
/// A sentence when `ask` is `Some(false)` and the database has it on, or when the
/// database asks for signatures and `approvers` is not the file it pins.
pub async fn policy(
    store: &Store,
    ask: Option<bool>,
    approvers: Option<&str>,
) -> Result<Result<Policy, String>, StoreError> {
    let stored = store.setting_get(REQUIRE_APPROVAL).await?;
    let pinned = store.setting_get(APPROVERS).await?.map(|s| s.value);
    let db = stored.as_ref().map_or("false", |s| s.value.as_str());
    let db_on = matches!(db, "true" | "signed");
    if ask == Some(false) && db_on {
        let s =
            stored.as_ref().map(|s| format!(" (set by {} at {})", s.set_by, s.set_at.to_rfc3339())).unwrap_or_default();
        return Ok(Err(format!(
            "require_approval is on in the database{s}; REVERIFY_REQUIRE_APPROVAL=false (or require_approval = false) \
             cannot turn it off: an approver can, with `reverify settings set require_approval false`, which is audited"
        )));
    }
    if db == "signed" {
        match approvers {
            None => {
                return Ok(Err("the database requires signed approvals (require_approval = signed): set \
                     approvers_file (REVERIFY_APPROVERS_FILE) to the approvers' allowed_signers file"
                    .to_owned()));
            }
            Some(text) if Some(text.trim()) != pinned.as_deref().map(str::trim) => {
                return Ok(Err("approvers_file is not the approvers file the database pins (it was pinned when \
                     require_approval was turned on with signatures): an approver of the pinned file can \
                     pin another with `reverify settings set require_approval true --sign-with KEY`"
                    .to_owned()));
            }
            Some(_) => {}
        }
    }
    let required = db_on || ask == Some(true);
    Ok(Ok(Policy { required, signed: db == "signed" || (required && approvers.is_some()), stored, pinned }))
}

/// An approval a run checked and runs under, for its `run.started` event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunApproval {
    pub approval_id: i64,
    pub digest: String,
    pub approver: String,
    pub applied_by: String,
    /// Whether both were proven by signatures.
    pub signed: bool,
}

impl RunApproval {
    /// The `approval` part of `run.started`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "approval_id": self.approval_id, "digest": self.digest, "signed": self.signed,
            "principals": { "applied_by": self.applied_by, "approved_by": self.approver },
        })
    }
}

/// Checks `c`'s approval as a run about to send must: it covers the current
/// version, its digest recomputed from the stored file, the templates the run
/// renders (`now`) and the plan it recorded equals the one it holds, the applier
/// and the approver are two people, and, with `approvers`, both signatures verify
/// to those two principals. `Ok(Err(why))` names what fails.
///
/// # Errors
/// [`StoreError::Query`].
pub async fn approval_verified(
    store: &Store,
    c: &CampaignRecord,
    now: &[TemplateVersion],
    approvers: Option<&Approvers>,
) -> Result<Result<RunApproval, String>, StoreError> {
    let approval = match approval_state(store, c, Some(now)).await? {
        ApprovalState::Approved(a) => a,
        other => return Ok(Err(other.missing(c).unwrap_or_default())),
    };
    let refuse = |why: String| Ok(Err(format!("campaign {} version {}: {why}", c.name, c.version)));
    let version = store.campaign_versions(c.campaign_id).await?.into_iter().find(|v| v.version == c.version);
    let Some(version) = version else { return refuse("its applied file is not on record".into()) };
    let file_sha = spec_hash(&c.spec_toml);
    if file_sha != c.spec_hash || file_sha != version.spec_hash || version.spec_toml != c.spec_toml {
        return refuse("the stored file does not match its recorded hash: it was changed outside reverify".into());
    }
    let templates: BTreeMap<String, String> = now.iter().map(|t| (t.name.clone(), t.digest.clone())).collect();
    let digest = approval_digest(&file_sha, &templates, &approval.plan);
    if digest != approval.digest {
        return refuse(format!(
            "approval {} is for digest {}, but the file, the templates and the approved plan give {digest} now: \
             it does not cover what would be sent; approve it again",
            approval.approval_id, approval.digest
        ));
    }
    let (mut applied_by, mut approver) = (version.applied_by.clone(), approval.approver.clone());
    if let Some(approvers) = approvers {
        let Some(sig) = version.signature.as_deref() else {
            return refuse(
                "it was applied without a signature, and approvers_file is set: apply it again signed \
                 (campaign apply FILE --sign-with KEY)"
                    .into(),
            );
        };
        applied_by = match prove(approvers, &apply_message(c.name.as_str(), c.version, &file_sha), sig) {
            Ok(p) => p,
            Err(e) => return refuse(format!("the signature of whoever applied it does not verify: {e}")),
        };
        let Some(sig) = approval.signature.as_deref() else {
            return refuse(format!(
                "approval {} has no signature, and approvers_file is set: approve it with --sign-with or --signature",
                approval.approval_id
            ));
        };
        approver = match prove(approvers, &approve_message(c.name.as_str(), c.version, &digest), sig) {
            Ok(p) => p,
            Err(e) => {
                return refuse(format!("the signature of approval {} does not verify: {e}", approval.approval_id));
            }
        };
        if approver != approval.approver || applied_by != version.applied_by {
            return refuse(format!(
                "the recorded people ({} applied, {} approved) are not the ones the signatures prove ({applied_by}, {approver})",
                version.applied_by, approval.approver
            ));
        }
    }
    if same_person(&applied_by, &approver) {
        return refuse(format!("it was applied and approved by one person ({approver}): four eyes need two"));
    }
    Ok(Ok(RunApproval { approval_id: approval.approval_id, digest, approver, applied_by, signed: approvers.is_some() }))
}

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

/// What [`approve`] records: `approver`'s approval of `c` at `version`.
#[derive(Clone, Copy)]
pub struct ApproveParams<'a> {
    /// The campaign approved.
    pub c: &'a CampaignRecord,
    /// Its parsed file.
    pub spec: &'a CampaignSpec,
    /// The templates a run would render now.
    pub loaded: &'a Templates,
    /// Who approves.
    pub approver: &'a str,
    /// The version they looked at.
    pub version: i64,
    /// When they approve.
    pub now: chrono::DateTime<chrono::Utc>,
}

/// Records `approver`'s approval of `c` at `version` (the version they looked at),
/// over the templates a run would render now (`loaded`) and the plan counted now:
/// what `campaign approve` and the dashboard's Approve button both do.
///
/// # Errors
/// [`StoreError::Conflict`] when the store refuses it (another version was applied
/// meanwhile, or the approver applied this one); other store failures.
pub async fn approve(store: &Store, p: &ApproveParams<'_>) -> Result<Approval, StoreError> {
    let ApproveParams { c, spec, loaded, approver, version, now } = *p;
    let pending = pending(store, c, spec, loaded, now).await?;
    let ask = crate::store::approvals::NewApproval {
        approver,
        version,
        templates: &pending.templates,
        plan: pending.plan,
        signature: None,
        applied_by: None,
    };
    store.campaign_approve(c, &ask, now).await
}

/// What an approval of `c`'s current version would cover now: the templates a run
/// would render, the plan, and the digest over them and the file.
#[derive(Debug, Clone)]
pub struct Pending {
    pub templates: Vec<TemplateVersion>,
    pub plan: BTreeMap<String, i64>,
    pub digest: String,
}

/// [`Pending`] for `c` now (`campaign digest` prints its [`approve_message`]).
///
/// # Errors
/// [`StoreError::Query`].
pub async fn pending(
    store: &Store,
    c: &CampaignRecord,
    spec: &CampaignSpec,
    loaded: &Templates,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Pending, StoreError> {
    let templates = template_versions(spec, loaded);
    let plan: BTreeMap<String, i64> = store
        .campaign_plan(c.campaign_id, &spec.audience, now)
        .await?
        .into_iter()
        .map(|b| (b.bucket, b.count))
        .collect();
    let names: BTreeMap<String, String> = templates.iter().map(|t| (t.name.clone(), t.digest.clone())).collect();
    let digest = approval_digest(&c.spec_hash, &names, &plan);
    Ok(Pending { templates, plan, digest })
}

/// Who signs an apply, an approval or a setting, with what: `--sign-with KEY` or
/// `--signature FILE` (made elsewhere).
#[derive(Debug, Clone)]
pub enum Proof {
    SignWith(std::path::PathBuf),
    Signature(String),
}

impl Proof {
    /// The armored signature over `message`: made now with the key, or the one given.
    ///
    /// # Errors
    /// [`SshSigError`] from signing.
    pub fn signature(&self, message: &str) -> Result<String, SshSigError> {
        match self {
            Proof::SignWith(key) => sshsig::sign(key, sshsig::NAMESPACE, message.as_bytes()),
            Proof::Signature(s) => Ok(s.clone()),
        }
    }
}

/// [`approve`] by a proven approver: the signature over [`approve_message`] with
/// the digest computed now must verify against `approvers`, and so must the
/// version's own apply signature; the principals are recorded and compared.
///
/// # Errors
/// `Err(Ok(why))` for a refused proof (the message says what to do), `Err(Err(e))`
/// for the store ([`StoreError::Conflict`]: four eyes, another version, already approved).
#[allow(clippy::too_many_arguments)]
pub async fn approve_signed(
    store: &Store,
    c: &CampaignRecord,
    spec: &CampaignSpec,
    loaded: &Templates,
    approvers: &Approvers,
    proof: &Proof,
    version: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Approval, Result<String, StoreError>> {
    if version != c.version {
        return Err(Ok(format!(
            "campaign {} is at version {} now, not {version}: look at it again (campaign show) before approving",
            c.name, c.version
        )));
    }
    let pending = pending(store, c, spec, loaded, now).await.map_err(Err)?;
    let message = approve_message(c.name.as_str(), version, &pending.digest);
    let signature = proof.signature(&message).map_err(|e| Ok(e.to_string()))?;
    let approver = prove(approvers, &message, &signature).map_err(|e| {
        Ok(format!(
            "the approval's signature does not prove an approver: {e}\n\
             (sign exactly what `reverify campaign digest {} --version {version}` prints now: the file, the \
             templates or the plan may have changed since it was signed)",
            c.name
        ))
    })?;
    let applied = store.campaign_versions(c.campaign_id).await.map_err(Err)?.into_iter().find(|v| v.version == version);
    let applied_by = match applied.as_ref().and_then(|v| v.signature.as_deref()) {
        Some(sig) => prove(approvers, &apply_message(c.name.as_str(), version, &c.spec_hash), sig)
            .map_err(|e| Ok(format!("the signature of whoever applied version {version} does not verify: {e}")))?,
        None => {
            return Err(Ok(format!(
                "campaign {} version {version} was applied without a signature, and approvers_file is set: \
                 whoever applies it must sign (campaign apply FILE --sign-with KEY) before it can be approved",
                c.name
            )));
        }
    };
    let ask = crate::store::approvals::NewApproval {
        approver: &approver,
        version,
        templates: &pending.templates,
        plan: pending.plan,
        signature: Some(&signature),
        applied_by: Some(&applied_by),
    };
    store.campaign_approve(c, &ask, now).await.map_err(Err)
}
