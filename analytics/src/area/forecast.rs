//! Expected levels from forecasts. An issue is current from its issue time until the next issue
//! of the same source, or until it is older than the configured age. While current, it puts the
//! area at the highest severity whose threshold the forecast reaches and holds (hysteresis as for
//! readings) for at least the persistence, within the area's horizon and not yet over. A lower
//! level follows only after the threshold's hold, as for readings.

use super::{Level, Steps, Trigger, WarningKind};
use crate::level::{LevelRule, Severity};
use chrono::{DateTime, Duration, Utc};

/// One issue of one source for one sensor, values by rising valid time.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub issued_at: DateTime<Utc>,
    pub values: Vec<(DateTime<Utc>, f64)>,
}

/// A level sensor's forecasts from one source.
#[derive(Debug, Clone)]
pub struct SensorForecasts {
    pub sensor: String,
    pub source: String,
    /// Tidemark's own nowcast (its warnings are Possible, not Likely).
    pub nowcast: bool,
    pub rule: LevelRule,
    /// By rising issue time.
    pub issues: Vec<Issue>,
}

/// How an area uses forecasts.
#[derive(Debug, Clone, Copy)]
pub struct ForecastUse {
    /// How far ahead of each moment a crossing counts.
    pub horizon: Duration,
    /// An issue older than this is no longer current.
    pub max_age: Duration,
    /// No step later than this: the data time the area's readings have reached (forecasts are
    /// not put ahead of the readings that arrive with them).
    pub until: DateTime<Utc>,
}

impl Default for ForecastUse {
    /// A day ahead, issues current for twelve hours, no limit from the readings.
    fn default() -> Self {
        ForecastUse {
            horizon: Duration::hours(24),
            max_age: Duration::hours(12),
            until: DateTime::<Utc>::MAX_UTC,
        }
    }
}

/// A forecast crossing: from the first value at or above the threshold to the end of the last
/// value that holds it (a value stands until the next one).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    severity: Severity,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    peak: f64,
}

/// The runs of one issue that last at least the persistence, per severity.
fn runs(rule: &LevelRule, values: &[(DateTime<Utc>, f64)]) -> Vec<Run> {
    let mut out = Vec::new();
    for severity in Severity::ALL {
        let threshold = rule.threshold(severity);
        let mut current: Option<Run> = None;
        for (i, (at, value)) in values.iter().enumerate() {
            // A value stands until the next one; the last for as long as the step before it.
            let until = match (values.get(i + 1), i.checked_sub(1).map(|p| values[p].0)) {
                (Some((next, _)), _) => *next,
                (None, Some(previous)) => *at + (*at - previous),
                (None, None) => *at,
            };
            let inside = match current {
                None => *value >= threshold,
                Some(_) => *value >= threshold - rule.hysteresis,
            };
            match (&mut current, inside) {
                (None, true) => {
                    current = Some(Run {
                        severity,
                        start: *at,
                        end: until,
                        peak: *value,
                    })
                }
                (Some(run), true) => {
                    run.end = until;
                    run.peak = run.peak.max(*value);
                }
                (Some(_), false) => out.extend(current.take()),
                (None, false) => {}
            }
        }
        out.extend(current);
    }
    out.retain(|r| r.end > r.start && r.end - r.start >= rule.persistence);
    out
}

/// The expected level one issue gives at `t`.
fn level_at(
    forecasts: &SensorForecasts,
    issue: &Issue,
    runs: &[Run],
    horizon: Duration,
    t: DateTime<Utc>,
) -> Option<(Level, Trigger)> {
    let run = runs
        .iter()
        .filter(|r| r.start <= t + horizon && r.end > t)
        .max_by(|a, b| a.severity.cmp(&b.severity).then(b.start.cmp(&a.start)))?;
    Some((
        Level {
            severity: run.severity,
            kind: WarningKind::Expected,
        },
        Trigger {
            sensor: forecasts.sensor.clone(),
            cause: "forecast",
            value: run.peak * forecasts.rule.sign(),
            threshold: forecasts.rule.threshold(run.severity),
            rate: None,
            expected_at: Some(run.start),
            forecast: Some(super::ForecastRef {
                source: forecasts.source.clone(),
                issued_at: issue.issued_at,
                nowcast: forecasts.nowcast,
            }),
        },
    ))
}

