//! `reverify campaign preview`: exactly what a message of a campaign would be, for
//! a real user or a sample one, without calling the API or sending anything.
//!
//! Decision: the link is a clearly fake one (`PREVIEW_LINK`), never a session or a
//! click-through token: a preview must not be usable to verify, nor spend a session.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::Utc;
use reverify::domain::spec::LinkMode;
use reverify::domain::{CampaignName, EmailAddress, Region, SessionUrl, UserId};
use reverify::notify::{Message, Recipient, Templates, build_email};

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
    pub locale: Option<String>,
    pub step: u32,
    pub format: PreviewFormat,
    pub output: Option<PathBuf>,
}

pub async fn preview(ctx: &Context, args: PreviewArgs) -> anyhow::Result<u8> {
    let (store, c) = super::campaign::existing(ctx, &args.name).await?;
    let spec = c.spec()?;
    let templates = Templates::from_settings(&ctx.settings).context("failed to load the templates")?;
    let recipient = match &args.user {
        Some(id) => {
            let u = store.user_get(id).await?.ok_or_else(|| anyhow::anyhow!("--user: no user {id} in the database"))?;
            Recipient {
                user_id: u.user_id,
                email: u.email,
                first_name: u.first_name,
                last_name: u.last_name,
                locale: u.locale,
                time_zone: u.timezone,
                region: u.region,
            }
        }
        None => Recipient {
            user_id: UserId::parse("00000000-0000-4000-8000-000000000000")?,
            email: EmailAddress::parse("preview.user@example.com")?,
            first_name: Some("Alex".into()),
            last_name: Some("Example".into()),
            locale: Some("en-GB".into()),
            time_zone: Some(spec.timezone.clone()),
            region: Region::Intl,
        },
    };
    let mut recipient = recipient;
    if let Some(l) = &args.locale {
        if reverify::domain::locale::normalize(l).is_none() {
            anyhow::bail!("--locale: {l:?} is not a locale tag like \"de-DE\"");
        }
        recipient.locale = Some(l.clone());
    }
    let mut delivery = spec.delivery.clone();
    if args.step > 0 {
        let Some(r) = &spec.reminders else {
            anyhow::bail!("--step {}: campaign {} sends no reminders (it has no [reminders])", args.step, c.name);
        };
        if args.step > r.max {
            anyhow::bail!("--step {}: campaign {} sends at most {} reminders", args.step, c.name, r.max);
        }
        delivery.template = r.template.clone();
    }
    // as a run would: a session lives 24 h from now, a click-through link link_ttl
    let life = match delivery.link {
        LinkMode::Direct => chrono::Duration::hours(24),
        LinkMode::Click => chrono::Duration::from_std(delivery.link_ttl.0).unwrap_or(chrono::Duration::days(14)),
    };
    let msg = Message {
        recipient,
        session_url: SessionUrl::new(PREVIEW_LINK.to_owned()),
        expires_at: Utc::now() + life,
        campaign: c.name.clone(),
        step: args.step,
        delivery,
    };
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
