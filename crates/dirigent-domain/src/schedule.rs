//! When triggers fire: cron expressions (5 or 6 fields) in a time zone, intervals from an
//! anchor, one-off times, weekly days and times, keep-running windows, and calendars of working
//! days. Pure: every function takes the time it computes from.
//!
//! Local times that do not exist (the hour skipped when clocks spring forward) fire once, at
//! the first valid instant after the gap; local times that occur twice (when clocks fall back)
//! fire once, at the first occurrence.

use std::{collections::BTreeSet, fmt, str::FromStr};

use jiff::{
    SignedDuration, Timestamp,
    civil::{Date, DateTime, Time},
    tz::{AmbiguousOffset, TimeZone},
};

use crate::InvalidField;

/// How far ahead a search for the next firing looks before concluding there is none.
const SEARCH_DAYS: i32 = 366 * 8;

/// A set of small numbers, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bits(u64);

impl Bits {
    fn contains(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }

    fn iter(self, low: u32, high: u32) -> impl Iterator<Item = u32> {
        (low..=high).filter(move |n| self.contains(*n))
    }
}

/// A parsed cron expression: `[second] minute hour day-of-month month day-of-week`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: Bits,
    minutes: Bits,
    hours: Bits,
    days_of_month: Bits,
    months: Bits,
    /// Sunday is 0 (7 is accepted as Sunday too).
    days_of_week: Bits,
    /// Whether the day-of-month and day-of-week fields are both restricted: then a day
    /// matches if either does (the classic cron rule).
    either_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses 5 fields (`minute hour day month weekday`) or 6 (with seconds first). Fields
    /// take `*`, numbers, names (`jan`, `mon`), ranges `a-b`, steps `*/n` or `a-b/n`, and
    /// lists `a,b`.
    pub fn parse(text: &str) -> Result<Cron, InvalidField> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(InvalidField::new(
                    "cron",
                    format!(
                        "has {n} fields; give 5 (minute hour day month weekday) or 6 (seconds first)"
                    ),
                ));
            }
        };
        let field = |name: &str, text: &str, low: u32, high: u32, names: &[&str]| {
            parse_field(text, low, high, names)
                .map_err(|reason| InvalidField::new("cron", format!("{name} {text:?}: {reason}")))
        };
        let mut days_of_week = field("weekday", rest[4], 0, 7, &WEEKDAYS)?;
        if days_of_week.contains(7) {
            days_of_week.0 |= 1;
        }
        Ok(Cron {
            text: fields.join(" "),
            seconds: field("second", seconds, 0, 59, &[])?,
            minutes: field("minute", rest[0], 0, 59, &[])?,
            hours: field("hour", rest[1], 0, 23, &[])?,
            days_of_month: field("day", rest[2], 1, 31, &[])?,
            months: field("month", rest[3], 1, 12, &MONTHS)?,
            days_of_week,
            either_day: rest[2] != "*" && rest[4] != "*",
        })
    }

    fn matches_day(&self, date: Date) -> bool {
        let by_month_day = self
            .days_of_month
            .contains(date.day().unsigned_abs().into());
        let by_weekday = self
            .days_of_week
            .contains(date.weekday().to_sunday_zero_offset().unsigned_abs().into());
        self.months.contains(date.month().unsigned_abs().into())
            && if self.either_day {
                by_month_day || by_weekday
            } else {
                by_month_day && by_weekday
            }
    }

    /// The local times of a matching day, ascending.
    fn times(&self) -> impl Iterator<Item = Time> + '_ {
        self.hours.iter(0, 23).flat_map(move |hour| {
            self.minutes.iter(0, 59).flat_map(move |minute| {
                self.seconds.iter(0, 59).filter_map(move |second| {
                    Time::new(hour as i8, minute as i8, second as i8, 0).ok()
                })
            })
        })
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Cron {
    type Err = InvalidField;

    fn from_str(text: &str) -> Result<Cron, InvalidField> {
        Cron::parse(text)
    }
}

