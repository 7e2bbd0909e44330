//! The container registry, and the collections and overflows analytics found.

use super::records::{seconds, seconds_or_null, stamp};
use crate::auth::Caller;
use crate::http::check_key;
use crate::http::geojson::{point, Feature, FeatureCollection};
use crate::http::problem::{ApiError, Result};
use crate::http::{
    csv_field, csv_response, format, json_response, optional, parse_query, typed, Format,
};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tidemark_model::waste::{self};
use tidemark_store::circular::ContainerRefusal;
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};

/// The plain names a container's fraction may have.
pub(crate) const FRACTIONS: [&str; 10] = [
    "paper",
    "cardboard",
    "plastic",
    "glass",
    "metal",
    "food",
    "garden",
    "textiles",
    "residual",
    "mixed",
];

/// A container of the registry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerBody {
    pub name: String,
    pub lon: f64,
    pub lat: f64,
    pub capacity_litres: f64,
    /// A European List of Waste code of chapter 15 01 or 20.
    pub waste_code: String,
    /// paper, cardboard, plastic, glass, metal, food, garden, textiles, residual or mixed.
    pub fraction: String,
    /// The owner municipality's code.
    pub municipality: Option<String>,
    /// The sensor reporting its fill level in percent.
    pub fill_sensor: String,
    /// The sensor reporting the mass collected at each emptying, if the lifts are weighed.
    pub weight_sensor: Option<String>,
}

/// `PUT /api/v1/circular/containers/{key}`: registers or changes a container; running analytics
/// find its collections and overflows from its readings at once.
#[utoipa::path(put, path = "/api/v1/circular/containers/{key}", tag = "circular", request_body = ContainerBody,
    security(("api_key" = [])), params(("key" = String, Path, description = "The container's key")),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a utility or operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_container(
    State(state): State<ApiState>,
    caller: Caller,
    axum::extract::Path(key): axum::extract::Path<String>,
    request: std::result::Result<Json<ContainerBody>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Utility, Role::Operator])?;
    let Json(c) = request.map_err(|e| ApiError::bad("body", e.body_text()))?;
    check_key(&key, "a container key")?;
    if c.name.trim().is_empty() {
        return Err(ApiError::bad("name", "the container needs a name"));
    }
    if !(-180.0..=180.0).contains(&c.lon) || !(-90.0..=90.0).contains(&c.lat) {
        return Err(ApiError::bad("lon", "lon and lat are degrees (WGS84)"));
    }
    if !c.capacity_litres.is_finite() || c.capacity_litres <= 0.0 || c.capacity_litres > 1e6 {
        return Err(ApiError::bad(
            "capacity_litres",
            "capacity_litres is above 0 and at most 1,000,000",
        ));
    }
    let code = waste::lookup(&c.waste_code).ok_or_else(|| {
        ApiError::bad(
            "waste_code",
            format!(
                "{:?} is not a List of Waste code of chapter 15 01 or 20",
                c.waste_code
            ),
        )
    })?;
    if !FRACTIONS.contains(&c.fraction.as_str()) {
        return Err(ApiError::bad(
            "fraction",
            format!("fraction is one of {}", FRACTIONS.join(", ")),
        ));
    }
    let row = tidemark_store::circular::ContainerRow {
        key: key.clone(),
        name: c.name.trim().to_owned(),
        lon: c.lon,
        lat: c.lat,
        capacity_litres: c.capacity_litres,
        waste_code: code.code.to_owned(),
        fraction: c.fraction.clone(),
        municipality: c.municipality.clone(),
        fill_sensor: c.fill_sensor.clone(),
        weight_sensor: c.weight_sensor.clone(),
    };
    let audit = caller.actor().audit(
        "container.put",
        format!("container {key}"),
        serde_json::to_value(&c).unwrap_or_default(),
    );
    match state.store.put_container(&row, &audit).await? {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(ContainerRefusal::UnknownSensor(sensor)) => Err(ApiError::bad(
            if Some(&sensor) == c.weight_sensor.as_ref() {
                "weight_sensor"
            } else {
                "fill_sensor"
            },
            format!("no sensor {sensor}"),
        )),
        Err(ContainerRefusal::UnknownMunicipality(code)) => Err(ApiError::bad(
            "municipality",
            format!("no municipality {code}"),
        )),
    }
}

