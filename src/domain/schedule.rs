//! Cron schedules in two spellings: the 5-field crontab form (`0 9 * * 1-5`, Sunday
//! is 0 or 7) and the cron crate's 6/7-field form with seconds (and years), read in a
//! campaign's time zone.
//!
//! The cron crate numbers weekdays differently from crontab, so the 5-field form's
//! day-of-week field is rewritten to names (`MON,TUE,...`), which both agree on.
//!
//! The cron crate also requires both day fields to match, where crontab (Vixie cron,
//! and Kubernetes' CronJob) runs on a day that matches **either** when both are
//! restricted: `0 9 1,15 * 1` runs on the 1st, the 15th and every Monday. So a
//! 5-field expression whose day-of-month and day-of-week are both restricted is
//! kept as two cron schedules, one with day-of-week `*` and one with day-of-month
//! `*`, and its ticks are the union of theirs. A field is unrestricted when one of
//! its items is `*` or `?` (alone or with step 1), as in Kubernetes; a step over
//! `*` (`*/2`) restricts it (Vixie cron would treat it as `*`). The 6/7-field form
//! keeps the cron crate's meaning (both must match).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Why a schedule expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {expr:?} has {fields} fields; use 5 (crontab) or 6/7 (with seconds and years)")]
    FieldCount { expr: String, fields: usize },
    #[error("schedule {expr:?}: day of week {item:?} is not valid (0-7 or SUN-SAT, ranges and steps allowed)")]
    DayOfWeek { expr: String, item: String },
    #[error("schedule {expr:?}: {field} {item:?} is out of range: {field}s are {min} to {max}\n  {expr}\n  {caret}")]
    OutOfRange { expr: String, field: &'static str, item: String, min: u32, max: u32, caret: String },
    #[error("schedule {expr:?} is not valid: {reason}")]
    Invalid { expr: String, reason: String },
}

/// The numeric fields of each spelling, with their bounds; `None` for a field left
/// to its own check (crontab's day of week) or to the cron crate (its day of week,
/// years).
const CRONTAB_FIELDS: [Option<(&str, u32, u32)>; 5] =
    [Some(("minute", 0, 59)), Some(("hour", 0, 23)), Some(("day of month", 1, 31)), Some(("month", 1, 12)), None];
const SECONDS_FIELDS: [Option<(&str, u32, u32)>; 7] = [
    Some(("second", 0, 59)),
    Some(("minute", 0, 59)),
    Some(("hour", 0, 23)),
    Some(("day of month", 1, 31)),
    Some(("month", 1, 12)),
    None,
    None,
];

