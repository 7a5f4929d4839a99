//! One message read from the bounce mailbox, turned into [`BounceReport`]s.
//!
//! - An RFC 3464 delivery status notification (`multipart/report;
//!   report-type=delivery-status`) gives one report per failed recipient: `Action:
//!   failed` with a 5.x.x `Status` is hard, with 4.x.x soft; `delayed`, `delivered`,
//!   `relayed` and `expanded` are not failures and give nothing. Without a usable
//!   `Status`, an explicit SMTP reply code in `Diagnostic-Code` (`smtp; 550 ...`)
//!   decides the class; otherwise the report is [`BounceKind::Unknown`].
//! - An RFC 5965 ARF report (`report-type=feedback-report`) is a complaint.
//! - A non-standard bounce (qmail, old Exim, ...) from a mailer daemon gives one
//!   report, hard or soft only when the text before the returned message carries an
//!   RFC 3463 code (`5.1.1`), else unknown. Nothing is guessed hard.
//! - Anything else (an auto-reply, a person's mail) gives no report.
//!
//! Each report names its message by, strongest first: the VERP token in the address
//! the bounce was sent to, the original message's Message-ID, the failed recipient.
//! Parsing never panics: any input is `Ok` or [`DsnError`].

use chrono::{DateTime, TimeZone, Utc};
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::domain::EmailAddress;
use crate::domain::bounce::{
    BounceKey, BounceKind, BounceReport, BounceSource, scrub_diagnostic, token_in_plus_address,
};

/// Why a message could not be read as a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// No header could be read: not an email.
    #[error("not an email message: no header could be read")]
    NotAMessage,
    /// The parser itself failed (a bug: it is meant never to panic).
    #[error("the MIME parser failed on this message")]
    ParserFailed,
    /// A `multipart/report` whose machine-readable part is missing or says nothing
    /// usable.
    #[error("a {report_type} report without its {part} part")]
    MissingPart {
        /// `delivery-status` or `feedback-report`.
        report_type: &'static str,
        /// What is missing.
        part: &'static str,
    },
}

/// The headers that name the address a bounce was delivered to (our VERP return
/// path), in the order they are tried.
const ADDRESSED_TO: [&str; 4] = ["Delivered-To", "X-Original-To", "Envelope-To", "To"];

/// Actions of RFC 3464 that are not failures.
const NOT_FAILURES: [&str; 4] = ["delayed", "delivered", "relayed", "expanded"];

/// The reports in one raw message (RFC 5322 bytes), none when it is not a bounce
/// or a complaint.
///
/// # Errors
/// [`DsnError`] when the bytes are not an email, or a report lacks its
/// machine-readable part.
pub fn parse_message(raw: &[u8]) -> Result<Vec<BounceReport>, DsnError> {
    let message = MessageParser::new().parse(raw).ok_or(DsnError::NotAMessage)?;
    if message.headers().is_empty() {
        return Err(DsnError::NotAMessage);
    }
    let envelope = Envelope::of(&message, raw);
    let report_type = report_type(&message);
    let drafts = match report_type.as_deref() {
        Some("delivery-status") => delivery_status(&message).or_else(|e| human_readable(&message, e))?,
        Some("feedback-report") => feedback(&message)?,
        _ if has_part(&message, is_delivery_status) => {
            delivery_status(&message).or_else(|e| human_readable(&message, e))?
        }
        _ if has_part(&message, is_feedback_report) => feedback(&message)?,
        _ if is_jmrp(&message) => jmrp(&message),
        _ if looks_like_bounce(&message) => vec![non_standard(&message)],
        _ => Vec::new(),
    };
    Ok(envelope.finish(drafts))
}

/// What a report carries before the message-wide keys and ids are added.
#[derive(Debug, Default)]
struct Draft {
    kind: Option<BounceKind>,
    status_code: Option<String>,
    diagnostic: Option<String>,
    recipient: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
    original: Original,
}

/// What the bounce says about the message that bounced.
#[derive(Debug, Default, Clone)]
struct Original {
    message_id: Option<String>,
    to: Vec<String>,
    return_path: Option<String>,
}

/// What the bounce's own headers say.
struct Envelope {
    dedupe_base: String,
    addressed_to: Vec<String>,
    date: Option<DateTime<Utc>>,
}

