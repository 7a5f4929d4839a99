//! Evidence bundles: what a compliance team hands a regulator about one campaign,
//! in a directory that can be checked without the database.
//!
//! Layout (every path relative to the bundle):
//! - `report.csv`: `campaign report`, one row per target;
//! - `events.jsonl`: the audit chain's segment from the campaign's first event to
//!   the head, one line per place, every link included. The campaign's events are
//!   whole, as stored (`detail` as the stored text, so that a plain link can be
//!   recomputed with [`crate::store::chain::event_hash`]); the events of other
//!   campaigns, and those of no campaign, in between are links only
//!   (`chain_seq`, `prev_hash`, `hash`): their place and hash, not their content,
//!   which belongs to other campaigns and other people;
//! - `versions/vN.toml`: every applied version of the campaign file, and
//!   `versions.json`: who applied each, when, and its SHA-256;
//! - `templates/NAME-DIGEST/FILE`: every template version an approval covers or a
//!   delivery names, and `templates.json`: each one's digest and files' SHA-256;
//! - `approvals.json`;
//! - `manifest.json`: each file above with its SHA-256 and size, the chain's head
//!   when the bundle was written and where its segment starts;
//! - `manifest.json.sig`: an SSH signature (SSHSIG, namespace `reverify`) over
//!   `manifest.json` by `evidence_signing_key`, when it is set: `ssh-keygen -Y
//!   verify -n reverify` checks it too.
//!
//! [`verify`] checks a bundle: the signature, when a key to check it with is given;
//! no path leaving the bundle (`..`, an absolute path, a symbolic link); every file
//! against the manifest (none missing, changed or added); every line of the
//! segment sealed, every link to the line before, every plain link recomputed, the
//! last one the manifest's head; each version's and template's digest.
//!
//! What it does not prove: without the signature, anyone can rewrite a bundle and
//! its manifest consistently (a link-only line can hide a campaign's event, a
//! whole segment can be recomputed), so an unsigned check is integrity only. Keyed
//! links (`audit_key`) cannot be recomputed without the key: their order and the
//! head are checked, their content rests on the signature.

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
use crate::store::chain::{ChainHead, ChainedEvent, event_hash, is_keyed};

pub mod sshsig;

/// The manifest's `format`.
pub const FORMAT: &str = "reverify-evidence/2";

/// The signature's file, beside the manifest.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";

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
    /// pinned by this hash, and `events.jsonl` ends there.
    pub chain_head: ChainHead,
    /// The chain place `events.jsonl` starts at: the campaign's first event (0
    /// when the campaign has no sealed event, and the segment is empty).
    pub chain_from: i64,
    /// How many of the segment's lines are the campaign's own events.
    pub campaign_events: u64,
    pub files: Vec<ManifestFile>,
}

/// A line of `events.jsonl`: a campaign's event whole, or another's link only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SegmentLine {
    Event(ChainedEvent),
    Link(LinkOnly),
}

