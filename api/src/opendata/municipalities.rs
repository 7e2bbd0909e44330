//! Municipalities with their stations, warnings and boundary, and the flood areas.

use super::stations::{station_bodies, OneQuery, StationBody, STATION_LIMIT};
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_field, format, json_response, parse_query, single_format, typed, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tidemark_store::opendata::StationFilter;
use utoipa::{IntoParams, ToSchema};

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
