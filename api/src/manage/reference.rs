//! Devices, stations and sensors over the API, each change audited.

use super::common::{body, REFERENCE_EDITORS};
use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use std::time::Duration;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord, StationRecord};
use utoipa::ToSchema;

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

pub(crate) async fn apply(
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
