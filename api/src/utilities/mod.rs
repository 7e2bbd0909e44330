//! Utility statistics over the API: a meter's summary (mean, peak and when it occurred) and its
//! load-duration curve, from usable readings only; water district meters' leak rules, night flow
//! and suspected leaks.

use crate::auth::Caller;
use crate::body::EventBody;
use crate::http::problem::{ApiError, PathId, Result};
use crate::http::{csv_response, format, json_response, parse_query, rfc3339, typed, Format};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::Quantity;
use tidemark_store::keys::Role;
use tidemark_store::water::{LeakAlertFilter, LeakAlertRow};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
        (status = 200, description = "The summary", content(("application/json"), ("text/csv"))),
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
        let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
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
                number(s.mean),
                number(s.min),
                s.peak.map(|(at, _)| rfc3339(at)).unwrap_or_default(),
                number(s.peak.map(|(_, value)| value)),
            ]],
        ));
    }
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
        _ => json_response(&serde_json::json!({
            "sensor": sensor, "unit": unit, "from": rfc3339(from), "to": rfc3339(to),
            "count": n, "values": curve,
        })),
    })
}

/// A district meter's leak rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakRuleBody {
    /// The night window in Danish local time; default 02:00 to 04:00.
    #[serde(default = "default_night_start")]
    pub night_start: String,
    #[serde(default = "default_night_end")]
    pub night_end: String,
    /// Nights whose median minimum flow is the baseline; default 14.
    #[serde(default = "default_baseline_nights")]
    pub baseline_nights: i32,
    /// How far above the baseline a night must be, as a share of it; default 0.2.
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Consecutive nights above it before a leak is suspected; default 3.
    #[serde(default = "default_nights")]
    pub nights: i32,
}

fn default_night_start() -> String {
    "02:00".to_owned()
}
fn default_night_end() -> String {
    "04:00".to_owned()
}
const fn default_baseline_nights() -> i32 {
    14
}
const fn default_margin() -> f64 {
    0.2
}
const fn default_nights() -> i32 {
    3
}