fn parse_field(text: &str, low: u32, high: u32, names: &[&str]) -> Result<Bits, String> {
    let value = |part: &str| -> Result<u32, String> {
        if let Some(index) = names
            .iter()
            .position(|name| part.eq_ignore_ascii_case(name))
        {
            let first = if low == 0 { 0 } else { 1 };
            return Ok(index as u32 + first);
        }
        part.parse::<u32>()
            .ok()
            .filter(|n| (low..=high).contains(n))
            .ok_or_else(|| format!("{part:?} is not a number from {low} to {high}"))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step = step
                    .parse::<u32>()
                    .ok()
                    .filter(|step| 0 < *step)
                    .ok_or_else(|| format!("step {step:?} is not a positive number"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" => (low, high),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step == 1 => (value(range)?, value(range)?),
                None => (value(range)?, high),
            },
        };
        if last < first {
            return Err(format!("the range {range:?} runs backwards"));
        }
        for n in (first..=last).step_by(step as usize) {
            bits |= 1 << n;
        }
    }
    Ok(Bits(bits))
}

/// The instant a local time names in `zone`: the first occurrence of a repeated time, the
/// end of the gap for a skipped one.
pub fn resolve(zone: &TimeZone, local: DateTime) -> Option<Timestamp> {
    let ambiguous = zone.to_ambiguous_timestamp(local);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => {
            ambiguous.earlier().ok()
        }
        AmbiguousOffset::Gap { .. } => {
            // Read with the offset after the gap, the time lies before the transition; the
            // transition itself is the first valid instant.
            let before_transition = ambiguous.earlier().ok()?;
            zone.following(before_transition)
                .next()
                .map(|transition| transition.timestamp())
        }
    }
}

/// Whether `date` falls on one of `days` (Monday first).
fn on_day(days: &[bool; 7], date: Date) -> bool {
    days[date.weekday().to_monday_zero_offset().unsigned_abs() as usize]
}

/// A valid calendar name: like a robot's.
pub fn check_calendar_name(name: &str) -> Result<(), InvalidField> {
    crate::user::check_name("name", name, "._-")
}

/// Working days of the week and excluded dates (holidays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    /// Monday first.
    pub working_days: [bool; 7],
    pub excluded: BTreeSet<Date>,
}

impl Calendar {
    pub fn is_working(&self, date: Date) -> bool {
        on_day(&self.working_days, date) && !self.excluded.contains(&date)
    }

    /// The first working day on or after `date`, within the search horizon.
    pub fn next_working(&self, date: Date) -> Option<Date> {
        (0..SEARCH_DAYS)
            .filter_map(|days| date.checked_add(jiff::Span::new().days(days)).ok())
            .find(|date| self.is_working(*date))
    }

    /// Reads excluded dates from CSV (a date `YYYY-MM-DD` as the first column of each line;
    /// a header line or `#` comments are skipped) or iCalendar (`DTSTART` of each `VEVENT`).
    pub fn parse_dates(text: &str) -> Result<BTreeSet<Date>, InvalidField> {
        let mut dates = BTreeSet::new();
        if text.trim_start().starts_with("BEGIN:VCALENDAR") {
            for line in text.lines() {
                let Some(rest) = line.trim().strip_prefix("DTSTART") else {
                    continue;
                };
                let value = rest.rsplit(':').next().unwrap_or_default();
                let digits: String = value.chars().take(8).collect();
                let date = Date::strptime("%Y%m%d", &digits)
                    .map_err(|err| InvalidField::new("dates", format!("{line:?}: {err}")))?;
                dates.insert(date);
            }
            return Ok(dates);
        }
        for (number, line) in text.lines().enumerate() {
            let first = line.split([',', ';']).next().unwrap_or_default().trim();
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            match first.trim_matches('"').parse::<Date>() {
                Ok(date) => {
                    dates.insert(date);
                }
                Err(_) if number == 0 => {} // a header
                Err(err) => {
                    return Err(InvalidField::new(
                        "dates",
                        format!(
                            "line {}: {first:?} is not a date YYYY-MM-DD: {err}",
                            number + 1
                        ),
                    ));
                }
            }
        }
        Ok(dates)
    }
}

/// What a trigger following a calendar does on a day that is not a working day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffDay {
    /// No firing that day.
    Skip,
    /// The firing moves to the next working day, at the same local time.
    NextWorkingDay,
}