impl Envelope {
    fn of(message: &Message<'_>, raw: &[u8]) -> Self {
        let dedupe_base = message
            .message_id()
            .map(|id| strip_brackets(id).to_owned())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| hex::encode(Sha256::digest(raw)));
        let addressed_to = ADDRESSED_TO
            .iter()
            .flat_map(|name| raw_headers(message, name))
            .flat_map(|value| addresses_in(&value))
            .collect();
        let date = message.date().and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single());
        Self { dedupe_base, addressed_to, date }
    }

    /// The reports: keys strongest first, one dedupe id per report.
    fn finish(self, drafts: Vec<Draft>) -> Vec<BounceReport> {
        let many = drafts.len() > 1;
        drafts
            .into_iter()
            .enumerate()
            .filter_map(|(i, draft)| {
                let kind = draft.kind?;
                let dedupe_id = if many { format!("{}#{}", self.dedupe_base, i + 1) } else { self.dedupe_base.clone() };
                Some(BounceReport {
                    source: BounceSource::Mailbox,
                    dedupe_id,
                    keys: self.keys(&draft),
                    kind,
                    status_code: draft.status_code,
                    diagnostic: draft.diagnostic.map(|d| scrub_diagnostic(&d)).filter(|d| !d.is_empty()),
                    occurred_at: draft.occurred_at.or(self.date),
                })
            })
            .collect()
    }

    fn keys(&self, draft: &Draft) -> Vec<BounceKey> {
        let mut keys: Vec<BounceKey> = Vec::new();
        let mut push = |key: BounceKey| {
            if !keys.contains(&key) {
                keys.push(key);
            }
        };
        let tokens = self.addressed_to.iter().chain(draft.original.return_path.iter());
        for token in tokens.filter_map(|a| token_in_plus_address(a)) {
            push(BounceKey::Token(token.to_owned()));
        }
        if let Some(id) = &draft.original.message_id {
            push(BounceKey::MessageId(id.clone()));
        }
        let recipients = draft.recipient.iter().chain(draft.original.to.iter());
        if let Some(address) = recipients.filter_map(|a| EmailAddress::parse(a).ok()).next() {
            push(BounceKey::Address(address));
        }
        keys
    }
}

// ---------------------------------------------------------------- RFC 3464

fn delivery_status(message: &Message<'_>) -> Result<Vec<Draft>, DsnError> {
    let missing = DsnError::MissingPart { report_type: "delivery-status", part: "per-recipient status" };
    let groups = message
        .parts
        .iter()
        .find(|p| is_delivery_status(p))
        .map(|p| field_groups(&String::from_utf8_lossy(p.contents())))
        .or_else(|| text_status_groups(message))
        .ok_or(missing.clone())?;
    let per_message = groups.first().filter(|g| !is_recipient_group(g)).cloned().unwrap_or_default();
    let recipients: Vec<&Fields> = groups.iter().filter(|g| is_recipient_group(g)).collect();
    if recipients.is_empty() {
        return Err(missing);
    }
    let original = original_of(message);
    let arrival = per_message.get("arrival-date").and_then(parse_date);
    Ok(recipients.into_iter().map(|r| recipient_draft(r, arrival, &original)).collect())
}

/// A DSN whose fields came as plain text (a mislabelled part).
fn text_status_groups(message: &Message<'_>) -> Option<Vec<Fields>> {
    let text = first_text(message)?;
    let groups = field_groups(&text);
    groups.iter().any(is_recipient_group).then_some(groups)
}

fn is_recipient_group(fields: &Fields) -> bool {
    fields.get("final-recipient").is_some() || fields.get("original-recipient").is_some()
}

fn recipient_draft(fields: &Fields, arrival: Option<DateTime<Utc>>, original: &Original) -> Draft {
    let action = fields.get("action").map(|a| first_word(a).to_ascii_lowercase());
    let status_code = fields.get("status").and_then(enhanced_code);
    let diagnostic = fields.get("diagnostic-code").map(str::to_owned);
    let recipient = fields.get("final-recipient").or_else(|| fields.get("original-recipient")).map(address_field);
    let occurred_at = fields.get("last-attempt-date").and_then(parse_date).or(arrival);
    let kind = recipient_kind(action.as_deref(), status_code.as_deref(), diagnostic.as_deref());
    let status_code = status_code.or_else(|| diagnostic.as_deref().and_then(enhanced_code));
    Draft { kind, status_code, diagnostic, recipient, occurred_at, original: original.clone() }
}

