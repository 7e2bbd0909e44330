//! Flood geography, thresholds, and the warning lifecycle: warnings, their append-only events, and
//! the outbox rows that delivery drains, written in one transaction.

mod lifecycle;
mod series;
mod setup;
mod verification;

pub use lifecycle::AreaTarget;
pub use verification::AreaRecord;

use crate::coordination::{self, Notice};
use crate::events::{append_events, warning_row, EventInsert, WarningRow, WARNING_SELECT};
use crate::terms::{opt_severity, severity, term};
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tidemark_model::warning::{Category, EventKind, Severity, WarningKind};

#[derive(Debug, Clone, PartialEq)]
pub struct MunicipalityRow {
    pub code: String,
    pub name: String,
    /// GeoJSON MultiPolygon.
    pub boundary: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AreaRow {
    pub key: String,
    pub name: String,
    /// GeoJSON Polygon.
    pub polygon: serde_json::Value,
    pub municipality_codes: Vec<String>,
    pub sensors: Vec<String>,
    /// How far ahead the area looks at forecasts.
    pub forecast_horizon: Duration,
    /// Flood (levels rise to their thresholds) or drought (they fall to them).
    pub hazard: Category,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub upstream_sensor: String,
    pub downstream_area: String,
    pub travel_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    pub sensor_key: String,
    pub alert: f64,
    pub warning: f64,
    pub severe: f64,
    pub persistence: Duration,
    pub min_readings: i32,
    pub hysteresis: f64,
    pub hold: Duration,
    pub rate_window: Duration,
    pub lead_time: Duration,
    pub plausible_low: f64,
    pub plausible_high: f64,
    pub spike_floor: f64,
    /// Rising at least this fast (units per hour) raises an expected alert; for falling
    /// thresholds, falling at least this fast.
    pub rate_alert: Option<f64>,
    /// The thresholds fall (alert > warning > severe): a level at or below one reaches it.
    pub falling: bool,
}

impl FloodSetup {
    /// What does not fit together: a sensor whose thresholds point against its area's hazard
    /// (rising in a drought area, falling in a flood area), rain rules or an upstream link for a
    /// drought area. Empty when all is well.
    pub fn hazard_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for area in &self.areas {
            let drought = area.hazard == Category::Drought;
            for sensor in &area.sensors {
                if let Some(t) = self.thresholds.iter().find(|t| &t.sensor_key == sensor) {
                    if t.falling != drought {
                        problems.push(format!(
                            "sensor {sensor}: its thresholds {} but area {} is a {} area, whose \
                             thresholds {}",
                            if t.falling { "fall" } else { "rise" },
                            area.key,
                            area.hazard.name(),
                            if drought { "fall" } else { "rise" },
                        ));
                    }
                }
                if drought && self.rain_rules.iter().any(|r| &r.sensor_key == sensor) {
                    problems.push(format!(
                        "sensor {sensor}: rain rules raise flood warnings, not drought warnings \
                         (area {})",
                        area.key
                    ));
                }
            }
            if drought && self.links.iter().any(|l| l.downstream_area == area.key) {
                problems.push(format!(
                    "area {}: a drought area takes no warnings from upstream",
                    area.key
                ));
            }
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RainRuleRow {
    pub sensor_key: String,
    pub window: Duration,
    pub more_than_mm: f64,
    pub severity: Severity,
}

/// Everything the flood-risk runner evaluates against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FloodSetup {
    pub areas: Vec<AreaRow>,
    pub links: Vec<LinkRow>,
    pub thresholds: Vec<ThresholdRow>,
    pub rain_rules: Vec<RainRuleRow>,
}

/// What an area's evaluation starts from.
#[derive(Debug, Clone)]
pub struct AreaStatus {
    /// When the area's last event happened (data time).
    pub last_at: Option<DateTime<Utc>>,
    /// The warning in force, if any.
    pub current: Option<WarningRow>,
}

/// What an evaluation records for an area, decided from the [`AreaStatus`] read under the
/// area's lock ([`Store::decide_area`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AreaDecision {
    pub events: Vec<NewEvent>,
    pub crossings: Vec<CrossingRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub warning_id: i64,
    pub area_key: String,
    pub kind: EventKind,
    pub severity: Option<Severity>,
    pub at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
}

/// An event of an area's evaluation to record: raised, changed, lifted, stale or fresh.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    /// The severity in force after the event, on raised and changed.
    pub severity: Option<Severity>,
    pub warning_kind: WarningKind,
    pub at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
    pub trigger: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrossingRow {
    pub sensor_key: String,
    pub severity: Severity,
    pub up: bool,
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// A level sensor as flood analytics last evaluated it (`level_trends`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrendRow {
    pub sensor_key: String,
    pub at: DateTime<Utc>,
    pub value: f64,
    pub severity: Option<Severity>,
    pub rate_per_hour: Option<f64>,
    /// The next threshold's severity and when the trend reaches it.
    pub projected: Option<(Severity, DateTime<Utc>)>,
}

/// The columns of warning_events every event query selects, in this order.
const EVENT_COLUMNS: &str = "id, warning_id, area_key, kind, severity, at, message_en, message_da";

fn event_row(r: &tokio_postgres::Row) -> Result<EventRow> {
    Ok(EventRow {
        id: r.get(0),
        warning_id: r.get(1),
        area_key: r.get(2),
        kind: term(r, 3, EventKind::parse)?,
        severity: opt_severity(r, 4)?,
        at: r.get(5),
        message_en: r.get(6),
        message_da: r.get(7),
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn duration(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

/// A data-quality rule for a sensor outside the flood setup.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRuleRow {
    pub sensor_key: String,
    pub plausible_low: f64,
    pub plausible_high: f64,
    pub spike_floor: f64,
    pub stuck_run: i32,
}
