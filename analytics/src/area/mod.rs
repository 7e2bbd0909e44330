//! A flood area's warning timeline: the highest severity among its stations and rules at every
//! moment the data changes it, when it is stale, and the events that take a recorded warning state
//! to the evaluated one. Evaluation starts from the readings every time, so late and out-of-order
//! readings are simply part of the window they fall into.

use crate::level::{LevelRule, LevelState, Severity};
use crate::quality::{self, QcRules};
use crate::rain::{self, RainRule};
use crate::series::Sample;
use crate::trend;
use chrono::{DateTime, Duration, Utc};
use tidemark_model::Quality;

pub use tidemark_model::warning::{EventKind, WarningKind};

/// A severity and how it is known. Orders by severity, then observed above expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level {
    pub severity: Severity,
    pub kind: WarningKind,
}

/// What drove a level.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub sensor: String,
    /// level, projection, rain or upstream.
    pub cause: &'static str,
    pub value: f64,
    pub threshold: f64,
    /// Units per hour, where a trend was measured.
    pub rate: Option<f64>,
    /// For a projection or a forecast: when the threshold will be reached.
    pub expected_at: Option<DateTime<Utc>>,
    /// For a forecast: the issue behind it.
    pub forecast: Option<ForecastRef>,
}

/// The forecast issue behind an expected level.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastRef {
    pub source: String,
    pub issued_at: DateTime<Utc>,
    /// Tidemark's own nowcast.
    pub nowcast: bool,
}

/// One source's (or the area's) state: each entry holds from its time until the next.
pub type Steps = Vec<(DateTime<Utc>, Option<Level>, Option<Trigger>)>;

pub struct LevelSensor {
    pub key: String,
    pub rule: LevelRule,
    pub qc: QcRules,
    pub rate_window: Duration,
    pub lead_time: Duration,
    /// Rising at least this fast (units per hour) raises an expected alert whatever the level.
    pub rate_alert: Option<f64>,
    pub expected_interval: Duration,
    pub samples: Vec<Sample>,
    /// When the newest reading arrived. A station whose readings are still arriving is not
    /// silent, however old their timestamps (a replay, a back-fill).
    pub last_received: Option<DateTime<Utc>>,
}

pub struct RainSensor {
    pub key: String,
    pub rules: Vec<RainRule>,
    /// How long a rainfall alert stays after the accumulation last exceeded a rule.
    pub hold: Duration,
    pub samples: Vec<Sample>,
}

pub struct Upstream {
    pub sensor: LevelSensor,
    pub travel_time: Duration,
}

pub struct AreaInput {
    pub key: String,
    pub levels: Vec<LevelSensor>,
    pub rains: Vec<RainSensor>,
    pub upstream: Vec<Upstream>,
    /// Each level sensor's forecasts, per source, and how the area uses them.
    pub forecasts: Vec<forecast::SensorForecasts>,
    pub forecast_use: forecast::ForecastUse,
    /// A station is stale after this many expected intervals without a reading.
    pub stale_after_intervals: i32,
}

/// A threshold crossing, for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub sensor: String,
    pub severity: Severity,
    pub up: bool,
    pub at: DateTime<Utc>,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// The newest reading of any of the area's sensors.
    pub latest: Option<DateTime<Utc>>,
    pub steps: Steps,
    /// When the area's stations became stale (true) or fresh again (false).
    pub stale: Vec<(DateTime<Utc>, bool)>,
    pub crossings: Vec<Crossing>,
    /// Readings whose data-quality flags differ from what is stored: `(sensor, ts, new flags)`.
    pub flags: Vec<(String, DateTime<Utc>, Quality)>,
    /// Each level sensor's state at its newest usable reading.
    pub trends: Vec<SensorTrend>,
}

/// A level sensor at its newest usable reading: the severity its thresholds give (with their
/// persistence and hysteresis), how fast it rises, and when it would reach the next threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorTrend {
    pub sensor: String,
    pub at: DateTime<Utc>,
    pub value: f64,
    pub severity: Option<Severity>,
    /// Units per hour over the sensor's rate window; `None` with too few readings in it.
    pub rate: Option<f64>,
    /// The next threshold above the current severity the trend reaches, and when, however far off.
    pub projected: Option<(Severity, DateTime<Utc>)>,
}

impl LevelSensor {
    fn rule_rate_alert(&self) -> Option<f64> {
        self.rate_alert.filter(|r| r.is_finite() && *r > 0.0)
    }
}

