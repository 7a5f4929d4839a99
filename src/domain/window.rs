//! Send windows: the hours and days, in the user's own time zone, when a message
//! may leave (`delivery.send_window`, `delivery.send_days`).
//!
//! Decisions:
//! - A window belongs to the day it opens on: `22:00-06:00` with `send_days =
//!   ["fri"]` runs from Friday 22:00 to Saturday 06:00.
//! - Across a DST change a local time can be missing (spring) or happen twice
//!   (autumn). A missing opening or closing time moves to the first instant after
//!   the gap; a repeated one is its first occurrence, so a window never closes late.
//! - The user's zone is read from their record; when it is missing or not an IANA
//!   zone, the campaign's `timezone` is used, and the caller counts that.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// A validated window: opening and closing times and the days it opens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    open: NaiveTime,
    /// `None`: midnight at the end of the day (`24:00`).
    close: Option<NaiveTime>,
    /// Monday first.
    days: [bool; 7],
}

/// A window written wrongly; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WindowError {
    /// `delivery.send_window` or `delivery.send_days`.
    pub field: &'static str,
    pub message: String,
}

fn window_error(message: String) -> WindowError {
    WindowError { field: "delivery.send_window", message }
}

fn days_error(message: String) -> WindowError {
    WindowError { field: "delivery.send_days", message }
}

/// The spellings of `send_days`, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl SendWindow {
    /// From `send_window` (`"09:00-19:00"`; absent: the whole day) and `send_days`
    /// (`["mon", …]`; absent: every day).
    ///
    /// # Errors
    /// [`WindowError`] naming what is wrong, for the caller to put beside the key.
    pub fn parse(window: Option<&str>, days: Option<&[String]>) -> Result<Self, WindowError> {
        let (open, close) = match window {
            None => (NaiveTime::MIN, None),
            Some(w) => {
                let bad = || window_error(format!("{w:?} is not a window like \"09:00-19:00\" (24-hour HH:MM-HH:MM)"));
                let (a, b) = w.split_once('-').ok_or_else(bad)?;
                let open = parse_hm(a.trim()).ok_or_else(bad)?;
                let close = if b.trim() == "24:00" { None } else { Some(parse_hm(b.trim()).ok_or_else(bad)?) };
                if close == Some(open) {
                    return Err(window_error(format!(
                        "{w:?} opens and closes at the same time; leave send_window out for the whole day"
                    )));
                }
                (open, close)
            }
        };
        let mut set = [days.is_none(); 7];
        if let Some(days) = days {
            if days.is_empty() {
                return Err(days_error("must name at least one day".into()));
            }
            for d in days {
                let i = DAY_NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(d.trim()))
                    .ok_or_else(|| days_error(format!("{d:?} is not a day: use {}", DAY_NAMES.join(", "))))?;
                set[i] = true;
            }
        }
        Ok(Self { open, close, days: set })
    }

    /// Whether the window crosses midnight (`22:00-06:00`).
    fn crosses_midnight(&self) -> bool {
        self.close.is_some_and(|c| c < self.open)
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days[day.num_days_from_monday() as usize]
    }

    /// `None` when `now` is inside a window in `tz`; else the instant the next
    /// window opens.
    pub fn next_opening(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        let mut next: Option<DateTime<Utc>> = None;
        // yesterday's window may still be open (crossing midnight); a week and a day
        // ahead always holds an opening
        for offset in -1i64..=8 {
            let Some(day) = shift(today, offset) else { continue };
            if !self.opens_on(day.weekday_of()) {
                continue;
            }
            let open = resolve(tz, day, self.open);
            let close = match self.close {
                Some(c) if self.crosses_midnight() => shift(day, 1).map(|d| resolve(tz, d, c)),
                Some(c) => Some(resolve(tz, day, c)),
                None => shift(day, 1).map(|d| resolve(tz, d, NaiveTime::MIN)),
            };
            let Some(close) = close else { continue };
            if open <= now && now < close {
                return None;
            }
            if open > now && next.is_none_or(|n| open < n) {
                next = Some(open);
            }
        }
        next
    }
}

trait WeekdayOf {
    fn weekday_of(&self) -> Weekday;
}

impl WeekdayOf for NaiveDate {
    fn weekday_of(&self) -> Weekday {
        chrono::Datelike::weekday(self)
    }
}

fn shift(day: NaiveDate, by: i64) -> Option<NaiveDate> {
    if by >= 0 {
        day.checked_add_days(Days::new(by.unsigned_abs()))
    } else {
        day.checked_sub_days(Days::new(by.unsigned_abs()))
    }
}

