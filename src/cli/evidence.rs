//! `campaign audit --verify`, `campaign evidence` and `evidence verify`: what a
//! regulator can check.

use std::path::{Path, PathBuf};

use chrono::Utc;
use clap::Subcommand;
use reverify::evidence::sshsig::{self, SigningKey, Trusted};
use reverify::store::Store;
use reverify::store::campaigns::CampaignRecord;
use reverify::store::events::NewEvent;

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Check an evidence bundle written by `campaign evidence`: the signature of
    /// manifest.json (with --public-key or --allowed-signers), no path leaving the
    /// bundle, every file against manifest.json (none missing, changed or added),
    /// every line of the audit chain's segment sealed and linked to the one before
    /// up to the head, each campaign version's and template's digest. Exits 1
    /// naming the first thing that does not match; 3 when it all matches but no key
    /// was given, so only integrity, not origin, was checked. Needs no database.
    Verify {
        /// The bundle's directory.
        dir: PathBuf,
        /// The signer's OpenSSH public key (ssh-ed25519 AAAA…).
        #[arg(long, value_name = "FILE", conflicts_with = "allowed_signers")]
        public_key: Option<PathBuf>,
        /// An OpenSSH allowed_signers file (principal, options, key), as for
        /// `ssh-keygen -Y verify -f`.
        #[arg(long, value_name = "FILE")]
        allowed_signers: Option<PathBuf>,
    },
}

/// Who may have signed, from the flags.
fn trusted(public_key: Option<&Path>, allowed: Option<&Path>) -> Result<Option<Trusted>, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    match (public_key, allowed) {
        (Some(p), _) => {
            sshsig::public_key(&read(p)?).map(|k| Some(Trusted::Key(k))).map_err(|m| format!("{}: {m}", p.display()))
        }
        (None, Some(p)) => {
            sshsig::allowed_signers(&read(p)?, &p.display().to_string()).map(|l| Some(Trusted::Signers(l)))
        }
        (None, None) => Ok(None),
    }
}

