//! Evidence bundles: what a compliance team hands a regulator about one campaign,
//! in a directory that can be checked without the database.
//!
//! Layout (every path relative to the bundle):
//! - `report.csv`: `campaign report`, one row per target;
//! - `events.jsonl`: the campaign's audit events as stored, with their chain
//!   places and hashes (`detail` as the stored text, so each hash can be recomputed
//!   with [`crate::store::chain::event_hash`]);
//! - `versions/vN.toml`: every applied version of the campaign file, and
//!   `versions.json`: who applied each, when, and its SHA-256;
//! - `templates/NAME-DIGEST/FILE`: every template version an approval covers or a
//!   delivery names, and `templates.json`: each one's digest and files' SHA-256;
//! - `approvals.json`;
//! - `manifest.json`: each file above with its SHA-256 and size, and the audit
//!   chain's head when the bundle was written.
//!
//! [`verify`] checks a bundle: every file against the manifest (no file missing,
//! changed or added), each event's hash, each version's and template's digest.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::{ReportFormat, write_report};
use crate::store::Store;
use crate::store::approvals::TemplateVersion;
use crate::store::campaigns::CampaignRecord;
use crate::store::chain::{ChainHead, ChainedEvent, event_hash};

/// The manifest's `format`.
pub const FORMAT: &str = "reverify-evidence/1";

