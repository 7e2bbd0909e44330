//! Management over the API: API keys (operators), devices, stations and sensors (operators and
//! utilities), and the audit log (operators). Every change is recorded in the audit log in the
//! transaction that makes it.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tidemark_store::keys::Role;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord, StationRecord};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const REFERENCE_EDITORS: &[Role] = &[Role::Operator, Role::Utility];

fn body<T>(body: std::result::Result<Json<T>, JsonRejection>) -> Result<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad("body", e.body_text()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// researcher, utility, municipality or operator.
    pub role: String,
    /// The municipality code a municipality key acts for; required for, and only for, that role.
    pub municipality: Option<String>,
    #[serde(default)]
    pub label: String,
    /// Lifetime such as `90d`; without it the key lasts until revoked.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    pub prefix: String,
    pub role: String,
    pub municipality: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key itself: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn key_body(row: tidemark_store::keys::ApiKeyRow, key: Option<String>) -> KeyBody {
    KeyBody {
        prefix: row.prefix,
        role: row.role.name().to_owned(),
        municipality: row.municipality,
        label: row.label,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        key,
    }
}

/// Creates an API key; the answer shows it once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "management", request_body = NewKey,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = KeyBody),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(state): State<ApiState>,
    caller: Caller,
    request: std::result::Result<Json<NewKey>, JsonRejection>,
) -> Result<Response> {
    caller.require(&[Role::Operator])?;
    let request = body(request)?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::bad(
            "role",
            "role must be researcher, utility, municipality or operator",
        )
    })?;
    if (role == Role::Municipality) != request.municipality.is_some() {
        return Err(ApiError::bad(
            "municipality",
            "municipality is required for, and only for, a municipality key",
        ));
    }
    if request.label.chars().count() > 200 {
        return Err(ApiError::bad(
            "label",
            "the label may have at most 200 characters",
        ));
    }
    if let Some(code) = &request.municipality {
        let unknown = state
            .store
            .unknown_municipalities(std::slice::from_ref(code))
            .await?;
        if !unknown.is_empty() {
            return Err(ApiError::bad(
                "municipality",
                format!("unknown municipality {code}"),
            ));
        }
    }
    let expires_at = match &request.expires_in {
        Some(text) => {
            let lifetime = tidemark_model::duration::parse(text)
                .map_err(|e| ApiError::bad("expires_in", e.to_string()))?;
            let lifetime = chrono::Duration::from_std(lifetime)
                .map_err(|_| ApiError::bad("expires_in", "expires_in is too long"))?;
            Some(Utc::now() + lifetime)
        }
        None => None,
    };
    let (key, row) = crate::auth::create_key(
        &state.store,
        role,
        request.municipality,
        request.label,
        expires_at,
        &caller.actor(),
    )
    .await?;
    tracing::info!(key = %row.prefix, by = %caller.prefix, role = role.name(), "api key created");
    Ok((StatusCode::CREATED, Json(key_body(row, Some(key)))).into_response())
}