/// When a trigger fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron {
        cron: Cron,
        zone: TimeZone,
    },
    /// Every `every`, at `anchor + k × every`.
    Interval {
        every: SignedDuration,
        anchor: Timestamp,
    },
    Once {
        at: Timestamp,
    },
    /// The given days of the week (Monday first), at each of the given local times.
    Weekly {
        days: [bool; 7],
        times: Vec<Time>,
        zone: TimeZone,
    },
    /// Keep running inside a window; its firings are the openings.
    Window(Window),
}

impl Schedule {
    /// The time zone local dates are read in (for calendars): the schedule's own, or UTC.
    pub fn zone(&self) -> TimeZone {
        match self {
            Schedule::Cron { zone, .. } | Schedule::Weekly { zone, .. } => zone.clone(),
            Schedule::Window(window) => window.zone.clone(),
            Schedule::Interval { .. } | Schedule::Once { .. } => TimeZone::UTC,
        }
    }

    /// The first firing strictly after `after`, ignoring calendars.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Once { at } => (after < *at).then_some(*at),
            Schedule::Interval { every, anchor } => {
                let every_ms = every.as_millis();
                if every_ms <= 0 {
                    return None;
                }
                if after < *anchor {
                    return Some(*anchor);
                }
                let elapsed = after.duration_since(*anchor).as_millis();
                let periods = elapsed / every_ms + 1;
                let offset = i64::try_from(periods.checked_mul(every_ms)?).ok()?;
                anchor.checked_add(SignedDuration::from_millis(offset)).ok()
            }
            Schedule::Cron { cron, zone } => next_local(zone, after, |date| {
                if cron.matches_day(date) {
                    cron.times().collect()
                } else {
                    Vec::new()
                }
            }),
            Schedule::Window(window) => window.opening().next_after(after),
            Schedule::Weekly { days, times, zone } => {
                let mut sorted = times.clone();
                sorted.sort();
                next_local(zone, after, |date| {
                    if on_day(days, date) {
                        sorted.clone()
                    } else {
                        Vec::new()
                    }
                })
            }
        }
    }

    /// The first firing strictly after `after`, with a calendar's off days skipped or moved.
    pub fn next_with_calendar(
        &self,
        after: Timestamp,
        calendar: Option<(&Calendar, OffDay)>,
    ) -> Option<Timestamp> {
        let Some((calendar, off_day)) = calendar else {
            return self.next_after(after);
        };
        let zone = self.zone();
        // The earliest firing moved off an off day so far; a later regular firing cannot
        // come before it.
        let mut moved: Option<Timestamp> = None;
        let mut cursor = after;
        for _ in 0..100_000 {
            let Some(next) = self.next_after(cursor) else {
                return moved;
            };
            if moved.is_some_and(|moved| moved <= next) {
                return moved;
            }
            let local = next.to_zoned(zone.clone()).datetime();
            if calendar.is_working(local.date()) {
                return Some(next);
            }
            if off_day == OffDay::NextWorkingDay
                && let Some(day) = calendar.next_working(local.date())
                && let Some(at) = resolve(&zone, day.to_datetime(local.time()))
            {
                moved = Some(moved.map_or(at, |moved| moved.min(at)));
            }
            cursor = next;
        }
        moved
    }

    /// The next `count` firings after `from`: the preview of a trigger.
    pub fn preview(
        &self,
        from: Timestamp,
        count: usize,
        calendar: Option<(&Calendar, OffDay)>,
    ) -> Vec<Timestamp> {
        let mut times = Vec::with_capacity(count);
        let mut cursor = from;
        while times.len() < count {
            let Some(next) = self.next_with_calendar(cursor, calendar) else {
                break;
            };
            times.push(next);
            cursor = next;
        }
        times
    }
}

/// The first instant after `after` at one of the local times `times_of(date)` yields for the
/// dates from `after`'s local date on.
fn next_local(
    zone: &TimeZone,
    after: Timestamp,
    times_of: impl Fn(Date) -> Vec<Time>,
) -> Option<Timestamp> {
    // Start a day early: a local time of the previous date can map after `after` near a
    // transition.
    let start = after.to_zoned(zone.clone()).date().yesterday().ok()?;
    for days in 0..SEARCH_DAYS {
        let date = start.checked_add(jiff::Span::new().days(days)).ok()?;
        for time in times_of(date) {
            if let Some(instant) = resolve(zone, date.to_datetime(time))
                && after < instant
            {
                return Some(instant);
            }
        }
    }
    None
}

