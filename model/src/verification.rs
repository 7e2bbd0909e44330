//! Warning verification against what the gauges measured, independently of the warning state
//! machine.
//!
//! **Observed events.** For each flood area, severity and level sensor of the area, the usable
//! readings at or above the severity's threshold form runs; a run counts when it is held for the
//! threshold's persistence (its first and last reading at least that far apart) by at least its
//! minimum number of readings. The runs of an area's sensors that overlap are one event, which
//! starts at its first crossing (the first reading at or above the threshold) and lasts until the
//! first reading back below it.
//!
//! **Warnings.** From an area's recorded events (raised, changed, lifted), the periods in which a
//! warning of the severity or higher was in force, observed or expected.
//!
//! **Matching.** An event is a *hit* when a warning period of its severity or higher starts before
//! the event ends (plus `grace`) and lasts until at least its first crossing; its *lead time* is
//! the first crossing minus the earliest such period's start, negative when the warning came
//! after the water. A later event caught by the same period (a warning kept in force through
//! several tides) is a hit without a lead time of its own. An event without one is a *miss*. A warning period that no event of its
//! severity overlaps (up to `grace` after it) is a *false alarm*. Over all areas and severities:
//! the probability of detection (hits over events), the false alarm ratio (false alarms over
//! warning periods matched or not) and the critical success index (hits over hits, misses and
//! false alarms), as the WMO's verification guidance defines them.

use crate::warning::{EventKind, Severity};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// A level sensor's thresholds, as the flood setup gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Alert, warning, severe.
    pub levels: [f64; 3],
    pub persistence: Duration,
    pub min_readings: u32,
}

impl Thresholds {
    fn of(&self, severity: Severity) -> f64 {
        self.levels[usize::from(severity.level().clamp(1, 3).unsigned_abs()) - 1]
    }
}

/// A level sensor of an area with its usable readings, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSeries {
    pub sensor: String,
    pub thresholds: Thresholds,
    pub readings: Vec<(DateTime<Utc>, f64)>,
}

/// A recorded warning event of an area.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedEvent {
    pub kind: EventKind,
    /// The severity in force after a raised or changed event.
    pub severity: Option<Severity>,
    pub at: DateTime<Utc>,
}

/// What the gauges of an area measured: an event of one severity.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The first reading at or above the threshold.
    pub first_crossing: DateTime<Utc>,
    /// The first reading back below it (or the last reading, while it lasts).
    pub until: DateTime<Utc>,
    /// The sensor that crossed first.
    pub sensor: String,
    /// When the warning that caught it started, for a hit.
    pub warned_at: Option<DateTime<Utc>>,
    /// The warning that caught it was already in force for an earlier event of the area: a hit,
    /// but without a lead time of its own.
    pub continues: bool,
}

impl Observed {
    /// First crossing minus the warning's start, in minutes: negative when the warning was late;
    /// none for a miss, or when the warning [`continues`](Observed::continues) from an earlier
    /// event.
    pub fn lead_minutes(&self) -> Option<i64> {
        self.warned_at
            .filter(|_| !self.continues)
            .map(|warned| (self.first_crossing - warned).num_minutes())
    }
}

/// How one area's warnings of one severity fared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    /// Every observed event, hit or missed.
    pub events: Vec<Observed>,
    /// The warning periods that came to nothing: `(start, end)`.
    pub false_alarms: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Counts and rates over any set of scores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub hits: u32,
    pub misses: u32,
    pub false_alarms: u32,
}

impl Score {
    pub fn tally(&self) -> Tally {
        let hits = self.events.iter().filter(|e| e.warned_at.is_some()).count();
        Tally {
            hits: count(hits),
            misses: count(self.events.len() - hits),
            false_alarms: count(self.false_alarms.len()),
        }
    }

    /// The hits' lead times in minutes, in the order of the events.
    pub fn lead_minutes(&self) -> Vec<i64> {
        self.events
            .iter()
            .filter_map(Observed::lead_minutes)
            .collect()
    }

