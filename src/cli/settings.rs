//! `reverify settings …`: the settings the database holds (issue 24), which no
//! runner's environment can switch off.

use anyhow::Context as _;
use chrono::Utc;
use clap::Subcommand;
use reverify::engine::approval::{APPROVERS, REQUIRE_APPROVAL, prove, setting_message};
use reverify::store::StoreError;
use reverify::store::settings::SettingChange;

use super::approve::{ProofArgs, approvers};
use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the settings the database holds, and who set them when.
    Show,
    /// Set a database setting (audited: settings.changed). Only require_approval:
    /// `true` turns four eyes on for every process on this database (with
    /// approvers_file set, it also pins that file and makes approvals need
    /// signatures); `false` turns it off. When signatures are required, any change
    /// needs one by an approver the database pins (--sign-with, or --signature over
    /// what `settings digest` prints).
    Set {
        /// require_approval
        #[arg(value_parser = ["require_approval"])]
        key: String,
        /// true or false
        #[arg(value_parser = ["true", "false"])]
        value: String,
        #[command(flatten)]
        proof: ProofArgs,
    },
    /// Print what to sign (ssh-keygen -Y sign -n reverify) to set KEY to VALUE now.
    Digest {
        /// The setting's name (see `settings show`).
        #[arg(value_parser = ["require_approval"])]
        key: String,
        /// Its new value.
        #[arg(value_parser = ["true", "false"])]
        value: String,
    },
}

pub async fn run(cmd: SettingsCommand, ctx: &Context) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    match cmd {
        SettingsCommand::Show => {
            match store.setting_get(REQUIRE_APPROVAL).await? {
                Some(s) => println!(
                    "require_approval = {} (set by {} at {})",
                    s.value,
                    s.set_by,
                    s.set_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => println!("require_approval = false (never set in this database)"),
            }
            if let Some(a) = store.setting_get(APPROVERS).await? {
                println!(
                    "approvers pinned by {}: {} key line(s)",
                    a.set_by,
                    a.value.lines().filter(|l| is_key_line(l)).count()
                );
            }
            Ok(exit::OK)
        }
        SettingsCommand::Digest { key, value } => {
            let replaces = store.setting_get(&key).await?.map_or(0, |s| s.set_at.timestamp_millis());
            print!("{}", setting_message(&key, &value, replaces));
            Ok(exit::OK)
        }
        SettingsCommand::Set { key, value, proof } => set(ctx, &store, &key, &value, &proof).await,
    }
}

fn is_key_line(l: &str) -> bool {
    let l = l.trim();
    !l.is_empty() && !l.starts_with('#')
}

async fn set(
    ctx: &Context,
    store: &reverify::store::Store,
    key: &str,
    value: &str,
    proof: &ProofArgs,
) -> anyhow::Result<u8> {
    let current = store.setting_get(key).await?;
    let replaces = current.as_ref().map_or(0, |s| s.set_at.timestamp_millis());
    let signed_now = current.as_ref().is_some_and(|s| s.value == "signed");
    let on_now = current.as_ref().is_some_and(|s| s.value != "false");
    let mine = approvers(ctx)?;
    // who must prove themselves: against the approvers the database pins, or else
    // this process's approvers_file
    let pinned = match store.setting_get(APPROVERS).await?.filter(|_| signed_now) {
        Some(p) => Some(
            reverify::engine::approval::Approvers::parse(&p.value, std::path::Path::new("(the pinned approvers)"))
                .map_err(|e| anyhow::anyhow!("the approvers the database pins do not parse: {e}"))?,
        ),
        None => None,
    };
    let judge = pinned.as_ref().or(mine.as_ref());
    let message = setting_message(key, value, replaces);
    let needs_proof = judge.is_some() && (signed_now || (on_now && value == "false"));
    let (actor, signature) = match (judge, proof.proof()?) {
        (Some(j), Some(p)) => {
            let sig = p.signature(&message)?;
            let who = prove(j, &message, &sig).map_err(|e| {
                anyhow::anyhow!(
                    "the signature does not prove an approver: {e} (sign exactly what `reverify settings digest \
                     {key} {value}` prints now)"
                )
            })?;
            (who, Some(sig))
        }
        (Some(_), None) if needs_proof => {
            eprintln!(
                "error: changing {key} on this database needs an approver's SSH signature: --sign-with KEY, or \
                 --signature FILE over what `reverify settings digest {key} {value}` prints; --as is only a label"
            );
            return Ok(exit::FAILURE);
        }
        (None, Some(_)) => anyhow::bail!("--sign-with and --signature need approvers_file (REVERIFY_APPROVERS_FILE)"),
        (_, None) => (ctx.actor.clone(), None),
    };
    let (stored, also): (&str, Vec<(&str, Option<&str>)>) = match (value, &mine) {
        ("true", Some(a)) => ("signed", vec![(APPROVERS, Some(a.text.as_str()))]),
        ("true", None) if signed_now => {
            anyhow::bail!("require_approval is signed on this database: set approvers_file to keep or re-pin approvers")
        }
        ("true", None) => ("true", vec![]),
        _ => ("false", vec![(APPROVERS, None)]),
    };
    let change =
        SettingChange { key, value: stored, actor: &actor, replaces, proof: signature.as_deref(), also: &also };
    let result = store.setting_set(&change, Utc::now()).await;
    super::seal(store).await;
    match result {
        Ok(()) => {
            println!("{key} = {stored} (set by {actor})");
            Ok(exit::OK)
        }
        Err(e @ StoreError::Conflict(_)) => {
            eprintln!("error: {e}");
            Ok(exit::FAILURE)
        }
        Err(e) => Err(e).context("failed to change the setting"),
    }
}
