//! Message templates: one directory per template under `templates_dir`, one
//! directory per locale in it, each with `subject.txt`, `body.txt` and `body.html`,
//! rendered with minijinja.
//!
//! Decisions:
//! - A user gets the first locale of their chain that the template has: their exact
//!   tag, its language, the campaign's `delivery.default_locale`
//!   ([`crate::domain::locale::fallback_chain`]). The `lang` attribute and every date
//!   follow the locale actually used, so a Dutch user given the English text gets
//!   `lang="en"` and English month names.
//! - The plain-text part is wrapped at 76 columns after rendering (names and dates
//!   make lines longer than their template), never inside a word or a link.
//! - Every template is read and compiled once, at start, and then rendered against
//!   sample messages (first message and reminder, both regions, with and without a
//!   name): a syntax error *or* a misspelt variable stops the run before any session
//!   is opened, with the file and line. Undefined variables are errors (strict mode),
//!   never empty text.
//! - `.html` templates are HTML-escaped automatically; text templates are not.
//! - minijinja's debug information is switched off and its errors are turned into
//!   text here: with it on, an error would print the template's variables, the link
//!   among them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use zeroize::Zeroizing;

use crate::domain::locale::Lang;
use crate::domain::spec::{Brand, Delivery};
use crate::domain::{CampaignName, EmailAddress, Locale, Region, SessionUrl, TimeZone, UserId, VerificationState};

use super::error::TemplateError;
use super::{Message, Recipient};

/// The files every template directory holds.
pub const TEMPLATE_FILES: [&str; 3] = ["subject.txt", "body.txt", "body.html"];

/// A rendered message. It holds the link, so its `Debug` shows only sizes and its
/// text is wiped from memory when dropped.
pub struct Rendered {
    pub subject: String,
    pub text: Zeroizing<String>,
    pub html: Zeroizing<String>,
    /// The template locale used (`de`), and how it was chosen.
    pub locale: String,
    pub matched: LocaleMatch,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .field("text_len", &self.text.len())
            .field("html_len", &self.html.len())
            .field("locale", &self.locale)
            .finish()
    }
}

/// Every template under one directory, compiled: each name in one or more locales.
pub struct Templates {
    env: Environment<'static>,
    dir: PathBuf,
    /// name → its locales (normalized tags)
    locales: BTreeMap<String, BTreeSet<String>>,
    /// Templates written in the layout before issue 17 (`NAME/FILE`), read as `en`.
    flat: BTreeSet<String>,
    /// name → its version ([`template_digest`] over every locale's files): the
    /// templates never change once loaded, so each delivery's record reads it here.
    digests: BTreeMap<String, String>,
    /// The settings' `[brand]`, under each campaign's own.
    brand: Option<Brand>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").field("dir", &self.dir).field("locales", &self.locales).finish()
    }
}

/// The locale a message was rendered in, and how it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocaleMatch {
    /// The user's exact locale, or their language's own directory when it is
    /// written for the user's region (`pt-PT` → `pt`, see
    /// [`crate::domain::locale::home_region`]).
    Exact,
    /// The regional variant of the user's region (`es-MX` → `es-419`).
    Regional,
    /// The language of the user's locale (`de-AT` → `de`, `pt-BR` → `pt`).
    Language,
    /// The campaign's `delivery.default_locale`: nothing nearer exists.
    Default,
}

impl LocaleMatch {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LocaleMatch::Exact => "exact",
            LocaleMatch::Regional => "regional",
            LocaleMatch::Language => "language",
            LocaleMatch::Default => "default",
        }
    }
}

/// The locales the shipped templates are written in: each language for its home
/// region ([`crate::domain::locale::home_region`]), and three regional variants.
pub const SHIPPED_LOCALES: [&str; 10] = ["en", "en-US", "de", "fr", "es", "es-419", "it", "nl", "pt", "pt-BR"];

