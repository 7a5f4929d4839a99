//! Proof of who applies and approves (issue 24): `--sign-with` / `--signature`,
//! the approvers file, the database's four-eyes policy, `campaign digest` and
//! `campaign approve`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::Utc;
use reverify::domain::CampaignName;
use reverify::store::StoreError;

use super::files::{Checked, campaign_check, check_file};
use super::{Context, exit};

/// How a person proves who they are to apply, approve or change a setting, when
/// approvers_file is set.
#[derive(Debug, Clone, clap::Args)]
pub struct ProofArgs {
    /// Sign with this SSH key: a private key file (Ed25519, ECDSA), or the public
    /// half of a key held by ssh-agent.
    #[arg(long, value_name = "KEY", conflicts_with = "signature")]
    pub sign_with: Option<PathBuf>,
    /// A signature made elsewhere with `ssh-keygen -Y sign -n reverify` over what
    /// the matching `digest` command prints, so that the key never touches this
    /// machine.
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
}

impl ProofArgs {
    /// The proof given, if any; a signature file is read here (its errors name it).
    pub fn proof(&self) -> anyhow::Result<Option<reverify::engine::approval::Proof>> {
        use reverify::engine::approval::Proof;
        Ok(match (&self.sign_with, &self.signature) {
            (Some(k), _) => Some(Proof::SignWith(k.clone())),
            (None, Some(f)) => Some(Proof::Signature(
                std::fs::read_to_string(f).with_context(|| format!("--signature {}: cannot read", f.display()))?,
            )),
            (None, None) => None,
        })
    }

    pub fn given(&self) -> bool {
        self.sign_with.is_some() || self.signature.is_some()
    }
}

/// Who may sign (`approvers_file`), loaded; `None` when the setting is not set.
pub fn approvers(ctx: &Context) -> anyhow::Result<Option<reverify::engine::approval::Approvers>> {
    ctx.settings
        .approvers_file
        .as_deref()
        .map(|p| reverify::engine::approval::Approvers::load(p).map_err(|e| anyhow::anyhow!("approvers_file: {e}")))
        .transpose()
}

/// Refuses a command on a database that asks for signed approvals when this
/// process has no approvers_file, or whose require_approval this process asks off.
pub async fn check_policy(
    ctx: &Context,
    store: &reverify::store::Store,
    approvers: Option<&reverify::engine::approval::Approvers>,
) -> anyhow::Result<reverify::engine::approval::Policy> {
    match reverify::engine::approval::policy(store, ctx.settings.require_approval, approvers.map(|a| a.text.as_str()))
        .await?
    {
        Ok(p) => Ok(p),
        Err(why) => Err(anyhow::anyhow!(why)),
    }
}

/// Who applies: a label (`--as`), or, with approvers_file, a signature to verify.
pub enum Applier<'a> {
    Label(&'a str),
    Signed(&'a reverify::engine::approval::Approvers, reverify::engine::approval::Proof),
}

impl Applier<'_> {
    /// The applier of `ctx`'s command, or why it cannot apply.
    pub fn of<'a>(
        ctx: &'a Context,
        approvers: Option<&'a reverify::engine::approval::Approvers>,
        proof: &ProofArgs,
        files: usize,
    ) -> anyhow::Result<Applier<'a>> {
        match (approvers, proof.proof()?) {
            (None, None) => Ok(Applier::Label(&ctx.actor)),
            (None, Some(_)) => Err(anyhow::anyhow!(
                "--sign-with and --signature need approvers_file (REVERIFY_APPROVERS_FILE): \
                 without it there is nobody to check the signature against"
            )),
            (Some(_), None) => Err(anyhow::anyhow!(
                "approvers_file is set: applying needs an SSH signature by a listed key (--sign-with KEY, or \
                 --signature FILE over what `reverify campaign digest NAME --file FILE` prints); --as is only a label"
            )),
            (Some(_), Some(reverify::engine::approval::Proof::Signature(_))) if files != 1 => {
                Err(anyhow::anyhow!("--signature signs one file: name exactly one (or use --sign-with for several)"))
            }
            (Some(a), Some(p)) => Ok(Applier::Signed(a, p)),
        }
    }

    /// The principal and the signature for applying `c` (`None`: a label, `Ok(None)`
    /// when the file is unchanged and already signed, nothing to apply).
    pub async fn prove(
        &self,
        store: &reverify::store::Store,
        c: &Checked,
    ) -> Result<Option<(String, i64, String)>, String> {
        let Applier::Signed(approvers, proof) = self else { return Ok(None) };
        let hash = reverify::store::campaigns::spec_hash(&c.text);
        let current = store.campaign_get(&c.spec.name).await.map_err(|e| e.to_string())?;
        let next = current.as_ref().map_or(1, |r| r.version + 1);
        let msg = reverify::engine::approval::apply_message(c.spec.name.as_str(), next, &hash);
        let sig = proof.signature(&msg).map_err(|e| e.to_string())?;
        let who = reverify::engine::approval::prove(approvers, &msg, &sig).map_err(|e| {
            format!(
                "the signature does not prove an approver: {e} (sign exactly what `reverify campaign digest {} \
                 --file {}` prints)",
                c.spec.name, c.shown
            )
        })?;
        Ok(Some((who, next, sig)))
    }
}

