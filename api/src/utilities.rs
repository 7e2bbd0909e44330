//! Utility statistics over the API: a meter's summary (mean, peak and when it occurred) and its
//! load-duration curve, from usable readings only.

use crate::error::{ApiError, Result};
use crate::opendata::{format, json_response, parse_query, typed, Format};
use crate::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Deserialize;
use tidemark_model::Quantity;
use utoipa::IntoParams;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339; default a year before `to`.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<String>,
    /// json or csv (load-duration only; or use the Accept header).
    pub format: Option<String>,
}

fn instant(parameter: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::bad(parameter, format!("{text:?} is not an RFC 3339 time")))
}

fn range(query: &RangeQuery) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let to = match &query.to {
        Some(t) => instant("to", t)?,
        None => Utc::now(),
    };
    let from = match &query.from {
        Some(t) => instant("from", t)?,
        None => to - Duration::days(365),
    };
    if from >= to {
        return Err(ApiError::bad("from", "from must be before to"));
    }
    Ok((from, to))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

async fn unit(state: &ApiState, sensor: &str) -> Result<&'static str> {
    let quantity = state
        .store
        .sensor_quantity(sensor)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
    Ok(Quantity::parse(&quantity).map_or("", |q| q.canonical_unit().symbol()))
}

/// `GET /api/v1/utilities/sensors/{key}/summary`: count, mean, minimum and the peak with when it
/// occurred; flagged readings are counted and left out.
#[utoipa::path(get, path = "/api/v1/utilities/sensors/{key}/summary", tag = "utilities",
    params(("key" = String, Path, description = "The sensor's key"), RangeQuery),
    responses(
        (status = 200, description = "The summary"),
        (status = 400, description = "A bad parameter", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn summary(
    State(state): State<ApiState>,
    Path(sensor): Path<String>,
    query: std::result::Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    if query.format.as_deref().is_some_and(|f| f != "json") {
        return Err(ApiError::bad("format", "the summary comes as json"));
    }
    let (from, to) = range(&query)?;
    let unit = unit(&state, &sensor).await?;
    let s = state
        .store
        .utility_summary(&sensor, from, to)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
    Ok(json_response(&serde_json::json!({
        "sensor": sensor, "unit": unit, "from": rfc3339(from), "to": rfc3339(to),
        "count": s.count, "flagged": s.flagged, "mean": s.mean, "min": s.min,
        "peak": s.peak.map(|(at, value)| serde_json::json!({ "at": rfc3339(at), "value": value })),
    })))
}

/// `GET /api/v1/utilities/sensors/{key}/load-duration`: the usable values from highest to lowest;
/// value `i` (from 1) was reached or exceeded during `i` of the `count` intervals.
#[utoipa::path(get, path = "/api/v1/utilities/sensors/{key}/load-duration", tag = "utilities",
    params(("key" = String, Path, description = "The sensor's key"), RangeQuery),
    responses(
        (status = 200, description = "The curve", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn load_duration(
    State(state): State<ApiState>,
    Path(sensor): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let (from, to) = range(&query)?;
    let unit = unit(&state, &sensor).await?;
    let curve = state.store.load_duration(&sensor, from, to).await?;
    if curve.len() as i64 >= tidemark_store::utility::MAX_CURVE {
        return Err(ApiError::bad(
            "from",
            format!(
                "more than {} readings; ask for a shorter range",
                tidemark_store::utility::MAX_CURVE - 1
            ),
        ));
    }
    let n = curve.len();
    Ok(match format {
        Format::Csv => {
            let mut out = String::from("rank,share,value\n");
            for (i, v) in curve.iter().enumerate() {
                out.push_str(&format!("{},{},{v}\n", i + 1, (i + 1) as f64 / n as f64));
            }
            typed("text/csv; charset=utf-8", out)
        }
        _ => json_response(&serde_json::json!({
            "sensor": sensor, "unit": unit, "from": rfc3339(from), "to": rfc3339(to),
            "count": n, "values": curve,
        })),
    })
}
