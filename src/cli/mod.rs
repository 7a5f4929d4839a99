//! Command-line interface: one file per command group. Each command loads the
//! settings, calls the library, and maps the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use reverify::Settings;
use reverify::config::LogFormat;
use reverify::store::Store;

/// `eprintln!` for every command, shadowing std's: a standard error that is
/// closed or whose reader went away (`2>&-`, `| head` that exited) loses the line
/// instead of panicking ("failed printing to stderr"), so that the exit code is
/// still the command's. Log lines get the same treatment
/// (`reverify::telemetry::QuietStderr`).
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod approve;
mod bounces;
mod campaign;
mod daemon;
mod demo;
mod evidence;
mod files;
mod preview;
mod report;
mod run;
mod sample;
mod sandbox;
mod serve;
mod settings;
mod status;
mod sync;
mod test_send;
mod ui;
mod users;

/// Exit codes, documented in the README.
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// It failed: the message on standard error says why.
    pub const FAILURE: u8 = 1;
    /// The command line itself was wrong: clap's own code, and ours for what only
    /// shows at run time (`man nonsense`, an unknown `--locale`).
    pub const USAGE: u8 = 2;
    /// A run was stopped (--max-duration, SIGTERM, SIGINT) with work left; the next run resumes.
    pub const INTERRUPTED: u8 = 4;
    /// Input was partly bad (an import with rejected rows): the good part was kept.
    pub const PARTIAL: u8 = 3;
}

/// reverify: identity re-verification campaigns on the Baanx API.
///
/// Describe a campaign in a TOML file under jobs/, apply it, and let a scheduled
/// run select the users, generate a verification session for each within every
/// Baanx limit, notify them, and record every step.
///
/// Settings come from --config (or ./reverify.toml) and REVERIFY_* environment
/// variables; secrets only from the environment or from files. See the README.
#[derive(Debug, Parser)]
#[command(name = "reverify", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Settings file (TOML). Default: ./reverify.toml when it exists.
    #[arg(long, global = true, value_name = "FILE", env = "REVERIFY_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format; overrides the log_format setting.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Who is acting, as recorded in the audit trail (apply, approve, pause, resume,
    /// cancel, retry-failed, run, users …). Default: REVERIFY_ACTOR, else the
    /// operating-system user.
    #[arg(long = "as", global = true, value_name = "NAME", env = "REVERIFY_ACTOR", value_parser = parse_actor)]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the database schema (every command that needs it does this too).
    Migrate,
    /// Print a new random token encryption key (32 bytes, base64) for REVERIFY_TOKEN_KEY.
    Keygen,
    /// Run campaigns once and exit.
    ///
    /// Targets, claims, generates a session per user, notifies and records. Exits 0
    /// when every campaign finished (nothing left that is due now), 4 when
    /// --max-duration, SIGTERM or SIGINT stopped it with work left (the next run
    /// resumes where it stopped, with no duplicate), 1 on failure.
    Run(run::RunArgs),
    /// Run campaigns at their scheduled times until stopped.
    ///
    /// Sleeps until the next tick of any active campaign (re-reading the campaigns at
    /// least every minute, so that apply, pause and resume take effect), runs what is
    /// due under each campaign's lease, and on SIGTERM lets the users in flight finish
    /// before it exits.
    ///
    /// Listeners, from the settings: metrics_listen (REVERIFY_METRICS_LISTEN) serves
    /// /metrics, /healthz and /readyz for the cluster only; public_listen
    /// (REVERIFY_PUBLIC_LISTEN) serves what Baanx and the users' browsers reach:
    /// POST /webhooks/baanx (with webhook_key) and the click-through pages /v/…
    /// (with the Baanx client settings); ui_listen (REVERIFY_UI_LISTEN) serves the
    /// dashboard. Each is off until set.
    Daemon(daemon::DaemonArgs),
    /// Run a whole demo campaign on the embedded defaults: the built-in sandbox,
    /// SQLite (in a temp dir, or --dir) and a file outbox (./outbox).
    Demo(demo::DemoArgs),
    /// Validate, apply, approve, list and control campaigns; their audit trail and
    /// evidence.
    #[command(subcommand)]
    Campaign(campaign::CampaignCommand),
    /// Check an evidence bundle (`campaign evidence`) without the database.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// The settings the database holds (require_approval), audited; no runner's
    /// environment can switch them off.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Import, list, show and re-key the user directory.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Bounces and complaints: `bounces ingest` records one DSN or ARF report (for
    /// an MTA that pipes bounces to a program).
    #[command(subcommand)]
    Bounces(bounces::BouncesCommand),
    Sandbox(Box<sandbox::SandboxArgs>),
    /// Serve the public routes (Baanx webhooks, click-through links) and, on
    /// ui_listen, the dashboard.
    Serve(serve::ServeArgs),
    /// The dashboard's helpers: `ui hash-password` makes a ui_users_file hash.
    #[command(subcommand)]
    Ui(ui::UiCommand),
    /// Print a shell completion script to standard output.
    ///
    /// For example: `reverify completions bash > /etc/bash_completion.d/reverify`,
    /// `reverify completions zsh > "${fpath[1]}/_reverify"`, or
    /// `reverify completions fish > ~/.config/fish/completions/reverify.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output.
    ///
    /// For example: `reverify man > /usr/local/share/man/man1/reverify.1`, or
    /// `reverify man | man -l -`. `reverify man campaign apply` prints the page the
    /// main one refers to as reverify-campaign-apply(1).
    Man {
        /// A command's page instead of the main one.
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// What every command starts from.
pub struct Context {
    pub settings: Settings,
    /// Who is acting: see [`actor`].
    pub actor: String,
}

/// Who a command acts as, in the audit trail: `--as NAME`, else `REVERIFY_ACTOR`
/// (both read by clap into `given`), else the operating-system user (`USER`, else
/// `LOGNAME`, else `unknown`). Resolved once per command; every event a command
/// writes, and an approval's four-eyes check, use it.
pub fn actor(given: Option<&str>) -> String {
    match given.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) => a.to_owned(),
        None => std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// `--as` / `REVERIFY_ACTOR`: a name of 1 to 128 printable characters.
fn parse_actor(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err("an actor name is at most 128 printable characters".into());
    }
    Ok(s.to_owned())
}