/// `campaign digest NAME [--version N] [--file FILE]`: the message to sign.
pub async fn digest(
    ctx: &Context,
    name: &CampaignName,
    version: Option<i64>,
    file: Option<&Path>,
) -> anyhow::Result<u8> {
    use reverify::engine::approval::{apply_message, approve_message, pending};
    let store = ctx.store().await?;
    let current = store.campaign_get(name).await?;
    if let Some(f) = file {
        let check = campaign_check(ctx)?;
        let c = check_file(f, &check).map_err(|e| anyhow::anyhow!(e))?;
        if &c.spec.name != name {
            anyhow::bail!("{}: the file is campaign {}, not {name}", c.shown, c.spec.name);
        }
        let next = version.unwrap_or_else(|| current.as_ref().map_or(1, |r| r.version + 1));
        print!("{}", apply_message(name.as_str(), next, &reverify::store::campaigns::spec_hash(&c.text)));
        return Ok(exit::OK);
    }
    let Some(c) = current else {
        eprintln!("error: campaign {name} not found (to sign its first apply: campaign digest {name} --file FILE)");
        return Ok(exit::FAILURE);
    };
    let version = version.unwrap_or(c.version);
    if version != c.version {
        eprintln!(
            "error: campaign {name} is at version {}, not {version}: only the current version can be approved",
            c.version
        );
        return Ok(exit::FAILURE);
    }
    let spec = c.spec()?;
    let loaded = reverify::notify::Templates::from_settings(&ctx.settings)
        .map_err(|e| anyhow::anyhow!("cannot load the templates the approval covers: {e}"))?;
    let p = pending(&store, &c, &spec, &loaded, Utc::now()).await?;
    print!("{}", approve_message(name.as_str(), version, &p.digest));
    Ok(exit::OK)
}

/// `campaign approve NAME`.
pub async fn approve(
    ctx: &Context,
    name: &CampaignName,
    reviewed: Option<i64>,
    proof: &ProofArgs,
) -> anyhow::Result<u8> {
    let approvers = approvers(ctx)?;
    if approvers.is_none() && proof.given() {
        anyhow::bail!("--sign-with and --signature need approvers_file (REVERIFY_APPROVERS_FILE)");
    }
    let (store, c) = ctx.existing_campaign(name).await?;
    check_policy(ctx, &store, approvers.as_ref()).await?;
    let spec = c.spec()?;
    let loaded = reverify::notify::Templates::from_settings(&ctx.settings)
        .map_err(|e| anyhow::anyhow!("cannot load the templates to approve them: {e}"))?;
    let version = reviewed.unwrap_or(c.version);
    let result = match (&approvers, proof.proof()?) {
        (None, _) => {
            reverify::engine::approval::approve(
                &store,
                &reverify::engine::approval::ApproveParams {
                    c: &c,
                    spec: &spec,
                    loaded: &loaded,
                    approver: &ctx.actor,
                    version,
                    now: Utc::now(),
                },
            )
            .await
        }
        (Some(_), None) => {
            eprintln!(
                "error: approvers_file is set: an approval needs an SSH signature by a listed key: \
                 --sign-with KEY, or --signature FILE over what `reverify campaign digest {name} --version {version}` \
                 prints (ssh-keygen -Y sign -n reverify -f KEY). --as names nobody that a key proves"
            );
            return Ok(exit::FAILURE);
        }
        (Some(a), Some(p)) => {
            match reverify::engine::approval::approve_signed(&store, &c, &spec, &loaded, a, &p, version, Utc::now())
                .await
            {
                Ok(a) => Ok(a),
                Err(Ok(why)) => {
                    eprintln!("error: {why}");
                    return Ok(exit::FAILURE);
                }
                Err(Err(e)) => Err(e),
            }
        }
    };
    super::seal(&store).await;
    match result {
        Ok(a) => {
            println!("campaign {} version {} approved by {} (digest {})", c.name, a.version, a.approver, a.digest);
            println!("  campaign file sha256 {}", c.spec_hash);
            for (t, d) in &a.templates {
                println!("  template {t} sha256 {d}");
            }
            let plan: Vec<String> = a.plan.iter().map(|(b, n)| format!("{b} {n}")).collect();
            println!("  plan: {}", if plan.is_empty() { "nothing".into() } else { plan.join(", ") });
            Ok(exit::OK)
        }
        Err(e @ StoreError::Conflict(_)) => {
            eprintln!("error: {e}");
            Ok(exit::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
