//! Utility statistics: peak demand, the load-duration curve, and the minimum night flow of a water
//! district with the leak suspicion built on it. (Energy per period and self-consumption come from
//! meter registers, in SQL: see `tidemark_store::utility`.)
//!
//! Only usable samples count (see [`tidemark_model::Quality::is_usable`]): a meter's flagged
//! reading, such as a forecast of 0 MW, is left out rather than averaged in.

use crate::series::Sample;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use std::collections::BTreeMap;

fn usable(samples: &[Sample]) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(|s| s.quality.is_usable() && s.value.is_finite())
}

/// The highest value and when it occurred (the first time, if it occurred more than once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub at: DateTime<Utc>,
    pub value: f64,
}

pub fn peak(samples: &[Sample]) -> Option<Peak> {
    usable(samples).fold(None, |best: Option<Peak>, s| match best {
        Some(p) if p.value >= s.value => Some(p),
        _ => Some(Peak {
            at: s.ts,
            value: s.value,
        }),
    })
}

/// The mean of the usable values.
pub fn mean(samples: &[Sample]) -> Option<f64> {
    let (sum, n) = usable(samples).fold((0.0, 0usize), |(sum, n), s| (sum + s.value, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The load-duration curve: the usable values from highest to lowest, so that point `i` is the
/// load reached or exceeded during `i + 1` of the intervals.
pub fn load_duration(samples: &[Sample]) -> Vec<f64> {
    let mut values: Vec<f64> = usable(samples).map(|s| s.value).collect();
    values.sort_by(|a, b| b.total_cmp(a));
    values
}

/// The load reached or exceeded during `share` (0 to 1) of the time, read off a load-duration
/// curve: `duration_point(curve, 0.5)` is the median load.
pub fn duration_point(curve: &[f64], share: f64) -> Option<f64> {
    if curve.is_empty() || !(0.0..=1.0).contains(&share) {
        return None;
    }
    let index = ((share * curve.len() as f64).ceil() as usize).clamp(1, curve.len()) - 1;
    Some(curve[index])
}

/// The night hours in local civil time whose flow is watched, such as 02:00 to 04:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
    /// The zone's standard offset from UTC, in hours (1 for Denmark); EU summer time applies.
    pub standard_hours: i64,
}

impl NightWindow {
    /// 02:00 to 04:00 Danish time.
    pub fn danish_default() -> NightWindow {
        NightWindow {
            start: NaiveTime::from_hms_opt(2, 0, 0).expect("02:00 exists"),
            end: NaiveTime::from_hms_opt(4, 0, 0).expect("04:00 exists"),
            standard_hours: tidemark_model::time::DENMARK_STANDARD_HOURS,
        }
    }

    /// The local date of the night an instant belongs to, if it falls in the window.
    fn night_of(&self, ts: DateTime<Utc>) -> Option<NaiveDate> {
        let local = tidemark_model::time::to_local(ts, self.standard_hours);
        let time = local.time();
        (time >= self.start && time < self.end).then(|| local.date())
    }
}

/// One night's minimum flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NightMinimum {
    /// The local date the window falls on.
    pub night: NaiveDate,
    pub value: f64,
    pub at: DateTime<Utc>,
    /// Usable samples in the window.
    pub samples: usize,
}

/// The minimum flow in the night window of each local night, in date order. Windows are read in
/// local civil time, so they stay at the same hours of the night across a change of summer time
/// (and span an hour more, or less, of UTC on those nights).
pub fn night_minima(samples: &[Sample], window: &NightWindow) -> Vec<NightMinimum> {
    let mut nights: BTreeMap<NaiveDate, NightMinimum> = BTreeMap::new();
    for s in usable(samples) {
        let Some(night) = window.night_of(s.ts) else {
            continue;
        };
        nights
            .entry(night)
            .and_modify(|m| {
                m.samples += 1;
                if s.value < m.value {
                    m.value = s.value;
                    m.at = s.ts;
                }
            })
            .or_insert(NightMinimum {
                night,
                value: s.value,
                at: s.ts,
                samples: 1,
            });
    }
    nights.into_values().collect()
}

/// When a district's night flow counts as a suspected leak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakRule {
    /// Nights whose median is the district's baseline.
    pub baseline_nights: usize,
    /// How far above the baseline a night must be, as a share of it (0.2: 20 % above).
    pub margin: f64,
    /// Consecutive nights above it before a leak is suspected.
    pub nights: usize,
}

/// A suspected leak: night flow above the baseline for the rule's number of nights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakSuspicion {
    /// The first night above the baseline.
    pub since: NaiveDate,
    /// The night the rule was met.
    pub raised_on: NaiveDate,
    pub baseline: f64,
    /// The minimum flow of the night the rule was met.
    pub night_flow: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The first leak suspicion in a run of night minima (in date order). The baseline is the median
