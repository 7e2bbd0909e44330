//! Municipalities with their stations, warnings and boundary, and the flood areas.

use super::stations::{station_bodies, OneQuery, StationBody, STATION_LIMIT};
use crate::http::geojson::{Feature, FeatureCollection};
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_field, format, json_response, parse_query, single_format, typed, Format};
use crate::state::ApiState;
use crate::warnings::{warning_body, WarningBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tidemark_model::warning::WarningState;
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
    pub warnings: Vec<WarningBody>,
    /// GeoJSON MultiPolygon.
    pub boundary: serde_json::Value,
}

/// A municipality's GeoJSON properties in the list of boundaries.
#[derive(Serialize)]
struct Named<'a> {
    code: &'a str,
    name: &'a str,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MunicipalityQuery {
    /// json, geojson or csv (or use the Accept header).
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/municipalities", tag = "open data", params(MunicipalityQuery),
    responses((status = 200, description = "Municipalities", content((MunicipalityList = "application/json"), (FeatureCollection = "application/geo+json"), (String = "text/csv")))))]
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
        Format::GeoJson => rows
            .iter()
            .map(|(code, name, boundary)| {
                let geometry = boundary.clone().unwrap_or_default();
                Feature::of(code, geometry, &Named { code, name }, &[])
            })
            .collect::<FeatureCollection>()
            .response(),
        Format::Json | Format::Parquet => json_response(&MunicipalityList {
            municipalities: rows
                .into_iter()
                .map(|(code, name, _)| MunicipalitySummary {
                    links: MunicipalityLinks {
                        this: format!("{base}/api/v1/municipalities/{code}"),
                    },
                    code,
                    name,
                })
                .collect(),
        }),
    })
}

#[utoipa::path(get, path = "/api/v1/municipalities/{code}", tag = "open data",
    params(("code" = String, Path, description = "Municipality code (kommunekode)"), MunicipalityQuery),
    responses(
        (status = 200, description = "The municipality", content((MunicipalityDetail = "application/json"), (Feature = "application/geo+json"))),
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
    let warnings: Vec<WarningBody> = state
        .store
        .warning_list(&tidemark_store::events::WarningFilter {
            state: Some(WarningState::InForce),
            municipality: Some(code.clone()),
            limit: 500,
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|w| warning_body(w, base, None))
        .collect();
    let detail = MunicipalityDetail {
        code,
        name,
        stations,
        warnings,
        boundary: boundary.unwrap_or_default(),
    };
    Ok(match format {
        Format::GeoJson => Feature::of(
            &detail.code,
            detail.boundary.clone(),
            &detail,
            &["boundary"],
        )
        .response(),
        _ => json_response(&detail),
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
        content((Vec<FloodAreaBody> = "application/json"), (FeatureCollection = "application/geo+json")))))]
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
            state: Some(WarningState::InForce),
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
                .map(|w| w.severity.level()),
            key: area.key,
            name: area.name,
            polygon: area.polygon,
            municipalities: area.municipality_codes,
            sensors: area.sensors,
        })
        .collect();
    Ok(match format {
        Format::GeoJson => areas
            .iter()
            .map(|a| Feature::of(&a.key, a.polygon.clone(), a, &["polygon"]))
            .collect::<FeatureCollection>()
            .response(),
        _ => json_response(&areas),
    })
}
