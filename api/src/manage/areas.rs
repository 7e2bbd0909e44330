//! Flood areas over the API: their polygon, municipalities and upstream links.

use super::common::body;
use crate::auth::Caller;
use crate::http::check_key;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tidemark_model::warning::Category;
use tidemark_store::keys::Role;
use utoipa::ToSchema;

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
    /// How far ahead forecasts are looked at, such as `24h` (the default).
    #[serde(default)]
    pub forecast_horizon: Option<String>,
    /// `flood` (the default) or `drought`: a drought area's sensors have falling thresholds,
    /// and its warnings are drought warnings.
    #[serde(default)]
    pub hazard: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamUpdate {
    pub sensor: String,
    /// Such as `2h`.
    pub travel_time: String,
}

/// How far ahead an area looks at forecasts unless told otherwise, and at most.
pub(crate) const DEFAULT_FORECAST_HORIZON: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);
const MAX_FORECAST_HORIZON: std::time::Duration = std::time::Duration::from_secs(16 * 24 * 3600);

/// Most corners of an area's outline.
pub(crate) const MAX_POLYGON_POINTS: usize = 10_000;

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
    check_key(&key, "an area key")?;
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
            "hazard": r.hazard.as_deref().unwrap_or("flood"),
            "upstream": r.upstream.iter().map(|u| serde_json::json!({"sensor": u.sensor, "travel_time": u.travel_time})).collect::<Vec<_>>(),
        }),
    );
    let forecast_horizon = match &r.forecast_horizon {
        None => DEFAULT_FORECAST_HORIZON,
        Some(text) => tidemark_model::duration::parse(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_FORECAST_HORIZON)
            .ok_or_else(|| {
                ApiError::bad(
                    "forecast_horizon",
                    "a duration such as 48h, more than zero and at most 16 days",
                )
            })?,
    };
    let hazard = match r.hazard.as_deref() {
        None | Some("flood") => Category::Flood,
        Some("drought") => Category::Drought,
        Some(_) => return Err(ApiError::bad("hazard", "hazard is flood or drought")),
    };
    let setup = tidemark_store::flood::FloodSetup {
        areas: vec![tidemark_store::flood::AreaRow {
            key: key.clone(),
            name: r.name,
            polygon,
            municipality_codes: r.municipalities,
            sensors: r.sensors,
            forecast_horizon,
            hazard,
        }],
        links,
        ..Default::default()
    };
    let mut merged = state.store.flood_setup().await?;
    merged.areas.retain(|a| a.key != key);
    merged.areas.extend(setup.areas.iter().cloned());
    merged.links.retain(|l| l.downstream_area != key);
    merged.links.extend(setup.links.iter().cloned());
    if let Some(problem) = merged.hazard_problems().into_iter().next() {
        return Err(ApiError::bad("hazard", problem));
    }
    state
        .store
        .apply_flood_setup_audited(&setup, Some(&audit))
        .await?;
    tracing::info!(area = %key, by = %caller.prefix, "flood area changed");
    Ok(StatusCode::NO_CONTENT)
}
