//! One flood area's evaluation: its readings into a severity timeline, the events that take the
//! recorded state to it, written under the area's lock (evaluated again when another runner got
//! there first).

use super::state::{Metrics, Model, Settings};
use super::upkeep::{chrono, samples};
use crate::area::{self, AreaInput, Level, LevelSensor, RainSensor, Upstream, WarningKind};
use crate::level::{LevelRule, Severity};
use crate::messages;
use crate::quality::QcRules;
use crate::rain::{self, RainRule};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Instant;
use tidemark_model::warning::alert_topic;
use tidemark_store::flood::{CrossingRow, NewEvent, TrendRow};
use tidemark_store::Store;

pub(crate) async fn evaluate_area(
    store: &Store,
    model: &Model,
    settings: &Settings,
    key: &str,
    metrics: &Metrics,
) {
    let started = Instant::now();
    // Another analytics process may record the area's events between this one's reading and its
    // writing; then the area is evaluated again from what that one recorded.
    let mut outcome = try_evaluate_area(store, model, settings, key).await;
    for _ in 0..3 {
        if !matches!(outcome, Err(tidemark_store::Error::Superseded(_))) {
            break;
        }
        metrics.superseded.inc();
        outcome = try_evaluate_area(store, model, settings, key).await;
    }
    match outcome {
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
                    severity: match r.severity {
                        3 => Severity::Severe,
                        2 => Severity::Warning,
                        _ => Severity::Alert,
                    },
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
    let evaluation = area::evaluate(&input, now);
    let trends: Vec<TrendRow> = evaluation
        .trends
        .iter()
        .map(|t| TrendRow {
            sensor_key: t.sensor.clone(),
            at: t.at,
            value: t.value,
            severity: t.severity.map(Severity::level),
            rate_per_hour: t.rate,
            projected: t.projected.map(|(s, at)| (s.level(), at)),
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
    let status = store.area_status(key).await?;
    let (last_at, current) = (status.last_at, status.current);
    let in_force = current.as_ref().map(|w| Level {
        severity: match w.severity {
            3 => Severity::Severe,
            2 => Severity::Warning,
            _ => Severity::Alert,
        },
        kind: if w.kind == "observed" {
            WarningKind::Observed
        } else {
            WarningKind::Expected
        },
    });
    let events = area::events(
        &evaluation,
        last_at,
        in_force,
        current.as_ref().is_some_and(|w| w.stale),
    );
    if events.is_empty() {
        return Ok(0);
    }
    let new_events: Vec<NewEvent> = events
        .iter()
        .map(|event| {
            let (message_en, message_da) = messages::compose(&area.name, event);
            NewEvent {
                kind: event.kind,
                severity: event.level.map(|l| l.severity),
                warning_kind: event.level.map_or(WarningKind::Observed, |l| l.kind),
                at: event.at,
                message_en,
                message_da,
                trigger: event.trigger.as_ref().map_or(serde_json::json!({}), |t| {
                    serde_json::json!({
                        "sensor": t.sensor, "cause": t.cause, "value": t.value, "threshold": t.threshold,
                        "rate": t.rate, "expected_at": t.expected_at,
                    })
                }),
            }
        })
        .collect();
    let deliveries: Vec<String> = area
        .municipality_codes
        .iter()
        .map(|code| alert_topic(&settings.topic_prefix, code, key))
        .collect();
    let crossings: Vec<CrossingRow> = evaluation
        .crossings
        .iter()
        .filter(|c| last_at.is_none_or(|last| c.at > last))
        .map(|c| CrossingRow {
            sensor_key: c.sensor.clone(),
            severity: c.severity.level(),
            up: c.up,
            at: c.at,
            value: c.value,
        })
        .collect();
    store
        .record_area_events_after(
            Some(status.last_event_id),
            key,
            &area.municipality_codes,
            &new_events,
            &deliveries,
            &crossings,
        )
        .await?;
    for event in &new_events {
        tracing::info!(area = %key, kind = %event.kind, severity = ?event.severity, at = %event.at, "warning event");
    }
    Ok(new_events.len() as u64)
}
