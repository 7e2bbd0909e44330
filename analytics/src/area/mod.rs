//! A flood area's warning timeline: the highest severity among its stations and rules at every
//! moment the data changes it, when it is stale, and the events that take a recorded warning state
//! to the evaluated one. An evaluation goes on from each sensor's timeline as the last one left it
//! ([`SensorProgress`]), taking only the readings after it. Where the readings it took may have
//! changed (a late reading among them, flags set: [`SensorProgress::changed`]), or the last of
//! them is no longer there as it was, it starts over from the readings, so late and out-of-order
//! readings are simply part of the window they fall into.

use crate::level::{LevelRule, LevelState, Severity};
use crate::quality::{self, QcRules};
use crate::rain::{self, RainRule};
use crate::series::Sample;
use crate::trend;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
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

/// One source's (or the area's) state from a time until the next entry's.
pub type Step = (DateTime<Utc>, Option<Level>, Option<Trigger>);

/// One source's (or the area's) state: each entry holds from its time until the next.
pub type Steps = Vec<Step>;

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
    /// The readings the sources' timelines took anew, rather than carried over from an earlier
    /// evaluation (the last few of a level sensor, whose flags are not final, count each time).
    pub taken: usize,
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

/// What a level sensor's timeline carries from one reading to the next.
#[derive(Debug, Clone, Default)]
struct LevelFold {
    state: LevelState,
    /// The expected level a projection holds, until when, and why.
    expected: Option<(Level, DateTime<Utc>, Trigger)>,
    /// The usable readings (values oriented) in the rate window up to the last one taken, that
    /// one last: the rate at the next reading looks at no older one.
    recent: Vec<Sample>,
}

/// Takes a level sensor's `usable` readings (in time order, values oriented) into `fold`, adding
/// its states at them to `steps` (which go on from `before`) and its threshold crossings to
/// `crossings`.
fn take_level(
    sensor: &LevelSensor,
    observed_only: bool,
    fold: &mut LevelFold,
    usable: &[Sample],
    (before, steps): (Option<&Step>, &mut Steps),
    crossings: &mut Vec<Crossing>,
) {
    // Falling thresholds are rising ones on negated values: everything below compares
    // `oriented` values with the `rule`'s thresholds, and reports natural ones (times `sign`).
    let sign = sensor.rule.sign();
    let rule = sensor.rule.oriented();
    let mut window = std::mem::take(&mut fold.recent);
    let first_new = window.len();
    window.extend_from_slice(usable);
    let LevelFold {
        state, expected, ..
    } = fold;
    // The rate at each reading looks only at the readings in its window, rather than all the
    // readings before it, which made a look-back of two weeks cost quadratic time.
    let mut rates = RateWalk::new(&window, sensor.rate_window);
    for (i, sample) in window.iter().enumerate().skip(first_new) {
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
                    *expected = Some((level, sample.ts + rule.hold, trigger));
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
        push_step(steps, before, (sample.ts, level, trigger));
    }
    // What the next reading's rate looks at: the readings after `last - rate_window` (in time
    // order, as what is carried is), and the last one whatever the window.
    if let Some(last) = window.last() {
        let from = last.ts - sensor.rate_window;
        let cut = window.partition_point(|s| s.ts <= from);
        window.drain(..cut.min(window.len() - 1));
    }
    fold.recent = window;
}

/// A level sensor's settings its timeline depends on.
#[derive(Debug, Clone, PartialEq)]
struct LevelSettings {
    rule: LevelRule,
    qc: QcRules,
    rate_window: Duration,
    lead_time: Duration,
    rate_alert: Option<f64>,
    observed_only: bool,
}

impl LevelSettings {
    fn of(sensor: &LevelSensor, observed_only: bool) -> LevelSettings {
        LevelSettings {
            rule: sensor.rule,
            qc: sensor.qc,
            rate_window: sensor.rate_window,
            lead_time: sensor.lead_time,
            rate_alert: sensor.rate_alert,
            observed_only,
        }
    }
}