impl Context {
    /// The store and the named campaign, or an error that says how to create it.
    pub async fn existing_campaign(
        &self,
        name: &reverify::domain::CampaignName,
    ) -> anyhow::Result<(Store, reverify::store::campaigns::CampaignRecord)> {
        let store = self.store().await?;
        let c = store.campaign_get(name).await?.ok_or_else(|| {
            anyhow::anyhow!("no campaign named {name}; apply its file first (reverify campaign apply FILE)")
        })?;
        Ok((store, c))
    }

    /// Opens the database and brings its schema up to date; its seals link with
    /// `audit_key` and write to `audit_anchor` when they are set.
    pub async fn store(&self) -> anyhow::Result<Store> {
        let store = Store::open(&self.settings.database_url)
            .await
            .with_context(|| "failed to open the database (database_url)".to_string())?;
        Ok(store.with_sealing(self.sealing(None)?))
    }

    /// How this process seals the audit chain, from the settings; `anchor`, when
    /// given, stands for `audit_anchor`.
    pub fn sealing(&self, anchor: Option<&str>) -> anyhow::Result<reverify::store::chain::Sealing> {
        use reverify::store::anchor::Anchor;
        use reverify::store::chain::{AuditKey, Sealing};
        let key = match &self.settings.audit_key {
            Some(k) => Some(AuditKey::new(k.expose().as_bytes()).map_err(|m| anyhow::anyhow!("audit_key {m}"))?),
            None => None,
        };
        let anchor = match anchor.or(self.settings.audit_anchor.as_deref()) {
            Some(a) => Some(Anchor::parse(a)?),
            None => None,
        };
        Ok(Sealing { key, anchor })
    }
}

/// Seals the audit events written so far into the chain (see
/// [`reverify::store::chain`]); every command that writes events calls it at its
/// end. A failure is a warning: the events are kept, and the next seal takes them.
pub async fn seal(store: &Store) {
    store.audit_seal_or_warn(chrono::Utc::now()).await;
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = {
        use clap::FromArgMatches as _;
        let matches = command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
    // These need no settings, database or runtime: a broken settings file must not
    // stop a package build from generating them.
    match &cli.command {
        Command::Completions { shell } => return ExitCode::from(completions(*shell)),
        Command::Man { command } => return ExitCode::from(man(command)),
        // needs no settings either: a password hash for the settings' users file
        Command::Ui(ui::UiCommand::HashPassword) => {
            return ExitCode::from(match ui::run(ui::UiCommand::HashPassword) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::FAILURE
                }
            });
        }
        _ => {}
    }
    if let Command::Evidence(cmd) = cli.command {
        return ExitCode::from(evidence::run(cmd));
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: invalid settings: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let format = cli.log_format.unwrap_or(settings.log_format);
    reverify::telemetry::init(format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let ctx = Context { settings, actor: actor(cli.actor.as_deref()) };
    match runtime.block_on(run(cli.command, ctx)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // a command line that only shows as wrong at run time is still a usage error
            let usage = e.chain().any(|c| c.is::<UsageError>());
            ExitCode::from(if usage { exit::USAGE } else { exit::FAILURE })
        }
    }
}