/// of the `baseline_nights` nights before a night; while nights run above it, the baseline of the
/// run's first night holds, so that a leak never raises its own baseline. A missing night breaks a
/// run.
pub fn leak_suspicion(minima: &[NightMinimum], rule: &LeakRule) -> Option<LeakSuspicion> {
    if rule.baseline_nights == 0 || rule.nights == 0 {
        return None;
    }
    let mut run: Option<(usize, f64)> = None;
    for (i, night) in minima.iter().enumerate() {
        let follows = i > 0 && minima[i - 1].night.succ_opt() == Some(night.night);
        if !follows {
            run = None;
        }
        let baseline = match run {
            Some((_, baseline)) => baseline,
            None if i >= rule.baseline_nights => {
                let mut before: Vec<f64> = minima[i - rule.baseline_nights..i]
                    .iter()
                    .map(|m| m.value)
                    .collect();
                median(&mut before)
            }
            None => continue,
        };
        if night.value > baseline * (1.0 + rule.margin) {
            let (start, _) = *run.get_or_insert((i, baseline));
            if i + 1 - start >= rule.nights {
                return Some(LeakSuspicion {
                    since: minima[start].night,
                    raised_on: night.night,
                    baseline,
                    night_flow: night.value,
                });
            }
        } else {
            run = None;
        }
    }
    None
}

