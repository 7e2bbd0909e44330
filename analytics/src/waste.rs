//! Waste containers: fill rate, predicted time to full, detected collections, overflow events and
//! how well collections are timed, from fill-level readings (percent of capacity) and, where the
//! lifts are weighed, weighings (kg collected at each emptying).

use crate::series::{hours_between, Sample};
use crate::trend;
use chrono::{DateTime, Duration, Utc};

/// What a fall in fill level must be to count as a collection, and when a container counts as
/// full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContainerRule {
    /// A fall of at least this many percentage points between two readings is a collection.
    pub min_drop: f64,
    /// A collection that leaves more than this (percent) is partial.
    pub emptied_below: f64,
    /// At or over this fill level (percent) the container is full.
    pub full_level: f64,
    /// Full for longer than this is an overflow event.
    pub overflow_after: Duration,
    /// A collection at or under this fill level (percent) emptied a container that did not need it.
    pub near_empty: f64,
}

impl Default for ContainerRule {
    fn default() -> Self {
        ContainerRule {
            min_drop: 20.0,
            emptied_below: 10.0,
            full_level: 100.0,
            overflow_after: Duration::hours(2),
            near_empty: 30.0,
        }
    }
}

fn usable(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.quality.is_usable() && s.value.is_finite())
        .collect()
}

/// A detected collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Collection {
    /// The time of the first reading after the fall.
    pub at: DateTime<Utc>,
    /// Fill level (percent) before and after.
    pub before: f64,
    pub after: f64,
    /// More than [`ContainerRule::emptied_below`] was left.
    pub partial: bool,
    /// The mass collected, where the lift was weighed.
    pub mass_kg: Option<f64>,
}

impl Collection {
    /// The volume taken away, in litres, for a container of `capacity_litres`.
    pub fn volume_litres(&self, capacity_litres: f64) -> f64 {
        (self.before - self.after).max(0.0) / 100.0 * capacity_litres
    }
}

/// Collections in a container's fill-level series (in time order): every fall of at least the
/// rule's `min_drop` between consecutive usable readings.
pub fn collections(fill: &[Sample], rule: &ContainerRule) -> Vec<Collection> {
    usable(fill)
        .windows(2)
        .filter(|w| w[0].value - w[1].value >= rule.min_drop)
        .map(|w| Collection {
            at: w[1].ts,
            before: w[0].value,
            after: w[1].value,
            partial: w[1].value > rule.emptied_below,
            mass_kg: None,
        })
        .collect()
}

/// A weighing closer than this to a fall in fill level is the same collection.
const SAME_COLLECTION: Duration = Duration::minutes(10);

/// Collections of a container whose lifts are weighed: every weighing is a collection, with the
/// fill level last read at or before it and first read after it (either one standing in for a
/// missing other, 0 % with neither), and every fall in fill level with no weighing within ten
/// minutes is one too (a lift the scale missed).
pub fn weighed_collections(
    fill: &[Sample],
    weighings: &[Sample],
    rule: &ContainerRule,
) -> Vec<Collection> {
    let levels = usable(fill);
    let weighed: Vec<&Sample> = usable(weighings);
    let mut out: Vec<Collection> = weighed
        .iter()
        .map(|w| {
            let before = levels.iter().rev().find(|s| s.ts <= w.ts).map(|s| s.value);
            let after = levels.iter().find(|s| s.ts > w.ts).map(|s| s.value);
            let (before, after) = match (before, after) {
                (Some(b), Some(a)) => (b, a),
                (Some(v), None) | (None, Some(v)) => (v, v),
                (None, None) => (0.0, 0.0),
            };
            Collection {
                at: w.ts,
                before,
                after,
                partial: after > rule.emptied_below,
                mass_kg: Some(w.value.max(0.0)),
            }
        })
        .collect();
    out.extend(collections(fill, rule).into_iter().filter(|c| {
        !weighed
            .iter()
            .any(|w| (w.ts - c.at).abs() <= SAME_COLLECTION)
    }));
    out.sort_by_key(|c| c.at);
    out
}

