//! Message templates: one directory per template under `templates_dir`, each with
//! `subject.txt`, `body.txt` and `body.html`, rendered with minijinja.
//!
//! Decisions:
//! - Every template is read and compiled once, at start, and then rendered against
//!   sample messages (first message and reminder, both regions, with and without a
//!   name): a syntax error *or* a misspelt variable stops the run before any session
//!   is opened, with the file and line. Undefined variables are errors (strict mode),
//!   never empty text.
//! - `.html` templates are HTML-escaped automatically; text templates are not.
//! - minijinja's debug information is switched off and its errors are turned into
//!   text here: with it on, an error would print the template's variables, the link
//!   among them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use zeroize::Zeroizing;

use crate::domain::spec::Delivery;
use crate::domain::{CampaignName, EmailAddress, Region, SessionUrl, UserId};

use super::error::scrub;
use super::{Message, Recipient};

/// The files every template directory holds.
pub const TEMPLATE_FILES: [&str; 3] = ["subject.txt", "body.txt", "body.html"];

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
        match self {
            TemplateError::Broken { location, message } => {
                TemplateError::Broken { location, message: scrub(&message, url) }
            }
            other => other,
        }
    }
}

/// A rendered message. It holds the link, so its `Debug` shows only sizes and its
/// text is wiped from memory when dropped.
pub struct Rendered {
    pub subject: String,
    pub text: Zeroizing<String>,
    pub html: Zeroizing<String>,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .field("text_len", &self.text.len())
            .field("html_len", &self.html.len())
            .finish()
    }
}

/// Every template under one directory, compiled.
pub struct Templates {
    env: Environment<'static>,
    dir: PathBuf,
    names: BTreeSet<String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").field("dir", &self.dir).field("names", &self.names).finish()
    }
}

