//! Languages and locales: which translation a user gets, and dates written the way
//! their language writes them.
//!
//! Decisions:
//! - A hand table of month and day names for the seven languages we ship, not
//!   chrono's `unstable-locales` (a large generated table, behind a feature its
//!   authors call unstable): seven languages need 133 words. Issue 26 asked for
//!   ICU4X (`icu` with compiled data); measured, it builds in about 35 s of CPU,
//!   but its CLDR patterns give neither "1er décembre" nor German prepositions,
//!   and its zone names need the IANA→BCP-47 mapping wired in. Until it replaces
//!   this table, the hand rules cover what the issue found: French "1er", German
//!   MEZ/MESZ, `UTC+8` for zones without an abbreviation, and the 12-hour,
//!   month-first American form ([`format_datetime_in`]).
//! - A locale tag is matched without regard to case and with `_` read as `-`
//!   (`de_at` is `de-AT`); the fallback chain is the exact tag, then its regional
//!   group (`es-MX` → `es-419`, `en-PR` → `en-US`), then its language, then the
//!   campaign's default (see [`fallback_chain`]).
//! - A language's own directory (`pt`, `es`, `en`) is written for one home region
//!   ([`home_region`]: Portugal, Spain, the United Kingdom): a `pt-PT` reader served
//!   `pt` got their own variant, which is no fallback; a `pt-BR` reader served `pt`
//!   is one.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

/// The languages the pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    De,
    Fr,
    Es,
    It,
    Nl,
    Pt,
}

impl Lang {
    /// The language of a locale (`de-AT` → German), English when there is no
    /// translation.
    pub fn of(locale: Option<&str>) -> Lang {
        let lang = locale.unwrap_or("").split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
        match lang.as_str() {
            "de" => Lang::De,
            "fr" => Lang::Fr,
            "es" => Lang::Es,
            "it" => Lang::It,
            "nl" => Lang::Nl,
            "pt" => Lang::Pt,
            _ => Lang::En,
        }
    }

    /// The `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
            Lang::Fr => "fr",
            Lang::Es => "es",
            Lang::It => "it",
            Lang::Nl => "nl",
            Lang::Pt => "pt",
        }
    }

    /// The month names, January first.
    pub fn months(self) -> [&'static str; 12] {
        match self {
            Lang::En => [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ],
            Lang::De => [
                "Januar",
                "Februar",
                "März",
                "April",
                "Mai",
                "Juni",
                "Juli",
                "August",
                "September",
                "Oktober",
                "November",
                "Dezember",
            ],
            Lang::Fr => [
                "janvier",
                "février",
                "mars",
                "avril",
                "mai",
                "juin",
                "juillet",
                "août",
                "septembre",
                "octobre",
                "novembre",
                "décembre",
            ],
            Lang::Es => [
                "enero",
                "febrero",
                "marzo",
                "abril",
                "mayo",
                "junio",
                "julio",
                "agosto",
                "septiembre",
                "octubre",
                "noviembre",
                "diciembre",
            ],
            Lang::It => [
                "gennaio",
                "febbraio",
                "marzo",
                "aprile",
                "maggio",
                "giugno",
                "luglio",
                "agosto",
                "settembre",
                "ottobre",
                "novembre",
                "dicembre",
            ],
            Lang::Nl => [
                "januari",
                "februari",
                "maart",
                "april",
                "mei",
                "juni",
                "juli",
                "augustus",
                "september",
                "oktober",
                "november",
                "december",
            ],
            Lang::Pt => [
                "janeiro",
                "fevereiro",
                "março",
                "abril",
                "maio",
                "junho",
                "julho",
                "agosto",
                "setembro",
                "outubro",
                "novembro",
                "dezembro",
            ],
        }
    }
}

impl Lang {
    /// The day names, Monday first.
    pub fn weekdays(self) -> [&'static str; 7] {
        match self {
            Lang::En => ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            Lang::De => ["Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"],
            Lang::Fr => ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"],
            Lang::Es => ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"],
            Lang::It => ["lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"],
            Lang::Nl => ["maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag"],
            Lang::Pt => {
                ["segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado", "domingo"]
            }
        }
    }

