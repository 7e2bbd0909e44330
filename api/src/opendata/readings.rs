//! `GET /api/v1/sensors/{key}/readings`: raw or aggregated, as the request asks.

use super::aggregate::{aggregated, BucketPage};
use super::query::ReadingsQuery;
use super::raw::{raw, RawPage};
use crate::http::problem::{ApiError, Result};
use crate::http::{format, parse_query, wants_parquet, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

/// A sensor's readings: raw (paged by time, or by arrival with `since`) or aggregated into buckets.
#[utoipa::path(get, path = "/api/v1/sensors/{key}/readings", tag = "open data",
    params(("key" = String, Path, description = "The sensor's key"), ReadingsQuery),
    responses(
        (status = 200, description = "Raw readings (a page, with `next`), or buckets when `bucket` is given",
            content((ReadingsBody = "application/json"), (String = "text/csv"),
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
    if query.bucket.is_some() {
        // Looks the sensor up itself, with the buckets.
        return aggregated(&state, &sensor, query, format).await;
    }
    let quantity = state
        .store
        .open_sensor_quantity(&sensor)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
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

/// A page of raw readings, or the readings in buckets when `bucket` is given.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ReadingsBody {
    Raw(RawPage),
    Buckets(BucketPage),
}
