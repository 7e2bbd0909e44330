//! Data quality before anything else: values that are spikes, stuck, outside the sensor's plausible
//! range, or flagged bad by the device are excluded from every decision and flagged on the reading.

use crate::series::Sample;
use tidemark_model::Quality;

/// How the checks are tuned for one sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QcRules {
    /// Neighbours on each side that a value is compared with (a Hampel filter's half-window).
    pub spike_half_window: usize,
    /// How many scaled median absolute deviations make a spike (3 is the usual choice).
    pub spike_sigmas: f64,
    /// The smallest deviation ever called a spike, in the sensor's unit, so that a quiet series
    /// (MAD near zero) does not flag ordinary noise.
    pub spike_floor: f64,
    /// This many equal consecutive values make the run stuck (0 disables the check).
    pub stuck_run: usize,
    /// The sensor's own plausible range, tighter than the quantity's physical range.
    pub plausible: (f64, f64),
}

impl Default for QcRules {
    fn default() -> Self {
        QcRules {
            spike_half_window: 3,
            spike_sigmas: 3.0,
            spike_floor: 0.25,
            stuck_run: 12,
            plausible: (f64::NEG_INFINITY, f64::INFINITY),
        }
    }
}

impl QcRules {
    /// How many samples before a sample its flags depend on: a stuck run's, or a spike's
    /// neighbours. [`check`] on a series from this many samples before a sample flags it as on
    /// the whole series.
    pub fn looks_back(&self) -> usize {
        self.stuck_run.saturating_sub(1).max(self.spike_half_window)
    }

    /// How many samples after a sample its flags depend on (a spike's neighbours): a sample's
    /// flags are final once this many have come after it.
    pub fn looks_ahead(&self) -> usize {
        self.spike_half_window
    }
}

/// The scale factor that makes the median absolute deviation estimate a normal standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The flags these checks own (the device's own flags, in the low byte, are never cleared).
pub const CHECK_FLAGS: i16 = Quality::SPIKE.0 | Quality::STUCK.0 | Quality::OUT_OF_RANGE.0;

/// The device's own flags of a stored quality, without those an earlier check set.
fn device_flags(quality: Quality) -> Quality {
    Quality(quality.0 & !CHECK_FLAGS)
}

/// The flags each sample earns, in order. Spikes are judged against the neighbours on both sides
/// where they exist, so the newest sample is judged against the ones before it.
///
/// Flags these checks set before are judged afresh from the samples as they are now: a reading
/// flagged stuck or a spike when it was the newest is cleared once the readings around it
/// (arrived since, or late) disprove it. Only the device's own flags carry over, but at the start:
/// the first samples' runs and neighbours may reach before the samples given (a window of a longer
/// series), so the flags an earlier check gave them, with more of the series in view, stand.
pub fn check(samples: &[Sample], rules: &QcRules) -> Vec<Quality> {
    let edge = rules.looks_back().min(samples.len());
    let mut flags: Vec<Quality> = samples.iter().map(|s| device_flags(s.quality)).collect();
    let (low, high) = rules.plausible;
    for (flag, sample) in flags.iter_mut().zip(samples) {
        if !(low..=high).contains(&sample.value) {
            *flag = flag.with(Quality::OUT_OF_RANGE);
        }
    }
    let usable = |i: usize| {
        flags_usable(device_flags(samples[i].quality)) && (low..=high).contains(&samples[i].value)
    };
    // The neighbours and their deviations, in buffers used again for every sample (a series of
    // two weeks has thousands).
    let (mut neighbours, mut deviations) = (Vec::new(), Vec::new());
    for i in 0..samples.len() {
        if !usable(i) {
            continue;
        }
        let from = i.saturating_sub(rules.spike_half_window);
        let to = (i + rules.spike_half_window + 1).min(samples.len());
        neighbours.clear();
        neighbours.extend(
            (from..to)
                .filter(|&j| j != i && usable(j))
                .map(|j| samples[j].value),
        );
        if neighbours.len() < 2 {
            continue;
        }
        let centre = median(&mut neighbours);
        deviations.clear();
        deviations.extend(neighbours.iter().map(|v| (v - centre).abs()));
        let scale = MAD_TO_SIGMA * median(&mut deviations);
        let limit = (rules.spike_sigmas * scale).max(rules.spike_floor);
        if (samples[i].value - centre).abs() > limit {
            flags[i] = flags[i].with(Quality::SPIKE);
        }
    }
    if rules.stuck_run >= 2 {
        let mut run_start = 0;
        for i in 1..=samples.len() {
            let continues = i < samples.len() && samples[i].value == samples[run_start].value;
            if !continues {
                if i - run_start >= rules.stuck_run {
                    for flag in &mut flags[run_start + rules.stuck_run - 1..i] {
                        *flag = flag.with(Quality::STUCK);
                    }
                }
                run_start = i;
            }
        }
    }
    for (flag, sample) in flags[..edge].iter_mut().zip(samples) {
        *flag = flag.with(Quality(sample.quality.0 & CHECK_FLAGS));
    }
    flags
}

