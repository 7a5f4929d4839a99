//! `reverify campaign preview`: exactly what a message of a campaign would be, for
//! a real user or a sample one, without calling the API or sending anything.
//!
//! Decision: the link is a clearly fake one (`PREVIEW_LINK`), never a session or a
//! click-through token: a preview must not be usable to verify, nor spend a session.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use reverify::domain::{CampaignName, UserId};
use reverify::notify::{Templates, build_email};

use super::{Context, exit};

/// The link every preview carries.
pub const PREVIEW_LINK: &str = "https://preview.invalid/not-a-real-link-PREVIEW-ONLY";

/// What `--format` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    /// The subject line, a blank line, then the plain-text part.
    Text,
    /// The HTML part.
    Html,
    /// The whole email (RFC 5322), as the outbox would write it.
    Eml,
}

/// The arguments of `campaign preview`.
#[derive(Debug)]
pub struct PreviewArgs {
    pub name: CampaignName,
    pub user: Option<UserId>,
    pub locale: Option<reverify::domain::Locale>,
    pub step: u32,
    pub format: PreviewFormat,
    pub output: Option<PathBuf>,
}

pub async fn preview(ctx: &Context, args: PreviewArgs) -> anyhow::Result<u8> {
    let (store, c) = ctx.existing_campaign(&args.name).await?;
    let spec = c.spec()?;
    let templates = Templates::from_settings(&ctx.settings).context("failed to load the templates")?;
    let mut recipient = super::sample::recipient(&store, args.user.as_ref(), &spec).await?;
    if let Some(l) = &args.locale {
        // parsed by clap (super::parse_locale)
        recipient.locale = Some(l.clone());
    }
    let msg = super::sample::message(&spec, args.step, recipient, PREVIEW_LINK)?;
    let rendered = templates.render(&msg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes: Vec<u8> = match args.format {
        PreviewFormat::Text => format!("Subject: {}\n\n{}", rendered.subject, rendered.text.as_str()).into_bytes(),
        PreviewFormat::Html => rendered.html.as_bytes().to_vec(),
        PreviewFormat::Eml => build_email(&msg, &rendered).map_err(|e| anyhow::anyhow!("{e}"))?.formatted(),
    };
    eprintln!(
        "preview of campaign {} step {} in locale {} ({}); the link is fake; nothing was sent",
        c.name,
        args.step,
        rendered.locale,
        rendered.matched.as_str()
    );
    match &args.output {
        Some(path) => std::fs::write(path, &bytes).with_context(|| format!("failed to write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            if !bytes.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(exit::OK)
}