/// A level sensor's timeline worked out up to a reading whose flags are final, to go on from.
#[derive(Debug, Clone)]
struct LevelProgress {
    settings: LevelSettings,
    /// The last reading taken, as it was given; `None` where the next evaluation may not go on
    /// from it (the readings were out of order).
    through: Option<Sample>,
    fold: LevelFold,
    /// The timeline up to `through`, from the last entry at or before the window's start.
    steps: Steps,
    /// The threshold crossings up to `through`, from the window's start.
    crossings: Vec<Crossing>,
    /// The gaps longer than `.0` between consecutive readings up to `through`, from those after
    /// the window's start.
    gaps: (Duration, Vec<Gap>),
}

/// A gap between two consecutive readings: the reading before and the one after.
type Gap = (DateTime<Utc>, DateTime<Utc>);

/// The gaps longer than `limit` between consecutive readings of `samples`.
fn gaps(samples: &[Sample], limit: Duration) -> impl Iterator<Item = Gap> + '_ {
    samples
        .windows(2)
        .filter(move |w| w[1].ts - w[0].ts > limit)
        .map(|w| (w[0].ts, w[1].ts))
}

/// A rain gauge's timeline worked out up to a reading, to go on from.
#[derive(Debug, Clone)]
struct RainProgress {
    rules: Vec<RainRule>,
    hold: Duration,
    /// As a [`LevelProgress`]'s.
    through: Option<Sample>,
    /// The readings in the longest rule's window up to `through`.
    recent: Vec<Sample>,
    /// The last time a rule was exceeded, with the level and trigger it gave.
    last: Option<(DateTime<Utc>, Level, Trigger)>,
    steps: Steps,
}

/// What one sensor's timelines carry over from one evaluation to the next: its evaluation as a
/// level sensor of its area, as an upstream sensor, or as a rain gauge.
///
/// A timeline is worked out from the first reading after what it carries, so an evaluation
/// looks only at new readings, and at the last few again whose data-quality flags their
/// neighbours still decide. Whatever the readings it was worked out from may have changed
/// ([`SensorProgress::changed`]), or the sensor's settings, is worked out again from the
/// readings given.
#[derive(Debug, Clone, Default)]
pub struct SensorProgress {
    levels: Vec<LevelProgress>,
    rain: Option<RainProgress>,
}

