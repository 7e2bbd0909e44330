//! Rainfall accumulation over windows, judged against the Danish Meteorological Institute's
//! definitions: a cloudburst (skybrud) is more than 15 mm in 30 minutes; heavy rain (kraftig regn)
//! is more than 24 mm in 6 hours.

use crate::level::Severity;
use crate::series::Sample;
use chrono::{DateTime, Duration, Utc};

/// A threshold on the rain accumulated over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RainRule {
    pub window: Duration,
    /// Exceeded when the accumulation is strictly more than this, mm.
    pub more_than_mm: f64,
    pub severity: Severity,
}

/// DMI's cloudburst (an alert) and heavy-rain (an alert) definitions.
pub fn dmi_rules() -> Vec<RainRule> {
    vec![
        RainRule {
            window: Duration::minutes(30),
            more_than_mm: 15.0,
            severity: Severity::Alert,
        },
        RainRule {
            window: Duration::hours(6),
            more_than_mm: 24.0,
            severity: Severity::Alert,
        },
    ]
}

/// The windows Tidemark reports accumulations over.
pub const WINDOWS: [i64; 4] = [30, 60, 360, 1440];

/// Rain that fell in `(now - window, now]`: each sample is the depth of its reporting interval,
/// ending at its timestamp.
pub fn accumulation(samples: &[Sample], now: DateTime<Utc>, window: Duration) -> f64 {
    let from = now - window;
    samples
        .iter()
        .filter(|s| s.ts > from && s.ts <= now)
        // From +0.0: an empty float sum is -0.0.
        .fold(0.0, |sum, s| sum + s.value)
}

/// The highest-severity rule exceeded at `now`, with the accumulation that exceeded it.
pub fn exceeded(
    samples: &[Sample],
    now: DateTime<Utc>,
    rules: &[RainRule],
) -> Option<(RainRule, f64)> {
    rules
        .iter()
        .map(|rule| (*rule, accumulation(samples, now, rule.window)))
        .filter(|(rule, mm)| *mm > rule.more_than_mm)
        .max_by(|a, b| a.0.severity.cmp(&b.0.severity).then(a.1.total_cmp(&b.1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn every_5_minutes(depths: &[f64]) -> Vec<Sample> {
        let start = Utc.with_ymd_and_hms(2026, 7, 2, 17, 0, 0).unwrap();
        depths
            .iter()
            .enumerate()
            .map(|(i, mm)| Sample::good(start + Duration::minutes(5 * (i as i64 + 1)), *mm))
            .collect()
    }

    #[test]
    fn windows_and_definitions() {
        let samples = every_5_minutes(&[0.0, 1.0, 4.0, 6.0, 5.0, 1.0, 0.0, 0.0]);
        let end = samples.last().unwrap().ts;
        let at_peak = samples[5].ts;
        // (now, window minutes, expected mm)
        let cases = [
            (at_peak, 30, 17.0),
            (at_peak, 15, 12.0),
            (end, 30, 16.0),
            (end, 10, 0.0),
            (end, 1440, 17.0),
        ];
        for (now, minutes, mm) in cases {
            assert_eq!(
                accumulation(&samples, now, Duration::minutes(minutes)),
                mm,
                "{now} {minutes}"
            );
        }
        // 17 mm in 30 minutes is a cloudburst; 15 mm exactly is not.
        let (rule, mm) = exceeded(&samples, at_peak, &dmi_rules()).unwrap();
        assert_eq!((rule.window, mm), (Duration::minutes(30), 17.0));
        let fifteen = every_5_minutes(&[5.0, 5.0, 5.0]);
        assert_eq!(exceeded(&fifteen, fifteen[2].ts, &dmi_rules()), None);
        // 25 mm spread over five hours is heavy rain, not a cloudburst.
        let steady = vec![0.4167; 60];
        let steady = every_5_minutes(&steady);
        let (rule, _) = exceeded(&steady, steady[59].ts, &dmi_rules()).unwrap();
        assert_eq!(rule.window, Duration::hours(6));
    }
}