/// A keep-running window: open from `open` to `close` local time on the given days (a window
/// closing at or before it opens runs past midnight into the next day).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    pub open: Time,
    pub close: Time,
    pub zone: TimeZone,
}

impl Window {
    fn opening(&self) -> Schedule {
        Schedule::Weekly {
            days: self.days,
            times: vec![self.open],
            zone: self.zone.clone(),
        }
    }

    /// When the window that opened at `opened` closes.
    fn closing_of(&self, opened: Timestamp) -> Option<Timestamp> {
        let local = opened.to_zoned(self.zone.clone()).datetime();
        let mut date = local.date();
        if self.close <= self.open {
            date = date.tomorrow().ok()?;
        }
        resolve(&self.zone, date.to_datetime(self.close))
    }

    /// Whether the window is open at `now`, and until when (if open) or from when (if not).
    pub fn state(&self, now: Timestamp) -> (bool, Option<Timestamp>) {
        // The latest opening at or before now: search from a little over a week back.
        let week_ago = now - SignedDuration::from_hours(24 * 8);
        let opening = self.opening();
        let mut latest = None;
        let mut cursor = week_ago;
        while let Some(next) = opening.next_after(cursor) {
            if now < next {
                break;
            }
            latest = Some(next);
            cursor = next;
        }
        if let Some(opened) = latest
            && let Some(closes) = self.closing_of(opened)
            && now < closes
        {
            return (true, Some(closes));
        }
        (false, opening.next_after(now))
    }
}

/// What happens to firings missed while the orchestrator was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// None of them run.
    Skip,
    /// The latest of them runs, once.
    RunOnce,
    /// Each of them within the catch-up window runs.
    RunAll { within: SignedDuration },
}