impl SensorProgress {
    /// The stored readings at or after `from` may differ from those given before: what was
    /// worked out from any of them is worked out again.
    pub fn changed(&mut self, from: DateTime<Utc>) {
        let holds = |through: &Option<Sample>| through.is_some_and(|t| t.ts < from);
        self.levels.retain(|p| holds(&p.through));
        if self.rain.as_ref().is_some_and(|p| !holds(&p.through)) {
            self.rain = None;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty() && self.rain.is_none()
    }
}

/// Each sensor's [`SensorProgress`], by key.
pub type Progress = HashMap<String, SensorProgress>;

/// Where `through` is in `samples`, if it is there as it was and the readings from it on are in
/// time order (those before it were when it was taken). Readings out of order are worked out anew
/// from all of them: what is carried holds only the readings a window in time order needs.
fn position_of(samples: &[Sample], through: Option<Sample>) -> Option<usize> {
    let through = through?;
    let after = samples.partition_point(|s| s.ts <= through.ts);
    let i = after.checked_sub(1)?;
    let same = samples[i].ts == through.ts
        && samples[i].value.to_bits() == through.value.to_bits()
        && samples[i].quality == through.quality;
    (same && in_order(&samples[i..])).then_some(i)
}

/// Keeps a timeline from its last entry at or before `from` (the state then).
fn trim_steps(steps: &mut Steps, from: DateTime<Utc>) {
    let at_or_before = steps.partition_point(|(at, _, _)| *at <= from);
    if at_or_before > 1 {
        steps.drain(..at_or_before - 1);
    }
}

fn in_order(samples: &[Sample]) -> bool {
    samples.windows(2).all(|w| w[0].ts < w[1].ts)
}

/// A level sensor's timeline, going on from what `carried` holds of it where that still holds,
/// and carrying forward what the next evaluation may go on from: the timeline up to its last
/// reading with final flags is left in `carried` (see [`carried_steps`]), and the entries after
/// it are returned. Its data-quality flags that differ from those given are added to `flags`
/// (for the readings it took anew), its crossings from `from` on to `crossings`, its state at its
/// newest usable reading to `trends`, and the number of readings it took anew to `taken`. Also
/// returns its gaps longer than `stale_limit` between readings from `from` on, for
/// [`stale_changes`].
#[allow(clippy::too_many_arguments)]
fn level_steps(
    sensor: &LevelSensor,
    observed_only: bool,
    (from, stale_limit): (DateTime<Utc>, Duration),
    carried: &mut SensorProgress,
    crossings: &mut Vec<Crossing>,
    trends: &mut Vec<SensorTrend>,
    flags: &mut Vec<(String, DateTime<Utc>, Quality)>,
    taken: &mut usize,
) -> (Steps, Vec<Gap>) {
    let settings = LevelSettings::of(sensor, observed_only);
    let samples = &sensor.samples;
    let found = carried.levels.iter().position(|p| p.settings == settings);
    let progress = found.map(|i| carried.levels.swap_remove(i));
    // Where to go on from: after the reading carried, if it is still there as it was.
    let (start, mut progress) =
        match progress.and_then(|p| Some((position_of(samples, p.through)?, p))) {
            Some((i, p)) => (i + 1, p),
            None => (
                0,
                LevelProgress {
                    settings,
                    through: None,
                    fold: LevelFold::default(),
                    steps: Steps::new(),
                    crossings: Vec::new(),
                    gaps: (stale_limit, Vec::new()),
                },
            ),
        };
    // The flags of the readings from `start` on, as a check of the whole series gives them: a
    // check from `looks_back` readings before sees all they depend on.
    let checked_from = start.saturating_sub(sensor.qc.looks_back());
    let checked = quality::check(&samples[checked_from..], &sensor.qc);
    let new_flags = &checked[start - checked_from..];
    let new = &samples[start..];
    *taken += new.len();
    flags.extend(
        new.iter()
            .zip(new_flags)
            .filter(|(sample, flag)| **flag != sample.quality)
            .map(|(sample, flag)| (sensor.key.clone(), sample.ts, *flag)),
    );
    let sign = sensor.rule.sign();
    let oriented = |samples: &[Sample], flags: &[Quality]| -> Vec<Sample> {
        quality::usable_with(samples, flags)
            .into_iter()
            .map(|s| Sample {
                value: s.value * sign,
                ..s
            })
            .collect()
    };
    // The readings whose flags are final (their later neighbours have come) are taken into what
    // is carried; the newest few into a copy of it.
    let settled = new.len().saturating_sub(sensor.qc.looks_ahead());
    take_level(
        sensor,
        observed_only,
        &mut progress.fold,
        &oriented(&new[..settled], &new_flags[..settled]),
        (None, &mut progress.steps),
        &mut progress.crossings,
    );
    trim_steps(&mut progress.steps, from);
    progress.crossings.retain(|c| c.at >= from);
    let mut fold = progress.fold.clone();
    let mut after = Steps::new();
    // An upstream sensor's crossings are its own area's to report.
    let mut unreported = Vec::new();
    let crossings = if observed_only {
        &mut unreported
    } else {
        crossings.extend(progress.crossings.iter().cloned());
        crossings
    };
    take_level(
        sensor,
        observed_only,
        &mut fold,
        &oriented(&new[settled..], &new_flags[settled..]),
        (progress.steps.last(), &mut after),
        crossings,
    );
    if let Some(last) = fold.recent.last().filter(|_| !observed_only) {
        let rate = trend::rate_of_rise(&fold.recent, last.ts, sensor.rate_window);
        let rule = sensor.rule.oriented();
        let projected = rate.and_then(|rate| {
            Severity::ALL
                .into_iter()
                .filter(|s| Some(*s) > fold.state.severity)
                .find_map(|s| {
                    trend::time_to(rule.threshold(s), last.value, rate, last.ts).map(|at| (s, at))
                })
        });
        trends.push(SensorTrend {
            sensor: sensor.key.clone(),
            at: last.ts,
            value: last.value * sign,
            severity: fold.state.severity,
            rate: rate.map(|r| r * sign),
            projected,
        });
    }
    // The gaps: those up to the last reading taken are carried (found again from the readings
    // if the limit changed), those after it found again.
    let through = start + settled;
    let known = &mut progress.gaps;
    if known.0 != stale_limit {
        *known = (stale_limit, gaps(&samples[..start], stale_limit).collect());
    }
    (known.1).extend(gaps(
        &samples[start.saturating_sub(1)..through],
        stale_limit,
    ));
    (known.1).retain(|(before, _)| *before >= from);
    let mut all_gaps = known.1.clone();
    all_gaps.extend(gaps(&samples[through.saturating_sub(1)..], stale_limit));
    // The next evaluation goes on from the last reading taken, where the readings come in time
    // order (as they are read): those after what was carried were checked, the rest are now.
    let ordered = start > 0 || in_order(samples);
    if settled > 0 {
        progress.through = Some(new[settled - 1]).filter(|_| ordered);
    } else if !ordered {
        progress.through = None;
    }
    carried.levels.push(progress);
    (after, all_gaps)
}

/// The timeline [`level_steps`] left in `carried` for `sensor` in its role.
fn carried_steps<'a>(
    carried: &'a SensorProgress,
    sensor: &LevelSensor,
    observed_only: bool,
) -> &'a [Step] {
    let settings = LevelSettings::of(sensor, observed_only);
    (carried.levels.iter())
        .find(|p| p.settings == settings)
        .map_or(&[], |p| &p.steps)
}

