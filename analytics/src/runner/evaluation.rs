//! One flood area's evaluation: its readings into a severity timeline, then, under the area's
//! lock, the events that take the recorded state to it.

use super::state::{Metrics, Model, Settings};
use super::upkeep::{chrono, samples};
use crate::area::forecast::{ForecastUse, Issue, SensorForecasts};
use crate::area::{self, AreaInput, Level, LevelSensor, RainSensor, Upstream, WarningKind};
use crate::level::LevelRule;
use crate::messages;
use crate::quality::QcRules;
use crate::rain::{self, RainRule};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Instant;
use tidemark_model::warning::alert_topic;
use tidemark_store::flood::{AreaDecision, AreaStatus, CrossingRow, NewEvent, TrendRow};
use tidemark_store::forecasts::StoredForecast;
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

pub(crate) type ForecastMemos = std::sync::Mutex<HashMap<String, ForecastMemo>>;

pub(crate) async fn evaluate_area(
    store: &Store,
    model: &Model,
    settings: &Settings,
    key: &str,
    metrics: &Metrics,
    memos: &ForecastMemos,
) {
    let started = Instant::now();
    match try_evaluate_area(store, model, settings, key, memos).await {
        Ok(recorded) => {
            metrics.evaluations.inc();
            metrics.events.inc_by(recorded);
            metrics
                .evaluation_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(error) => {
            metrics.failures.inc();
            tracing::warn!(stage = "analytics", area = %key, %error, "evaluation failed");
        }
    }
}

pub(crate) async fn try_evaluate_area(
    store: &Store,
    model: &Model,
    settings: &Settings,
    key: &str,
    memos: &ForecastMemos,
) -> Result<u64, tidemark_store::Error> {
    let Some(area) = model.setup.areas.iter().find(|a| a.key == key) else {
        return Ok(0);
    };
    let now = Utc::now();
    let links: Vec<_> = model
        .setup
        .links
        .iter()
        .filter(|l| l.downstream_area == key)
        .collect();
    let keys: Vec<String> = area
        .sensors
        .iter()
        .cloned()
        .chain(links.iter().map(|l| l.upstream_sensor.clone()))
        .collect();
    let series = store
        .series(&keys, now - chrono(settings.analytics.lookback))
        .await?;
    let received = store.last_received(&keys).await?;
    let level_sensor = |sensor: &str| -> Option<LevelSensor> {
        let t = model
            .setup
            .thresholds
            .iter()
            .find(|t| t.sensor_key == sensor)?;
        Some(LevelSensor {
            key: sensor.to_owned(),
            rule: LevelRule {
                thresholds: [t.alert, t.warning, t.severe],
                persistence: chrono(t.persistence),
                min_readings: t.min_readings.max(1) as u32,
                hysteresis: t.hysteresis,
                hold: chrono(t.hold),
            },
            qc: QcRules {
                spike_floor: t.spike_floor,
                plausible: (t.plausible_low, t.plausible_high),
                ..QcRules::default()
            },
            rate_window: chrono(t.rate_window),
            lead_time: chrono(t.lead_time),
            rate_alert: t.rate_alert,
            expected_interval: model
                .sensors
                .get(sensor)
                .map(|s| chrono(s.expected_interval))
                .unwrap_or(chrono::Duration::minutes(15)),
            samples: samples(series.get(sensor)),
            last_received: received.get(sensor).copied(),
        })
    };
    let mut input = AreaInput {
        key: key.to_owned(),
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
    for sensor in &area.sensors {
        let is_rain = model
            .sensors
            .get(sensor)
            .is_some_and(|s| s.quantity == "rainfall");
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
                samples: samples(series.get(sensor)),
            });
        } else if let Some(level) = level_sensor(sensor) {
            input.levels.push(level);
        }
    }
    for link in links {
        if let Some(sensor) = level_sensor(&link.upstream_sensor) {
            input.upstream.push(Upstream {
                sensor,
                travel_time: chrono(link.travel_time),
            });
        }
    }
    if !input.levels.is_empty() {
        let level_keys: Vec<String> = input.levels.iter().map(|l| l.key.clone()).collect();
        // An issue matters while it is current. After a quiet evaluation, the issues current
        // from where it stopped are enough (before that, they changed nothing that was not
        // recorded); with a warning in force, those since its raise.
        let max_age = input.forecast_use.max_age;
        let earliest = now - chrono(settings.analytics.lookback) - max_age;
        let memo = memos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let from = memo.map_or(earliest, |m| {
            (m.in_force_since.map_or(m.until, |since| since.min(m.until)) - max_age).max(earliest)
        });
        let stored = store.forecasts_since(&level_keys, from).await?;
        input.forecasts = forecasts_of(&input.levels, stored);
        input.forecast_use.until = readings_reached(&input, now);
    }
    let evaluation = area::evaluate(&input, now);
    let trends: Vec<TrendRow> = evaluation
        .trends
        .iter()
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
    for (sensor, ts, quality) in &evaluation.flags {
        flags
            .entry(sensor.as_str())
            .or_default()
            .push((*ts, quality.0));
    }
    for (sensor, flags) in flags {
        let flagged = store.set_quality(sensor, &flags).await?;
        tracing::info!(
            stage = "analytics",
            sensor,
            flagged,
            "readings flagged by data-quality checks"
        );
    }
    let deliveries: Vec<String> = area
        .municipality_codes
        .iter()
        .map(|code| alert_topic(&settings.topic_prefix, code, key))
        .collect();
    // The area's status is read under its lock, and the events are worked out from it before the
    // lock is let go: a second analytics process evaluating the same area waits, then starts from
    // what this one recorded.
    let mut in_force_since = None;
    let (_, decision) = store
        .decide_area(key, &area.municipality_codes, &deliveries, |status| {
            let decision = decide(&area.name, &evaluation, status);
            let lifted = decision
                .events
                .last()
                .is_some_and(|e| e.kind == area::EventKind::Lifted);
            if !lifted {
                in_force_since = status
                    .current
                    .as_ref()
                    .map(|w| w.raised_at)
                    .or(decision.events.first().map(|e| e.at));
            }
            decision
        })
        .await?;
    memos.lock().unwrap_or_else(|e| e.into_inner()).insert(
        key.to_owned(),
        ForecastMemo {
            until: input.forecast_use.until,
            in_force_since,
        },
    );
    for event in &decision.events {
        tracing::info!(area = %key, kind = %event.kind, severity = ?event.severity, at = %event.at, "warning event");
    }
    Ok(decision.events.len() as u64)
}

/// The stored issues of the area's level sensors, per sensor and source.
fn forecasts_of(levels: &[LevelSensor], stored: Vec<StoredForecast>) -> Vec<SensorForecasts> {
    let mut out: Vec<SensorForecasts> = Vec::new();
    for issue in stored {
        let Some(level) = levels.iter().find(|l| l.key == issue.sensor_key) else {
            continue;
        };
        let values = issue.values.iter().map(|v| (v.valid_at, v.value)).collect();
        let issue_row = Issue {
            issued_at: issue.issued_at,
            values,
        };
        match out
            .iter_mut()
            .find(|f| f.sensor == issue.sensor_key && f.source == issue.source)
        {
            Some(forecasts) => forecasts.issues.push(issue_row),
            None => out.push(SensorForecasts {
                sensor: issue.sensor_key,
                source: issue.source,
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
fn decide(area_name: &str, evaluation: &area::Evaluation, status: &AreaStatus) -> AreaDecision {
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
            let (message_en, message_da) = messages::compose(area_name, event);
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