/// Another campaign's event in the segment: its place and link, not its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOnly {
    pub chain_seq: Option<i64>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json` itself: keep it elsewhere to pin the bundle.
    pub manifest_sha256: String,
    /// The signing key's fingerprint, when the manifest was signed.
    pub signed_by: Option<String>,
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

/// What [`write`] writes: the bundle for `c` into `dir`.
#[derive(Clone, Copy)]
pub struct WriteParams<'a> {
    /// The campaign the bundle is for.
    pub c: &'a CampaignRecord,
    /// The directory it is written into.
    pub dir: &'a Path,
    /// Who generates it.
    pub generated_by: &'a str,
    /// When it is generated.
    pub now: DateTime<Utc>,
    /// The key it is signed with, when given.
    pub key: Option<&'a sshsig::SigningKey>,
}

/// Writes the bundle for `c` into `dir` (created; refused when it exists and is
/// not empty), signed with `key` when given. The caller seals the audit chain
/// first.
///
/// # Errors
/// [`EvidenceError`] naming the file.
pub async fn write(store: &Store, p: &WriteParams<'_>) -> Result<Written, EvidenceError> {
    let WriteParams { c, dir, generated_by, now, key } = *p;
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

    // the chain's segment from the campaign's first event to the head, and the
    // template versions its deliveries name
    let mut events = Vec::new();
    let mut digests: BTreeSet<String> = BTreeSet::new();
    let chain_from = store.audit_campaign_first(c.campaign_id).await?.filter(|f| *f <= head.seq).unwrap_or(0);
    let mut campaign_events = 0u64;
    // no sealed event of the campaign: start past the head, so the segment is empty
    let mut after = if chain_from > 0 { chain_from - 1 } else { head.seq };
    loop {
        let page = store.audit_segment_page(after, head.seq, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.chain_seq.unwrap_or(head.seq);
        for e in page {
            let line = if e.campaign_id == Some(c.campaign_id) {
                if let Some(d) = e.detail.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                    && let Some(t) = d.get("template_sha256").and_then(|t| t.as_str())
                {
                    digests.insert(t.to_owned());
                }
                campaign_events += 1;
                SegmentLine::Event(e)
            } else {
                SegmentLine::Link(LinkOnly { chain_seq: e.chain_seq, prev_hash: e.prev_hash, hash: e.hash })
            };
            serde_json::to_writer(&mut events, &line)
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
        chain_from,
        campaign_events,
        files: b.files,
    };
    let text = pretty(&manifest);
    let path = dir.join("manifest.json");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(&text)).map_err(io(&path))?;
    let signed_by = match key {
        Some(k) => {
            let sig = k.sign(&text).map_err(|m| EvidenceError::Io { path: SIGNATURE_FILE.into(), message: m })?;
            let path = dir.join(SIGNATURE_FILE);
            std::fs::write(&path, sig).map_err(io(&path))?;
            Some(k.fingerprint())
        }
        None => None,
    };
    Ok(Written { manifest, manifest_sha256: sha256_hex(&text), signed_by })
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
    /// The campaign's events checked.
    pub events: u64,
    /// Every line of the segment (the campaign's events and the links between).
    pub links: u64,
    /// Of the campaign's events, how many have a keyed link (not recomputable
    /// without `audit_key`).
    pub keyed: u64,
    /// Who signed (the principal, or the key's fingerprint); `None` when no key was
    /// given to check with: integrity only, not origin.
    pub signed_by: Option<String>,
}

fn mismatch(path: &str, message: impl Into<String>) -> EvidenceError {
    EvidenceError::Mismatch { path: path.to_owned(), message: message.into() }
}

/// Checks the bundle in `dir` (see the module docs); with `trusted`, the
/// manifest's signature first.
///
/// # Errors
/// [`EvidenceError::Mismatch`] naming the first file (and line) that does not
/// match.
pub fn verify(dir: &Path, trusted: Option<&sshsig::Trusted>) -> Result<Verified, EvidenceError> {
    // nothing in the bundle is a link: a link out would be read as the bundle's
    let found = files_under(dir, dir)?;
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let signed_by = match trusted {
        None => None,
        Some(t) => {
            let sig = std::fs::read_to_string(dir.join(SIGNATURE_FILE)).map_err(|e| {
                mismatch(
                    SIGNATURE_FILE,
                    format!("cannot read ({e}): the bundle is not signed, or its signature was removed"),
                )
            })?;
            Some(sshsig::verify(t, &text, &sig).map_err(|m| mismatch(SIGNATURE_FILE, m))?)
        }
    };
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| mismatch("manifest.json", format!("not a manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(mismatch("manifest.json", format!("format {:?} is not {FORMAT:?}", manifest.format)));
    }
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        if !plain_inside(&f.path) {
            return Err(mismatch(&f.path, "is not a plain path inside the bundle (an absolute path, or ..)"));
        }
        let bytes = std::fs::read(dir.join(&f.path)).map_err(|e| mismatch(&f.path, format!("cannot read: {e}")))?;
        let got = sha256_hex(&bytes);
        if got != f.sha256 {
            return Err(mismatch(&f.path, format!("SHA-256 is {got}, the manifest says {}: it was changed", f.sha256)));
        }
        listed.insert(f.path.clone());
    }
    for found in found {
        if found != "manifest.json" && found != SIGNATURE_FILE && !listed.contains(&found) {
            return Err(mismatch(&found, "is not in the manifest: it was added"));
        }
    }
    // inside the files: what each one claims, recomputed; every path a file names
    // is one the manifest lists (so plain, inside, and hashed)
    let read = |from: &str, rel: &str| {
        if !listed.contains(rel) {
            return Err(mismatch(
                from,
                format!(
                    "names {rel:?}, which is not a file of the bundle (an absolute path, .., or not in the manifest)"
                ),
            ));
        }
        std::fs::read(dir.join(rel)).map_err(|e| mismatch(rel, format!("cannot read: {e}")))
    };
    let (events, links, keyed) = if listed.contains("events.jsonl") {
        verify_segment(&read("manifest.json", "events.jsonl")?, &manifest)?
    } else {
        return Err(mismatch("events.jsonl", "is missing from the manifest"));
    };
    if listed.contains("versions.json") {
        let versions: Vec<serde_json::Value> = serde_json::from_slice(&read("manifest.json", "versions.json")?)
            .map_err(|e| mismatch("versions.json", e.to_string()))?;
        for v in versions {
            let (Some(file), Some(sha)) = (v["file"].as_str(), v["sha256"].as_str()) else {
                return Err(mismatch("versions.json", format!("a version without its file or sha256: {v}")));
            };
            if sha256_hex(&read("versions.json", file)?) != sha {
                return Err(mismatch(file, format!("does not hash to the applied version's SHA-256 {sha}")));
            }
        }
    }
    if listed.contains("templates.json") {
        let templates: Vec<serde_json::Value> = serde_json::from_slice(&read("manifest.json", "templates.json")?)
            .map_err(|e| mismatch("templates.json", e.to_string()))?;
        for t in templates {
            let (Some(at), Some(digest)) = (t["dir"].as_str(), t["digest"].as_str()) else {
                return Err(mismatch("templates.json", format!("a template without its dir or digest: {t}")));
            };
            let mut files = Vec::new();
            for file in t["files"].as_object().into_iter().flat_map(|f| f.keys()) {
                let rel = format!("{at}/{file}");
                let text = String::from_utf8(read("templates.json", &rel)?).map_err(|_| mismatch(&rel, "not UTF-8"))?;
                files.push((file.clone(), text));
            }
            if crate::notify::template_digest(&files) != digest {
                return Err(mismatch(at, format!("the files do not make the template version {digest}")));
            }
        }
    }
    Ok(Verified { manifest, manifest_sha256: sha256_hex(&text), events, links, keyed, signed_by })
}

/// A relative path of plain names only: no root, no `..`, no `.`.
fn plain_inside(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty() && !p.is_absolute() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Checks `events.jsonl`: every line sealed, each linked to the one before, the
/// campaign's plain links recomputed, the places from the manifest's start to its
/// head. Returns the campaign's events, all lines, and the keyed ones.
fn verify_segment(text: &[u8], m: &Manifest) -> Result<(u64, u64, u64), EvidenceError> {
    let (mut events, mut links, mut keyed) = (0u64, 0u64, 0u64);
    // the line before: its place, link, and what it was
    let mut before: Option<(i64, String, String)> = None;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let at = format!("events.jsonl:{}", i + 1);
        let parsed: SegmentLine =
            serde_json::from_slice(line).map_err(|err| mismatch(&at, format!("neither an event nor a link: {err}")))?;
        let (seq, prev, hash, what) = match &parsed {
            SegmentLine::Event(e) => {
                (e.chain_seq, e.prev_hash.as_deref(), e.hash.as_deref(), format!("event {}", e.event_id))
            }
            SegmentLine::Link(l) => (l.chain_seq, l.prev_hash.as_deref(), l.hash.as_deref(), "a link".to_owned()),
        };
        let (Some(seq), Some(prev), Some(hash)) = (seq, prev, hash) else {
            return Err(mismatch(&at, format!("{what} is not sealed (no chain place or hash): it was added")));
        };
        match &before {
            None if seq != m.chain_from => {
                return Err(mismatch(
                    &at,
                    format!("the segment starts at chain place {seq}, the manifest says {}", m.chain_from),
                ));
            }
            None => {}
            Some((s, _, _)) if seq != s + 1 => {
                return Err(mismatch(
                    &at,
                    format!(
                        "chain place {} is missing (this line is place {seq}, the one before {s}): it was dropped",
                        s + 1
                    ),
                ));
            }
            Some((s, h, w)) if prev != h => {
                return Err(mismatch(
                    &at,
                    format!(
                        "place {seq} does not link to place {s}: {w} (the line before) was changed and its hash \
                         recomputed, or replaced"
                    ),
                ));
            }
            Some(_) => {}
        }
        if let SegmentLine::Event(e) = &parsed {
            if e.campaign_id != Some(m.campaign_id) {
                return Err(mismatch(&at, format!("event {} is not of campaign {}", e.event_id, m.campaign)));
            }
            if is_keyed(hash) {
                keyed += 1;
            } else if event_hash(seq, prev, e) != hash {
                return Err(mismatch(
                    &at,
                    format!("event {} (chain place {seq}) does not match its link: it was changed", e.event_id),
                ));
            }
            events += 1;
        }
        links += 1;
        before = Some((seq, hash.to_owned(), what));
    }
    match before {
        None if m.chain_from == 0 => {}
        None => return Err(mismatch("events.jsonl", "is empty, but the manifest says the segment starts at a place")),
        Some((s, h, _)) if s != m.chain_head.seq || h != m.chain_head.hash => {
            return Err(mismatch(
                "events.jsonl",
                format!(
                    "ends at chain place {s} ({h}), not at the manifest's head, place {} ({}): its tail was cut or changed",
                    m.chain_head.seq, m.chain_head.hash
                ),
            ));
        }
        Some(_) => {}
    }
    if events != m.campaign_events {
        return Err(mismatch(
            "events.jsonl",
            format!("holds {events} of the campaign's events, the manifest says {}", m.campaign_events),
        ));
    }
    Ok((events, links, keyed))
}

/// Every file under `dir`, as paths relative to `root` with `/`; a symbolic link
/// anywhere is an error (it could lead out of the bundle).
fn files_under(root: &Path, dir: &Path) -> Result<Vec<String>, EvidenceError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let rel = path
            .strip_prefix(root)
            .map(|rel| rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"))
            .unwrap_or_else(|_| path.display().to_string());
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            return Err(mismatch(&rel, "is a symbolic link: a bundle holds only plain files"));
        } else if meta.is_dir() {
            out.extend(files_under(root, &path)?);
        } else {
            out.push(rel);
        }
    }
    Ok(out)
}