/// Takes a rain gauge's `samples` (in time order, after those in `recent`) into its timeline.
fn take_rain(
    sensor: &RainSensor,
    recent: &mut Vec<Sample>,
    last: &mut Option<(DateTime<Utc>, Level, Trigger)>,
    samples: &[Sample],
    steps: &mut Steps,
) {
    let first_new = recent.len();
    recent.extend_from_slice(samples);
    let exceeded = rain::exceeded_at_each(recent, &sensor.rules);
    for (sample, exceeded) in recent.iter().zip(exceeded).skip(first_new) {
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
            *last = Some((sample.ts, level, trigger));
        }
        let held = last
            .as_ref()
            .filter(|(at, _, _)| sample.ts < *at + sensor.hold)
            .map(|(_, level, trigger)| (*level, trigger.clone()));
        match held {
            Some((level, trigger)) => {
                push_step(steps, None, (sample.ts, Some(level), Some(trigger)))
            }
            None => push_step(steps, None, (sample.ts, None, None)),
        }
    }
    // What the next reading's accumulations look at: the readings in the longest window.
    if let Some(newest) = recent.last() {
        let longest = sensor.rules.iter().map(|r| r.window).max();
        let from = newest.ts - longest.unwrap_or_else(Duration::zero);
        let cut = recent.partition_point(|s| s.ts <= from);
        recent.drain(..cut);
    }
}

/// A rain gauge's timeline, going on from what `carried` holds of it where that still holds, left
/// in `carried` (a rain gauge's readings need no later ones: all of them are carried).
/// Returns how many readings it took anew.
fn rain_steps(sensor: &RainSensor, from: DateTime<Utc>, carried: &mut SensorProgress) -> usize {
    let samples = &sensor.samples;
    let progress = (carried.rain.take())
        .filter(|p| p.rules == sensor.rules && p.hold == sensor.hold)
        .and_then(|p| Some((position_of(samples, p.through)?, p)));
    let (start, mut progress) = match progress {
        Some((i, p)) => (i + 1, p),
        None => (
            0,
            RainProgress {
                rules: sensor.rules.clone(),
                hold: sensor.hold,
                through: None,
                recent: Vec::new(),
                last: None,
                steps: Steps::new(),
            },
        ),
    };
    take_rain(
        sensor,
        &mut progress.recent,
        &mut progress.last,
        &samples[start..],
        &mut progress.steps,
    );
    trim_steps(&mut progress.steps, from);
    if let Some(newest) = samples.last() {
        let ordered = start > 0 || in_order(samples);
        progress.through = Some(*newest).filter(|_| ordered);
    }
    carried.rain = Some(progress);
    samples.len() - start
}

