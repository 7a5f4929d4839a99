//! Proofreading the shipped messages: every template × locale × step rendered with
//! realistic values, then read for the mistakes issue 26 found by hand (a doubled
//! word, a heading glued to the paragraph above it, an English sentence in a German
//! mail, an English subject on a French mail, a `lang` that is not the text's).
//!
//! The checks are mechanical and cheap; they catch the class of mistake, not every
//! mistake. A native speaker still reads each locale (`jobs/templates/GLOSSARY.md`).

use std::collections::BTreeSet;

use chrono::DateTime;

use super::template::{Rendered, Templates, sample_message};
use crate::domain::Region;
use crate::domain::locale::language_of;
use crate::domain::spec::{Brand, LinkMode};

/// Words that are English and no word of the other shipped languages; two of them
/// on one line make an English sentence.
const ENGLISH: [&str; 17] = [
    "the", "and", "you", "your", "with", "please", "will", "this", "that", "have", "our", "from", "what", "when",
    "which", "verify", "need",
];

/// Doubled words that are grammar, not slips (`vous vous`, reflexive French).
const DOUBLES_ALLOWED: [&str; 2] = ["vous", "nous"];

/// One message as it would go out, and where it came from.
pub struct Case {
    pub name: String,
    pub locale: String,
    pub step: u32,
    pub label: String,
    pub rendered: Rendered,
}

/// Every template in every locale it has, for a first message and a reminder, both
/// regions, both link modes, with and without a name and a Reply-To.
pub fn render_all(t: &Templates) -> Vec<Case> {
    let mut out = Vec::new();
    let names: Vec<String> = t.names().map(str::to_owned).collect();
    for name in &names {
        let locales: Vec<String> = t.locales_of(name).map(str::to_owned).collect();
        for locale in &locales {
            for (step, region, named, link) in [
                (0, Region::Intl, true, LinkMode::Direct),
                (0, Region::Us, false, LinkMode::Click),
                (1, Region::Intl, false, LinkMode::Direct),
                (2, Region::Us, true, LinkMode::Click),
            ] {
                let mut m = sample_message(name, step, region, named);
                m.recipient.locale = Some(crate::domain::Locale::parse(locale).unwrap());
                m.recipient.first_name = named.then(|| "Zoë".to_owned());
                m.recipient.last_name = named.then(|| "Martín-Ødegaard".to_owned());
                m.recipient.time_zone = Some("America/Sao_Paulo".into());
                m.expires_at = DateTime::from_timestamp(1_796_760_000, 0).expect("a valid time");
                m.delivery.default_locale = locale.clone();
                m.delivery.link = link;
                m.delivery.brand = Some(Brand {
                    name: Some("Example Bank".into()),
                    support_url: Some("https://example.com/help".into()),
                    support_email: Some("help@example.com".into()),
                    address: Some("1 Example Street, London EC1A 1AA".into()),
                    app_name: Some("Example Bank".into()),
                });
                let label = format!("{name}/{locale} step {step} {region:?} named={named} link={}", link.as_str());
                let rendered = t.render(&m).unwrap_or_else(|e| panic!("{label}: {e}"));
                out.push(Case { name: name.clone(), locale: locale.clone(), step, label, rendered });
            }
        }
    }
    out
}