impl Templates {
    /// Loads, compiles and checks every template under `dir`: `NAME/LOCALE/FILE`,
    /// or `NAME/FILE` (the layout before locales, read as the `en` version).
    ///
    /// # Errors
    /// [`TemplateError`] naming the directory or the file (and line) at fault: an
    /// unreadable directory, a missing file, a syntax error, a variable that does not
    /// exist, a locale version that leaves out a variable another one uses.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let mut sources = Vec::new();
        for (name, sub) in subdirs(dir)? {
            if TEMPLATE_FILES.iter().any(|f| sub.join(f).exists()) {
                for file in TEMPLATE_FILES {
                    sources.push((format!("{name}/{file}"), read_template(&sub.join(file))?));
                }
                continue;
            }
            let locales = subdirs(&sub)?;
            if locales.is_empty() {
                return Err(TemplateError::File {
                    file: sub.display().to_string(),
                    message: "empty: a template has a directory per locale (en/, de/, …) holding subject.txt, \
                              body.txt and body.html"
                        .to_owned(),
                });
            }
            for (locale, path) in locales {
                if crate::domain::locale::normalize(&locale).as_deref() != Some(locale.as_str()) {
                    return Err(TemplateError::File {
                        file: path.display().to_string(),
                        message: "not a locale directory: name it by a locale tag such as en, de or pt-BR".to_owned(),
                    });
                }
                for file in TEMPLATE_FILES {
                    sources.push((format!("{name}/{locale}/{file}"), read_template(&path.join(file))?));
                }
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
        macro_rules! one {
            ($v:ident, $name:literal, $($locale:literal),*) => {$(
                for (file, text) in [
                    ("subject.txt", include_str!(concat!("../../jobs/templates/", $name, "/", $locale, "/subject.txt"))),
                    ("body.txt", include_str!(concat!("../../jobs/templates/", $name, "/", $locale, "/body.txt"))),
                    ("body.html", include_str!(concat!("../../jobs/templates/", $name, "/", $locale, "/body.html"))),
                ] {
                    $v.push((format!("{}/{}/{file}", $name, $locale), text.to_owned()));
                }
            )*};
        }
        let mut v = Vec::new();
        one!(v, "default", "en", "en-US", "de", "fr", "es", "es-419", "it", "nl", "pt", "pt-BR");
        one!(v, "reminder", "en", "en-US", "de", "fr", "es", "es-419", "it", "nl", "pt", "pt-BR");
        Self::from_sources(Path::new("(built-in templates)"), v)
    }

    /// Compiles templates given as (`NAME/LOCALE/FILE`, source) pairs (or `NAME/FILE`,
    /// read as the `en` version); `dir` is used in errors.
    ///
    /// # Errors
    /// As [`Templates::load`].
    pub fn from_sources(dir: &Path, sources: Vec<(String, String)>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(false);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // minijinja's HTML escaping writes `/` as `&#x2f;` (a habit for attribute
        // values without quotes); mail filters read escaped slashes in an href as
        // obfuscation. Every attribute in a template is quoted, so `&`, `<`, `>`,
        // `"` and `'` are what needs escaping.
        env.set_formatter(|out, state, value| {
            if matches!(state.auto_escape(), minijinja::AutoEscape::Html)
                && !value.is_safe()
                && let Some(s) = value.as_str()
            {
                return out.write_str(&escape_html(s)).map_err(minijinja::Error::from);
            }
            minijinja::escape_formatter(out, state, value)
        });
        let mut locales: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut flat = BTreeSet::new();
        let mut keys = Vec::new();
        for (key, text) in sources {
            let parts: Vec<&str> = key.split('/').collect();
            let (name, locale, file) = match parts.as_slice() {
                [name, file] => {
                    flat.insert((*name).to_owned());
                    ((*name).to_owned(), "en".to_owned(), (*file).to_owned())
                }
                [name, locale, file] => ((*name).to_owned(), (*locale).to_owned(), (*file).to_owned()),
                _ => {
                    return Err(TemplateError::File {
                        file: dir.join(&key).display().to_string(),
                        message: "not NAME/LOCALE/FILE".to_owned(),
                    });
                }
            };
            locales.entry(name.clone()).or_default().insert(locale.clone());
            keys.push(format!("{name}/{locale}/{file}"));
            env.add_template_owned(format!("{name}/{locale}/{file}"), text).map_err(|e| broken_in(dir, &flat, &e))?;
        }
        let mut templates = Self { env, dir: dir.to_path_buf(), locales, flat, digests: BTreeMap::new(), brand: None };
        for key in &keys {
            // a locale version with one file but not the others
            let (name, rest) = key.split_once('/').unwrap_or((key, ""));
            let locale = rest.split('/').next().unwrap_or("");
            for file in TEMPLATE_FILES {
                let want = format!("{name}/{locale}/{file}");
                if templates.env.get_template(&want).is_err() {
                    return Err(TemplateError::File {
                        file: templates.display_path(&want),
                        message: "missing: each locale directory needs subject.txt, body.txt and body.html".to_owned(),
                    });
                }
            }
        }
        templates.check_all()?;
        templates.digests = templates
            .locales
            .keys()
            .filter_map(|name| Some((name.clone(), template_digest(&templates.sources(name)?))))
            .collect();
        Ok(templates)
    }

    /// These templates with the settings' `[brand]`, which every campaign's own
    /// `[brand]` overrides field by field.
    #[must_use]
    pub fn with_brand(mut self, brand: Option<Brand>) -> Self {
        self.brand = brand;
        self
    }

    /// The directory the templates came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template names found, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locales.keys().map(String::as_str)
    }

    /// The locales a template is written in, sorted (empty for an unknown name).
    pub fn locales_of(&self, name: &str) -> impl Iterator<Item = &str> {
        self.locales.get(name).into_iter().flatten().map(String::as_str)
    }

