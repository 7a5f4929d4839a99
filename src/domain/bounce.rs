//! What a bounce, a complaint or a provider's delivery event says about one message,
//! as every intake (provider webhooks, the DSN mailbox) reports it, and the VERP
//! token that lets an asynchronous bounce find its message without trusting the
//! bounce's headers.
//!
//! The intakes parse and authenticate; `store::bounces` decides what a report does
//! (a hard bounce makes the address undeliverable, three soft ones in 7 days count
//! as one hard, a complaint marks the user). Nothing here does I/O.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EmailAddress;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceKind {
    /// Permanent: 5.x.x, or the provider's "Permanent" / "HardBounce".
    Hard,
    /// Transient: 4.x.x, or the provider's "Transient" / "SoftBounce".
    Soft,
    /// The recipient reported the message as abuse (RFC 5965 ARF, a provider's
    /// complaint event).
    Complaint,
    /// A report that says neither: recorded, never guessed as hard.
    Unknown,
}

impl BounceKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceKind::Hard => "hard",
            BounceKind::Soft => "soft",
            BounceKind::Complaint => "complaint",
            BounceKind::Unknown => "unknown",
        }
    }

    /// Every kind, in the order listings use.
    pub const ALL: [BounceKind; 4] = [BounceKind::Hard, BounceKind::Soft, BounceKind::Complaint, BounceKind::Unknown];

    /// From an RFC 3463 enhanced status code (`5.1.1`, `4.2.2`): its class decides.
    pub fn from_status_code(code: &str) -> BounceKind {
        match code.trim().split('.').next() {
            Some("5") => BounceKind::Hard,
            Some("4") => BounceKind::Soft,
            _ => BounceKind::Unknown,
        }
    }
}

impl std::str::FromStr for BounceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BounceKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown bounce kind {s:?}"))
    }
}

/// Which intake a report came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceSource {
    /// Amazon SES through SNS (`POST /bounces/ses`).
    Ses,
    /// SendGrid's Event Webhook (`POST /bounces/sendgrid`).
    Sendgrid,
    /// Postmark's bounce webhook (`POST /bounces/postmark`).
    Postmark,
    /// A delivery status notification or ARF report read from `bounce_mailbox`.
    Mailbox,
}

impl BounceSource {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceSource::Ses => "ses",
            BounceSource::Sendgrid => "sendgrid",
            BounceSource::Postmark => "postmark",
            BounceSource::Mailbox => "mailbox",
        }
    }
}

/// How a report names the message it is about, strongest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BounceKey {
    /// A VERP token found in the address the bounce was sent to (our return path),
    /// or in the original message's Message-ID: checked with [`VerpKey::open`].
    Token(String),
    /// The original message's Message-ID, without angle brackets.
    MessageId(String),
    /// Only the recipient's address (Postmark; a DSN that kept nothing else): the
    /// latest message sent to it within 7 days.
    Address(EmailAddress),
}

/// One bounce, complaint or delivery event about one message, authenticated by its
/// intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReport {
    pub source: BounceSource,
    /// The same for the same event delivered twice (a provider's event id, SNS's
    /// `MessageId`, the DSN's own Message-ID or a digest of it): the store counts
    /// a report once per (source, dedupe id).
    pub dedupe_id: String,
    /// What names the message, tried in order.
    pub keys: Vec<BounceKey>,
    pub kind: BounceKind,
    /// The RFC 3463 status (`5.1.1`) when the report has one.
    pub status_code: Option<String>,
    /// The remote server's words (`550 5.1.1 user unknown`), scrubbed of addresses
    /// by [`scrub_diagnostic`] before it is stored.
    pub diagnostic: Option<String>,
    /// When it happened, as the report says (else when it arrived).
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The longest diagnostic kept.
pub const DIAGNOSTIC_MAX_CHARS: usize = 200;

