//! `reverify campaign test-send NAME --to ADDRESS [--user ID] [--step N]`: every
//! message of a campaign (the first and each reminder), rendered with a real user's
//! data or a sample user's, sent to ADDRESS through the campaign's channel with an
//! obviously fake link. No Baanx call is made (the Baanx settings are not even
//! read), nothing is recorded against the user, and the send is audited
//! (`campaign.test_sent`, with the address's SHA-256, never the address).

use chrono::Utc;
use reverify::domain::{CampaignName, EmailAddress, UserId};
use reverify::notify::{DeliveryRetryPolicy, Notifier};
use reverify::store::events::NewEvent;
use sha2::{Digest as _, Sha256};

use super::{Context, exit};

/// The link every test message carries: a reserved domain that never resolves.
pub const FAKE_LINK: &str = "https://test-send.invalid/this-is-a-test-message-not-a-verification-link";

pub async fn test_send(
    ctx: &Context,
    name: &CampaignName,
    to: &EmailAddress,
    user: Option<&UserId>,
    step: Option<u32>,
) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let Some(c) = store.campaign_get(name).await? else {
        eprintln!("error: no campaign named {name}; apply its file first (reverify campaign apply FILE)");
        return Ok(exit::FAILURE);
    };
    let spec = c.spec()?;
    let notifier = Notifier::from_settings(&ctx.settings, DeliveryRetryPolicy::default())
        .map_err(|e| anyhow::anyhow!("notifications: {e}"))?
        .observed_by(std::sync::Arc::new(reverify::engine::observe::Metered));
    let channels = reverify::notify::Channels { click: ctx.settings.public_url.is_some(), ..notifier.channels() };
    reverify::notify::check_campaign(&spec, notifier.templates(), channels)
        .map_err(|e| anyhow::anyhow!("campaign {name}: {e}"))?;
    let last = spec.reminders.as_ref().map_or(0, |r| r.max);
    let steps: Vec<u32> = match step {
        Some(n) => vec![n],
        None => (0..=last).collect(),
    };
    let mut recipient = super::sample::recipient(&store, user, &spec).await?;
    recipient.email = to.clone();
    let mut sent = Vec::new();
    let mut failed = false;
    for &n in &steps {
        let message = super::sample::message(&spec, n, recipient.clone(), FAKE_LINK)?;
        match notifier.send_with_retry(&message).await {
            Ok(d) => {
                println!("{name}: step {n} sent to {to} ({}), with a fake link", d.channel.as_str());
                sent.push(n);
            }
            Err(e) => {
                eprintln!("error: {name}: step {n}: {}", e.reason());
                failed = true;
            }
        }
    }
    let event = NewEvent {
        actor: &ctx.actor,
        kind: "campaign.test_sent",
        campaign_id: Some(c.campaign_id),
        user_id: user,
        detail: Some(serde_json::json!({
            "steps": steps, "sent": sent, "sample_user": user.is_none(),
            "to_sha256": hex::encode(Sha256::digest(to.as_str().to_ascii_lowercase().as_bytes())),
            "channel": spec.delivery.channel, "version": c.version,
        })),
    };
    store.event_append(&event, Utc::now()).await?;
    super::seal(&store).await;
    Ok(if failed { exit::FAILURE } else { exit::OK })
}
