//! Weekly maintenance windows: whether a window is open at a given instant, and when it next
//! opens or closes.
//!
//! A window opens on each listed weekday, counted on the calendar of its time zone, at the
//! local `start`, and stays open for `duration` of real time, so an opening may cross midnight
//! and a DST change. Openings that overlap or touch count as one.
//! This module owns that arithmetic and nothing else: it is pure (the instant is passed in,
//! there is no clock) and it does not decide what may run in a window; the policy does.

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
    Utc,
};
use chrono_tz::Tz;

use crate::model::Window;

/// Where an instant stands relative to a weekly maintenance window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Inside an opening of the window, which closes at `closes`.
    ///
    /// `closes` is the end of the merged opening when openings overlap or touch.
    /// It is [`DateTime::<Utc>::MAX_UTC`] when the window never closes: its openings follow
    /// each other without a gap for more than a year (every day for 24 hours or more in a zone
    /// without DST, or a week-long window).
    Open { closes: DateTime<Utc> },
    /// Outside; the next opening starts at `opens`.
    ///
    /// `opens` is [`DateTime::<Utc>::MAX_UTC`] only when no opening can be represented, within
    /// days of the end of chrono's time range.
    Closed { opens: DateTime<Utc> },
}

/// The state of `window` at `at`.
///
/// On a day whose local `start` falls into a DST gap, the opening starts at the first instant
/// after the gap; when the local `start` happens twice, at the earlier one.
/// A window without days opens every day, as in fleet files; a duration outside one minute to
/// one week is taken as the nearest of the two.
/// Never panics.
pub fn state(window: &Window, at: DateTime<Utc>) -> WindowState {
    let tz = window.timezone.tz();
    // Only at the ends of chrono's range is the local date not representable; the UTC date
    // is then a day off at most, which the search below absorbs.
    let today = local(tz, at).map_or(at.date_naive(), |local| local.date());
    // An opening that contains `at` started at most a week (plus a DST shift) before it, and
    // the next opening starts within a week after it, so these dates hold every candidate.
    // Openings of later dates start no earlier, so the last containing one ends the latest
    // and the first one after `at` is the next opening.
    let mut containing = None;
    let mut next = None;
    for date in (-LOOK_AROUND_DAYS..=LOOK_AROUND_DAYS).filter_map(|offset| shift(today, offset)) {
        let Some((opens, closes)) = opening(window, tz, date) else {
            continue;
        };
        if opens <= at && at < closes {
            containing = Some((date, closes));
        } else if opens > at && next.is_none() {
            next = Some(opens);
        }
    }
    if let Some((date, closes)) = containing {
        return WindowState::Open {
            closes: merged_close(window, tz, date, closes),
        };
    }
    WindowState::Closed {
        opens: next.unwrap_or(DateTime::<Utc>::MAX_UTC),
    }
}

/// The first instant at or after `at` when the window is open (`at` itself when open).
///
/// [`DateTime::<Utc>::MAX_UTC`] when the window cannot open any more within chrono's range.
pub fn next_open(window: &Window, at: DateTime<Utc>) -> DateTime<Utc> {
    match state(window, at) {
        WindowState::Open { .. } => at,
        WindowState::Closed { opens } => opens,
    }
}

/// How many local dates before and after the date of the instant asked about are searched.
const LOOK_AROUND_DAYS: i64 = 8;

/// After this many days of openings without a gap, a window is taken never to close.
/// More than a year, so that every yearly DST change is seen.
const NEVER_CLOSES_AFTER_DAYS: i64 = 400;

/// The longest duration that matters: a week, as validation allows.
const WEEK_MINUTES: u32 = 7 * 24 * 60;

/// The end of the merged opening that includes the opening of `date`, which ends at `closes`.
fn merged_close(
    window: &Window,
    tz: Tz,
    date: NaiveDate,
    mut closes: DateTime<Utc>,
) -> DateTime<Utc> {
    for offset in 1..=NEVER_CLOSES_AFTER_DAYS {
        let Some(date) = shift(date, offset) else {
            return closes;
        };
        let Some((next_opens, next_closes)) = opening(window, tz, date) else {
            continue;
        };
        if next_opens > closes {
            return closes;
        }
        closes = closes.max(next_closes);
    }
    DateTime::<Utc>::MAX_UTC
}