fn parse_hm(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// A local date and time in `tz` as an instant: the first occurrence of a repeated
/// time, the end of the gap for a missing one.
fn resolve(tz: Tz, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let mut local = day.and_time(time);
    // DST gaps are at most a few hours; step a minute at a time to the first
    // instant that exists
    for _ in 0..=240 {
        if let Some(at) = tz.from_local_datetime(&local).earliest() {
            return at.with_timezone(&Utc);
        }
        local += chrono::Duration::minutes(1);
    }
    Utc.from_utc_datetime(&day.and_time(time))
}

/// The zone to read a user's window in: theirs when it is a valid IANA zone, else
/// the campaign's; the flag says whether the fallback was taken.
pub fn user_zone(user: Option<&str>, campaign: Tz) -> (Tz, bool) {
    match user.map(str::trim).filter(|z| !z.is_empty()).and_then(|z| z.parse::<Tz>().ok()) {
        Some(tz) => (tz, false),
        None => (campaign, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn tz(s: &str) -> Tz {
        s.parse().unwrap()
    }
    fn days(d: &[&str]) -> Vec<String> {
        d.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_and_refuses() {
        assert!(SendWindow::parse(Some("09:00-19:00"), None).is_ok());
        assert!(SendWindow::parse(Some("22:00-06:00"), Some(&days(&["mon", "Fri"]))).is_ok());
        assert!(SendWindow::parse(Some("08:00-24:00"), None).is_ok());
        for bad in ["9-19", "09:00", "25:00-26:00", "09:00-09:00", "0900-1900"] {
            assert!(SendWindow::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert!(SendWindow::parse(None, Some(&days(&["monday"]))).is_err());
        assert!(SendWindow::parse(None, Some(&[])).is_err());
    }

    #[test]
    fn a_day_window_in_the_users_zone() {
        let w = SendWindow::parse(Some("09:00-19:00"), Some(&days(&["mon", "tue", "wed", "thu", "fri"]))).unwrap();
        // Friday 27 Nov 2026 08:00 UTC: 17:00 in Tokyo (open), 08:00 in London (closed)
        let now = at("2026-11-27T08:00:00Z");
        assert_eq!(w.next_opening(now, tz("Asia/Tokyo")), None);
        assert_eq!(w.next_opening(now, tz("Europe/London")), Some(at("2026-11-27T09:00:00Z")));
        // 19:00 is closed; in Tokyo the next opening is Monday 09:00 JST
        assert_eq!(w.next_opening(at("2026-11-27T10:00:00Z"), tz("Asia/Tokyo")), Some(at("2026-11-30T00:00:00Z")));
        // Los Angeles, Friday 00:00 PST: opens at 09:00 PST
        assert_eq!(
            w.next_opening(at("2026-11-27T08:00:00Z"), tz("America/Los_Angeles")),
            Some(at("2026-11-27T17:00:00Z"))
        );
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opens() {
        let w = SendWindow::parse(Some("22:00-06:00"), Some(&days(&["fri"]))).unwrap();
        let utc = tz("UTC");
        assert_eq!(w.next_opening(at("2026-11-27T21:59:00Z"), utc), Some(at("2026-11-27T22:00:00Z")));
        assert_eq!(w.next_opening(at("2026-11-27T23:00:00Z"), utc), None);
        assert_eq!(w.next_opening(at("2026-11-28T05:59:00Z"), utc), None, "Saturday morning is Friday's window");
        assert_eq!(w.next_opening(at("2026-11-28T06:00:00Z"), utc), Some(at("2026-12-04T22:00:00Z")));
        // Friday 03:00 is Thursday's window, and Thursday is not a send day
        assert_eq!(w.next_opening(at("2026-11-27T03:00:00Z"), utc), Some(at("2026-11-27T22:00:00Z")));
    }

    #[test]
    fn dst_changes_move_the_instants_not_the_local_hours() {
        let w = SendWindow::parse(Some("09:00-19:00"), None).unwrap();
        let london = tz("Europe/London");
        // Saturday 28 March 2026 is GMT, Sunday 29 March BST: 09:00 local is 08:00 UTC
        assert_eq!(w.next_opening(at("2026-03-28T20:00:00Z"), london), Some(at("2026-03-29T08:00:00Z")));
        assert_eq!(w.next_opening(at("2026-03-29T18:30:00Z"), london), Some(at("2026-03-30T08:00:00Z")));
        assert_eq!(w.next_opening(at("2026-03-29T17:59:00Z"), london), None);
        // a window opening inside the spring gap (01:00-02:00 missing) opens at 02:00 BST
        let gap = SendWindow::parse(Some("01:30-03:00"), None).unwrap();
        assert_eq!(gap.next_opening(at("2026-03-29T00:00:00Z"), london), Some(at("2026-03-29T01:00:00Z")));
        // autumn: 01:30 happens twice on 25 October 2026; the window opens at the first
        assert_eq!(gap.next_opening(at("2026-10-24T23:00:00Z"), london), Some(at("2026-10-25T00:30:00Z")));
    }

    #[test]
    fn an_unknown_zone_falls_back_to_the_campaigns() {
        let c = tz("Europe/Paris");
        assert_eq!(user_zone(Some("Asia/Tokyo"), c), (tz("Asia/Tokyo"), false));
        assert_eq!(user_zone(Some("Mars/Olympus"), c), (c, true));
        assert_eq!(user_zone(None, c), (c, true));
    }
}