    /// The language of a translation's locale tag when it is one of ours (`pt-BR` →
    /// Portuguese), else `None`.
    pub fn known(locale: &str) -> Option<Lang> {
        let l = Lang::of(Some(locale));
        (l != Lang::En || language_of(locale) == "en").then_some(l)
    }
}

/// An instant written in `lang`, in `tz`, with the day of the week and the zone's
/// abbreviation: `Friday 27 November 2026, 10:00 EST`, `Freitag, 27. November 2026,
/// 16:00 CET`, `vendredi 27 novembre 2026 à 16:00 CET`.
pub fn format_datetime(at: DateTime<Utc>, tz: Tz, lang: Lang) -> String {
    let local = at.with_timezone(&tz);
    let day = lang.weekdays()[local.weekday().num_days_from_monday() as usize];
    let month = lang.months()[local.month0() as usize];
    let (d, y) = (local.day(), local.year());
    let time = format!("{:02}:{:02} {}", local.hour(), local.minute(), zone_label(&local, lang));
    // French writes the first of the month as an ordinal: "1er décembre"
    let d = if lang == Lang::Fr && d == 1 { "1er".to_owned() } else { d.to_string() };
    match lang {
        Lang::En => format!("{day} {d} {month} {y}, {time}"),
        Lang::De => format!("{day}, {d}. {month} {y}, {time}"),
        Lang::Fr => format!("{day} {d} {month} {y} à {time}"),
        Lang::Es => format!("{day}, {d} de {month} de {y}, {time}"),
        Lang::It => format!("{day} {d} {month} {y}, ore {time}"),
        Lang::Nl => format!("{day} {d} {month} {y}, {time}"),
        Lang::Pt => format!("{day}, {d} de {month} de {y}, {time}"),
    }
}

/// [`format_datetime`] for a text in the locale `tag`: American English (`en-US`
/// and the regions that fall to it) writes the month first and a 12-hour clock,
/// `Friday, November 27, 2026, 10:00 AM EST`; every other tag its language's way.
pub fn format_datetime_in(at: DateTime<Utc>, tz: Tz, tag: &str) -> String {
    let us = normalize(tag).is_some_and(|t| t == "en-US" || regional_group(&t).as_deref() == Some("en-US"));
    if !us {
        return format_datetime(at, tz, Lang::of(Some(tag)));
    }
    let local = at.with_timezone(&tz);
    let lang = Lang::En;
    let day = lang.weekdays()[local.weekday().num_days_from_monday() as usize];
    let month = lang.months()[local.month0() as usize];
    let (pm, hour) = local.hour12();
    format!(
        "{day}, {month} {}, {}, {hour}:{:02} {} {}",
        local.day(),
        local.year(),
        local.minute(),
        if pm { "PM" } else { "AM" },
        zone_label(&local, lang)
    )
}

/// The zone as a reader of `lang` knows it: its abbreviation (German's own for
/// Central Europe, MEZ and MESZ), or `UTC+8`, `UTC-3`, `UTC+5:30` where the zone
/// has none (tz data writes those as `+08`, `-03`, `+0530`).
fn zone_label(local: &DateTime<Tz>, lang: Lang) -> String {
    let abbr = local.format("%Z").to_string();
    match (lang, abbr.as_str()) {
        (Lang::De, "CET") => return "MEZ".to_owned(),
        (Lang::De, "CEST") => return "MESZ".to_owned(),
        _ => {}
    }
    let Some(sign) = abbr.chars().next().filter(|c| *c == '+' || *c == '-') else { return abbr };
    let digits = &abbr[1..];
    let (h, m) = digits.split_at(digits.len().min(2));
    let hours = h.trim_start_matches('0');
    let hours = if hours.is_empty() { "0" } else { hours };
    match m.trim_start_matches('0') {
        "" => format!("UTC{sign}{hours}"),
        _ => format!("UTC{sign}{hours}:{m}"),
    }
}