fn upstream_steps(
    upstream: &Upstream,
    from: DateTime<Utc>,
    carried: &mut SensorProgress,
    flags: &mut Vec<(String, DateTime<Utc>, Quality)>,
    taken: &mut usize,
) -> Steps {
    let (after, _) = level_steps(
        &upstream.sensor,
        true,
        (from, Duration::MAX),
        carried,
        &mut Vec::new(),
        &mut Vec::new(),
        flags,
        taken,
    );
    (carried_steps(carried, &upstream.sensor, true).iter())
        .chain(&after)
        .map(|step| downstream(step, upstream.travel_time))
        .collect()
}

/// An upstream sensor's observed state at a reading as its downstream area sees it: an expected
/// alert, once the water has had `travel_time` to arrive.
fn downstream((at, level, trigger): &Step, travel_time: Duration) -> Step {
    let level = level.map(|_| Level {
        severity: Severity::Alert,
        kind: WarningKind::Expected,
    });
    let trigger = trigger.as_ref().map(|t| Trigger {
        cause: "upstream",
        expected_at: Some(*at + travel_time),
        ..t.clone()
    });
    (*at + travel_time, level, trigger)
}

/// Adds a source's state at a reading to its timeline (which goes on from `before`), but for a
/// quiet one after a quiet one.
///
/// A quiet entry after a quiet entry changes nothing [`combine`] makes of the timelines: the
/// source is quiet either way until its next entry, and no other source changes at that time
/// unless it has an entry there itself. Leaving them out keeps a source's timeline to its
/// changes (two weeks of quiet readings are one entry, not thousands of entries each the size of
/// a [`Trigger`]), and the area's timeline the same, as a test holds.
fn push_step(out: &mut Steps, before: Option<&Step>, step: Step) {
    let quiet = |s: &Step| s.1.is_none() && s.2.is_none();
    if quiet(&step) && out.last().or(before).is_some_and(quiet) {
        return;
    }
    out.push(step);
}

/// A source's timeline in two parts: what is carried over, then the entries after it.
#[derive(Clone, Copy)]
struct Timeline<'a> {
    carried: &'a [Step],
    after: &'a [Step],
}

impl<'a> Timeline<'a> {
    fn whole(steps: &'a [Step]) -> Timeline<'a> {
        Timeline {
            carried: steps,
            after: &[],
        }
    }

    fn times(self) -> impl Iterator<Item = DateTime<Utc>> + 'a {
        self.carried.iter().chain(self.after).map(|(at, _, _)| *at)
    }

    /// The level in force at `t`, with its trigger.
    fn at(self, t: DateTime<Utc>) -> Option<(Level, &'a Trigger)> {
        let in_after = self.after.partition_point(|(at, _, _)| *at <= t);
        let step = match in_after.checked_sub(1) {
            Some(i) => &self.after[i],
            None => {
                let i = self.carried.partition_point(|(at, _, _)| *at <= t);
                &self.carried[i.checked_sub(1)?]
            }
        };
        Some((step.1?, step.2.as_ref()?))
    }
}

/// How long a level sensor may go without a reading before the area is stale.
fn stale_limit(area: &AreaInput, sensor: &LevelSensor) -> Duration {
    sensor.expected_interval * area.stale_after_intervals.max(1)
}