/// The opening of the window on local `date` as `(opens, closes)`, if it opens that day.
///
/// `None` also when the instants fall outside chrono's range.
fn opening(window: &Window, tz: Tz, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let listed = window.days.is_empty()
        || window
            .days
            .iter()
            .any(|day| day.to_chrono() == date.weekday());
    if !listed {
        return None;
    }
    let start = date.and_time(window.start.time());
    let opens = match tz.from_local_datetime(&start) {
        LocalResult::Single(opens) => opens.to_utc(),
        LocalResult::Ambiguous(first, second) => first.to_utc().min(second.to_utc()),
        LocalResult::None => first_after_gap(tz, start)?,
    };
    let minutes = window.duration.get().clamp(1, WEEK_MINUTES);
    let closes = opens
        .checked_add_signed(TimeDelta::minutes(i64::from(minutes)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Some((opens, closes))
}

/// The first instant whose local time in `tz` is later than `skipped`, a local time that does
/// not exist: the instant the clocks jumped over it.
fn first_after_gap(tz: Tz, skipped: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Offsets are less than a day, so a day either side of `skipped` read as UTC brackets
    // the jump; local time rises through the bracket, so bisect on whole seconds (offsets and
    // transitions are whole seconds).
    let mut before = skipped
        .checked_sub_days(Days::new(1))?
        .and_utc()
        .timestamp();
    let mut after = skipped
        .checked_add_days(Days::new(1))?
        .and_utc()
        .timestamp();
    while after - before > 1 {
        let middle = before + (after - before) / 2;
        if local(tz, DateTime::from_timestamp(middle, 0)?)? > skipped {
            after = middle;
        } else {
            before = middle;
        }
    }
    DateTime::from_timestamp(after, 0)
}

/// The local time of `at` in `tz`, if chrono can represent it.
fn local(tz: Tz, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = at.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
}

/// `date` moved by `offset` days, if chrono can represent the result.
fn shift(date: NaiveDate, offset: i64) -> Option<NaiveDate> {
    let days = Days::new(offset.unsigned_abs());
    if offset < 0 {
        date.checked_sub_days(days)
    } else {
        date.checked_add_days(days)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use crate::{
        model::{ClockTime, Day, Minutes, TimeZone, Window},
        policy::window::{WindowState, next_open, state},
    };

    /// Checks the state of `window` at `at` against `expected`, and that `next_open` agrees.
    ///
    /// `window` reads `days start duration timezone`, days as `sat,sun` or `*` for every day;
    /// `expected` reads `open until <instant>` or `closed until <instant>`. Instants are
    /// RFC 3339, `never`, `the end of time` or `the start of time`.
    fn check(window: &str, at: &str, expected: &str) {
        let fields: Vec<&str> = window.split(' ').collect();
        let [days, start, duration, timezone] = fields[..] else {
            panic!("window `{window}` is not `days start duration timezone`");
        };
        let days = match days {
            "*" => Day::ALL.to_vec(),
            days => days
                .split(',')
                .map(|day| Day::parse(day).expect("a day"))
                .collect(),
        };
        let window = Window {
            days,
            start: ClockTime::parse(start).expect("a start time"),
            duration: Minutes::parse(duration).expect("a duration"),
            timezone: TimeZone::parse(timezone).expect("a time zone"),
        };
        let instant = |text: &str| match text {
            "never" | "the end of time" => DateTime::<Utc>::MAX_UTC,
            "the start of time" => DateTime::<Utc>::MIN_UTC,
            text => DateTime::parse_from_rfc3339(text)
                .expect("an RFC 3339 instant")
                .to_utc(),
        };
        let at = instant(at);
        let expected = match expected.split_once(" until ") {
            Some(("open", closes)) => WindowState::Open {
                closes: instant(closes),
            },
            Some(("closed", opens)) => WindowState::Closed {
                opens: instant(opens),
            },
            _ => panic!("expected `{expected}` is not `open until ..` or `closed until ..`"),
        };
        assert_eq!(state(&window, at), expected, "{window:?} at {at}");
        let expected_next = match expected {
            WindowState::Open { .. } => at,
            WindowState::Closed { opens } => opens,
        };
        assert_eq!(next_open(&window, at), expected_next, "{window:?} at {at}");
    }

    /// Saturday and Sunday 02:00 to 06:00 in Lagos (UTC+1, no DST): 01:00 to 05:00 UTC.
    const LAGOS: &str = "sat,sun 02:00 4h Africa/Lagos";

    #[test]
    fn open_inside_an_opening_until_it_closes() {
        check(
            LAGOS,
            "2026-06-06T02:00:00Z",
            "open until 2026-06-06T05:00:00Z",
        );
        check(
            LAGOS,
            "2026-06-06T01:00:00Z",
            "open until 2026-06-06T05:00:00Z",
        );
        check(
            LAGOS,
            "2026-06-07T04:59:59Z",
            "open until 2026-06-07T05:00:00Z",
        );
    }

    #[test]
    fn closed_outside_until_the_next_opening() {
        // A Wednesday, and just before the first opening.
        check(
            LAGOS,
            "2026-06-03T12:00:00Z",
            "closed until 2026-06-06T01:00:00Z",
        );
        check(
            LAGOS,
            "2026-06-06T00:59:59Z",
            "closed until 2026-06-06T01:00:00Z",
        );
        // Saturday's closing, Sunday's and the week after.
        check(
            LAGOS,
            "2026-06-06T05:00:00Z",
            "closed until 2026-06-07T01:00:00Z",
        );
        check(
            LAGOS,
            "2026-06-07T05:00:00Z",
            "closed until 2026-06-13T01:00:00Z",
        );
    }

    #[test]
    fn an_opening_may_cross_midnight() {
        // Saturday 23:00 to Sunday 03:00 local: 22:00 to 02:00 UTC.
        let window = "sat 23:00 4h Africa/Lagos";
        check(
            window,
            "2026-06-07T00:00:00Z",
            "open until 2026-06-07T02:00:00Z",
        );
        check(
            window,
            "2026-06-07T02:00:00Z",
            "closed until 2026-06-13T22:00:00Z",
        );
        // Sunday before 23:00 local is not an opening day of its own.
        check(
            window,
            "2026-06-07T21:30:00Z",
            "closed until 2026-06-13T22:00:00Z",
        );
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_opens_when_the_gap_ends() {
        // London jumps from 01:00 GMT to 02:00 BST on 2026-03-29; 01:30 does not exist.
        let window = "sun 01:30 1h Europe/London";
        check(
            window,
            "2026-03-29T00:59:59Z",
            "closed until 2026-03-29T01:00:00Z",
        );
        check(
            window,
            "2026-03-29T01:00:00Z",
            "open until 2026-03-29T02:00:00Z",
        );
        check(
            window,
            "2026-03-29T02:00:00Z",
            "closed until 2026-04-05T00:30:00Z",
        );
    }

    #[test]
    fn an_opening_over_the_spring_forward_gap_lasts_its_real_duration() {
        // 00:30 GMT plus two hours is 02:30 UTC, 03:30 BST.
        let window = "sun 00:30 2h Europe/London";
        check(
            window,
            "2026-03-29T02:00:00Z",
            "open until 2026-03-29T02:30:00Z",
        );
        check(
            window,
            "2026-03-29T02:30:00Z",
            "closed until 2026-04-04T23:30:00Z",
        );
    }

    #[test]
    fn an_ambiguous_start_at_fall_back_opens_at_the_earlier_instant() {
        // London falls back from 02:00 BST to 01:00 GMT on 2026-10-25; 01:30 happens twice.
        let window = "sun 01:30 30m Europe/London";
        check(
            window,
            "2026-10-25T00:00:00Z",
            "closed until 2026-10-25T00:30:00Z",
        );
        check(
            window,
            "2026-10-25T00:30:00Z",
            "open until 2026-10-25T01:00:00Z",
        );
        // The second 01:30 is not an opening.
        check(
            window,
            "2026-10-25T01:30:00Z",
            "closed until 2026-11-01T01:30:00Z",
        );
    }

    #[test]
    fn southern_hemisphere_dst() {
        // Sydney is UTC+11 in January, UTC+10 in July.
        let window = "mon 09:00 1h Australia/Sydney";
        check(
            window,
            "2026-01-01T00:00:00Z",
            "closed until 2026-01-04T22:00:00Z",
        );
        check(
            window,
            "2026-07-01T00:00:00Z",
            "closed until 2026-07-05T23:00:00Z",
        );
        // Sydney jumps from 02:00 AEST to 03:00 AEDT on 2026-10-04.
        let window = "sun 02:30 1h Australia/Sydney";
        check(
            window,
            "2026-10-03T12:00:00Z",
            "closed until 2026-10-03T16:00:00Z",
        );
        check(
            window,
            "2026-10-03T16:30:00Z",
            "open until 2026-10-03T17:00:00Z",
        );
    }

    #[test]
    fn a_start_on_a_skipped_day_opens_when_the_day_ends() {
        // Samoa skipped 2011-12-30, going from the end of the 29th at UTC-10 to the 31st at
        // UTC+14, at 10:00 UTC.
        let window = "* 10:00 1h Pacific/Apia";
        check(
            window,
            "2011-12-29T21:00:00Z",
            "closed until 2011-12-30T10:00:00Z",
        );
        check(
            window,
            "2011-12-30T10:30:00Z",
            "open until 2011-12-30T11:00:00Z",
        );
        check(
            window,
            "2011-12-30T11:00:00Z",
            "closed until 2011-12-30T20:00:00Z",
        );
    }

    #[test]
    fn overlapping_or_touching_openings_merge() {
        // Saturday 02:00 to Sunday 03:00, and Sunday 02:00 to Monday 03:00 local.
        let window = "sat,sun 02:00 25h Africa/Lagos";
        check(
            window,
            "2026-06-06T12:00:00Z",
            "open until 2026-06-08T02:00:00Z",
        );
        // Touching: Saturday 02:00 to Monday 02:00 local.
        let window = "sat,sun 02:00 24h Africa/Lagos";
        check(
            window,
            "2026-06-06T12:00:00Z",
            "open until 2026-06-08T01:00:00Z",
        );
        // Every day for 23 hours leaves an hour's gap; for 25 hours it never closes.
        let window = "* 02:00 23h Africa/Lagos";
        check(
            window,
            "2026-06-06T23:30:00Z",
            "open until 2026-06-07T00:00:00Z",
        );
        check(
            window,
            "2026-06-07T00:30:00Z",
            "closed until 2026-06-07T01:00:00Z",
        );
        check(
            "* 02:00 25h Africa/Lagos",
            "2026-06-06T23:30:00Z",
            "open until never",
        );
    }

    #[test]
    fn merged_openings_close_at_the_next_dst_gap() {
        // Every day 02:00 for 24 hours chains all summer in London, until the night the
        // clocks fall back: Saturday's opening ends at 01:00 UTC, Sunday's starts at 02:00.
        let window = "* 02:00 24h Europe/London";
        check(
            window,
            "2026-07-01T12:00:00Z",
            "open until 2026-10-25T01:00:00Z",
        );
        check(
            window,
            "2026-10-25T01:30:00Z",
            "closed until 2026-10-25T02:00:00Z",
        );
    }

    #[test]
    fn a_week_long_window_is_always_open_without_dst() {
        let window = "sat 02:00 168h Africa/Lagos";
        check(window, "2026-06-03T12:00:00Z", "open until never");
        check(window, "2026-06-06T01:00:00Z", "open until never");
        // With DST, the week that falls back is an hour longer than the window.
        let window = "sat 02:00 168h Europe/London";
        check(
            window,
            "2026-10-31T01:30:00Z",
            "closed until 2026-10-31T02:00:00Z",
        );
        check(
            window,
            "2026-10-30T12:00:00Z",
            "open until 2026-10-31T01:00:00Z",
        );
    }

    #[test]
    fn the_ends_of_time_do_not_panic() {
        check(
            "* 02:00 4h Pacific/Kiritimati",
            "the end of time",
            "closed until never",
        );
        check(
            "* 00:00 168h Etc/UTC",
            "the start of time",
            "open until never",
        );
    }
}
