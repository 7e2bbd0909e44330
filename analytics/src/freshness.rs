//! "No data" is a state, never an all-clear: a station that stops reporting is stale, and a
//! warning stays in force while it is.

use chrono::{DateTime, Duration, Utc};

/// A sensor is stale when nothing has arrived for `missed` expected intervals.
pub fn is_stale(
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    expected_interval: Duration,
    missed: i32,
) -> bool {
    match last {
        None => true,
        Some(last) => now - last > expected_interval * missed.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn staleness() {
        // Kappeln's gauge went silent at 2023-10-20 12:20 UTC.
        let last = Utc.with_ymd_and_hms(2023, 10, 20, 12, 20, 0).unwrap();
        let ten = Duration::minutes(10);
        let cases = [(20, false), (30, false), (31, true), (600, true)];
        for (minutes, stale) in cases {
            assert_eq!(
                is_stale(Some(last), last + Duration::minutes(minutes), ten, 3),
                stale,
                "{minutes}"
            );
        }
        assert!(is_stale(None, last, ten, 3));
    }
}