/// The fill rate in percentage points per hour: the least-squares slope of the current filling
/// phase (the readings since the last collection), at `now`. `None` with fewer than three readings
/// in the phase.
pub fn fill_rate(fill: &[Sample], rule: &ContainerRule, now: DateTime<Utc>) -> Option<f64> {
    let readings: Vec<Sample> = usable(fill)
        .into_iter()
        .filter(|s| s.ts <= now)
        .copied()
        .collect();
    let phase_start = readings
        .windows(2)
        .rposition(|w| w[0].value - w[1].value >= rule.min_drop)
        .map_or(0, |i| i + 1);
    let phase = &readings[phase_start..];
    let first = phase.first()?;
    // The window reaches just before the phase's first reading, so that it counts.
    let window = now - first.ts + Duration::milliseconds(1);
    trend::rate_of_rise(phase, now, window)
}

/// When the container is expected to be full, from the latest reading and the fill rate; `None`
/// if it is not filling or is already full.
pub fn time_to_full(
    fill: &[Sample],
    rule: &ContainerRule,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let rate = fill_rate(fill, rule, now)?;
    let last = usable(fill).into_iter().rfind(|s| s.ts <= now)?;
    let full = trend::time_to(rule.full_level, last.value, rate, last.ts)?;
    Some(full.max(now))
}

/// A time a container stayed full for longer than the rule allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overflow {
    /// The first reading at or over the full level.
    pub from: DateTime<Utc>,
    /// The first reading under it again; `None` while it lasts.
    pub until: Option<DateTime<Utc>>,
}

impl Overflow {
    pub fn hours(&self, now: DateTime<Utc>) -> f64 {
        hours_between(self.from, self.until.unwrap_or(now))
    }
}

