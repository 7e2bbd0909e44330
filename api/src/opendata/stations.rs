//! Stations with their sensors, latest values and trends (JSON, GeoJSON, CSV), and one station.

use crate::http::geojson::{point, Feature, FeatureCollection};
use crate::http::problem::{ApiError, Result};
use crate::http::{
    csv_field, format, json_response, numbers, parse_bbox, parse_query, single_format, typed,
    Format,
};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tidemark_model::warning::Severity;
use tidemark_model::Quantity;
use tidemark_store::flood::TrendRow;
use tidemark_store::opendata::{LatestFilter, LatestRow, StationFilter, StationRow};
use utoipa::{IntoParams, ToSchema};

/// Most stations one list returns.
pub(crate) const STATION_LIMIT: i64 = 10_000;

pub(crate) fn unit_of(quantity: &str) -> &'static str {
    Quantity::parse(quantity).map_or("", |q| q.canonical_unit().symbol())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StationQuery {
    /// Station kind: tide_gauge, river_gauge, rain_gauge, meter, container, ...
    pub kind: Option<String>,
    /// Stations with a sensor of this quantity (sea_level, water_level, rainfall, ...).
    pub quantity: Option<String>,
    /// Municipality code (kommunekode), e.g. 0751.
    pub municipality: Option<String>,
    /// `min_lon,min_lat,max_lon,max_lat`.
    pub bbox: Option<String>,
    /// `lon,lat`: nearest first, within `radius_km` (default 10).
    pub near: Option<String>,
    pub radius_km: Option<f64>,
    /// At most this many stations (1 to 10,000).
    pub limit: Option<i64>,
    /// json, geojson or csv (or use the Accept header).
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SensorBody {
    pub key: String,
    pub quantity: String,
    pub unit: &'static str,
    pub name: String,
    pub expected_interval_seconds: u64,
    pub latest: Option<LatestReading>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatestReading {
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub quality: i16,
    pub received_at: DateTime<Utc>,
    /// No reading for three expected intervals. (The age itself is left to the client, so that
    /// an unchanged answer keeps its ETag.)
    pub stale: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StationBody {
    pub key: String,
    pub name: String,
    pub kind: String,
    pub lon: f64,
    pub lat: f64,
    pub municipality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    pub sensors: Vec<SensorBody>,
    /// What flood analytics last made of the station: `normal`, `alert`, `warning` or `severe` by
    /// its level sensors' thresholds, `stale` when a sensor has gone quiet, `no_data` before any
    /// reading.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<ThresholdBody>>,
    /// The station's level sensors as flood analytics last evaluated them (one station only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trends: Option<Vec<TrendBody>>,
}

/// A level sensor at its newest usable reading, as flood analytics evaluated it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendBody {
    pub sensor: String,
    pub at: DateTime<Utc>,
    pub value: f64,
    /// `alert`, `warning` or `severe` when its thresholds are reached (after their persistence).
    pub severity: Option<Severity>,
    /// In the sensor's unit per hour, by least squares over the thresholds' rate window.
    pub rate_per_hour: Option<f64>,
    /// The next threshold above the current severity that the trend reaches, and when.
    pub projected: Option<ProjectedCrossing>,
}

/// A level sensor's flood thresholds, in its unit.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThresholdBody {
    pub sensor: String,
    pub alert: f64,
    pub warning: f64,
    pub severe: f64,
    /// How far a level must fall back below a threshold before its severity is let go.
    pub hysteresis: f64,
    /// How long a threshold must be exceeded before it counts.
    pub persistence_seconds: u64,
    /// Rising at least this fast raises an expected alert (falling, for falling thresholds).
    pub rate_alert_per_hour: Option<f64>,
    /// `rising`, or `falling` for thresholds that point downwards (alert > warning > severe).
    pub direction: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectedCrossing {
    pub severity: Severity,
    pub at: DateTime<Utc>,
}

pub(crate) fn trend_body(row: &TrendRow) -> TrendBody {
    TrendBody {
        sensor: row.sensor_key.clone(),
        at: row.at,
        value: row.value,
        severity: row.severity,
        rate_per_hour: row.rate_per_hour,
        projected: row
            .projected
            .map(|(severity, at)| ProjectedCrossing { severity, at }),
    }
}

/// A station's state from its sensors' latest readings and their evaluated trends. A sensor is
/// silent, as analytics has it, when its latest reading is stale and nothing has arrived for as
/// long: readings of a replay or a back-fill still arriving are old but not silence.
pub(crate) fn station_state(
    sensors: &[SensorBody],
    trends: &HashMap<String, TrendRow>,
    now: DateTime<Utc>,
) -> &'static str {
    if sensors.iter().all(|s| s.latest.is_none()) {
        return "no_data";
    }
    let silent = |s: &SensorBody| {
        s.latest.as_ref().is_some_and(|l| {
            let limit = Duration::from_secs(s.expected_interval_seconds.saturating_mul(3));
            l.stale
                && (now - l.received_at)
                    .to_std()
                    .is_ok_and(|quiet| quiet > limit)
        })
    };
    if sensors.iter().any(silent) {
        return "stale";
    }
    sensors
        .iter()
        .filter_map(|s| trends.get(&s.key)?.severity)
        .max()
        .map_or("normal", Severity::name)
}

pub(crate) fn sensor_body(row: LatestRow, now: DateTime<Utc>) -> SensorBody {
    let interval = row.expected_interval;
    SensorBody {
        unit: unit_of(&row.quantity),
        key: row.sensor,
        quantity: row.quantity,
        name: row.name,
        expected_interval_seconds: interval.as_secs(),
        latest: row.latest.map(|(ts, value, quality, received_at)| {
            let age = now - ts;
            LatestReading {
                ts,
                value,
                quality,
                received_at,
                stale: age.to_std().is_ok_and(|a| a > interval * 3),
            }
        }),
    }
}

pub(crate) fn station_body(
    row: StationRow,
    sensors: Vec<SensorBody>,
    trends: &HashMap<String, TrendRow>,
    now: DateTime<Utc>,
) -> StationBody {
    StationBody {
        state: station_state(&sensors, trends, now),
        key: row.key,
        name: row.name,
        kind: row.kind,
        lon: row.lon,
        lat: row.lat,
        municipality: row.municipality_code,
        distance_km: row.distance_km,
        sensors,
        thresholds: None,
        trends: None,
    }
}

pub(crate) fn feature(station: &StationBody) -> Feature {
    Feature::of(
        &station.key,
        point(station.lon, station.lat),
        station,
        &["lon", "lat"],
    )
}

/// The stations the filter selects, with their sensors and state, and the evaluated trends of those
/// sensors by key (which a single station's answer shows).
pub(crate) async fn station_bodies(
    state: &ApiState,
    filter: &StationFilter,
) -> Result<(Vec<StationBody>, HashMap<String, TrendRow>)> {
    let rows = state.store.stations(filter).await?;
    let mut sensors: BTreeMap<String, Vec<SensorBody>> = BTreeMap::new();
    let now = Utc::now();
    let latest = state
        .store
        .latest(&LatestFilter {
            station: filter.key.clone(),
            ..LatestFilter::default()
        })
        .await?;
    let keys: Vec<String> = latest.iter().map(|r| r.sensor.clone()).collect();
    let trends: HashMap<String, TrendRow> = state
        .store
        .trends(Some(&keys))
        .await?
        .into_iter()
        .map(|t| (t.sensor_key.clone(), t))
        .collect();
    for row in latest {
        if let Some(station) = row.station.clone() {
            sensors
                .entry(station)
                .or_default()
                .push(sensor_body(row, now));
        }
    }
    let bodies = rows
        .into_iter()
        .map(|row| {
            let own = sensors.remove(&row.key).unwrap_or_default();
            station_body(row, own, &trends, now)
        })
        .collect();
    Ok((bodies, trends))
}

pub(crate) fn station_csv(stations: &[StationBody]) -> String {
    let mut out = String::from("key,name,kind,lon,lat,municipality,sensors\n");
    for s in stations {
        let keys: Vec<&str> = s.sensors.iter().map(|x| x.key.as_str()).collect();
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            csv_field(&s.key),
            csv_field(&s.name),
            csv_field(&s.kind),
            s.lon,
            s.lat,
            s.municipality.as_deref().unwrap_or(""),
            csv_field(&keys.join(" "))
        ));
    }
    out
}

