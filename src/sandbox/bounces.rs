//! The mail provider's side of bounces, for the demo and the tests: posts the
//! bounce webhook Postmark sends (its documented payload, HTTP Basic auth with the
//! webhook's password) for chosen addresses, as if their messages had bounced.

use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::Secret;
use crate::domain::EmailAddress;

/// Postmark's bounce webhook body for `email`: a `HardBounce` (or `SoftBounce` when
/// `hard` is false), event `id`, at `at`.
pub fn postmark_bounce_body(id: u64, email: &EmailAddress, hard: bool, at: DateTime<Utc>) -> Vec<u8> {
    let (kind, code, name, description) = if hard {
        (
            "HardBounce",
            1,
            "Hard bounce",
            "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        )
    } else {
        ("SoftBounce", 4096, "Soft bounce", "Unable to temporarily deliver this message.")
    };
    serde_json::to_vec(&serde_json::json!({
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": id,
        "Type": kind,
        "TypeCode": code,
        "Name": name,
        "Tag": "",
        "MessageID": format!("883953f4-6105-42a2-a16a-{:012x}", id),
        "Metadata": {},
        "ServerID": 23,
        "Description": description,
        "Details": if hard { "smtp;550 5.1.1 The email account that you tried to reach does not exist" } else { "smtp;421 4.4.2 Connection timed out" },
        "Email": email.as_str(),
        "From": "compliance@example.com",
        "BouncedAt": at.to_rfc3339(),
        "DumpAvailable": false,
        "Inactive": hard,
        "CanActivate": true,
        "Subject": "Please verify your identity again",
    }))
    .unwrap_or_default()
}

/// Posts Postmark's bounce webhook for `email` to `url` (`…/bounces/postmark`) with
/// `secret` as the Basic auth password; the answer's status.
///
/// # Errors
/// When the post cannot be made.
pub async fn post_postmark_bounce(
    url: &url::Url,
    secret: &Secret,
    id: u64,
    email: &EmailAddress,
    hard: bool,
) -> Result<u16, reqwest::Error> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("postmark:{}", secret.expose()));
    let answer = reqwest::Client::new()
        .post(url.clone())
        .header("content-type", "application/json")
        .header("authorization", format!("Basic {auth}"))
        .body(postmark_bounce_body(id, email, hard, Utc::now()))
        .send()
        .await?;
    Ok(answer.status().as_u16())
}
