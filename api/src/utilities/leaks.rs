//! Water meters' leak rules, night flow, suspected leaks and the utility alerts they raise.

use super::meters::unit;
use crate::auth::Caller;
use crate::body::{AreaRef, EventBody, Messages};
use crate::http::problem::{ApiError, PathId, Result};
use crate::http::{csv_response, format, json_response, parse_query, rfc3339, Format};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::warning::{Category, WarningState};
use tidemark_store::keys::Role;
use tidemark_store::water::{LeakAlertFilter, LeakAlertRow};
use utoipa::{IntoParams, ToSchema};

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

pub(crate) fn default_night_start() -> String {
    "02:00".to_owned()
}

pub(crate) fn default_night_end() -> String {
    "04:00".to_owned()
}

pub(crate) const fn default_baseline_nights() -> i32 {
    14
}

pub(crate) const fn default_margin() -> f64 {
    0.2
}

pub(crate) const fn default_nights() -> i32 {
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
        (status = 200, description = "Nights, oldest first", content((NightFlowBody = "application/json"), (String = "text/csv"))),
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
    Ok(json_response(&NightFlowBody {
        sensor,
        unit,
        trend: NightFlowTrend {
            per_night: trend,
            per_week: trend.map(|t| t * 7.0),
        },
        nights: nights
            .iter()
            .map(|n| Night {
                night: n.night,
                min: n.min_value,
                at: n.at,
                samples: n.samples,
            })
            .collect(),
    }))
}

/// A district meter's nights.
#[derive(Debug, Serialize, ToSchema)]
pub struct NightFlowBody {
    pub sensor: String,
    pub unit: &'static str,
    pub trend: NightFlowTrend,
    /// Oldest first.
    pub nights: Vec<Night>,
}

/// The least-squares slope of the nights' minimum flow; none with fewer than two nights.
#[derive(Debug, Serialize, ToSchema)]
pub struct NightFlowTrend {
    pub per_night: Option<f64>,
    pub per_week: Option<f64>,
}

/// One night's minimum flow in the meter's night window.
#[derive(Debug, Serialize, ToSchema)]
pub struct Night {
    /// The date the night ends on.
    pub night: NaiveDate,
    pub min: f64,
    /// When the minimum was read.
    pub at: DateTime<Utc>,
    pub samples: i32,
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
    responses((status = 200, description = "Suspected leaks", content((LeakList = "application/json"), (String = "text/csv")))))]
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
    Ok(json_response(&LeakList {
        leaks: rows
            .into_iter()
            .map(|l| Leak {
                sensor: l.sensor_key,
                since: l.since,
                raised_on: l.raised_on,
                baseline: l.baseline,
                night_flow: l.night_flow,
                found_at: l.found_at,
                ended_on: l.ended_on,
                alert: l.warning_id,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeakList {
    /// Newest first.
    pub leaks: Vec<Leak>,
}

/// A suspected leak at a district meter.
#[derive(Debug, Serialize, ToSchema)]
pub struct Leak {
    pub sensor: String,
    /// The first night above the baseline.
    pub since: NaiveDate,
    /// The night the rule was met.
    pub raised_on: NaiveDate,
    pub baseline: f64,
    /// That night's minimum flow.
    pub night_flow: f64,
    pub found_at: DateTime<Utc>,
    /// The first night back under the baseline, once the leak ended.
    pub ended_on: Option<NaiveDate>,
    /// The utility alert raised for it.
    pub alert: Option<i64>,
}

/// Most alerts in one list.
pub(crate) const ALERT_LIMIT: i64 = 1000;

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

/// A utility alert: a suspected leak raised on a district meter.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertBody {
    pub id: i64,
    /// Always `leak`.
    pub category: Category,
    pub meter: AreaRef,
    pub state: WarningState,
    pub raised_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub municipalities: Vec<String>,
    pub message: Messages,
    /// The suspicion behind it: the nights, the baseline and the margin.
    pub trigger: serde_json::Value,
    /// Its events, oldest first, as every delivery channel carries them (one alert only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<EventBody>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertBody>,
}

pub(crate) fn alert_body(a: LeakAlertRow, history: Option<Vec<EventBody>>) -> AlertBody {
    AlertBody {
        id: a.id,
        category: Category::Leak,
        meter: AreaRef {
            key: a.sensor_key,
            name: a.meter_name,
        },
        state: a.state,
        raised_at: a.raised_at,
        changed_at: a.changed_at,
        lifted_at: a.lifted_at,
        municipalities: a.municipalities,
        message: Messages {
            en: a.message_en,
            da: a.message_da,
        },
        trigger: a.trigger,
        history,
    }
}

/// `GET /api/v1/utilities/alerts`: utility alerts (suspected leaks raised on district meters),
/// newest first. They travel like flood warnings (webhooks that ask for the `leak` category,
/// `GET /api/v1/warnings/stream?category=leak`, retained MQTT messages on
/// `<prefix>/utility-alerts/<municipality>/<meter>`) and are never listed among them.
#[utoipa::path(get, path = "/api/v1/utilities/alerts", tag = "utilities", params(AlertQuery),
    responses(
        (status = 200, description = "Utility alerts", content((AlertList = "application/json"), (String = "text/csv"))),
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
                    a.state.name().to_owned(),
                    rfc3339(a.raised_at),
                    a.lifted_at.map(rfc3339).unwrap_or_default(),
                    a.municipalities.join(" "),
                    a.message_en.clone(),
                ]
            }),
        ));
    }
    Ok(json_response(&AlertList {
        alerts: rows.into_iter().map(|a| alert_body(a, None)).collect(),
    }))
}

/// `GET /api/v1/utilities/alerts/{id}`: one utility alert with its history, each event as every
/// delivery channel carries it.
#[utoipa::path(get, path = "/api/v1/utilities/alerts/{id}", tag = "utilities",
    params(("id" = i64, Path, description = "The alert's id")),
    responses(
        (status = 200, description = "The alert with its history", body = AlertBody),
        (status = 404, description = "No such utility alert", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn alert(State(state): State<ApiState>, PathId(id): PathId) -> Result<Json<AlertBody>> {
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
    Ok(Json(alert_body(row, Some(history))))
}