/// The kind of one recipient's failure; `None` when it did not fail.
fn recipient_kind(action: Option<&str>, status: Option<&str>, diagnostic: Option<&str>) -> Option<BounceKind> {
    if action.is_some_and(|a| NOT_FAILURES.contains(&a)) {
        return None;
    }
    if let Some(status) = status {
        return match BounceKind::from_status_code(status) {
            // a 2.x.x status without a failed action: delivered after all
            BounceKind::Unknown if action != Some("failed") => None,
            kind => Some(kind),
        };
    }
    Some(diagnostic.and_then(reply_code_kind).unwrap_or(BounceKind::Unknown))
}

/// The class of an explicit SMTP reply code in a `Diagnostic-Code` (`smtp; 550
/// ...`), or of the enhanced code in it.
fn reply_code_kind(diagnostic: &str) -> Option<BounceKind> {
    let (kind, text) = diagnostic.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("smtp") {
        return None;
    }
    let text = text.trim_start();
    let code = text.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
    let after = text.as_bytes().get(3);
    if after.is_some_and(|b| !matches!(b, b' ' | b'-' | b'\t')) {
        return None;
    }
    match code.as_bytes()[0] {
        b'5' => Some(BounceKind::Hard),
        b'4' => Some(BounceKind::Soft),
        _ => None,
    }
}

// ---------------------------------------------------------------- RFC 5965

fn feedback(message: &Message<'_>) -> Result<Vec<Draft>, DsnError> {
    let part = message.parts.iter().find(|p| is_feedback_report(p));
    let text = match part {
        Some(p) => String::from_utf8_lossy(p.contents()).into_owned(),
        None => first_text(message)
            .filter(|t| t.to_ascii_lowercase().contains("feedback-type:"))
            .ok_or(DsnError::MissingPart { report_type: "feedback-report", part: "message/feedback-report" })?,
    };
    let fields: Fields = field_groups(&text).into_iter().flatten().collect();
    if fields.get("feedback-type").is_some_and(|t| first_word(t).eq_ignore_ascii_case("not-spam")) {
        return Ok(Vec::new());
    }
    let recipient = fields.get("original-rcpt-to").map(address_field);
    let occurred_at = fields.get("arrival-date").or_else(|| fields.get("received-date")).and_then(parse_date);
    let diagnostic = fields.get("feedback-type").map(|t| format!("feedback-type: {t}"));
    Ok(vec![Draft {
        kind: Some(BounceKind::Complaint),
        status_code: None,
        diagnostic,
        recipient,
        occurred_at,
        original: original_of(message),
    }])
}

// ---------------------------------------------------------------- the others

/// Markers of the start of the returned message in a non-standard bounce: the
/// status code that counts comes before.
const RETURNED_MESSAGE: [&str; 10] = [
    "below this line is a copy of the message",
    "message headers follow",
    "this is a copy of the message",
    "original message follows",
    "original message header",
    "unsent message below",
    "returned mail follows",
    "the headers of the message",
    "---------- original message",
    "content-type: message/rfc822",
];

/// Subjects of the bounces that do not follow RFC 3464.
const BOUNCE_SUBJECTS: [&str; 12] = [
    "undeliver",
    "undelivered",
    "delivery status",
    "delivery failure",
    "delivery failed",
    "failure notice",
    "returned mail",
    "mail delivery",
    "could not be delivered",
    "not delivered",
    "delivery has failed",
    "nondeliverable",
];

/// A delivery-status report whose machine-readable part says nothing usable, read
/// as a non-standard bounce; still `error` when the text names neither a status nor
/// a recipient.
fn human_readable(message: &Message<'_>, error: DsnError) -> Result<Vec<Draft>, DsnError> {
    let draft = non_standard(message);
    if draft.status_code.is_none() && draft.recipient.is_none() {
        return Err(error);
    }
    Ok(vec![draft])
}

/// What a mailer daemon's `From` says.
const DAEMONS: [&str; 4] = ["mailer-daemon", "mailerdaemon", "postmaster@", "<postmaster>"];

/// Subjects of auto-replies (vacation notices), which are no bounces.
const AUTO_REPLY_SUBJECTS: [&str; 4] = ["automatic reply", "auto-reply", "autoreply", "out of office"];

