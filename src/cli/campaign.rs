//! `reverify campaign …`

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use reverify::domain::{CampaignName, CampaignSpec};
use reverify::store::StoreError;
use reverify::store::campaigns::{CampaignRecord, CampaignStatus, StatusChange};

use super::approve::{Applier, ProofArgs, approvers, check_policy};
use super::files::{Checked, campaign_check, check_files};
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
        /// Print JSON (one object; a list is JSON Lines, one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Show a campaign: status, version and who applied it, whether it is approved,
    /// last and next run, and the applied file.
    Show {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Print JSON (one object; a list is JSON Lines, one object per line).
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Run a paused campaign again when due.
    Resume {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Stop a campaign for good.
    Cancel {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Progress: targets by status and reason, sessions issued, the rate over the
    /// last minute and an ETA. The counts are read from the rows.
    Status {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Print JSON (one object; a list is JSON Lines, one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Who a run would target now, and how many users are excluded and why,
    /// without calling the API.
    Plan {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Print JSON (one object; a list is JSON Lines, one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Render exactly what a message of the campaign would be, for a user in the
    /// database or a sample user, in their locale (or --locale), with a clearly fake
    /// link. Makes no API call and sends nothing.
    Preview {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// The user to render it for (default: a sample user).
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// Render in this locale instead of the user's (the fallback chain applies).
        #[arg(long, value_name = "L", value_parser = super::parse_locale)]
        locale: Option<reverify::domain::Locale>,
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
    },
    /// Write one row per target for a compliance audit: user id, status and reason,
    /// the time of each step, the outcome, sessions and messages. No email, token,
    /// session URL, date of birth or SSN. Streams, whatever the size.
    Report {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
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
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Only the events about this user.
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Verify the audit chain (all events, every campaign) instead of listing:
        /// every link (keyed with audit_key when set), then every head the anchor
        /// recorded; only when all is well are the events waiting sealed (and listed).
        #[arg(long, conflicts_with = "user")]
        verify: bool,
        /// With --verify: the anchor to compare with, instead of audit_anchor
        /// (file:///PATH; for a syslog anchor, its exported lines).
        #[arg(long, value_name = "URL", requires = "verify")]
        anchor: Option<String>,
    },
    /// Write an evidence bundle for a regulator into DIR: the report, the audit
    /// events (with their chain hashes), every applied version of the campaign file,
    /// the templates with their hashes, the approvals, and manifest.json with each
    /// file's SHA-256 and the audit chain's head. Check it with `reverify evidence
    /// verify DIR`.
    Evidence {
        /// The campaign's name (its file's `name`, as `campaign list` shows it).
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// The directory to write (created; must be empty if it exists).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
}

pub async fn run(cmd: CampaignCommand, ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        CampaignCommand::Validate { files } => {
            let check = campaign_check(ctx)?;
            let mut bad = 0;
            for f in &files {
                match reverify::config::files::read_spec(f).map_err(|e| e.to_string()).and_then(|spec| {
                    check.check(&spec).map_err(|e| format!("{}: {e}", f.display()))?;
                    Ok(spec)
                }) {
                    Ok(spec) => {
                        println!("{}: ok (campaign {})", f.display(), spec.name);
                        for (field, warning) in spec.delivery.warnings() {
                            eprintln!("warning: {}: `{field}`: {warning}", f.display());
                        }
                        if let Some(ticks) = next_ticks(&spec, Utc::now(), 3) {
                            println!("  next ticks ({}): {ticks}", spec.timezone);
                        }
                        for w in life_warnings(&spec, Utc::now()) {
                            eprintln!("warning: {}: {w}", f.display());
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
        CampaignCommand::Digest { name, version, file } => {
            super::approve::digest(ctx, &name, version, file.as_deref()).await
        }
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
            super::status::plan(&store, &c, ctx.settings.freshness(), json).await
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
        CampaignCommand::Audit { name, verify: true, json, anchor, .. } => {
            let (store, _) = ctx.existing_campaign(&name).await?;
            let store = store.with_sealing(ctx.sealing(anchor.as_deref())?);
            super::evidence::verify_chain(&store, json).await
        }
        CampaignCommand::Audit { name, user, json, verify: false, .. } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::report::audit(&store, &c, user, json).await
        }
        CampaignCommand::Approve { name, version, proof } => super::approve::approve(ctx, &name, version, &proof).await,
        CampaignCommand::Evidence { name, output } => {
            let (store, c) = ctx.existing_campaign(&name).await?;
            super::evidence::write(ctx, &store, &c, &output).await
        }
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
        // an ended campaign is not applied anew; the same file again is unchanged
        // (a completed campaign's file may stay in jobs_dir)
        let stored = store.campaign_get(&spec.name).await.ok().flatten();
        let unchanged = stored.is_some_and(|c| c.spec_hash == reverify::store::campaigns::spec_hash(text));
        if !unchanged && let Err(e) = spec.validate_at_apply(text, shown, Utc::now()) {
            failed.push((shown.clone(), e.to_string()));
            continue;
        }
        let result = match applier.prove(store, c).await {
            Err(e) => Err(e),
            Ok(None) => {
                let Applier::Label(actor) = applier else { unreachable!("a signed applier proves") };
                store.campaign_apply(spec, text, actor, Utc::now()).await.map_err(|e| e.to_string())
            }
            Ok(Some((who, version, sig))) => store
                .campaign_apply_signed(&reverify::store::campaigns::ApplySignedParams {
                    spec,
                    toml_text: text,
                    actor: &who,
                    signed: Some((version, &sig)),
                    now: Utc::now(),
                })
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

/// What in a campaign file is allowed but cannot be what its author meant: a send
/// window that never opens inside the campaign's life (in any time zone), a
/// schedule with no tick in it, an `ends_at` already past.
fn life_warnings(spec: &CampaignSpec, now: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    let from = spec.starts_at.map_or(now, |s| s.0.max(now));
    let end = spec.ends_at.map(|e| e.0);
    if end.is_some_and(|e| e <= now) {
        out.push("ends_at has already passed: `campaign apply` refuses it".into());
        return out;
    }
    if let Some(window) = spec.delivery.window() {
        // every offset from UTC-12 to UTC+14: a window that opens for nobody
        let opens = (-12..=14).any(|h| window_opens_before(&window, from, end, h));
        if !opens {
            out.push(match end {
                Some(e) => format!(
                    "send_window and send_days admit no time between {} and ends_at {}: nobody would be sent \
                     anything",
                    from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => "send_window and send_days admit no time at all: nobody would be sent anything".into(),
            });
        }
    }
    if spec.schedule.is_some() && spec.next_tick_after(now).is_none() {
        out.push(
            "the schedule has no tick inside the campaign's life (starts_at to ends_at): nobody is targeted \
                  unless it is run by hand"
                .into(),
        );
    }
    out
}

/// Whether `window`, read at UTC offset `hours`, opens (or is open) between `from`
/// and `end`.
fn window_opens_before(
    window: &reverify::domain::window::SendWindow,
    from: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    hours: i32,
) -> bool {
    let name = match hours {
        0 => "Etc/UTC".to_owned(),
        // the Etc zones' signs are the other way round
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    };
    let Ok(tz) = name.parse::<chrono_tz::Tz>() else { return true };
    match window.next_opening(from, tz) {
        None => true,
        Some(open) => end.is_none_or(|e| open < e),
    }
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
    // one name for the next run: this binary's reading of the schedule (the stored
    // next_run_at is the scheduler's bookkeeping)
    if let Some(o) = v.as_object_mut() {
        o.remove("next_run_at");
    }
    v["next_run"] = serde_json::to_value(next_run(c)).unwrap_or_default();
    v
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let all = store.campaign_list().await?;
    if json {
        // a list: JSON Lines, one campaign per line (nothing for none)
        for c in &all {
            println!("{}", serde_json::to_string(&record_json(c))?);
        }
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
    let outlook = reverify::engine::outlook::outlook(&store, &c, Utc::now()).await?;
    if json {
        let mut v = record_json(&c);
        v["approval"] = approval;
        v["next_tick"] = serde_json::to_value(outlook.next_tick)?;
        v["next_follow_up"] = serde_json::to_value(&outlook.next_follow_up)?;
        v["follows_up"] = serde_json::Value::Bool(outlook.follows_up);
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
    for (label, text) in outlook.lines(c.status) {
        println!("{label}: {text}");
    }
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
