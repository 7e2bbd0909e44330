//! Open data: stations (JSON or GeoJSON), the latest value of every sensor, and a sensor's readings,
//! raw (paged by time or by arrival, streamed) or aggregated on the server into time buckets.
//!
//! Formats are chosen by `format=` or, failing that, the `Accept` header: JSON (the default), CSV
//! (`text/csv`), and GeoJSON (`application/geo+json`) where there is geometry.

pub mod latest_cache;
#[cfg(feature = "parquet")]
pub mod parquet_export;

use crate::body::severity_key;
use crate::http::problem::{ApiError, Result};
use crate::http::{
    csv_field, format, json_response, numbers, parse_bbox, parse_query, rfc3339, single_format,
    time, typed, wants_parquet, Format, PARQUET,
};
use crate::state::ApiState;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use base64::Engine;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tidemark_model::Quantity;
use tidemark_store::flood::TrendRow;
use tidemark_store::opendata::{
    BucketRow, LatestFilter, LatestRow, RawOrder, RawReading, StationFilter, StationRow,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most stations one list returns.
const STATION_LIMIT: i64 = 10_000;
/// Raw readings per page: the default and the most.
const DEFAULT_PAGE: i64 = 1_000;
const MAX_PAGE: i64 = 100_000;
/// Most buckets one aggregation returns.
const MAX_BUCKETS: i64 = 100_000;
/// The smallest bucket.
const MIN_BUCKET: Duration = Duration::from_secs(60);
/// Without `from`, a query covers this long before `to`.
const DEFAULT_SPAN: ChronoDuration = ChronoDuration::hours(24);

fn unit_of(quantity: &str) -> &'static str {
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
    pub thresholds: Option<Vec<serde_json::Value>>,
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
    pub severity: Option<&'static str>,
    /// In the sensor's unit per hour, by least squares over the thresholds' rate window.
    pub rate_per_hour: Option<f64>,
    /// The next threshold above the current severity that the trend reaches, and when.
    pub projected: Option<ProjectedCrossing>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectedCrossing {
    pub severity: &'static str,
    pub at: DateTime<Utc>,
}

fn trend_body(row: &TrendRow) -> TrendBody {
    TrendBody {
        sensor: row.sensor_key.clone(),
        at: row.at,
        value: row.value,
        severity: row.severity.map(severity_key),
        rate_per_hour: row.rate_per_hour,
        projected: row.projected.map(|(severity, at)| ProjectedCrossing {
            severity: severity_key(severity),
            at,
        }),
    }
}

/// A station's state from its sensors' latest readings and their evaluated trends. A sensor is
/// silent, as analytics has it, when its latest reading is stale and nothing has arrived for as
/// long: readings of a replay or a back-fill still arriving are old but not silence.
fn station_state(
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
        .map_or("normal", severity_key)
}

fn sensor_body(row: LatestRow, now: DateTime<Utc>) -> SensorBody {
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

fn station_body(
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

fn feature(station: &StationBody) -> serde_json::Value {
    let mut properties = serde_json::to_value(station).unwrap_or_default();
    if let Some(p) = properties.as_object_mut() {
        p.remove("lon");
        p.remove("lat");
    }
    serde_json::json!({
        "type": "Feature",
        "id": station.key,
        "geometry": {"type": "Point", "coordinates": [station.lon, station.lat]},
        "properties": properties,
    })
}

/// The stations the filter selects, with their sensors and state, and the evaluated trends of those
/// sensors by key (which a single station's answer shows).
async fn station_bodies(
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

fn station_csv(stations: &[StationBody]) -> String {
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
        (status = 200, description = "Stations with their sensors", content((StationList = "application/json"), (Object = "application/geo+json"), (String = "text/csv"))),
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
        Format::Json | Format::Parquet => json_response(&serde_json::json!({ "stations": bodies })),
        Format::GeoJson => typed(
            "application/geo+json",
            serde_json::to_vec(&serde_json::json!({
                "type": "FeatureCollection",
                "features": bodies.iter().map(feature).collect::<Vec<_>>(),
            }))
            .unwrap_or_default(),
        ),
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
        (status = 200, description = "The station", content((StationBody = "application/json"), (Object = "application/geo+json"))),
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
        .map(|t| {
            serde_json::json!({
                "sensor": t.sensor_key, "alert": t.alert, "warning": t.warning, "severe": t.severe,
                "hysteresis": t.hysteresis, "persistence_seconds": t.persistence.as_secs(),
                "rate_alert_per_hour": t.rate_alert,
            })
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
        Format::GeoJson => typed(
            "application/geo+json",
            serde_json::to_vec(&feature(&station)).unwrap_or_default(),
        ),
        _ => json_response(&station),
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LatestQuery {
    /// Only sensors of this quantity.
    pub quantity: Option<String>,
    /// Only the sensors of this station.
    pub station: Option<String>,
    /// Only sensors at stations in this municipality.
    pub municipality: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// The JSON answer of `/api/v1/latest` for these rows.
fn latest_json(rows: Vec<LatestRow>, now: DateTime<Utc>) -> Vec<u8> {
    let items: Vec<LatestItem> = rows
        .into_iter()
        .map(|row| {
            let station = row.station.clone();
            LatestItem {
                sensor: sensor_body(row, now),
                station,
            }
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "sensors": items })).unwrap_or_default()
}

/// A sensor's latest value, with its station.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatestItem {
    #[serde(flatten)]
    pub sensor: SensorBody,
    pub station: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/latest", tag = "open data", params(LatestQuery),
    responses(
        (status = 200, description = "Every sensor with its newest reading", content((LatestList = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/latest`: the newest reading of every sensor (filterable).
pub async fn latest(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<LatestQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let unfiltered =
        query.quantity.is_none() && query.station.is_none() && query.municipality.is_none();
    if unfiltered && format == Format::Json {
        let body = state
            .latest
            .get(|| async {
                let rows = state.store.latest(&LatestFilter::default()).await?;
                Ok::<_, ApiError>(latest_json(rows, Utc::now()))
            })
            .await?;
        return Ok(typed("application/json", body));
    }
    let rows = state
        .store
        .latest(&LatestFilter {
            quantity: query.quantity,
            station: query.station,
            municipality: query.municipality,
        })
        .await?;
    let now = Utc::now();
    if format != Format::Csv {
        return Ok(typed("application/json", latest_json(rows, now)));
    }
    let stations: Vec<Option<String>> = rows.iter().map(|r| r.station.clone()).collect();
    let sensors: Vec<SensorBody> = rows.into_iter().map(|r| sensor_body(r, now)).collect();
    let mut out = String::from("sensor,station,quantity,unit,ts,value,quality,received_at,stale\n");
    for (s, station) in sensors.iter().zip(&stations) {
        let (ts, value, quality, received, stale) = match &s.latest {
            Some(l) => (
                rfc3339(l.ts),
                l.value.to_string(),
                l.quality.to_string(),
                rfc3339(l.received_at),
                l.stale.to_string(),
            ),
            None => Default::default(),
        };
        out.push_str(&format!(
            "{},{},{},{},{ts},{value},{quality},{received},{stale}\n",
            csv_field(&s.key),
            csv_field(station.as_deref().unwrap_or("")),
            s.quantity,
            s.unit
        ));
    }
    Ok(typed("text/csv; charset=utf-8", out))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// Start (inclusive) of the measurement-time range; default 24 hours before `to`.
    pub from: Option<String>,
    /// End (exclusive); default now.
    pub to: Option<String>,
    /// Everything received at or after this instant, in order of arrival (for pollers).
    pub since: Option<String>,
    /// Where the next page starts, from the previous page's `next`.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
    /// Aggregate into buckets of this length (`15m`, `1h`, `1d`, ...).
    pub bucket: Option<String>,
    /// Comma-separated: avg, min, max, sum, count, first, last.
    pub agg: Option<String>,
    /// Empty buckets: omit (default), null, or interpolate (linear, across at most `max_gap`).
    pub fill: Option<String>,
    pub max_gap: Option<u32>,
    /// usable (default: good or merely suspect readings) or all.
    pub quality: Option<String>,
    /// json, csv or parquet (or use the Accept header).
    pub format: Option<String>,
}

const AGGREGATES: [&str; 7] = ["avg", "min", "max", "sum", "count", "first", "last"];

/// A cursor: `t<micros>` after a measurement time, `a<micros>_<micros>` after an arrival.
fn encode_cursor(order: &RawOrder, last: &RawReading) -> String {
    let text = match order {
        RawOrder::Time { .. } => format!("t{}", last.ts.timestamp_micros()),
        RawOrder::Arrival { .. } => format!(
            "a{}_{}",
            last.received_at.timestamp_micros(),
            last.ts.timestamp_micros()
        ),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(text: &str) -> Option<(char, i64, Option<i64>)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let kind = text.chars().next()?;
    let rest = &text[1..];
    match kind {
        't' => Some(('t', rest.parse().ok()?, None)),
        'a' => {
            let (a, b) = rest.split_once('_')?;
            Some(('a', a.parse().ok()?, Some(b.parse().ok()?)))
        }
        _ => None,
    }
}

fn micros(value: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value)
}

/// A sensor's readings: raw (paged by time, or by arrival with `since`) or aggregated into buckets.
#[utoipa::path(get, path = "/api/v1/sensors/{key}/readings", tag = "open data",
    params(("key" = String, Path, description = "The sensor's key"), ReadingsQuery),
    responses(
        (status = 200, description = "Raw readings (a page, with `next`), or buckets when `bucket` is given",
            content((ReadingsPage = "application/json"), (String = "text/csv"),
                (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn readings(
    State(state): State<ApiState>,
    Path(sensor): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<ReadingsQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = if wants_parquet(query.format.as_deref(), &headers) {
        Format::Parquet
    } else {
        format(query.format.as_deref(), &headers, false)?
    };
    let quantity = state
        .store
        .sensor_quantity(&sensor)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
    if query.bucket.is_some() {
        return aggregated(&state, &sensor, &quantity, query, format).await;
    }
    for (name, given) in [
        ("agg", query.agg.is_some()),
        ("fill", query.fill.is_some()),
        ("max_gap", query.max_gap.is_some()),
        ("quality", query.quality.is_some()),
    ] {
        if given {
            return Err(ApiError::bad(
                name,
                format!("{name} applies only with bucket"),
            ));
        }
    }
    raw(&state, &sensor, &quantity, query, format).await
}

fn time_range(query: &ReadingsQuery) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let to = match &query.to {
        Some(t) => time("to", t)?,
        None => Utc::now(),
    };
    let from = match &query.from {
        Some(t) => time("from", t)?,
        None => to - DEFAULT_SPAN,
    };
    if from >= to {
        return Err(ApiError::bad("from", "from must be before to"));
    }
    Ok((from, to))
}

async fn raw(
    state: &ApiState,
    sensor: &str,
    quantity: &str,
    query: ReadingsQuery,
    format: Format,
) -> Result<Response> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = match &query.cursor {
        Some(text) => Some(
            decode_cursor(text)
                .ok_or_else(|| ApiError::bad("cursor", "the cursor is not one this API gave"))?,
        ),
        None => None,
    };
    let order = match &query.since {
        Some(since) => {
            if query.from.is_some() || query.to.is_some() {
                return Err(ApiError::bad(
                    "since",
                    "since cannot be combined with from or to",
                ));
            }
            let after = match cursor {
                None => None,
                Some(('a', received, Some(ts))) => Some((
                    micros(received).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?,
                    micros(ts).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?,
                )),
                Some(_) => {
                    return Err(ApiError::bad(
                        "cursor",
                        "this cursor belongs to a from/to query",
                    ))
                }
            };
            RawOrder::Arrival {
                since: time("since", since)?,
                after,
            }
        }
        None => {
            let (from, to) = time_range(&query)?;
            let after = match cursor {
                None => None,
                Some(('t', ts, None)) => {
                    Some(micros(ts).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?)
                }
                Some(_) => {
                    return Err(ApiError::bad(
                        "cursor",
                        "this cursor belongs to a since query",
                    ))
                }
            };
            RawOrder::Time { from, to, after }
        }
    };
    let next = state
        .store
        .page_end(sensor, &order, limit)
        .await?
        .map(|last| encode_cursor(&order, &last));
    let rows = state.store.raw_readings(sensor, &order, limit).await?;
    let unit = unit_of(quantity);
    let base = state.settings.base_url();
    let mut next_link = None;
    if let Some(next) = &next {
        let mut url =
            format!("{base}/api/v1/sensors/{sensor}/readings?cursor={next}&limit={limit}");
        for (name, value) in [
            ("from", &query.from),
            ("to", &query.to),
            ("since", &query.since),
            ("format", &query.format),
        ] {
            if let Some(value) = value {
                url.push_str(&format!("&{name}={}", url_escape(value)));
            }
        }
        next_link = Some(url);
    }
    // Rows are written as they come from the database.
    let body = match format {
        #[cfg(feature = "parquet")]
        Format::Parquet => parquet_export::body(
            rows,
            vec![
                ("sensor".to_owned(), sensor.to_owned()),
                ("quantity".to_owned(), quantity.to_owned()),
                ("unit".to_owned(), unit.to_owned()),
                ("next".to_owned(), next.clone().unwrap_or_default()),
            ],
        ),
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => {
            return Err(ApiError::bad(
                "format",
                "this build has no Parquet support (the cargo feature parquet is off)",
            ))
        }
        Format::Csv => {
            let header = futures_util::stream::once(async {
                Ok::<_, tidemark_store::Error>("ts,value,quality,received_at\n".to_owned())
            });
            let lines = rows.map(|row| {
                row.map(|r| {
                    format!(
                        "{},{},{},{}\n",
                        rfc3339(r.ts),
                        r.value,
                        r.quality,
                        rfc3339(r.received_at)
                    )
                })
            });
            Body::from_stream(header.chain(lines).ready_chunks(ROWS_PER_CHUNK).map(joined))
        }
        _ => {
            let head = format!(
                "{{\"sensor\":{},\"quantity\":{},\"unit\":{},\"readings\":[",
                serde_json::to_string(sensor).unwrap_or_default(),
                serde_json::to_string(quantity).unwrap_or_default(),
                serde_json::to_string(unit).unwrap_or_default()
            );
            let tail = format!(
                "],\"next\":{}}}",
                serde_json::to_string(&next).unwrap_or_default()
            );
            let items = rows.enumerate().map(|(i, row)| {
                row.map(|r| {
                    let item = serde_json::json!({
                        "ts": rfc3339(r.ts), "value": r.value, "quality": r.quality,
                        "received_at": rfc3339(r.received_at),
                    });
                    format!("{}{item}", if i == 0 { "" } else { "," })
                })
            });
            let head = futures_util::stream::once(async move { Ok(head) });
            let tail = futures_util::stream::once(async move { Ok(tail) });
            Body::from_stream(
                head.chain(items)
                    .chain(tail)
                    .ready_chunks(ROWS_PER_CHUNK)
                    .map(joined),
            )
        }
    };
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Parquet => PARQUET,
        _ => "application/json",
    };
    let mut response = typed(content_type, body);
    if format == Format::Parquet {
        if let Ok(disposition) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{}.parquet\"",
            sensor.replace('"', "")
        )) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, disposition);
        }
    }
    if let Some(link) =
        next_link.and_then(|l| HeaderValue::from_str(&format!("<{l}>; rel=\"next\"")).ok())
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Rows gathered into one write of a streamed answer: few enough to keep memory flat, many
/// enough that a page is not hundreds of tiny writes.
const ROWS_PER_CHUNK: usize = 512;

/// The rows ready at once as one piece of the body.
fn joined(pieces: Vec<tidemark_store::Result<String>>) -> tidemark_store::Result<String> {
    pieces.into_iter().collect()
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One output bucket: a stored bucket, an empty one, or one interpolated across a gap.
#[derive(Debug, Clone, PartialEq)]
enum Filled {
    Stored(BucketRow),
    Empty(DateTime<Utc>),
    Interpolated(DateTime<Utc>, f64),
}

/// Fills the buckets between `from` and `to` that have no readings, as asked: omitted, empty, or
/// (for the average) interpolated linearly between the neighbouring buckets when the gap spans
/// at most `max_gap` buckets.
fn fill_buckets(
    stored: Vec<BucketRow>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: ChronoDuration,
    mode: &str,
    max_gap: u32,
) -> Vec<Filled> {
    if mode == "omit" {
        return stored.into_iter().map(Filled::Stored).collect();
    }
    let step = bucket.num_microseconds().unwrap_or(1).max(1);
    let first = from.timestamp_micros().div_euclid(step) * step;
    let mut by_start: BTreeMap<i64, BucketRow> = stored
        .into_iter()
        .map(|b| (b.start.timestamp_micros(), b))
        .collect();
    let mut out = Vec::new();
    let mut at = first;
    while at < to.timestamp_micros() {
        let start = DateTime::from_timestamp_micros(at).unwrap_or(from);
        match by_start.remove(&at) {
            Some(row) => out.push(Filled::Stored(row)),
            None => out.push(Filled::Empty(start)),
        }
        at += step;
    }
    if mode == "interpolate" {
        let average = |f: &Filled| match f {
            Filled::Stored(b) if b.count > 0 => Some(b.sum / b.count as f64),
            _ => None,
        };
        let known: Vec<usize> = (0..out.len())
            .filter(|i| average(&out[*i]).is_some())
            .collect();
        for pair in known.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let gap = b - a - 1;
            if gap == 0 || gap > max_gap as usize {
                continue;
            }
            let (va, vb) = (
                average(&out[a]).unwrap_or(0.0),
                average(&out[b]).unwrap_or(0.0),
            );
            for (i, slot) in out.iter_mut().enumerate().take(b).skip(a + 1) {
                if let Filled::Empty(start) = *slot {
                    let t = (i - a) as f64 / (b - a) as f64;
                    *slot = Filled::Interpolated(start, va + (vb - va) * t);
                }
            }
        }
    }
    out
}

async fn aggregated(
    state: &ApiState,
    sensor: &str,
    quantity: &str,
    query: ReadingsQuery,
    format: Format,
) -> Result<Response> {
    for (name, given) in [
        ("since", query.since.is_some()),
        ("cursor", query.cursor.is_some()),
        ("limit", query.limit.is_some()),
    ] {
        if given {
            return Err(ApiError::bad(
                name,
                format!("{name} applies only to raw readings, not with bucket"),
            ));
        }
    }
    let text = query.bucket.as_deref().unwrap_or_default();
    let bucket = tidemark_model::duration::parse(text)
        .map_err(|e| ApiError::bad("bucket", e.to_string()))?;
    if bucket < MIN_BUCKET {
        return Err(ApiError::bad("bucket", "bucket must be at least 1m"));
    }
    let (from, to) = time_range(&query)?;
    let chrono_bucket = ChronoDuration::from_std(bucket)
        .map_err(|_| ApiError::bad("bucket", "bucket is too long"))?;
    let buckets = (to - from).num_seconds() / chrono_bucket.num_seconds().max(1);
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad(
            "bucket",
            format!("{buckets} buckets asked for; at most {MAX_BUCKETS}: use a larger bucket or a shorter range"),
        ));
    }
    let aggregates: Vec<&str> = match &query.agg {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => vec!["avg", "min", "max", "count"],
    };
    if let Some(bad) = aggregates.iter().find(|a| !AGGREGATES.contains(a)) {
        return Err(ApiError::bad(
            "agg",
            format!("agg {bad:?} is not one of {}", AGGREGATES.join(", ")),
        ));
    }
    let fill = query.fill.as_deref().unwrap_or("omit");
    if !["omit", "null", "interpolate"].contains(&fill) {
        return Err(ApiError::bad(
            "fill",
            "fill must be omit, null or interpolate",
        ));
    }
    let all = match query.quality.as_deref() {
        None | Some("usable") => false,
        Some("all") => true,
        Some(_) => return Err(ApiError::bad("quality", "quality must be usable or all")),
    };
    let stored = state.store.aggregate(sensor, from, to, bucket, all).await?;
    let filled = fill_buckets(
        stored,
        from,
        to,
        chrono_bucket,
        fill,
        query.max_gap.unwrap_or(3),
    );
    // The answers are written directly rather than through serde_json values: a year of hourly
    // buckets is thousands of them, and building a map per bucket was most of the request's time.
    let value = |f: &Filled, aggregate: &str| -> Option<f64> {
        match f {
            Filled::Stored(b) if b.count > 0 => Some(match aggregate {
                "avg" => b.sum / b.count as f64,
                "min" => b.min,
                "max" => b.max,
                "sum" => b.sum,
                "count" => b.count as f64,
                "first" => b.first,
                _ => b.last,
            }),
            Filled::Stored(_) | Filled::Empty(_) if aggregate == "count" => Some(0.0),
            Filled::Interpolated(_, v) if aggregate == "avg" => Some(*v),
            _ => None,
        }
        .filter(|v| v.is_finite())
    };
    // A number as JSON and CSV write it (counts are whole numbers and print as such).
    let number = |v: f64| -> String {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        }
    };
    let meta = |f: &Filled| -> (DateTime<Utc>, i64, i16, &'static str) {
        match f {
            Filled::Stored(b) => (
                b.start,
                b.flagged,
                b.quality,
                if b.count > 0 { "measured" } else { "flagged" },
            ),
            Filled::Empty(s) => (*s, 0, 0, "empty"),
            Filled::Interpolated(s, _) => (*s, 0, 0, "interpolated"),
        }
    };
    Ok(match format {
        #[cfg(feature = "parquet")]
        Format::Parquet => {
            let records: Vec<parquet_export::BucketRecord> = filled
                .iter()
                .map(|f| {
                    let (start, flagged, quality, state) = meta(f);
                    parquet_export::BucketRecord {
                        start,
                        values: aggregates.iter().map(|a| value(f, a)).collect(),
                        flagged,
                        quality,
                        state,
                    }
                })
                .collect();
            let names: Vec<String> = aggregates.iter().map(|a| (*a).to_owned()).collect();
            let metadata = vec![
                ("sensor".to_owned(), sensor.to_owned()),
                ("quantity".to_owned(), quantity.to_owned()),
                ("unit".to_owned(), unit_of(quantity).to_owned()),
                ("bucket".to_owned(), text.to_owned()),
            ];
            let file = tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                parquet_export::buckets(&names, &records, metadata)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut response = typed(PARQUET, file);
            if let Ok(disposition) = HeaderValue::from_str(&format!(
                "attachment; filename=\"{}-{}.parquet\"",
                sensor.replace('"', ""),
                text.replace('"', "")
            )) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, disposition);
            }
            response
        }
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => {
            return Err(ApiError::bad(
                "format",
                "this build has no Parquet support (the cargo feature parquet is off)",
            ))
        }
        Format::Csv => {
            let mut out = format!("start,{},flagged,quality,state\n", aggregates.join(","));
            for f in &filled {
                let (start, flagged, quality, kind) = meta(f);
                let values: Vec<String> = aggregates
                    .iter()
                    .map(|a| value(f, a).map(number).unwrap_or_default())
                    .collect();
                out.push_str(&format!(
                    "{},{},{flagged},{quality},{kind}\n",
                    rfc3339(start),
                    values.join(",")
                ));
            }
            typed("text/csv; charset=utf-8", out)
        }
        _ => {
            use std::fmt::Write as _;
            let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
            let mut out = String::with_capacity(128 + filled.len() * (64 + 24 * aggregates.len()));
            let _ = write!(
                out,
                "{{\"sensor\":{},\"quantity\":{},\"unit\":{},\"bucket\":{},\"from\":\"{}\",\"to\":\"{}\",\"buckets\":[",
                quoted(sensor),
                quoted(quantity),
                quoted(unit_of(quantity)),
                quoted(text),
                rfc3339(from),
                rfc3339(to),
            );
            for (i, f) in filled.iter().enumerate() {
                let (start, flagged, quality, kind) = meta(f);
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"start\":\"{}\",\"flagged\":{flagged},\"quality\":{quality},\"state\":\"{kind}\"",
                    rfc3339(start)
                );
                for a in &aggregates {
                    let _ = match value(f, a) {
                        Some(v) => write!(out, ",\"{a}\":{}", number(v)),
                        None => write!(out, ",\"{a}\":null"),
                    };
                }
                out.push('}');
            }
            out.push_str("]}");
            typed("application/json", out)
        }
    })
}

/// `GET /api/v1/stations`
#[derive(Serialize, ToSchema)]
pub struct StationList {
    pub stations: Vec<StationBody>,
}

/// `GET /api/v1/latest`
#[derive(Serialize, ToSchema)]
pub struct LatestList {
    pub sensors: Vec<LatestItem>,
}

/// One raw reading.
#[derive(Serialize, ToSchema)]
pub struct RawItem {
    pub ts: String,
    pub value: f64,
    /// Quality flags: 0 good, 1 suspect (device), 2 bad (device), 256 spike, 512 stuck, 1024 out of range.
    pub quality: i16,
    pub received_at: String,
}

/// One bucket of aggregated readings; the aggregates asked for (`avg`, `min`, `max`, `sum`, `count`,
/// `first`, `last`) appear as fields, null where a bucket has no value.
#[derive(Serialize, ToSchema)]
pub struct BucketItem {
    pub start: String,
    /// Readings left out because their quality flags make them unusable.
    pub flagged: i64,
    /// The OR of the quality flags of the readings aggregated.
    pub quality: i16,
    /// measured, flagged (only unusable readings), empty, or interpolated.
    pub state: String,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: Option<f64>,
    pub count: Option<i64>,
    pub first: Option<f64>,
    pub last: Option<f64>,
}

/// `GET /api/v1/sensors/{key}/readings`: `readings` and `next` for raw readings; `bucket`, `from`,
/// `to` and `buckets` when aggregated.
#[derive(Serialize, ToSchema)]
pub struct ReadingsPage {
    pub sensor: String,
    pub quantity: String,
    pub unit: String,
    pub readings: Option<Vec<RawItem>>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
    pub bucket: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub buckets: Option<Vec<BucketItem>>,
}

#[derive(Serialize, ToSchema)]
pub struct MunicipalityLinks {
    #[serde(rename = "self")]
    pub this: String,
}

#[derive(Serialize, ToSchema)]
pub struct MunicipalitySummary {
    pub code: String,
    pub name: String,
    pub links: MunicipalityLinks,
}

/// `GET /api/v1/municipalities`
#[derive(Serialize, ToSchema)]
pub struct MunicipalityList {
    pub municipalities: Vec<MunicipalitySummary>,
}

/// `GET /api/v1/municipalities/{code}`
#[derive(Serialize, ToSchema)]
pub struct MunicipalityDetail {
    pub code: String,
    pub name: String,
    pub stations: Vec<StationBody>,
    /// The warnings in force for it.
    pub warnings: Vec<serde_json::Value>,
    /// GeoJSON MultiPolygon.
    pub boundary: serde_json::Value,
}

/// The open data routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(stations))
        .routes(routes!(station))
        .routes(routes!(latest))
        .routes(routes!(readings))
        .routes(routes!(municipalities))
        .routes(routes!(municipality))
        .routes(routes!(flood_areas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    /// A sensor read every 10 minutes whose latest reading is `age` minutes old (stale after 30)
    /// and arrived `received` minutes ago.
    fn received(key: &str, age: i64, received: i64) -> SensorBody {
        SensorBody {
            key: key.to_owned(),
            quantity: "water_level".to_owned(),
            unit: "m",
            name: String::new(),
            expected_interval_seconds: 600,
            latest: Some(LatestReading {
                ts: now() - ChronoDuration::minutes(age),
                value: 1.0,
                quality: 0,
                received_at: now() - ChronoDuration::minutes(received),
                stale: age > 30,
            }),
        }
    }

    fn sensor(key: &str, latest: Option<bool>) -> SensorBody {
        match latest {
            Some(true) => received(key, 45, 45),
            Some(false) => received(key, 5, 5),
            None => SensorBody {
                latest: None,
                ..received(key, 0, 0)
            },
        }
    }

    fn trend(key: &str, severity: Option<i16>) -> (String, TrendRow) {
        let row = TrendRow {
            sensor_key: key.to_owned(),
            at: Utc::now(),
            value: 1.0,
            severity,
            rate_per_hour: None,
            projected: None,
        };
        (key.to_owned(), row)
    }

    #[test]
    fn a_station_takes_its_most_severe_sensor_and_silence_overrides_it() {
        let trends: HashMap<String, TrendRow> =
            [trend("a", Some(1)), trend("b", Some(3)), trend("c", None)]
                .into_iter()
                .collect();
        let state = |sensors: &[SensorBody]| station_state(sensors, &trends, now());
        assert_eq!(state(&[]), "no_data");
        assert_eq!(state(&[sensor("a", None)]), "no_data");
        assert_eq!(state(&[sensor("c", Some(false))]), "normal");
        assert_eq!(
            state(&[sensor("x", Some(false))]),
            "normal",
            "no thresholds"
        );
        assert_eq!(state(&[sensor("a", Some(false))]), "alert");
        assert_eq!(
            state(&[sensor("a", Some(false)), sensor("b", Some(false))]),
            "severe"
        );
        assert_eq!(
            state(&[sensor("b", Some(false)), sensor("c", Some(true))]),
            "stale",
            "a silent sensor is never an all-clear, nor a warning to trust"
        );
        assert_eq!(
            state(&[received("b", 240, 1)]),
            "severe",
            "hours-old readings still arriving (a replay) are not silence"
        );
    }

    fn row(minute: u32, avg: f64) -> BucketRow {
        BucketRow {
            start: Utc.with_ymd_and_hms(2024, 1, 1, 0, minute, 0).unwrap(),
            count: 2,
            sum: avg * 2.0,
            min: avg,
            max: avg,
            first: avg,
            last: avg,
            flagged: 0,
            quality: 0,
        }
    }

    #[test]
    fn empty_buckets_are_omitted_nulled_or_interpolated_within_the_gap() {
        let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let to = from + ChronoDuration::minutes(10);
        let bucket = ChronoDuration::minutes(1);
        let stored = vec![row(0, 1.0), row(3, 4.0), row(9, 10.0)];
        assert_eq!(
            fill_buckets(stored.clone(), from, to, bucket, "omit", 3).len(),
            3
        );
        let nulls = fill_buckets(stored.clone(), from, to, bucket, "null", 3);
        assert_eq!(nulls.len(), 10);
        assert!(matches!(nulls[1], Filled::Empty(_)));
        let filled = fill_buckets(stored, from, to, bucket, "interpolate", 3);
        let interpolated: Vec<f64> = filled
            .iter()
            .filter_map(|f| match f {
                Filled::Interpolated(_, v) => Some(*v),
                _ => None,
            })
            .collect();
        // 0..3 is a gap of two buckets (interpolated); 3..9 a gap of five (left empty).
        assert_eq!(interpolated, [2.0, 3.0]);
        assert!(matches!(filled[5], Filled::Empty(_)));
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let reading = RawReading {
            ts: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            value: 1.0,
            quality: 0,
            received_at: Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap(),
        };
        let time = RawOrder::Time {
            from: reading.ts,
            to: reading.ts,
            after: None,
        };
        let arrival = RawOrder::Arrival {
            since: reading.ts,
            after: None,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&time, &reading)),
            Some(('t', reading.ts.timestamp_micros(), None))
        );
        assert_eq!(
            decode_cursor(&encode_cursor(&arrival, &reading)),
            Some((
                'a',
                reading.received_at.timestamp_micros(),
                Some(reading.ts.timestamp_micros())
            ))
        );
        for junk in ["", "!!!", "dA", "eDEyMw"] {
            assert_eq!(decode_cursor(junk), None, "{junk}");
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MunicipalityQuery {
    /// json, geojson or csv (or use the Accept header).
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/municipalities", tag = "open data", params(MunicipalityQuery),
    responses((status = 200, description = "Municipalities", content((MunicipalityList = "application/json"), (Object = "application/geo+json"), (String = "text/csv")))))]
/// `GET /api/v1/municipalities`: codes and names (JSON, CSV), or boundaries (GeoJSON).
pub async fn municipalities(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<MunicipalityQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, true)?;
    let rows = state
        .store
        .municipalities(None, format == Format::GeoJson)
        .await?;
    let base = state.settings.base_url();
    Ok(match format {
        Format::Csv => {
            let mut out = String::from("code,name\n");
            for (code, name, _) in &rows {
                out.push_str(&format!("{},{}\n", csv_field(code), csv_field(name)));
            }
            typed("text/csv; charset=utf-8", out)
        }
        Format::GeoJson => {
            let features: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(code, name, boundary)| {
                    serde_json::json!({
                        "type": "Feature", "id": code, "geometry": boundary,
                        "properties": {"code": code, "name": name},
                    })
                })
                .collect();
            typed(
                "application/geo+json",
                serde_json::to_vec(
                    &serde_json::json!({"type": "FeatureCollection", "features": features}),
                )
                .unwrap_or_default(),
            )
        }
        Format::Json | Format::Parquet => {
            let items: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(code, name, _)| {
                    serde_json::json!({
                        "code": code, "name": name,
                        "links": {"self": format!("{base}/api/v1/municipalities/{code}")},
                    })
                })
                .collect();
            json_response(&serde_json::json!({ "municipalities": items }))
        }
    })
}

#[utoipa::path(get, path = "/api/v1/municipalities/{code}", tag = "open data",
    params(("code" = String, Path, description = "Municipality code (kommunekode)"), MunicipalityQuery),
    responses(
        (status = 200, description = "The municipality", content((MunicipalityDetail = "application/json"), (Object = "application/geo+json"))),
        (status = 404, description = "No such municipality", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/municipalities/{code}`: the boundary, the stations in it and the warnings in
/// force for it (JSON, or a GeoJSON Feature).
pub async fn municipality(
    State(state): State<ApiState>,
    Path(code): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<MunicipalityQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = single_format(query.format.as_deref(), &headers, "municipality")?;
    let (code, name, boundary) = state
        .store
        .municipalities(Some(&code), true)
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("municipality {code}")))?;
    let (stations, _) = station_bodies(
        &state,
        &StationFilter {
            municipality: Some(code.clone()),
            limit: STATION_LIMIT,
            ..StationFilter::default()
        },
    )
    .await?;
    let base = state.settings.base_url();
    let warnings: Vec<serde_json::Value> = state
        .store
        .warning_list(&tidemark_store::events::WarningFilter {
            state: Some("in_force".to_owned()),
            municipality: Some(code.clone()),
            limit: 500,
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|w| {
            serde_json::json!({
                "id": w.id, "area": {"key": w.area_key, "name": w.area_name}, "severity": w.severity,
                "severity_name": crate::body::severity_name(w.severity), "kind": w.kind,
                "raised_at": w.raised_at, "changed_at": w.changed_at, "stale": w.stale,
                "acknowledged_by": w.acknowledged_by,
                "links": {"self": format!("{base}/api/v1/warnings/{}", w.id), "cap": format!("{base}/api/v1/warnings/{}.cap", w.id)},
            })
        })
        .collect();
    let properties = serde_json::json!({
        "code": code, "name": name, "stations": stations, "warnings": warnings,
    });
    Ok(match format {
        Format::GeoJson => typed(
            "application/geo+json",
            serde_json::to_vec(&serde_json::json!({
                "type": "Feature", "id": code, "geometry": boundary, "properties": properties,
            }))
            .unwrap_or_default(),
        ),
        _ => {
            let mut body = properties;
            body["boundary"] = boundary.unwrap_or(serde_json::Value::Null);
            json_response(&body)
        }
    })
}

/// A flood area: its polygon, the sensors in it, the gauges upstream of it and the municipalities
/// its warnings go to.
#[derive(Debug, Serialize, ToSchema)]
pub struct FloodAreaBody {
    pub key: String,
    pub name: String,
    /// GeoJSON Polygon.
    pub polygon: serde_json::Value,
    pub municipalities: Vec<String>,
    pub sensors: Vec<String>,
    pub upstream: Vec<UpstreamBody>,
    /// The severity of the warning in force (1 to 3), if any.
    pub warning_severity: Option<i16>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamBody {
    pub sensor: String,
    pub travel_time_seconds: u64,
}

/// `GET /api/v1/flood-areas`: every flood area, with the severity in force (JSON or GeoJSON).
#[utoipa::path(get, path = "/api/v1/flood-areas", tag = "open data", params(OneQuery),
    responses((status = 200, description = "Flood areas",
        content((Vec<FloodAreaBody> = "application/json"), (Object = "application/geo+json")))))]
pub async fn flood_areas(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<OneQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = single_format(query.format.as_deref(), &headers, "list of flood areas")?;
    let setup = state.store.flood_setup().await?;
    let in_force = state
        .store
        .warning_list(&tidemark_store::events::WarningFilter {
            state: Some("in_force".to_owned()),
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let areas: Vec<FloodAreaBody> = setup
        .areas
        .into_iter()
        .map(|area| FloodAreaBody {
            upstream: setup
                .links
                .iter()
                .filter(|l| l.downstream_area == area.key)
                .map(|l| UpstreamBody {
                    sensor: l.upstream_sensor.clone(),
                    travel_time_seconds: l.travel_time.as_secs(),
                })
                .collect(),
            warning_severity: in_force
                .iter()
                .find(|w| w.area_key == area.key)
                .map(|w| w.severity),
            key: area.key,
            name: area.name,
            polygon: area.polygon,
            municipalities: area.municipality_codes,
            sensors: area.sensors,
        })
        .collect();
    Ok(match format {
        Format::GeoJson => {
            let features: Vec<serde_json::Value> = areas
                .iter()
                .map(|a| {
                    let mut properties = serde_json::to_value(a).unwrap_or_default();
                    if let Some(p) = properties.as_object_mut() {
                        p.remove("polygon");
                    }
                    serde_json::json!({
                        "type": "Feature", "id": a.key, "geometry": a.polygon, "properties": properties,
                    })
                })
                .collect();
            typed(
                "application/geo+json",
                serde_json::to_vec(
                    &serde_json::json!({"type": "FeatureCollection", "features": features}),
                )
                .unwrap_or_default(),
            )
        }
        _ => json_response(&areas),
    })
}
