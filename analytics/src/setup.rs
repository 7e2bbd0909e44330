//! Flood configuration files (`config/flood/*.toml`): flood areas with their polygons and sensors,
//! river links, level thresholds and rain rules; turned into the rows the store keeps, with each
//! area's municipalities worked out from the municipality layer.

use crate::geography::{polygon, polygon_json, Municipalities};
use geo::{LineString, Point, Polygon};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tidemark_model::duration;
use tidemark_model::warning::{Category, Severity};
use tidemark_store::flood::{
    AreaRow, FloodSetup, LinkRow, MunicipalityRow, RainRuleRow, ThresholdRow,
};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {cause}")]
    Parse {
        path: String,
        cause: toml::de::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodFile {
    #[serde(default)]
    pub areas: Vec<AreaSpec>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    #[serde(default)]
    pub thresholds: Vec<ThresholdSpec>,
    #[serde(default)]
    pub rain: Vec<RainSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaSpec {
    pub key: String,
    pub name: String,
    /// The exterior ring as `[lon, lat]` pairs, closed.
    pub polygon: Vec<[f64; 2]>,
    pub sensors: Vec<String>,
    /// How far ahead forecasts are looked at.
    #[serde(default = "one_day", with = "duration::serde_str")]
    pub forecast_horizon: Duration,
    /// "flood" (the default) or "drought": its sensors' thresholds fall, as groundwater does.
    #[serde(default = "flood")]
    pub hazard: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub upstream_sensor: String,
    pub downstream_area: String,
    #[serde(with = "duration::serde_str")]
    pub travel_time: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSpec {
    pub sensor: String,
    pub alert: f64,
    pub warning: f64,
    pub severe: f64,
    #[serde(with = "duration::serde_str")]
    pub persistence: Duration,
    #[serde(default = "one")]
    pub min_readings: i32,
    pub hysteresis: f64,
    #[serde(with = "duration::serde_str")]
    pub hold: Duration,
    #[serde(default = "hour", with = "duration::serde_str")]
    pub rate_window: Duration,
    #[serde(default = "hour", with = "duration::serde_str")]
    pub lead_time: Duration,
    /// The sensor's own plausible range.
    #[serde(default = "unbounded")]
    pub plausible: [f64; 2],
    /// The smallest deviation called a spike.
    #[serde(default = "spike_floor")]
    pub spike_floor: f64,
    /// Rising at least this fast (units per hour) raises an expected alert whatever the level;
    /// for falling thresholds, falling at least this fast.
    #[serde(default)]
    pub rate_of_rise_alert: Option<f64>,
    /// "rising" (the default: a flood) or "falling" (alert > warning > severe: a drought).
    #[serde(default = "rising")]
    pub direction: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RainSpec {
    pub sensor: String,
    #[serde(with = "duration::serde_str")]
    pub window: Duration,
    pub more_than_mm: f64,
    /// alert, warning or severe.
    pub severity: String,
}

/// An area's forecast horizon unless its file says otherwise.
pub const DEFAULT_FORECAST_HORIZON: Duration = Duration::from_secs(24 * 3600);

const fn one_day() -> Duration {
    DEFAULT_FORECAST_HORIZON
}
fn flood() -> String {
    "flood".to_owned()
}
fn rising() -> String {
    "rising".to_owned()
}
const fn one() -> i32 {
    1
}
const fn hour() -> Duration {
    Duration::from_secs(3600)
}
const fn unbounded() -> [f64; 2] {
    [-1e9, 1e9]
}
const fn spike_floor() -> f64 {
    0.25
}

/// Where a thresholded sensor stands, for sensors that belong to no area.
pub type Positions = HashMap<String, (f64, f64)>;

/// Half the side of the square area made around a station that belongs to no area, degrees.
const STATION_AREA_HALF_SIDE: f64 = 0.005;

/// Reads flood files and works out every area's municipalities. A thresholded sensor in no area
/// gets an area of its own around its station (`positions`), named after the sensor.
pub fn load(
    files: &[String],
    layer: &Municipalities,
    nearest_km: f64,
    positions: &Positions,
) -> Result<FloodSetup, SetupError> {
    let mut setup = FloodSetup::default();
    for path in files {
        let invalid = |problem: String| SetupError::Invalid {
            path: path.clone(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|cause| SetupError::Read {
            path: path.clone(),
            cause,
        })?;
        let file: FloodFile = toml::from_str(&text).map_err(|cause| SetupError::Parse {
            path: path.clone(),
            cause,
        })?;
        for area in &file.areas {
            let ring: Vec<serde_json::Value> =
                area.polygon.iter().map(|p| serde_json::json!(p)).collect();
            let shape = polygon(&serde_json::json!([ring])).ok_or_else(|| {
                invalid(format!(
                    "area {}: the polygon needs a closed ring of 4 or more points",
                    area.key
                ))
            })?;
            let hazard = match area.hazard.as_str() {
                "flood" => Category::Flood,
                "drought" => Category::Drought,
                other => {
                    return Err(invalid(format!(
                        "area {}: hazard {other:?} is neither flood nor drought",
                        area.key
                    )))
                }
            };
            setup.areas.push(AreaRow {
                key: area.key.clone(),
                name: area.name.clone(),
                polygon: polygon_json(&shape),
                municipality_codes: layer.for_area(&shape, nearest_km),
                sensors: area.sensors.clone(),
                forecast_horizon: area.forecast_horizon,
                hazard,
            });
        }
        for t in &file.thresholds {
            let falling = match t.direction.as_str() {
                "rising" => false,
                "falling" => true,
                other => {
                    return Err(invalid(format!(
                        "thresholds of {}: direction {other:?} is neither rising nor falling",
                        t.sensor
                    )))
                }
            };
            let rule = crate::level::LevelRule {
                thresholds: [t.alert, t.warning, t.severe],
                falling,
                persistence: chrono::Duration::from_std(t.persistence).unwrap_or_default(),
                min_readings: t.min_readings.max(1) as u32,
                hysteresis: t.hysteresis,
                hold: chrono::Duration::from_std(t.hold).unwrap_or_default(),
            };
            rule.validate()
                .map_err(|e| invalid(format!("thresholds of {}: {e}", t.sensor)))?;
            setup.thresholds.push(ThresholdRow {
                sensor_key: t.sensor.clone(),
                alert: t.alert,
                warning: t.warning,
                severe: t.severe,
                persistence: t.persistence,
                min_readings: t.min_readings.max(1),
                hysteresis: t.hysteresis,
                hold: t.hold,
                rate_window: t.rate_window,
                lead_time: t.lead_time,
                plausible_low: t.plausible[0],
                plausible_high: t.plausible[1],
                spike_floor: t.spike_floor,
                rate_alert: t.rate_of_rise_alert,
                falling,
            });
        }
        for link in &file.links {
            setup.links.push(LinkRow {
                upstream_sensor: link.upstream_sensor.clone(),
                downstream_area: link.downstream_area.clone(),
                travel_time: link.travel_time,
            });
        }
        for rain in &file.rain {
            let severity = match Severity::parse(&rain.severity) {
                Some(severity) => severity,
                None => {
                    let other = &rain.severity;
                    return Err(invalid(format!(
                        "rain rule for {}: unknown severity {other}",
                        rain.sensor
                    )));
                }
            };
            setup.rain_rules.push(RainRuleRow {
                sensor_key: rain.sensor.clone(),
                window: rain.window,
                more_than_mm: rain.more_than_mm,
                severity,
            });
        }
    }
    let in_areas: HashSet<&String> = setup.areas.iter().flat_map(|a| a.sensors.iter()).collect();
    let lonely: Vec<String> = setup
        .thresholds
        .iter()
        .map(|t| t.sensor_key.clone())
        .filter(|s| !in_areas.contains(s))
        .collect();
    for sensor in lonely {
        let Some(&(lon, lat)) = positions.get(&sensor) else {
            continue;
        };
        let falling = setup
            .thresholds
            .iter()
            .any(|t| t.sensor_key == sensor && t.falling);
        let h = STATION_AREA_HALF_SIDE;
        let square = Polygon::new(
            LineString::from(vec![
                (lon - h, lat - h),
                (lon + h, lat - h),
                (lon + h, lat + h),
                (lon - h, lat + h),
                (lon - h, lat - h),
            ]),
            vec![],
        );
        setup.areas.push(AreaRow {
            key: sensor.clone(),
            name: format!("station {sensor}"),
            polygon: polygon_json(&square),
            municipality_codes: layer.for_point(Point::new(lon, lat), nearest_km),
            sensors: vec![sensor],
            forecast_horizon: DEFAULT_FORECAST_HORIZON,
            hazard: if falling {
                Category::Drought
            } else {
                Category::Flood
            },
        });
    }
    if let Some(problem) = setup.hazard_problems().into_iter().next() {
        return Err(SetupError::Invalid {
            path: files.join(", "),
            problem,
        });
    }
    Ok(setup)
}

/// The municipality layer as rows.
pub fn municipality_rows(layer: &Municipalities) -> Vec<MunicipalityRow> {
    layer
        .by_code
        .iter()
        .filter_map(|(code, (name, _))| {
            Some(MunicipalityRow {
                code: code.clone(),
                name: name.clone(),
                boundary: layer.boundary_json(code)?,
            })
        })
        .collect()
}
