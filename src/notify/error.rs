//! The errors of the `notify` layer ([`NotifyError`], and the [`TemplateError`] it
//! wraps), and the classification every caller relies on: transient (retry while the URL is in memory), permanent (record
//! `delivery_failed`) or ambiguous (the message may have arrived: record
//! `delivery_unknown`, never send it again on its own).
//!
//! Errors keep their causes as text, never as a `source` object: a lower layer's
//! error (minijinja's debug dump, a server's echo) could carry the URL, so every
//! message is built here and scrubbed with [`NotifyError::scrubbed`].

use std::time::Duration;

use crate::domain::SessionUrl;

/// Why a message was not delivered, or a notifier not set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: a 4xx SMTP reply, a refused or dropped connection, a
    /// timeout, an HTTP 408/429/5xx.
    #[error("transient delivery failure: {reason}")]
    Transient {
        reason: String,
        /// The other side asked for this pause (HTTP `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// No retry will help: a 5xx SMTP reply, an HTTP 4xx, an address the message
    /// cannot be built for.
    #[error("permanent delivery failure: {reason}")]
    Permanent { reason: String },
    /// The message may have arrived: the whole message went out but no answer
    /// came back (an SMTP connection dropped, reset or timed out after the message
    /// data was sent). Neither retried nor resent: a second message could be a
    /// duplicate. Recorded upstream as `delivery_unknown`.
    #[error("delivery outcome unknown: {reason}")]
    Ambiguous { reason: String },
    /// A template is missing or broken, or failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A setting is wrong or missing; names the key.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
}

impl NotifyError {
    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        NotifyError::Transient { reason: reason.into(), retry_after: None }
    }

    pub(crate) fn permanent(reason: impl Into<String>) -> Self {
        NotifyError::Permanent { reason: reason.into() }
    }

    pub(crate) fn ambiguous(reason: impl Into<String>) -> Self {
        NotifyError::Ambiguous { reason: reason.into() }
    }

    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        NotifyError::Config { key: key.to_owned(), message: message.into() }
    }

    /// True when a later attempt with the same message may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, NotifyError::Transient { .. })
    }

    /// True when the message may have been delivered although sending it failed:
    /// it must not be retried or resent automatically.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, NotifyError::Ambiguous { .. })
    }

    /// True when the set-up is wrong (a template, a setting, the SMTP server's
    /// credentials or certificate): every message would fail alike, so the run should
    /// stop rather than spend a session on each user.
    pub fn is_setup(&self) -> bool {
        matches!(self, NotifyError::Template(_) | NotifyError::Config { .. })
    }

    /// The reason to record (for `delivery_failed`, `delivery_unknown` and the audit
    /// trail): short, and never containing the URL.
    pub fn reason(&self) -> String {
        match self {
            NotifyError::Transient { reason, .. }
            | NotifyError::Permanent { reason }
            | NotifyError::Ambiguous { reason } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The same error with every occurrence of the URL (and of its query-less
    /// prefix, which alone may identify the session) replaced.
    pub(crate) fn scrubbed(self, url: &SessionUrl) -> Self {
        self.map_text(|s| scrub(&s, url))
    }

    /// The same error without the recipient's address, any other address, or the
    /// recipient's names ([`crate::domain::personal::scrub_person`]): an SMTP reply
    /// that quotes the recipient must not reach a log, a run's error or an event.
    pub(crate) fn without_person(self, r: &super::Recipient) -> Self {
        let names: Vec<&str> = [r.first_name.as_deref(), r.last_name.as_deref()].into_iter().flatten().collect();
        self.map_text(|s| crate::domain::personal::scrub_person(&s, r.email.as_str(), &names))
    }

    fn map_text(self, clean: impl Fn(String) -> String) -> Self {
        match self {
            NotifyError::Transient { reason, retry_after } => {
                NotifyError::Transient { reason: clean(reason), retry_after }
            }
            NotifyError::Permanent { reason } => NotifyError::Permanent { reason: clean(reason) },
            NotifyError::Ambiguous { reason } => NotifyError::Ambiguous { reason: clean(reason) },
            NotifyError::Template(t) => NotifyError::Template(t.map_text(clean)),
            NotifyError::Config { key, message } => NotifyError::Config { key, message: clean(message) },
        }
    }
}

/// A template that could not be loaded or rendered. Names the file, and the line
/// when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{dir}: cannot read the templates directory: {message}")]
    Dir { dir: String, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{location}: {message}")]
    Broken {
        /// `path/to/file:line`, or the path alone.
        location: String,
        message: String,
    },
    #[error("template {name:?} is not in {dir} (found: {available})")]
    Unknown { name: String, dir: String, available: String },
}

impl TemplateError {
    pub(crate) fn scrubbed(self, url: &SessionUrl) -> Self {
        self.map_text(|m| scrub(&m, url))
    }

    fn map_text(self, clean: impl Fn(String) -> String) -> Self {
        match self {
            TemplateError::Broken { location, message } => TemplateError::Broken { location, message: clean(message) },
            other => other,
        }
    }
}

/// `text` with the session URL (and its path without the query) blanked out.
fn scrub(text: &str, url: &SessionUrl) -> String {
    let full = url.expose();
    let mut out = if full.is_empty() { text.to_owned() } else { text.replace(full, "[REDACTED]") };
    if let Some((prefix, _)) = full.split_once('?')
        && prefix.len() > "https://".len() + 8
    {
        out = out.replace(prefix, "[REDACTED]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_url_and_its_path() {
        let u = SessionUrl::new("https://verify.example/s/abc123?t=zzz".into());
        let e = NotifyError::permanent(
            "550 rejected https://verify.example/s/abc123?t=zzz and https://verify.example/s/abc123",
        )
        .scrubbed(&u);
        assert!(!e.to_string().contains("abc123"), "{e}");
        assert!(!e.reason().contains("zzz"));
        assert!(!e.is_transient());
        assert!(NotifyError::transient("x").is_transient());
        let e = NotifyError::ambiguous("no reply to https://verify.example/s/abc123?t=zzz").scrubbed(&u);
        assert!(e.is_ambiguous() && !e.is_transient() && !e.is_setup(), "{e}");
        assert!(!e.reason().contains("abc123"), "{e}");
    }
}