/// Checks every number of every field against its bounds before the cron crate
/// sees it (whose messages give the wrong bound and no field), pointing a caret at
/// the item in the expression as written.
fn check_bounds(
    written: &str,
    fields: &[&str],
    bounds: &[Option<(&'static str, u32, u32)>],
) -> Result<(), ScheduleError> {
    // where each field starts in the expression as written (macros are never out of range)
    let mut starts = Vec::with_capacity(fields.len());
    let mut from = 0;
    for f in fields {
        let at = written[from..].find(f).map_or(0, |i| from + i);
        starts.push(at);
        from = at + f.len();
    }
    for ((field, bound), start) in fields.iter().zip(bounds).zip(starts) {
        let Some((name, min, max)) = *bound else { continue };
        let mut offset = 0;
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            let out = range.split('-').any(|n| n.parse::<u32>().is_ok_and(|v| v < min || v > max))
                || step.is_some_and(|s| s.parse::<u32>().is_ok_and(|v| v == 0 || v > max));
            if out {
                let caret = format!("{}{}", " ".repeat(start + offset), "^".repeat(item.len().max(1)));
                return Err(ScheduleError::OutOfRange {
                    expr: written.to_owned(),
                    field: name,
                    item: item.to_owned(),
                    min,
                    max,
                    caret,
                });
            }
            offset += item.len() + 1;
        }
    }
    Ok(())
}

/// A parsed schedule; it keeps the text it was written as.
#[derive(Clone)]
pub struct CronSchedule {
    written: String,
    /// One schedule, or two whose ticks are merged (crontab's day-of-month OR
    /// day-of-week); only those that ever fire.
    schedules: Vec<cron::Schedule>,
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Whether a crontab day field leaves the day unrestricted: one of its list items
/// is `*` or `?`, alone or with step 1 (Kubernetes' rule; see the module docs).
fn is_unrestricted(field: &str) -> bool {
    field.split(',').any(|item| {
        let (range, step) = item.split_once('/').unwrap_or((item, "1"));
        matches!(range, "*" | "?") && step.trim_start_matches('0') == "1"
    })
}

impl CronSchedule {
    /// Parses either spelling, or one of `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    ///
    /// # Errors
    /// A [`ScheduleError`] that quotes the expression.
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let written = expr.trim().to_owned();
        let expanded = match written.as_str() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        match fields.len() {
            5 => check_bounds(&written, &fields, &CRONTAB_FIELDS)?,
            6 | 7 => check_bounds(&written, &fields, &SECONDS_FIELDS)?,
            _ => {}
        }
        let cron_forms = match fields.len() {
            5 => {
                let dow = crontab_day_of_week(fields[4])
                    .map_err(|item| ScheduleError::DayOfWeek { expr: written.clone(), item })?;
                let (minute, hour, dom, month) = (fields[0], fields[1], fields[2], fields[3]);
                if is_unrestricted(dom) || is_unrestricted(fields[4]) {
                    vec![format!("0 {minute} {hour} {dom} {month} {dow}")]
                } else {
                    // crontab: a day matching either field
                    vec![format!("0 {minute} {hour} {dom} {month} *"), format!("0 {minute} {hour} * {month} {dow}")]
                }
            }
            6 | 7 => vec![fields.join(" ")],
            n => return Err(ScheduleError::FieldCount { expr: written, fields: n }),
        };
        let mut schedules = Vec::with_capacity(cron_forms.len());
        for form in &cron_forms {
            let schedule = cron::Schedule::from_str(form)
                .map_err(|e| ScheduleError::Invalid { expr: written.clone(), reason: e.to_string() })?;
            // one half of an OR that never fires (30 February) leaves the other
            if schedule.upcoming(Utc).next().is_some() {
                schedules.push(schedule);
            }
        }
        // An expression that never fires (say, 30 February) is a mistake, not a schedule.
        if schedules.is_empty() {
            return Err(ScheduleError::Invalid { expr: written, reason: "it never fires".into() });
        }
        Ok(Self { written, schedules })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The ticks of one of the schedules strictly after `after`, in order. (The cron
    /// crate answers a local time repeated by a DST change with both instants, the
    /// earlier one first, even when `after` lies between them: those before `after`
    /// are dropped.)
    fn ticks_after(
        schedule: &cron::Schedule,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        schedule.after(&after.with_timezone(&tz)).map(|t| t.with_timezone(&Utc)).filter(move |t| *t > after)
    }

    /// The first tick strictly after `after`, reading the fields in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.schedules.iter().filter_map(|s| Self::ticks_after(s, after, tz).next()).min()
    }

    /// The latest tick in `(from, to]`, if any. Only looks back `max_lookback` from `to`
    /// so that a schedule firing every second over a year does not walk every tick.
    pub fn latest_tick_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: Tz,
        max_lookback: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let start = from.max(to - max_lookback);
        self.schedules.iter().filter_map(|s| Self::ticks_after(s, start, tz).take_while(|t| *t <= to).last()).max()
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule").field(&self.written).finish()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

fn day_number(s: &str) -> Option<usize> {
    if let Ok(n) = s.parse::<usize>() {
        return (n <= 7).then_some(n % 7);
    }
    let upper = s.to_ascii_uppercase();
    DAY_NAMES.iter().position(|d| upper == *d || (upper.len() > 3 && upper.starts_with(d)))
}

/// Rewrites a crontab day-of-week field (0/7 = Sunday) as a list of day names.
/// The `Err` carries the offending item.
fn crontab_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".into());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let bad = || item.to_owned();
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<usize>().ok().filter(|s| *s > 0).ok_or_else(bad)?),
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = day_number(a).ok_or_else(bad)?;
            // "5-7" means Friday to Sunday: 7 is Sunday at the top of the range.
            let b = if b == "7" { 7 } else { day_number(b).ok_or_else(bad)? };
            if b < a {
                return Err(bad());
            }
            (a, b)
        } else {
            let a = day_number(range).ok_or_else(bad)?;
            // "1/2" in crontab means from Monday to the end, every second day.
            (a, if item.contains('/') { 6 } else { a })
        };
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|d| days[*d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

/// Whether a scheduled campaign should run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run now for this tick (the latest one since the last run; earlier missed
    /// ticks are covered by the same run).
    Run { tick: DateTime<Utc> },
    /// A scheduled run of `interrupted` started and none has finished since (it was
    /// stopped, killed or failed): run now, whatever the starting deadline, for
    /// `tick`, the latest tick (which covers the interrupted one).
    Resume { tick: DateTime<Utc>, interrupted: DateTime<Utc> },
    /// A tick was missed by more than the starting deadline: it is not run late.
    Missed { tick: DateTime<Utc> },
    /// No tick since the last run.
    NotDue,
}

/// How far back a due calculation looks for ticks.
const DUE_LOOKBACK_DAYS: i64 = 400;

/// The due rule: the latest tick in `(since, now]` runs when it is at most
/// `deadline` old. `since` is the last run's start (or the campaign's creation).
pub fn due(
    schedule: &CronSchedule,
    tz: Tz,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    deadline: chrono::Duration,
) -> Due {
    match schedule.latest_tick_between(since, now, tz, chrono::Duration::days(DUE_LOOKBACK_DAYS)) {
        None => Due::NotDue,
        Some(tick) if now - tick > deadline => Due::Missed { tick },
        Some(tick) => Due::Run { tick },
    }
}

/// What [`due_or_resume`] judges.
#[derive(Debug, Clone, Copy)]
pub struct DueParams<'a> {
    /// The campaign's schedule.
    pub schedule: &'a CronSchedule,
    /// The time zone the schedule is read in.
    pub tz: Tz,
    /// The start of the latest finished run, or the campaign's creation.
    pub since: DateTime<Utc>,
    /// The tick a scheduled run started that no finished run covers yet.
    pub in_progress: Option<DateTime<Utc>>,
    /// When it is judged.
    pub now: DateTime<Utc>,
    /// How late a tick's first run may start.
    pub deadline: chrono::Duration,
}

