//! `reverify bounces ingest`: one bounce or complaint message, from a file or
//! standard input, recorded as the mailbox reader records one: for an MTA that
//! delivers bounces to a program (Postfix's `pipe`, Exim's `pipe` transport).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use reverify::bounces::{BounceKey, BounceSink, Recorded, parse_message};
use reverify::domain::bounce::token_in_plus_address;
use reverify::engine::bounces::StoreBounceSink;

use super::{Context, exit};

/// The largest message read: a DSN is a few KiB; one that carries the whole
/// original message stays far below this.
const MAX_MESSAGE_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum BouncesCommand {
    /// Record one bounce or complaint: an RFC 3464 delivery status notification or
    /// an RFC 5965 ARF report, from FILE or standard input.
    ///
    /// For an MTA that pipes bounces to a program, e.g. Postfix's master.cf:
    /// `reverify-bounces unix - n n - - pipe user=reverify
    /// argv=/usr/bin/reverify bounces ingest --recipient ${recipient}`. The message
    /// is matched to the message it is about by the VERP token in --recipient (the
    /// address the bounce was delivered to, `delivery.return_path`) or in its
    /// original Message-ID; a report naming only an address is not trusted.
    /// Exits 0 when it was recorded, or ignored with a reason (a duplicate, no
    /// report in it, a token no key of ours made: said on standard error), 1 when
    /// it could not be recorded (the MTA keeps the message queued and tries again).
    Ingest {
        /// The message (default: standard input).
        file: Option<PathBuf>,
        /// The envelope recipient the MTA delivered it to (the VERP return path
        /// with its token).
        #[arg(long, value_name = "ADDRESS")]
        recipient: Option<String>,
    },
}

pub async fn run(cmd: BouncesCommand, ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        BouncesCommand::Ingest { file, recipient } => ingest(ctx, file, recipient).await,
    }
}

async fn ingest(ctx: &Context, file: Option<PathBuf>, recipient: Option<String>) -> anyhow::Result<u8> {
    let (name, raw) = read_message(file.as_ref())?;
    let reports = match parse_message(&raw) {
        Ok(r) => r,
        Err(e) => {
            reverify::telemetry::global().bounce_rejected("mailbox", "malformed");
            eprintln!("{name}: not a bounce report: {e}; nothing recorded");
            return Ok(exit::OK);
        }
    };
    if reports.is_empty() {
        eprintln!("{name}: no failure in it (a delay or a success notice); nothing recorded");
        return Ok(exit::OK);
    }
    let token = recipient.as_deref().and_then(token_in_plus_address).map(str::to_owned);
    let store = ctx.store().await?;
    let sink = StoreBounceSink::new(store.clone(), ctx.settings.verp_key());
    for mut report in reports {
        // the envelope recipient is the strongest key: the MTA, not the message, says it
        if let Some(t) = &token {
            report.keys.insert(0, BounceKey::Token(t.clone()));
        }
        let kind = report.kind.as_str();
        match sink.record(report).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))? {
            Recorded::Applied => println!("{name}: recorded ({kind})"),
            Recorded::Duplicate => eprintln!("{name}: recorded before; nothing changed"),
            Recorded::Unmatched => eprintln!("{name}: it matches no message of ours; nothing changed"),
            Recorded::UnknownToken => eprintln!("{name}: its token was not made by this token_key; nothing changed"),
        }
    }
    store.close().await;
    Ok(exit::OK)
}

/// The message's name (for messages) and bytes, at most [`MAX_MESSAGE_BYTES`].
fn read_message(file: Option<&PathBuf>) -> anyhow::Result<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let name = match file {
        Some(path) if path.as_os_str() != "-" => {
            let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            f.take(MAX_MESSAGE_BYTES + 1)
                .read_to_end(&mut raw)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            path.display().to_string()
        }
        _ => {
            std::io::stdin()
                .take(MAX_MESSAGE_BYTES + 1)
                .read_to_end(&mut raw)
                .context("standard input: cannot read")?;
            "standard input".to_owned()
        }
    };
    if raw.len() as u64 > MAX_MESSAGE_BYTES {
        anyhow::bail!("{name}: over {} MiB; not a bounce report", MAX_MESSAGE_BYTES >> 20);
    }
    Ok((name, raw))
}
