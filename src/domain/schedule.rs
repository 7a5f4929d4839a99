//! Cron schedules in two spellings: the 5-field crontab form (`0 9 * * 1-5`, Sunday
//! is 0 or 7) and the cron crate's 6/7-field form with seconds (and years), read in a
//! campaign's time zone.
//!
//! The cron crate numbers weekdays differently from crontab, so the 5-field form's
//! day-of-week field is rewritten to names (`MON,TUE,...`), which both agree on.

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
    #[error("schedule {expr:?} is not valid: {reason}")]
    Invalid { expr: String, reason: String },
}

/// A parsed schedule; it keeps the text it was written as.
#[derive(Clone)]
pub struct CronSchedule {
    written: String,
    schedule: cron::Schedule,
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

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
        let cron_form = match fields.len() {
            5 => {
                let dow = crontab_day_of_week(fields[4])
                    .map_err(|item| ScheduleError::DayOfWeek { expr: written.clone(), item })?;
                format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], dow)
            }
            6 | 7 => fields.join(" "),
            n => return Err(ScheduleError::FieldCount { expr: written, fields: n }),
        };
        let schedule = cron::Schedule::from_str(&cron_form)
            .map_err(|e| ScheduleError::Invalid { expr: written.clone(), reason: e.to_string() })?;
        // An expression that never fires (say, 30 February) is a mistake, not a schedule.
        if schedule.upcoming(Utc).next().is_none() {
            return Err(ScheduleError::Invalid { expr: written, reason: "it never fires".into() });
        }
        Ok(Self { written, schedule })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The first tick strictly after `after`, reading the fields in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.schedule.after(&after.with_timezone(&tz)).next().map(|t| t.with_timezone(&Utc))
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
        let mut latest = None;
        for t in self.schedule.after(&start.with_timezone(&tz)) {
            let t = t.with_timezone(&Utc);
            if t > to {
                break;
            }
            latest = Some(t);
        }
        latest
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

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
        assert!(matches!(CronSchedule::parse("61 9 * * *"), Err(ScheduleError::Invalid { .. })));
        assert!(CronSchedule::parse("@daily").is_ok());
    }

    fn at(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_runs_the_latest_tick_once_and_skips_late_ones() {
        let s = CronSchedule::parse("0 9 * * *").unwrap();
        let tz: Tz = "Europe/London".parse().unwrap();
        let hour = chrono::Duration::hours(1);
        let created = at(tz, 2026, 3, 1, 8, 0);
        // 09:20 on the 1st: the 09:00 tick is due
        assert_eq!(due(&s, tz, created, at(tz, 2026, 3, 1, 9, 20), hour), Due::Run { tick: at(tz, 2026, 3, 1, 9, 0) });
        // after a run at 09:20 nothing is due until the next day
        assert_eq!(due(&s, tz, at(tz, 2026, 3, 1, 9, 20), at(tz, 2026, 3, 1, 23, 0), hour), Due::NotDue);
        // three days missed: one run, for the latest tick only, when it is recent
        let last = at(tz, 2026, 3, 1, 9, 20);
        assert_eq!(due(&s, tz, last, at(tz, 2026, 3, 4, 9, 30), hour), Due::Run { tick: at(tz, 2026, 3, 4, 9, 0) });
        // ... and not at all when even the latest is older than the deadline
        assert_eq!(due(&s, tz, last, at(tz, 2026, 3, 4, 10, 30), hour), Due::Missed { tick: at(tz, 2026, 3, 4, 9, 0) });
        // exactly at the deadline still runs
        assert_eq!(due(&s, tz, last, at(tz, 2026, 3, 4, 10, 0), hour), Due::Run { tick: at(tz, 2026, 3, 4, 9, 0) });
    }

    #[test]
    fn due_follows_the_campaign_zone_across_dst() {
        // London springs forward on 2026-03-29 (01:00 -> 02:00 local).
        let tz: Tz = "Europe/London".parse().unwrap();
        let s = CronSchedule::parse("0 9 * * *").unwrap();
        let before = at(tz, 2026, 3, 28, 9, 0);
        let after = at(tz, 2026, 3, 29, 9, 0);
        assert_eq!(before.hour(), 9, "GMT: 09:00 local is 09:00 UTC");
        assert_eq!(after.hour(), 8, "BST: 09:00 local is 08:00 UTC");
        assert_eq!(s.next_after(before, tz), Some(after));
        // a tick at 01:30 local does not exist on the spring-forward day
        let s = CronSchedule::parse("30 1 * * *").unwrap();
        let day_before = at(tz, 2026, 3, 28, 1, 30);
        let next = s.next_after(day_before, tz).unwrap();
        assert!(next > at(tz, 2026, 3, 29, 0, 0), "{next}");
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
}
