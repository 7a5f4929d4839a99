//! `reverify users …`: import, list, show and re-key the user directory. Nothing
//! here ever prints a refresh token: `User` does not carry one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use reverify::crypto::TokenCipher;
use reverify::directory::{Format, ImportOptions, MAX_REPORTED_PROBLEMS, import_file};
use reverify::domain::{Region, UserId, VerificationState};
use reverify::store::events::NewEvent;
use reverify::store::users::{User, UserFilter};

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Import users from CSV (with a header row) or JSON Lines, upserting by user id.
    ///
    /// Columns: user_id, email, region, verification_state (required), first_name,
    /// last_name, locale, timezone, country, rejected_at, refresh_token, tags
    /// (separated by ';'), signed_up_at. Bad rows are reported by line; the good
    /// ones are imported and the exit code is 3. Refresh tokens are encrypted with
    /// token_key; a row without one keeps the stored token.
    Import {
        /// The file (.csv, .jsonl or .ndjson, or say which with --format).
        file: PathBuf,
        /// The file's format, when its name does not tell.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Import nothing when any row is bad.
        #[arg(long)]
        strict: bool,
    },
    /// List users, in user id order.
    List {
        /// Only users in this verification state: UNVERIFIED, PENDING, VERIFIED or REJECTED.
        #[arg(long, value_parser = |s: &str| s.parse::<VerificationState>())]
        state: Option<VerificationState>,
        /// Only users of this region: us or international.
        #[arg(long, value_parser = |s: &str| s.parse::<Region>())]
        region: Option<Region>,
        /// Users carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only users whose email is undeliverable (a hard bounce, or three soft
        /// ones in 7 days) or who complained, with since when and why.
        #[arg(long)]
        undeliverable: bool,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one user (whether a refresh token is on file, never the token).
    Show {
        /// The user's Baanx user id.
        #[arg(value_parser = |s: &str| UserId::parse(s))]
        id: UserId,
        /// Print JSON (one object; a list is JSON Lines, one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every refresh token not under the current token_key (after moving
    /// the old key to token_keys_previous).
    Rekey {
        /// Tokens per page.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
    },
    /// Erase a person's data (email, names, locale, time zone, tokens) from every
    /// table, keeping the pseudonymous record an AML file needs (the id, times,
    /// states, reasons, the ledger and the audit trail). Audited; cannot be undone.
    Forget {
        /// The user's Baanx user id.
        #[arg(value_parser = |s: &str| UserId::parse(s))]
        id: UserId,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Refresh verification states from GET /v1/user, under the Baanx rate limit:
    /// the state, when it changed, rejections, and the outcome of notified targets.
    Sync(super::sync::SyncArgs),
}

pub async fn run(cmd: UsersCommand, ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        UsersCommand::Import { file, format, strict } => import(ctx, file, format, strict).await,
        UsersCommand::List { state, region, tag, undeliverable, limit, json } => {
            if let Some(t) = &tag
                && !reverify::domain::spec::is_tag(t)
            {
                anyhow::bail!("--tag {t:?} is not a tag: use 1-64 of A-Z a-z 0-9 . _ : -");
            }
            list(ctx, UserFilter { state, region, tag, undeliverable }, limit, json).await
        }
        UsersCommand::Show { id, json } => show(ctx, &id, json).await,
        UsersCommand::Rekey { batch } => rekey(ctx, batch.max(1)).await,
        UsersCommand::Forget { id, yes } => forget(ctx, &id, yes).await,
        UsersCommand::Sync(args) => super::sync::run(args, ctx).await,
    }
}

/// `users forget ID`: asks first on a terminal, refuses without `--yes` otherwise.
async fn forget(ctx: &Context, id: &UserId, yes: bool) -> anyhow::Result<u8> {
    use reverify::store::forget::Forgotten;
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: users forget {id}: erasure cannot be undone; pass --yes to confirm (standard input is not a terminal)"
            );
            return Ok(exit::FAILURE);
        }
        eprint!("Erase the personal data of user {id}? This cannot be undone. Type the user id to confirm: ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != id.as_str() {
            eprintln!("not confirmed; nothing changed");
            return Ok(exit::FAILURE);
        }
    }
    let store = ctx.store().await?;
    let forgotten = store.user_forget(id, &ctx.actor, chrono::Utc::now()).await?;
    // the messages written for them: each holds their address and name
    let outbox = match (&forgotten, &ctx.settings.outbox_dir) {
        (Forgotten::Unknown, _) | (_, None) => 0,
        (_, Some(dir)) => {
            let removed = reverify::notify::outbox_forget_user(dir, id.as_str())?;
            if !removed.is_empty() {
                let event = reverify::store::events::NewEvent {
                    actor: &ctx.actor,
                    kind: "user.outbox_erased",
                    campaign_id: None,
                    user_id: Some(id),
                    detail: Some(serde_json::json!({ "messages_removed": removed.len() })),
                };
                store.event_append(&event, chrono::Utc::now()).await?;
            }
            removed.len()
        }
    };
    super::seal(&store).await;
    let outbox = match &ctx.settings.outbox_dir {
        Some(_) => format!("; {outbox} messages removed from the outbox"),
        None => String::new(),
    };
    match forgotten {
        Forgotten::Now { targets, links } => {
            println!(
                "user {id}: personal data erased (email, names, locale, time zone, tokens); {targets} open targets \
                 skipped, {links} links revoked{outbox}; the pseudonymous record and the audit trail are kept"
            );
            Ok(exit::OK)
        }
        Forgotten::Already(at) => {
            println!(
                "user {id}: already forgotten at {}{outbox}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(exit::OK)
        }
        Forgotten::Unknown => {
            eprintln!("error: no user {id}");
            Ok(exit::FAILURE)
        }
    }
}

