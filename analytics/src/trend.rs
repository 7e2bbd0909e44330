//! Rate of rise by least squares, and the projected time to a threshold.

use crate::series::{hours_between, Sample};
use chrono::{DateTime, Duration, Utc};

/// The least-squares slope of the samples in `(now - window, now]`, in units per hour. `None` with
/// fewer than three samples or no spread in time. Worked out in two passes over the samples
/// without gathering them: it runs at every reading of a level sensor's timeline.
pub fn rate_of_rise(samples: &[Sample], now: DateTime<Utc>, window: Duration) -> Option<f64> {
    let from = now - window;
    slope(|| {
        samples
            .iter()
            .filter(move |s| s.ts > from && s.ts <= now)
            .map(move |s| (hours_between(from, s.ts), s.value))
    })
}

/// [`rate_of_rise`] over readings already known to be in its window, with their times in
/// microseconds since the epoch and the window's start likewise: the same rate, without calendar
/// arithmetic for each reading (a timeline works one out at every reading). Times are counted in
/// whole milliseconds from `from_micros`, as [`hours_between`] counts them.
pub fn rate_in_window(times: &[i64], samples: &[Sample], from_micros: i64) -> Option<f64> {
    debug_assert_eq!(times.len(), samples.len());
    slope(|| {
        times
            .iter()
            .zip(samples)
            .map(move |(t, s)| ((t - from_micros).div_euclid(1_000) as f64 / 3.6e6, s.value))
    })
}

/// The least-squares slope of `points` (hours, value), from two passes over them.
fn slope<I: Iterator<Item = (f64, f64)>>(points: impl Fn() -> I) -> Option<f64> {
    let (mut n, mut t_sum, mut y_sum) = (0usize, 0.0, 0.0);
    for (t, y) in points() {
        n += 1;
        t_sum += t;
        y_sum += y;
    }
    if n < 3 {
        return None;
    }
    let (t_mean, y_mean) = (t_sum / n as f64, y_sum / n as f64);
    let (mut spread, mut covariance) = (0.0, 0.0);
    for (t, y) in points() {
        let dt = t - t_mean;
        spread += dt * dt;
        covariance += dt * (y - y_mean);
    }
    if spread <= f64::EPSILON {
        return None;
    }
    Some(covariance / spread)
}

/// When a value rising at `rate` per hour from `value` at `now` reaches `threshold`; `None` if it
/// is not rising or is already there.
pub fn time_to(threshold: f64, value: f64, rate: f64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    time_ahead(threshold, value, rate).map(|ahead| now + ahead)
}

/// How long a value rising at `rate` per hour from `value` takes to reach `threshold` (what
/// [`time_to`] adds to its `now`); `None` if it is not rising or is already there.
pub fn time_ahead(threshold: f64, value: f64, rate: f64) -> Option<Duration> {
    if rate <= 0.0 || value >= threshold || !rate.is_finite() {
        return None;
    }
    let hours = (threshold - value) / rate;
    // Beyond a century a projection means nothing (and would overflow the calendar).
    if !hours.is_finite() || hours > 876_600.0 {
        return None;
    }
    Some(Duration::milliseconds((hours * 3.6e6) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 10, 20, 12, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn least_squares_slopes() {
        let line: Vec<Sample> = (0..7)
            .map(|i| Sample::good(at(10 * i), 1.0 + 0.05 * i as f64))
            .collect();
        let rate = rate_of_rise(&line, at(60), Duration::hours(1)).unwrap();
        assert!(
            (rate - 0.3).abs() < 1e-9,
            "5 cm per 10 min is 30 cm/h: {rate}"
        );
        // Noise around a line leaves the slope near it.
        let noisy: Vec<Sample> = (0..13)
            .map(|i| {
                Sample::good(
                    at(5 * i),
                    2.0 - 0.01 * i as f64 + if i % 2 == 0 { 0.004 } else { -0.004 },
                )
            })
            .collect();
        let rate = rate_of_rise(&noisy, at(60), Duration::hours(1)).unwrap();
        assert!((rate + 0.12).abs() < 0.01, "{rate}");
        // Too few samples in the window.
        assert_eq!(rate_of_rise(&line, at(60), Duration::minutes(15)), None);
    }

    #[test]
    fn projections() {
        let cases = [
            // (threshold, value, rate per hour, expected minutes from now)
            (1.5, 1.2, 0.3, Some(60)),
            (2.0, 1.2, 0.4, Some(120)),
            (1.5, 1.6, 0.3, None),
            (1.5, 1.2, 0.0, None),
            (1.5, 1.2, -0.1, None),
            (1.5, 1.2, 1e-300, None),
            (1.5, 1.2, f64::MIN_POSITIVE, None),
        ];
        for (threshold, value, rate, minutes) in cases {
            assert_eq!(
                time_to(threshold, value, rate, at(0)),
                minutes.map(at),
                "{threshold} {value} {rate}"
            );
        }
    }
}