/// The expected level the sensor's forecasts give, at every moment it changes.
pub fn steps(forecasts: &SensorForecasts, using: ForecastUse) -> Steps {
    let mut raw = Steps::new();
    for (i, issue) in forecasts.issues.iter().enumerate() {
        let from = issue.issued_at;
        let expires = issue.issued_at + using.max_age;
        let to = forecasts
            .issues
            .get(i + 1)
            .map_or(expires, |next| next.issued_at.min(expires));
        if from > using.until || to <= from {
            continue;
        }
        // Falling thresholds: the rising runs of the negated values (see `level_steps`).
        let sign = forecasts.rule.sign();
        let oriented: Vec<(DateTime<Utc>, f64)> =
            issue.values.iter().map(|(at, v)| (*at, v * sign)).collect();
        let runs = runs(&forecasts.rule.oriented(), &oriented);
        let mut times = vec![from];
        for run in &runs {
            times.push(run.start - using.horizon);
            times.push(run.end);
            times.push(run.end + Duration::milliseconds(1));
        }
        times.retain(|t| *t >= from && *t < to && *t <= using.until);
        times.sort();
        times.dedup();
        for t in times {
            match level_at(forecasts, issue, &runs, using.horizon, t) {
                Some((level, trigger)) => raw.push((t, Some(level), Some(trigger))),
                None => raw.push((t, None, None)),
            }
        }
        let lapses = forecasts
            .issues
            .get(i + 1)
            .is_none_or(|next| next.issued_at > expires);
        if lapses && to <= using.until {
            raw.push((to, None, None));
        }
    }
    hold(raw, forecasts.rule.hold)
}

