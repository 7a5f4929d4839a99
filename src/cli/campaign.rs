//! `reverify campaign …`

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use reverify::domain::{CampaignName, CampaignSpec};
use reverify::notify::CampaignCheck;
use reverify::store::StoreError;
use reverify::store::campaigns::{CampaignRecord, CampaignStatus, StatusChange};

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Check campaign files without touching the database: the file itself, and
    /// that this process's settings can serve it (its templates, a From address and
    /// smtp_url or outbox_dir for email, notify_webhook_key for webhooks), the same
    /// check a run makes before it starts.
    Validate {
        /// Campaign files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Create or update campaigns from their files, checked as `validate` does.
    ///
    /// With FILEs, every file is checked first; when one is bad, none is applied.
    /// With no FILE, every *.toml file in jobs_dir (the setting) is applied, each on
    /// its own: a bad file is reported and skipped, the others applied, and the exit
    /// code is 1 when any failed.
    ///
    /// With approvers_file set, each applied version needs an SSH signature by a key
    /// listed there (--sign-with or --signature), and the audit trail names the
    /// principal the key proves, not --as.
    Apply {
        /// Campaign files (TOML); default: every *.toml in jobs_dir.
        files: Vec<PathBuf>,
        #[command(flatten)]
        proof: ProofArgs,
    },
    /// List campaigns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a campaign: status, version and who applied it, whether it is approved,
    /// last and next run, and the applied file.
    Show {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        #[arg(long)]
        json: bool,
    },
    /// Approve the campaign's current version (four eyes, for require_approval).
    ///
    /// Records the approver (--as, REVERIFY_ACTOR or the OS user), who must not be
    /// whoever applied this version, and a SHA-256 digest over the campaign file, the
    /// templates it uses (as this process loads them) and its plan now (the targets
    /// and the exclusions counted by reason). Applying a changed file makes a new
    /// version, which needs a new approval; a changed template needs one too.
    ///
    /// With approvers_file set, the approval needs an SSH signature (namespace
    /// reverify) over what `campaign digest NAME --version N` prints, by a key listed
    /// there (--sign-with, or --signature made elsewhere with `ssh-keygen -Y sign -n
    /// reverify`): the approver is the principal the key proves, who must differ from
    /// the one who signed the apply. --as alone approves nothing then.
    Approve {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Refuse unless this is the current version (the one you reviewed).
        #[arg(long, value_name = "N")]
        version: Option<i64>,
        #[command(flatten)]
        proof: ProofArgs,
    },
    /// Print what to sign (with `ssh-keygen -Y sign -n reverify -f KEY`) to approve
    /// version N of the campaign, or, with --file, to apply that file as its next
    /// version; pass the signature to approve or apply with --signature.
    Digest {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// The version to approve (default: the current one); with --file, the
        /// version the apply will make (default: the next one).
        #[arg(long, value_name = "N")]
        version: Option<i64>,
        /// Print the message for applying this file instead.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Stop running a campaign until it is resumed.
    Pause {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Run a paused campaign again when due.
    Resume {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Stop a campaign for good.
    Cancel {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Progress: targets by status and reason, sessions issued, the rate over the
    /// last minute and an ETA. The counts are read from the rows.
    Status {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        #[arg(long)]
        json: bool,
    },
    /// Who a run would target now, and how many users are excluded and why,
    /// without calling the API.
    Plan {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        #[arg(long)]
        json: bool,
    },
    /// Render exactly what a message of the campaign would be, for a user in the
    /// database or a sample user, in their locale (or --locale), with a clearly fake
    /// link. Makes no API call and sends nothing.
    Preview {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// The user to render it for (default: a sample user).
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// Render in this locale instead of the user's (the fallback chain applies).
        #[arg(long, value_name = "L")]
        locale: Option<String>,
        /// 0 for the first message, N for the N-th reminder.
        #[arg(long, value_name = "N", default_value_t = 0)]
        step: u32,
        /// text (subject and plain text), html, or eml (the whole email).
        #[arg(long, value_enum, default_value = "text")]
        format: super::preview::PreviewFormat,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Send every message of the campaign (the first and each reminder) to ADDRESS,
    /// rendered with a user's data (--user) or a sample user's, through the
    /// campaign's channel and with an obviously fake link. No Baanx call; audited.
    TestSend {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Where the messages go.
        #[arg(long, value_name = "ADDRESS", value_parser = |s: &str| reverify::domain::EmailAddress::parse(s))]
        to: reverify::domain::EmailAddress,
        /// Render with this user's data (name, locale, time zone) instead of a sample user's.
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// Only this step (0: the first message, N: the N-th reminder).
        #[arg(long, value_name = "N")]
        step: Option<u32>,
    },
    /// Put every failed target back in the queue for the next run.
    RetryFailed {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Write one row per target for a compliance audit: user id, status and reason,
    /// the time of each step, the outcome, sessions and messages. No email, token,
    /// session URL, date of birth or SSN. Streams, whatever the size.
    Report {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// csv (with a header; formula-like cells get a leading ') or json (JSON Lines).
        #[arg(long, value_enum, default_value = "csv")]
        format: reverify::report::ReportFormat,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the campaign's audit trail, oldest first, with the actor of every event.
    ///
    /// With --verify, check the whole audit chain instead (every event stores the
    /// hash of the one before it): exits 1 naming the first event that was changed,
    /// removed or inserted behind the trail's back.
    Audit {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Only the events about this user.
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Verify the audit chain (all events, every campaign) instead of listing.
        #[arg(long, conflicts_with = "user")]
        verify: bool,
    },
    /// Write an evidence bundle for a regulator into DIR: the report, the audit
    /// events (with their chain hashes), every applied version of the campaign file,
    /// the templates with their hashes, the approvals, and manifest.json with each
    /// file's SHA-256 and the audit chain's head. Check it with `reverify evidence
    /// verify DIR`.
    Evidence {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// The directory to write (created; must be empty if it exists).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
}

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

    fn given(&self) -> bool {
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

pub async fn run(cmd: CampaignCommand, ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        CampaignCommand::Validate { files } => {
            let check = campaign_check(ctx)?;
            let mut bad = 0;
            for f in &files {
                match CampaignSpec::from_file(f).map_err(|e| e.to_string()).and_then(|spec| {
                    check.check(&spec).map_err(|e| format!("{}: {e}", f.display()))?;
                    Ok(spec)
                }) {
                    Ok(spec) => {
                        println!("{}: ok (campaign {})", f.display(), spec.name);
                        if let Some(ticks) = next_ticks(&spec, Utc::now(), 3) {
                            println!("  next ticks ({}): {ticks}", spec.timezone);
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        bad += 1;
                    }
                }
            }
            Ok(if bad == 0 { exit::OK } else { exit::FAILURE })
        }
        CampaignCommand::Apply { files, proof } if files.is_empty() => apply_jobs_dir(ctx, &proof).await,
        CampaignCommand::Apply { files, proof } => apply(ctx, &files, &proof).await,
        CampaignCommand::Digest { name, version, file } => digest(ctx, &name, version, file.as_deref()).await,
        CampaignCommand::List { json } => list(ctx, json).await,
        CampaignCommand::Show { name, json } => show(ctx, &name, json).await,
        CampaignCommand::Pause { name } => set_status(ctx, &name, StatusChange::Pause).await,
        CampaignCommand::Resume { name } => set_status(ctx, &name, StatusChange::Resume).await,
        CampaignCommand::Cancel { name } => set_status(ctx, &name, StatusChange::Cancel).await,
        CampaignCommand::Status { name, json } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::status::status(&store, &c, json).await
        }
        CampaignCommand::Plan { name, json } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::status::plan(&store, &c, json).await
        }
        CampaignCommand::Preview { name, user, locale, step, format, output } => {
            super::preview::preview(ctx, super::preview::PreviewArgs { name, user, locale, step, format, output }).await
        }
        CampaignCommand::TestSend { name, to, user, step } => {
            super::test_send::test_send(ctx, &name, &to, user.as_ref(), step).await
        }
        CampaignCommand::RetryFailed { name } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::status::retry_failed(&store, &c, &ctx.actor).await
        }
        CampaignCommand::Report { name, format, output } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::report::report(&store, &c, format, output.as_deref()).await
        }
        CampaignCommand::Audit { name, verify: true, json, .. } => {
            let (store, _) = ctx.existing_campaign(&name).await?;
            super::evidence::verify_chain(&store, json).await
        }
        CampaignCommand::Audit { name, user, json, verify: false } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::report::audit(&store, &c, user, json).await
        }
        CampaignCommand::Approve { name, version, proof } => approve(ctx, &name, version, &proof).await,
        CampaignCommand::Evidence { name, output } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::evidence::write(ctx, &store, &c, &output).await
        }
    }
}

/// What a run would check, from the settings: see [`reverify::notify::check_campaign`].
fn campaign_check(ctx: &Context) -> anyhow::Result<CampaignCheck> {
    CampaignCheck::from_settings(&ctx.settings)
        .map_err(|e| anyhow::anyhow!("the settings cannot serve any campaign: {e}"))
}

/// A campaign file read, parsed and checked: its name as shown, spec and text.
struct Checked {
    shown: String,
    spec: CampaignSpec,
    text: String,
}

/// Reads, parses and checks one file; the error names the file (and the line, the
/// field or the setting).
fn check_file(f: &Path, check: &CampaignCheck) -> Result<Checked, String> {
    let shown = f.display().to_string();
    let text = CampaignSpec::read_text(f).map_err(|e| e.to_string())?;
    let spec = CampaignSpec::from_toml(&text, &shown).map_err(|e| e.to_string())?;
    check.check(&spec).map_err(|e| format!("{shown}: {e}"))?;
    Ok(Checked { shown, spec, text })
}

/// Checks `files`, refusing a second file for a campaign name already seen; returns
/// the good ones, and each bad one with its error line.
fn check_files(files: &[PathBuf], check: &CampaignCheck) -> (Vec<Checked>, Vec<(String, String)>) {
    let mut good: Vec<Checked> = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match check_file(f, check) {
            Ok(c) => match good.iter().find(|g| g.spec.name == c.spec.name) {
                Some(other) => {
                    let e = format!("{}: campaign {} is also defined in {}", c.shown, c.spec.name, other.shown);
                    errors.push((c.shown, e));
                }
                None => good.push(c),
            },
            Err(e) => errors.push((f.display().to_string(), e)),
        }
    }
    (good, errors)
}

/// Who applies: a label (`--as`), or, with approvers_file, a signature to verify.
enum Applier<'a> {
    Label(&'a str),
    Signed(&'a reverify::engine::approval::Approvers, reverify::engine::approval::Proof),
}

impl Applier<'_> {
    /// The applier of `ctx`'s command, or why it cannot apply.
    fn of<'a>(
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
    async fn prove(
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

/// Applies checked files one by one; prints a line per file and returns the files
/// the store refused, each with its error line.
async fn apply_checked(
    store: &reverify::store::Store,
    checked: &[Checked],
    applier: &Applier<'_>,
) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for c in checked {
        let Checked { shown, spec, text } = c;
        let result = match applier.prove(store, c).await {
            Err(e) => Err(e),
            Ok(None) => {
                let Applier::Label(actor) = applier else { unreachable!("a signed applier proves") };
                store.campaign_apply(spec, text, actor, Utc::now()).await.map_err(|e| e.to_string())
            }
            Ok(Some((who, version, sig))) => store
                .campaign_apply_signed(spec, text, &who, Some((version, &sig)), Utc::now())
                .await
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok((outcome, c)) => {
                let status = if c.status == CampaignStatus::Active { String::new() } else { format!(", {}", c.status) };
                println!("{shown}: campaign {} {outcome} (version {}{status})", c.name, c.version);
            }
            Err(e) => failed.push((shown.clone(), format!("{shown}: campaign {}: {e}", spec.name))),
        }
    }
    super::seal(store).await;
    failed
}

/// `campaign digest NAME [--version N] [--file FILE]`: the message to sign.
async fn digest(ctx: &Context, name: &CampaignName, version: Option<i64>, file: Option<&Path>) -> anyhow::Result<u8> {
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

/// `campaign apply FILE…`: every file is checked before the database is touched;
/// one bad file and nothing is applied.
async fn apply(ctx: &Context, files: &[PathBuf], proof: &ProofArgs) -> anyhow::Result<u8> {
    let approvers = approvers(ctx)?;
    let applier = Applier::of(ctx, approvers.as_ref(), proof, files.len())?;
    let check = campaign_check(ctx)?;
    let (checked, errors) = check_files(files, &check);
    if !errors.is_empty() {
        for (_, e) in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("nothing applied: {} of {} files are not valid", errors.len(), files.len());
        return Ok(exit::FAILURE);
    }
    let store = ctx.store().await?;
    check_policy(ctx, &store, approvers.as_ref()).await?;
    let failed = apply_checked(&store, &checked, &applier).await;
    for (_, e) in &failed {
        eprintln!("error: {e}");
    }
    Ok(if failed.is_empty() { exit::OK } else { exit::FAILURE })
}

/// `campaign apply` with no file: every `*.toml` in `jobs_dir`, each file applied or
/// refused on its own, then one line naming the files that failed.
async fn apply_jobs_dir(ctx: &Context, proof: &ProofArgs) -> anyhow::Result<u8> {
    let approvers = approvers(ctx)?;
    let applier = Applier::of(ctx, approvers.as_ref(), proof, usize::MAX)?;
    let dir = &ctx.settings.jobs_dir;
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!("jobs_dir {}: cannot read the campaign files (set jobs_dir or name the files)", dir.display())
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("jobs_dir {}: cannot list", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        eprintln!("error: jobs_dir {}: no *.toml campaign files to apply", dir.display());
        return Ok(exit::FAILURE);
    }
    let check = campaign_check(ctx)?;
    let (checked, errors) = check_files(&files, &check);
    for (_, e) in &errors {
        eprintln!("error: {e}");
    }
    let mut failed: Vec<String> = errors.into_iter().map(|(shown, _)| shown).collect();
    if !checked.is_empty() {
        let store = ctx.store().await?;
        check_policy(ctx, &store, approvers.as_ref()).await?;
        for (shown, e) in apply_checked(&store, &checked, &applier).await {
            eprintln!("error: {e}");
            failed.push(shown);
        }
    }
    if failed.is_empty() {
        return Ok(exit::OK);
    }
    failed.sort();
    eprintln!(
        "{} of {} files in {} applied; not applied: {}",
        files.len() - failed.len(),
        files.len(),
        dir.display(),
        failed.join(", ")
    );
    Ok(exit::FAILURE)
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The schedule's next `n` ticks after `after`, in the campaign's time zone (the
/// crontab rules as the scheduler applies them, day-of-month OR day-of-week
/// included), or `None` without a schedule.
fn next_ticks(spec: &CampaignSpec, after: DateTime<Utc>, n: usize) -> Option<String> {
    let (cron, tz) = (spec.cron()?, spec.tz());
    let ticks: Vec<String> = std::iter::successors(cron.next_after(after, tz), |t| cron.next_after(*t, tz))
        .take(n)
        .map(|t| t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z").to_string())
        .collect();
    Some(if ticks.is_empty() { "none".into() } else { ticks.join(", ") })
}

/// The next run: the schedule's next tick from now (computed with this binary's
/// rules), else as stored by the scheduler.
fn next_run(c: &CampaignRecord) -> Option<DateTime<Utc>> {
    if c.status != CampaignStatus::Active {
        return None;
    }
    c.spec().ok().and_then(|spec| spec.cron()?.next_after(Utc::now(), spec.tz())).or(c.next_run_at)
}

fn record_json(c: &CampaignRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    v["next_run"] = serde_json::to_value(next_run(c)).unwrap_or_default();
    v
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let all = store.campaign_list().await?;
    if json {
        let out: Vec<serde_json::Value> = all.iter().map(record_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(exit::OK);
    }
    println!("{:<32}  {:<9}  {:>7}  {:<24}  {:<20}  NEXT RUN", "NAME", "STATUS", "VERSION", "SCHEDULE", "LAST RUN");
    for c in &all {
        let schedule = match (&c.schedule, &c.timezone) {
            (Some(s), Some(tz)) => format!("{s} {tz}"),
            (Some(s), None) => s.clone(),
            _ => "by hand".into(),
        };
        println!(
            "{:<32}  {:<9}  {:>7}  {:<24}  {:<20}  {}",
            c.name.as_str(),
            c.status.as_str(),
            c.version,
            schedule,
            time(c.last_run_at),
            time(next_run(c))
        );
    }
    if all.is_empty() {
        println!("(no campaigns: apply one with `reverify campaign apply jobs/NAME.toml`)");
    }
    Ok(exit::OK)
}

async fn show(ctx: &Context, name: &CampaignName, json: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let Some(c) = store.campaign_get(name).await? else {
        eprintln!("error: campaign {name} not found");
        return Ok(exit::FAILURE);
    };
    let approval = approval_json(ctx, &store, &c).await?;
    if json {
        let mut v = record_json(&c);
        v["approval"] = approval;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    let applied = store.campaign_versions(c.campaign_id).await?.into_iter().find(|v| v.version == c.version);
    println!("name:      {}", c.name);
    println!("status:    {}", c.status);
    println!("version:   {} (sha256 {})", c.version, c.spec_hash);
    if let Some(v) = applied {
        println!("applied:   by {} at {}", v.applied_by, time(Some(v.applied_at)));
    }
    println!("approval:  {}", approval["summary"].as_str().unwrap_or("-"));
    println!("schedule:  {} ({})", c.schedule.as_deref().unwrap_or("by hand"), c.timezone.as_deref().unwrap_or("UTC"));
    println!("created:   {}", time(Some(c.created_at)));
    println!("updated:   {}", time(Some(c.updated_at)));
    println!("last run:  {}", time(c.last_run_at));
    println!("done through: {} (the start of the last finished run)", time(c.done_through));
    if let Some(t) = c.tick_in_progress.filter(|t| c.done_through.is_none_or(|d| *t > d)) {
        println!("resuming:  the run of the tick at {} did not finish; the next `run --due` resumes it", time(Some(t)));
    }
    if let Some(reason) = &c.pause_reason {
        let figures = c.pause_detail.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
        println!("paused by: the worker, {reason}{figures}; `reverify campaign resume {}` to go on", c.name);
    }
    println!("next run:  {}", time(next_run(&c)));
    if let Some(ticks) = c.spec().ok().and_then(|spec| next_ticks(&spec, Utc::now(), 3)) {
        println!("next ticks: {ticks}");
    }
    println!("--- applied file (version {}) ---", c.version);
    print!("{}", c.spec_toml);
    if !c.spec_toml.ends_with('\n') {
        println!();
    }
    Ok(exit::OK)
}

/// The approval state of `c`'s current version, for `campaign show`: JSON with a
/// one-line `summary`. Templates are compared when this process can load them.
async fn approval_json(
    ctx: &Context,
    store: &reverify::store::Store,
    c: &CampaignRecord,
) -> anyhow::Result<serde_json::Value> {
    use reverify::engine::approval::{ApprovalState, approval_state, template_versions};
    let templates = reverify::notify::Templates::from_settings(&ctx.settings)
        .ok()
        .and_then(|t| c.spec().ok().map(|spec| template_versions(&spec, &t)));
    let state = approval_state(store, c, templates.as_deref()).await?;
    let approvers = approvers(ctx)?;
    let required = match reverify::engine::approval::policy(
        store,
        ctx.settings.require_approval,
        approvers.as_ref().map(|a| a.text.as_str()),
    )
    .await?
    {
        Ok(p) => p.required,
        Err(_) => true,
    };
    let need = if required { "required: runs wait for it" } else { "not required (require_approval is off)" };
    let at = |t| time(Some(t));
    Ok(match state {
        ApprovalState::Approved(a) => serde_json::json!({
            "state": "approved", "required": required, "version": a.version, "approver": a.approver,
            "approved_at": a.approved_at, "digest": a.digest, "templates": a.templates, "plan": a.plan,
            "summary": format!("version {} approved by {} at {} (digest {})", a.version, a.approver, at(a.approved_at), a.digest),
        }),
        ApprovalState::Missing { version, applied_by } => serde_json::json!({
            "state": "missing", "required": required, "version": version, "applied_by": applied_by,
            "summary": format!("version {version} not approved; {need}; someone other than {applied_by} may approve it"),
        }),
        ApprovalState::TemplatesChanged { approval: a, changed } => serde_json::json!({
            "state": "templates_changed", "required": required, "version": a.version, "approver": a.approver,
            "approved_at": a.approved_at, "digest": a.digest, "changed": changed,
            "summary": format!("version {} was approved by {} at {}, but {} changed since; {need}",
                a.version, a.approver, at(a.approved_at), changed.join(", ")),
        }),
    })
}

/// `campaign approve NAME`.
async fn approve(ctx: &Context, name: &CampaignName, reviewed: Option<i64>, proof: &ProofArgs) -> anyhow::Result<u8> {
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
            reverify::engine::approval::approve(&store, &c, &spec, &loaded, &ctx.actor, version, Utc::now()).await
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

async fn set_status(ctx: &Context, name: &CampaignName, change: StatusChange) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let result = store.campaign_set_status(name, change, &ctx.actor, Utc::now()).await;
    super::seal(&store).await;
    match result {
        Ok((from, to)) if from == to => println!("campaign {name} is already {to}"),
        Ok((from, to)) => println!("campaign {name} is now {to} (was {from})"),
        Err(e @ (StoreError::NotFound { .. } | StoreError::Conflict(_))) => {
            eprintln!("error: {e}");
            return Ok(exit::FAILURE);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(exit::OK)
}