/// The token cipher when token_key is set; a bad key is an error even when no row
/// needs it, since the settings are wrong.
fn token_cipher(ctx: &Context) -> anyhow::Result<Option<Arc<TokenCipher>>> {
    let s = &ctx.settings;
    match &s.token_key {
        None => Ok(None),
        Some(key) => Ok(Some(Arc::new(TokenCipher::from_secrets(Some(key), s.token_keys_previous.as_ref())?))),
    }
}

async fn import(ctx: &Context, file: PathBuf, format: Option<Format>, strict: bool) -> anyhow::Result<u8> {
    let cipher = token_cipher(ctx)?;
    let store = ctx.store().await?;
    let opts = ImportOptions { format, strict, cipher, actor: ctx.actor.clone(), now: chrono::Utc::now() };
    let report = import_file(&store, &file, &opts).await;
    super::seal(&store).await;
    let report = report?;
    let shown = file.display();
    for p in &report.problems {
        eprintln!("{shown}:{}: {}", p.line, p.reason);
    }
    let hidden = report.bad.saturating_sub(report.problems.len() as u64);
    if hidden > 0 {
        eprintln!("… and {hidden} more bad rows (the first {MAX_REPORTED_PROBLEMS} are shown)");
    }
    if report.strict_refused {
        eprintln!(
            "{shown}: nothing imported: {} of {} rows are bad (--strict); fix them and import again",
            report.bad, report.rows
        );
        return Ok(exit::FAILURE);
    }
    println!(
        "{shown}: imported {} of {} rows ({} with a refresh token); {} bad",
        report.imported, report.rows, report.tokens, report.bad
    );
    Ok(if report.bad > 0 { exit::PARTIAL } else { exit::OK })
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

async fn list(ctx: &Context, filter: UserFilter, limit: u64, json: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let mut after: Option<UserId> = None;
    let mut printed = 0u64;
    if !json && filter.undeliverable {
        println!("{:<36}  {:<32}  {:<24}  {:<24}  REASON", "USER_ID", "EMAIL", "UNDELIVERABLE_SINCE", "COMPLAINED_AT");
    } else if !json {
        println!("{:<36}  {:<32}  {:<4}  {:<10}  {:<5}  TAGS", "USER_ID", "EMAIL", "REG", "STATE", "TOKEN");
    }
    // Pages, so that listing a million users holds one page at a time.
    loop {
        let want = if limit == 0 { 1000 } else { (limit - printed).min(1000) };
        if want == 0 {
            break;
        }
        let page = store.user_list(&filter, after.as_ref(), want as u32).await?;
        for u in &page {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            };
            if json {
                println!("{}", serde_json::to_string(u)?);
            } else if filter.undeliverable {
                println!(
                    "{:<36}  {:<32}  {:<24}  {:<24}  {}",
                    u.user_id.as_str(),
                    u.email.as_str(),
                    at(u.email_undeliverable_at),
                    at(u.complained_at),
                    u.email_undeliverable_reason.as_deref().unwrap_or("-")
                );
            } else {
                println!(
                    "{:<36}  {:<32}  {:<4}  {:<10}  {:<5}  {}",
                    u.user_id.as_str(),
                    u.email.as_str(),
                    u.region.as_str(),
                    u.verification_state.as_str(),
                    if u.has_token { "yes" } else { "no" },
                    u.tags.join(";")
                );
            }
        }
        printed += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as u64 == want => after = Some(last.user_id.clone()),
            _ => break,
        }
    }
    if !json {
        let total = store.user_count(&filter).await?;
        println!("({printed} shown of {total})");
    }
    Ok(exit::OK)
}