/// Delays every fall of the level by `hold`: a forecast that eases must keep doing so before the
/// warning eases with it. A rise (or the same level again) cancels a fall under way.
fn hold(raw: Steps, hold: Duration) -> Steps {
    let mut out = Steps::new();
    let mut in_force: Option<Level> = None;
    // A fall waiting for its hold: when it takes effect, and to what.
    let mut pending: Option<(DateTime<Utc>, Option<Level>, Option<Trigger>)> = None;
    fn push(out: &mut Steps, at: DateTime<Utc>, level: Option<Level>, trigger: Option<Trigger>) {
        if out.last().is_none_or(|(_, l, _)| *l != level) {
            out.push((at, level, trigger));
        }
    }
    for (at, level, trigger) in raw {
        if let Some((due, l, t)) = pending.take() {
            if due <= at {
                push(&mut out, due, l, t);
                in_force = l;
            } else {
                pending = Some((due, l, t));
            }
        }
        if out.is_empty() || level >= in_force {
            pending = None;
            push(&mut out, at, level, trigger);
            in_force = level;
        } else {
            let due = pending.as_ref().map_or(at + hold, |(due, _, _)| *due);
            pending = Some((due, level, trigger));
        }
    }
    if let Some((due, l, t)) = pending {
        push(&mut out, due, l, t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64, m: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 10, 19, 0, 0, 0).unwrap()
            + Duration::hours(h)
            + Duration::minutes(m)
    }

    fn rule() -> LevelRule {
        LevelRule {
            thresholds: [1.0, 1.5, 2.0],
            falling: false,
            persistence: Duration::minutes(20),
            min_readings: 1,
            hysteresis: 0.05,
            hold: Duration::hours(1),
        }
    }

    /// Hourly values from `start` hours after issue.
    fn issue(at: DateTime<Utc>, values: &[f64]) -> Issue {
        Issue {
            issued_at: at,
            values: values
                .iter()
                .enumerate()
                .map(|(i, v)| (at + Duration::hours(i as i64), *v))
                .collect(),
        }
    }

    fn sensor(issues: Vec<Issue>) -> SensorForecasts {
        SensorForecasts {
            sensor: "flensburg.sea_level".into(),
            source: "dmi".into(),
            nowcast: false,
            rule: rule(),
            issues,
        }
    }

    fn using(horizon: i64) -> ForecastUse {
        ForecastUse {
            horizon: Duration::hours(horizon),
            max_age: Duration::hours(48),
            until: t(100, 0),
        }
    }

    fn severities(steps: &Steps) -> Vec<(DateTime<Utc>, Option<Severity>)> {
        steps
            .iter()
            .map(|(at, l, _)| (*at, l.map(|l| l.severity)))
            .collect()
    }

    #[test]
    fn a_crossing_within_the_horizon_is_expected_from_the_issue_and_held_after_it_passes() {
        // Issued at 0: 1.6 m from hour 10 to hour 12, then falling.
        let mut values = vec![0.5; 10];
        values.extend([1.6, 1.6, 1.6, 0.5, 0.5]);
        let steps = steps(&sensor(vec![issue(t(0, 0), &values)]), using(6));
        assert_eq!(
            severities(&steps),
            [
                (t(0, 0), None),
                // The crossing comes within the 6-hour horizon at hour 4.
                (t(4, 0), Some(Severity::Warning)),
                // It ends at hour 13 (the last 1.6 m value stands until the next); held an hour.
                (t(14, 0), None),
            ]
        );
        let trigger = steps[1].2.as_ref().unwrap();
        assert_eq!(trigger.cause, "forecast");
        assert_eq!(trigger.expected_at, Some(t(10, 0)));
        assert_eq!(trigger.forecast.as_ref().unwrap().source, "dmi");
        assert_eq!(steps[1].1.unwrap().kind, WarningKind::Expected);
    }

    #[test]
    fn a_crossing_shorter_than_the_persistence_or_beyond_the_horizon_raises_nothing() {
        // Ten minutes at 1.6 m: less than the 20-minute persistence.
        let short = Issue {
            issued_at: t(0, 0),
            values: vec![(t(0, 0), 0.5), (t(0, 10), 1.6), (t(0, 20), 0.5)],
        };
        let short_steps = steps(&sensor(vec![short]), using(6));
        assert_eq!(severities(&short_steps), [(t(0, 0), None)]);

        let mut values = vec![0.5; 20];
        values.extend([1.6, 1.6]);
        let mut use_short = using(6);
        use_short.until = t(12, 0);
        let far = steps(&sensor(vec![issue(t(0, 0), &values)]), use_short);
        assert_eq!(severities(&far), [(t(0, 0), None)]);
    }

    #[test]
    fn a_later_issue_replaces_an_earlier_one_and_an_old_issue_lapses() {
        let mut values = vec![0.5; 5];
        values.extend([1.2, 1.2, 0.5]);
        let first = issue(t(0, 0), &values);
        // Six hours later the forecast is for Severe.
        let mut values = vec![0.5; 2];
        values.extend([2.1, 2.1, 0.5]);
        let second = issue(t(6, 0), &values);
        let steps = steps(&sensor(vec![first, second]), using(24));
        assert_eq!(
            severities(&steps),
            [
                (t(0, 0), Some(Severity::Alert)),
                (t(6, 0), Some(Severity::Severe)),
                // The second issue's crossing ends at hour 10, held an hour.
                (t(11, 0), None),
            ]
        );
    }

    #[test]
    fn nothing_comes_after_the_readings_have_reached() {
        let mut values = vec![0.5; 3];
        values.extend([1.6, 1.6]);
        let mut limited = using(24);
        limited.until = t(5, 0);
        let later = issue(t(6, 0), &values);
        assert!(steps(&sensor(vec![later]), limited).is_empty());
    }
}