    /// The files of template `name` as loaded, every locale's, as
    /// (`LOCALE/FILE`, text) pairs sorted by path, or `None` when there is no such
    /// template.
    pub fn sources(&self, name: &str) -> Option<Vec<(String, String)>> {
        let locales = self.locales.get(name)?;
        let mut files = Vec::new();
        for locale in locales {
            for file in TEMPLATE_FILES {
                let tpl = self.env.get_template(&format!("{name}/{locale}/{file}")).ok()?;
                files.push((format!("{locale}/{file}"), tpl.source().to_owned()));
            }
        }
        files.sort();
        Some(files)
    }

    /// The template's version: lower-case hex SHA-256 of [`template_digest`] over
    /// its files, or `None` when there is no such template.
    pub fn digest(&self, name: &str) -> Option<String> {
        self.digests.get(name).cloned()
    }

    /// Fails when there is no template called `name`.
    ///
    /// # Errors
    /// [`TemplateError::Unknown`], listing the templates there are.
    pub fn require(&self, name: &str) -> Result<(), TemplateError> {
        if self.locales.contains_key(name) {
            return Ok(());
        }
        Err(TemplateError::Unknown {
            name: name.to_owned(),
            dir: self.dir.display().to_string(),
            available: if self.locales.is_empty() {
                "none".to_owned()
            } else {
                self.locales.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// Fails when `name` has no version in `locale` (a campaign's
    /// `delivery.default_locale`, the end of every user's fallback chain).
    ///
    /// # Errors
    /// [`TemplateError::Unknown`] or [`TemplateError::File`] naming the missing directory.
    pub fn require_locale(&self, name: &str, locale: &str) -> Result<(), TemplateError> {
        self.require(name)?;
        let tag = crate::domain::locale::normalize(locale).unwrap_or_else(|| locale.to_owned());
        if self.locales.get(name).is_some_and(|l| l.contains(&tag)) {
            return Ok(());
        }
        Err(TemplateError::File {
            file: self.dir.join(name).join(&tag).display().to_string(),
            message: format!(
                "missing: the default locale {tag:?} needs a version of template {name:?} (it has: {})",
                self.locales_of(name).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The locale `msg` is rendered in: the first of the user's fallback chain
    /// (exact tag, language, the campaign's default) that the template has.
    ///
    /// # Errors
    /// [`TemplateError`] when the template does not exist, or has none of them.
    pub fn locale_for(&self, msg: &Message) -> Result<(String, LocaleMatch), TemplateError> {
        let name = &msg.delivery.template;
        self.require(name)?;
        let have = &self.locales[name];
        let chain = crate::domain::locale::fallback_chain(msg.recipient.locale_tag(), &msg.delivery.default_locale);
        let user_tag = msg.recipient.locale_tag().and_then(crate::domain::locale::normalize);
        for tag in &chain {
            if have.contains(tag) {
                use crate::domain::locale::{home_region, language_of, region_of, regional_group};
                let how = match &user_tag {
                    Some(u) if u == tag => LocaleMatch::Exact,
                    Some(u) if regional_group(u).as_ref() == Some(tag) => LocaleMatch::Regional,
                    Some(u) if language_of(u) == *tag && region_of(u).is_some() && region_of(u) == home_region(tag) => {
                        LocaleMatch::Exact
                    }
                    Some(u) if language_of(u) == *tag => LocaleMatch::Language,
                    // no locale on file, or none of theirs: the campaign's default
                    _ => LocaleMatch::Default,
                };
                return Ok((tag.clone(), how));
            }
        }
        Err(self.require_locale(name, &msg.delivery.default_locale).expect_err("the default is missing"))
    }

    /// Renders the message's template (`msg.delivery.template`) in the user's locale
    /// or the nearest one there is (see [`Templates::locale_for`]). The campaign's
    /// `delivery.subject`, when set, replaces the template's subject.
    ///
    /// # Errors
    /// [`TemplateError`] naming the template file and line; its text never holds the URL.
    pub fn render(&self, msg: &Message) -> Result<Rendered, TemplateError> {
        let name = &msg.delivery.template;
        let (locale, matched) = self.locale_for(msg)?;
        // the campaign's subject for this user, where it is as near as the template
        let chain = crate::domain::locale::fallback_chain(msg.recipient.locale_tag(), &msg.delivery.default_locale);
        let campaign_subject = msg.delivery.subject.as_ref().and_then(|s| s.for_chain(&chain, &locale)).map(one_line);
        let ctx = context_of(msg, &locale, campaign_subject.as_deref(), self.brand.as_ref());
        let render = |file: &str| -> Result<String, TemplateError> {
            let tpl = self.env.get_template(&format!("{name}/{locale}/{file}")).map_err(|e| self.broken(&e))?;
            tpl.render(&ctx).map_err(|e| self.broken(&e).scrubbed(&msg.session_url))
        };
        // A subject template that places `{{ subject }}` itself (a reminder's
        // prefix) keeps its words around the campaign's; any other is replaced.
        let subject = match campaign_subject {
            Some(s) if !self.subject_takes_campaigns(name, &locale) => s,
            _ => one_line(&render("subject.txt")?),
        };
        if subject.is_empty() {
            return Err(TemplateError::Broken {
                location: self.display_path(&format!("{name}/{locale}/subject.txt")),
                message: "renders an empty subject".to_owned(),
            });
        }
        // the expiry and the review time are read as one piece: never split over lines
        let lang = Lang::of(Some(&locale));
        let keep = [
            crate::domain::locale::format_datetime_in(msg.expires_at, zone_of(msg), &locale),
            processing_time(msg.recipient.region, lang).to_owned(),
        ];
        let text = Zeroizing::new(wrap_text_keeping(&render("body.txt")?, TEXT_WIDTH, &keep));
        let html = Zeroizing::new(render("body.html")?);
        Ok(Rendered { subject, text, html, locale, matched })
    }

    /// Whether `name`'s subject in `locale` uses `{{ subject }}` (the campaign's).
    fn subject_takes_campaigns(&self, name: &str, locale: &str) -> bool {
        self.env
            .get_template(&format!("{name}/{locale}/subject.txt"))
            .is_ok_and(|t| t.undeclared_variables(false).contains("subject"))
    }

    /// Renders every template in every locale against sample messages, so that a
    /// misspelt variable fails at start rather than on the first real user; and
    /// checks that no locale version leaves out a variable another version of the
    /// same file uses (a translation that lost the link or the expiry).
    fn check_all(&self) -> Result<(), TemplateError> {
        for (name, locales) in &self.locales {
            for file in TEMPLATE_FILES {
                let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
                for locale in locales {
                    let key = format!("{name}/{locale}/{file}");
                    let tpl = self.env.get_template(&key).map_err(|e| self.broken(&e))?;
                    // the name in a greeting is each language's own (a first name in
                    // English, the full name with German *Sie*): any of them counts
                    let vars = tpl.undeclared_variables(false).into_iter().map(|v| match v.as_str() {
                        "first_name" | "last_name" | "full_name" => "first_name, last_name or full_name".to_owned(),
                        _ => v,
                    });
                    used.insert(locale, vars.collect());
                }
                let all: BTreeSet<&String> = used.values().flatten().collect();
                for (locale, vars) in &used {
                    if let Some(missing) = all.iter().find(|v| !vars.contains(**v)) {
                        let other = used.iter().find(|(_, v)| v.contains(*missing)).map_or("", |(l, _)| *l);
                        return Err(TemplateError::Broken {
                            location: self.display_path(&format!("{name}/{locale}/{file}")),
                            message: format!("missing variable {{{{ {missing} }}}}, which the {other:?} version uses"),
                        });
                    }
                }
            }
            for locale in locales {
                for (step, region, named) in [(0, Region::Intl, true), (1, Region::Us, false), (2, Region::Intl, false)]
                {
                    let mut sample = sample_message(name, step, region, named);
                    // a shipped locale's directory: a tag, or the user's is left out
                    sample.recipient.locale = crate::domain::Locale::parse(locale).ok();
                    sample.delivery.default_locale = locale.clone();
                    self.render(&sample).map_err(|e| match e {
                        TemplateError::Broken { location, message } => TemplateError::Broken {
                            location,
                            message: format!("{message} (checked with a sample message)"),
                        },
                        other => other,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Where a compiled template's file is: `DIR/NAME/LOCALE/FILE`, or
    /// `DIR/NAME/FILE` for a template in the layout without locales.
    fn display_path(&self, key: &str) -> String {
        display_path(&self.dir, &self.flat, key)
    }

    fn broken(&self, e: &minijinja::Error) -> TemplateError {
        broken_in(&self.dir, &self.flat, e)
    }
}

fn display_path(dir: &Path, flat: &BTreeSet<String>, key: &str) -> String {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [name, _, file] if flat.contains(*name) => dir.join(name).join(file).display().to_string(),
        _ => dir.join(key).display().to_string(),
    }
}

/// The subdirectories of `dir` (not hidden), sorted, with their names.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    let dir_name = dir.display().to_string();
    let entries =
        std::fs::read_dir(dir).map_err(|e| TemplateError::Dir { dir: dir_name.clone(), message: e.to_string() })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TemplateError::Dir { dir: dir_name.clone(), message: e.to_string() })?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if path.is_dir() && !name.starts_with('.') {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

fn read_template(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|e| TemplateError::File {
        file: path.display().to_string(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "missing: a template's locale directory needs subject.txt, body.txt and body.html".to_owned()
        } else {
            format!("cannot read: {e}")
        },
    })
}

/// A template's version, from its files (as `(LOCALE/FILE, text)` pairs, in any
/// order): lower-case hex SHA-256 of, for each file in path order, its path, a NUL,
/// its length in bytes as decimal, a NUL and its text. Anyone holding the files can
/// recompute it.
pub fn template_digest<S: AsRef<str>>(files: &[(S, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<(&str, &str)> = files.iter().map(|(f, t)| (f.as_ref(), t.as_str())).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for (file, text) in sorted {
        h.update(file.as_bytes());
        h.update([0]);
        h.update(text.len().to_string().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Text for HTML, in an element or a quoted attribute.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A subject is one line: newlines and runs of white space become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The plain-text part's width: 76 columns, the usual limit for mail that is read
/// as it is (RFC 3676 suggests under 78).
pub const TEXT_WIDTH: usize = 76;

/// Wraps every line longer than `width` at spaces, never inside a word: a link
/// longer than the width stays whole on a line of its own. A continuation keeps the
/// line's indentation, and a list item's (`- `) text lines up under its first word.
pub fn wrap_text(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.chars().count() <= width {
            out.push_str(line);
            continue;
        }
        let indent_len = line.len() - line.trim_start().len();
        let mut hanging = line[..indent_len].to_owned();
        if line.trim_start().starts_with("- ") || line.trim_start().starts_with("* ") {
            hanging.push_str("  ");
        }
        let mut current = line[..indent_len].to_owned();
        let mut has_word = false;
        for word in line[indent_len..].split(' ').filter(|w| !w.is_empty()) {
            let len = current.chars().count() + usize::from(has_word) + word.chars().count();
            if has_word && len > width {
                out.push_str(current.trim_end());
                out.push('\n');
                current = hanging.clone();
                has_word = false;
            }
            if has_word {
                current.push(' ');
            }
            current.push_str(word);
            has_word = true;
        }
        out.push_str(current.trim_end());
    }
    out
}

/// [`wrap_text`], with each of `phrases` kept on one line.
pub fn wrap_text_keeping(text: &str, width: usize, phrases: &[String]) -> String {
    // U+0001 never occurs in a template's output that a mail reader shows
    const GLUE: char = '\u{1}';
    let mut glued = text.replace(GLUE, "");
    for p in phrases.iter().filter(|p| p.contains(' ')) {
        glued = glued.replace(p.as_str(), &p.replace(' ', &GLUE.to_string()));
    }
    wrap_text(&glued, width).replace(GLUE, " ")
}

/// A minijinja error as text: `DIR/NAME/LOCALE/FILE:LINE: kind: detail`.
fn broken_in(dir: &Path, flat: &BTreeSet<String>, e: &minijinja::Error) -> TemplateError {
    let file = e.name().map_or_else(|| dir.display().to_string(), |n| display_path(dir, flat, n));
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
/// minutes, manual review up to 30 minutes, the US backend up to 60), in `lang`.
pub fn processing_time(region: Region, lang: Lang) -> &'static str {
    match (region, lang) {
        (Region::Intl, Lang::En) => "5 to 30 minutes",
        (Region::Us, Lang::En) => "up to 60 minutes",
        (Region::Intl, Lang::De) => "5 bis 30 Minuten",
        (Region::Us, Lang::De) => "höchstens 60 Minuten",
        (Region::Intl, Lang::Fr) => "5 à 30 minutes",
        (Region::Us, Lang::Fr) => "60 minutes au plus",
        (Region::Intl, Lang::Es) => "entre 5 y 30 minutos",
        (Region::Us, Lang::Es) => "hasta 60 minutos",
        (Region::Intl, Lang::It) => "da 5 a 30 minuti",
        (Region::Us, Lang::It) => "fino a 60 minuti",
        (Region::Intl, Lang::Nl) => "5 tot 30 minuten",
        (Region::Us, Lang::Nl) => "60 minuten",
        (Region::Intl, Lang::Pt) => "5 a 30 minutos",
        (Region::Us, Lang::Pt) => "até 60 minutos",
    }
}

/// The user's zone; the campaign's when theirs is missing or unknown (as the send
/// window reads it), and UTC when neither is known.
pub(crate) fn zone_of(msg: &Message) -> Tz {
    let campaign = || msg.delivery.zone.as_deref().and_then(|z| z.trim().parse::<Tz>().ok());
    msg.recipient.zone().or_else(campaign).unwrap_or(Tz::UTC)
}

/// The `lang` attribute for a message in the template locale `used`: the user's own
/// tag when it is of the same language (`de-DE` for a German text), else `used`.
pub fn lang_attribute(user: Option<&str>, used: &str) -> String {
    match user.and_then(crate::domain::locale::normalize) {
        Some(tag) if crate::domain::locale::language_of(&tag) == crate::domain::locale::language_of(used) => tag,
        _ => used.to_owned(),
    }
}

/// The variables every template sees. The README's template section lists them.
fn context_of(msg: &Message, used: &str, campaign_subject: Option<&str>, global: Option<&Brand>) -> Value {
    let r = &msg.recipient;
    let brand = match (&msg.delivery.brand, global) {
        (Some(mine), Some(g)) => mine.over(g),
        (Some(mine), None) => mine.clone(),
        (None, Some(g)) => g.clone(),
        (None, None) => Brand::default(),
    };
    let tz = zone_of(msg);
    let lang = Lang::of(Some(used));
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
        // the locale the text is in (the `lang` attribute), and the user's own tag
        locale => lang_attribute(r.locale_tag(), used),
        user_locale => r.locale_tag(),
        region => r.region.as_str(),
        link => msg.session_url.expose(),
        // `click`: our own page, usable again until the expiry; `direct`: the Baanx
        // session itself, single use
        link_mode => msg.delivery.link.as_str(),
        link_reusable => msg.delivery.link == crate::domain::spec::LinkMode::Click,
        expires_at => crate::domain::locale::format_datetime_in(msg.expires_at, tz, used),
        expires_at_iso => msg.expires_at.with_timezone(&tz).to_rfc3339(),
        time_zone => tz.name(),
        processing_time => processing_time(r.region, lang),
        campaign => msg.campaign.as_str(),
        step => msg.step,
        is_reminder => msg.step > 0,
        reply_to => msg.delivery.reply_to.as_deref(),
        // the campaign's `delivery.subject` for this locale, or none
        subject => campaign_subject,
        // the Reply-To's address alone, for a mailto: link
        reply_to_address => msg.delivery.reply_to.as_deref().map(address_of),
        // `[brand]`: the campaign's, each field falling back to the settings'
        brand_name => brand.name,
        support_url => brand.support_url,
        support_email => brand.support_email,
        postal_address => brand.address,
        app_name => brand.app_name,
    }
}

/// The address of a mailbox (`Support <help@example.com>` → `help@example.com`).
fn address_of(mailbox: &str) -> String {
    match mailbox.parse::<lettre::message::Mailbox>() {
        Ok(m) => m.email.to_string(),
        Err(_) => mailbox.trim().to_owned(),
    }
}

/// A made-up message for checking templates at load time.
pub(crate) fn sample_message(template: &str, step: u32, region: Region, named: bool) -> Message {
    Message {
        recipient: Recipient {
            user_id: UserId::parse("00000000-0000-4000-8000-000000000000").expect("valid sample id"),
            email: EmailAddress::parse("sample.user@example.com").expect("valid sample email"),
            first_name: named.then(|| "Sample".to_owned()),
            last_name: named.then(|| "User".to_owned()),
            locale: named.then(|| Locale::parse("en-GB").expect("valid sample locale")),
            time_zone: named.then(|| TimeZone::from("Europe/London")),
            region,
            verification_state: VerificationState::Unverified,
        },
        bounce_token: None,
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
            // the templates are checked with and without a brand
            brand: named.then(|| Brand {
                name: Some("Example Bank".to_owned()),
                support_url: Some("https://example.com/help".to_owned()),
                support_email: Some("help@example.com".to_owned()),
                address: Some("1 Example Street, London".to_owned()),
                app_name: Some("Example Bank".to_owned()),
            }),
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
    use chrono::Utc;

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
        let en = |at, tz| crate::domain::locale::format_datetime(at, tz, Lang::En);
        assert_eq!(en(at, Tz::Europe__London), "Friday, 27 November 2026 at 09:30 GMT");
        // CLDR's British English names no American zone: the offset
        assert_eq!(en(at, Tz::America__New_York), "Friday, 27 November 2026 at 04:30 GMT-5");
        let summer = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(en(summer, Tz::Europe__Berlin), "Wednesday, 1 July 2026 at 14:00 CEST");
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
        assert!(r.html.contains("&lt;b&gt;Ann&lt;/b&gt;"), "{}", r.html.as_str());
        // a link is written as it is: escaped slashes read as obfuscation to filters
        assert!(r.html.contains("href=\"https://v.example/s?a=1&amp;b=2\""), "{}", r.html.as_str());
        assert!(r.html.contains("a=1&amp;b=2"), "{}", r.html.as_str());
        assert!(!format!("{r:?}").contains("v.example"));
        m.delivery.subject = Some("Campaign subject".into());
        assert_eq!(t.render(&m).unwrap().subject, "Campaign subject");
    }

    fn shipped() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates")).unwrap()
    }

    fn for_locale(locale: Option<&str>) -> Message {
        let mut m = sample_message("default", 0, Region::Intl, true);
        m.recipient.locale = locale.map(|l| Locale::parse(l).unwrap());
        m.recipient.time_zone = Some("Europe/Berlin".into());
        m.expires_at = DateTime::parse_from_rfc3339("2026-11-27T15:00:00Z").unwrap().with_timezone(&Utc);
        m
    }

    #[test]
    fn the_users_locale_then_its_language_then_the_default() {
        let t = shipped();
        let de = t.render(&for_locale(Some("de-DE"))).unwrap();
        assert_eq!(de.subject, "Example Bank – Bitte bestätigen Sie Ihre Identität");
        assert!(de.html.contains("<html lang=\"de-DE\">"), "{}", de.html.as_str());
        assert!(de.text.contains("Freitag, 27. November 2026 um 16:00 MEZ"), "{}", de.text.as_str());
        assert!(de.text.contains("5 bis 30 Minuten"));
        // `de` is written for Germany: a de-DE reader is served their own text
        assert_eq!((de.locale.as_str(), de.matched), ("de", LocaleMatch::Exact));

        let ch = t.render(&for_locale(Some("de-CH"))).unwrap();
        assert_eq!(ch.subject, de.subject);
        assert_eq!(ch.matched, LocaleMatch::Language);
        assert!(ch.html.contains("lang=\"de-CH\""));

        let xx = t.render(&for_locale(Some("xx-YY"))).unwrap();
        assert_eq!(xx.subject, "Example Bank – Please verify your identity");
        assert!(xx.html.contains("<html lang=\"en\">"), "the lang is the text's, not the user's");
        assert!(xx.text.contains("Friday, 27 November 2026 at 16:00 CET"));
        assert_eq!((xx.locale.as_str(), xx.matched), ("en", LocaleMatch::Default));

        let fr = t.render(&for_locale(Some("fr"))).unwrap();
        assert_eq!(fr.matched, LocaleMatch::Exact);
        // an English user is no fallback to the default; en is written for the UK
        assert_eq!(t.render(&for_locale(Some("en-GB"))).unwrap().matched, LocaleMatch::Exact);
        assert_eq!(t.render(&for_locale(Some("en-AU"))).unwrap().matched, LocaleMatch::Language);
        // regional variants: exact, then the regional group, then the language
        let br = t.render(&for_locale(Some("pt-BR"))).unwrap();
        assert_eq!((br.locale.as_str(), br.matched), ("pt-BR", LocaleMatch::Exact));
        assert!(br.text.contains("você") && !br.text.contains("telemóvel"), "{}", br.text.as_str());
        let pt = t.render(&for_locale(Some("pt-PT"))).unwrap();
        assert_eq!((pt.locale.as_str(), pt.matched), ("pt", LocaleMatch::Exact));
        let mx = t.render(&for_locale(Some("es-MX"))).unwrap();
        assert_eq!((mx.locale.as_str(), mx.matched), ("es-419", LocaleMatch::Regional));
        assert!(mx.html.contains("lang=\"es-MX\""));
        let es = t.render(&for_locale(Some("es-ES"))).unwrap();
        assert_eq!((es.locale.as_str(), es.matched), ("es", LocaleMatch::Exact));
        let us = t.render(&for_locale(Some("en-US"))).unwrap();
        assert!(us.text.contains("driver's license") && !us.text.contains("driving licence"), "{}", us.text.as_str());
        assert!(fr.text.contains("vendredi 27 novembre 2026 à 16:00 UTC+1"));

        // the campaign's default locale ends the chain
        let mut m = for_locale(Some("xx-YY"));
        m.delivery.default_locale = "nl".into();
        let nl = t.render(&m).unwrap();
        assert_eq!(nl.subject, "Example Bank – Verifieer uw identiteit");
        assert!(nl.html.contains("lang=\"nl\""));
        m.delivery.default_locale = "sv".into();
        let e = t.render(&m).unwrap_err().to_string();
        assert!(e.contains("default/sv") && e.contains("\"sv\""), "{e}");
    }

    #[test]
    fn every_shipped_locale_is_there_and_differs_from_english() {
        let t = shipped();
        for name in ["default", "reminder"] {
            assert_eq!(t.locales_of(name).collect::<Vec<_>>(), {
                let mut l = SHIPPED_LOCALES.to_vec();
                l.sort_unstable();
                l
            });
            let en = {
                let mut m = for_locale(Some("en"));
                m.delivery.template = name.into();
                t.render(&m).unwrap()
            };
            for locale in SHIPPED_LOCALES.iter().filter(|l| crate::domain::locale::language_of(l) != "en") {
                let mut m = for_locale(Some(locale));
                m.delivery.template = name.into();
                let r = t.render(&m).unwrap();
                assert_ne!(r.subject, en.subject, "{name}/{locale}");
                assert!(r.text.contains("https://verify.example.invalid/sample"), "{name}/{locale}");
                assert!(r.text.lines().all(|l| l.chars().count() <= TEXT_WIDTH || !l.contains(' ')), "{name}/{locale}");
            }
        }
    }

    #[test]
    fn the_texts_read_as_written_no_doubled_words_no_lost_paragraphs() {
        let t = shipped();
        for name in ["default", "reminder"] {
            for region in [Region::Intl, Region::Us] {
                let mut m = for_locale(Some("es-ES"));
                m.delivery.template = name.into();
                m.recipient.region = region;
                let es = t.render(&m).unwrap();
                assert!(!es.text.contains(" de de ") && !es.html.contains(" de de "), "{name}: {}", es.text.as_str());
            }
        }
        // the paragraph after the link's conditional sentence keeps its blank line
        let en = t.render(&for_locale(Some("en"))).unwrap();
        assert!(en.text.contains(".\n\nWhat you will need\n"), "{}", en.text.as_str());
        let mut m = for_locale(Some("en"));
        m.delivery.template = "reminder".into();
        let rem = t.render(&m).unwrap();
        assert!(rem.text.contains(".\n\nYou will need"), "{}", rem.text.as_str());
        // German with Sie greets formally; no name is no "there"
        let de = t.render(&for_locale(Some("de-DE"))).unwrap();
        assert!(de.text.starts_with("Guten Tag Sample User,"), "{}", de.text.as_str());
        assert!(!de.text.contains("Führerschein,"), "the GwG does not accept a driving licence");
        let mut anon = for_locale(Some("en"));
        anon.recipient.first_name = None;
        anon.recipient.last_name = None;
        assert!(t.render(&anon).unwrap().text.starts_with("Hello,"));
        // Italian with Lei on the button too
        let it = t.render(&for_locale(Some("it"))).unwrap();
        assert!(!it.html.contains("Verifica la mia") && it.html.contains("Verifichi la sua identità"));
    }

    #[test]
    fn without_a_zone_of_their_own_the_user_reads_the_campaigns() {
        let t = shipped();
        let mut m = for_locale(Some("en-US"));
        m.recipient.time_zone = None;
        m.delivery.zone = Some("America/New_York".into());
        let r = t.render(&m).unwrap();
        // 15:00 UTC is 10:00 in New York, as the send window reads it
        assert!(r.text.contains("Friday, November 27, 2026 at 10:00\u{202f}AM EST"), "{}", r.text.as_str());
        m.recipient.time_zone = Some("not/a zone".into());
        assert!(t.render(&m).unwrap().text.contains("10:00\u{202f}AM EST"));
        m.delivery.zone = None;
        assert!(t.render(&m).unwrap().text.contains("3:00\u{202f}PM UTC"));
    }

    #[test]
    fn a_locale_that_leaves_out_a_variable_or_a_file_is_refused() {
        let mut src = vec![
            ("t/en/subject.txt".to_owned(), "Hi".to_owned()),
            ("t/en/body.txt".to_owned(), "{{ link }} until {{ expires_at }}".to_owned()),
            ("t/en/body.html".to_owned(), "<a href=\"{{ link }}\">go</a>".to_owned()),
            ("t/de/subject.txt".to_owned(), "Hallo".to_owned()),
            ("t/de/body.txt".to_owned(), "{{ link }}".to_owned()),
            ("t/de/body.html".to_owned(), "<a href=\"{{ link }}\">los</a>".to_owned()),
        ];
        let e = Templates::from_sources(Path::new("tpl"), src.clone()).unwrap_err().to_string();
        assert!(e.starts_with("tpl/t/de/body.txt: missing variable {{ expires_at }}"), "{e}");
        src[4].1 = "{{ link }} bis {{ expires_at }}".into();
        assert!(Templates::from_sources(Path::new("tpl"), src.clone()).is_ok());
        src.remove(5);
        let e = Templates::from_sources(Path::new("tpl"), src).unwrap_err().to_string();
        assert!(e.starts_with("tpl/t/de/body.html: missing"), "{e}");
    }

    #[test]
    fn text_wraps_at_spaces_and_keeps_links_whole() {
        let long = format!("- {} https://example.com/{}", "word ".repeat(20), "x".repeat(90));
        let w = wrap_text(&long, 40);
        for l in w.lines() {
            assert!(l.chars().count() <= 40 || !l.trim().contains(' '), "{l:?}");
        }
        assert!(w.lines().nth(1).unwrap().starts_with("  word"), "{w}");
        assert!(w.contains(&format!("https://example.com/{}", "x".repeat(90))));
        assert_eq!(wrap_text("short\n\nlines", 40), "short\n\nlines");
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
        // the link as it is, in the text and in the HTML (no `&#x2f;`)
        let html_link = "href=\"https://verify.example.invalid/sample\"";
        for (part, link) in [(r.text.as_str(), "https://verify.example.invalid/sample"), (r.html.as_str(), html_link)] {
            assert!(part.contains("Sample"), "{part}");
            assert!(part.contains(link), "{part}");
            // the `en` text is British: CLDR's en-GB writes Chicago's zone as an offset
            assert!(part.contains("GMT-6"), "{part}");
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
