//! `campaign report` and `campaign audit`: what a compliance team hands an auditor.

use std::path::Path;

use anyhow::Context as _;
use chrono::SecondsFormat;
use reverify::domain::UserId;
use reverify::report::{ReportFormat, write_report};
use reverify::store::Store;
use reverify::store::campaigns::CampaignRecord;
use reverify::store::events::EventFilter;

use super::exit;

/// Writes the report to `output` (created or truncated) or to standard output.
pub async fn report(
    store: &Store,
    c: &CampaignRecord,
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    let rows = match output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("failed to create {} (--output)", path.display()))?;
            let rows = write_report(store, c.campaign_id, format, file)
                .await
                .with_context(|| format!("the report in {} is incomplete", path.display()))?;
            eprintln!("campaign {}: {rows} targets written to {}", c.name, path.display());
            rows
        }
        None => write_report(store, c.campaign_id, format, std::io::stdout().lock())
            .await
            .context("the report is incomplete")?,
    };
    let _ = rows;
    Ok(exit::OK)
}

/// Prints the campaign's events (or one user's), a page at a time.
pub async fn audit(store: &Store, c: &CampaignRecord, user: Option<UserId>, json: bool) -> anyhow::Result<u8> {
    let filter = EventFilter { campaign_id: Some(c.campaign_id), user_id: user, kind: None };
    let mut after = 0;
    let mut printed = 0u64;
    if !json {
        println!("{:<24}  {:<28}  {:<24}  {:<36}  DETAIL", "AT", "ACTOR", "KIND", "USER");
    }
    loop {
        let page = store.event_list(&filter, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.event_id;
        for e in &page {
            if json {
                let doc = serde_json::json!({
                    "event_id": e.event_id, "at": e.at, "actor": e.actor, "kind": e.kind,
                    "campaign_id": e.campaign_id, "user_id": e.user_id, "detail": e.detail,
                });
                println!("{doc}");
            } else {
                println!(
                    "{:<24}  {:<28}  {:<24}  {:<36}  {}",
                    e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    e.actor,
                    e.kind,
                    e.user_id.as_deref().unwrap_or("-"),
                    e.detail.as_ref().map_or_else(String::new, |d| d.to_string())
                );
            }
            printed += 1;
        }
    }
    if printed == 0 && !json {
        println!("(no events)");
    }
    Ok(exit::OK)
}
