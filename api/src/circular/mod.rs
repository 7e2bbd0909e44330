//! The circular data bank over the API: material-flow records posted by waste operators, and the
//! statistics and flows made of them; the container registry, and the collections and overflows
//! analytics find in containers' readings.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_field, csv_response, format, json_response, parse_query, typed, Format};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tidemark_model::waste::{self, FlowRecord, Treatment, TreatmentSplit};
use tidemark_store::circular::{ContainerRefusal, FlowFilter, FlowRefusal, NewFlow};
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Times in the circular data bank's answers, to the second.
fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Most records one post may hold.
const MAX_RECORDS: usize = 10_000;
/// The largest quantity one record may state, in tonnes (well above a year of Denmark's waste).
const MAX_TONNES: f64 = 1e8;

/// One material-flow record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowBody {
    /// The first day of the period (`2025-01-01`).
    pub period_from: String,
    /// The last day of the period, inclusive (`2025-03-31`).
    pub period_to: String,
    /// The municipality code the waste came from.
    pub municipality: String,
    /// A European List of Waste code of chapter 15 01 or 20, such as `20 01 01`.
    pub waste_code: String,
    pub tonnes: f64,
    /// preparing_for_reuse, recycling, other_recovery (energy recovery included) or landfill.
    pub treatment: String,
    /// The receiving facility.
    pub facility: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowPost {
    pub records: Vec<FlowBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowPosted {
    /// The stored records' ids, in the order posted.
    pub ids: Vec<i64>,
}

fn date(field: &str, text: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| ApiError::bad(field, format!("{text:?} is not a date such as 2025-01-31")))
}

/// Checks one record; errors name the field as `records[i].field`.
fn validate(i: usize, r: &FlowBody) -> Result<NewFlow> {
    let field = |name: &str| format!("records[{i}].{name}");
    let period_from = date(&field("period_from"), &r.period_from)?;
    let period_to = date(&field("period_to"), &r.period_to)?;
    if period_to < period_from {
        return Err(ApiError::bad(
            &field("period_to"),
            "period_to is the period's last day, on or after period_from",
        ));
    }
    if (period_to - period_from).num_days() > 366 {
        return Err(ApiError::bad(
            &field("period_to"),
            "a record covers at most a year",
        ));
    }
    let code = waste::lookup(&r.waste_code).ok_or_else(|| {
        ApiError::bad(
            &field("waste_code"),
            format!(
                "{:?} is not a List of Waste code of chapter 15 01 or 20 (such as 20 01 01)",
                r.waste_code
            ),
        )
    })?;
    if !r.tonnes.is_finite() || r.tonnes < 0.0 || r.tonnes > MAX_TONNES {
        return Err(ApiError::bad(
            &field("tonnes"),
            format!("tonnes is a number from 0 to {MAX_TONNES}"),
        ));
    }
    let treatment = Treatment::parse(&r.treatment).ok_or_else(|| {
        ApiError::bad(
            &field("treatment"),
            "treatment is preparing_for_reuse, recycling, other_recovery or landfill",
        )
    })?;
    if r.facility.trim().is_empty() || r.facility.len() > 200 {
        return Err(ApiError::bad(
            &field("facility"),
            "name the receiving facility (at most 200 characters)",
        ));
    }
    Ok(NewFlow {
        period_from,
        period_to,
        municipality: r.municipality.clone(),
        waste_code: code.code.to_owned(),
        tonnes: r.tonnes,
        treatment: treatment.name().to_owned(),
        facility: r.facility.trim().to_owned(),
    })
}