/// `GET /api/v1/keys`
#[utoipa::path(get, path = "/api/v1/keys", tag = "management", security(("api_key" = [])),
    responses(
        (status = 200, description = "Every key (never the keys themselves)", body = Vec<KeyBody>),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<KeyBody>>> {
    caller.require(&[Role::Operator])?;
    let keys = state.store.api_keys().await?;
    Ok(Json(keys.into_iter().map(|k| key_body(k, None)).collect()))
}

/// `DELETE /api/v1/keys/{prefix}`: revokes a key.
#[utoipa::path(delete, path = "/api/v1/keys/{prefix}", tag = "management", security(("api_key" = [])),
    params(("prefix" = String, Path, description = "The key's prefix (12 hex digits)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No active key with this prefix", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(prefix): Path<String>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let audit = caller
        .actor()
        .audit("key.revoke", format!("key {prefix}"), serde_json::json!({}));
    if !state
        .store
        .revoke_api_key(&prefix, Utc::now(), &audit)
        .await?
    {
        return Err(ApiError::NotFound(format!("an active key {prefix}")));
    }
    tracing::info!(key = %prefix, by = %caller.prefix, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StationUpdate {
    pub name: String,
    /// tide_gauge, river_gauge, rain_gauge, meter, container, ...
    pub kind: String,
    pub lon: f64,
    pub lat: f64,
    pub municipality_code: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorUpdate {
    /// The device that publishes it.
    pub device: String,
    /// Its station, if it has one.
    pub station: Option<String>,
    /// sea_level, water_level, rainfall, ... (see the README for the list and canonical units).
    pub quantity: String,
    #[serde(default)]
    pub name: String,
    /// How often it reports, such as `10m`.
    pub expected_interval: String,
}

async fn apply(
    state: &ApiState,
    caller: &Caller,
    data: ReferenceData,
    action: &'static str,
    target: String,
    detail: serde_json::Value,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    data.validate()
        .map_err(|reason| ApiError::bad("body", reason))?;
    let audit = caller.actor().audit(action, target.clone(), detail);
    match state
        .store
        .apply_reference_audited(&data, Some(&audit))
        .await
    {
        Ok(()) => {}
        Err(tidemark_store::Error::Reference(reason)) => {
            return Err(ApiError::bad("body", reason.to_string()))
        }
        Err(other) => return Err(other.into()),
    }
    tracing::info!(%target, by = %caller.prefix, action, "reference data changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/devices/{key}`: creates or updates a device.
#[utoipa::path(put, path = "/api/v1/devices/{key}", tag = "management", request_body = DeviceUpdate,
    security(("api_key" = [])), params(("key" = String, Path, description = "The device's key (its MQTT topic level)")),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_device(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    request: std::result::Result<Json<DeviceUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    let request = body(request)?;
    let detail = serde_json::json!({ "name": request.name });
    let data = ReferenceData {
        devices: vec![DeviceRecord {
            key: key.clone(),
            name: request.name,
        }],
        ..ReferenceData::default()
    };
    apply(
        &state,
        &caller,
        data,
        "device.put",
        format!("device {key}"),
        detail,
    )
    .await
}

/// `PUT /api/v1/stations/{key}`: creates or updates a station.
#[utoipa::path(put, path = "/api/v1/stations/{key}", tag = "management", request_body = StationUpdate,
    security(("api_key" = [])), params(("key" = String, Path, description = "The station's key")),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_station(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    request: std::result::Result<Json<StationUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    let r = body(request)?;
    if !(-180.0..=180.0).contains(&r.lon) || !(-90.0..=90.0).contains(&r.lat) {
        return Err(ApiError::bad(
            "lon",
            "lon must be -180 to 180 and lat -90 to 90 (degrees, WGS84)",
        ));
    }
    if let Some(code) = &r.municipality_code {
        if !state
            .store
            .unknown_municipalities(std::slice::from_ref(code))
            .await?
            .is_empty()
        {
            return Err(ApiError::bad(
                "municipality_code",
                format!("unknown municipality {code}"),
            ));
        }
    }
    let detail = serde_json::json!({
        "name": r.name, "kind": r.kind, "lon": r.lon, "lat": r.lat, "municipality_code": r.municipality_code,
    });
    let data = ReferenceData {
        stations: vec![StationRecord {
            key: key.clone(),
            name: r.name,
            kind: r.kind,
            lon: r.lon,
            lat: r.lat,
            municipality_code: r.municipality_code,
        }],
        ..ReferenceData::default()
    };
    apply(
        &state,
        &caller,
        data,
        "station.put",
        format!("station {key}"),
        detail,
    )
    .await
}

/// `PUT /api/v1/sensors/{key}`: creates or updates a sensor.
#[utoipa::path(put, path = "/api/v1/sensors/{key}", tag = "management", request_body = SensorUpdate,
    security(("api_key" = [])), params(("key" = String, Path, description = "The sensor's key")),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "A bad field, or a device or station that does not exist", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_sensor(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    request: std::result::Result<Json<SensorUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    let r = body(request)?;
    let interval: Duration = tidemark_model::duration::parse(&r.expected_interval)
        .map_err(|e| ApiError::bad("expected_interval", e.to_string()))?;
    let detail = serde_json::json!({
        "device": r.device, "station": r.station, "quantity": r.quantity, "name": r.name,
        "expected_interval": r.expected_interval,
    });
    let data = ReferenceData {
        sensors: vec![SensorRecord {
            key: key.clone(),
            device: r.device,
            station: r.station,
            quantity: r.quantity,
            name: r.name,
            expected_interval: interval,
        }],
        ..ReferenceData::default()
    };
    apply(
        &state,
        &caller,
        data,
        "sensor.put",
        format!("sensor {key}"),
        detail,
    )
    .await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many entries, newest first (1 to 10,000; default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditBody {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The acting key's prefix, or `cli`.
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// `GET /api/v1/audit`: management actions, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "management", params(AuditQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Audit entries", body = Vec<AuditBody>),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn audit(
    State(state): State<ApiState>,
    caller: Caller,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditBody>>> {
    caller.require(&[Role::Operator])?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad("limit", "limit must be 1 to 10000"));
    }
    let rows = state.store.audit_log(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditBody {
                id: r.id,
                at: r.at,
                actor: r.actor,
                role: r.role,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdUpdate {
    /// Flood Alert level, in the sensor's canonical unit.
    pub alert: f64,
    /// Flood Warning level; above `alert`.
    pub warning: f64,
    /// Severe Flood Warning level; above `warning`.
    pub severe: f64,
    /// How long a level must hold before raising (`20m`).
    pub persistence: String,
    /// How many readings at least must show it.
    pub min_readings: i32,
    /// Lowering needs the value below the threshold minus this ...
    pub hysteresis: f64,
    /// ... for this long (`1h`).
    pub hold: String,
    /// Least-squares window of the rate of rise (`1h`).
    pub rate_window: String,
    /// Raise "expected" when the trend reaches the next level this soon (`30m`; `0s` for never).
    pub lead_time: String,
    /// Values outside `[plausible_low, plausible_high]` are flagged and excluded.
    pub plausible_low: f64,
    pub plausible_high: f64,
    /// The smallest deviation the spike test may flag.
    pub spike_floor: f64,
    /// Rising at least this fast (units per hour) raises an expected alert.
    pub rate_alert: Option<f64>,
}

/// `PUT /api/v1/thresholds/{sensor}`: sets a sensor's flood thresholds; running analytics reload
/// them at once.
#[utoipa::path(put, path = "/api/v1/thresholds/{sensor}", tag = "management", request_body = ThresholdUpdate,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics use it from their next evaluation"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_threshold(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<ThresholdUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let r = body(request)?;
    let duration = |field: &str, text: &str| {
        tidemark_model::duration::parse(text).map_err(|e| ApiError::bad(field, e.to_string()))
    };
    let finite = [
        r.alert,
        r.warning,
        r.severe,
        r.hysteresis,
        r.plausible_low,
        r.plausible_high,
        r.spike_floor,
    ];
    if finite.iter().any(|v| !v.is_finite()) || r.rate_alert.is_some_and(|v| !v.is_finite()) {
        return Err(ApiError::bad("body", "every level must be a finite number"));
    }
    if !(r.alert < r.warning && r.warning < r.severe) {
        return Err(ApiError::bad(
            "warning",
            "the levels must rise: alert < warning < severe",
        ));
    }
    if r.plausible_low >= r.plausible_high {
        return Err(ApiError::bad(
            "plausible_low",
            "plausible_low must be below plausible_high",
        ));
    }
    if r.min_readings < 1 || r.hysteresis < 0.0 || r.spike_floor < 0.0 {
        return Err(ApiError::bad(
            "min_readings",
            "min_readings must be at least 1, hysteresis and spike_floor at least 0",
        ));
    }
    if r.rate_alert.is_some_and(|v| v <= 0.0) {
        return Err(ApiError::bad("rate_alert", "rate_alert must be above 0"));
    }
    let rate_window = duration("rate_window", &r.rate_window)?;
    if rate_window.is_zero() {
        return Err(ApiError::bad("rate_window", "rate_window must be positive"));
    }
    if state.store.sensor_quantity(&sensor).await?.is_none() {
        return Err(ApiError::NotFound(format!("sensor {sensor}")));
    }
    let row = tidemark_store::flood::ThresholdRow {
        sensor_key: sensor.clone(),
        alert: r.alert,
        warning: r.warning,
        severe: r.severe,
        persistence: duration("persistence", &r.persistence)?,
        min_readings: r.min_readings,
        hysteresis: r.hysteresis,
        hold: duration("hold", &r.hold)?,
        rate_window,
        lead_time: duration("lead_time", &r.lead_time)?,
        plausible_low: r.plausible_low,
        plausible_high: r.plausible_high,
        spike_floor: r.spike_floor,
        rate_alert: r.rate_alert,
    };
    let audit = caller.actor().audit(
        "threshold.put",
        format!("sensor {sensor}"),
        serde_json::json!({
            "alert": r.alert, "warning": r.warning, "severe": r.severe, "persistence": r.persistence,
            "min_readings": r.min_readings, "hysteresis": r.hysteresis, "hold": r.hold,
            "rate_window": r.rate_window, "lead_time": r.lead_time, "plausible_low": r.plausible_low,
            "plausible_high": r.plausible_high, "spike_floor": r.spike_floor, "rate_alert": r.rate_alert,
        }),
    );
    let setup = tidemark_store::flood::FloodSetup {
        thresholds: vec![row],
        ..Default::default()
    };
    state
        .store
        .apply_flood_setup_audited(&setup, Some(&audit))
        .await?;
    tracing::info!(%sensor, by = %caller.prefix, "thresholds changed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloodAreaUpdate {
    pub name: String,
    /// The outline as `[lon, lat]` pairs (WGS84), closed or not.
    pub polygon: Vec<[f64; 2]>,
    /// The sensors whose readings decide the area's state.
    #[serde(default)]
    pub sensors: Vec<String>,
    /// The municipality codes its warnings go to.
    pub municipalities: Vec<String>,
    /// Gauges upstream in the same river network, with the flood wave's travel time.
    #[serde(default)]
    pub upstream: Vec<UpstreamUpdate>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamUpdate {
    pub sensor: String,
    /// Such as `2h`.
    pub travel_time: String,
}

/// Most corners of an area's outline.
const MAX_POLYGON_POINTS: usize = 10_000;

/// `PUT /api/v1/flood-areas/{key}`: creates or replaces a flood area (its sensors and upstream
/// links with it); running analytics reload it at once.
#[utoipa::path(put, path = "/api/v1/flood-areas/{key}", tag = "management", request_body = FloodAreaUpdate,
    security(("api_key" = [])), params(("key" = String, Path, description = "The area's key")),
    responses(
        (status = 204, description = "Stored; analytics use it from their next evaluation"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_flood_area(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    request: std::result::Result<Json<FloodAreaUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let r = body(request)?;
    if key.is_empty()
        || key.len() > 100
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad(
            "key",
            "an area key is 1 to 100 letters, digits, -, _ or .",
        ));
    }
    if r.name.trim().is_empty() {
        return Err(ApiError::bad("name", "the area needs a name"));
    }
    let mut ring = r.polygon.clone();
    if ring.len() > MAX_POLYGON_POINTS {
        return Err(ApiError::bad(
            "polygon",
            format!("at most {MAX_POLYGON_POINTS} points"),
        ));
    }
    if ring
        .iter()
        .any(|[lon, lat]| !(-180.0..=180.0).contains(lon) || !(-90.0..=90.0).contains(lat))
    {
        return Err(ApiError::bad("polygon", "points are [lon, lat] in degrees"));
    }
    if ring.first() != ring.last() {
        if let Some(first) = ring.first().copied() {
            ring.push(first);
        }
    }
    if ring.len() < 4 {
        return Err(ApiError::bad(
            "polygon",
            "an outline needs at least three distinct points",
        ));
    }
    if r.municipalities.is_empty() {
        return Err(ApiError::bad(
            "municipalities",
            "name the municipalities its warnings go to",
        ));
    }
    let unknown = state
        .store
        .unknown_municipalities(&r.municipalities)
        .await?;
    if !unknown.is_empty() {
        return Err(ApiError::bad(
            "municipalities",
            format!("unknown municipalities: {}", unknown.join(", ")),
        ));
    }
    let mut sensors: Vec<String> = r.sensors.clone();
    sensors.extend(r.upstream.iter().map(|u| u.sensor.clone()));
    for sensor in &sensors {
        if state.store.sensor_quantity(sensor).await?.is_none() {
            return Err(ApiError::bad("sensors", format!("unknown sensor {sensor}")));
        }
    }
    let mut links = Vec::new();
    for u in &r.upstream {
        links.push(tidemark_store::flood::LinkRow {
            upstream_sensor: u.sensor.clone(),
            downstream_area: key.clone(),
            travel_time: tidemark_model::duration::parse(&u.travel_time)
                .map_err(|e| ApiError::bad("upstream", e.to_string()))?,
        });
    }
    let polygon = serde_json::json!({"type": "Polygon", "coordinates": [ring]});
    let audit = caller.actor().audit(
        "flood-area.put",
        format!("flood area {key}"),
        serde_json::json!({
            "name": r.name, "polygon": polygon, "sensors": r.sensors, "municipalities": r.municipalities,
            "upstream": r.upstream.iter().map(|u| serde_json::json!({"sensor": u.sensor, "travel_time": u.travel_time})).collect::<Vec<_>>(),
        }),
    );
    let setup = tidemark_store::flood::FloodSetup {
        areas: vec![tidemark_store::flood::AreaRow {
            key: key.clone(),
            name: r.name,
            polygon,
            municipality_codes: r.municipalities,
            sensors: r.sensors,
        }],
        links,
        ..Default::default()
    };
    state
        .store
        .apply_flood_setup_audited(&setup, Some(&audit))
        .await?;
    tracing::info!(area = %key, by = %caller.prefix, "flood area changed");
    Ok(StatusCode::NO_CONTENT)
}

/// One rain rule: more than `more_than_mm` within `window` raises `severity`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RainRuleBody {
    /// Such as `1h` or `30m`; at most 7 days.
    pub window: String,
    /// Millimetres of rain within the window, more than which the rule fires.
    pub more_than_mm: f64,
    /// alert, warning or severe.
    pub severity: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RainRulesUpdate {
    /// The sensor's rules; an empty list returns it to the default rules (DMI's definitions of
    /// heavy rain and cloudbursts).
    pub rules: Vec<RainRuleBody>,
}

/// A rainfall sensor's configured rain rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct SensorRainRules {
    pub sensor: String,
    pub rules: Vec<RainRuleBody>,
}

/// Most rules one sensor may have.
const MAX_RAIN_RULES: usize = 20;
/// The longest window a rain rule may sum over.
const MAX_RAIN_WINDOW: Duration = Duration::from_secs(7 * 86_400);

fn severity_code(name: &str) -> Option<i16> {
    tidemark_model::warning::Severity::parse(name).map(|s| s.level())
}

/// `PUT /api/v1/rain-rules/{sensor}`: replaces a rainfall sensor's rain rules; running analytics
/// reload them at once.
#[utoipa::path(put, path = "/api/v1/rain-rules/{sensor}", tag = "management", request_body = RainRulesUpdate,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The rainfall sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics use them from their next evaluation"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_rain_rules(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<RainRulesUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let update = body(request)?;
    if update.rules.len() > MAX_RAIN_RULES {
        return Err(ApiError::bad(
            "rules",
            format!("at most {MAX_RAIN_RULES} rules per sensor"),
        ));
    }
    let mut rows: Vec<tidemark_store::flood::RainRuleRow> = Vec::new();
    for rule in &update.rules {
        let window = tidemark_model::duration::parse(&rule.window)
            .map_err(|e| ApiError::bad("window", e.to_string()))?;
        if window.is_zero() || window > MAX_RAIN_WINDOW {
            return Err(ApiError::bad(
                "window",
                "a window is longer than zero and at most 7d",
            ));
        }
        if !rule.more_than_mm.is_finite() || rule.more_than_mm <= 0.0 {
            return Err(ApiError::bad(
                "more_than_mm",
                "more_than_mm is a number of millimetres above 0",
            ));
        }
        let severity = severity_code(&rule.severity)
            .ok_or_else(|| ApiError::bad("severity", "severity is alert, warning or severe"))?;
        if rows.iter().any(|r| r.window == window) {
            return Err(ApiError::bad(
                "window",
                format!("two rules with the window {}", rule.window),
            ));
        }
        rows.push(tidemark_store::flood::RainRuleRow {
            sensor_key: sensor.clone(),
            window,
            more_than_mm: rule.more_than_mm,
            severity,
        });
    }
    match state.store.sensor_quantity(&sensor).await?.as_deref() {
        None => return Err(ApiError::NotFound(format!("sensor {sensor}"))),
        Some("rainfall") => {}
        Some(other) => {
            return Err(ApiError::bad(
                "sensor",
                format!("rain rules apply to rainfall sensors; {sensor} measures {other}"),
            ))
        }
    }
    let audit = caller.actor().audit(
        "rain_rules.put",
        format!("sensor {sensor}"),
        serde_json::json!({ "rules": update.rules }),
    );
    state
        .store
        .replace_rain_rules(&sensor, &rows, &audit)
        .await?;
    tracing::info!(%sensor, rules = rows.len(), by = %caller.prefix, "rain rules changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/rain-rules`: the configured rain rules, by sensor. Rainfall sensors not listed
/// use the default rules (DMI's definitions of heavy rain and cloudbursts).
#[utoipa::path(get, path = "/api/v1/rain-rules", tag = "open data",
    responses((status = 200, description = "Rain rules by sensor", body = Vec<SensorRainRules>)))]
pub async fn rain_rules(State(state): State<ApiState>) -> Result<Response> {
    let setup = state.store.flood_setup().await?;
    let mut out: Vec<SensorRainRules> = Vec::new();
    for rule in setup.rain_rules {
        let body = RainRuleBody {
            window: tidemark_model::duration::format(rule.window),
            more_than_mm: rule.more_than_mm,
            severity: crate::body::severity_key(rule.severity).to_owned(),
        };
        match out.last_mut() {
            Some(last) if last.sensor == rule.sensor_key => last.rules.push(body),
            _ => out.push(SensorRainRules {
                sensor: rule.sensor_key,
                rules: vec![body],
            }),
        }
    }
    Ok(Json(out).into_response())
}

/// A sensor's data-quality rule, in its canonical unit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QualityRuleBody {
    /// Values outside `[plausible_low, plausible_high]` are flagged out of range.
    pub plausible_low: f64,
    pub plausible_high: f64,
    /// The smallest jump off the neighbouring readings that counts as a spike.
    pub spike_floor: f64,
    /// This many equal consecutive values make a run stuck; 0 (the default) turns the check off.
    #[serde(default)]
    pub stuck_run: i32,
}

/// `PUT /api/v1/quality-rules/{sensor}`: sets the data-quality rule of a sensor outside the flood
/// setup (a meter, a container); running analytics check its whole history again and flag what
/// breaks it.
#[utoipa::path(put, path = "/api/v1/quality-rules/{sensor}", tag = "management", request_body = QualityRuleBody,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics apply it at once"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_quality_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<QualityRuleBody>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    let r = body(request)?;
    if !(r.plausible_low.is_finite() && r.plausible_high.is_finite()) {
        return Err(ApiError::bad(
            "plausible_low",
            "the plausible range is two finite numbers",
        ));
    }
    if r.plausible_low >= r.plausible_high {
        return Err(ApiError::bad(
            "plausible_high",
            "plausible_high must be above plausible_low",
        ));
    }
    if !r.spike_floor.is_finite() || r.spike_floor < 0.0 {
        return Err(ApiError::bad(
            "spike_floor",
            "spike_floor is a number from 0",
        ));
    }
    if !(0..=10_000).contains(&r.stuck_run) {
        return Err(ApiError::bad("stuck_run", "stuck_run is 0 (off) to 10000"));
    }
    if state.store.sensor_quantity(&sensor).await?.is_none() {
        return Err(ApiError::NotFound(format!("sensor {sensor}")));
    }
    let audit = caller.actor().audit(
        "quality_rule.put",
        format!("sensor {sensor}"),
        serde_json::to_value(&r).unwrap_or_default(),
    );
    let row = tidemark_store::flood::QualityRuleRow {
        sensor_key: sensor.clone(),
        plausible_low: r.plausible_low,
        plausible_high: r.plausible_high,
        spike_floor: r.spike_floor,
        stuck_run: r.stuck_run,
    };
    state.store.put_quality_rule(&row, &audit).await?;
    tracing::info!(%sensor, by = %caller.prefix, "quality rule changed");
    Ok(StatusCode::NO_CONTENT)
}

/// A sensor's quality rule, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SensorQualityRule {
    pub sensor: String,
    #[serde(flatten)]
    pub rule: QualityRuleBody,
}

/// `GET /api/v1/quality-rules`: the data-quality rules of sensors outside the flood setup.
#[utoipa::path(get, path = "/api/v1/quality-rules", tag = "open data",
    responses((status = 200, description = "Rules by sensor", body = Vec<SensorQualityRule>)))]
pub async fn quality_rules(State(state): State<ApiState>) -> Result<Response> {
    let rules: Vec<SensorQualityRule> = state
        .store
        .quality_rules()
        .await?
        .into_iter()
        .map(|r| SensorQualityRule {
            sensor: r.sensor_key,
            rule: QualityRuleBody {
                plausible_low: r.plausible_low,
                plausible_high: r.plausible_high,
                spike_floor: r.spike_floor,
                stuck_run: r.stuck_run,
            },
        })
        .collect();
    Ok(Json(rules).into_response())
}

/// The management routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(put_station))
        .routes(routes!(put_device))
        .routes(routes!(put_sensor))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(put_threshold))
        .routes(routes!(rain_rules))
        .routes(routes!(put_rain_rules))
        .routes(routes!(quality_rules))
        .routes(routes!(put_quality_rule))
        .routes(routes!(put_flood_area))
        .routes(routes!(audit))
}