/// The rate of rise at each reading of a level sensor's timeline in turn, each from the readings in
/// its own window. In time order (as series are read) the window's first reading only moves
/// forward, and each reading's time is counted in microseconds once, so a look-back of two weeks
/// costs no calendar arithmetic per reading in its window. Out of order (or with times finer than a
/// microsecond), each rate looks at all the readings before it. Either way the rate is the one
/// [`trend::rate_of_rise`] gives for the readings up to the one it is worked out at.
struct RateWalk<'a> {
    usable: &'a [Sample],
    window: Duration,
    /// Each reading's time in microseconds since the epoch, and the window's length likewise,
    /// when the walk can count in them.
    counted: Option<(Vec<i64>, i64)>,
    /// The first reading inside the window of the reading last asked for.
    first: usize,
}

impl<'a> RateWalk<'a> {
    fn new(usable: &'a [Sample], window: Duration) -> Self {
        let whole_micros = |d: Duration| d.subsec_nanos() % 1_000 == 0;
        let counted = window
            .num_microseconds()
            .filter(|_| whole_micros(window))
            .filter(|_| {
                usable.windows(2).all(|w| w[0].ts <= w[1].ts)
                    && usable
                        .iter()
                        .all(|s| s.ts.timestamp_subsec_nanos() % 1_000 == 0)
            })
            .map(|window| {
                (
                    usable.iter().map(|s| s.ts.timestamp_micros()).collect(),
                    window,
                )
            });
        RateWalk {
            usable,
            window,
            counted,
            first: 0,
        }
    }

    /// The rate at reading `i`. Asked for readings in order, each once.
    fn at(&mut self, i: usize) -> Option<f64> {
        match &self.counted {
            Some((times, window)) => {
                let from = times[i].saturating_sub(*window);
                while self.first < i && times[self.first] <= from {
                    self.first += 1;
                }
                let (first, upto) = (self.first, i + 1);
                trend::rate_in_window(&times[first..upto], &self.usable[first..upto], from)
            }
            None => trend::rate_of_rise(&self.usable[..=i], self.usable[i].ts, self.window),
        }
    }
}