/// `POST /api/v1/circular/material-flows`: stores a set of material-flow records, all or none.
#[utoipa::path(post, path = "/api/v1/circular/material-flows", tag = "circular", request_body = FlowPost,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored", body = FlowPosted),
        (status = 400, description = "A bad record; `parameter` names it and its field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a utility or operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A record overlaps a stored one", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_flows(
    State(state): State<ApiState>,
    caller: Caller,
    request: std::result::Result<Json<FlowPost>, JsonRejection>,
) -> Result<Response> {
    caller.require(&[Role::Utility, Role::Operator])?;
    let Json(post) = request.map_err(|e| ApiError::bad("body", e.body_text()))?;
    if post.records.is_empty() || post.records.len() > MAX_RECORDS {
        return Err(ApiError::bad(
            "records",
            format!("post 1 to {MAX_RECORDS} records"),
        ));
    }
    let flows: Vec<NewFlow> = post
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| validate(i, r))
        .collect::<Result<_>>()?;
    let audit = caller.actor().audit(
        "material_flows.post",
        format!("{} records", flows.len()),
        serde_json::json!({ "records": post.records }),
    );
    match state
        .store
        .post_material_flows(&flows, &caller.prefix, &audit)
        .await?
    {
        Ok(ids) => Ok((StatusCode::CREATED, Json(FlowPosted { ids })).into_response()),
        Err(FlowRefusal::UnknownMunicipality { index }) => Err(ApiError::bad(
            &format!("records[{index}].municipality"),
            format!("no municipality {:?}", flows[index].municipality),
        )),
        Err(FlowRefusal::Overlaps {
            index,
            existing: None,
        }) => Err(ApiError::bad(
            &format!("records[{index}].period_from"),
            "overlaps an earlier record of this post for the same municipality, code, treatment and facility",
        )),
        Err(FlowRefusal::Overlaps {
            index,
            existing: Some(id),
        }) => Err(ApiError::Conflict(format!(
            "records[{index}] overlaps stored record {id} for the same municipality, code, treatment and facility; a period is counted once"
        ))),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlowQuery {
    /// Only this municipality.
    pub municipality: Option<String>,
    /// Only this List of Waste code.
    pub waste_code: Option<String>,
    /// Records whose period overlaps `[from, to]` (dates).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Statistics: `year` (default), `quarter` or `month`, by each record's first day.
    pub period: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

fn filter(query: &FlowQuery) -> Result<FlowFilter> {
    let waste_code = match &query.waste_code {
        Some(code) => Some(
            waste::lookup(code)
                .ok_or_else(|| {
                    ApiError::bad("waste_code", format!("{code:?} is not a known code"))
                })?
                .code
                .to_owned(),
        ),
        None => None,
    };
    let from = query.from.as_deref().map(|t| date("from", t)).transpose()?;
    let to = query.to.as_deref().map(|t| date("to", t)).transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            return Err(ApiError::bad("to", "to must not be before from"));
        }
    }
    Ok(FlowFilter {
        municipality: query.municipality.clone(),
        waste_code,
        from,
        to,
    })
}

/// `GET /api/v1/circular/material-flows`: the stored records (JSON or CSV).
#[utoipa::path(get, path = "/api/v1/circular/material-flows", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Records, oldest period first", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn flows(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    if query.period.is_some() {
        return Err(ApiError::bad("period", "period applies to statistics"));
    }
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.material_flows(&filter(&query)?).await?;
    Ok(match format {
        Format::Csv => {
            let mut out = String::from(
                "id,period_from,period_to,municipality,waste_code,tonnes,treatment,facility,posted_at\n",
            );
            for r in &rows {
                let f = &r.flow;
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{}\n",
                    r.id,
                    f.period_from,
                    f.period_to,
                    csv_field(&f.municipality),
                    f.waste_code,
                    f.tonnes,
                    f.treatment,
                    csv_field(&f.facility),
                    stamp(r.posted_at),
                ));
            }
            typed("text/csv; charset=utf-8", out)
        }
        _ => json_response(&serde_json::json!({
            "records": rows.iter().map(|r| serde_json::json!({
                "id": r.id, "period_from": r.flow.period_from.to_string(), "period_to": r.flow.period_to.to_string(),
                "municipality": r.flow.municipality, "waste_code": r.flow.waste_code,
                "waste_name": waste::lookup(&r.flow.waste_code).map(|w| w.name),
                "tonnes": r.flow.tonnes, "treatment": r.flow.treatment, "facility": r.flow.facility,
                "posted_at": stamp(r.posted_at),
            })).collect::<Vec<_>>(),
        })),
    })
}

