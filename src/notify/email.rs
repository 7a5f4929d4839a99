//! The email itself: one RFC 5322 message, built the same way for SMTP and for the
//! outbox, so that a demo's `.eml` files show exactly what production would send.
//!
//! It is `multipart/alternative` (plain text first, then HTML), with From, To,
//! Reply-To, Subject, Date, a Message-ID in the sender's domain,
//! `Auto-Submitted: auto-generated` (RFC 3834: no vacation auto-replies), and
//! `X-Reverify-Step`. `X-Reverify-Campaign` (the campaign's name) is added only with
//! `delivery.trace_headers = true`: a name such as `us-cardholders-monthly` is
//! internal, and every recipient can read the headers; the Message-ID (a digest)
//! traces a message to its campaign without naming it.
//!
//! The Message-ID is stable: a digest of the campaign, the user, the step and the
//! link's expiry, so the same message built again (a retry, a rebuilt email) has the
//! same id, and a new link (a reminder, a retry-failed) a new one. The MIME boundary
//! comes from the same digest.

use std::time::SystemTime;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use super::template::Rendered;
use super::{Message, NotifyError};

/// Builds the email for `msg` from its rendered templates.
///
/// # Errors
/// [`NotifyError::Config`] when the campaign has no valid `delivery.from` (or its
/// `reply_to` is not a mailbox); [`NotifyError::Permanent`] when the recipient's
/// address cannot be written in a message.
pub fn build_email(msg: &Message, rendered: &Rendered) -> Result<lettre::Message, NotifyError> {
    let from: Mailbox = match msg.delivery.from.as_deref() {
        Some(f) => {
            f.parse().map_err(|e| NotifyError::config("delivery.from", format!("{f:?} is not a mailbox: {e}")))?
        }
        None => return Err(NotifyError::config("delivery.from", "the email channel needs a From address")),
    };
    let r = &msg.recipient;
    let address: lettre::Address = r
        .email
        .as_str()
        .parse()
        .map_err(|e| NotifyError::permanent(format!("the recipient address cannot be used in an email: {e}")))?;
    let name = [r.first_name.as_deref(), r.last_name.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let to = Mailbox::new((!name.is_empty()).then_some(name), address);

    // The Message-ID is ours (not the host name lettre would use) so that replies and
    // bounces can be matched. It names no user: a digest of what makes the message
    // this message.
    let digest = hex::encode(msg.identity());
    // with a VERP token, the Message-ID carries it too: the second key a bounce is
    // matched by, for the reports that keep the original headers but not the envelope
    let message_id = match &msg.bounce_token {
        Some(token) => format!("{}+{token}@{}", &digest[..32], from.email.domain()),
        None => format!("{}@{}", &digest[..32], from.email.domain()),
    };
    let envelope = envelope_for(msg, &to)?;
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(rendered.subject.clone())
        .date(SystemTime::now())
        .message_id(Some(format!("<{message_id}>")))
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Reverify-Step"), msg.step.to_string()))
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".to_owned()));
    if msg.delivery.trace_headers {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Reverify-Campaign"),
            msg.campaign.as_str().to_owned(),
        ));
    }
    if let Some(rt) = msg.delivery.reply_to.as_deref() {
        let mbox: Mailbox = rt
            .parse()
            .map_err(|e| NotifyError::config("delivery.reply_to", format!("{rt:?} is not a mailbox: {e}")))?;
        builder = builder.reply_to(mbox);
    }
    if let Some(envelope) = envelope {
        builder = builder.envelope(envelope);
    }
    builder
        .multipart(
            MultiPart::alternative()
                .boundary(format!("reverify-{}", &digest[32..56]))
                .singlepart(SinglePart::plain(rendered.text.to_string()))
                .singlepart(SinglePart::html(rendered.html.to_string())),
        )
        .map_err(|e| NotifyError::permanent(format!("the email cannot be built: {e}")))
}

/// The envelope of `msg` when its campaign has a `delivery.return_path` and the
/// message a VERP token: the sender is the return path with the token (every bounce
/// goes there), the recipient the message's one. `None`: lettre's default (From).
fn envelope_for(msg: &Message, to: &Mailbox) -> Result<Option<lettre::address::Envelope>, NotifyError> {
    let (Some(rp), Some(token)) = (msg.delivery.return_path.as_deref(), msg.bounce_token.as_deref()) else {
        return Ok(None);
    };
    let rp =
        crate::domain::bounce::ReturnPath::parse(rp).map_err(|m| NotifyError::config("delivery.return_path", m))?;
    let sender: lettre::Address = rp
        .address(token)
        .parse()
        .map_err(|e| NotifyError::config("delivery.return_path", format!("not an address with the token: {e}")))?;
    lettre::address::Envelope::new(Some(sender), vec![to.email.clone()])
        .map(Some)
        .map_err(|e| NotifyError::permanent(format!("the envelope cannot be built: {e}")))
}

/// The Message-ID of a built email, without angle brackets.
pub(crate) fn message_id_of(email: &lettre::Message) -> Option<String> {
    email.headers().get_raw("Message-ID").map(|v| v.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
}