    pub fn mean_lead_minutes(&self) -> Option<f64> {
        let leads = self.lead_minutes();
        (!leads.is_empty()).then(|| leads.iter().sum::<i64>() as f64 / leads.len() as f64)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl std::ops::Add for Tally {
    type Output = Tally;

    fn add(self, other: Tally) -> Tally {
        Tally {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            false_alarms: self.false_alarms + other.false_alarms,
        }
    }
}

impl Tally {
    /// Hits over observed events.
    pub fn probability_of_detection(&self) -> Option<f64> {
        ratio(self.hits, self.hits + self.misses)
    }

    /// False alarms over warnings that were matched or not.
    pub fn false_alarm_ratio(&self) -> Option<f64> {
        ratio(self.false_alarms, self.hits + self.false_alarms)
    }

    /// Hits over hits, misses and false alarms.
    pub fn critical_success_index(&self) -> Option<f64> {
        ratio(self.hits, self.hits + self.misses + self.false_alarms)
    }
}

fn ratio(part: u32, whole: u32) -> Option<f64> {
    (whole > 0).then(|| f64::from(part) / f64::from(whole))
}

/// The runs of `readings` at or above `threshold` held for the persistence: `(first, until)`.
pub fn runs(
    readings: &[(DateTime<Utc>, f64)],
    threshold: f64,
    persistence: Duration,
    min_readings: u32,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    // (first, last at or above, readings in the run)
    let mut run: Option<(DateTime<Utc>, DateTime<Utc>, u32)> = None;
    let held = |first: DateTime<Utc>, last: DateTime<Utc>, n: u32| {
        last - first >= persistence && n >= min_readings.max(1)
    };
    for &(at, value) in readings {
        if value >= threshold {
            run = Some(match run {
                Some((first, _, n)) => (first, at, n + 1),
                None => (at, at, 1),
            });
        } else if let Some((first, last, n)) = run.take() {
            if held(first, last, n) {
                out.push((first, at));
            }
        }
    }
    if let Some((first, last, n)) = run {
        if held(first, last, n) {
            out.push((first, last));
        }
    }
    out
}

/// The periods a warning of `severity` or higher was in force, from an area's events in order;
/// a period still open at `end` ends there.
pub fn in_force(
    events: &[IssuedEvent],
    severity: Severity,
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut periods = Vec::new();
    let mut since: Option<DateTime<Utc>> = None;
    for event in events {
        let sets = matches!(event.kind, EventKind::Raised | EventKind::Changed);
        let reaches = sets && event.severity >= Some(severity);
        match (since, reaches) {
            (None, true) => since = Some(event.at),
            (Some(from), false) if sets || event.kind == EventKind::Lifted => {
                periods.push((from, event.at));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        periods.push((from, end));
    }
    periods
}

/// Scores an area for every severity from its level sensors' readings and its recorded events
/// (in order); periods still in force end at `end`.
pub fn score_area(
    sensors: &[SensorSeries],
    events: &[IssuedEvent],
    grace: Duration,
    end: DateTime<Utc>,
) -> BTreeMap<Severity, Score> {
    let mut scores = BTreeMap::new();
    for severity in Severity::ALL {
        // Every sensor's runs, then overlapping runs merged into the area's events.
        let mut runs_of_area: Vec<(DateTime<Utc>, DateTime<Utc>, &str)> = sensors
            .iter()
            .flat_map(|s| {
                runs(
                    &s.readings,
                    s.thresholds.of(severity),
                    s.thresholds.persistence,
                    s.thresholds.min_readings,
                )
                .into_iter()
                .map(move |(first, until)| (first, until, s.sensor.as_str()))
            })
            .collect();
        runs_of_area.sort();
        let mut observed: Vec<Observed> = Vec::new();
        for (first, until, sensor) in runs_of_area {
            match observed.last_mut() {
                Some(last) if first <= last.until => last.until = last.until.max(until),
                _ => observed.push(Observed {
                    first_crossing: first,
                    until,
                    sensor: sensor.to_owned(),
                    warned_at: None,
                    continues: false,
                }),
            }
        }
        let periods = in_force(events, severity, end);
        let mut previous: Option<DateTime<Utc>> = None;
        for event in &mut observed {
            event.warned_at = periods
                .iter()
                .filter(|(from, to)| *from <= event.until + grace && *to >= event.first_crossing)
                .map(|(from, _)| *from)
                .min();
            event.continues = event.warned_at.is_some() && event.warned_at == previous;
            if event.warned_at.is_some() {
                previous = event.warned_at;
            }
        }
        let false_alarms = periods
            .into_iter()
            .filter(|(from, to)| {
                !observed
                    .iter()
                    .any(|e| e.first_crossing <= *to + grace && e.until >= *from)
            })
            .collect();
        let score = Score {
            events: observed,
            false_alarms,
        };
        if !score.events.is_empty() || !score.false_alarms.is_empty() {
            scores.insert(severity, score);
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 10, 20, h, m, 0).unwrap()
    }

    fn event(kind: EventKind, severity: Option<Severity>, h: u32) -> IssuedEvent {
        IssuedEvent {
            kind,
            severity,
            at: at(h, 0),
        }
    }

    /// Readings every 10 minutes from 00:00, one per value.
    fn series(values: &[f64]) -> SensorSeries {
        SensorSeries {
            sensor: "s".into(),
            thresholds: Thresholds {
                levels: [1.0, 1.5, 2.0],
                persistence: Duration::minutes(20),
                min_readings: 1,
            },
            readings: values
                .iter()
                .enumerate()
                .map(|(i, v)| (at(0, 0) + Duration::minutes(10 * i as i64), *v))
                .collect(),
        }
    }

    #[test]
    fn a_run_counts_only_when_held_for_the_persistence() {
        let s = series(&[0.5, 1.2, 1.3, 0.5, 1.1, 1.2, 1.3, 1.1, 0.9]);
        let held = runs(&s.readings, 1.0, Duration::minutes(20), 1);
        // 00:10-00:20 is held for 10 minutes only; 00:40-01:10 for 30, until 01:20.
        assert_eq!(held, [(at(0, 40), at(1, 20))]);
        assert!(runs(&s.readings, 1.0, Duration::minutes(20), 5).is_empty());
        let open = series(&[0.5, 1.2, 1.3, 1.4]);
        assert_eq!(
            runs(&open.readings, 1.0, Duration::minutes(20), 1),
            [(at(0, 10), at(0, 30))],
            "a run lasting past the data ends at its last reading"
        );
    }

    #[test]
    fn hits_misses_false_alarms_and_lead_times_come_from_the_readings() {
        // Alert level from 01:00 to 03:00, warning level from 01:30 to 02:00; never severe.
        let mut values = vec![0.5; 6];
        values.extend([
            1.2, 1.2, 1.2, 1.6, 1.6, 1.6, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 0.5,
        ]);
        values.extend(vec![0.5; 12]);
        let sensors = [series(&values)];
        let events = [
            // An alert two hours ahead of the water, a warning an hour after it, lifted at 04:00.
            event(EventKind::Raised, Some(Severity::Alert), 0),
            event(EventKind::Changed, Some(Severity::Warning), 2),
            event(EventKind::Lifted, None, 4),
            // A severe warning that came to nothing: a false alarm at every severity it covers.
            event(EventKind::Raised, Some(Severity::Severe), 5),
            event(EventKind::Lifted, None, 6),
        ];
        let scores = score_area(&sensors, &events, Duration::minutes(30), at(8, 0));
        let alert = &scores[&Severity::Alert];
        assert_eq!(
            alert.tally(),
            Tally {
                hits: 1,
                misses: 0,
                false_alarms: 1
            }
        );
        assert_eq!(
            alert.lead_minutes(),
            [60],
            "crossing 01:00, alert in force from 00:00"
        );
        let warning = &scores[&Severity::Warning];
        assert_eq!((warning.tally().hits, warning.tally().false_alarms), (1, 1));
        assert_eq!(
            warning.lead_minutes(),
            [-30],
            "crossing 01:30, warning at 02:00 (within the grace after the 02:00 end)"
        );
        let severe = &scores[&Severity::Severe];
        assert_eq!(
            severe.tally(),
            Tally {
                hits: 0,
                misses: 0,
                false_alarms: 1
            }
        );
        let total = scores
            .values()
            .map(Score::tally)
            .fold(Tally::default(), |a, b| a + b);
        assert_eq!(total.probability_of_detection(), Some(1.0));
        assert_eq!(total.false_alarm_ratio(), Some(3.0 / 5.0));
        assert_eq!(total.critical_success_index(), Some(2.0 / 5.0));
        // Without warnings every event is a miss.
        let unwarned = score_area(&sensors, &[], Duration::minutes(30), at(8, 0));
        assert_eq!(unwarned[&Severity::Alert].tally().misses, 1);
        assert_eq!(unwarned[&Severity::Alert].tally().hits, 0);
    }

    #[test]
    fn a_warning_kept_in_force_through_two_events_has_one_lead_time() {
        // Two alert-level events, 00:10-00:40 and 01:10-01:40, under one alert from 00:00.
        let s = series(&[0.5, 1.2, 1.2, 1.2, 0.5, 0.5, 0.5, 1.2, 1.2, 1.2, 0.5]);
        let events = [
            event(EventKind::Raised, Some(Severity::Alert), 0),
            event(EventKind::Lifted, None, 3),
        ];
        let alert = &score_area(&[s], &events, Duration::zero(), at(8, 0))[&Severity::Alert];
        assert_eq!(alert.tally().hits, 2);
        assert!(alert.events[1].continues);
        assert_eq!(
            alert.lead_minutes(),
            [10],
            "only the first event has a lead time"
        );
    }

    #[test]
    fn overlapping_runs_of_an_area_s_sensors_are_one_event() {
        let a = series(&[0.5, 1.2, 1.2, 1.2, 0.5, 0.5]);
        let b = SensorSeries {
            sensor: "t".into(),
            ..series(&[0.5, 0.5, 1.2, 1.2, 1.2, 1.2, 0.5])
        };
        let scores = score_area(&[a, b], &[], Duration::zero(), at(8, 0));
        let alert = &scores[&Severity::Alert];
        assert_eq!(alert.events.len(), 1);
        assert_eq!(alert.events[0].first_crossing, at(0, 10));
        assert_eq!(alert.events[0].until, at(1, 0));
        assert_eq!(alert.events[0].sensor, "s");
    }
}