fn period_of(date: NaiveDate, period: &str) -> String {
    match period {
        "month" => format!("{}-{:02}", date.year(), date.month()),
        "quarter" => format!("{}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
        _ => date.year().to_string(),
    }
}

fn split_body(split: &TreatmentSplit) -> serde_json::Value {
    let tonnes: serde_json::Map<String, serde_json::Value> = Treatment::ALL
        .iter()
        .map(|t| {
            (
                t.name().to_owned(),
                serde_json::json!(split.tonnes.get(t).copied().unwrap_or(0.0)),
            )
        })
        .collect();
    serde_json::json!({
        "generated_tonnes": split.generated(),
        "treatment_tonnes": tonnes,
        "recycling_rate": split.recycling_rate(),
    })
}

fn records(rows: &[tidemark_store::circular::FlowRow]) -> Vec<(NaiveDate, FlowRecord)> {
    rows.iter()
        .filter_map(|r| {
            Some((
                r.flow.period_from,
                FlowRecord {
                    municipality: r.flow.municipality.clone(),
                    waste_code: r.flow.waste_code.clone(),
                    tonnes: r.flow.tonnes,
                    treatment: Treatment::parse(&r.flow.treatment)?,
                },
            ))
        })
        .collect()
}

/// `GET /api/v1/circular/statistics`: per municipality and period, the tonnes by treatment, the
/// recycling rate (prepared for reuse plus recycled, over generated) and the same by fraction,
/// oldest period first, so the trend reads down the list. As CSV, one row per municipality and
/// period (`waste_code` empty) followed by one per fraction.
#[utoipa::path(get, path = "/api/v1/circular/statistics", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Statistics by municipality and period", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn statistics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let period = query.period.as_deref().unwrap_or("year");
    if !["year", "quarter", "month"].contains(&period) {
        return Err(ApiError::bad("period", "period is year, quarter or month"));
    }
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.material_flows(&filter(&query)?).await?;
    let populations = state.store.populations().await?;
    let mut groups: BTreeMap<(String, String), Vec<FlowRecord>> = BTreeMap::new();
    for (first_day, record) in records(&rows) {
        groups
            .entry((period_of(first_day, period), record.municipality.clone()))
            .or_default()
            .push(record);
    }
    let items: Vec<serde_json::Value> = groups
        .iter()
        .map(|((period, municipality), records)| {
            let mut by_code: BTreeMap<&str, Vec<&FlowRecord>> = BTreeMap::new();
            for r in records {
                by_code.entry(r.waste_code.as_str()).or_default().push(r);
            }
            let split = TreatmentSplit::of(records.iter());
            let mut body = split_body(&split);
            body["period"] = serde_json::json!(period);
            body["municipality"] = serde_json::json!(municipality);
            let population = populations.get(municipality).copied();
            body["population"] = serde_json::json!(population);
            body["kg_per_capita"] = serde_json::json!(population
                .and_then(|p| u64::try_from(p).ok())
                .and_then(|p| split.per_capita_kg(p)));
            body["fractions"] = by_code
                .into_iter()
                .map(|(code, rs)| {
                    let mut f = split_body(&TreatmentSplit::of(rs));
                    f["waste_code"] = serde_json::json!(code);
                    f["waste_name"] = serde_json::json!(waste::lookup(code).map(|w| w.name));
                    f
                })
                .collect();
            body
        })
        .collect();
    // The trend: each period's recycling rate against the same municipality's previous period.
    let mut previous: BTreeMap<String, f64> = BTreeMap::new();
    let mut items = items;
    for item in &mut items {
        let municipality = item["municipality"].as_str().unwrap_or_default().to_owned();
        let rate = item["recycling_rate"].as_f64();
        item["recycling_rate_change"] = serde_json::json!(rate
            .zip(previous.get(&municipality))
            .map(|(now, before)| now - before));
        if let Some(rate) = rate {
            previous.insert(municipality, rate);
        }
    }
    if format == Format::Csv {
        return Ok(statistics_csv(&items));
    }
    Ok(json_response(
        &serde_json::json!({ "period": period, "statistics": items }),
    ))
}