/// `GET /api/v1/circular/containers`: the registry, with each container's latest fill level, its
/// fill rate over the current filling phase (percentage points per hour) and when it is expected
/// to be full.
#[utoipa::path(get, path = "/api/v1/circular/containers", tag = "circular", params(FormatQuery),
    responses((status = 200, description = "Containers by key",
        content((ContainerList = "application/json"), (FeatureCollection = "application/geo+json"), (String = "text/csv")))))]
pub async fn containers(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FormatQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, true)?;
    let rows = state.store.containers().await?;
    let states = state.store.container_states().await?;
    let bodies: Vec<ContainerStatus> = rows
        .into_iter()
        .map(|c| {
            let s = states.get(&c.key);
            ContainerStatus {
                waste_name: waste::lookup(&c.waste_code).map(|w| w.name),
                fill_level: s.and_then(|s| s.fill).map(|f| f.0),
                fill_at: s.and_then(|s| s.fill).map(|f| f.1),
                fill_rate_per_hour: s.and_then(|s| s.fill_rate_per_hour),
                full_at: s.and_then(|s| s.full_at),
                key: c.key,
                name: c.name,
                lon: c.lon,
                lat: c.lat,
                capacity_litres: c.capacity_litres,
                waste_code: c.waste_code,
                fraction: c.fraction,
                municipality: c.municipality,
                fill_sensor: c.fill_sensor,
                weight_sensor: c.weight_sensor,
            }
        })
        .collect();
    Ok(match format {
        // Each feature keeps lon and lat among its properties, as the JSON list has them.
        Format::GeoJson => bodies
            .iter()
            .map(|b| Feature::of(&b.key, point(b.lon, b.lat), b, &[]))
            .collect::<FeatureCollection>()
            .response(),
        Format::Csv => csv_response(
            &[
                "key",
                "name",
                "lon",
                "lat",
                "capacity_litres",
                "waste_code",
                "fraction",
                "municipality",
                "fill_sensor",
                "weight_sensor",
                "fill_level",
                "fill_at",
                "fill_rate_per_hour",
                "full_at",
            ],
            bodies.iter().map(|b| {
                vec![
                    b.key.clone(),
                    b.name.clone(),
                    b.lon.to_string(),
                    b.lat.to_string(),
                    b.capacity_litres.to_string(),
                    b.waste_code.clone(),
                    b.fraction.clone(),
                    optional(b.municipality.as_ref()),
                    b.fill_sensor.clone(),
                    optional(b.weight_sensor.as_ref()),
                    optional(b.fill_level),
                    optional(b.fill_at.map(stamp)),
                    optional(b.fill_rate_per_hour),
                    optional(b.full_at.map(stamp)),
                ]
            }),
        ),
        _ => json_response(&ContainerList { containers: bodies }),
    })
}

/// A container with its latest fill level and where its filling is heading.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContainerStatus {
    pub key: String,
    pub name: String,
    pub lon: f64,
    pub lat: f64,
    pub capacity_litres: f64,
    pub waste_code: String,
    pub waste_name: Option<&'static str>,
    pub fraction: String,
    pub municipality: Option<String>,
    pub fill_sensor: String,
    pub weight_sensor: Option<String>,
    /// Percent.
    pub fill_level: Option<f64>,
    #[serde(serialize_with = "seconds_or_null")]
    pub fill_at: Option<DateTime<Utc>>,
    /// Percentage points per hour over the current filling phase.
    pub fill_rate_per_hour: Option<f64>,
    /// When it is expected to be full.
    #[serde(serialize_with = "seconds_or_null")]
    pub full_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContainerList {
    /// By key.
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// json, csv or geojson (or use the Accept header).
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    pub container: Option<String>,
    pub municipality: Option<String>,
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    /// json or csv (collections; or use the Accept header).
    pub format: Option<String>,
}

pub(crate) fn event_filter(q: &EventQuery) -> Result<tidemark_store::circular::EventFilter> {
    let time = |name: &str, t: &Option<String>| -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        t.as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| ApiError::bad(name, format!("{t:?} is not an RFC 3339 time")))
            })
            .transpose()
    };
    let (from, to) = (time("from", &q.from)?, time("to", &q.to)?);
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(ApiError::bad("to", "to must be after from"));
        }
    }
    Ok(tidemark_store::circular::EventFilter {
        container: q.container.clone(),
        municipality: q.municipality.clone(),
        from,
        to,
    })
}

