//! Material-flow records: posted as a whole or not at all, and listed.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_field, format, json_response, parse_query, typed, Format};
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::waste::{self, Treatment};
use tidemark_store::circular::{FlowFilter, FlowRefusal, NewFlow};
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};

/// Times in the circular data bank's answers, to the second.
pub(crate) fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// [`stamp`] for serde: `#[serde(serialize_with = "seconds")]`.
pub(crate) fn seconds<S: serde::Serializer>(
    t: &DateTime<Utc>,
    to: S,
) -> std::result::Result<S::Ok, S::Error> {
    to.serialize_str(&stamp(*t))
}

/// [`seconds`] for a time that may be missing.
pub(crate) fn seconds_or_null<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    to: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => seconds(t, to),
        None => to.serialize_none(),
    }
}

/// A stored material-flow record.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredFlow {
    pub id: i64,
    pub period_from: NaiveDate,
    /// The last day of the period, inclusive.
    pub period_to: NaiveDate,
    pub municipality: String,
    pub waste_code: String,
    pub waste_name: Option<&'static str>,
    pub tonnes: f64,
    /// `preparing_for_reuse`, `recycling`, `other_recovery` or `landfill`.
    pub treatment: String,
    pub facility: String,
    #[serde(serialize_with = "seconds")]
    pub posted_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoredFlowList {
    /// Oldest period first.
    pub records: Vec<StoredFlow>,
}

/// Most records one post may hold.
pub(crate) const MAX_RECORDS: usize = 10_000;

/// The largest quantity one record may state, in tonnes (well above a year of Denmark's waste).
pub(crate) const MAX_TONNES: f64 = 1e8;

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

pub(crate) fn date(field: &str, text: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| ApiError::bad(field, format!("{text:?} is not a date such as 2025-01-31")))
}

/// Checks one record; errors name the field as `records[i].field`.
pub(crate) fn validate(i: usize, r: &FlowBody) -> Result<NewFlow> {
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

pub(crate) fn filter(query: &FlowQuery) -> Result<FlowFilter> {
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
        (status = 200, description = "Records, oldest period first", content((StoredFlowList = "application/json"), (String = "text/csv"))),
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
        _ => json_response(&StoredFlowList {
            records: rows
                .into_iter()
                .map(|r| StoredFlow {
                    id: r.id,
                    period_from: r.flow.period_from,
                    period_to: r.flow.period_to,
                    waste_name: waste::lookup(&r.flow.waste_code).map(|w| w.name),
                    municipality: r.flow.municipality,
                    waste_code: r.flow.waste_code,
                    tonnes: r.flow.tonnes,
                    treatment: r.flow.treatment,
                    facility: r.flow.facility,
                    posted_at: r.posted_at,
                })
                .collect(),
        }),
    })
}