/// `PUT /api/v1/utilities/leak-rules/{sensor}`: watches a water district meter's minimum night
/// flow; running analytics find each night's minimum and suspect a leak when the rule is met.
#[utoipa::path(put, path = "/api/v1/utilities/leak-rules/{sensor}", tag = "utilities", request_body = LeakRuleBody,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The district meter's flow sensor")),
    responses(
        (status = 204, description = "Stored; analytics apply it at once"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a utility or operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_leak_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<LeakRuleBody>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Utility, Role::Operator])?;
    let Json(r) = request.map_err(|e| ApiError::bad("body", e.body_text()))?;
    let time = |field: &str, text: &str| {
        NaiveTime::parse_from_str(text, "%H:%M")
            .map_err(|_| ApiError::bad(field, format!("{text:?} is not a time such as 02:00")))
    };
    let (start, end) = (
        time("night_start", &r.night_start)?,
        time("night_end", &r.night_end)?,
    );
    if start >= end {
        return Err(ApiError::bad(
            "night_end",
            "the night window ends after it starts, within one night (such as 02:00 to 04:00)",
        ));
    }
    if !(1..=90).contains(&r.baseline_nights) {
        return Err(ApiError::bad(
            "baseline_nights",
            "baseline_nights is 1 to 90",
        ));
    }
    if !r.margin.is_finite() || r.margin <= 0.0 || r.margin >= 100.0 {
        return Err(ApiError::bad(
            "margin",
            "margin is a share above 0 (0.2: 20 % above the baseline)",
        ));
    }
    if !(1..=30).contains(&r.nights) {
        return Err(ApiError::bad("nights", "nights is 1 to 30"));
    }
    match state.store.sensor_quantity(&sensor).await?.as_deref() {
        None => return Err(ApiError::NotFound(format!("sensor {sensor}"))),
        Some("water_flow") => {}
        Some(other) => {
            return Err(ApiError::bad(
                "sensor",
                format!("leak rules watch water_flow sensors; {sensor} measures {other}"),
            ))
        }
    }
    let audit = caller.actor().audit(
        "leak_rule.put",
        format!("sensor {sensor}"),
        serde_json::to_value(&r).unwrap_or_default(),
    );
    let row = tidemark_store::water::LeakRuleRow {
        sensor_key: sensor.clone(),
        night_start: start,
        night_end: end,
        baseline_nights: r.baseline_nights,
        margin: r.margin,
        nights: r.nights,
    };
    state.store.put_leak_rule(&row, &audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NightQuery {
    /// The first night (a date); default 30 nights before `to`.
    pub from: Option<String>,
    /// The last night (a date); default today.
    pub to: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// `GET /api/v1/utilities/sensors/{key}/night-flow`: a district meter's minimum flow in its night
/// window, night by night, as analytics found it, with its trend over the nights asked for (the
/// least-squares slope per night; JSON only, as the CSV is the nights' table).
#[utoipa::path(get, path = "/api/v1/utilities/sensors/{key}/night-flow", tag = "utilities",
    params(("key" = String, Path, description = "The district meter's flow sensor"), NightQuery),
    responses(
        (status = 200, description = "Nights, oldest first", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn night_flow(
    State(state): State<ApiState>,
    Path(sensor): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<NightQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let date = |field: &str, text: &str| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| ApiError::bad(field, format!("{text:?} is not a date such as 2026-05-01")))
    };
    let to = match &query.to {
        Some(t) => date("to", t)?,
        None => Utc::now().date_naive(),
    };
    let from = match &query.from {
        Some(t) => date("from", t)?,
        None => to - Duration::days(30),
    };
    if from > to {
        return Err(ApiError::bad("from", "from must not be after to"));
    }
    let unit = unit(&state, &sensor).await?;
    let nights = state.store.night_flow(&sensor, from, to).await?;
    let trend = state.store.night_flow_trend(&sensor, from, to).await?;
    if format == Format::Csv {
        return Ok(csv_response(
            &["night", "min", "at", "samples"],
            nights.iter().map(|n| {
                vec![
                    n.night.to_string(),
                    n.min_value.to_string(),
                    rfc3339(n.at),
                    n.samples.to_string(),
                ]
            }),
        ));
    }
    Ok(json_response(&serde_json::json!({
        "sensor": sensor, "unit": unit,
        "trend": {"per_night": trend, "per_week": trend.map(|t| t * 7.0)},
        "nights": nights.iter().map(|n| serde_json::json!({
            "night": n.night.to_string(), "min": n.min_value, "at": rfc3339(n.at), "samples": n.samples,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeakQuery {
    /// Only this meter.
    pub sensor: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// `GET /api/v1/utilities/leaks`: suspected leaks, newest first: the first night above the
/// baseline, the night the rule was met, the baseline and that night's minimum flow.
#[utoipa::path(get, path = "/api/v1/utilities/leaks", tag = "utilities", params(LeakQuery),
    responses((status = 200, description = "Suspected leaks", content(("application/json"), ("text/csv")))))]
pub async fn leaks(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<LeakQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.leaks(query.sensor.as_deref()).await?;
    if format == Format::Csv {
        return Ok(csv_response(
            &[
                "sensor",
                "since",
                "raised_on",
                "baseline",
                "night_flow",
                "found_at",
                "ended_on",
                "alert",
            ],
            rows.iter().map(|l| {
                vec![
                    l.sensor_key.clone(),
                    l.since.to_string(),
                    l.raised_on.to_string(),
                    l.baseline.to_string(),
                    l.night_flow.to_string(),
                    rfc3339(l.found_at),
                    l.ended_on.map(|d| d.to_string()).unwrap_or_default(),
                    l.warning_id.map(|id| id.to_string()).unwrap_or_default(),
                ]
            }),
        ));
    }
    Ok(json_response(&serde_json::json!({
        "leaks": rows.iter().map(|l| serde_json::json!({
            "sensor": l.sensor_key, "since": l.since.to_string(), "raised_on": l.raised_on.to_string(),
            "baseline": l.baseline, "night_flow": l.night_flow, "found_at": rfc3339(l.found_at),
            "ended_on": l.ended_on.map(|d| d.to_string()), "alert": l.warning_id,
        })).collect::<Vec<_>>(),
    })))
}

/// Most alerts in one list.
const ALERT_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// in_force (the default), lifted or all.
    pub state: Option<String>,
    /// Only alerts sent to this municipality (code).
    pub municipality: Option<String>,
    /// Only this district meter (sensor key).
    pub sensor: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

fn alert_json(a: &LeakAlertRow) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "category": "leak",
        "meter": {"key": a.sensor_key, "name": a.meter_name},
        "state": a.state, "raised_at": rfc3339(a.raised_at), "changed_at": rfc3339(a.changed_at),
        "lifted_at": a.lifted_at.map(rfc3339), "municipalities": a.municipalities,
        "message": {"en": a.message_en, "da": a.message_da}, "trigger": a.trigger,
    })
}

/// `GET /api/v1/utilities/alerts`: utility alerts (suspected leaks raised on district meters),
/// newest first. They travel like flood warnings (webhooks that ask for the `leak` category,
/// `GET /api/v1/warnings/stream?category=leak`, retained MQTT messages on
/// `<prefix>/utility-alerts/<municipality>/<meter>`) and are never listed among them.
#[utoipa::path(get, path = "/api/v1/utilities/alerts", tag = "utilities", params(AlertQuery),
    responses(
        (status = 200, description = "Utility alerts", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn alerts(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state
        .store
        .leak_alerts(&LeakAlertFilter {
            state: crate::http::state_filter(query.state.as_deref())?,
            municipality: query.municipality,
            sensor: query.sensor,
            id: None,
            limit: ALERT_LIMIT,
        })
        .await?;
    if format == Format::Csv {
        return Ok(csv_response(
            &[
                "id",
                "category",
                "sensor",
                "meter",
                "state",
                "raised_at",
                "lifted_at",
                "municipalities",
                "message_en",
            ],
            rows.iter().map(|a| {
                vec![
                    a.id.to_string(),
                    "leak".to_owned(),
                    a.sensor_key.clone(),
                    a.meter_name.clone(),
                    a.state.clone(),
                    rfc3339(a.raised_at),
                    a.lifted_at.map(rfc3339).unwrap_or_default(),
                    a.municipalities.join(" "),
                    a.message_en.clone(),
                ]
            }),
        ));
    }
    Ok(json_response(&serde_json::json!({
        "alerts": rows.iter().map(alert_json).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/utilities/alerts/{id}`: one utility alert with its history, each event as every
/// delivery channel carries it.
#[utoipa::path(get, path = "/api/v1/utilities/alerts/{id}", tag = "utilities",
    params(("id" = i64, Path, description = "The alert's id")),
    responses(
        (status = 200, description = "The alert with its history", content(("application/json"))),
        (status = 404, description = "No such utility alert", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn alert(State(state): State<ApiState>, PathId(id): PathId) -> Result<Response> {
    let row = state
        .store
        .leak_alerts(&LeakAlertFilter {
            id: Some(id),
            limit: 1,
            ..LeakAlertFilter::default()
        })
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("utility alert {id}")))?;
    let base = state.settings.base_url();
    let history: Vec<EventBody> = state
        .store
        .warning_history(id)
        .await?
        .iter()
        .map(|e| e.body(base))
        .collect();
    let mut body = alert_json(&row);
    body["history"] = serde_json::json!(history);
    Ok(json_response(&body))
}

/// The register quantities consumption is counted from.
const REGISTERS: [&str; 3] = ["energy_import", "energy_export", "heat_energy"];

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
fn register_window(
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
        (status = 200, description = "Energy per period", content(("application/json"), ("text/csv"))),
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
        _ => json_response(&serde_json::json!({
            "unit": "kWh", "from": rfc3339(from), "to": rfc3339(to),
            "periods": rows.iter().map(|r| serde_json::json!({
                "start": rfc3339(r.start), "kwh": r.used, "meters": r.meters, "resets": r.resets,
            })).collect::<Vec<_>>(),
        })),
    })
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

/// One period a producing site's two registers both cover, in kWh.
struct SelfConsumed {
    start: DateTime<Utc>,
    produced: f64,
    exported: f64,
    own: f64,
    /// Self-consumed over produced; None when nothing was produced.
    share: Option<f64>,
}

/// `GET /api/v1/utilities/self-consumption`: how much of what a site produced it used itself, per
/// period: produced (the generation register's rise), exported (the export register's rise),
/// self-consumed (produced less exported) and the self-consumption share (self-consumed over
/// produced). Periods where either register fell are left out.
#[utoipa::path(get, path = "/api/v1/utilities/self-consumption", tag = "utilities", params(SelfConsumptionQuery),
    responses(
        (status = 200, description = "Self-consumption per period", content(("application/json"), ("text/csv"))),
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
    let periods: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "start": rfc3339(r.start), "produced_kwh": r.produced, "exported_kwh": r.exported,
                "self_consumed_kwh": r.own, "share": r.share,
            })
        })
        .collect();
    Ok(json_response(&serde_json::json!({
        "production": query.production, "export": query.export, "unit": "kWh",
        "from": rfc3339(from), "to": rfc3339(to), "periods": periods,
    })))
}

/// The utility statistics' routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(summary))
        .routes(routes!(load_duration))
        .routes(routes!(night_flow))
        .routes(routes!(put_leak_rule))
        .routes(routes!(leaks))
        .routes(routes!(alerts))
        .routes(routes!(alert))
        .routes(routes!(consumption))
        .routes(routes!(self_consumption))
}