/// A locale tag in its usual spelling: `de_at` → `de-AT`, `EN` → `en`. `None` when it
/// is empty or not made of letters, digits, `-` and `_`.
pub fn normalize(tag: &str) -> Option<String> {
    let tag = tag.trim();
    if tag.is_empty() || tag.len() > 35 || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return None;
    }
    let parts: Vec<String> = tag
        .split(['-', '_'])
        .enumerate()
        .map(|(i, p)| match (i, p.len()) {
            (0, _) => p.to_ascii_lowercase(),
            (_, 2) => p.to_ascii_uppercase(),
            (_, 4) => {
                let mut s = p.to_ascii_lowercase();
                s[..1].make_ascii_uppercase();
                s
            }
            _ => p.to_ascii_lowercase(),
        })
        .collect();
    if parts.iter().any(String::is_empty) {
        return None;
    }
    Some(parts.join("-"))
}

/// The language part of a tag: `de-AT` → `de`.
pub fn language_of(tag: &str) -> String {
    tag.trim().split(['-', '_']).next().unwrap_or("").to_ascii_lowercase()
}

/// The regions of Latin America and the Caribbean where Spanish is spoken, and the
/// United States: their Spanish is `es-419` (CLDR's parent locale for them).
const SPANISH_419: [&str; 21] = [
    "419", "AR", "BO", "CL", "CO", "CR", "CU", "DO", "EC", "GT", "HN", "MX", "NI", "PA", "PE", "PR", "PY", "SV", "US",
    "UY", "VE",
];

/// The United States and its territories, whose English is `en-US`.
const ENGLISH_US: [&str; 7] = ["US", "AS", "GU", "MP", "PR", "UM", "VI"];

/// The region part of a normalized tag (`pt-BR` → `BR`, `zh-Hant-TW` → `TW`).
pub fn region_of(tag: &str) -> Option<&str> {
    tag.split('-').skip(1).find(|p| (p.len() == 2 && p.chars().all(|c| c.is_ascii_uppercase())) || p == &"419")
}

/// The regional variant a tag falls to before its language, when it has one:
/// `es-MX`, `es-US` → `es-419`; `en-PR`, `en-VI` → `en-US`.
pub fn regional_group(tag: &str) -> Option<String> {
    let lang = language_of(tag);
    let region = region_of(tag)?;
    match lang.as_str() {
        "es" if SPANISH_419.contains(&region) => Some("es-419".to_owned()),
        "en" if ENGLISH_US.contains(&region) => Some("en-US".to_owned()),
        _ => None,
    }
}

/// The region a language's own directory is written for: `pt` is Portugal's
/// Portuguese, `es` Spain's Spanish, `en` British English, and each other shipped
/// language its main country's.
pub fn home_region(lang: &str) -> Option<&'static str> {
    match lang {
        "en" => Some("GB"),
        "de" => Some("DE"),
        "fr" => Some("FR"),
        "es" => Some("ES"),
        "it" => Some("IT"),
        "nl" => Some("NL"),
        "pt" => Some("PT"),
        _ => None,
    }
}

