//! A campaign's `delivery.subject`: one line for every locale, or one per locale.
//!
//! Decisions:
//! - The template's own subject is the default. A table's line is looked up along
//!   the user's fallback chain ([`super::locale::fallback_chain`], the templates'
//!   own), and only lines in the language of the text the user gets count: a French
//!   reader of the French template keeps its French subject when the table has only
//!   `en` and `de` (an English subject over a French body is what issue 26 found in
//!   the demo), and an `en-US` reader of the `en-US` text gets the table's `en`.
//! - One string for every locale stays valid (older campaign files), and
//!   `campaign validate` warns that it is sent to every language.
//! - A reminder keeps its prefix: the reminder template's subject sees the
//!   campaign's subject as `{{ subject }}` (see `notify::template`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `delivery.subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subject {
    /// `subject = "…"`: the same line in every locale.
    Every(String),
    /// `[delivery.subject]` with `en = "…"`, `de = "…"`: a line per locale tag.
    PerLocale(BTreeMap<String, String>),
}

impl Subject {
    /// The campaign's subject for a user whose fallback chain is `chain` and who
    /// reads the template's `template_locale` text: the first line of the chain in
    /// that text's language; `None` when the template's own subject should be used.
    pub fn for_chain(&self, chain: &[String], template_locale: &str) -> Option<&str> {
        match self {
            Subject::Every(s) => Some(s.as_str()).filter(|s| !s.trim().is_empty()),
            Subject::PerLocale(table) => {
                let table: BTreeMap<String, &str> = table
                    .iter()
                    .filter_map(|(k, v)| Some((super::locale::normalize(k)?, v.as_str())))
                    .filter(|(_, v)| !v.trim().is_empty())
                    .collect();
                let lang = super::locale::language_of(template_locale);
                chain.iter().filter(|t| super::locale::language_of(t) == lang).find_map(|t| table.get(t).copied())
            }
        }
    }

    /// What types cannot check: every key a locale tag, every line non-empty.
    ///
    /// # Errors
    /// A message for the field `delivery.subject`.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Subject::Every(s) if s.trim().is_empty() => Err("is empty; leave it out to use the template's".into()),
            Subject::Every(_) => Ok(()),
            Subject::PerLocale(table) => {
                if table.is_empty() {
                    return Err("has no locale; leave it out to use the template's subjects".into());
                }
                for (k, v) in table {
                    if super::locale::normalize(k).is_none() {
                        return Err(format!("{k:?} is not a locale tag like \"en\" or \"pt-BR\""));
                    }
                    if v.trim().is_empty() {
                        return Err(format!("the {k:?} subject is empty"));
                    }
                }
                Ok(())
            }
        }
    }

    /// A warning for `campaign validate`, when there is one.
    pub fn warning(&self) -> Option<String> {
        match self {
            Subject::Every(s) => Some(format!(
                "one subject ({s:?}) is sent in every language; write one per locale under [delivery.subject], \
                 or leave it out to use each template's own"
            )),
            Subject::PerLocale(_) => None,
        }
    }
}

impl From<&str> for Subject {
    fn from(s: &str) -> Self {
        Subject::Every(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::locale::fallback_chain;

    fn table(pairs: &[(&str, &str)]) -> Subject {
        Subject::PerLocale(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn a_table_line_is_used_in_the_language_of_the_text_only() {
        let s = table(&[("en", "Verify"), ("de", "Bestätigen")]);
        // German user, German template: the table's German line
        assert_eq!(s.for_chain(&fallback_chain(Some("de-AT"), "en"), "de"), Some("Bestätigen"));
        // French user, French template: the template's own subject
        assert_eq!(s.for_chain(&fallback_chain(Some("fr-FR"), "en"), "fr"), None);
        // Swedish user, English template (the default): the table's English line
        assert_eq!(s.for_chain(&fallback_chain(Some("sv"), "en"), "en"), Some("Verify"));
        // keys are read like template directories
        let s = table(&[("pt_br", "Confirme")]);
        assert_eq!(s.for_chain(&fallback_chain(Some("pt-BR"), "en"), "pt"), Some("Confirme"));
        // a regional text takes its language's line
        let s = table(&[("en", "Verify")]);
        assert_eq!(s.for_chain(&fallback_chain(Some("en-US"), "en"), "en-US"), Some("Verify"));
        assert_eq!(Subject::from("One").for_chain(&fallback_chain(Some("fr"), "en"), "fr"), Some("One"));
    }

    #[test]
    fn bad_tables_are_refused_and_one_string_is_warned_about() {
        assert!(table(&[("not a tag", "x")]).check().unwrap_err().contains("not a locale tag"));
        assert!(table(&[("de", " ")]).check().unwrap_err().contains("\"de\""));
        assert!(table(&[]).check().is_err());
        assert!(Subject::from("Hi").warning().unwrap().contains("every language"));
        assert!(table(&[("en", "Hi")]).warning().is_none());
    }

    #[test]
    fn both_forms_parse_from_toml() {
        #[derive(Deserialize)]
        struct D {
            subject: Subject,
        }
        let one: D = toml::from_str("subject = \"Hi\"").unwrap();
        assert_eq!(one.subject, Subject::from("Hi"));
        let many: D = toml::from_str("[subject]\nen = \"Hi\"\nde = \"Hallo\"\n").unwrap();
        assert_eq!(many.subject, table(&[("en", "Hi"), ("de", "Hallo")]));
    }
}