/// The due rule with resumption. `since` is the start of the latest finished run
/// (every tick at or before it is done) or the campaign's creation, and
/// `in_progress` the tick a scheduled run started that no finished run covers yet.
///
/// Decision: the starting deadline only decides whether a tick's first run may
/// start late. Once a run of a tick has started, the tick is resumed by every
/// later `run --due` (or daemon pass) until a run finishes, however old it is:
/// the people it targets were expecting it, and the work left would otherwise wait
/// for the next tick (a week, a month). The resumed run is for the latest tick,
/// so a tick that came meanwhile is covered by it, deadline or not.
pub fn due_or_resume(p: &DueParams<'_>) -> Due {
    let DueParams { schedule, tz, since, in_progress, now, deadline } = *p;
    let plain = due(schedule, tz, since, now, deadline);
    match in_progress.filter(|t| *t > since) {
        None => plain,
        Some(interrupted) => {
            let tick = match plain {
                Due::Run { tick } | Due::Missed { tick } | Due::Resume { tick, .. } => tick.max(interrupted),
                // the schedule changed since (or the tick is beyond the lookback)
                Due::NotDue => interrupted,
            };
            Due::Resume { tick, interrupted }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    #[test]
    fn a_number_out_of_its_field_names_the_field_its_bounds_and_where() {
        let e = CronSchedule::parse("0 25 * * *").unwrap_err().to_string();
        assert!(e.contains("hour \"25\" is out of range: hours are 0 to 23"), "{e}");
        assert!(e.ends_with("  0 25 * * *\n    ^^"), "the caret under 25:\n{e}");
        let e = CronSchedule::parse("0 9 1,32 * *").unwrap_err().to_string();
        assert!(e.contains("day of month \"32\"") && e.contains("1 to 31") && e.ends_with("\n        ^^"), "{e}");
        let e = CronSchedule::parse("*/0 * * * *").unwrap_err().to_string();
        assert!(e.contains("minute \"*/0\""), "{e}");
        let e = CronSchedule::parse("0 60 9 * * *").unwrap_err().to_string();
        assert!(e.contains("minute \"60\"") && e.contains("0 to 59"), "{e}");
        // the bounds themselves are accepted
        for ok in ["59 23 31 12 7", "0 0 1 1 0", "0-59/15 0-23 1-31 1-12 *", "59 59 23 31 12 * 2099"] {
            CronSchedule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn five_field_weekdays_mean_monday_to_friday() {
        let s = CronSchedule::parse("0 9 * * 1-5").unwrap();
        let tz: Tz = "Europe/London".parse().unwrap();
        // Saturday 2026-03-07 10:00 UTC: the next tick is Monday 09:00 London.
        let sat = Utc.with_ymd_and_hms(2026, 3, 7, 10, 0, 0).unwrap();
        let next = s.next_after(sat, tz).unwrap().with_timezone(&tz);
        assert_eq!(next.weekday(), Weekday::Mon);
        assert_eq!((next.hour(), next.minute()), (9, 0));
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun"] {
            let s = CronSchedule::parse(expr).unwrap();
            let next = s.next_after(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(), Tz::UTC).unwrap();
            assert_eq!(next.weekday(), Weekday::Sun, "{expr}");
        }
        assert_eq!(crontab_day_of_week("5-7").unwrap(), "SUN,FRI,SAT");
        assert_eq!(crontab_day_of_week("*/2").unwrap(), "SUN,TUE,THU,SAT");
        assert_eq!(crontab_day_of_week("1,3").unwrap(), "MON,WED");
    }

    #[test]
    fn six_and_seven_fields_pass_through() {
        let s = CronSchedule::parse("30 0 9 * * Mon-Fri").unwrap();
        let next = s.next_after(Utc.with_ymd_and_hms(2026, 3, 7, 0, 0, 0).unwrap(), Tz::UTC).unwrap();
        assert_eq!((next.weekday(), next.second()), (Weekday::Mon, 30));
        assert!(CronSchedule::parse("0 0 9 * * * 2027").is_ok());
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(matches!(CronSchedule::parse("0 9 * *"), Err(ScheduleError::FieldCount { fields: 4, .. })));
        assert!(matches!(CronSchedule::parse("0 9 * * 8"), Err(ScheduleError::DayOfWeek { .. })));
        assert!(matches!(CronSchedule::parse("0 9 * * 5-1"), Err(ScheduleError::DayOfWeek { .. })));
        assert!(matches!(CronSchedule::parse("61 9 * * *"), Err(ScheduleError::OutOfRange { field: "minute", .. })));
        assert!(CronSchedule::parse("@daily").is_ok());
    }

    /// A wall-clock time, read in a zone by [`at`].
    struct Local {
        y: i32,
        mo: u32,
        d: u32,
        h: u32,
        mi: u32,
    }

    fn at(tz: Tz, t: Local) -> DateTime<Utc> {
        tz.with_ymd_and_hms(t.y, t.mo, t.d, t.h, t.mi, 0).single().unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_runs_the_latest_tick_once_and_skips_late_ones() {
        let s = CronSchedule::parse("0 9 * * *").unwrap();
        let tz: Tz = "Europe/London".parse().unwrap();
        let hour = chrono::Duration::hours(1);
        let created = at(tz, Local { y: 2026, mo: 3, d: 1, h: 8, mi: 0 });
        // 09:20 on the 1st: the 09:00 tick is due
        assert_eq!(
            due(&s, tz, created, at(tz, Local { y: 2026, mo: 3, d: 1, h: 9, mi: 20 }), hour),
            Due::Run { tick: at(tz, Local { y: 2026, mo: 3, d: 1, h: 9, mi: 0 }) }
        );
        // after a run at 09:20 nothing is due until the next day
        assert_eq!(
            due(
                &s,
                tz,
                at(tz, Local { y: 2026, mo: 3, d: 1, h: 9, mi: 20 }),
                at(tz, Local { y: 2026, mo: 3, d: 1, h: 23, mi: 0 }),
                hour
            ),
            Due::NotDue
        );
        // three days missed: one run, for the latest tick only, when it is recent
        let last = at(tz, Local { y: 2026, mo: 3, d: 1, h: 9, mi: 20 });
        assert_eq!(
            due(&s, tz, last, at(tz, Local { y: 2026, mo: 3, d: 4, h: 9, mi: 30 }), hour),
            Due::Run { tick: at(tz, Local { y: 2026, mo: 3, d: 4, h: 9, mi: 0 }) }
        );
        // ... and not at all when even the latest is older than the deadline
        assert_eq!(
            due(&s, tz, last, at(tz, Local { y: 2026, mo: 3, d: 4, h: 10, mi: 30 }), hour),
            Due::Missed { tick: at(tz, Local { y: 2026, mo: 3, d: 4, h: 9, mi: 0 }) }
        );
        // exactly at the deadline still runs
        assert_eq!(
            due(&s, tz, last, at(tz, Local { y: 2026, mo: 3, d: 4, h: 10, mi: 0 }), hour),
            Due::Run { tick: at(tz, Local { y: 2026, mo: 3, d: 4, h: 9, mi: 0 }) }
        );
    }

    #[test]
    fn due_follows_the_campaign_zone_across_dst() {
        // London springs forward on 2026-03-29 (01:00 -> 02:00 local).
        let tz: Tz = "Europe/London".parse().unwrap();
        let s = CronSchedule::parse("0 9 * * *").unwrap();
        let before = at(tz, Local { y: 2026, mo: 3, d: 28, h: 9, mi: 0 });
        let after = at(tz, Local { y: 2026, mo: 3, d: 29, h: 9, mi: 0 });
        assert_eq!(before.hour(), 9, "GMT: 09:00 local is 09:00 UTC");
        assert_eq!(after.hour(), 8, "BST: 09:00 local is 08:00 UTC");
        assert_eq!(s.next_after(before, tz), Some(after));
        // a tick at 01:30 local does not exist on the spring-forward day
        let s = CronSchedule::parse("30 1 * * *").unwrap();
        let day_before = at(tz, Local { y: 2026, mo: 3, d: 28, h: 1, mi: 30 });
        let next = s.next_after(day_before, tz).unwrap();
        assert!(next > at(tz, Local { y: 2026, mo: 3, d: 29, h: 0, mi: 0 }), "{next}");
        assert_ne!(next.with_timezone(&tz).date_naive(), day_before.with_timezone(&tz).date_naive());
        // New York falls back on 2026-11-01: 01:30 local exists twice (EDT, then EST).
        let ny: Tz = "America/New_York".parse().unwrap();
        let s = CronSchedule::parse("30 1 * * *").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 4, 0, 0).unwrap(); // 00:00 EDT
        let end_of_day = Utc.with_ymd_and_hms(2026, 11, 2, 5, 0, 0).unwrap(); // 00:00 EST
        let ticks: Vec<DateTime<Utc>> = std::iter::successors(s.next_after(start, ny), |t| s.next_after(*t, ny))
            .take_while(|t| *t < end_of_day)
            .collect();
        assert_eq!(ticks.first(), Some(&Utc.with_ymd_and_hms(2026, 11, 1, 5, 30, 0).unwrap()), "01:30 EDT");
        assert!(ticks.len() <= 2, "{ticks:?}");
        // Whatever the crate does with the repeated hour, a run that started at the
        // first tick makes the due rule see at most that one repeat, never a pile-up.
        let last_run = ticks[0];
        let d = chrono::Duration::hours(1);
        let later = Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap();
        assert!(matches!(due(&s, ny, last_run, later, d), Due::NotDue | Due::Missed { .. }));
    }

    #[test]
    fn due_with_seven_fields_and_years() {
        let s = CronSchedule::parse("0 0 12 1 1 * 2027").unwrap();
        let since = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let d = chrono::Duration::hours(1);
        assert_eq!(due(&s, Tz::UTC, since, Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap(), d), Due::NotDue);
        assert_eq!(
            due(&s, Tz::UTC, since, Utc.with_ymd_and_hms(2027, 1, 1, 12, 30, 0).unwrap(), d),
            Due::Run { tick: Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap() }
        );
    }

    #[test]
    fn latest_tick_between_covers_missed_ticks_once() {
        let s = CronSchedule::parse("0 * * * *").unwrap();
        let from = Utc.with_ymd_and_hms(2026, 3, 1, 0, 30, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 3, 1, 5, 10, 0).unwrap();
        let latest = s.latest_tick_between(from, to, Tz::UTC, chrono::Duration::days(7)).unwrap();
        assert_eq!(latest, Utc.with_ymd_and_hms(2026, 3, 1, 5, 0, 0).unwrap());
        let none = s.latest_tick_between(to, to + chrono::Duration::minutes(10), Tz::UTC, chrono::Duration::days(7));
        assert_eq!(none, None);
    }

    /// Crontab's rules against expected next ticks: the OR of the two day fields,
    /// macros, ranges, steps, lists, and DST changes in named zones (a local time
    /// that does not exist is skipped that day; one that happens twice runs once).
    #[test]
    fn next_ticks_follow_crontab() {
        let table: &[(&str, &str, &str, &str)] = &[
            // both day fields restricted: either matches
            ("0 9 1,15 * 1", "UTC", "2026-03-02T09:00:00Z", "2026-03-09T09:00:00Z"), // a Monday
            ("0 9 1,15 * 1", "UTC", "2026-03-09T09:00:00Z", "2026-03-15T09:00:00Z"), // the 15th, a Sunday
            ("0 9 1,15 * 1", "UTC", "2026-03-30T09:00:00Z", "2026-04-01T09:00:00Z"), // the 1st, a Wednesday
            ("0 12 1-7 * 1", "UTC", "2026-03-07T13:00:00Z", "2026-03-09T12:00:00Z"), // not "the first Monday"
            ("0 9 13 * 5", "UTC", "2026-03-01T00:00:00Z", "2026-03-06T09:00:00Z"),   // any Friday, or the 13th
            ("0 9 */2 * 1", "UTC", "2026-03-02T10:00:00Z", "2026-03-03T09:00:00Z"),  // a step restricts (Kubernetes)
            ("0 9 30 2 1", "UTC", "2026-03-01T00:00:00Z", "2027-02-01T09:00:00Z"),   // Mondays in February
            ("0 9 31 * 1", "UTC", "2026-04-01T00:00:00Z", "2026-04-06T09:00:00Z"),   // April has no 31st
            ("0 9 1 * 7", "UTC", "2026-03-29T10:00:00Z", "2026-04-01T09:00:00Z"),    // the 1st before Sunday
            // one day field unrestricted: the other alone
            ("0 9 * * 1", "UTC", "2026-03-03T00:00:00Z", "2026-03-09T09:00:00Z"),
            ("0 9 */1 * 1", "UTC", "2026-03-03T00:00:00Z", "2026-03-09T09:00:00Z"),
            ("0 9 * * 5-7", "UTC", "2026-03-07T10:00:00Z", "2026-03-08T09:00:00Z"), // Friday to Sunday
            // the 6-field form keeps the cron crate's AND: Friday the 13th
            ("0 0 9 13 * FRI", "UTC", "2026-01-01T00:00:00Z", "2026-02-13T09:00:00Z"),
            // ranges, steps, lists, macros
            ("15 10-14/2 * * *", "UTC", "2026-03-01T10:15:00Z", "2026-03-01T12:15:00Z"),
            ("0 0 1 */3 *", "UTC", "2026-02-10T00:00:00Z", "2026-04-01T00:00:00Z"),
            ("0,30 9-10 * * *", "UTC", "2026-03-01T09:30:00Z", "2026-03-01T10:00:00Z"),
            ("@hourly", "UTC", "2026-03-01T10:59:00Z", "2026-03-01T11:00:00Z"),
            ("@daily", "UTC", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"),
            ("@weekly", "UTC", "2026-03-04T00:00:00Z", "2026-03-08T00:00:00Z"),
            ("@monthly", "Europe/London", "2026-03-15T00:00:00Z", "2026-03-31T23:00:00Z"), // 00:00 BST
            ("@yearly", "America/New_York", "2026-06-01T00:00:00Z", "2027-01-01T05:00:00Z"), // 00:00 EST
            // London springs forward on 2026-03-29 (01:00 GMT -> 02:00 BST)
            ("30 8 * * 1-5", "Europe/London", "2026-03-27T09:00:00Z", "2026-03-30T07:30:00Z"),
            ("0 9 * * *", "Europe/London", "2026-03-28T09:00:00Z", "2026-03-29T08:00:00Z"),
            ("30 1 * * *", "Europe/London", "2026-03-28T12:00:00Z", "2026-03-30T00:30:00Z"), // 01:30 is skipped
            ("*/15 * * * *", "Europe/London", "2026-03-29T00:50:00Z", "2026-03-29T01:00:00Z"), // 02:00 BST
            ("0 1 1,15 * 0", "Europe/London", "2026-03-28T12:00:00Z", "2026-04-01T00:00:00Z"), // Sunday's 01:00 is skipped
            // ... and falls back on 2026-10-25 (02:00 BST -> 01:00 GMT)
            ("0 9 * * 0", "Europe/London", "2026-10-18T12:00:00Z", "2026-10-25T09:00:00Z"),
            ("30 1 * * *", "Europe/London", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z"), // 01:30 BST
            ("30 1 * * *", "Europe/London", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"), // once that day
            // New York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT), falls back on 2026-11-01
            ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-09T06:30:00Z"), // 02:30 is skipped
            ("0 3 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T07:00:00Z"),
            ("0 9 1,15 * 1", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-09T13:00:00Z"), // 09:00 EDT
            ("30 1 * * *", "America/New_York", "2026-11-01T04:00:00Z", "2026-11-01T05:30:00Z"),   // 01:30 EDT
            ("30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"),   // once that day
        ];
        let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut wrong = Vec::new();
        for (expr, zone, after, expected) in table {
            let tz: Tz = zone.parse().unwrap();
            let s = CronSchedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let got = s.next_after(utc(after), tz);
            if got != Some(utc(expected)) {
                wrong.push(format!("{expr} in {zone} after {after}: expected {expected}, got {got:?}"));
            }
            // the due rule sees the same tick as the latest one up to it
            let latest = s.latest_tick_between(utc(after), utc(expected), tz, chrono::Duration::days(400));
            if latest != Some(utc(expected)) {
                wrong.push(format!("{expr} in {zone}: latest tick up to {expected} is {latest:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(table.len() >= 15);
    }

    #[test]
    fn the_or_rule_needs_both_day_fields_restricted() {
        assert!(is_unrestricted("*") && is_unrestricted("?") && is_unrestricted("*/1") && is_unrestricted("1,*"));
        assert!(
            !is_unrestricted("*/2") && !is_unrestricted("1-31") && !is_unrestricted("0-6") && !is_unrestricted("1")
        );
        // both restricted: two schedules merged; otherwise one
        assert_eq!(CronSchedule::parse("0 9 1,15 * 1").unwrap().schedules.len(), 2);
        assert_eq!(CronSchedule::parse("0 9 * * 1").unwrap().schedules.len(), 1);
        assert_eq!(CronSchedule::parse("0 0 9 1,15 * MON").unwrap().schedules.len(), 1);
        // half an OR that never fires is dropped; both never firing is refused
        assert_eq!(CronSchedule::parse("0 9 30 2 1").unwrap().schedules.len(), 1);
        assert!(matches!(CronSchedule::parse("0 9 30 2 *"), Err(ScheduleError::Invalid { .. })));
        // ticks of the two halves interleave without duplicates: the 1st of June 2026
        // is a Monday, ticked once
        let s = CronSchedule::parse("0 9 1 * 1").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 5, 31, 0, 0, 0).unwrap();
        let ticks: Vec<_> =
            std::iter::successors(s.next_after(start, Tz::UTC), |t| s.next_after(*t, Tz::UTC)).take(3).collect();
        let days: Vec<u32> = ticks.iter().map(|t| t.day()).collect();
        assert_eq!(days, [1, 8, 15], "{ticks:?}");
    }

    #[test]
    fn next_after_is_strictly_after_across_dst() {
        // every minute of both change days in both zones, for a few expressions
        for (zone, days) in [("Europe/London", [(3, 29), (10, 25)]), ("America/New_York", [(3, 8), (11, 1)])] {
            let tz: Tz = zone.parse().unwrap();
            for expr in ["30 1 * * *", "0 * * * *", "*/20 * * * *", "0 9 1,15 * 0"] {
                let s = CronSchedule::parse(expr).unwrap();
                for (m, d) in days {
                    let day = Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap();
                    for minute in (0..36 * 60).step_by(7) {
                        let t = day + chrono::Duration::minutes(minute);
                        let next = s.next_after(t, tz).unwrap();
                        assert!(next > t, "{expr} in {zone}: next after {t} is {next}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_interrupted_tick_is_resumed_whatever_the_deadline() {
        let s = CronSchedule::parse("0 9 * * 1").unwrap();
        let tz = Tz::UTC;
        let hour = chrono::Duration::hours(1);
        let created = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let monday = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        let next_monday = Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap();
        let later = Utc.with_ymd_and_hms(2026, 3, 2, 15, 0, 0).unwrap();
        // nothing in progress: the plain rule (missed after the deadline)
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &s,
                tz,
                since: created,
                in_progress: None,
                now: later,
                deadline: hour
            }),
            Due::Missed { tick: monday }
        );
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &s,
                tz,
                since: created,
                in_progress: None,
                now: monday + chrono::Duration::minutes(5),
                deadline: hour
            }),
            Due::Run { tick: monday }
        );
        // the run of Monday's tick started and did not finish: resumed hours later
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &s,
                tz,
                since: created,
                in_progress: Some(monday),
                now: later,
                deadline: hour
            }),
            Due::Resume { tick: monday, interrupted: monday }
        );
        // a finished run after the tick (done_through past it) ends that
        let finished = monday + chrono::Duration::hours(2);
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &s,
                tz,
                since: finished,
                in_progress: Some(monday),
                now: later,
                deadline: hour
            }),
            Due::NotDue
        );
        // still unfinished at the next tick: one run, for the latest tick
        let after_next = next_monday + chrono::Duration::hours(3);
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &s,
                tz,
                since: created,
                in_progress: Some(monday),
                now: after_next,
                deadline: hour
            }),
            Due::Resume { tick: next_monday, interrupted: monday }
        );
        // the schedule changed meanwhile (no tick of the new one since): still resumed
        let other = CronSchedule::parse("0 9 1 1 *").unwrap();
        assert_eq!(
            due_or_resume(&DueParams {
                schedule: &other,
                tz,
                since: created,
                in_progress: Some(monday),
                now: later,
                deadline: hour
            }),
            Due::Resume { tick: monday, interrupted: monday }
        );
    }
}