/// `text` with every email address replaced by `<address>`, control characters
/// by spaces, runs of white space collapsed, cut at [`DIAGNOSTIC_MAX_CHARS`]: a
/// diagnostic names the failure, never the person.
pub fn scrub_diagnostic(text: &str) -> String {
    let mut out = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if let Some(at) = word.find('@') {
            // keep what wraps the address (`<`, `>`, `:`, `;`), drop the address
            let mut start = word[..at].rfind(['<', ':', '(', '"', '\'', '[']).map_or(0, |i| i + 1);
            let mut end = word[at..].find(['>', ')', ';', ',', '"', '\'', ']']).map_or(word.len(), |i| at + i);
            // `<jane@example.com>` becomes `<address>`, not `<<address>>`
            if start > 0 && word.as_bytes()[start - 1] == b'<' && word.as_bytes().get(end) == Some(&b'>') {
                start -= 1;
                end += 1;
            }
            out.push_str(&word[..start]);
            out.push_str("<address>");
            out.push_str(&word[end..]);
        } else {
            out.push_str(word);
        }
    }
    if out.chars().count() > DIAGNOSTIC_MAX_CHARS {
        out = out.chars().take(DIAGNOSTIC_MAX_CHARS - 1).collect();
        out.push('…');
    }
    out
}

/// The message a VERP token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRef {
    /// A ledger row (`verification_sessions.session_id`): a direct-mode message.
    Session(i64),
    /// A click-through link (`verification_links.link_id`): a click-mode message.
    Link(i64),
}

/// The key that makes and checks VERP tokens: a token is the message's ref and a
/// truncated HMAC-SHA256 of it, so a bounce for a token nobody made is refused
/// without a lookup, and no table holds the token.
///
/// `Debug` is redacted.
#[derive(Clone)]
pub struct VerpKey([u8; 32]);

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerpKey(<redacted>)")
    }
}

/// The MAC's length in hex digits (64 bits).
const MAC_HEX: usize = 16;

impl VerpKey {
    /// The VERP key derived from `secret` (the token key): HMAC-SHA256(secret,
    /// "reverify verp v1"), so it is never the key that seals tokens.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"reverify verp v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..MAC_HEX / 2])
    }

    /// The token for `message`: `s123-<16 hex>` or `l123-<16 hex>`, lower case, safe
    /// in an address's local part and in a Message-ID.
    pub fn token(&self, message: MessageRef) -> String {
        let body = match message {
            MessageRef::Session(id) => format!("s{id}"),
            MessageRef::Link(id) => format!("l{id}"),
        };
        let mac = self.mac(&body);
        format!("{body}-{mac}")
    }

    /// The message `token` stands for, when this key made it (compared in
    /// constant time; case-insensitive, as some relays fold the local part).
    pub fn open(&self, token: &str) -> Option<MessageRef> {
        let token = token.trim().to_ascii_lowercase();
        let (body, mac) = token.rsplit_once('-')?;
        if mac.len() != MAC_HEX {
            return None;
        }
        let given = hex::decode(mac).ok()?;
        let mut check = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        check.update(body.as_bytes());
        check.verify_truncated_left(&given).ok()?;
        let id: i64 = body.get(1..)?.parse().ok()?;
        if id <= 0 {
            return None;
        }
        match body.as_bytes()[0] {
            b's' => Some(MessageRef::Session(id)),
            b'l' => Some(MessageRef::Link(id)),
            _ => None,
        }
    }
}

/// A campaign's `delivery.return_path`: an address with `{token}` in its local part
/// (`bounces+{token}@example.com`), the envelope sender of every email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPath {
    prefix: String,
    suffix: String,
}

