//! Languages and locales: which translation a user gets, and dates written the way
//! their language writes them.
//!
//! Decisions:
//! - Dates, times and zones are written by ICU4X (`icu` 2.x with its compiled CLDR
//!   data, the Unicode Consortium's own library): no table of ours for month or day
//!   names, patterns, clocks or zone names. CLDR gives each locale its long date,
//!   its clock (12-hour in American English and Latin American Spanish, 24-hour
//!   in the other shipped locales) and its zone names: `MEZ`/`MESZ` in German,
//!   `EST`/`EDT` in American English, and CLDR's localized offset (`GMT+8`; `UTC+1`
//!   for Paris in French, which has only a long name for it) for a zone the
//!   language has no short name for. One field set for every text
//!   ([`format_datetime_in`]): weekday, day, month, year, hours and minutes, and the
//!   zone's specific short name, in the Gregorian calendar. The email, the click
//!   page and the dashboard call it with the same locale (see [`cldr_locale`]), so
//!   one instant has one spelling per locale.
//! - The zone: the IANA id (chrono-tz's `Tz`) is mapped to CLDR's zone by ICU4X's
//!   own `IanaParser` (aliases and all); the UTC offset of the instant comes from
//!   chrono-tz, and ICU4X reads standard or daylight time from it (its 2.x API
//!   infers the variant from the offset and CLDR's zone offsets; a variant set by
//!   hand is deprecated). An offset CLDR does not know for the zone is written as
//!   a localized offset, never as a wrong name.
//! - One post-processing step remains, for a convention CLDR does not have:
//!   French writes the first of the month as an ordinal, "1er décembre" (CLDR's
//!   French patterns give "1 décembre"). Italian elisions ("all'8") are the
//!   templates' text: the shipped Italian texts put the date after "fino a" and
//!   "scade", and the date starts with its weekday ("fino a martedì 8 dicembre"),
//!   which needs no article.
//! - CLDR writes the American clock with a narrow no-break space before AM/PM
//!   ("8:35\u{202f}PM"); kept, as it keeps the time on one line.
//! - Cost, measured on the shared 2-core build machine (the README's "Dates"): the
//!   31 crates `icu` adds build in about 45–50 s of CPU in the debug profile (157 of
//!   the 851 unit-seconds of `cargo build -p icu --timings`, whose closure used 254 s
//!   of user CPU); `icu` pulls every ICU4X component and its data crate (collation,
//!   segmentation and the rest are compiled but unused, and the linker drops them).
//!   A call takes about 36 µs in a debug build: the formatter is built per call.
//!   The release binary's size was not measured.
//! - A locale tag is matched without regard to case and with `_` read as `-`
//!   (`de_at` is `de-AT`); the fallback chain is the exact tag, then its regional
//!   group (`es-MX` → `es-419`, `en-PR` → `en-US`), then its language, then the
//!   campaign's default (see [`fallback_chain`]).
//! - A language's own directory (`pt`, `es`, `en`) is written for one home region
//!   ([`home_region`]: Portugal, Spain, the United Kingdom): a `pt-PT` reader served
//!   `pt` got their own variant, which is no fallback; a `pt-BR` reader served `pt`
//!   is one.

use chrono::{DateTime, Datelike, Offset, Timelike, Utc};
use chrono_tz::Tz;
use icu::calendar::{Date, Gregorian};
use icu::datetime::FixedCalendarDateTimeFormatter;
use icu::datetime::fieldsets::{self, Combo, zone};
use icu::datetime::input::{Time, UtcOffset, ZonedDateTime};
use icu::locale::Locale as IcuLocale;
use icu::time::zone::{IanaParser, ZoneNameTimestamp};

use super::ids::IdError;

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
}

impl Lang {
    /// The language of a translation's locale tag when it is one of ours (`pt-BR` →
    /// Portuguese), else `None`.
    pub fn known(locale: &str) -> Option<Lang> {
        let l = Lang::of(Some(locale));
        (l != Lang::En || language_of(locale) == "en").then_some(l)
    }
}

/// The CLDR formatter of every date we write: weekday, day, month and year in the
/// locale's long form, hours and minutes on the locale's clock, and the zone's
/// specific short name (`MEZ`, `EST`, or a localized offset `GMT+8`).
type Formatter = FixedCalendarDateTimeFormatter<Gregorian, Combo<fieldsets::YMDET, zone::SpecificShort>>;

