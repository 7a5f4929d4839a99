//! `reverify campaign …`

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use reverify::domain::{CampaignName, CampaignSpec};
use reverify::store::StoreError;
use reverify::store::campaigns::{CampaignRecord, CampaignStatus, StatusChange};
use reverify::store::events::cli_actor;

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Check a campaign file without touching the database.
    Validate {
        /// Campaign files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Create or update campaigns from their files. Every file is validated first;
    /// when one is bad, none is applied.
    Apply {
        /// Campaign files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List campaigns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a campaign: status, version, last and next run, and the applied file.
    Show {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        #[arg(long)]
        json: bool,
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
    /// Print the campaign's audit trail, oldest first.
    Audit {
        #[arg(value_parser = |s: &str| CampaignName::parse(s))]
        name: CampaignName,
        /// Only the events about this user.
        #[arg(long, value_name = "ID", value_parser = |s: &str| reverify::domain::UserId::parse(s))]
        user: Option<reverify::domain::UserId>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: CampaignCommand, ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        CampaignCommand::Validate { files } => {
            let mut bad = 0;
            for f in &files {
                match CampaignSpec::from_file(f) {
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
        CampaignCommand::Apply { files } => apply(ctx, &files).await,
        CampaignCommand::List { json } => list(ctx, json).await,
        CampaignCommand::Show { name, json } => show(ctx, &name, json).await,
        CampaignCommand::Pause { name } => set_status(ctx, &name, StatusChange::Pause).await,
        CampaignCommand::Resume { name } => set_status(ctx, &name, StatusChange::Resume).await,
        CampaignCommand::Cancel { name } => set_status(ctx, &name, StatusChange::Cancel).await,
        CampaignCommand::Status { name, json } => {
            let (store, c) = existing(ctx, &name).await?;
            super::status::status(&store, &c, json).await
        }
        CampaignCommand::Plan { name, json } => {
            let (store, c) = existing(ctx, &name).await?;
            super::status::plan(&store, &c, json).await
        }
        CampaignCommand::RetryFailed { name } => {
            let (store, c) = existing(ctx, &name).await?;
            super::status::retry_failed(&store, &c).await
        }
        CampaignCommand::Report { name, format, output } => {
            let (store, c) = existing(ctx, &name).await?;
            super::report::report(&store, &c, format, output.as_deref()).await
        }
        CampaignCommand::Audit { name, user, json } => {
            let (store, c) = existing(ctx, &name).await?;
            super::report::audit(&store, &c, user, json).await
        }
    }
}

/// The store and the named campaign, or an error that says how to create it.
async fn existing(ctx: &Context, name: &CampaignName) -> anyhow::Result<(reverify::store::Store, CampaignRecord)> {
    let store = ctx.store().await?;
    let c = store.campaign_get(name).await?.ok_or_else(|| {
        anyhow::anyhow!("no campaign named {name}; apply its file first (reverify campaign apply FILE)")
    })?;
    Ok((store, c))
}

async fn apply(ctx: &Context, files: &[PathBuf]) -> anyhow::Result<u8> {
    // Validate every file before touching the database.
    let mut parsed = Vec::with_capacity(files.len());
    let mut bad = 0;
    for f in files {
        let shown = f.display().to_string();
        let text = match CampaignSpec::read_text(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                bad += 1;
                continue;
            }
        };
        match CampaignSpec::from_toml(&text, &shown) {
            Ok(spec) => {
                if let Some((other, _, _)) =
                    parsed.iter().find(|(_, s, _): &&(String, CampaignSpec, String)| s.name == spec.name)
                {
                    eprintln!("error: {shown}: campaign {} is also defined in {other}", spec.name);
                    bad += 1;
                } else {
                    parsed.push((shown, spec, text));
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        eprintln!("nothing applied: {bad} of {} files are not valid", files.len());
        return Ok(exit::FAILURE);
    }
    let store = ctx.store().await?;
    let actor = cli_actor();
    let mut failed = 0;
    for (shown, spec, text) in &parsed {
        match store.campaign_apply(spec, text, &actor, Utc::now()).await {
            Ok((outcome, c)) => {
                let status = if c.status == CampaignStatus::Active { String::new() } else { format!(", {}", c.status) };
                println!("{shown}: campaign {} {outcome} (version {}{status})", c.name, c.version);
            }
            Err(e) => {
                eprintln!("error: {shown}: campaign {}: {e}", spec.name);
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
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
    if json {
        println!("{}", serde_json::to_string_pretty(&record_json(&c))?);
        return Ok(exit::OK);
    }
    println!("name:      {}", c.name);
    println!("status:    {}", c.status);
    println!("version:   {} (sha256 {})", c.version, c.spec_hash);
    println!("schedule:  {} ({})", c.schedule.as_deref().unwrap_or("by hand"), c.timezone.as_deref().unwrap_or("UTC"));
    println!("created:   {}", time(Some(c.created_at)));
    println!("updated:   {}", time(Some(c.updated_at)));
    println!("last run:  {}", time(c.last_run_at));
    println!("done through: {} (the start of the last finished run)", time(c.done_through));
    if let Some(t) = c.tick_in_progress.filter(|t| c.done_through.is_none_or(|d| *t > d)) {
        println!("resuming:  the run of the tick at {} did not finish; the next `run --due` resumes it", time(Some(t)));
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

async fn set_status(ctx: &Context, name: &CampaignName, change: StatusChange) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    match store.campaign_set_status(name, change, &cli_actor(), Utc::now()).await {
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
