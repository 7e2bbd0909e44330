//! Civil time in Europe without a time-zone database: the EU summer-time rule (Directive
//! 2000/84/EC), which the United Kingdom follows as well. Summer time runs from 01:00 UTC on the last
//! Sunday of March to 01:00 UTC on the last Sunday of October.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday};

/// Standard (winter) offsets from UTC, in hours.
pub const UK_STANDARD_HOURS: i64 = 0;
pub const DENMARK_STANDARD_HOURS: i64 = 1;

fn last_sunday_01_utc(year: i32, month: u32) -> DateTime<Utc> {
    let next_month = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .expect("a valid month");
    let mut day = next_month - Duration::days(1);
    while day.weekday() != Weekday::Sun {
        day -= Duration::days(1);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(1, 0, 0).expect("01:00 exists"))
}

/// Whether EU summer time is in force at `instant`.
pub fn is_summer_time(instant: DateTime<Utc>) -> bool {
    let year = instant.year();
    instant >= last_sunday_01_utc(year, 3) && instant < last_sunday_01_utc(year, 10)
}

/// The local civil time at `instant` for a zone with the given standard offset.
pub fn to_local(instant: DateTime<Utc>, standard_hours: i64) -> NaiveDateTime {
    let summer = i64::from(is_summer_time(instant));
    instant.naive_utc() + Duration::hours(standard_hours + summer)
}

/// The instant a local civil time names. In the repeated hour of October the earlier (summer)
/// instant is taken; a time in the skipped hour of March is read as standard time.
pub fn from_local(local: NaiveDateTime, standard_hours: i64) -> DateTime<Utc> {
    let as_summer = Utc.from_utc_datetime(&(local - Duration::hours(standard_hours + 1)));
    if is_summer_time(as_summer) {
        as_summer
    } else {
        Utc.from_utc_datetime(&(local - Duration::hours(standard_hours)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn transitions_and_conversions() {
        // 2025: summer time from 30 March to 26 October.
        assert!(!is_summer_time(utc("2025-03-30T00:59:59Z")));
        assert!(is_summer_time(utc("2025-03-30T01:00:00Z")));
        assert!(is_summer_time(utc("2025-10-26T00:59:59Z")));
        assert!(!is_summer_time(utc("2025-10-26T01:00:00Z")));
        let cases = [
            (
                "2025-08-16 00:00:00",
                UK_STANDARD_HOURS,
                "2025-08-15T23:00:00Z",
            ),
            (
                "2016-06-03 13:23:00",
                UK_STANDARD_HOURS,
                "2016-06-03T12:23:00Z",
            ),
            (
                "2025-01-10 03:00:00",
                DENMARK_STANDARD_HOURS,
                "2025-01-10T02:00:00Z",
            ),
            (
                "2025-07-10 03:00:00",
                DENMARK_STANDARD_HOURS,
                "2025-07-10T01:00:00Z",
            ),
            // The repeated hour: the summer reading comes first.
            (
                "2025-10-26 02:30:00",
                DENMARK_STANDARD_HOURS,
                "2025-10-26T00:30:00Z",
            ),
        ];
        for (l, std, u) in cases {
            assert_eq!(from_local(local(l), std), utc(u), "{l}");
            assert_eq!(to_local(utc(u), std), local(l), "{u}");
        }
    }
}