/// Stations, filtered; nearest first with `near`.
#[utoipa::path(get, path = "/api/v1/stations", tag = "open data", params(StationQuery),
    responses(
        (status = 200, description = "Stations with their sensors", content((StationList = "application/json"), (FeatureCollection = "application/geo+json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Past the rate limit", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn stations(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<StationQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, true)?;
    let limit = query.limit.unwrap_or(STATION_LIMIT);
    if !(1..=STATION_LIMIT).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("limit must be 1 to {STATION_LIMIT}"),
        ));
    }
    let bbox = query.bbox.as_deref().map(parse_bbox).transpose()?;
    let near = match &query.near {
        Some(text) => {
            let [lon, lat] = numbers::<2>("near", text, "lon,lat")?;
            if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
                return Err(ApiError::bad("near", "near must be lon,lat in degrees"));
            }
            let radius = query.radius_km.unwrap_or(10.0);
            if !(radius > 0.0 && radius <= 20_000.0) {
                return Err(ApiError::bad(
                    "radius_km",
                    "radius_km must be above 0 and at most 20000",
                ));
            }
            Some((lon, lat, radius))
        }
        None if query.radius_km.is_some() => {
            return Err(ApiError::bad("radius_km", "radius_km needs near=lon,lat"))
        }
        None => None,
    };
    let filter = StationFilter {
        kind: query.kind,
        quantity: query.quantity,
        municipality: query.municipality,
        bbox,
        near,
        key: None,
        limit,
    };
    let (bodies, _) = station_bodies(&state, &filter).await?;
    Ok(match format {
        // format() offers Parquet nowhere but raw readings.
        Format::Json | Format::Parquet => json_response(&StationList { stations: bodies }),
        Format::GeoJson => bodies
            .iter()
            .map(feature)
            .collect::<FeatureCollection>()
            .response(),
        Format::Csv => typed("text/csv; charset=utf-8", station_csv(&bodies)),
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OneQuery {
    /// json or geojson (or use the Accept header).
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/stations/{key}", tag = "open data",
    params(("key" = String, Path, description = "The station's key"), OneQuery),
    responses(
        (status = 200, description = "The station", content((StationBody = "application/json"), (Feature = "application/geo+json"))),
        (status = 404, description = "No such station", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/stations/{key}`: the station, its sensors with their latest readings, and the
/// flood thresholds of those sensors.
pub async fn station(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<OneQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = single_format(query.format.as_deref(), &headers, "station")?;
    let filter = StationFilter {
        key: Some(key.clone()),
        limit: 1,
        ..StationFilter::default()
    };
    let (mut stations, trends) = station_bodies(&state, &filter).await?;
    let mut station = stations
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("station {key}")))?;
    let setup = state.store.flood_setup().await?;
    let thresholds = setup
        .thresholds
        .iter()
        .filter(|t| station.sensors.iter().any(|s| s.key == t.sensor_key))
        .map(|t| ThresholdBody {
            sensor: t.sensor_key.clone(),
            alert: t.alert,
            warning: t.warning,
            severe: t.severe,
            hysteresis: t.hysteresis,
            persistence_seconds: t.persistence.as_secs(),
            rate_alert_per_hour: t.rate_alert,
            direction: if t.falling { "falling" } else { "rising" },
        })
        .collect();
    station.thresholds = Some(thresholds);
    station.trends = Some(
        station
            .sensors
            .iter()
            .filter_map(|s| trends.get(&s.key))
            .map(trend_body)
            .collect(),
    );
    Ok(match format {
        Format::GeoJson => feature(&station).response(),
        _ => json_response(&station),
    })
}

/// `GET /api/v1/stations`
#[derive(Serialize, ToSchema)]
pub struct StationList {
    pub stations: Vec<StationBody>,
}
