//! Forecasts over the API: a producer posts an issue for its source (checked as over MQTT), and
//! anyone reads a sensor's latest issue from each source.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::forecast::{self, ForecastLimits};
use tidemark_model::Quantity;
use tidemark_store::forecasts::{ForecastRow, Stored};
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};

/// What storing a posted forecast did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastReceipt {
    pub sensor: String,
    pub source: String,
    pub issued_at: DateTime<Utc>,
    pub values: usize,
    /// stored, or duplicate (the same issue was stored before).
    pub outcome: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastBody {
    pub sensor: String,
    pub source: String,
    /// Tidemark's own nowcast.
    pub nowcast: bool,
    pub issued_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The sensor's canonical unit.
    pub unit: &'static str,
    pub values: Vec<ForecastValueBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastValueBody {
    pub valid_at: DateTime<Utc>,
    pub value: f64,
    /// Probability (such as `"0.9"`) to value, where the source gave quantiles.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub quantiles: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ForecastQuery {
    /// Only this source's issues.
    pub source: Option<String>,
    /// The issue made at this time (RFC 3339) instead of the latest.
    pub issued_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/forecasts`: a producer key posts one issue (the JSON that MQTT sources publish)
/// for its own source.
#[utoipa::path(post, path = "/api/v1/forecasts", tag = "warnings",
    request_body(content = String, description = "A forecast, version 1 (see the README)", content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored", body = ForecastReceipt),
        (status = 200, description = "The same issue was stored before", body = ForecastReceipt),
        (status = 400, description = "Refused; `parameter` names the reason code", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a producer key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An issue of this sensor, source and time is stored with other values", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_forecast(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<ForecastReceipt>)> {
    caller.require(&[Role::Producer])?;
    let source = caller
        .source
        .clone()
        .ok_or_else(|| ApiError::Forbidden("this producer key names no source".into()))?;
    let limits = ForecastLimits::default();
    let refused = |e: forecast::ForecastError| ApiError::bad(e.code(), e.to_string());
    let wire = forecast::decode(&body, limits).map_err(refused)?;
    let quantity = state
        .store
        .sensor_quantity(&wire.sensor)
        .await?
        .and_then(|q| Quantity::parse(&q).ok())
        .ok_or_else(|| refused(forecast::ForecastError::UnknownSensor(wire.sensor.clone())))?;
    let sensor_key = wire.sensor.clone();
    let checked =
        forecast::validate(wire, &source, quantity, Utc::now(), limits).map_err(refused)?;
    let sensor_id = state
        .store
        .sensor_id(&sensor_key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor_key}")))?;
    let row = ForecastRow {
        sensor_id,
        source: checked.source,
        issued_at: checked.issued_at,
        values: checked.values,
    };
    let receipt = |outcome| ForecastReceipt {
        sensor: sensor_key.clone(),
        source: row.source.clone(),
        issued_at: row.issued_at,
        values: row.values.len(),
        outcome,
    };
    match state.store.store_forecast(&row).await? {
        Stored::New => Ok((StatusCode::CREATED, Json(receipt("stored")))),
        Stored::Duplicate => Ok((StatusCode::OK, Json(receipt("duplicate")))),
        Stored::Conflict => Err(ApiError::Conflict(format!(
            "a forecast of {sensor_key} from {} issued at {} is stored with other values",
            row.source,
            row.issued_at.to_rfc3339()
        ))),
    }
}

/// `GET /api/v1/sensors/{key}/forecasts`: the latest issue from each source (or the one asked
/// for), in the sensor's canonical unit.
#[utoipa::path(get, path = "/api/v1/sensors/{key}/forecasts", tag = "warnings",
    params(("key" = String, Path, description = "The sensor's key"), ForecastQuery),
    responses(
        (status = 200, description = "The latest issue of each source, by source", body = Vec<ForecastBody>),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn sensor_forecasts(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    query: std::result::Result<Query<ForecastQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ForecastBody>>> {
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let quantity = state
        .store
        .sensor_quantity(&key)
        .await?
        .and_then(|q| Quantity::parse(&q).ok())
        .ok_or_else(|| ApiError::NotFound(format!("sensor {key}")))?;
    let unit = quantity.canonical_unit().symbol();
    let issues = state
        .store
        .latest_forecasts(&key, query.source.as_deref(), query.issued_at)
        .await?;
    Ok(Json(
        issues
            .into_iter()
            .map(|issue| ForecastBody {
                sensor: issue.sensor_key,
                source: issue.source,
                nowcast: issue.builtin,
                issued_at: issue.issued_at,
                received_at: issue.received_at,
                unit,
                values: issue
                    .values
                    .into_iter()
                    .map(|v| ForecastValueBody {
                        valid_at: v.valid_at,
                        value: v.value,
                        quantiles: v
                            .quantiles
                            .into_iter()
                            .map(|(p, q)| (p.to_string(), q))
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    ))
}
