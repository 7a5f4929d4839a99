//! What `campaign preview` and `campaign test-send` render: one message of a
//! campaign, for a user of the database or a sample user, with a fake link.

use chrono::Utc;
use reverify::domain::spec::LinkMode;
use reverify::domain::{CampaignSpec, EmailAddress, Locale, Region, SessionUrl, TimeZone, UserId, VerificationState};
use reverify::notify::{Message, Recipient};
use reverify::store::Store;

/// The sample user, when no `--user` is given.
const SAMPLE_USER_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The person to render for: user `id` as stored (`--user`), or a sample user in
/// the campaign's time zone.
///
/// # Errors
/// No such user, or the store fails.
pub async fn recipient(store: &Store, user: Option<&UserId>, spec: &CampaignSpec) -> anyhow::Result<Recipient> {
    Ok(match user {
        Some(id) => {
            let u = store.user_get(id).await?.ok_or_else(|| anyhow::anyhow!("--user: no user {id} in the database"))?;
            Recipient {
                user_id: u.user_id,
                email: u.email,
                first_name: u.first_name,
                last_name: u.last_name,
                // as a claim reads them (`store::targets::claims`)
                locale: u.locale.as_deref().map(Locale::parse).transpose()?,
                time_zone: u.timezone.map(TimeZone::from),
                region: u.region,
                verification_state: u.verification_state,
            }
        }
        None => Recipient {
            user_id: UserId::parse(SAMPLE_USER_ID)?,
            email: EmailAddress::parse("sample.user@example.com")?,
            first_name: Some("Alex".into()),
            last_name: Some("Example".into()),
            locale: Some(Locale::parse("en-GB")?),
            time_zone: Some(TimeZone::from(spec.timezone.as_str())),
            region: Region::Intl,
            verification_state: VerificationState::Unverified,
        },
    })
}

/// Message `step` of `spec` (0: the first, N: the N-th reminder) for `recipient`,
/// carrying `link` and expiring as a run's would: a session in 24 h, a
/// click-through link after `link_ttl`.
///
/// # Errors
/// The campaign has no such step.
pub fn message(spec: &CampaignSpec, step: u32, recipient: Recipient, link: &str) -> anyhow::Result<Message> {
    let last = spec.reminders.as_ref().map_or(0, |r| r.max);
    if step > last {
        return Err(super::UsageError(format!(
            "--step {step}: campaign {} has steps 0 (the first message) to {last} (its reminders)",
            spec.name
        ))
        .into());
    }
    let delivery = spec.delivery_for_step(step);
    let life = match delivery.link {
        LinkMode::Direct => chrono::Duration::hours(24),
        LinkMode::Click => chrono::Duration::from_std(delivery.link_ttl.0).unwrap_or(chrono::Duration::days(14)),
    };
    Ok(Message {
        recipient,
        bounce_token: None,
        session_url: SessionUrl::new(link.to_owned()),
        expires_at: Utc::now() + life,
        campaign: spec.name.clone(),
        step,
        delivery,
    })
}
