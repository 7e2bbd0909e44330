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
    strongest(
        rules
            .iter()
            .map(|rule| (*rule, accumulation(samples, now, rule.window))),
    )
}

/// Of the rules with their accumulations, the highest-severity one exceeded.
fn strongest(accumulated: impl Iterator<Item = (RainRule, f64)>) -> Option<(RainRule, f64)> {
    accumulated
        .filter(|(rule, mm)| *mm > rule.more_than_mm)
        .max_by(|a, b| a.0.severity.cmp(&b.0.severity).then(a.1.total_cmp(&b.1)))
}

/// At each sample in turn, what [`exceeded`] gives for the samples up to it at its time.
///
/// In time order (as series are read), each rule's window over the samples only moves forward,
/// so each sample's accumulations sum only the samples in their windows: over a look-back of two
/// weeks of 5-minute rain, 72 additions per sample for a 6-hour window, not thousands. The sums
/// are the same, bit for bit, as [`accumulation`]'s: the same samples added in the same order.
/// Out of order, each sample's accumulations look at every sample before it.
pub fn exceeded_at_each(samples: &[Sample], rules: &[RainRule]) -> Vec<Option<(RainRule, f64)>> {
    if !samples.windows(2).all(|w| w[0].ts <= w[1].ts) {
        return (0..samples.len())
            .map(|i| exceeded(&samples[..=i], samples[i].ts, rules))
            .collect();
    }
    // Each rule's first sample inside its window at the sample last looked at.
    let mut firsts = vec![0usize; rules.len()];
    let mut out = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        for (first, rule) in firsts.iter_mut().zip(rules) {
            let from = sample.ts - rule.window;
            while *first <= i && samples[*first].ts <= from {
                *first += 1;
            }
        }
        out.push(strongest(rules.iter().zip(&firsts).map(
            |(rule, &first)| {
                // From +0.0, as `accumulation` sums.
                let mm = samples[first..=i].iter().fold(0.0, |sum, s| sum + s.value);
                (*rule, mm)
            },
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lcg;
    use chrono::TimeZone;

    #[test]
    fn the_walk_gives_what_each_prefix_gives() {
        let start = Utc.with_ymd_and_hms(2026, 7, 2, 17, 0, 0).unwrap();
        let rules = vec![
            dmi_rules()[0],
            dmi_rules()[1],
            RainRule {
                window: Duration::minutes(10),
                more_than_mm: 0.7,
                severity: Severity::Alert,
            },
            RainRule {
                window: Duration::zero(),
                more_than_mm: -1.0,
                severity: Severity::Alert,
            },
            RainRule {
                window: Duration::hours(2),
                more_than_mm: 20.0,
                severity: Severity::Warning,
            },
        ];
        let mut random = Lcg(7);
        let mut strongest_by_window = std::collections::BTreeMap::new();
        for case in 0..40 {
            // Irregular steps (some of them none: equal times), depths in tenths of a millimetre
            // (sums of which round differently in different orders), bursts of heavy rain.
            let mut ts = start;
            let mut samples: Vec<Sample> = (0..600)
                .map(|_| {
                    ts += Duration::seconds(random.next(4) as i64 * 150);
                    let heavy = random.next(20) == 0;
                    let depth = random.next(if heavy { 90 } else { 6 }) as f64 / 10.0;
                    Sample::good(ts, depth)
                })
                .collect();
            if case % 4 == 3 {
                // Out of order: a late sample among earlier ones.
                let i = 1 + random.next(598) as usize;
                samples.swap(i, i + 1);
                samples[i].ts += Duration::minutes(1);
            }
            let walked = exceeded_at_each(&samples, &rules);
            for (i, got) in walked.iter().enumerate() {
                let want = exceeded(&samples[..=i], samples[i].ts, &rules);
                assert_eq!(
                    got.map(|(r, mm)| (r, mm.to_bits())),
                    want.map(|(r, mm)| (r, mm.to_bits())),
                    "case {case}, sample {i}"
                );
            }
            for (r, _) in walked.iter().flatten() {
                *strongest_by_window.entry(r.window).or_insert(0) += 1;
            }
        }
        // Each rule was the strongest somewhere: the series test them all.
        assert_eq!(
            strongest_by_window.len(),
            rules.len(),
            "{strongest_by_window:?}"
        );
    }

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