impl ReturnPath {
    /// Parses `bounces+{token}@example.com`.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let Some((local, _domain)) = s.rsplit_once('@') else {
            return Err(format!("{s:?} is not an address"));
        };
        if local.matches("{token}").count() != 1 {
            return Err(format!("{s:?} must have \"{{token}}\" once, before the '@'"));
        }
        let (prefix, suffix) = s.split_once("{token}").expect("counted once");
        let sample = format!("{prefix}s1-0123456789abcdef{suffix}");
        EmailAddress::parse(&sample).map_err(|e| format!("{s:?} does not make an address: {e}"))?;
        Ok(Self { prefix: prefix.to_owned(), suffix: suffix.to_owned() })
    }

    /// The envelope sender for `token`.
    pub fn address(&self, token: &str) -> String {
        format!("{}{token}{}", self.prefix, self.suffix)
    }

    /// The token in `address` when it is one of ours (the prefix and suffix compared
    /// without case).
    pub fn token_in<'a>(&self, address: &'a str) -> Option<&'a str> {
        let a = address.trim().trim_start_matches('<').trim_end_matches('>');
        if a.len() <= self.prefix.len() + self.suffix.len() {
            return None;
        }
        let (head, rest) = a.split_at_checked(self.prefix.len())?;
        let (token, tail) = rest.split_at_checked(rest.len() - self.suffix.len())?;
        (head.eq_ignore_ascii_case(&self.prefix) && tail.eq_ignore_ascii_case(&self.suffix)).then_some(token)
    }
}

/// The VERP token in any address whose local part has `+<token>` (the usual
/// `bounces+TOKEN@domain` form), whatever the prefix: a mailbox may receive bounces
/// for several campaigns' return paths.
pub fn token_in_plus_address(address: &str) -> Option<&str> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _) = a.rsplit_once('@')?;
    let (_, token) = local.rsplit_once('+')?;
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_under_its_key_only() {
        let key = VerpKey::derive(b"k1");
        for m in [MessageRef::Session(42), MessageRef::Link(7)] {
            let t = key.token(m);
            assert_eq!(key.open(&t), Some(m));
            assert_eq!(key.open(&t.to_ascii_uppercase()), Some(m));
            assert_eq!(VerpKey::derive(b"k2").open(&t), None);
        }
        let t = key.token(MessageRef::Session(42));
        let forged = t.replacen("s42", "s43", 1);
        assert_eq!(key.open(&forged), None);
        for bad in ["", "s42", "s42-", "x42-0123456789abcdef", "s-0123456789abcdef", "s0-0000000000000000"] {
            assert_eq!(key.open(bad), None, "{bad}");
        }
        assert!(!format!("{key:?}").contains("k1"));
    }

    #[test]
    fn a_return_path_carries_the_token() {
        let rp = ReturnPath::parse("bounces+{token}@example.com").unwrap();
        let a = rp.address("s1-abc");
        assert_eq!(a, "bounces+s1-abc@example.com");
        assert_eq!(rp.token_in(&a), Some("s1-abc"));
        assert_eq!(rp.token_in("<BOUNCES+s1-abc@Example.COM>"), Some("s1-abc"));
        assert_eq!(rp.token_in("other+s1-abc@example.com"), None);
        assert!(ReturnPath::parse("bounces@example.com").is_err());
        assert!(ReturnPath::parse("bounces+{token}{token}@example.com").is_err());
        assert!(ReturnPath::parse("bounces@{token}.example.com").is_err());
        assert_eq!(token_in_plus_address("bounces+s1-abc@example.com"), Some("s1-abc"));
        assert_eq!(token_in_plus_address("bounces@example.com"), None);
    }

    #[test]
    fn a_diagnostic_keeps_no_address() {
        let d = scrub_diagnostic("550 5.1.1 <jane.doe@example.com>: Recipient address rejected:\r\n  user unknown");
        assert_eq!(d, "550 5.1.1 <address>: Recipient address rejected: user unknown");
        assert!(!scrub_diagnostic("smtp; 550 no such user jane@example.com").contains("jane"));
        assert_eq!(scrub_diagnostic(&"x".repeat(500)).chars().count(), DIAGNOSTIC_MAX_CHARS);
    }

    #[test]
    fn the_status_class_decides() {
        assert_eq!(BounceKind::from_status_code("5.1.1"), BounceKind::Hard);
        assert_eq!(BounceKind::from_status_code("4.2.2"), BounceKind::Soft);
        assert_eq!(BounceKind::from_status_code("2.0.0"), BounceKind::Unknown);
        assert_eq!(BounceKind::from_status_code(""), BounceKind::Unknown);
    }
}