fn flags_usable(quality: Quality) -> bool {
    quality.is_usable()
}

/// The samples that may drive a decision, with their flags applied.
pub fn usable(samples: &[Sample], rules: &QcRules) -> Vec<Sample> {
    usable_with(samples, &check(samples, rules))
}

/// The samples that may drive a decision, given the flags [`check`] gave them (in order).
pub fn usable_with(samples: &[Sample], flags: &[Quality]) -> Vec<Sample> {
    debug_assert_eq!(samples.len(), flags.len());
    samples
        .iter()
        .zip(flags.iter().copied())
        .filter(|(_, flag)| flag.is_usable())
        .map(|(s, flag)| Sample {
            quality: flag,
            ..*s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn series(values: &[f64]) -> Vec<Sample> {
        let start = Utc.with_ymd_and_hms(2023, 10, 20, 0, 0, 0).unwrap();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample::good(start + chrono::Duration::minutes(10 * i as i64), *v))
            .collect()
    }

    fn flagged(values: &[f64], rules: &QcRules, flag: Quality) -> Vec<usize> {
        check(&series(values), rules)
            .iter()
            .enumerate()
            .filter(|(_, q)| q.contains(flag))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn table() {
        let rules = QcRules::default();
        // (series, flag, expected indices)
        let cases: Vec<(Vec<f64>, Quality, Vec<usize>)> = vec![
            // A single 16.71 m sample in a sea-level series is a spike; its neighbours are not.
            (
                vec![1.10, 1.12, 1.15, 16.71, 1.18, 1.20, 1.22],
                Quality::SPIKE,
                vec![3],
            ),
            // A spike as the newest sample, judged against the ones before it.
            (vec![1.10, 1.12, 1.15, 1.18, 9.0], Quality::SPIKE, vec![4]),
            // A steep but real rise (10 cm per sample) is not a spike.
            (
                vec![1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8],
                Quality::SPIKE,
                vec![],
            ),
            // Noise below the floor is never a spike, however quiet the series.
            (
                vec![0.50, 0.50, 0.50, 0.52, 0.50, 0.50],
                Quality::SPIKE,
                vec![],
            ),
            // Twelve equal values: the twelfth and later are stuck.
            (
                [vec![0.3, 0.4], vec![0.391; 13], vec![0.5]].concat(),
                Quality::STUCK,
                (13..15).collect(),
            ),
            (vec![0.391; 11], Quality::STUCK, vec![]),
        ];
        for (values, flag, expected) in cases {
            assert_eq!(flagged(&values, &rules, flag), expected, "{values:?}");
        }
        let ranged = QcRules {
            plausible: (-1.0, 3.0),
            ..QcRules::default()
        };
        assert_eq!(
            flagged(&[1.0, 3.5, 1.0], &ranged, Quality::OUT_OF_RANGE),
            vec![1]
        );
    }

    /// Flags an earlier check set (when the readings around were not yet known) are judged
    /// afresh; the device's own are kept, and so are the earlier flags of the first samples, whose
    /// runs and neighbours may reach before them.
    #[test]
    fn earlier_check_flags_are_judged_afresh_and_device_flags_kept() {
        let values: Vec<f64> = (0..16).map(|i| 1.0 + 0.1 * i as f64).collect();
        let mut samples = series(&values);
        samples[12].quality = Quality::STUCK;
        samples[13].quality = Quality::SPIKE.with(Quality::DEVICE_SUSPECT);
        samples[14].quality = Quality::OUT_OF_RANGE.with(Quality::DEVICE_BAD);
        // Within the first stuck run's length: an earlier check saw what came before.
        samples[10].quality = Quality::STUCK;
        let mut expected = vec![Quality::GOOD; 16];
        expected[10] = Quality::STUCK;
        expected[13] = Quality::DEVICE_SUSPECT;
        expected[14] = Quality::DEVICE_BAD;
        assert_eq!(check(&samples, &QcRules::default()), expected);
        // The twelfth equal value in a row was stuck; a late reading before it breaks the run.
        let mut values = vec![0.4; 11];
        values.extend([1.7, 0.4]);
        let mut samples = series(&values);
        samples[12].quality = Quality::STUCK;
        assert_eq!(check(&samples, &QcRules::default())[12], Quality::GOOD);
    }

    #[test]
    fn device_bad_values_are_excluded_and_others_kept() {
        let mut samples = series(&[1.0, 1.1, 1.2, 1.3]);
        samples[1].quality = Quality::DEVICE_BAD;
        samples[2].quality = Quality::DEVICE_SUSPECT;
        let kept: Vec<f64> = usable(&samples, &QcRules::default())
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(kept, [1.0, 1.2, 1.3]);
    }
}