/// When the area's stations became stale and fresh again, from each level sensor's gaps longer
/// than its [`stale_limit`] (in `area.levels`' order) and how long it has been silent now.
fn stale_changes(
    area: &AreaInput,
    gaps: &[Vec<Gap>],
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, bool)> {
    // Per sensor, the periods without data; the area is stale while any sensor is.
    let mut marks: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (sensor, gaps) in area.levels.iter().zip(gaps) {
        let limit = stale_limit(area, sensor);
        for (before, after) in gaps {
            marks.push((*before + limit, 1));
            marks.push((*after, -1));
        }
        if let Some(last) = sensor.samples.last().map(|s| s.ts) {
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

/// The area's timeline from its sources': at each time any source changes (after `from`, up to
/// `now`), the highest level among them, with its trigger, wherever that level changes; and at
/// `from`, where a source has an entry at or before it (its state then).
fn combine(sources: &[Timeline], from: DateTime<Utc>, now: DateTime<Utc>) -> Steps {
    let mut times: Vec<DateTime<Utc>> = sources
        .iter()
        .flat_map(|s| s.times().map(|at| at.max(from)))
        .filter(|at| *at <= now)
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut steps = Steps::new();
    let mut current: Option<Level> = None;
    for t in times {
        let best = sources
            .iter()
            .filter_map(|s| s.at(t))
            .max_by(|a, b| a.0.cmp(&b.0));
        let level = best.map(|(l, _)| l);
        if level != current || steps.is_empty() {
            steps.push((t, level, best.map(|(_, trigger)| trigger.clone())));
            current = level;
        }
    }
    steps
}

/// Evaluates an area at `now` from its readings.
pub fn evaluate(area: &AreaInput, now: DateTime<Utc>) -> Evaluation {
    evaluate_carried(area, now, DateTime::<Utc>::MIN_UTC, &mut Progress::new())
}

/// Evaluates an area at `now` from its readings, going on from what `carried` holds of its
/// sensors' timelines where that still holds, and carrying forward what the next evaluation may
/// go on from. The timeline is the same as [`evaluate`] gives from the readings since what is
/// carried began, from `from` on (the state at `from` first); crossings are kept from `from` on.
pub fn evaluate_carried(
    area: &AreaInput,
    now: DateTime<Utc>,
    from: DateTime<Utc>,
    carried: &mut Progress,
) -> Evaluation {
    let mut crossings = Vec::new();
    let mut trends = Vec::new();
    let mut flags = Vec::new();
    let mut readings_taken = 0;
    // Each sensor's progress once, however many times the area names it.
    let keys = (area.levels.iter().map(|s| s.key.as_str()))
        .chain(area.rains.iter().map(|s| s.key.as_str()))
        .chain(area.upstream.iter().map(|u| u.sensor.key.as_str()));
    let mut taken: HashMap<&str, SensorProgress> = HashMap::new();
    for key in keys {
        if !taken.contains_key(key) {
            taken.insert(key, carried.remove(key).unwrap_or_default());
        }
    }
    // Each source's timeline: what is carried (left in `taken`) and the entries after it.
    let mut after: Vec<Steps> = Vec::new();
    let mut gaps: Vec<Vec<Gap>> = Vec::new();
    for sensor in &area.levels {
        let (steps, sensor_gaps) = level_steps(
            sensor,
            false,
            (from, stale_limit(area, sensor)),
            taken.entry(&sensor.key).or_default(),
            &mut crossings,
            &mut trends,
            &mut flags,
            &mut readings_taken,
        );
        after.push(steps);
        gaps.push(sensor_gaps);
    }
    for sensor in &area.rains {
        readings_taken += rain_steps(sensor, from, taken.entry(&sensor.key).or_default());
    }
    let mut whole: Vec<Steps> = (area.upstream.iter())
        .map(|upstream| {
            let carried = taken.entry(&upstream.sensor.key).or_default();
            upstream_steps(upstream, from, carried, &mut flags, &mut readings_taken)
        })
        .collect();
    whole.extend(
        area.forecasts
            .iter()
            .map(|f| forecast::steps(f, area.forecast_use)),
    );
    let carried_of = |key: &str| taken.get(key);
    let mut sources: Vec<Timeline> = Vec::new();
    for (sensor, after) in area.levels.iter().zip(&after) {
        let carried = carried_of(&sensor.key).map_or(&[][..], |c| carried_steps(c, sensor, false));
        sources.push(Timeline { carried, after });
    }
    for sensor in &area.rains {
        let carried = carried_of(&sensor.key).and_then(|c| c.rain.as_ref());
        sources.push(Timeline::whole(carried.map_or(&[][..], |r| &r.steps)));
    }
    sources.extend(whole.iter().map(|steps| Timeline::whole(steps)));
    let steps = combine(&sources, from, now);
    for (key, progress) in taken {
        if !progress.is_empty() {
            carried.insert(key.to_owned(), progress);
        }
    }
    let latest = area
        .levels
        .iter()
        .map(|s| &s.samples)
        .chain(area.rains.iter().map(|s| &s.samples))
        .filter_map(|samples| samples.last().map(|s| s.ts))
        .max();
    Evaluation {
        latest,
        steps,
        stale: stale_changes(area, &gaps, now),
        crossings,
        flags,
        trends,
        taken: readings_taken,
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