/// Why a bundle could not be written or does not verify. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {message}")]
    Mismatch { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |e| EvidenceError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// One file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub campaign: String,
    pub campaign_id: i64,
    pub generated_at: DateTime<Utc>,
    pub generated_by: String,
    /// The audit chain's head when the bundle was written: every event up to it is
    /// pinned by this hash.
    pub chain_head: ChainHead,
    pub files: Vec<ManifestFile>,
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json` itself: keep it elsewhere to pin the bundle.
    pub manifest_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Files written so far, with their hashes.
struct Bundle {
    dir: PathBuf,
    files: Vec<ManifestFile>,
}

impl Bundle {
    fn put(&mut self, rel: &str, bytes: &[u8]) -> Result<(), EvidenceError> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
        self.files.push(ManifestFile { path: rel.to_owned(), sha256: sha256_hex(bytes), bytes: bytes.len() as u64 });
        Ok(())
    }
}

/// A template version's directory in the bundle.
fn template_dir(t: &TemplateVersion) -> String {
    format!("templates/{}-{}", t.name, &t.digest[..t.digest.len().min(16)])
}

/// Writes the bundle for `c` into `dir` (created; refused when it exists and is
/// not empty). The caller seals the audit chain first.
///
/// # Errors
/// [`EvidenceError`] naming the file.
pub async fn write(
    store: &Store,
    c: &CampaignRecord,
    dir: &Path,
    generated_by: &str,
    now: DateTime<Utc>,
) -> Result<Written, EvidenceError> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(EvidenceError::Io {
            path: dir.display().to_string(),
            message: "exists and is not empty: give a new directory".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let head = store.audit_head().await?;
    let mut b = Bundle { dir: dir.to_path_buf(), files: Vec::new() };

    let mut report = Vec::new();
    write_report(store, c.campaign_id, ReportFormat::Csv, &mut report)
        .await
        .map_err(|e| EvidenceError::Io { path: "report.csv".into(), message: e.to_string() })?;
    b.put("report.csv", &report)?;

    // the events, and the template versions their deliveries name
    let mut events = Vec::new();
    let mut digests: BTreeSet<String> = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = store.audit_events_page(c.campaign_id, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.event_id;
        for e in &page {
            if let Some(d) = e.detail.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                && let Some(t) = d.get("template_sha256").and_then(|t| t.as_str())
            {
                digests.insert(t.to_owned());
            }
            serde_json::to_writer(&mut events, e)
                .map_err(|e| EvidenceError::Io { path: "events.jsonl".into(), message: e.to_string() })?;
            events.push(b'\n');
        }
    }
    b.put("events.jsonl", &events)?;

    let versions = store.campaign_versions(c.campaign_id).await?;
    for v in &versions {
        b.put(&format!("versions/v{}.toml", v.version), v.spec_toml.as_bytes())?;
    }
    let listed: Vec<serde_json::Value> = versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "version": v.version, "file": format!("versions/v{}.toml", v.version), "sha256": v.spec_hash,
                "applied_by": v.applied_by, "applied_at": v.applied_at,
            })
        })
        .collect();
    b.put("versions.json", &pretty(&listed))?;

    let approvals = store.approval_list(c.campaign_id).await?;
    for a in &approvals {
        digests.extend(a.templates.values().cloned());
    }
    b.put("approvals.json", &pretty(&approvals))?;

    let templates = store.template_versions_get(&digests.into_iter().collect::<Vec<_>>()).await?;
    let mut listed = Vec::new();
    for t in &templates {
        let at = template_dir(t);
        let mut files = serde_json::Map::new();
        for (file, text) in &t.files {
            b.put(&format!("{at}/{file}"), text.as_bytes())?;
            files.insert(file.clone(), sha256_hex(text.as_bytes()).into());
        }
        listed.push(serde_json::json!({ "name": t.name, "digest": t.digest, "dir": at, "files": files }));
    }
    b.put("templates.json", &pretty(&listed))?;

    let manifest = Manifest {
        format: FORMAT.into(),
        campaign: c.name.to_string(),
        campaign_id: c.campaign_id,
        generated_at: now,
        generated_by: generated_by.to_owned(),
        chain_head: head,
        files: b.files,
    };
    let text = pretty(&manifest);
    let path = dir.join("manifest.json");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(&text)).map_err(io(&path))?;
    Ok(Written { manifest, manifest_sha256: sha256_hex(&text) })
}

fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// What a bundle that verifies holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub events: u64,
}

fn mismatch(path: &str, message: impl Into<String>) -> EvidenceError {
    EvidenceError::Mismatch { path: path.to_owned(), message: message.into() }
}

/// Checks the bundle in `dir`: the manifest's files (none missing, changed or
/// added), then each event's hash, each version's SHA-256 and each template's
/// digest.
///
/// # Errors
/// [`EvidenceError::Mismatch`] naming the first file that does not match.
pub fn verify(dir: &Path) -> Result<Verified, EvidenceError> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| mismatch("manifest.json", format!("not a manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(mismatch("manifest.json", format!("format {:?} is not {FORMAT:?}", manifest.format)));
    }
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(mismatch(&f.path, "not a plain path inside the bundle"));
        }
        let bytes = std::fs::read(dir.join(rel)).map_err(|e| mismatch(&f.path, format!("cannot read: {e}")))?;
        let got = sha256_hex(&bytes);
        if got != f.sha256 {
            return Err(mismatch(&f.path, format!("SHA-256 is {got}, the manifest says {}: it was changed", f.sha256)));
        }
        listed.insert(f.path.clone());
    }
    for found in files_under(dir, dir)? {
        if found != "manifest.json" && !listed.contains(&found) {
            return Err(mismatch(&found, "is not in the manifest: it was added"));
        }
    }
    // inside the files: what each one claims, recomputed
    let read = |rel: &str| std::fs::read(dir.join(rel)).map_err(|e| mismatch(rel, format!("cannot read: {e}")));
    let mut events = 0u64;
    if listed.contains("events.jsonl") {
        let text = read("events.jsonl")?;
        for (i, line) in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let at = format!("events.jsonl:{}", i + 1);
            let e: ChainedEvent = serde_json::from_slice(line).map_err(|err| mismatch(&at, err.to_string()))?;
            if let (Some(seq), Some(prev), Some(hash)) = (e.chain_seq, e.prev_hash.as_deref(), e.hash.as_deref())
                && event_hash(seq, prev, &e) != hash
            {
                return Err(mismatch(&at, format!("event {} does not match its chain hash", e.event_id)));
            }
            events += 1;
        }
    }
    if listed.contains("versions.json") {
        let versions: Vec<serde_json::Value> =
            serde_json::from_slice(&read("versions.json")?).map_err(|e| mismatch("versions.json", e.to_string()))?;
        for v in versions {
            let (Some(file), Some(sha)) = (v["file"].as_str(), v["sha256"].as_str()) else { continue };
            if sha256_hex(&read(file)?) != sha {
                return Err(mismatch(file, format!("does not hash to the applied version's SHA-256 {sha}")));
            }
        }
    }
    if listed.contains("templates.json") {
        let templates: Vec<serde_json::Value> =
            serde_json::from_slice(&read("templates.json")?).map_err(|e| mismatch("templates.json", e.to_string()))?;
        for t in templates {
            let (Some(at), Some(digest)) = (t["dir"].as_str(), t["digest"].as_str()) else { continue };
            let mut files = Vec::new();
            for file in t["files"].as_object().into_iter().flat_map(|f| f.keys()) {
                let text = String::from_utf8(read(&format!("{at}/{file}"))?)
                    .map_err(|_| mismatch(&format!("{at}/{file}"), "not UTF-8"))?;
                files.push((file.clone(), text));
            }
            if crate::notify::template_digest(&files) != digest {
                return Err(mismatch(at, format!("the files do not make the template version {digest}")));
            }
        }
    }
    Ok(Verified { manifest, manifest_sha256: sha256_hex(&text), events })
}

/// Every file under `dir`, as paths relative to `root` with `/`.
fn files_under(root: &Path, dir: &Path) -> Result<Vec<String>, EvidenceError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            out.extend(files_under(root, &path)?);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
        }
    }
    Ok(out)
}