fn print_user(u: &User) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("user_id:              {}", u.user_id);
    println!("email:                {}", u.email);
    println!("name:                 {} {}", opt(&u.first_name), opt(&u.last_name));
    println!("locale:               {}", opt(&u.locale));
    println!("timezone:             {}", opt(&u.timezone));
    println!("region:               {}", u.region);
    println!("country:              {}", opt(&u.country));
    println!("verification_state:   {} (since {})", u.verification_state, time(u.state_changed_at));
    println!("rejected_at:          {}", time(u.rejected_at));
    println!("consecutive_failures: {} (last {})", u.consecutive_failures, time(u.last_failure_at));
    match (&u.has_token, &u.token_key_id) {
        (true, Some(k)) => println!("refresh_token:        on file (encrypted, key {k})"),
        _ => println!("refresh_token:        none"),
    }
    if u.consent_required_at.is_some() {
        println!("consent_required_at:  {}", time(u.consent_required_at));
    }
    println!("tags:                 {}", if u.tags.is_empty() { "-".into() } else { u.tags.join(";") });
    println!("signed_up_at:         {}", time(u.signed_up_at));
    println!("created_at:           {}", time(Some(u.created_at)));
    println!("updated_at:           {}", time(Some(u.updated_at)));
    println!("synced_at:            {}", time(u.synced_at));
}

async fn show(ctx: &Context, id: &UserId, json: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let Some(u) = store.user_get(id).await? else {
        eprintln!("error: user {id} not found");
        return Ok(exit::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&u)?);
    } else {
        print_user(&u);
    }
    Ok(exit::OK)
}

async fn rekey(ctx: &Context, batch: u32) -> anyhow::Result<u8> {
    let cipher = token_cipher(ctx)?.context("users rekey needs the new key as token_key")?;
    let store = ctx.store().await?;
    let (mut rekeyed, mut raced, mut failed) = (0u64, 0u64, 0u64);
    let mut after: Option<UserId> = None;
    loop {
        let page = store.user_tokens_not_under(cipher.key_id(), after.as_ref(), batch).await?;
        for (id, old) in &page {
            match cipher.open(id.as_str(), &old.key_id, &old.ciphertext) {
                Err(e) => {
                    failed += 1;
                    if failed <= MAX_REPORTED_PROBLEMS as u64 {
                        eprintln!("error: {e}");
                    }
                }
                Ok(token) => {
                    let new = reverify::store::users::SealedToken {
                        key_id: cipher.key_id().to_owned(),
                        ciphertext: cipher.seal(id.as_str(), &token),
                    };
                    if store.user_token_replace(id, old, &new, chrono::Utc::now()).await? {
                        rekeyed += 1;
                    } else {
                        raced += 1; // rotated meanwhile: the new token is already current
                    }
                }
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == batch as usize => after = Some(last.clone()),
            _ => break,
        }
    }
    let actor = ctx.actor.clone();
    let event = NewEvent {
        actor: &actor,
        kind: "users.rekeyed",
        campaign_id: None,
        user_id: None,
        detail: Some(serde_json::json!({
            "key_id": cipher.key_id(), "rekeyed": rekeyed, "changed_meanwhile": raced, "failed": failed,
        })),
    };
    store.event_append(&event, chrono::Utc::now()).await?;
    super::seal(&store).await;
    println!(
        "re-encrypted {rekeyed} refresh tokens with key {}; {raced} changed meanwhile; {failed} failed",
        cipher.key_id()
    );
    if failed > MAX_REPORTED_PROBLEMS as u64 {
        eprintln!("… and {} more failures", failed - MAX_REPORTED_PROBLEMS as u64);
    }
    Ok(if failed > 0 { exit::FAILURE } else { exit::OK })
}
