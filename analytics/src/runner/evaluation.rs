//! One flood area's evaluation: its readings into a severity timeline, then, under the area's
//! lock, the events that take the recorded state to it.

use super::series_cache::SeriesCache;
use super::state::{Metrics, Model, Settings};
use super::upkeep::{chrono, samples, threshold_qc};
use crate::area::forecast::{ForecastUse, Issue, SensorForecasts};
use crate::area::{self, AreaInput, Level, LevelSensor, RainSensor, Upstream, WarningKind};
use crate::level::LevelRule;
use crate::messages;
use crate::rain::{self, RainRule};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tidemark_model::warning::{alert_topic, Category};
use tidemark_store::flood::{
    AreaDecision, AreaRow, AreaStatus, AreaTarget, CrossingRow, NewEvent, TrendRow,
};
use tidemark_store::Store;

/// What the runner remembers of an area's last evaluation, so that the next one reads only the
/// forecast issues that can still change anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForecastMemo {
    /// How far in data time the forecasts acted.
    until: DateTime<Utc>,
    /// When the warning then in force was raised (its forecast issues must be read again).
    in_force_since: Option<DateTime<Utc>>,
}

/// What the runner keeps of forecasts between evaluations: each area's [`ForecastMemo`], and the
/// values of the issues already read (an issue never changes once stored, so each is read once).
#[derive(Default)]
pub(crate) struct ForecastMemos {
    areas: std::sync::Mutex<HashMap<String, ForecastMemo>>,
    issues: std::sync::Mutex<HashMap<IssueKey, Arc<CachedIssue>>>,
}

/// An issue: its sensor, source and issue time.
type IssueKey = (String, String, DateTime<Utc>);

struct CachedIssue {
    builtin: bool,
    values: Vec<(DateTime<Utc>, f64)>,
}

/// At most this many issues' values are kept (about 7 MB per thousand issues of 48 hours at
/// 10-minute steps); beyond it the oldest are read again when needed.
const ISSUES_KEPT: usize = 5_000;