/// A level sensor's timeline, from its readings and the data-quality flags [`quality::check`] gave
/// them (worked out once per evaluation: the flags are reported too).
fn level_steps(
    sensor: &LevelSensor,
    flags: &[Quality],
    observed_only: bool,
    crossings: &mut Vec<Crossing>,
    trends: &mut Vec<SensorTrend>,
) -> Steps {
    // Falling thresholds are rising ones on negated values: everything below compares
    // `oriented` values with the `rule`'s thresholds, and reports natural ones (times `sign`).
    let sign = sensor.rule.sign();
    let rule = sensor.rule.oriented();
    let usable: Vec<Sample> = quality::usable_with(&sensor.samples, flags)
        .into_iter()
        .map(|s| Sample {
            value: s.value * sign,
            ..s
        })
        .collect();
    let mut state = LevelState::default();
    let mut expected: Option<(Level, DateTime<Utc>, Trigger)> = None;
    let mut out = Steps::new();
    // The rate at each reading looks only at the readings in its window, rather than all the
    // readings before it, which made a look-back of two weeks cost quadratic time.
    let mut rates = RateWalk::new(&usable, sensor.rate_window);
    for (i, sample) in usable.iter().enumerate() {
        if let Some(change) = state.observe(&rule, sample.ts, sample.value) {
            let (low, high, up) = if change.to > change.from {
                (change.from, change.to, true)
            } else {
                (change.to, change.from, false)
            };
            for severity in Severity::ALL
                .into_iter()
                .filter(|s| Some(*s) > low && Some(*s) <= high)
            {
                crossings.push(Crossing {
                    sensor: sensor.key.clone(),
                    severity,
                    up,
                    at: sample.ts,
                    value: sample.value * sign,
                });
            }
        }
        let observed = state.severity.map(|severity| {
            (
                Level {
                    severity,
                    kind: WarningKind::Observed,
                },
                Trigger {
                    sensor: sensor.key.clone(),
                    cause: "level",
                    value: sample.value * sign,
                    threshold: sensor.rule.threshold(severity),
                    rate: None,
                    expected_at: None,
                    forecast: None,
                },
            )
        });
        let mut best = observed;
        if !observed_only {
            let rate = rates.at(i);
            let projected = rate.and_then(|rate| {
                Severity::ALL.into_iter().rev().find_map(|severity| {
                    if Some(severity) <= state.severity {
                        return None;
                    }
                    // Compared as a span first: the time itself only for a projection kept.
                    let ahead = trend::time_ahead(rule.threshold(severity), sample.value, rate)?;
                    (ahead <= sensor.lead_time).then(|| {
                        (
                            Level {
                                severity,
                                kind: WarningKind::Expected,
                            },
                            Trigger {
                                sensor: sensor.key.clone(),
                                cause: "projection",
                                value: sample.value * sign,
                                threshold: sensor.rule.threshold(severity),
                                rate: Some(rate * sign),
                                expected_at: Some(sample.ts + ahead),
                                forecast: None,
                            },
                        )
                    })
                })
            });
            let fast_rise = rate
                .zip(sensor.rule_rate_alert())
                .filter(|(rate, limit)| rate >= limit)
                .filter(|_| state.severity.is_none())
                .map(|(rate, limit)| {
                    (
                        Level {
                            severity: Severity::Alert,
                            kind: WarningKind::Expected,
                        },
                        Trigger {
                            sensor: sensor.key.clone(),
                            cause: "rate",
                            value: sample.value * sign,
                            threshold: limit * sign,
                            rate: Some(rate * sign),
                            expected_at: None,
                            forecast: None,
                        },
                    )
                });
            let projected = match (projected, fast_rise) {
                (Some(p), Some(f)) => Some(if f.0 > p.0 { f } else { p }),
                (p, f) => p.or(f),
            };
            // A projection holds like a crossing does, so that a wobbling trend does not flap.
            if let Some((level, trigger)) = projected {
                if expected
                    .as_ref()
                    .is_none_or(|(l, until, _)| level >= *l || sample.ts >= *until)
                {
                    expected = Some((level, sample.ts + rule.hold, trigger));
                }
            }
            if let Some((level, until, trigger)) = &expected {
                if sample.ts < *until && best.as_ref().is_none_or(|(b, _)| level > b) {
                    best = Some((*level, trigger.clone()));
                }
            }
        }
        let (level, trigger) = match best {
            Some((level, trigger)) => (Some(level), Some(trigger)),
            None => (None, None),
        };
        push_step(&mut out, (sample.ts, level, trigger));
    }
    if let Some(last) = usable.last() {
        let rate = trend::rate_of_rise(&usable, last.ts, sensor.rate_window);
        let projected = rate.and_then(|rate| {
            Severity::ALL
                .into_iter()
                .filter(|s| Some(*s) > state.severity)
                .find_map(|s| {
                    trend::time_to(rule.threshold(s), last.value, rate, last.ts).map(|at| (s, at))
                })
        });
        trends.push(SensorTrend {
            sensor: sensor.key.clone(),
            at: last.ts,
            value: last.value * sign,
            severity: state.severity,
            rate: rate.map(|r| r * sign),
            projected,
        });
    }
    out
}

fn rain_steps(sensor: &RainSensor) -> Steps {
    let mut out = Steps::new();
    let mut last: Option<(DateTime<Utc>, Level, Trigger)> = None;
    let exceeded = rain::exceeded_at_each(&sensor.samples, &sensor.rules);
    for (sample, exceeded) in sensor.samples.iter().zip(exceeded) {
        if let Some((rule, mm)) = exceeded {
            let level = Level {
                severity: rule.severity,
                kind: WarningKind::Observed,
            };
            let trigger = Trigger {
                sensor: sensor.key.clone(),
                cause: "rain",
                value: mm,
                threshold: rule.more_than_mm,
                rate: None,
                expected_at: None,
                forecast: None,
            };
            last = Some((sample.ts, level, trigger));
        }
        let held = last
            .as_ref()
            .filter(|(at, _, _)| sample.ts < *at + sensor.hold)
            .map(|(_, level, trigger)| (*level, trigger.clone()));
        match held {
            Some((level, trigger)) => push_step(&mut out, (sample.ts, Some(level), Some(trigger))),
            None => push_step(&mut out, (sample.ts, None, None)),
        }
    }
    out
}