/// The statistics as a table: a municipality's period, then its fractions.
fn statistics_csv(items: &[serde_json::Value]) -> Response {
    let mut header = vec![
        "period",
        "municipality",
        "waste_code",
        "waste_name",
        "generated_tonnes",
    ];
    header.extend(Treatment::ALL.iter().map(|t| t.name()));
    header.extend([
        "recycling_rate",
        "recycling_rate_change",
        "population",
        "kg_per_capita",
    ]);
    // Numbers as the other tables write them (100, not 100.0).
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        other => other.to_string(),
    };
    let row = |item: &serde_json::Value, total: &serde_json::Value| {
        let mut row = vec![
            text(&total["period"]),
            text(&total["municipality"]),
            text(&item["waste_code"]),
            text(&item["waste_name"]),
            text(&item["generated_tonnes"]),
        ];
        row.extend(
            Treatment::ALL
                .iter()
                .map(|t| text(&item["treatment_tonnes"][t.name()])),
        );
        row.push(text(&item["recycling_rate"]));
        // The trend and the per-capita figures belong to the municipality's whole period.
        let whole = std::ptr::eq(item, total);
        for field in ["recycling_rate_change", "population", "kg_per_capita"] {
            row.push(if whole {
                text(&total[field])
            } else {
                String::new()
            });
        }
        row
    };
    let rows = items.iter().flat_map(|total| {
        std::iter::once(row(total, total)).chain(
            total["fractions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |fraction| row(fraction, total)),
        )
    });
    csv_response(&header, rows)
}

/// `GET /api/v1/circular/flows`: tonnes from municipality to fraction to treatment, as the nodes
/// and links of a Sankey diagram (as CSV, the links: source, target, tonnes).
#[utoipa::path(get, path = "/api/v1/circular/flows", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Sankey nodes and links", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn sankey(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    if query.period.is_some() {
        return Err(ApiError::bad(
            "period",
            "flows take municipality, waste_code, from and to",
        ));
    }
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.material_flows(&filter(&query)?).await?;
    let records: Vec<FlowRecord> = records(&rows).into_iter().map(|(_, r)| r).collect();
    let links = waste::sankey(&records);
    if format == Format::Csv {
        return Ok(csv_response(
            &["source", "target", "tonnes"],
            links
                .iter()
                .map(|l| vec![l.source.clone(), l.target.clone(), l.tonnes.to_string()]),
        ));
    }
    let mut nodes: Vec<&str> = links
        .iter()
        .flat_map(|l| [l.source.as_str(), l.target.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Ok(json_response(&serde_json::json!({
        "nodes": nodes,
        "links": links.iter().map(|l| serde_json::json!({
            "source": l.source, "target": l.target, "tonnes": l.tonnes,
        })).collect::<Vec<_>>(),
    })))
}

/// The plain names a container's fraction may have.
const FRACTIONS: [&str; 10] = [
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
    if key.is_empty()
        || key.len() > 100
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad(
            "key",
            "a container key is 1 to 100 letters, digits, -, _ or .",
        ));
    }
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
        content(("application/json"), ("application/geo+json"), ("text/csv")))))]