fn non_standard(message: &Message<'_>) -> Draft {
    let text = first_text(message).unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    let cut = RETURNED_MESSAGE.iter().filter_map(|m| lower.find(m)).min().unwrap_or(text.len());
    let (notice, returned) = text.split_at(floor_boundary(&text, cut));
    let line = notice.lines().find(|l| enhanced_code(l).is_some_and(|c| !c.starts_with('2')));
    let status_code = line.and_then(enhanced_code);
    let kind = status_code.as_deref().map_or(BounceKind::Unknown, BounceKind::from_status_code);
    let mut original = original_of(message);
    if original.message_id.is_none() {
        original.message_id = header_line(returned, "message-id").map(|v| strip_brackets(&v).to_owned());
    }
    Draft {
        kind: Some(kind),
        status_code,
        diagnostic: line.map(str::to_owned),
        recipient: raw_headers(message, "X-Failed-Recipients")
            .iter()
            .flat_map(|v| addresses_in(v))
            .next()
            .or_else(|| failed_recipient_in(notice)),
        occurred_at: None,
        original,
    }
}

/// Microsoft's complaint feedback (JMRP): the reported message attached whole, with
/// `X-HmXmrOriginalRecipient` naming who complained.
fn jmrp_recipient(message: &Message<'_>) -> Option<String> {
    message.parts.iter().find_map(|p| match &p.body {
        PartType::Message(inner) => raw_headers(inner, "X-HmXmrOriginalRecipient").into_iter().next(),
        _ => None,
    })
}

fn is_jmrp(message: &Message<'_>) -> bool {
    jmrp_recipient(message).is_some()
}

fn jmrp(message: &Message<'_>) -> Vec<Draft> {
    vec![Draft {
        kind: Some(BounceKind::Complaint),
        status_code: None,
        diagnostic: Some("feedback-type: abuse (jmrp)".to_owned()),
        recipient: jmrp_recipient(message).map(|r| address_field(&r)),
        occurred_at: None,
        original: original_of(message),
    }]
}

/// A mailer daemon's message: a null return path, `X-Failed-Recipients`, a daemon
/// sender, or a bounce's subject on a message that is not an auto-reply.
fn looks_like_bounce(message: &Message<'_>) -> bool {
    let from_daemon = raw_headers(message, "From").iter().any(|f| {
        let f = f.to_ascii_lowercase();
        DAEMONS.iter().any(|d| f.contains(d))
    });
    if from_daemon || !raw_headers(message, "X-Failed-Recipients").is_empty() {
        return true;
    }
    // a daemon's bounce may say `Auto-Submitted: auto-replied` too (Exim does), but
    // so does a person's vacation notice, which is no bounce even from a null sender
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    let auto_reply =
        raw_headers(message, "Auto-Submitted").iter().any(|v| v.to_ascii_lowercase().contains("auto-replied"))
            || AUTO_REPLY_SUBJECTS.iter().any(|s| subject.contains(s));
    if auto_reply {
        return false;
    }
    let null_sender = raw_headers(message, "Return-Path").iter().any(|v| v.trim() == "<>");
    null_sender || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
}

/// The first address a non-standard notice names as failed: qmail's `<a@b>:` line,
/// else the first address in angle brackets.
fn failed_recipient_in(notice: &str) -> Option<String> {
    let qmail = notice.lines().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('<')?.strip_suffix(">:")?;
        inner.contains('@').then(|| inner.to_owned())
    });
    qmail.or_else(|| notice.lines().flat_map(addresses_in).next())
}

// ---------------------------------------------------------------- parts

fn report_type(message: &Message<'_>) -> Option<String> {
    let ct = message.content_type()?;
    let is_report =
        ct.ctype().eq_ignore_ascii_case("multipart") && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"));
    is_report.then(|| ct.attribute("report-type").unwrap_or_default().trim().to_ascii_lowercase())
}

fn has_part(message: &Message<'_>, test: fn(&MessagePart<'_>) -> bool) -> bool {
    message.parts.iter().any(test)
}

fn is_type(part: &MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct.subtype().is_some_and(|s| subtypes.iter().any(|t| s.eq_ignore_ascii_case(t)))
    })
}

fn is_delivery_status(part: &MessagePart<'_>) -> bool {
    is_type(part, "message", &["delivery-status", "global-delivery-status"])
}