/// An instant written in `lang` (its home region's variant: British English,
/// Portugal's Portuguese, Spain's Spanish), in `tz`: `Friday 27 November 2026 at
/// 10:00 EST`, `Freitag, 27. November 2026 um 16:00 MEZ`. See [`format_datetime_in`].
pub fn format_datetime(at: DateTime<Utc>, tz: Tz, lang: Lang) -> String {
    format_datetime_in(at, tz, lang.code())
}

/// An instant written for a text in the locale `tag`, in `tz`, by ICU4X from CLDR:
/// the long date with the weekday, the time on the locale's clock (12-hour in
/// American English, `Tuesday, December 1, 2026 at 8:35 PM EST`; 24-hour elsewhere)
/// and the zone's specific short name in that language (`MEZ`/`MESZ` in German),
/// or CLDR's localized offset where the language has none (`GMT+8`, `UTC-3` in French).
///
/// The tag is read as the templates and the pages read it ([`cldr_locale`]), so the
/// email, the click page and the dashboard write one instant one way. One step is
/// ours, not CLDR's: French writes the first of the month as an ordinal, `1er`.
pub fn format_datetime_in(at: DateTime<Utc>, tz: Tz, tag: &str) -> String {
    let cldr = cldr_locale(tag);
    let local = at.with_timezone(&tz);
    let text = icu_format(&local, tz, &cldr).unwrap_or_else(|| {
        // unreachable with compiled data (every locale falls back to root); kept
        // so that a date is never lost
        format!("{} {}", local.format("%Y-%m-%d %H:%M"), tz.name())
    });
    if language_of(&cldr) == "fr" && local.day() == 1 { french_first_of_month(&text) } else { text }
}

/// The CLDR locale a text in `tag` is dated in: the regional variant of the
/// language we write texts in (`en-US`, `es-419`, `pt-BR`: the tag itself or its
/// regional group, `en-PR` → `en-US`, `es-MX` → `es-419`), else the language's home
/// region (`en`, `en-GB`, `en-IE` → `en-GB`; `de`, `de-CH` → `de-DE`; `pt` →
/// `pt-PT`), as that language's own texts are written for it ([`home_region`]). A
/// language we do not ship is written as the English texts are, `en-GB`.
///
/// So the user's own tag, the template's locale the email used and the page's
/// reader give one CLDR locale, and one spelling of an instant.
pub fn cldr_locale(tag: &str) -> String {
    const VARIANTS: [&str; 3] = ["en-US", "es-419", "pt-BR"];
    let Some(tag) = normalize(tag) else { return "en-GB".to_owned() };
    if Lang::known(&tag).is_none() {
        return "en-GB".to_owned();
    }
    if let Some(v) = VARIANTS.iter().find(|v| **v == tag || regional_group(&tag).as_deref() == Some(**v)) {
        return (*v).to_owned();
    }
    let lang = language_of(&tag);
    match home_region(&lang) {
        Some(region) => format!("{lang}-{region}"),
        None => "en-GB".to_owned(),
    }
}

/// ICU4X's text for the local time `local` in `tz`, in the CLDR locale `cldr`.
fn icu_format(local: &DateTime<Tz>, tz: Tz, cldr: &str) -> Option<String> {
    let locale = IcuLocale::try_from_str(cldr).ok()?;
    let formatter =
        Formatter::try_new((&locale).into(), fieldsets::YMDE::long().with_time_hm().with_zone(zone::SpecificShort))
            .ok()?;
    let date = Date::try_new_gregorian(local.year(), local.month() as u8, local.day() as u8).ok()?;
    let time = Time::try_new(local.hour() as u8, local.minute() as u8, local.second().min(59) as u8, 0).ok()?;
    // the zone: CLDR's identity for the IANA id (ICU4X's own parser, aliases
    // included), at the offset tz data gives for this instant; ICU4X reads standard
    // or daylight time from that offset and the zone's CLDR offsets, and writes a
    // localized offset when the offset matches neither
    let offset = UtcOffset::try_from_seconds(local.offset().fix().local_minus_utc()).ok()?;
    let zone = IanaParser::new()
        .parse(tz.name())
        .with_offset(Some(offset))
        .with_zone_name_timestamp(ZoneNameTimestamp::from_epoch_seconds(local.timestamp()));
    Some(formatter.format(&ZonedDateTime { date, time, zone }).to_string())
}