/// `reverify evidence …`: needs no settings.
pub fn run(cmd: EvidenceCommand) -> u8 {
    match cmd {
        EvidenceCommand::Verify { dir, public_key, allowed_signers } => {
            let trusted = match trusted(public_key.as_deref(), allowed_signers.as_deref()) {
                Ok(t) => t,
                Err(m) => {
                    eprintln!("error: {m}");
                    return exit::USAGE;
                }
            };
            match reverify::evidence::verify(&dir, trusted.as_ref()) {
                Ok(v) => {
                    let keyed = if v.keyed > 0 {
                        format!(" ({} with keyed links, checked for order only)", v.keyed)
                    } else {
                        String::new()
                    };
                    println!(
                        "{}: ok: campaign {}, {} files, {} events{keyed} in a chain segment of {} links from place {} \
                         to the head {} ({}), manifest.json sha256 {}",
                        dir.display(),
                        v.manifest.campaign,
                        v.manifest.files.len(),
                        v.events,
                        v.links,
                        v.manifest.chain_from,
                        v.manifest.chain_head.seq,
                        v.manifest.chain_head.hash,
                        v.manifest_sha256
                    );
                    match v.signed_by {
                        Some(who) => {
                            println!("signed by {who}: manifest.json's signature verifies (namespace reverify)");
                            exit::OK
                        }
                        None => {
                            eprintln!(
                                "warning: integrity only, not origin: no --public-key or --allowed-signers was given, \
                                 so nothing shows who wrote this bundle; anyone could have written it, manifest included"
                            );
                            exit::PARTIAL
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", dir.display());
                    exit::FAILURE
                }
            }
        }
    }
}

/// `campaign audit NAME --verify`: the whole chain and the anchor, checked before
/// anything is sealed.
pub async fn verify_chain(store: &Store, json: bool) -> anyhow::Result<u8> {
    let report = store.audit_verify(Utc::now()).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.problem.is_none() {
        let keyed = match (store.sealing().key.is_some(), report.keyed) {
            (true, 0) if report.checked > 0 => {
                "; no link is keyed yet (audit_key was set after them): the anchor alone protects them".to_owned()
            }
            (_, k) if k > 0 => format!(", {k} of them keyed with audit_key"),
            _ => "; links not keyed (no audit_key): anyone who can write the database could rebuild them".into(),
        };
        println!(
            "audit chain ok: {} events verified{keyed}; head at place {} ({})",
            report.checked, report.head.seq, report.head.hash,
        );
        match &report.anchor {
            None => println!("no audit_anchor: a cut tail or a head set back cannot be told from a shorter chain"),
            Some(a) => match (&a.heads, &a.last) {
                (None, _) => println!(
                    "anchor {}: cannot be read back; pass --anchor file:///PATH with its exported lines \
                     (journalctl -t reverify-audit -o cat)",
                    a.anchor
                ),
                (Some(n), Some(last)) => println!(
                    "anchor {}: {n} heads recorded, all matched; the last at place {} (sealed {})",
                    a.anchor,
                    last.seq,
                    last.at.to_rfc3339()
                ),
                (Some(_), None) => println!("anchor {}: no head recorded yet", a.anchor),
            },
        }
        if let Some(after) = &report.head_after
            && after.seq > report.head.seq
        {
            println!(
                "sealed after the check: {} events, places {} to {}; new head {}",
                after.seq - report.head.seq,
                report.head.seq + 1,
                after.seq,
                after.hash
            );
            for e in &report.sealed_after_check {
                println!(
                    "  place {} event {} at {} {} by {}",
                    e.chain_seq.unwrap_or_default(),
                    e.event_id,
                    reverify::store::from_millis(e.at_ms).to_rfc3339(),
                    e.kind,
                    e.actor
                );
            }
        }
        if report.unsealed > 0 {
            println!("{} events not sealed yet (too recent, or waiting for a process with audit_key)", report.unsealed);
        }
    }
    match &report.problem {
        None => Ok(exit::OK),
        Some(p) => {
            eprintln!("error: the audit chain is broken: {p}");
            eprintln!("nothing was sealed: the {} events waiting stay unsealed", report.unsealed);
            Ok(exit::FAILURE)
        }
    }
}

/// `campaign evidence NAME --output DIR`.
pub async fn write(ctx: &Context, store: &Store, c: &CampaignRecord, dir: &Path) -> anyhow::Result<u8> {
    let now = Utc::now();
    let event = NewEvent {
        actor: &ctx.actor,
        kind: "campaign.evidence_written",
        campaign_id: Some(c.campaign_id),
        user_id: None,
        detail: Some(serde_json::json!({ "name": c.name.as_str(), "output": dir.display().to_string() })),
    };
    let key = match &ctx.settings.evidence_signing_key {
        Some(k) => Some(SigningKey::from_openssh(k.expose()).map_err(|m| anyhow::anyhow!("evidence_signing_key {m}"))?),
        None => None,
    };
    store.event_append(&event, now).await?;
    store.audit_seal(now).await?;
    let written = match reverify::evidence::write(
        store,
        &reverify::evidence::WriteParams { c, dir, generated_by: &ctx.actor, now, key: key.as_ref() },
    )
    .await
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::FAILURE);
        }
    };
    let m = &written.manifest;
    println!(
        "campaign {}: evidence written to {}: {} files; chain head {} ({})",
        c.name,
        dir.display(),
        m.files.len(),
        m.chain_head.seq,
        m.chain_head.hash
    );
    println!("manifest.json sha256 {} (keep it apart from the bundle)", written.manifest_sha256);
    match &written.signed_by {
        Some(fp) => println!("manifest.json signed by {fp} (manifest.json.sig, namespace reverify)"),
        None => eprintln!(
            "warning: the bundle is not signed (no evidence_signing_key): `evidence verify` can check its integrity, \
             not who wrote it"
        ),
    }
    Ok(exit::OK)
}