/// `GET /api/v1/circular/collections`: the collections analytics found, and per container their
/// count, the mean fill level at collection, partial ones, near-empty (30 % or less) and full
/// ones, and the volume and mass collected.
#[utoipa::path(get, path = "/api/v1/circular/collections", tag = "circular", params(EventQuery),
    responses(
        (status = 200, description = "Collections and a summary per container", content((CollectionsBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn collections(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.collections(&event_filter(&query)?).await?;
    if format == Format::Csv {
        let mut out =
            String::from("container,at,fill_before,fill_after,partial,volume_litres,mass_kg\n");
        for c in &rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                csv_field(&c.container),
                stamp(c.at),
                c.fill_before,
                c.fill_after,
                c.partial,
                c.volume_litres,
                c.mass_kg.map(|m| m.to_string()).unwrap_or_default(),
            ));
        }
        return Ok(typed("text/csv; charset=utf-8", out));
    }
    let mut per: BTreeMap<&str, Vec<&tidemark_store::circular::CollectionRow>> = BTreeMap::new();
    for c in &rows {
        per.entry(c.container.as_str()).or_default().push(c);
    }
    let summary: Vec<CollectionSummary> = per
        .iter()
        .map(|(key, cs)| {
            let n = cs.len() as f64;
            CollectionSummary {
                container: (*key).to_owned(),
                collections: cs.len(),
                mean_fill_at_collection: cs.iter().map(|c| c.fill_before).sum::<f64>() / n,
                partial: cs.iter().filter(|c| c.partial).count(),
                near_empty: cs.iter().filter(|c| c.fill_before <= 30.0).count(),
                full: cs.iter().filter(|c| c.fill_before >= 100.0).count(),
                volume_litres: cs.iter().map(|c| c.volume_litres).sum::<f64>(),
                // From +0.0: an empty float sum is -0.0, which JSON would show.
                mass_kg: cs
                    .iter()
                    .filter_map(|c| c.mass_kg)
                    .fold(0.0, |sum, m| sum + m),
            }
        })
        .collect();
    Ok(json_response(&CollectionsBody {
        summary,
        collections: rows
            .into_iter()
            .map(|c| Collection {
                container: c.container,
                at: c.at,
                fill_before: c.fill_before,
                fill_after: c.fill_after,
                partial: c.partial,
                volume_litres: c.volume_litres,
                mass_kg: c.mass_kg,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionsBody {
    /// Per container, by key.
    pub summary: Vec<CollectionSummary>,
    pub collections: Vec<Collection>,
}

/// A container's collections summed up.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionSummary {
    pub container: String,
    pub collections: usize,
    /// Percent.
    pub mean_fill_at_collection: f64,
    pub partial: usize,
    /// Collected at 30 % or less.
    pub near_empty: usize,
    pub full: usize,
    pub volume_litres: f64,
    pub mass_kg: f64,
}

/// A collection analytics found: the fill level fell sharply.
#[derive(Debug, Serialize, ToSchema)]
pub struct Collection {
    pub container: String,
    #[serde(serialize_with = "seconds")]
    pub at: DateTime<Utc>,
    /// Percent.
    pub fill_before: f64,
    pub fill_after: f64,
    /// Not emptied.
    pub partial: bool,
    pub volume_litres: f64,
    /// From the weight sensor, where the container has one.
    pub mass_kg: Option<f64>,
}

/// `GET /api/v1/circular/overflows`: spells containers stayed full for longer than allowed (two
/// hours); `until` is null while one lasts.
#[utoipa::path(get, path = "/api/v1/circular/overflows", tag = "circular", params(EventQuery),
    responses(
        (status = 200, description = "Overflow events", content((OverflowList = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn overflows(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.overflows(&event_filter(&query)?).await?;
    if format == Format::Csv {
        return Ok(csv_response(
            &["container", "from", "until"],
            rows.iter().map(|o| {
                vec![
                    o.container.clone(),
                    stamp(o.from),
                    o.until.map(stamp).unwrap_or_default(),
                ]
            }),
        ));
    }
    Ok(json_response(&OverflowList {
        overflows: rows
            .into_iter()
            .map(|o| Overflow {
                container: o.container,
                from: o.from,
                until: o.until,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverflowList {
    pub overflows: Vec<Overflow>,
}

/// A spell a container stayed full for longer than allowed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overflow {
    pub container: String,
    #[serde(serialize_with = "seconds")]
    pub from: DateTime<Utc>,
    /// Null while it lasts.
    #[serde(serialize_with = "seconds_or_null")]
    pub until: Option<DateTime<Utc>>,
}
