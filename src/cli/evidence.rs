//! `campaign audit --verify`, `campaign evidence` and `evidence verify`: what a
//! regulator can check.

use std::path::{Path, PathBuf};

use chrono::Utc;
use clap::Subcommand;
use reverify::store::Store;
use reverify::store::campaigns::CampaignRecord;
use reverify::store::events::NewEvent;

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Check an evidence bundle written by `campaign evidence`: every file against
    /// manifest.json (none missing, changed or added), each audit event's chain
    /// hash, each campaign version's and template's digest. Exits 1 naming the
    /// first file that does not match. Needs no database.
    Verify {
        /// The bundle's directory.
        dir: PathBuf,
    },
}

/// `reverify evidence …`: needs no settings.
pub fn run(cmd: EvidenceCommand) -> u8 {
    match cmd {
        EvidenceCommand::Verify { dir } => match reverify::evidence::verify(&dir) {
            Ok(v) => {
                println!(
                    "{}: ok: campaign {}, {} files, {} events, chain head {} ({}), manifest.json sha256 {}",
                    dir.display(),
                    v.manifest.campaign,
                    v.manifest.files.len(),
                    v.events,
                    v.manifest.chain_head.seq,
                    v.manifest.chain_head.hash,
                    v.manifest_sha256
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                exit::FAILURE
            }
        },
    }
}

/// `campaign audit NAME --verify`: the whole chain, sealed first.
pub async fn verify_chain(store: &Store, json: bool) -> anyhow::Result<u8> {
    let report = store.audit_verify(Utc::now()).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.problem.is_none() {
        println!(
            "audit chain ok: {} events verified; head at place {} (sha256 {}){}",
            report.checked,
            report.head.seq,
            report.head.hash,
            if report.unsealed > 0 { format!("; {} too recent to seal", report.unsealed) } else { String::new() }
        );
    }
    match &report.problem {
        None => Ok(exit::OK),
        Some(p) => {
            eprintln!("error: the audit chain is broken: {p}");
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
    store.event_append(&event, now).await?;
    store.audit_seal(now).await?;
    let written = match reverify::evidence::write(store, c, dir, &ctx.actor, now).await {
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
    Ok(exit::OK)
}