/// The night a suspected leak ended: the first night after `raised_on` whose minimum flow is back
/// within the rule's margin of the leak's baseline. A missing night ends nothing: no data is not
/// an all-clear.
pub fn leak_end(
    minima: &[NightMinimum],
    baseline: f64,
    margin: f64,
    raised_on: NaiveDate,
) -> Option<&NightMinimum> {
    minima
        .iter()
        .find(|m| m.night > raised_on && m.value <= baseline * (1.0 + margin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tidemark_model::Quality;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hourly(start: &str, values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample::good(utc(start) + Duration::hours(i as i64), *v))
            .collect()
    }

    #[test]
    fn peaks_means_and_load_duration_leave_flagged_values_out() {
        let mut samples = hourly("2019-01-01T00:00:00Z", &[10.0, 30.0, 20.0, 30.0, 5.0]);
        samples.push(Sample {
            ts: utc("2019-01-01T05:00:00Z"),
            value: 0.0,
            quality: Quality::OUT_OF_RANGE,
        });
        let cases: [(&str, Option<f64>, Option<f64>); 3] = [
            ("peak", peak(&samples).map(|p| p.value), Some(30.0)),
            ("mean", mean(&samples), Some(19.0)),
            ("empty", peak(&[]).map(|p| p.value), None),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(
            peak(&samples).unwrap().at,
            utc("2019-01-01T01:00:00Z"),
            "the first of equal peaks"
        );
        let curve = load_duration(&samples);
        assert_eq!(curve, [30.0, 30.0, 20.0, 10.0, 5.0]);
        for (share, want) in [
            (0.0, 30.0),
            (0.2, 30.0),
            (0.5, 20.0),
            (0.8, 10.0),
            (1.0, 5.0),
        ] {
            assert_eq!(duration_point(&curve, share), Some(want), "share {share}");
        }
        assert_eq!(duration_point(&curve, 1.5), None);
    }

    /// Flow every 15 minutes from `from` (UTC) for `hours`: `base` everywhere, `night` between
    /// 02:00 and 04:00 Danish time.
    fn district(
        from: &str,
        hours: i64,
        base: f64,
        night: impl Fn(NaiveDate) -> f64,
    ) -> Vec<Sample> {
        let window = NightWindow::danish_default();
        (0..hours * 4)
            .map(|i| {
                let ts = utc(from) + Duration::minutes(15 * i);
                let value = window.night_of(ts).map_or(base, &night);
                Sample::good(ts, value)
            })
            .collect()
    }

    #[test]
    fn night_minimum_keeps_to_local_hours_across_a_summer_time_change() {
        // 2026-03-29 and 2026-10-25 are the changes; the window is 02:00-04:00 local on each night.
        let window = NightWindow::danish_default();
        let cases = [
            // (UTC instant, the night it belongs to, if any)
            ("2026-03-28T01:00:00Z", Some("2026-03-28")), // 02:00 CET
            ("2026-03-28T02:59:00Z", Some("2026-03-28")), // 03:59 CET
            ("2026-03-28T03:00:00Z", None),               // 04:00 CET
            ("2026-03-29T00:59:00Z", None),               // 01:59 CET
            ("2026-03-29T01:00:00Z", Some("2026-03-29")), // 03:00 CEST: 02:00-03:00 does not exist
            ("2026-03-29T02:00:00Z", None),               // 04:00 CEST
            ("2026-06-01T00:00:00Z", Some("2026-06-01")), // 02:00 CEST
            ("2026-10-25T00:00:00Z", Some("2026-10-25")), // 02:00 CEST
            ("2026-10-25T01:30:00Z", Some("2026-10-25")), // 02:30 CET, the repeated hour
            ("2026-10-25T02:59:00Z", Some("2026-10-25")), // 03:59 CET
            ("2026-10-25T03:00:00Z", None),               // 04:00 CET
        ];
        for (instant, night) in cases {
            assert_eq!(
                window.night_of(utc(instant)),
                night.map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap()),
                "{instant}"
            );
        }
        // Around the October change the window holds 3 hours of samples, in March 1 hour.
        let october = night_minima(
            &district("2026-10-23T12:00:00Z", 72, 50.0, |_| 10.0),
            &window,
        );
        let samples: Vec<usize> = october.iter().map(|m| m.samples).collect();
        assert_eq!(samples, [8, 12, 8]);
        let march = night_minima(
            &district("2026-03-27T12:00:00Z", 72, 50.0, |_| 10.0),
            &window,
        );
        let samples: Vec<usize> = march.iter().map(|m| m.samples).collect();
        assert_eq!(samples, [8, 4, 8]);
        assert!(march.iter().all(|m| m.value == 10.0));
    }

    #[test]
    fn a_leak_is_suspected_after_the_set_number_of_nights_and_not_before() {
        let rule = LeakRule {
            baseline_nights: 7,
            margin: 0.2,
            nights: 3,
        };
        let window = NightWindow::danish_default();
        let date = |d: u32| NaiveDate::from_ymd_opt(2026, 5, d).unwrap();
        // A steady district with some noise, then a leak of 4 m3/h from the night of 20 May.
        let flow = |night: NaiveDate| {
            let noise = f64::from(night.format("%d").to_string().parse::<u32>().unwrap() % 3);
            let leak = if night >= date(20) { 4.0 } else { 0.0 };
            10.0 + noise * 0.5 + leak
        };
        let samples = district("2026-05-01T00:00:00Z", 24 * 30, 60.0, flow);
        let minima = night_minima(&samples, &window);
        assert_eq!(minima.len(), 30);
        let suspicion = leak_suspicion(&minima, &rule).expect("the leak is found");
        assert_eq!(suspicion.since, date(20));
        assert_eq!(suspicion.raised_on, date(22));
        assert!(suspicion.baseline >= 10.0 && suspicion.baseline <= 11.0);

        // Two nights above, then back: nothing. And a month without a leak: nothing.
        let blip = |night: NaiveDate| {
            if night == date(20) || night == date(21) {
                15.0
            } else {
                10.0
            }
        };
        let minima = night_minima(
            &district("2026-05-01T00:00:00Z", 24 * 30, 60.0, blip),
            &window,
        );
        assert_eq!(leak_suspicion(&minima, &rule), None);
        let steady = night_minima(
            &district("2026-05-01T00:00:00Z", 24 * 30, 60.0, |_| 10.0),
            &window,
        );
        assert_eq!(leak_suspicion(&steady, &rule), None);
        // Too few nights for a baseline: nothing.
        assert_eq!(leak_suspicion(&minima[..5], &rule), None);
    }

    #[test]
    fn a_leak_ends_on_the_first_night_back_within_the_margin() {
        let date = |d: u32| NaiveDate::from_ymd_opt(2026, 5, d).unwrap();
        let night = |d: u32, value: f64| NightMinimum {
            night: date(d),
            value,
            at: utc("2026-05-01T01:00:00Z") + Duration::days(i64::from(d) - 1),
            samples: 8,
        };
        // Baseline 10, margin 20 %: 12 is within it, 12.5 is not.
        let cases: [(&[NightMinimum], Option<u32>); 5] = [
            (&[night(20, 15.0), night(21, 15.0), night(22, 15.0)], None),
            (
                &[night(22, 15.0), night(23, 12.5), night(24, 12.0)],
                Some(24),
            ),
            // The night it was raised on does not count, even if it were low.
            (&[night(22, 9.0), night(23, 15.0)], None),
            // A missing night is not an end; the next measured night decides.
            (&[night(22, 15.0), night(26, 10.0)], Some(26)),
            (&[], None),
        ];
        for (minima, expected) in cases {
            let end = leak_end(minima, 10.0, 0.2, date(22)).map(|m| m.night);
            assert_eq!(end, expected.map(date), "{minima:?}");
        }
    }
}