fn is_feedback_report(part: &MessagePart<'_>) -> bool {
    is_type(part, "message", &["feedback-report"])
}

/// The first `text/plain` part's text (the whole body of a single-part message).
fn first_text(message: &Message<'_>) -> Option<String> {
    message.body_text(0).map(|t| t.into_owned())
}

/// The original message, from a `message/rfc822` part or a `text/rfc822-headers`
/// part.
fn original_of(message: &Message<'_>) -> Original {
    for part in &message.parts {
        if let PartType::Message(inner) = &part.body {
            return original_in(inner);
        }
        if is_type(part, "text", &["rfc822-headers", "rfc822-header"])
            && let Some(inner) = MessageParser::new().parse_headers(part.contents())
        {
            return original_in(&inner);
        }
    }
    Original::default()
}

fn original_in(inner: &Message<'_>) -> Original {
    Original {
        message_id: inner.message_id().map(|id| strip_brackets(id).to_owned()).filter(|id| !id.is_empty()),
        to: inner.to().map(|a| a.iter().filter_map(|a| a.address()).map(str::to_owned).collect()).unwrap_or_default(),
        return_path: inner.return_address().map(str::to_owned),
    }
}

// ---------------------------------------------------------------- fields

/// Header-like fields (`Name: value`, folded lines joined), names in lower case,
/// in order.
#[derive(Debug, Default, Clone)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

impl FromIterator<(String, String)> for Fields {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl IntoIterator for Fields {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The blank-line separated groups of fields in a `message/delivery-status` body.
fn field_groups(text: &str) -> Vec<Fields> {
    let mut groups = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(Fields(std::mem::take(&mut current)));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        groups.push(Fields(current));
    }
    groups
}

/// The value of the first `name:` line in `text` (any case).
fn header_line(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(name) && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

/// Every value of header `name` on the message, raw.
fn raw_headers(message: &Message<'_>, name: &str) -> Vec<String> {
    message.headers_raw().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()).collect()
}

// ---------------------------------------------------------------- small values

/// The first RFC 3463 code (`5.1.1`) in `text`: class 2, 4 or 5, then one to three
/// digits, then one to three digits, not inside a longer dotted number.
fn enhanced_code(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len()).find_map(|start| {
        if !matches!(b[start], b'2' | b'4' | b'5')
            || start.checked_sub(1).is_some_and(|p| b[p].is_ascii_alphanumeric() || b[p] == b'.')
        {
            return None;
        }
        let end = dotted_end(b, start + 1)?;
        let end = dotted_end(b, end)?;
        let boundary = b
            .get(end)
            .is_none_or(|c| !(c.is_ascii_digit() || *c == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit)));
        boundary.then(|| text[start..end].to_owned())
    })
}

/// After `.` and one to three digits starting at `at`, the index past them.
fn dotted_end(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'.') {
        return None;
    }
    let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    (1..=3).contains(&digits).then_some(at + 1 + digits)
}

/// `rfc822; jane@example.com` → `jane@example.com`.
fn address_field(value: &str) -> String {
    let address = value.split_once(';').map_or(value, |(_, a)| a);
    strip_brackets(address.trim()).to_owned()
}

/// Every address-looking word in a header value or a line: `<a@b>` or a bare
/// `a@b`.
fn addresses_in(value: &str) -> Vec<String> {
    value
        .split([',', ' ', '\t', '(', ')', '"', ';'])
        .map(|w| strip_brackets(w.trim().trim_end_matches([':', '.', ','])))
        .filter(|w| w.contains('@') && !w.starts_with('@') && !w.ends_with('@'))
        .map(|w| w.rsplit('<').next().unwrap_or(w).to_owned())
        .collect()
}

fn strip_brackets(s: &str) -> &str {
    s.trim().trim_start_matches('<').trim_end_matches('>').trim()
}

fn first_word(s: &str) -> &str {
    s.split(|c: char| c.is_whitespace() || c == '(' || c == ';').next().unwrap_or_default()
}

/// An RFC 5322 date (`Arrival-Date`, `Last-Attempt-Date`), comments dropped.
fn parse_date(value: &str) -> Option<DateTime<Utc>> {
    let value = value.split('(').next().unwrap_or(value).trim();
    DateTime::parse_from_rfc2822(value).ok().map(|d| d.with_timezone(&Utc))
}