/// The firings due between `last` (exclusive) and `now` (inclusive) that should still run
/// after downtime, oldest first; at most `limit`.
pub fn missed_firings(
    schedule: &Schedule,
    calendar: Option<(&Calendar, OffDay)>,
    last: Timestamp,
    now: Timestamp,
    policy: Missed,
    limit: usize,
) -> Vec<Timestamp> {
    let mut due = Vec::new();
    let mut cursor = last;
    while let Some(next) = schedule.next_with_calendar(cursor, calendar) {
        if now < next {
            break;
        }
        due.push(next);
        cursor = next;
        if matches!(policy, Missed::RunAll { .. }) && limit <= due.len() {
            break;
        }
    }
    match policy {
        Missed::Skip => Vec::new(),
        Missed::RunOnce => due.pop().into_iter().collect(),
        Missed::RunAll { within } => due
            .into_iter()
            .filter(|at| now.duration_since(*at) <= within)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    /// (cron, zone, from) → the next firings, in UTC. Each daylight-saving change in both
    /// hemispheres: a skipped local time fires once at the end of the gap, a repeated one
    /// once at its first occurrence.
    const CRON_CASES: &[(&str, &str, &str, &[&str])] = &[
        // Berlin springs forward on 2027-03-28 at 02:00 → 03:00 (01:00Z).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2027-03-27T12:00:00Z",
            &["2027-03-28T01:00:00Z", "2027-03-29T00:30:00Z"],
        ),
        (
            "*/15 2 * * *",
            "Europe/Berlin",
            "2027-03-27T12:00:00Z",
            &[
                "2027-03-28T01:00:00Z",
                "2027-03-29T00:00:00Z",
                "2027-03-29T00:15:00Z",
            ],
        ),
        // Berlin falls back on 2027-10-31 at 03:00 → 02:00 (01:00Z): 02:00 and 02:30 happen
        // twice and fire once, at +02:00.
        (
            "0,30 1-2 * * *",
            "Europe/Berlin",
            "2027-10-30T22:00:00Z",
            &[
                "2027-10-30T23:00:00Z",
                "2027-10-30T23:30:00Z",
                "2027-10-31T00:00:00Z",
                "2027-10-31T00:30:00Z",
                "2027-11-01T00:00:00Z",
            ],
        ),
        // Sydney springs forward on 2027-10-03 at 02:00 → 03:00 (2027-10-02T16:00Z) …
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2027-10-02T00:00:00Z",
            &["2027-10-02T16:00:00Z", "2027-10-03T15:30:00Z"],
        ),
        // … and falls back on 2027-04-04 at 03:00 → 02:00 (2027-04-03T16:00Z).
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2027-04-03T00:00:00Z",
            &["2027-04-03T15:30:00Z", "2027-04-04T16:30:00Z"],
        ),
        // Six fields: seconds first.
        (
            "*/20 * * * * *",
            "UTC",
            "2027-01-01T00:00:05Z",
            &[
                "2027-01-01T00:00:20Z",
                "2027-01-01T00:00:40Z",
                "2027-01-01T00:01:00Z",
            ],
        ),
        // Both day fields restricted: the 13th, or a Friday.
        (
            "0 0 13 * fri",
            "UTC",
            "2027-08-01T00:00:00Z",
            &[
                "2027-08-06T00:00:00Z",
                "2027-08-13T00:00:00Z",
                "2027-08-20T00:00:00Z",
                "2027-08-27T00:00:00Z",
                "2027-09-03T00:00:00Z",
                "2027-09-10T00:00:00Z",
                "2027-09-13T00:00:00Z",
            ],
        ),
        // Names, and New York's own change (2027-03-14): Monday 09:00 is now at -04:00.
        (
            "0 9 * * MON-FRI",
            "America/New_York",
            "2027-03-12T15:00:00Z",
            &["2027-03-15T13:00:00Z", "2027-03-16T13:00:00Z"],
        ),
        (
            "0 12 29 feb *",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"],
        ),
    ];

    #[test]
    fn cron_cases() {
        for (expr, zone_name, from, expected) in CRON_CASES {
            let schedule = Schedule::Cron {
                cron: Cron::parse(expr).unwrap(),
                zone: zone(zone_name),
            };
            let got: Vec<String> = schedule
                .preview(ts(from), expected.len(), None)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(&got, expected, "{expr} in {zone_name} from {from}");
        }
    }

    #[test]
    fn bad_cron_names_the_field() {
        for (expr, part) in [
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day"),
            ("* * * 13 *", "month"),
            ("* * * * funday", "weekday"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("* * *", "fields"),
        ] {
            let err = Cron::parse(expr).unwrap_err();
            assert_eq!(err.field, "cron");
            assert!(err.reason.contains(part), "{expr}: {}", err.reason);
        }
    }

    #[test]
    fn intervals_once_and_weekly() {
        let every = Schedule::Interval {
            every: SignedDuration::from_secs(90),
            anchor: ts("2027-01-01T00:00:00Z"),
        };
        let got = every.preview(ts("2027-01-01T00:04:00Z"), 2, None);
        assert_eq!(
            got,
            [ts("2027-01-01T00:04:30Z"), ts("2027-01-01T00:06:00Z")]
        );
        assert_eq!(
            every.next_after(ts("2026-12-31T00:00:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );

        let once = Schedule::Once {
            at: ts("2027-05-01T10:00:00Z"),
        };
        assert_eq!(
            once.preview(ts("2027-01-01T00:00:00Z"), 3, None),
            [ts("2027-05-01T10:00:00Z")]
        );
        assert_eq!(once.next_after(ts("2027-05-01T10:00:00Z")), None);

        // Tuesdays and Thursdays at 07:30 and 16:00 in Berlin (summer: +02:00).
        let weekly = Schedule::Weekly {
            days: [false, true, false, true, false, false, false],
            times: vec![Time::constant(16, 0, 0, 0), Time::constant(7, 30, 0, 0)],
            zone: zone("Europe/Berlin"),
        };
        let got = weekly.preview(ts("2027-06-01T06:00:00Z"), 3, None);
        assert_eq!(
            got,
            [
                ts("2027-06-01T14:00:00Z"),
                ts("2027-06-03T05:30:00Z"),
                ts("2027-06-03T14:00:00Z")
            ]
        );
    }

    fn holidays() -> Calendar {
        let dates = Calendar::parse_dates(
            "date,name\n2027-12-24,Christmas Eve\n# office closed\n2027-12-27,Boxing Day (observed)\n",
        )
        .unwrap();
        Calendar {
            working_days: [true, true, true, true, true, false, false],
            excluded: dates,
        }
    }

    #[test]
    fn calendars_skip_or_move_off_days() {
        // Fridays at 08:00 in Berlin (winter: +01:00); Friday 2027-12-24 is a holiday.
        let fridays = Schedule::Cron {
            cron: Cron::parse("0 8 * * fri").unwrap(),
            zone: zone("Europe/Berlin"),
        };
        let calendar = holidays();
        let from = ts("2027-12-20T00:00:00Z");
        assert_eq!(
            fridays.preview(from, 2, Some((&calendar, OffDay::Skip))),
            [ts("2027-12-31T07:00:00Z"), ts("2028-01-07T07:00:00Z")]
        );
        // Moved to the next working day: Monday the 27th is a holiday too.
        assert_eq!(
            fridays.preview(from, 3, Some((&calendar, OffDay::NextWorkingDay))),
            [
                ts("2027-12-28T07:00:00Z"),
                ts("2027-12-31T07:00:00Z"),
                ts("2028-01-07T07:00:00Z")
            ]
        );
        // A daily trigger moved from the long weekend fires once on the Tuesday.
        let daily = Schedule::Cron {
            cron: Cron::parse("0 8 * * *").unwrap(),
            zone: zone("Europe/Berlin"),
        };
        assert_eq!(
            daily.preview(
                ts("2027-12-23T12:00:00Z"),
                2,
                Some((&calendar, OffDay::NextWorkingDay))
            ),
            [ts("2027-12-28T07:00:00Z"), ts("2027-12-29T07:00:00Z")]
        );
    }

    #[test]
    fn holidays_come_from_csv_or_icalendar() {
        assert_eq!(holidays().excluded.len(), 2);
        let ical = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20271225\r\nSUMMARY:Christmas\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nDTSTART:20280101T000000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let dates: Vec<String> = Calendar::parse_dates(ical)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(dates, ["2027-12-25", "2028-01-01"]);
        let err = Calendar::parse_dates("2027-12-24\nsoon\n").unwrap_err();
        assert!(err.reason.contains("line 2"), "{}", err.reason);
    }

    #[test]
    fn windows_are_open_between_their_times() {
        let office = Window {
            days: [true, true, true, true, true, false, false],
            open: Time::constant(8, 0, 0, 0),
            close: Time::constant(18, 0, 0, 0),
            zone: zone("Europe/Berlin"),
        };
        // Monday 2027-06-07, summer time (+02:00).
        assert_eq!(
            office.state(ts("2027-06-07T10:00:00Z")),
            (true, Some(ts("2027-06-07T16:00:00Z")))
        );
        assert_eq!(
            office.state(ts("2027-06-07T17:00:00Z")),
            (false, Some(ts("2027-06-08T06:00:00Z")))
        );
        // Saturday: closed until Monday.
        assert_eq!(
            office.state(ts("2027-06-12T10:00:00Z")),
            (false, Some(ts("2027-06-14T06:00:00Z")))
        );
        let night = Window {
            days: [true; 7],
            open: Time::constant(22, 0, 0, 0),
            close: Time::constant(6, 0, 0, 0),
            zone: TimeZone::UTC,
        };
        assert_eq!(
            night.state(ts("2027-06-08T02:00:00Z")),
            (true, Some(ts("2027-06-08T06:00:00Z")))
        );
    }

    #[test]
    fn missed_firings_follow_their_policy() {
        let hourly = Schedule::Cron {
            cron: Cron::parse("0 * * * *").unwrap(),
            zone: TimeZone::UTC,
        };
        let (last, now) = (ts("2027-01-01T00:00:00Z"), ts("2027-01-01T05:30:00Z"));
        let missed = |policy| missed_firings(&hourly, None, last, now, policy, 100);
        assert!(missed(Missed::Skip).is_empty());
        assert_eq!(missed(Missed::RunOnce), [ts("2027-01-01T05:00:00Z")]);
        assert_eq!(
            missed(Missed::RunAll {
                within: SignedDuration::from_hours(2)
            }),
            [ts("2027-01-01T04:00:00Z"), ts("2027-01-01T05:00:00Z")]
        );
        assert_eq!(
            missed_firings(
                &hourly,
                None,
                last,
                ts("2027-01-01T00:59:00Z"),
                Missed::RunOnce,
                100
            ),
            []
        );
    }
}