impl ForecastMemos {
    /// Forgets where every area's evaluation left off (thresholds may have changed what old
    /// issues mean), so that the next evaluations look at every current issue again.
    pub(crate) fn forget(&self) {
        self.areas.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The issues of each sensor from its start, their values read only for the issues not kept
    /// yet. Keeps none older than `earliest`, which no evaluation reads.
    async fn issues(
        &self,
        store: &Store,
        starts: &[(&str, DateTime<Utc>)],
        earliest: DateTime<Utc>,
    ) -> Result<Vec<(IssueKey, Arc<CachedIssue>)>, tidemark_store::Error> {
        let listed = store.forecast_issues_from(starts).await?;
        // The listed issues whose values are not kept yet, by their place in `listed`.
        let missing: Vec<usize> = {
            let kept = self.issues.lock().unwrap_or_else(|e| e.into_inner());
            (0..listed.len())
                .filter(|&i| {
                    let (sensor, source, _, at) = &listed[i];
                    !kept.contains_key(&(sensor.clone(), source.clone(), *at))
                })
                .collect()
        };
        let names: Vec<(&str, &str, DateTime<Utc>)> = missing
            .iter()
            .map(|&i| (listed[i].0.as_str(), listed[i].1.as_str(), listed[i].3))
            .collect();
        let values = if names.is_empty() {
            Vec::new()
        } else {
            store.forecast_values(&names).await?
        };
        let mut kept = self.issues.lock().unwrap_or_else(|e| e.into_inner());
        for (&i, values) in missing.iter().zip(values) {
            let (sensor, source, builtin, at) = &listed[i];
            kept.insert(
                (sensor.clone(), source.clone(), *at),
                Arc::new(CachedIssue {
                    builtin: *builtin,
                    values,
                }),
            );
        }
        let out = listed
            .into_iter()
            .filter_map(|(sensor, source, _, at)| {
                let key = (sensor, source, at);
                let issue = kept.get(&key)?.clone();
                Some((key, issue))
            })
            .collect();
        kept.retain(|(_, _, at), _| *at >= earliest);
        if kept.len() > ISSUES_KEPT {
            let mut times: Vec<DateTime<Utc>> = kept.keys().map(|k| k.2).collect();
            times.sort_unstable();
            let cut = times[kept.len() - ISSUES_KEPT];
            kept.retain(|(_, _, at), _| *at >= cut);
        }
        Ok(out)
    }
}

/// How many areas one evaluation takes at most: all their readings are read at once and all
/// their events recorded in one transaction.
pub(crate) const AREAS_AT_ONCE: usize = 500;

/// Evaluates the areas and records their events, in parts of [`AREAS_AT_ONCE`]. A part that
/// fails is evaluated again area by area, so that one area's failure holds up no other.
pub(crate) async fn evaluate_areas(
    store: &Store,
    model: &Model,
    settings: &Settings,
    keys: &[String],
    metrics: &Metrics,
    memos: &ForecastMemos,
    kept: &mut SeriesCache,
) {
    let mut parts: VecDeque<&[String]> = keys.chunks(AREAS_AT_ONCE).collect();
    while let Some(part) = parts.pop_front() {
        let started = Instant::now();
        let read_before = kept.readings_read();
        let outcome = try_evaluate_areas(store, model, settings, part, memos, kept).await;
        metrics
            .series_readings_read
            .inc_by(kept.readings_read() - read_before);
        metrics
            .series_readings_kept
            .set(i64::try_from(kept.readings_held()).unwrap_or(i64::MAX));
        match outcome {
            Ok((recorded, taken)) => {
                metrics.readings_evaluated.inc_by(taken);
                metrics.evaluations.inc_by(part.len() as u64);
                metrics.events.inc_by(recorded);
                metrics
                    .evaluation_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(error) if part.len() > 1 => {
                tracing::warn!(stage = "analytics", areas = part.len(), %error, "evaluation failed; trying each area alone");
                // Each area next, in order, before the parts after this one.
                for key in part.iter().rev() {
                    parts.push_front(std::slice::from_ref(key));
                }
            }
            Err(error) => {
                metrics.failures.inc();
                tracing::warn!(stage = "analytics", area = %part[0], %error, "evaluation failed");
            }
        }
    }
}

/// Each sensor's readings `(ts, value, quality)`, as [`Store::series`] reads them.
type Series = HashMap<String, Vec<(DateTime<Utc>, f64, i16)>>;

/// What one area's evaluation reads, besides the model.
struct Reads<'a> {
    series: &'a Series,
    received: &'a HashMap<String, DateTime<Utc>>,
}

/// Evaluates the areas together: their readings, arrival times and forecasts in one query each,
/// the evaluations off the async executor, their trends in one statement, and their events in
/// one transaction. Returns how many events were recorded, and how many readings the evaluations
/// took anew.
pub(crate) async fn try_evaluate_areas(
    store: &Store,
    model: &Model,
    settings: &Settings,
    keys: &[String],
    memos: &ForecastMemos,
    kept: &mut SeriesCache,
) -> Result<(u64, u64), tidemark_store::Error> {
    let areas: Vec<&AreaRow> = keys.iter().filter_map(|key| model.area(key)).collect();
    if areas.is_empty() {
        return Ok((0, 0));
    }
    let now = Utc::now();
    let started = Instant::now();
    let mut sensors: Vec<String> = areas
        .iter()
        .flat_map(|area| {
            area.sensors.iter().cloned().chain(
                model
                    .links_into(&area.key)
                    .map(|l| l.upstream_sensor.clone()),
            )
        })
        .collect();
    sensors.sort_unstable();
    sensors.dedup();
    // An issue matters while it is current. After a quiet evaluation, the issues current from
    // where it stopped are enough (before that, they changed nothing that was not recorded);
    // with a warning in force, those since its raise.
    let max_age = chrono(settings.analytics.forecast_max_age);
    let earliest = now - chrono(settings.analytics.lookback) - max_age;
    let mut starts: HashMap<&str, DateTime<Utc>> = HashMap::new();
    {
        let memos = memos.areas.lock().unwrap_or_else(|e| e.into_inner());
        for area in &areas {
            let from = memos.get(&area.key).map_or(earliest, |m| {
                (m.in_force_since.map_or(m.until, |since| since.min(m.until)) - max_age)
                    .max(earliest)
            });
            for level in area.sensors.iter().filter(|s| is_level(model, s)) {
                let start = starts.entry(level.as_str()).or_insert(from);
                *start = (*start).min(from);
            }
        }
    }
    let starts: Vec<(&str, DateTime<Utc>)> = starts.into_iter().collect();
    // The three reads go at once, each on a connection of its own: under ingest's load each
    // round trip waits its turn for the database, and one after another they added up.
    let series = async {
        // The readings kept from earlier evaluations, with what changed since read again.
        let series = kept
            .series(
                store,
                &sensors,
                now - chrono(settings.analytics.lookback),
                now,
            )
            .await;
        (series, started.elapsed())
    };
    let received = async { (store.last_received(&sensors).await, started.elapsed()) };
    let stored = async {
        if starts.is_empty() {
            Ok(Vec::new())
        } else {
            memos.issues(store, &starts, earliest).await
        }
    };
    let ((series, series_read), (received, received_read), stored) =
        tokio::join!(series, received, stored);
    let (series, received, stored) = (series?, received?, stored?);
    let reads = Reads {
        series: &series,
        received: &received,
    };
    let mut inputs: Vec<AreaInput> = areas
        .iter()
        .map(|area| area_input(model, settings, area, &reads, now))
        .collect();
    for input in &mut inputs {
        if !input.levels.is_empty() {
            input.forecasts = forecasts_of(&input.levels, &stored);
            input.forecast_use.until = readings_reached(input, now);
        }
    }
    let read = started.elapsed();
    // Many areas' evaluations are CPU work: off the async executor. Each goes on from what the
    // last evaluations of its sensors worked out, and leaves what the next may go on from.
    let mut progress = kept.take_progress(&sensors);
    let from = now - chrono(settings.analytics.lookback);
    let (inputs, evaluations, progress) = tokio::task::spawn_blocking(move || {
        let evaluations: Vec<area::Evaluation> = inputs
            .iter()
            .map(|input| area::evaluate_carried(input, now, from, &mut progress))
            .collect();
        (inputs, evaluations, progress)
    })
    .await
    .map_err(|e| tidemark_store::Error::Inconsistent(format!("an evaluation panicked: {e}")))?;
    let evaluated = started.elapsed();
    let deliveries: Vec<Vec<String>> = areas
        .iter()
        .map(|area| {
            area.municipality_codes
                .iter()
                .map(|code| alert_topic(&settings.topic_prefix, code, &area.key))
                .collect()
        })
        .collect();
    let targets: Vec<AreaTarget<'_>> = areas
        .iter()
        .zip(&deliveries)
        .map(|(area, topics)| AreaTarget {
            key: &area.key,
            municipalities: &area.municipality_codes,
            mqtt_topics: topics,
        })
        .collect();
    // The areas' statuses are read under their locks, and the events are worked out from them
    // before the locks are let go: a second analytics process evaluating the same areas waits,
    // then starts from what this one recorded.
    let mut in_force_since = vec![None; areas.len()];
    let decided = store
        .decide_areas(&targets, |i, status| {
            let decision = decide(&areas[i].name, areas[i].hazard, &evaluations[i], status);
            let lifted = decision
                .events
                .last()
                .is_some_and(|e| e.kind == area::EventKind::Lifted);
            if !lifted {
                in_force_since[i] = status
                    .current
                    .as_ref()
                    .map(|w| w.raised_at)
                    .or(decision.events.first().map(|e| e.at));
            }
            decision
        })
        .await?;
    let decided_at = started.elapsed();
    // The trends and the data-quality flags after the warnings: they wait on no commit of their
    // own before the warning events are recorded (each commit waits for its WAL flush, behind
    // ingest's).
    let trends: Vec<TrendRow> = evaluations
        .iter()
        .flat_map(|evaluation| &evaluation.trends)
        .map(|t| TrendRow {
            sensor_key: t.sensor.clone(),
            at: t.at,
            value: t.value,
            severity: t.severity,
            rate_per_hour: t.rate,
            projected: t.projected,
        })
        .collect();
    store.record_trends(&trends).await?;
    let mut flags: HashMap<&str, Vec<(DateTime<Utc>, i16)>> = HashMap::new();
    for (sensor, ts, quality) in evaluations.iter().flat_map(|e| &e.flags) {
        let flags = flags.entry(sensor.as_str()).or_default();
        if !flags.iter().any(|(at, _)| at == ts) {
            flags.push((*ts, quality.0));
        }
    }
    for (sensor, flags) in flags {
        if let Some(earliest) = flags.iter().map(|f| f.0).min() {
            kept.changed(sensor, earliest);
        }
        let flagged = store.set_quality(sensor, &flags).await?;
        tracing::info!(
            stage = "analytics",
            sensor,
            flagged,
            "readings flagged by data-quality checks"
        );
    }
    // What the evaluations carried forward is kept only now that all they found is recorded:
    // the flags of the readings they took anew are reported once, so after a failure the
    // sensors start over from their readings (what was taken out is dropped with the error).
    kept.keep_progress(progress);
    {
        let mut memos = memos.areas.lock().unwrap_or_else(|e| e.into_inner());
        for (input, since) in inputs.iter().zip(in_force_since) {
            memos.insert(
                input.key.clone(),
                ForecastMemo {
                    until: input.forecast_use.until,
                    in_force_since: since,
                },
            );
        }
    }
    tracing::debug!(
        areas = areas.len(),
        issues = stored.len(),
        series_ms = series_read.as_secs_f64() * 1e3,
        received_ms = received_read.as_secs_f64() * 1e3,
        read_ms = read.as_secs_f64() * 1e3,
        evaluated_ms = (evaluated - read).as_secs_f64() * 1e3,
        decided_ms = (decided_at - evaluated).as_secs_f64() * 1e3,
        recorded_ms = (started.elapsed() - evaluated).as_secs_f64() * 1e3,
        "areas evaluated"
    );
    let mut recorded = 0;
    for (area, (_, decision)) in areas.iter().zip(&decided) {
        for event in &decision.events {
            tracing::info!(area = %area.key, kind = %event.kind, severity = ?event.severity, at = %event.at, "warning event");
        }
        recorded += decision.events.len() as u64;
    }
    let taken = evaluations.iter().map(|e| e.taken as u64).sum();
    Ok((recorded, taken))
}

/// Whether the sensor measures rainfall: an area's rain rules read it.
fn is_rain(model: &Model, sensor: &str) -> bool {
    model
        .sensors
        .get(sensor)
        .is_some_and(|s| s.quantity == "rainfall")
}

/// Whether the sensor is one of its area's level sensors (as [`area_input`] finds them): not rain,
/// and with thresholds.
fn is_level(model: &Model, sensor: &str) -> bool {
    !is_rain(model, sensor) && model.thresholds(sensor).is_some()
}

/// One area's evaluation input, without its forecasts.
fn area_input(
    model: &Model,
    settings: &Settings,
    area: &AreaRow,
    reads: &Reads<'_>,
    now: DateTime<Utc>,
) -> AreaInput {
    let level_sensor = |sensor: &str| -> Option<LevelSensor> {
        let t = model.thresholds(sensor)?;
        Some(LevelSensor {
            key: sensor.to_owned(),
            rule: LevelRule {
                thresholds: [t.alert, t.warning, t.severe],
                falling: t.falling,
                persistence: chrono(t.persistence),
                min_readings: t.min_readings.max(1) as u32,
                hysteresis: t.hysteresis,
                hold: chrono(t.hold),
            },
            qc: threshold_qc(t),
            rate_window: chrono(t.rate_window),
            lead_time: chrono(t.lead_time),
            rate_alert: t.rate_alert,
            expected_interval: model
                .sensors
                .get(sensor)
                .map(|s| chrono(s.expected_interval))
                .unwrap_or(chrono::Duration::minutes(15)),
            samples: samples(reads.series.get(sensor)),
            last_received: reads.received.get(sensor).copied(),
        })
    };
    let mut input = AreaInput {
        key: area.key.clone(),
        levels: Vec::new(),
        rains: Vec::new(),
        upstream: Vec::new(),
        forecasts: Vec::new(),
        forecast_use: ForecastUse {
            horizon: chrono(area.forecast_horizon),
            max_age: chrono(settings.analytics.forecast_max_age),
            until: now,
        },
        stale_after_intervals: settings.analytics.stale_after_intervals,
    };
    // Rain and water from upstream make floods, not droughts: a drought area reads its level
    // sensors only.
    let drought = area.hazard == Category::Drought;
    for sensor in &area.sensors {
        let is_rain = is_rain(model, sensor);
        if is_rain && drought {
            continue;
        }
        if is_rain {
            let configured: Vec<RainRule> = model
                .setup
                .rain_rules
                .iter()
                .filter(|r| &r.sensor_key == sensor)
                .map(|r| RainRule {
                    window: chrono(r.window),
                    more_than_mm: r.more_than_mm,
                    severity: r.severity,
                })
                .collect();
            input.rains.push(RainSensor {
                key: sensor.clone(),
                rules: if configured.is_empty() {
                    rain::dmi_rules()
                } else {
                    configured
                },
                hold: chrono(settings.analytics.rain_hold),
                samples: samples(reads.series.get(sensor)),
            });
        } else if let Some(level) = level_sensor(sensor) {
            input.levels.push(level);
        }
    }
    for link in model.links_into(&area.key).filter(|_| !drought) {
        if let Some(sensor) = level_sensor(&link.upstream_sensor) {
            input.upstream.push(Upstream {
                sensor,
                travel_time: chrono(link.travel_time),
            });
        }
    }
    input
}

/// The stored issues of the area's level sensors, per sensor and source.
fn forecasts_of(
    levels: &[LevelSensor],
    stored: &[(IssueKey, Arc<CachedIssue>)],
) -> Vec<SensorForecasts> {
    let mut out: Vec<SensorForecasts> = Vec::new();
    for ((sensor, source, issued_at), issue) in stored {
        let Some(level) = levels.iter().find(|l| &l.key == sensor) else {
            continue;
        };
        let issue_row = Issue {
            issued_at: *issued_at,
            values: issue.values.clone(),
        };
        match out
            .iter_mut()
            .find(|f| &f.sensor == sensor && &f.source == source)
        {
            Some(forecasts) => forecasts.issues.push(issue_row),
            None => out.push(SensorForecasts {
                sensor: sensor.clone(),
                source: source.clone(),
                nowcast: issue.builtin,
                rule: level.rule,
                issues: vec![issue_row],
            }),
        }
    }
    out
}

/// How far in data time the area's forecasts may act: as far as its readings have come (within
/// one expected interval), so that a forecast committed ahead of readings still on their way (a
/// replay, a back-fill) does not put events ahead of them. Once the stations are silent, up to
/// now.
fn readings_reached(input: &AreaInput, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut reached: Option<DateTime<Utc>> = None;
    for sensor in &input.levels {
        let limit = sensor.expected_interval * input.stale_after_intervals.max(1);
        let silent = sensor.last_received.is_none_or(|at| now - at > limit);
        let at = match sensor.samples.last() {
            _ if silent => now,
            Some(last) => last.ts + sensor.expected_interval,
            None => now,
        };
        reached = Some(reached.map_or(at, |r| r.max(at)));
    }
    reached.unwrap_or(now).min(now)
}

/// The events that take the area from its recorded status to its evaluation, with the crossings
/// behind them that came after the area's last event.
fn decide(
    area_name: &str,
    hazard: Category,
    evaluation: &area::Evaluation,
    status: &AreaStatus,
) -> AreaDecision {
    let in_force = status.current.as_ref().map(|w| Level {
        severity: w.severity,
        kind: w.kind,
    });
    let events = area::events(
        evaluation,
        status.last_at,
        in_force,
        status.current.as_ref().is_some_and(|w| w.stale),
    );
    if events.is_empty() {
        return AreaDecision::default();
    }
    let events = events
        .iter()
        .map(|event| {
            let (message_en, message_da) = messages::compose(area_name, hazard, event);
            NewEvent {
                kind: event.kind,
                severity: event.level.map(|l| l.severity),
                warning_kind: event.level.map_or(WarningKind::Observed, |l| l.kind),
                at: event.at,
                message_en,
                message_da,
                trigger: event.trigger.as_ref().map_or(serde_json::json!({}), |t| {
                    let mut trigger = serde_json::json!({
                        "sensor": t.sensor, "cause": t.cause, "value": t.value, "threshold": t.threshold,
                        "rate": t.rate, "expected_at": t.expected_at,
                    });
                    if let Some(f) = &t.forecast {
                        trigger["source"] = serde_json::json!(f.source);
                        trigger["issued_at"] = serde_json::json!(f.issued_at);
                        trigger["nowcast"] = serde_json::json!(f.nowcast);
                    }
                    trigger
                }),
            }
        })
        .collect();
    let crossings = evaluation
        .crossings
        .iter()
        .filter(|c| status.last_at.is_none_or(|last| c.at > last))
        .map(|c| CrossingRow {
            sensor_key: c.sensor.clone(),
            severity: c.severity,
            up: c.up,
            at: c.at,
            value: c.value,
        })
        .collect();
    AreaDecision { events, crossings }
}