fn upstream_steps(upstream: &Upstream, flags: &[Quality]) -> Steps {
    level_steps(
        &upstream.sensor,
        flags,
        true,
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .into_iter()
    .map(|(at, level, trigger)| {
        let level = level.map(|_| Level {
            severity: Severity::Alert,
            kind: WarningKind::Expected,
        });
        let trigger = trigger.map(|t| Trigger {
            cause: "upstream",
            expected_at: Some(at + upstream.travel_time),
            ..t
        });
        (at + upstream.travel_time, level, trigger)
    })
    .collect()
}

/// Adds a source's state at a reading to its timeline, but for a quiet one after a quiet one.
///
/// A quiet entry after a quiet entry changes nothing [`combine`] makes of the timelines: the
/// source is quiet either way until its next entry, and no other source changes at that time
/// unless it has an entry there itself. Leaving them out keeps a source's timeline to its
/// changes (two weeks of quiet readings are one entry, not thousands of entries each the size of
/// a [`Trigger`]), and the area's timeline the same, as a test holds.
fn push_step(out: &mut Steps, step: (DateTime<Utc>, Option<Level>, Option<Trigger>)) {
    let quiet =
        |s: &(DateTime<Utc>, Option<Level>, Option<Trigger>)| s.1.is_none() && s.2.is_none();
    if quiet(&step) && out.last().is_some_and(quiet) {
        return;
    }
    out.push(step);
}

fn value_at(steps: &Steps, t: DateTime<Utc>) -> Option<(Level, Trigger)> {
    let index = steps.partition_point(|(at, _, _)| *at <= t);
    let (_, level, trigger) = steps.get(index.checked_sub(1)?)?;
    Some(((*level)?, trigger.clone()?))
}

fn stale_changes(area: &AreaInput, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, bool)> {
    // Per sensor, the periods without data; the area is stale while any sensor is.
    let mut marks: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for sensor in &area.levels {
        let limit = sensor.expected_interval * area.stale_after_intervals.max(1);
        let mut previous: Option<DateTime<Utc>> = None;
        for sample in &sensor.samples {
            if let Some(prev) = previous {
                if sample.ts - prev > limit {
                    marks.push((prev + limit, 1));
                    marks.push((sample.ts, -1));
                }
            }
            previous = Some(sample.ts);
        }
        if let Some(last) = previous {
            let silent = sensor
                .last_received
                .is_none_or(|received| now - received > limit);
            if now - last > limit && silent {
                marks.push((last + limit, 1));
            }
        }
    }
    marks.sort();
    let mut count = 0;
    let mut out: Vec<(DateTime<Utc>, bool)> = Vec::new();
    for (at, delta) in marks {
        let was = count > 0;
        count += delta;
        let is = count > 0;
        if was != is {
            out.push((at, is));
        }
    }
    out
}

/// The area's timeline from its sources': at each time any source changes (up to `now`), the
/// highest level among them, with its trigger, wherever that level changes.
fn combine(sources: &[Steps], now: DateTime<Utc>) -> Steps {
    let mut times: Vec<DateTime<Utc>> = sources
        .iter()
        .flat_map(|s| s.iter().map(|(at, _, _)| *at))
        .filter(|at| *at <= now)
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut steps = Steps::new();
    let mut current: Option<Level> = None;
    for t in times {
        let best = sources
            .iter()
            .filter_map(|s| value_at(s, t))
            .max_by(|a, b| a.0.cmp(&b.0));
        let level = best.as_ref().map(|(l, _)| *l);
        if level != current || steps.is_empty() {
            steps.push((t, level, best.map(|(_, trigger)| trigger)));
            current = level;
        }
    }
    steps
}

/// Evaluates an area at `now` from its readings.
pub fn evaluate(area: &AreaInput, now: DateTime<Utc>) -> Evaluation {
    let mut crossings = Vec::new();
    let mut trends = Vec::new();
    // Each level sensor's data-quality flags, once: its timeline leaves the flagged readings out,
    // and the flags that differ from the stored ones are reported.
    let level_flags: Vec<Vec<Quality>> = area
        .levels
        .iter()
        .map(|s| quality::check(&s.samples, &s.qc))
        .collect();
    let upstream_flags: Vec<Vec<Quality>> = area
        .upstream
        .iter()
        .map(|u| quality::check(&u.sensor.samples, &u.sensor.qc))
        .collect();
    let mut sources: Vec<Steps> = area
        .levels
        .iter()
        .zip(&level_flags)
        .map(|(s, flags)| level_steps(s, flags, false, &mut crossings, &mut trends))
        .collect();
    sources.extend(area.rains.iter().map(rain_steps));
    sources.extend(
        area.upstream
            .iter()
            .zip(&upstream_flags)
            .map(|(u, flags)| upstream_steps(u, flags)),
    );
    sources.extend(
        area.forecasts
            .iter()
            .map(|f| forecast::steps(f, area.forecast_use)),
    );
    let steps = combine(&sources, now);
    let latest = area
        .levels
        .iter()
        .map(|s| &s.samples)
        .chain(area.rains.iter().map(|s| &s.samples))
        .filter_map(|samples| samples.last().map(|s| s.ts))
        .max();
    let flags = area
        .levels
        .iter()
        .zip(&level_flags)
        .chain(area.upstream.iter().map(|u| &u.sensor).zip(&upstream_flags))
        .flat_map(|(sensor, flags)| {
            flags
                .iter()
                .copied()
                .zip(&sensor.samples)
                .filter(|(flag, sample)| *flag != sample.quality)
                .map(|(flag, sample)| (sensor.key.clone(), sample.ts, flag))
                .collect::<Vec<_>>()
        })
        .collect();
    Evaluation {
        latest,
        steps,
        stale: stale_changes(area, now),
        crossings,
        flags,
        trends,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AreaEvent {
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    /// The level in force after the event (the lifted one's for a lift).
    pub level: Option<Level>,
    pub trigger: Option<Trigger>,
}

/// The events after `after` that take the recorded state (`in_force`, `stale`) to the evaluated
/// one, in time order.
pub fn events(
    evaluation: &Evaluation,
    after: Option<DateTime<Utc>>,
    mut in_force: Option<Level>,
    mut stale: bool,
) -> Vec<AreaEvent> {
    let is_new = |at: DateTime<Utc>| after.is_none_or(|after| at > after);
    enum Change<'a> {
        Level(&'a (DateTime<Utc>, Option<Level>, Option<Trigger>)),
        Stale(DateTime<Utc>, bool),
    }
    let mut changes: Vec<(DateTime<Utc>, u8, Change)> = evaluation
        .steps
        .iter()
        .filter(|(at, _, _)| is_new(*at))
        .map(|step| (step.0, 0, Change::Level(step)))
        .chain(
            evaluation
                .stale
                .iter()
                .filter(|(at, _)| is_new(*at))
                .map(|(at, s)| (*at, 1, Change::Stale(*at, *s))),
        )
        .collect();
    changes.sort_by_key(|(at, order, _)| (*at, *order));
    let mut out = Vec::new();
    for (_, _, change) in changes {
        match change {
            Change::Level((at, level, trigger)) => {
                let kind = match (in_force, level) {
                    (None, Some(_)) => EventKind::Raised,
                    (Some(old), Some(new)) if old != *new => EventKind::Changed,
                    (Some(_), None) => EventKind::Lifted,
                    _ => continue,
                };
                out.push(AreaEvent {
                    kind,
                    at: *at,
                    level: if kind == EventKind::Lifted {
                        in_force
                    } else {
                        *level
                    },
                    trigger: trigger.clone(),
                });
                in_force = *level;
                if in_force.is_none() {
                    stale = false;
                }
            }
            Change::Stale(at, now_stale) => {
                if in_force.is_none() || now_stale == stale {
                    continue;
                }
                stale = now_stale;
                out.push(staleness_event(now_stale, at, in_force));
            }
        }
    }
    // A stale report made while readings were still on their way (a burst, a back-fill) is
    // corrected once they have arrived: the evaluated state at the end is what counts.
    let stale_at_end = evaluation.stale.last().is_some_and(|(_, s)| *s);
    if in_force.is_some() && stale != stale_at_end {
        let last_event = out.last().map(|e| e.at).or(after);
        let at = match (evaluation.latest, last_event) {
            (Some(latest), Some(last)) if latest <= last => last + Duration::milliseconds(1),
            (Some(latest), _) => latest,
            (None, Some(last)) => last + Duration::milliseconds(1),
            (None, None) => return out,
        };
        out.push(staleness_event(stale_at_end, at, in_force));
    }
    out
}

/// A stale (or fresh again) report on the warning in force.
fn staleness_event(stale: bool, at: DateTime<Utc>, in_force: Option<Level>) -> AreaEvent {
    AreaEvent {
        kind: if stale {
            EventKind::Stale
        } else {
            EventKind::Fresh
        },
        at,
        level: in_force,
        trigger: None,
    }
}

pub mod forecast;
#[cfg(test)]
mod tests;
