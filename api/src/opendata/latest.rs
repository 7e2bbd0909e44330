//! The latest value of every sensor.

use super::stations::{sensor_body, SensorBody};
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_field, format, parse_query, rfc3339, typed, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_store::opendata::{LatestFilter, LatestRow};
use utoipa::{IntoParams, ToSchema};

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
pub(crate) fn latest_json(rows: Vec<LatestRow>, now: DateTime<Utc>) -> Vec<u8> {
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
    serde_json::to_vec(&LatestList { sensors: items }).unwrap_or_default()
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

/// `GET /api/v1/latest`
#[derive(Serialize, ToSchema)]
pub struct LatestList {
    pub sensors: Vec<LatestItem>,
}