/// `1er` for the day in a French date of the first of the month: CLDR's French
/// patterns write the day as a number (`mardi 1 décembre 2026`), French typography
/// an ordinal (`mardi 1er décembre 2026`). The day is the first number in the text
/// (the weekday before it is a word), so the `1` that starts the first run of
/// digits is it.
fn french_first_of_month(text: &str) -> String {
    let Some(start) = text.find(|c: char| c.is_ascii_digit()) else { return text.to_owned() };
    let rest = &text[start..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    if &rest[..digits] != "1" {
        return text.to_owned();
    }
    format!("{}1er{}", &text[..start], &rest[1..])
}

/// A user's locale: a tag [`normalize`] can read (`en-GB`, `de_at`), kept as written
/// (the import writes it normalized), since templates and webhooks are given it as
/// is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locale(String);

impl Locale {
    /// Checks a tag.
    ///
    /// # Errors
    /// [`IdError::Locale`] when it is empty or not made of letters, digits, `-` and
    /// `_`.
    pub fn parse(tag: &str) -> Result<Self, IdError> {
        match normalize(tag) {
            Some(_) => Ok(Self(tag.to_owned())),
            None => Err(IdError::Locale(tag.to_owned())),
        }
    }

    /// The tag, as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Locale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        name.parse().unwrap()
    }

    /// CLDR's American clock: a narrow no-break space before AM and PM.
    const NNBSP: char = '\u{202f}';

    #[test]
    fn each_shipped_locale_gets_cldrs_long_date_its_clock_and_its_zone_name() {
        // 01:35 UTC on 2 December is 20:35 on 1 December in New York
        let winter = at("2026-12-02T01:35:00Z");
        let ny = tz("America/New_York");
        assert_eq!(format_datetime_in(winter, ny, "en-US"), format!("Tuesday, December 1, 2026 at 8:35{NNBSP}PM EST"));
        // the regions that fall to en-US read it the same way
        assert_eq!(format_datetime_in(winter, ny, "en-PR"), format_datetime_in(winter, ny, "en-US"));
        let summer = at("2026-07-08T12:00:00Z");
        assert_eq!(format_datetime_in(summer, ny, "en-US"), format!("Wednesday, July 8, 2026 at 8:00{NNBSP}AM EDT"));
        // British English: 24 hours; CLDR's en-GB names no American zone
        assert_eq!(format_datetime_in(winter, ny, "en-GB"), "Tuesday, 1 December 2026 at 20:35 GMT-5");
        assert_eq!(format_datetime_in(summer, tz("Europe/London"), "en"), "Wednesday, 8 July 2026 at 13:00 BST");
        assert_eq!(format_datetime_in(winter, tz("Europe/Berlin"), "en-GB"), "Wednesday, 2 December 2026 at 02:35 CET");
        // German: MEZ in winter, MESZ in summer
        let berlin = tz("Europe/Berlin");
        assert_eq!(format_datetime_in(winter, berlin, "de-DE"), "Mittwoch, 2. Dezember 2026 um 02:35 MEZ");
        assert_eq!(format_datetime_in(summer, berlin, "de"), "Mittwoch, 8. Juli 2026 um 14:00 MESZ");
        assert_eq!(format_datetime_in(summer, tz("Europe/Vienna"), "de-AT"), "Mittwoch, 8. Juli 2026 um 14:00 MESZ");
        // French: 1er for the first of the month (ours), CLDR's offset for a zone
        // French has no short name for
        let paris = tz("Europe/Paris");
        let first = at("2026-12-01T09:00:00Z");
        assert_eq!(format_datetime_in(first, paris, "fr"), "mardi 1er décembre 2026 à 10:00 UTC+1");
        assert_eq!(format_datetime_in(winter, paris, "fr-FR"), "mercredi 2 décembre 2026 à 02:35 UTC+1");
        assert_eq!(format_datetime_in(summer, paris, "fr"), "mercredi 8 juillet 2026 à 14:00 UTC+2");
        assert_eq!(
            format_datetime(at("2026-11-11T09:00:00Z"), paris, Lang::Fr),
            "mercredi 11 novembre 2026 à 10:00 UTC+1"
        );
        assert_eq!(
            format_datetime(at("2026-11-21T09:00:00Z"), paris, Lang::Fr),
            "samedi 21 novembre 2026 à 10:00 UTC+1"
        );
        // Italian, Spanish, Dutch: 24 hours and CET/CEST
        assert_eq!(format_datetime_in(first, tz("Europe/Rome"), "it"), "martedì 1 dicembre 2026 alle ore 10:00 CET");
        assert_eq!(
            format_datetime_in(summer, tz("Europe/Madrid"), "es-ES"),
            "miércoles, 8 de julio de 2026 a las 14:00 CEST"
        );
        assert_eq!(format_datetime_in(first, tz("Europe/Amsterdam"), "nl"), "dinsdag 1 december 2026 om 10:00 CET");
        // Latin American Spanish: CLDR's es-419 clock is 12-hour
        assert_eq!(
            format_datetime_in(winter, tz("America/Mexico_City"), "es-MX"),
            format!("martes, 1 de diciembre de 2026 a las 7:35{NNBSP}p.m. GMT-6")
        );
        // Portuguese: Brazil's and Portugal's own forms and zone names
        assert_eq!(
            format_datetime_in(winter, tz("America/Sao_Paulo"), "pt-BR"),
            "terça-feira, 1 de dezembro de 2026 às 22:35 BRT"
        );
        assert_eq!(format_datetime_in(first, tz("Europe/Lisbon"), "pt"), "terça-feira, 1/12/2026 às 09:00 WET");
        assert_eq!(format_datetime_in(summer, tz("Europe/Lisbon"), "pt-PT"), "quarta-feira, 8/07/2026 às 13:00 WEST");
    }

    #[test]
    fn a_zone_without_a_cldr_name_is_written_as_a_localized_offset() {
        let first = at("2026-12-01T09:00:00Z");
        let sg = tz("Asia/Singapore");
        assert_eq!(format_datetime_in(first, sg, "en"), "Tuesday, 1 December 2026 at 17:00 GMT+8");
        assert_eq!(format_datetime_in(first, sg, "de"), "Dienstag, 1. Dezember 2026 um 17:00 GMT+8");
        assert_eq!(format_datetime_in(first, tz("Asia/Kathmandu"), "fr"), "mardi 1er décembre 2026 à 14:45 UTC+5:45");
        assert_eq!(format_datetime_in(first, tz("Asia/Kolkata"), "en"), "Tuesday, 1 December 2026 at 14:30 GMT+5:30");
        assert_eq!(format_datetime_in(first, Tz::UTC, "de"), "Dienstag, 1. Dezember 2026 um 09:00 UTC");
        // an IANA alias is CLDR's zone all the same
        assert_eq!(
            format_datetime_in(first, tz("Asia/Calcutta"), "en"),
            format_datetime_in(first, tz("Asia/Kolkata"), "en")
        );
    }

    #[test]
    fn the_users_tag_the_templates_locale_and_the_pages_reader_give_one_spelling() {
        assert_eq!(cldr_locale("en"), "en-GB");
        assert_eq!(cldr_locale("en-IE"), "en-GB");
        assert_eq!(cldr_locale("en_us"), "en-US");
        assert_eq!(cldr_locale("en-VI"), "en-US");
        assert_eq!(cldr_locale("de-CH"), "de-DE");
        assert_eq!(cldr_locale("es-MX"), "es-419");
        assert_eq!(cldr_locale("es"), "es-ES");
        assert_eq!(cldr_locale("pt"), "pt-PT");
        assert_eq!(cldr_locale("pt-BR"), "pt-BR");
        assert_eq!(cldr_locale("xx-YY"), "en-GB");
        assert_eq!(cldr_locale("not a tag!"), "en-GB");
        let at = at("2026-12-01T09:00:00Z");
        let berlin = tz("Europe/Berlin");
        assert_eq!(format_datetime_in(at, berlin, "de-CH"), format_datetime(at, berlin, Lang::De));
        assert_eq!(format_datetime_in(at, berlin, "xx-YY"), format_datetime(at, berlin, Lang::En));
    }

    #[test]
    fn french_ordinal_touches_only_the_day() {
        assert_eq!(
            french_first_of_month("mardi 1 décembre 2026 à 10:00 UTC+1"),
            "mardi 1er décembre 2026 à 10:00 UTC+1"
        );
        assert_eq!(french_first_of_month("mardi 11 décembre"), "mardi 11 décembre");
        assert_eq!(french_first_of_month("sans date"), "sans date");
    }

    #[test]
    fn known_languages() {
        assert_eq!(Lang::known("pt-BR"), Some(Lang::Pt));
        assert_eq!(Lang::known("en-US"), Some(Lang::En));
        assert_eq!(Lang::known("xx-YY"), None);
    }
}