impl Templates {
    /// Loads, compiles and checks every template directory under `dir`.
    ///
    /// # Errors
    /// [`TemplateError`] naming the directory or the file (and line) at fault: an
    /// unreadable directory, a missing file, a syntax error, a variable that does not
    /// exist.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let dir_name = dir.display().to_string();
        let entries =
            std::fs::read_dir(dir).map_err(|e| TemplateError::Dir { dir: dir_name.clone(), message: e.to_string() })?;
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TemplateError::Dir { dir: dir_name.clone(), message: e.to_string() })?;
            if entry.path().is_dir() {
                subdirs.push(entry.path());
            }
        }
        subdirs.sort();
        let mut sources = Vec::new();
        for sub in subdirs {
            let Some(name) = sub.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            if name.starts_with('.') {
                continue;
            }
            for file in TEMPLATE_FILES {
                let path = sub.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::File {
                    file: path.display().to_string(),
                    message: if e.kind() == std::io::ErrorKind::NotFound {
                        "missing: a template directory needs subject.txt, body.txt and body.html".to_owned()
                    } else {
                        format!("cannot read: {e}")
                    },
                })?;
                sources.push((format!("{name}/{file}"), text));
            }
        }
        Self::from_sources(dir, sources)
    }

    /// The templates shipped in `jobs/templates/`, compiled into the binary: used
    /// when the default `templates_dir` does not exist (an installed binary run
    /// outside the repository).
    ///
    /// # Errors
    /// Never for the shipped files; a test compiles them.
    pub fn builtin() -> Result<Self, TemplateError> {
        macro_rules! shipped {
            ($($name:literal),*) => {
                vec![$(
                    (format!("{}/subject.txt", $name), include_str!(concat!("../../jobs/templates/", $name, "/subject.txt")).to_owned()),
                    (format!("{}/body.txt", $name), include_str!(concat!("../../jobs/templates/", $name, "/body.txt")).to_owned()),
                    (format!("{}/body.html", $name), include_str!(concat!("../../jobs/templates/", $name, "/body.html")).to_owned()),
                )*]
            };
        }
        Self::from_sources(Path::new("(built-in templates)"), shipped!("default", "reminder"))
    }

    /// Compiles templates given as (`NAME/FILE`, source) pairs; `dir` is used in errors.
    ///
    /// # Errors
    /// As [`Templates::load`].
    pub fn from_sources(dir: &Path, sources: Vec<(String, String)>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(false);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let mut names = BTreeSet::new();
        for (key, text) in sources {
            if let Some((name, _)) = key.split_once('/') {
                names.insert(name.to_owned());
            }
            env.add_template_owned(key, text).map_err(|e| broken(dir, &e))?;
        }
        let templates = Self { env, dir: dir.to_path_buf(), names };
        templates.check_all()?;
        Ok(templates)
    }

    /// The directory the templates came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template names found, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The files of template `name` as loaded (`subject.txt`, `body.txt`,
    /// `body.html`, in that order), or `None` when there is no such template.
    pub fn sources(&self, name: &str) -> Option<Vec<(&'static str, String)>> {
        if !self.names.contains(name) {
            return None;
        }
        TEMPLATE_FILES
            .iter()
            .map(|file| {
                let tpl = self.env.get_template(&format!("{name}/{file}")).ok()?;
                Some((*file, tpl.source().to_owned()))
            })
            .collect()
    }

    /// The template's version: lower-case hex SHA-256 of [`template_digest`] over
    /// its files, or `None` when there is no such template.
    pub fn digest(&self, name: &str) -> Option<String> {
        self.sources(name).map(|files| template_digest(&files))
    }

    /// Fails when there is no template called `name`.
    ///
    /// # Errors
    /// [`TemplateError::Unknown`], listing the templates there are.
    pub fn require(&self, name: &str) -> Result<(), TemplateError> {
        if self.names.contains(name) {
            return Ok(());
        }
        Err(TemplateError::Unknown {
            name: name.to_owned(),
            dir: self.dir.display().to_string(),
            available: if self.names.is_empty() {
                "none".to_owned()
            } else {
                self.names.iter().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// Renders the message's template (`msg.delivery.template`). The campaign's
    /// `delivery.subject`, when set, replaces the template's subject.
    ///
    /// # Errors
    /// [`TemplateError`] naming the template file and line; its text never holds the URL.
    pub fn render(&self, msg: &Message) -> Result<Rendered, TemplateError> {
        let name = &msg.delivery.template;
        self.require(name)?;
        let ctx = context_of(msg);
        let render = |file: &str| -> Result<String, TemplateError> {
            let tpl = self.env.get_template(&format!("{name}/{file}")).map_err(|e| broken(&self.dir, &e))?;
            tpl.render(&ctx).map_err(|e| broken(&self.dir, &e).scrubbed(&msg.session_url))
        };
        let subject = match msg.delivery.subject.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => one_line(s),
            None => one_line(&render("subject.txt")?),
        };
        if subject.is_empty() {
            return Err(TemplateError::Broken {
                location: self.dir.join(name).join("subject.txt").display().to_string(),
                message: "renders an empty subject".to_owned(),
            });
        }
        let text = Zeroizing::new(render("body.txt")?);
        let html = Zeroizing::new(render("body.html")?);
        Ok(Rendered { subject, text, html })
    }

    /// Renders every template against sample messages, so that a misspelt variable
    /// fails at start rather than on the first real user.
    fn check_all(&self) -> Result<(), TemplateError> {
        for name in &self.names {
            for (step, region, named) in [(0, Region::Intl, true), (1, Region::Us, false), (2, Region::Intl, false)] {
                let sample = sample_message(name, step, region, named);
                self.render(&sample).map_err(|e| match e {
                    TemplateError::Broken { location, message } => TemplateError::Broken {
                        location,
                        message: format!("{message} (checked with a sample message)"),
                    },
                    other => other,
                })?;
            }
        }
        Ok(())
    }
}

/// A template's version, from its files (as `(file, text)` pairs): lower-case hex
/// SHA-256 of, for each file in order, its name, a NUL, its length in bytes as
/// decimal, a NUL and its text. Anyone holding the files can recompute it.
pub fn template_digest(files: &[(&str, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (file, text) in files {
        h.update(file.as_bytes());
        h.update([0]);
        h.update(text.len().to_string().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A subject is one line: newlines and runs of white space become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A minijinja error as text: `DIR/NAME/FILE:LINE: kind: detail`.
fn broken(dir: &Path, e: &minijinja::Error) -> TemplateError {
    let file = e.name().map_or_else(|| dir.display().to_string(), |n| dir.join(n).display().to_string());
    let location = match e.line() {
        Some(line) => format!("{file}:{line}"),
        None => file,
    };
    let message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError::Broken { location, message }
}

/// How long a region's review usually takes (baanx-api.md: automated checks take
/// minutes, manual review up to 30 minutes, the US backend up to 60).
pub fn processing_time(region: Region) -> &'static str {
    match region {
        Region::Intl => "5 to 30 minutes",
        Region::Us => "up to 60 minutes",
    }
}

/// The user's zone, or UTC when it is missing or unknown.
pub(crate) fn zone_of(r: &Recipient) -> Tz {
    r.time_zone.as_deref().and_then(|z| z.trim().parse::<Tz>().ok()).unwrap_or(Tz::UTC)
}

/// `Friday 27 November 2026, 09:30 GMT`: readable, with the zone's abbreviation.
pub fn format_expiry(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz).format("%A %-d %B %Y, %H:%M %Z").to_string()
}

/// The variables every template sees. The README's template section lists them.
fn context_of(msg: &Message) -> Value {
    let r = &msg.recipient;
    let tz = zone_of(r);
    let first_name = r.first_name.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let last_name = r.last_name.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let full_name = match (first_name, last_name) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(f), None) => Some(f.to_owned()),
        (None, Some(l)) => Some(l.to_owned()),
        (None, None) => None,
    };
    context! {
        first_name => first_name,
        last_name => last_name,
        full_name => full_name,
        email => r.email.as_str(),
        locale => r.locale.as_deref(),
        region => r.region.as_str(),
        link => msg.session_url.expose(),
        // `click`: our own page, usable again until the expiry; `direct`: the Baanx
        // session itself, single use
        link_mode => msg.delivery.link.as_str(),
        link_reusable => msg.delivery.link == crate::domain::spec::LinkMode::Click,
        expires_at => format_expiry(msg.expires_at, tz),
        expires_at_iso => msg.expires_at.with_timezone(&tz).to_rfc3339(),
        time_zone => tz.name(),
        processing_time => processing_time(r.region),
        campaign => msg.campaign.as_str(),
        step => msg.step,
        is_reminder => msg.step > 0,
        reply_to => msg.delivery.reply_to.as_deref(),
    }
}

/// A made-up message for checking templates at load time.
fn sample_message(template: &str, step: u32, region: Region, named: bool) -> Message {
    Message {
        recipient: Recipient {
            user_id: UserId::parse("00000000-0000-4000-8000-000000000000").expect("valid sample id"),
            email: EmailAddress::parse("sample.user@example.com").expect("valid sample email"),
            first_name: named.then(|| "Sample".to_owned()),
            last_name: named.then(|| "User".to_owned()),
            locale: named.then(|| "en-GB".to_owned()),
            time_zone: named.then(|| "Europe/London".to_owned()),
            region,
        },
        session_url: SessionUrl::new("https://verify.example.invalid/sample".to_owned()),
        expires_at: DateTime::from_timestamp(1_800_000_000, 0).expect("valid sample time"),
        campaign: CampaignName::parse("sample").expect("valid sample name"),
        step,
        delivery: Delivery {
            channel: Default::default(),
            template: template.to_owned(),
            from: None,
            reply_to: named.then(|| "Support <support@example.com>".to_owned()),
            subject: None,
            webhook_url: None,
            ..Delivery::default()
        },
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A sample message for tests elsewhere in the module.
    pub(crate) fn sample() -> super::Message {
        super::sample_message("default", 0, super::Region::Intl, true)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_builtin_templates_match_the_shipped_ones() {
        let built = Templates::builtin().unwrap();
        let shipped = Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates")).unwrap();
        assert_eq!(built.names().collect::<Vec<_>>(), shipped.names().collect::<Vec<_>>());
        assert!(built.require("default").is_ok() && built.require("reminder").is_ok());
    }
    use super::*;

    fn sources(subject: &str, text: &str, html: &str) -> Vec<(String, String)> {
        vec![
            ("t/subject.txt".into(), subject.into()),
            ("t/body.txt".into(), text.into()),
            ("t/body.html".into(), html.into()),
        ]
    }

    #[test]
    fn expiry_is_in_the_users_zone_with_abbreviation() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T09:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_expiry(at, Tz::Europe__London), "Friday 27 November 2026, 09:30 GMT");
        assert_eq!(format_expiry(at, Tz::America__New_York), "Friday 27 November 2026, 04:30 EST");
        let summer = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_expiry(summer, Tz::Europe__Berlin), "Wednesday 1 July 2026, 14:00 CEST");
    }

    #[test]
    fn undefined_variable_fails_at_load_with_file_and_line() {
        let err = Templates::from_sources(Path::new("tpl"), sources("Hi", "line one\n{{ frist_name }}\n", "<p>x</p>"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("tpl/t/body.txt:2: undefined value"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err =
            Templates::from_sources(Path::new("tpl"), sources("Hi", "ok", "<p>\n\n{% if link %}</p>")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("tpl/t/body.html:3: syntax error"), "{msg}");
    }

    #[test]
    fn html_is_escaped_text_is_not_and_subject_is_one_line() {
        let t = Templates::from_sources(
            Path::new("tpl"),
            sources(
                "Hello\n  {{ first_name }} ",
                "{{ first_name }} {{ link }}",
                "<p>{{ first_name }} <a href=\"{{ link }}\">go</a></p>",
            ),
        )
        .unwrap();
        let mut m = sample_message("t", 0, Region::Intl, true);
        m.recipient.first_name = Some("<b>Ann</b>".into());
        m.session_url = SessionUrl::new("https://v.example/s?a=1&b=2".into());
        let r = t.render(&m).unwrap();
        assert_eq!(r.subject, "Hello <b>Ann</b>");
        assert_eq!(r.text.as_str(), "<b>Ann</b> https://v.example/s?a=1&b=2");
        assert!(r.html.contains("&lt;b&gt;Ann&lt;&#x2f;b&gt;"), "{}", r.html.as_str());
        assert!(r.html.contains("a=1&amp;b=2"), "{}", r.html.as_str());
        assert!(!format!("{r:?}").contains("v.example"));
        m.delivery.subject = Some("Campaign subject".into());
        assert_eq!(t.render(&m).unwrap().subject, "Campaign subject");
    }

    #[test]
    fn unknown_template_lists_what_exists() {
        let t = Templates::from_sources(Path::new("tpl"), sources("s", "b", "h")).unwrap();
        let e = t.require("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("found: t"), "{e}");
    }

    #[test]
    fn the_shipped_templates_load_and_carry_what_users_need() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates");
        let t = Templates::load(&dir).unwrap();
        t.require("default").unwrap();
        t.require("reminder").unwrap();
        let mut m = sample_message("default", 0, Region::Us, true);
        m.recipient.time_zone = Some("America/Chicago".into());
        let r = t.render(&m).unwrap();
        // minijinja's HTML escaping also escapes '/', which browsers undo in an href
        let html_link = "https:&#x2f;&#x2f;verify.example.invalid&#x2f;sample";
        for (part, link) in [(r.text.as_str(), "https://verify.example.invalid/sample"), (r.html.as_str(), html_link)] {
            assert!(part.contains("Sample"), "{part}");
            assert!(part.contains(link), "{part}");
            assert!(part.contains("CST"), "{part}");
            assert!(part.contains("up to 60 minutes"), "{part}");
            assert!(part.contains("passport"), "{part}");
        }
        m.step = 1;
        m.delivery.template = "reminder".into();
        m.recipient.region = Region::Intl;
        let r = t.render(&m).unwrap();
        assert!(r.subject.to_lowercase().contains("reminder"), "{}", r.subject);
        assert!(r.text.contains("5 to 30 minutes"));
    }
}