/// Overflow events: runs of readings at or over the full level lasting longer than
/// `overflow_after` (from the run's first reading to the first reading under the level, or `now`).
pub fn overflows(fill: &[Sample], rule: &ContainerRule, now: DateTime<Utc>) -> Vec<Overflow> {
    let mut out = Vec::new();
    let mut start: Option<DateTime<Utc>> = None;
    for s in usable(fill) {
        match (start, s.value >= rule.full_level) {
            (None, true) => start = Some(s.ts),
            (Some(from), false) => {
                if s.ts - from > rule.overflow_after {
                    out.push(Overflow {
                        from,
                        until: Some(s.ts),
                    });
                }
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        if now - from > rule.overflow_after {
            out.push(Overflow { from, until: None });
        }
    }
    out
}

/// How well collections were timed: emptying near-empty containers wastes trips, and collecting
/// full ones late fails the public.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Efficiency {
    pub collections: usize,
    /// Mean fill level at collection, percent.
    pub mean_fill_at_collection: f64,
    /// Collections at or under the rule's near-empty level.
    pub near_empty: usize,
    /// Collections at or over the full level.
    pub full: usize,
}

pub fn efficiency(collections: &[Collection], rule: &ContainerRule) -> Option<Efficiency> {
    if collections.is_empty() {
        return None;
    }
    let n = collections.len();
    Some(Efficiency {
        collections: n,
        mean_fill_at_collection: collections.iter().map(|c| c.before).sum::<f64>() / n as f64,
        near_empty: collections
            .iter()
            .filter(|c| c.before <= rule.near_empty)
            .count(),
        full: collections
            .iter()
            .filter(|c| c.before >= rule.full_level)
            .count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tidemark_model::Quality;

    fn at(hours: f64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, 0, 0, 0).unwrap()
            + Duration::milliseconds((hours * 3.6e6) as i64)
    }

    /// Readings every `step` hours from hour 0 with these levels.
    fn series(step: f64, levels: &[f64]) -> Vec<Sample> {
        levels
            .iter()
            .enumerate()
            .map(|(i, v)| Sample::good(at(step * i as f64), *v))
            .collect()
    }

    #[test]
    fn fill_rate_is_the_slope_of_the_current_filling_phase() {
        let rule = ContainerRule::default();
        // (levels every 2 h, the fill rate at the last reading)
        let cases: [(&[f64], Option<f64>); 5] = [
            (&[10.0, 14.0, 18.0, 22.0], Some(2.0)),
            // Emptied at the fourth reading: only the new phase counts.
            (&[60.0, 70.0, 80.0, 0.0, 1.0, 2.0, 3.0], Some(0.5)),
            // Too few readings since the collection.
            (&[60.0, 70.0, 80.0, 0.0, 1.0], None),
            (&[50.0, 50.0, 50.0], Some(0.0)),
            (&[], None),
        ];
        for (levels, want) in cases {
            let fill = series(2.0, levels);
            let now = fill.last().map_or(at(0.0), |s| s.ts);
            let got = fill_rate(&fill, &rule, now);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{levels:?}: {g} != {w}"),
                _ => assert_eq!(got, want, "{levels:?}"),
            }
        }
        // 22 % at 2 %/h reaches 100 % in 39 hours.
        let fill = series(2.0, &[10.0, 14.0, 18.0, 22.0]);
        let full = time_to_full(&fill, &rule, at(6.0)).unwrap();
        assert!((hours_between(at(6.0), full) - 39.0).abs() < 1e-6);
        assert_eq!(
            time_to_full(&series(2.0, &[50.0, 40.0, 30.0]), &rule, at(4.0)),
            None
        );
    }

    #[test]
    fn collections_are_falls_in_fill_level_and_partial_ones_are_marked() {
        let rule = ContainerRule::default();
        let levels = [20.0, 50.0, 80.0, 2.0, 30.0, 90.0, 45.0, 50.0, 60.0, 55.0];
        let mut fill = series(6.0, &levels);
        // A flagged reading of 0 % (a sensor fault) is not a collection.
        fill.insert(
            2,
            Sample {
                ts: at(9.0),
                value: 0.0,
                quality: Quality::DEVICE_BAD,
            },
        );
        let found = collections(&fill, &rule);
        let summary: Vec<(f64, f64, f64, bool)> = found
            .iter()
            .map(|c| (hours_between(at(0.0), c.at), c.before, c.after, c.partial))
            .collect();
        assert_eq!(
            summary,
            [(18.0, 80.0, 2.0, false), (36.0, 90.0, 45.0, true)],
            "the 5-point dip at the end is no collection"
        );
        assert!((found[0].volume_litres(1100.0) - 858.0).abs() < 1e-9);

        // Weighed lifts: each weighing is a collection, even one that found the container empty
        // (0 % before and after), and a fall the scale missed still counts.
        let fill = vec![
            Sample::good(at(0.0), 70.0),
            Sample::good(at(0.0) + Duration::seconds(1), 0.0),
            Sample::good(at(24.0), 0.0),
            Sample::good(at(24.0) + Duration::seconds(1), 0.0),
            Sample::good(at(48.0), 90.0),
            Sample::good(at(49.0), 5.0),
        ];
        let weighings = vec![Sample::good(at(0.0), 21.5), Sample::good(at(24.0), 0.0)];
        let weighed = weighed_collections(&fill, &weighings, &rule);
        let summary: Vec<(f64, f64, f64, Option<f64>)> = weighed
            .iter()
            .map(|c| (hours_between(at(0.0), c.at), c.before, c.after, c.mass_kg))
            .collect();
        assert_eq!(
            summary,
            [
                (0.0, 70.0, 0.0, Some(21.5)),
                (24.0, 0.0, 0.0, Some(0.0)),
                (49.0, 90.0, 5.0, None),
            ]
        );
        let e = efficiency(&found, &rule).unwrap();
        assert_eq!((e.collections, e.near_empty, e.full), (2, 0, 0));
        assert_eq!(e.mean_fill_at_collection, 85.0);
        assert_eq!(efficiency(&[], &rule), None);
    }

    #[test]
    fn overflows_are_full_spells_longer_than_allowed() {
        let rule = ContainerRule {
            overflow_after: Duration::hours(2),
            ..ContainerRule::default()
        };
        // Hourly: full for 1 h (no event), then full from hour 5 to hour 9 (an event), then full
        // from hour 11 to now (an event still going on).
        let levels = [
            90.0, 100.0, 95.0, 96.0, 98.0, 100.0, 100.0, 100.0, 100.0, 20.0, 40.0, 100.0, 100.0,
            100.0,
        ];
        let fill = series(1.0, &levels);
        let events = overflows(&fill, &rule, at(14.0));
        assert_eq!(
            events,
            [
                Overflow {
                    from: at(5.0),
                    until: Some(at(9.0))
                },
                Overflow {
                    from: at(11.0),
                    until: None
                },
            ]
        );
        assert_eq!(events[1].hours(at(14.0)), 3.0);
        assert!(
            overflows(&fill, &rule, at(13.0)).len() == 1,
            "not yet 2 hours at 13:00"
        );
    }
}