/// A command line found wrong only once the command runs (a `--step` the campaign
/// does not have): exits 2, as clap's own usage errors do.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `--locale L`: a locale tag (`de-DE`, `pt_br`), checked by clap (exit 2).
pub fn parse_locale(s: &str) -> Result<reverify::domain::Locale, String> {
    reverify::domain::Locale::parse(s).map_err(|_| format!("{s:?} is not a locale tag like \"de-DE\""))
}

async fn run(command: Command, ctx: Context) -> anyhow::Result<u8> {
    match command {
        Command::Migrate => {
            let store = ctx.store().await?;
            println!("database schema is up to date ({})", store.backend().as_str());
            Ok(exit::OK)
        }
        Command::Keygen => {
            println!("{}", reverify::crypto::TokenCipher::generate_key());
            Ok(exit::OK)
        }
        Command::Campaign(c) => campaign::run(c, &ctx).await,
        Command::Run(args) => run::run(args, &ctx).await,
        Command::Daemon(args) => daemon::run(args, &ctx).await,
        Command::Demo(args) => demo::run(args, &ctx).await,
        Command::Users(c) => users::run(c, &ctx).await,
        Command::Bounces(c) => bounces::run(c, &ctx).await,
        Command::Settings(c) => settings::run(c, &ctx).await,
        Command::Sandbox(a) => sandbox::run(*a, &ctx).await,
        Command::Serve(args) => serve::run(args, &ctx).await,
        Command::Ui(c) => ui::run(c),
        Command::Completions { shell } => Ok(completions(shell)),
        Command::Man { command } => Ok(man(&command)),
        Command::Evidence(cmd) => Ok(evidence::run(cmd)),
    }
}

/// What every `--help` and the manual page end with.
const EXIT_CODES: &str = "\
Exit codes:
  0  done: the command did what it was asked
  1  failed: the message on standard error says why
  2  usage: the command line was wrong (an unknown flag, command or value)
  3  partial: input was partly bad (an import with rejected rows); the good part was kept
  4  interrupted: a run stopped (--max-duration, SIGTERM, SIGINT) with work left; the next run resumes";

/// The command line as clap sees it, with the exit codes after every command's help.
pub fn command() -> clap::Command {
    fn with_exit_codes(cmd: clap::Command) -> clap::Command {
        cmd.after_help(EXIT_CODES).mut_subcommands(with_exit_codes)
    }
    with_exit_codes(Cli::command())
}

/// `reverify completions SHELL`.
fn completions(shell: clap_complete::Shell) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "reverify", &mut script);
    print_generated(&script, "the completion script")
}

/// `reverify man [COMMAND…]`: the main page, with every command listed, or one
/// command's page.
fn man(path: &[String]) -> u8 {
    let mut cmd = command();
    // names the subcommands' pages reverify-campaign-apply and so on
    cmd.build();
    for name in path {
        let Some(sub) = cmd.find_subcommand(name).filter(|c| !c.is_hide_set()).cloned() else {
            eprintln!("error: no command {:?}; see reverify --help", path.join(" "));
            return exit::USAGE;
        };
        cmd = sub;
    }
    let mut page = Vec::new();
    let source = format!("reverify {}", env!("CARGO_PKG_VERSION"));
    if let Err(e) = clap_mangen::Man::new(cmd).source(source).render(&mut page) {
        eprintln!("error: cannot render the manual page: {e}");
        return exit::FAILURE;
    }
    print_generated(&page, "the manual page")
}

/// Writes generated text to standard output. A reader that stops early (`| head`)
/// is not an error.
fn print_generated(text: &[u8], what: &str) -> u8 {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every argument and flag of every command, with the path of commands to it,
    /// that has no help text.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            let help = arg.get_help().or(arg.get_long_help()).map(ToString::to_string).unwrap_or_default();
            if help.trim().is_empty() {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_and_flag_has_help() {
        let mut cmd = super::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "reverify", &mut missing);
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn every_help_ends_with_the_exit_codes() {
        fn check(cmd: &mut clap::Command, path: &str) {
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Exit codes:") && help.contains("4  interrupted"), "{path}: {help}");
            // (clap's own `help` subcommands print the others' help)
            let names: Vec<String> =
                cmd.get_subcommands().map(|s| s.get_name().to_owned()).filter(|n| n != "help").collect();
            for name in names {
                let sub = cmd.find_subcommand_mut(&name).unwrap();
                check(sub, &format!("{path} {name}"));
            }
        }
        let mut cmd = super::command();
        cmd.build();
        check(&mut cmd, "reverify");
    }
}