/// The largest char boundary at or before `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len())).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(status: &str, action: &str, diagnostic: &str) -> Vec<u8> {
        format!(
            "From: MAILER-DAEMON@mx.example.net\r\n\
             To: bounces+s1-0123456789abcdef@example.com\r\n\
             Message-ID: <dsn-1@mx.example.net>\r\n\
             Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n\
             Subject: Undelivered Mail\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
             --B\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n\
             --B\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; mx.example.net\r\n\
             Arrival-Date: Mon, 7 Dec 2026 09:59:00 +0000\r\n\r\n\
             Final-Recipient: rfc822; jane@example.org\r\n\
             Action: {action}\r\nStatus: {status}\r\nDiagnostic-Code: {diagnostic}\r\n\r\n\
             --B\r\nContent-Type: text/rfc822-headers\r\n\r\n\
             Message-ID: <orig-1@example.com>\r\nTo: jane@example.org\r\nSubject: hi\r\n\r\n\
             --B--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_permanent_failure_is_hard_with_every_key() {
        let reports = parse_message(&dsn("5.1.1", "failed", "smtp; 550 5.1.1 <jane@example.org> unknown")).unwrap();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.kind, BounceKind::Hard);
        assert_eq!(r.status_code.as_deref(), Some("5.1.1"));
        assert_eq!(r.dedupe_id, "dsn-1@mx.example.net");
        assert_eq!(
            r.keys,
            vec![
                BounceKey::Token("s1-0123456789abcdef".into()),
                BounceKey::MessageId("orig-1@example.com".into()),
                BounceKey::Address(EmailAddress::parse("jane@example.org").unwrap()),
            ]
        );
        assert_eq!(r.diagnostic.as_deref(), Some("smtp; 550 5.1.1 <address> unknown"));
        assert_eq!(r.occurred_at, Utc.with_ymd_and_hms(2026, 12, 7, 9, 59, 0).single());
    }

    #[test]
    fn the_status_class_and_action_decide() {
        let kind = |status: &str, action: &str, diag: &str| {
            parse_message(&dsn(status, action, diag)).unwrap().first().map(|r| r.kind)
        };
        assert_eq!(kind("4.2.2", "failed", "smtp; 452 full"), Some(BounceKind::Soft));
        assert_eq!(kind("4.4.7", "delayed", "smtp; 451 later"), None);
        assert_eq!(kind("2.0.0", "delivered", "smtp; 250 ok"), None);
        assert_eq!(kind("", "failed", "smtp; 550 no such user"), Some(BounceKind::Hard));
        assert_eq!(kind("", "failed", "smtp; 421 busy"), Some(BounceKind::Soft));
        assert_eq!(kind("", "failed", "x-unix; something"), Some(BounceKind::Unknown));
        assert_eq!(kind("unknown", "failed", "5500 words"), Some(BounceKind::Unknown));
    }

    #[test]
    fn a_report_without_recipients_is_an_error() {
        let raw = b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\n\
                    Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n--B--\r\n";
        assert!(matches!(parse_message(raw), Err(DsnError::MissingPart { .. })));
        assert_eq!(parse_message(b""), Err(DsnError::NotAMessage));
    }

    #[test]
    fn a_qmail_bounce_reads_its_code() {
        let raw = b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+s2-0123456789abcdef@example.com\r\n\
                    Subject: failure notice\r\n\r\nHi. This is the qmail-send program.\r\n\r\n\
                    <jane@example.org>:\r\nRemote host said: 550 5.1.1 no mailbox\r\n\r\n\
                    --- Below this line is a copy of the message.\r\n\r\nMessage-ID: <orig-2@example.com>\r\n\
                    X-Version: 4.2.1.0\r\n";
        let r = parse_message(raw).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, BounceKind::Hard);
        assert_eq!(r[0].status_code.as_deref(), Some("5.1.1"));
        assert!(r[0].keys.contains(&BounceKey::MessageId("orig-2@example.com".into())));
        assert!(r[0].keys.contains(&BounceKey::Address(EmailAddress::parse("jane@example.org").unwrap())));
        assert_eq!(r[0].dedupe_id.len(), 64, "a digest without a Message-ID");
    }

    #[test]
    fn mail_that_is_no_bounce_gives_nothing() {
        let raw = b"From: jane@example.org\r\nTo: bounces+x@example.com\r\nSubject: hello\r\n\r\n5.1.1 hi\r\n";
        assert_eq!(parse_message(raw).unwrap(), vec![]);
        let reply =
            b"From: jane@example.org\r\nAuto-Submitted: auto-replied\r\nSubject: Undeliverable: away\r\n\r\nbye\r\n";
        assert_eq!(parse_message(reply).unwrap(), vec![]);
    }

    #[test]
    fn enhanced_codes_are_found_alone() {
        assert_eq!(enhanced_code("550 5.1.1 unknown").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_code("#5.7.1 denied").as_deref(), Some("5.7.1"));
        assert_eq!(enhanced_code("version 15.1.1 and 4.2.1.0"), None);
        assert_eq!(enhanced_code("Lotus SMTP MTA v4.6.1"), None);
        assert_eq!(enhanced_code("4.2.22."), Some("4.2.22".into()));
        assert_eq!(enhanced_code("5.1"), None);
    }

    /// Every sample of sisimai's set-of-emails (BSD-2-Clause, vendored with its
    /// LICENSE): none panics, and most are read.
    #[test]
    fn the_real_world_corpus_is_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bounces/set-of-emails");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        let mut per_file = Vec::new();
        for path in &files {
            let raw = std::fs::read(path).unwrap();
            for cut in [raw.len() / 3, raw.len() / 2, raw.len() * 9 / 10] {
                let truncated = &raw[..cut];
                assert!(
                    std::panic::catch_unwind(|| parse_message(truncated)).is_ok(),
                    "{} cut at {cut} panicked",
                    path.display()
                );
            }
            let parsed = std::panic::catch_unwind(|| parse_message(&raw));
            let parsed = parsed.unwrap_or_else(|_| panic!("{} panicked", path.display()));
            let outcome = match &parsed {
                Err(_) => "error",
                Ok(r) if r.is_empty() => "no-report",
                Ok(r) => r[0].kind.as_str(),
            };
            *counts.entry(outcome).or_default() += 1;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("rfc3834-") {
                assert_eq!(outcome, "no-report", "{name} is an auto-reply");
            }
            for r in parsed.iter().flatten().filter(|r| r.kind == BounceKind::Hard) {
                let said = r.status_code.as_deref().is_some_and(|c| c.starts_with('5'))
                    || r.diagnostic.as_deref().and_then(reply_code_kind) == Some(BounceKind::Hard);
                assert!(said, "{name}: hard without a 5.x.x status or a 5xx reply: {r:?}");
            }
            let detail = match &parsed {
                Ok(r) if !r.is_empty() => format!("{:?}\t{:?}\t{:?}", r[0].status_code, r[0].keys, r[0].diagnostic),
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            };
            per_file.push(format!("{outcome}\t{}\t{detail}", path.file_name().unwrap().to_string_lossy()));
        }
        if let Ok(out) = std::env::var("REVERIFY_CORPUS_LIST") {
            std::fs::write(out, per_file.join("\n")).unwrap();
        }
        println!("{} samples: {counts:?}", files.len());
        let n = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert!(files.len() > 500, "the corpus is vendored");
        assert!(n("hard") + n("soft") > files.len() * 6 / 10, "most bounces classified: {counts:?}");
        assert!(n("complaint") >= 16, "the ARF samples are complaints: {counts:?}");
        assert!(n("error") <= files.len() / 50, "few errors: {counts:?}");
        assert!(n("no-report") <= files.len() / 10, "few ignored: {counts:?}");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_message(&bytes);
        }

        #[test]
        fn any_corrupted_sample_parses_without_panic(
            pick in proptest::num::usize::ANY,
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..32),
        ) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bounces/set-of-emails");
            let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
            files.sort();
            let mut raw = std::fs::read(&files[pick % files.len()]).unwrap();
            for (at, byte) in flips {
                let at = at % raw.len();
                raw[at] = byte;
            }
            let _ = parse_message(&raw);
        }

        #[test]
        fn any_cut_of_a_dsn_parses_without_panic(cut in 0usize..1200, junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut raw = dsn("5.1.1", "failed", "smtp; 550 5.1.1 no");
            raw.truncate(cut.min(raw.len()));
            raw.extend_from_slice(&junk);
            let _ = parse_message(&raw);
        }
    }
}