/// The locales to try for a user, in order: their exact tag, its regional group,
/// its language, the campaign's default (each once): `de-AT` with default `en` →
/// `de-AT`, `de`, `en`; `es-MX` → `es-MX`, `es-419`, `es`, `en`.
pub fn fallback_chain(user: Option<&str>, default: &str) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(4);
    if let Some(tag) = user.and_then(normalize) {
        let lang = language_of(&tag);
        let group = regional_group(&tag);
        chain.push(tag);
        chain.extend(group);
        chain.push(lang);
    }
    chain.push(normalize(default).unwrap_or_else(|| "en".to_owned()));
    chain.dedup();
    let mut seen = Vec::new();
    chain.retain(|t| {
        let new = !seen.contains(t);
        seen.push(t.clone());
        new
    });
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_goes_from_the_exact_tag_to_its_language_to_the_default() {
        assert_eq!(fallback_chain(Some("de-AT"), "en"), ["de-AT", "de", "en"]);
        assert_eq!(fallback_chain(Some("de_ch"), "en"), ["de-CH", "de", "en"]);
        assert_eq!(fallback_chain(Some("fr"), "en"), ["fr", "en"]);
        assert_eq!(fallback_chain(Some("en-GB"), "en"), ["en-GB", "en"]);
        assert_eq!(fallback_chain(None, "de"), ["de"]);
        assert_eq!(fallback_chain(Some("not a tag!"), "en"), ["en"]);
        assert_eq!(fallback_chain(Some("zh-Hant-TW"), "en"), ["zh-Hant-TW", "zh", "en"]);
        assert_eq!(fallback_chain(Some("es-MX"), "en"), ["es-MX", "es-419", "es", "en"]);
        assert_eq!(fallback_chain(Some("es_us"), "en"), ["es-US", "es-419", "es", "en"]);
        assert_eq!(fallback_chain(Some("es-419"), "en"), ["es-419", "es", "en"]);
        assert_eq!(fallback_chain(Some("es-ES"), "en"), ["es-ES", "es", "en"]);
        assert_eq!(fallback_chain(Some("en-PR"), "de"), ["en-PR", "en-US", "en", "de"]);
        assert_eq!(fallback_chain(Some("pt-BR"), "en"), ["pt-BR", "pt", "en"]);
    }

    #[test]
    fn dates_use_the_languages_names_in_the_zone() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T15:00:00Z").unwrap().with_timezone(&Utc);
        let ny: Tz = "America/New_York".parse().unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(format_datetime(at, ny, Lang::En), "Friday 27 November 2026, 10:00 EST");
        assert_eq!(format_datetime(at, berlin, Lang::De), "Freitag, 27. November 2026, 16:00 MEZ");
        assert_eq!(format_datetime(at, berlin, Lang::Fr), "vendredi 27 novembre 2026 à 16:00 CET");
        assert_eq!(format_datetime(at, berlin, Lang::Pt), "sexta-feira, 27 de novembro de 2026, 16:00 CET");
        // 01:00 in Tokyo is already Saturday
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        assert!(format_datetime(at, tokyo, Lang::It).starts_with("sabato 28 novembre 2026, ore 00:00"));
    }

    #[test]
    fn each_reader_gets_their_way_of_writing_a_time() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T01:35:00Z").unwrap().with_timezone(&Utc);
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(format_datetime_in(at, ny, "en-US"), "Tuesday, December 1, 2026, 8:35 PM EST");
        assert_eq!(format_datetime_in(at, ny, "en-PR"), "Tuesday, December 1, 2026, 8:35 PM EST");
        assert_eq!(format_datetime_in(at, ny, "en-GB"), "Tuesday 1 December 2026, 20:35 EST");
        let paris: Tz = "Europe/Paris".parse().unwrap();
        assert_eq!(format_datetime_in(at, paris, "fr-FR"), "mercredi 2 décembre 2026 à 02:35 CET");
        let first = DateTime::parse_from_rfc3339("2026-12-01T09:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_datetime(first, paris, Lang::Fr), "mardi 1er décembre 2026 à 10:00 CET");
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let summer = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_datetime(summer, berlin, Lang::De), "Mittwoch, 1. Juli 2026, 14:00 MESZ");
        // zones without an abbreviation are written as an offset from UTC
        let sg: Tz = "Asia/Singapore".parse().unwrap();
        assert!(
            format_datetime(first, sg, Lang::En).ends_with("17:00 UTC+8"),
            "{}",
            format_datetime(first, sg, Lang::En)
        );
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        assert!(format_datetime(first, sp, Lang::Pt).ends_with("06:00 UTC-3"));
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        assert!(format_datetime(first, kolkata, Lang::En).ends_with("14:30 IST"));
        let kathmandu: Tz = "Asia/Kathmandu".parse().unwrap();
        assert!(format_datetime(first, kathmandu, Lang::En).ends_with("14:45 UTC+5:45"));
    }

    #[test]
    fn known_languages() {
        assert_eq!(Lang::known("pt-BR"), Some(Lang::Pt));
        assert_eq!(Lang::known("en-US"), Some(Lang::En));
        assert_eq!(Lang::known("xx-YY"), None);
    }
}