/// The words of a text, lower case, without punctuation.
fn words(line: &str) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '’')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The visible text of an HTML part: tags and the head left out, entities kept.
pub fn visible_text(html: &str) -> String {
    let body = html.split_once("<body").map_or(html, |(_, b)| b);
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// The mistakes in one rendered message: each a line of text for the report.
pub fn problems(case: &Case, english_subject: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let r = &case.rendered;
    let text = r.text.as_str();
    let html_text = visible_text(r.html.as_str());
    // a doubled word: "de de", "the the" (only white space between: "ist, ist"
    // and "it. It" are sentences)
    for (part, body) in [("text", text), ("html", html_text.as_str())] {
        for line in body.lines() {
            let tokens: Vec<String> = line.split_whitespace().map(str::to_lowercase).collect();
            for pair in tokens.windows(2) {
                let second = pair[1].trim_end_matches(|c: char| !c.is_alphanumeric());
                if pair[0] == second && pair[0].chars().all(char::is_alphabetic) && !DOUBLES_ALLOWED.contains(&second) {
                    found.push(format!("{part}: doubled word {second:?} in {:?}", line.trim()));
                }
            }
        }
    }
    // a heading (an unindented line that opens a list) has a blank line before it
    let lines: Vec<&str> = text.lines().collect();
    for i in 1..lines.len().saturating_sub(1) {
        let is_item = |l: &str| l.starts_with("- ");
        let is_heading = !lines[i].trim().is_empty() && !lines[i].starts_with(' ') && !is_item(lines[i]);
        if is_heading && is_item(lines[i + 1]) && !lines[i - 1].trim().is_empty() {
            found.push(format!("text: no blank line before the heading {:?}", lines[i]));
        }
    }
    let lang = language_of(&case.locale);
    // `lang` is the text's language
    let attr = r.html.split_once("<html lang=\"").and_then(|(_, rest)| rest.split_once('"')).map(|(l, _)| l.to_owned());
    match attr {
        Some(a) if language_of(&a) == lang => {}
        other => found.push(format!("html: lang {other:?} is not {lang:?}")),
    }
    if lang != "en" {
        // no English sentence
        for (part, body) in [("subject", r.subject.as_str()), ("text", text), ("html", html_text.as_str())] {
            for line in body.lines() {
                let english: BTreeSet<String> =
                    words(line).into_iter().filter(|w| ENGLISH.contains(&w.as_str())).collect();
                if english.len() >= 2 {
                    found.push(format!("{part}: English in a {lang} text ({english:?}): {:?}", line.trim()));
                }
            }
        }
        // a subject of its own
        if english_subject == Some(r.subject.as_str()) {
            found.push(format!("subject: the English one, {:?}", r.subject));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The shipped templates, or the directory `REVERIFY_PROOFREAD_TEMPLATES` names
    /// (to proofread another set, or to see the checks fail on an older one).
    fn shipped() -> Templates {
        let dir = std::env::var_os("REVERIFY_PROOFREAD_TEMPLATES")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"), Into::into);
        Templates::load(&dir).unwrap()
    }

    /// The report of every problem in a set of templates.
    fn report(t: &Templates) -> Vec<String> {
        let cases = render_all(t);
        let mut out = Vec::new();
        for c in &cases {
            let english = cases
                .iter()
                .find(|e| e.name == c.name && e.step == c.step && e.locale == "en")
                .map(|e| e.rendered.subject.clone());
            for p in problems(c, english.as_deref()) {
                out.push(format!("{}: {p}", c.label));
            }
        }
        out
    }

    #[test]
    fn every_shipped_message_reads_right() {
        let found = report(&shipped());
        assert!(found.is_empty(), "{} problems:\n{}", found.len(), found.join("\n"));
    }

    /// Each shipped campaign (its `delivery.subject` and `[brand]` included) sends
    /// every language a subject of its own: the English override issue 26 found in
    /// every campaign file fails here. `REVERIFY_PROOFREAD_JOBS` names another
    /// directory of campaign files.
    #[test]
    fn every_shipped_campaign_gives_each_language_its_own_subject() {
        let t = shipped();
        let jobs = std::env::var_os("REVERIFY_PROOFREAD_JOBS")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs"), Into::into);
        let mut found = Vec::new();
        let mut campaigns = 0;
        for entry in std::fs::read_dir(&jobs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let spec = crate::config::files::read_spec(&path).unwrap();
            if spec.delivery.channel != crate::domain::spec::Channel::Email {
                continue;
            }
            campaigns += 1;
            for step in [0, 1] {
                let delivery = spec.delivery_for_step(step);
                let render = |locale: &str| {
                    let mut m = sample_message(&delivery.template, step, Region::Intl, true);
                    m.delivery = delivery.clone();
                    m.recipient.locale = Some(crate::domain::Locale::parse(locale).unwrap());
                    t.render(&m).unwrap().subject
                };
                let english = render("en");
                for locale in t.locales_of(&delivery.template).filter(|l| language_of(l) != "en") {
                    let subject = render(locale);
                    if subject == english {
                        found.push(format!(
                            "{}: step {step} in {locale}: the English subject {subject:?}",
                            path.display()
                        ));
                    }
                }
            }
        }
        assert!(campaigns >= 3, "the shipped email campaigns were read");
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    /// The checks can fail: each mistake issue 26 found, put back.
    #[test]
    fn the_checks_catch_each_mistake() {
        let one = |locale: &str, subject: &str, text: &str, html: &str| {
            let mut src = Vec::new();
            for (l, s, t, h) in [
                (
                    "en",
                    "Please verify",
                    "Hello,\n\nWhat you need\n- a passport\n\n{{ link }}",
                    "<html lang=\"{{ locale }}\"><body><p>{{ link }}</p></body></html>",
                ),
                (locale, subject, text, html),
            ] {
                src.push((format!("t/{l}/subject.txt"), s.to_owned()));
                src.push((format!("t/{l}/body.txt"), t.to_owned()));
                src.push((format!("t/{l}/body.html"), h.to_owned()));
            }
            report(&Templates::from_sources(Path::new("tpl"), src).unwrap())
        };
        let html = "<html lang=\"{{ locale }}\"><body><p>{{ link }}</p></body></html>";
        let ok = one("es", "Verifique", "Hola:\n\nQué necesita\n- pasaporte\n\n{{ link }}", html);
        assert!(ok.is_empty(), "{ok:?}");
        let doubled = one("es", "Verifique", "Hola:\n\nen un plazo de de 5 minutos\n{{ link }}", html);
        assert!(doubled.iter().any(|p| p.contains("doubled word \"de\"")), "{doubled:?}");
        let glued = one("es", "Verifique", "Hola:\nQué necesita\n- pasaporte\n{{ link }}", html);
        assert!(glued.iter().any(|p| p.contains("no blank line before the heading \"Qué necesita\"")), "{glued:?}");
        let english = one("de", "Bitte", "Hallo\n\nPlease verify your identity.\n{{ link }}", html);
        assert!(english.iter().any(|p| p.contains("English in a de text")), "{english:?}");
        let subject = one("fr", "Please verify", "Bonjour\n\n{{ link }}", html);
        assert!(subject.iter().any(|p| p.contains("subject: the English one")), "{subject:?}");
        let lang = one(
            "nl",
            "Verifieer",
            "Beste\n\n{{ link }}",
            "<html lang=\"en\" data-l=\"{{ locale }}\"><body>{{ link }}</body></html>",
        );
        assert!(lang.iter().any(|p| p.contains("lang Some(\"en\") is not \"nl\"")), "{lang:?}");
    }
}
