//! A meter's summary, load-duration curve, register consumption per period and self-consumption.

use crate::http::problem::{ApiError, Result};
use crate::http::{
    csv_response, format, json_response, optional, parse_query, rfc3339, typed, Format,
};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::Quantity;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339; default a year before `to`.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

pub(crate) fn instant(parameter: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::bad(parameter, format!("{text:?} is not an RFC 3339 time")))
}

pub(crate) fn range(query: &RangeQuery) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
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

pub(crate) async fn unit(state: &ApiState, sensor: &str) -> Result<&'static str> {
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
        (status = 200, description = "The summary", content((SummaryBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn summary(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(sensor): Path<String>,
    query: std::result::Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let (from, to) = range(&query)?;
    let unit = unit(&state, &sensor).await?;
    let s = state
        .store
        .utility_summary(&sensor, from, to)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
    if format == Format::Csv {
        return Ok(csv_response(
            &[
                "sensor", "unit", "from", "to", "count", "flagged", "mean", "min", "peak_at",
                "peak",
            ],
            [vec![
                sensor,
                unit.to_owned(),
                rfc3339(from),
                rfc3339(to),
                s.count.to_string(),
                s.flagged.to_string(),
                optional(s.mean),
                optional(s.min),
                s.peak.map(|(at, _)| rfc3339(at)).unwrap_or_default(),
                optional(s.peak.map(|(_, value)| value)),
            ]],
        ));
    }
    Ok(json_response(&SummaryBody {
        sensor,
        unit,
        from,
        to,
        count: s.count,
        flagged: s.flagged,
        mean: s.mean,
        min: s.min,
        peak: s.peak.map(|(at, value)| Peak { at, value }),
    }))
}

/// A meter's usable readings in a window, summed up.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryBody {
    pub sensor: String,
    pub unit: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Usable readings.
    pub count: i64,
    /// Readings left out for their quality flags.
    pub flagged: i64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub peak: Option<Peak>,
}

/// The highest value and the first time it was reached.
#[derive(Debug, Serialize, ToSchema)]
pub struct Peak {
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// `GET /api/v1/utilities/sensors/{key}/load-duration`: the usable values from highest to lowest;
/// value `i` (from 1) was reached or exceeded during `i` of the `count` intervals.
#[utoipa::path(get, path = "/api/v1/utilities/sensors/{key}/load-duration", tag = "utilities",
    params(("key" = String, Path, description = "The sensor's key"), RangeQuery),
    responses(
        (status = 200, description = "The curve", content((LoadDurationBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
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
        _ => json_response(&LoadDurationBody {
            sensor,
            unit,
            from,
            to,
            count: n,
            values: curve,
        }),
    })
}

/// A load-duration curve: value `i` (from 1) was reached or exceeded during `i` of the `count`
/// intervals.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadDurationBody {
    pub sensor: String,
    pub unit: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub count: usize,
    /// Highest first.
    pub values: Vec<f64>,
}

/// The register quantities consumption is counted from.
pub(crate) const REGISTERS: [&str; 3] = ["energy_import", "energy_export", "heat_energy"];

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsumptionQuery {
    /// One meter; or all meters at stations in `municipality` and/or `bbox` measuring `quantity`.
    pub sensor: Option<String>,
    pub municipality: Option<String>,
    /// An area: min_lon,min_lat,max_lon,max_lat in degrees.
    pub bbox: Option<String>,
    /// energy_import, energy_export or heat_energy.
    pub quantity: Option<String>,
    /// RFC 3339; default a year before `to`.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<String>,
    /// hour (UTC), day or month (Danish local calendar); default day.
    pub period: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// The window and period of a register query: `from` and `to` as [`range`] reads them, and
/// `period` (hour, day or month; `default` when not given).
pub(crate) fn register_window(
    from: &Option<String>,
    to: &Option<String>,
    period: Option<&str>,
    default: &str,
) -> Result<(
    DateTime<Utc>,
    DateTime<Utc>,
    tidemark_store::utility::Period,
)> {
    let (from, to) = range(&RangeQuery {
        from: from.clone(),
        to: to.clone(),
        format: None,
    })?;
    let period = match period.unwrap_or(default) {
        "hour" => tidemark_store::utility::Period::Hour,
        "day" => tidemark_store::utility::Period::Day,
        "month" => tidemark_store::utility::Period::Month,
        _ => return Err(ApiError::bad("period", "period is hour, day or month")),
    };
    Ok((from, to, period))
}

/// `GET /api/v1/utilities/consumption`: energy used (or produced, from an export register) per
/// hour, day or month, from meter registers: each meter's rise from the last reading of one
/// period to the last of the next, summed over the meters asked for. A register that falls (a
/// reset or a new meter) is counted in `resets` and left out of that period; a meter's first
/// period without an earlier reading has no starting point and is left out too.
#[utoipa::path(get, path = "/api/v1/utilities/consumption", tag = "utilities", params(ConsumptionQuery),
    responses(
        (status = 200, description = "Energy per period", content((ConsumptionBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn consumption(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<ConsumptionQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let (from, to, period) =
        register_window(&query.from, &query.to, query.period.as_deref(), "day")?;
    let bbox = query
        .bbox
        .as_deref()
        .map(crate::http::parse_bbox)
        .transpose()?;
    let group = query.municipality.is_some() || bbox.is_some();
    match (&query.sensor, group, &query.quantity) {
        (Some(sensor), false, None) => {
            let quantity = state
                .store
                .sensor_quantity(sensor)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
            if !REGISTERS.contains(&quantity.as_str()) {
                return Err(ApiError::bad(
                    "sensor",
                    format!("{sensor} measures {quantity}, not an energy register"),
                ));
            }
        }
        (None, true, Some(quantity)) if REGISTERS.contains(&quantity.as_str()) => {}
        (None, true, _) => {
            return Err(ApiError::bad(
                "quantity",
                format!(
                    "with municipality or bbox, quantity is one of {}",
                    REGISTERS.join(", ")
                ),
            ))
        }
        _ => {
            return Err(ApiError::bad(
                "sensor",
                "ask for one sensor, or for a municipality or bbox and a quantity",
            ))
        }
    }
    let meters = tidemark_store::utility::MeterFilter {
        sensor: query.sensor.clone(),
        municipality: query.municipality.clone(),
        bbox,
        quantity: query.quantity.clone(),
    };
    let rows = state
        .store
        .register_consumption(&meters, from, to, period)
        .await?;
    Ok(match format {
        Format::Csv => {
            let mut out = String::from("start,kwh,meters,resets\n");
            for r in &rows {
                out.push_str(&format!(
                    "{},{},{},{}\n",
                    rfc3339(r.start),
                    r.used,
                    r.meters,
                    r.resets
                ));
            }
            typed("text/csv; charset=utf-8", out)
        }
        _ => json_response(&ConsumptionBody {
            unit: KWH,
            from,
            to,
            periods: rows
                .iter()
                .map(|r| ConsumptionPeriod {
                    start: r.start,
                    kwh: r.used,
                    meters: r.meters,
                    resets: r.resets,
                })
                .collect(),
        }),
    })
}

/// The unit energy is counted in.
const KWH: &str = "kWh";

/// Energy per period, summed over the meters asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumptionBody {
    /// Always kWh.
    pub unit: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Oldest first.
    pub periods: Vec<ConsumptionPeriod>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumptionPeriod {
    pub start: DateTime<Utc>,
    pub kwh: f64,
    /// Meters that counted in this period.
    pub meters: i64,
    /// Meters whose register fell (a reset or a replaced meter), left out of this period.
    pub resets: i64,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SelfConsumptionQuery {
    /// The generation meter's register (energy produced).
    pub production: String,
    /// The grid connection's export register (energy sent to the grid).
    pub export: String,
    /// RFC 3339; default a year before `to`.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<String>,
    /// hour (UTC), day or month (Danish local calendar); default month.
    pub period: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// How much of what a site produced it used itself, per period.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfConsumptionBody {
    /// The generation meter's register.
    pub production: String,
    /// The grid connection's export register.
    pub export: String,
    /// Always kWh.
    pub unit: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Oldest first; periods where either register fell are left out.
    pub periods: Vec<SelfConsumed>,
}

/// One period a producing site's two registers both cover, in kWh.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfConsumed {
    pub start: DateTime<Utc>,
    #[serde(rename = "produced_kwh")]
    pub produced: f64,
    #[serde(rename = "exported_kwh")]
    pub exported: f64,
    /// Produced less exported.
    #[serde(rename = "self_consumed_kwh")]
    pub own: f64,
    /// Self-consumed over produced; none when nothing was produced.
    pub share: Option<f64>,
}

/// `GET /api/v1/utilities/self-consumption`: how much of what a site produced it used itself, per
/// period: produced (the generation register's rise), exported (the export register's rise),
/// self-consumed (produced less exported) and the self-consumption share (self-consumed over
/// produced). Periods where either register fell are left out.
#[utoipa::path(get, path = "/api/v1/utilities/self-consumption", tag = "utilities", params(SelfConsumptionQuery),
    responses(
        (status = 200, description = "Self-consumption per period", content((SelfConsumptionBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn self_consumption(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<SelfConsumptionQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let (from, to, period) =
        register_window(&query.from, &query.to, query.period.as_deref(), "month")?;
    let mut series = Vec::new();
    for (field, sensor) in [("production", &query.production), ("export", &query.export)] {
        let quantity = state
            .store
            .sensor_quantity(sensor)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
        if !REGISTERS.contains(&quantity.as_str()) {
            return Err(ApiError::bad(
                field,
                format!("{sensor} measures {quantity}, not an energy register"),
            ));
        }
        let meters = tidemark_store::utility::MeterFilter {
            sensor: Some(sensor.clone()),
            ..Default::default()
        };
        let rows = state
            .store
            .register_consumption(&meters, from, to, period)
            .await?;
        series.push(
            rows.into_iter()
                .filter(|r| r.resets == 0 && r.meters == 1)
                .map(|r| (r.start, r.used))
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
    }
    let (produced, exported) = (&series[0], &series[1]);
    let rows: Vec<SelfConsumed> = produced
        .iter()
        .filter_map(|(start, p)| {
            let e = exported.get(start)?;
            let own = (p - e).max(0.0);
            Some(SelfConsumed {
                start: *start,
                produced: *p,
                exported: *e,
                own,
                share: (*p > 0.0).then(|| own / p),
            })
        })
        .collect();
    if format == Format::Csv {
        return Ok(csv_response(
            &[
                "start",
                "produced_kwh",
                "exported_kwh",
                "self_consumed_kwh",
                "share",
            ],
            rows.iter().map(|r| {
                vec![
                    rfc3339(r.start),
                    r.produced.to_string(),
                    r.exported.to_string(),
                    r.own.to_string(),
                    r.share.map(|s| s.to_string()).unwrap_or_default(),
                ]
            }),
        ));
    }
    Ok(json_response(&SelfConsumptionBody {
        production: query.production,
        export: query.export,
        unit: KWH,
        from,
        to,
        periods: rows,
    }))
}