pub async fn containers(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FormatQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, true)?;
    let rows = state.store.containers().await?;
    let states = state.store.container_states().await?;
    let bodies: Vec<serde_json::Value> = rows.iter().map(|c| {
            let s = states.get(&c.key);
            serde_json::json!({
                "key": c.key, "name": c.name, "lon": c.lon, "lat": c.lat,
                "capacity_litres": c.capacity_litres, "waste_code": c.waste_code,
                "waste_name": waste::lookup(&c.waste_code).map(|w| w.name), "fraction": c.fraction,
                "municipality": c.municipality, "fill_sensor": c.fill_sensor, "weight_sensor": c.weight_sensor,
                "fill_level": s.and_then(|s| s.fill).map(|f| f.0),
                "fill_at": s.and_then(|s| s.fill).map(|f| stamp(f.1)),
                "fill_rate_per_hour": s.and_then(|s| s.fill_rate_per_hour),
                "full_at": s.and_then(|s| s.full_at).map(stamp),
            })
        }).collect();
    Ok(match format {
        Format::GeoJson => {
            let features: Vec<serde_json::Value> = bodies
                .into_iter()
                .map(|b| {
                    serde_json::json!({
                        "type": "Feature",
                        "geometry": { "type": "Point", "coordinates": [b["lon"], b["lat"]] },
                        "properties": b,
                    })
                })
                .collect();
            let mut response = json_response(
                &serde_json::json!({ "type": "FeatureCollection", "features": features }),
            );
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/geo+json"),
            );
            response
        }
        Format::Csv => {
            let columns = [
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
            ];
            csv_response(
                &columns,
                bodies.iter().map(|b| {
                    columns
                        .iter()
                        .map(|c| match &b[*c] {
                            serde_json::Value::Null => String::new(),
                            serde_json::Value::String(text) => text.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                }),
            )
        }
        _ => json_response(&serde_json::json!({ "containers": bodies })),
    })
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

fn event_filter(q: &EventQuery) -> Result<tidemark_store::circular::EventFilter> {
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
        (status = 200, description = "Collections and a summary per container", content(("application/json"), ("text/csv"))),
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
    let summary: Vec<serde_json::Value> = per
        .iter()
        .map(|(key, cs)| {
            let n = cs.len() as f64;
            serde_json::json!({
                "container": key, "collections": cs.len(),
                "mean_fill_at_collection": cs.iter().map(|c| c.fill_before).sum::<f64>() / n,
                "partial": cs.iter().filter(|c| c.partial).count(),
                "near_empty": cs.iter().filter(|c| c.fill_before <= 30.0).count(),
                "full": cs.iter().filter(|c| c.fill_before >= 100.0).count(),
                "volume_litres": cs.iter().map(|c| c.volume_litres).sum::<f64>(),
                // From +0.0: an empty float sum is -0.0, which JSON would show.
                "mass_kg": cs.iter().filter_map(|c| c.mass_kg).fold(0.0, |sum, m| sum + m),
            })
        })
        .collect();
    Ok(json_response(&serde_json::json!({
        "summary": summary,
        "collections": rows.iter().map(|c| serde_json::json!({
            "container": c.container, "at": stamp(c.at), "fill_before": c.fill_before,
            "fill_after": c.fill_after, "partial": c.partial, "volume_litres": c.volume_litres,
            "mass_kg": c.mass_kg,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/circular/overflows`: spells containers stayed full for longer than allowed (two
/// hours); `until` is null while one lasts.
#[utoipa::path(get, path = "/api/v1/circular/overflows", tag = "circular", params(EventQuery),
    responses(
        (status = 200, description = "Overflow events", content(("application/json"), ("text/csv"))),
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
    Ok(json_response(&serde_json::json!({
        "overflows": rows.iter().map(|o| serde_json::json!({
            "container": o.container, "from": stamp(o.from), "until": o.until.map(stamp),
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PopulationBody {
    /// Inhabitants.
    pub population: i32,
}

/// `PUT /api/v1/municipalities/{code}/population`: gives a municipality's population, so that
/// waste statistics carry per-capita figures.
#[utoipa::path(put, path = "/api/v1/municipalities/{code}/population", tag = "management", request_body = PopulationBody,
    security(("api_key" = [])), params(("code" = String, Path, description = "The municipality code")),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such municipality", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_population(
    State(state): State<ApiState>,
    caller: Caller,
    axum::extract::Path(code): axum::extract::Path<String>,
    request: std::result::Result<Json<PopulationBody>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let Json(body) = request.map_err(|e| ApiError::bad("body", e.body_text()))?;
    if body.population < 1 {
        return Err(ApiError::bad(
            "population",
            "population is a whole number from 1",
        ));
    }
    let audit = caller.actor().audit(
        "population.put",
        format!("municipality {code}"),
        serde_json::json!({ "population": body.population }),
    );
    if state
        .store
        .set_population(&code, body.population, &audit)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("municipality {code}")))
    }
}

/// The circular data bank's routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(flows, post_flows))
        .routes(routes!(statistics))
        .routes(routes!(sankey))
        .routes(routes!(containers))
        .routes(routes!(put_container))
        .routes(routes!(collections))
        .routes(routes!(overflows))
        .routes(routes!(put_population))
}
