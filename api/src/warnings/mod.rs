//! Warnings over HTTP: the list and one warning with its history (JSON), its CAP 1.2 message, the
//! Atom feed of current alerts, and acknowledgement by a municipality.

pub mod cap;
pub mod forecasts;
pub mod sse;
pub mod verification;
pub mod webhooks;

use crate::auth::Caller;
use crate::body::{AreaRef, EventBody, Messages};
use crate::http::problem::{ApiError, PathId, Result};
use crate::http::state_filter;
use crate::state::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::warning::{alert_topic, Category, WarningKind, WarningState};
use tidemark_store::events::{Acknowledged, WarningFilter, WarningRow};
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most warnings one list returns.
const LIST_LIMIT: i64 = 500;

/// Longest acknowledgement note, in characters.
const NOTE_LIMIT: usize = 2000;

#[derive(Debug, Serialize, ToSchema)]
pub struct WarningBody {
    pub id: i64,
    pub area: AreaRef,
    /// 1 (Flood Alert) to 3 (Severe Flood Warning); for a drought area, 1 (Drought Alert) to 3
    /// (Severe Drought Warning).
    pub severity: i16,
    pub severity_name: &'static str,
    /// `flood`, or `drought` for an area whose levels fall to their thresholds.
    pub category: Category,
    pub kind: WarningKind,
    /// In force, or lifted ("no longer in force").
    pub state: WarningState,
    pub raised_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub stale: bool,
    pub municipalities: Vec<String>,
    pub acknowledged_by: Vec<String>,
    pub message: Messages,
    pub links: Links,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<EventBody>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub cap: String,
    pub ack: String,
}

pub(crate) fn warning_body(
    summary: WarningRow,
    base: &str,
    history: Option<Vec<EventBody>>,
) -> WarningBody {
    let this = format!("{base}/api/v1/warnings/{}", summary.id);
    WarningBody {
        id: summary.id,
        area: AreaRef {
            key: summary.area_key,
            name: summary.area_name,
        },
        severity: summary.severity.level(),
        severity_name: summary.category.severity_name(summary.severity),
        category: summary.category,
        kind: summary.kind,
        state: summary.state,
        raised_at: summary.raised_at,
        changed_at: summary.changed_at,
        lifted_at: summary.lifted_at,
        stale: summary.stale,
        municipalities: summary.municipalities,
        acknowledged_by: summary.acknowledged_by,
        message: Messages {
            en: summary.message_en,
            da: summary.message_da,
        },
        links: Links {
            cap: format!("{this}.cap"),
            ack: format!("{this}/ack"),
            this,
        },
        history,
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// in_force (the default), lifted, or all.
    pub state: Option<String>,
    /// Only warnings sent to this municipality (code).
    pub municipality: Option<String>,
    /// Only this flood area (key).
    pub area: Option<String>,
}

/// Warnings, newest first.
#[utoipa::path(get, path = "/api/v1/warnings", operation_id = "list_warnings", tag = "warnings", params(ListQuery),
    responses(
        (status = 200, description = "Warnings", body = WarningList),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<ApiState>,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<WarningList>> {
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let wanted = state_filter(query.state.as_deref())?;
    let rows = state
        .store
        .warning_list(&WarningFilter {
            state: wanted,
            municipality: query.municipality,
            area: query.area,
            id: None,
            limit: LIST_LIMIT,
        })
        .await?;
    let base = state.settings.base_url();
    let warnings: Vec<WarningBody> = rows
        .into_iter()
        .map(|w| warning_body(w, base, None))
        .collect();
    Ok(Json(WarningList { warnings }))
}

#[utoipa::path(get, path = "/api/v1/warnings/{id}", operation_id = "get_warning", tag = "warnings",
    params(("id" = String, Path, description = "The warning's id; with `.cap` appended, the CAP 1.2 message of its latest event")),
    responses(
        (status = 200, description = "The warning with its history, or its CAP message",
            content((WarningBody = "application/json"), (String = "application/cap+xml"))),
        (status = 404, description = "No such warning", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/warnings/{id}` (JSON with history) and `GET /api/v1/warnings/{id}.cap`.
pub async fn one(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response> {
    let (number, as_cap) = match id.strip_suffix(".cap") {
        Some(number) => (number, true),
        None => (id.as_str(), false),
    };
    let id: i64 = number
        .parse()
        .map_err(|_| ApiError::bad("id", format!("{number:?} is not a warning id")))?;
    let summary = state
        .store
        .warning_list(&WarningFilter {
            id: Some(id),
            limit: 1,
            ..WarningFilter::default()
        })
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("warning {id}")))?;
    if as_cap {
        let event = summary
            .latest_event
            .ok_or_else(|| ApiError::NotFound(format!("an event of warning {id}")))?;
        return cap_response(&state, event).await;
    }
    let base = state.settings.base_url();
    let history = state
        .store
        .warning_history(id)
        .await?
        .iter()
        .map(|e| e.body(base))
        .collect();
    Ok(Json(warning_body(summary, base, Some(history))).into_response())
}

#[utoipa::path(get, path = "/api/v1/warning-events/{file}", tag = "warnings",
    params(("file" = String, Path, description = "`<event id>.cap`")),
    responses(
        (status = 200, description = "The event's CAP 1.2 message", body = String, content_type = "application/cap+xml"),
        (status = 404, description = "No such event", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/warning-events/{id}.cap`
pub async fn event_cap(
    State(state): State<ApiState>,
    Path(file): Path<String>,
) -> Result<Response> {
    let id: i64 = file
        .strip_suffix(".cap")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::NotFound(format!("{file}: CAP messages are at <event id>.cap")))?;
    cap_response(&state, id).await
}

async fn cap_response(state: &ApiState, event_id: i64) -> Result<Response> {
    let not_found = || ApiError::NotFound(format!("warning event {event_id}"));
    let event = state
        .store
        .warning_event(event_id)
        .await?
        .filter(|e| cap::is_public(e) && e.category.is_area())
        .ok_or_else(not_found)?;
    let history = state.store.warning_history(event.warning_id).await?;
    let (polygon, municipalities) = state
        .store
        .area_geometry(&event.subject_key)
        .await?
        .ok_or_else(not_found)?;
    let municipalities: Vec<(String, String)> = municipalities
        .into_iter()
        .filter(|(code, _)| event.municipalities.contains(code))
        .collect();
    let xml = cap::alert(
        &state.settings.cap,
        &event,
        &history,
        &polygon,
        &municipalities,
    );
    Ok(([(header::CONTENT_TYPE, cap::CAP_CONTENT_TYPE)], xml).into_response())
}

#[utoipa::path(get, path = "/api/v1/warnings.atom", tag = "warnings",
    responses((status = 200, description = "Atom feed of the warnings in force, each entry linking its CAP message",
        body = String, content_type = "application/atom+xml")))]
/// `GET /api/v1/warnings.atom`: the warnings in force, newest change first.
pub async fn atom(State(state): State<ApiState>) -> Result<Response> {
    let current = state
        .store
        .warning_list(&WarningFilter {
            state: Some(WarningState::InForce),
            limit: LIST_LIMIT,
            ..WarningFilter::default()
        })
        .await?;
    let mut events = Vec::new();
    for warning in current {
        if let Some(id) = warning.latest_event {
            if let Some(event) = state.store.warning_event(id).await? {
                events.push(event);
            }
        }
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.recorded_at));
    let entries: Vec<cap::FeedEntry<'_>> = events
        .iter()
        .map(|event| cap::FeedEntry { event })
        .collect();
    let xml = cap::atom_feed(&state.settings.cap, &entries, Utc::now());
    Ok(([(header::CONTENT_TYPE, "application/atom+xml")], xml).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// A note for the history ("evacuation of Skibbroen started").
    pub note: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResponse {
    pub warning_id: i64,
    /// The acknowledged event's id.
    pub event_id: i64,
    pub municipality: String,
    /// False when this municipality had already acknowledged the warning since its last change.
    pub new: bool,
}

#[utoipa::path(post, path = "/api/v1/warnings/{id}/ack", tag = "warnings",
    params(("id" = i64, Path, description = "The warning's id")),
    request_body(content = Option<AckRequest>, description = "An optional note", content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Acknowledged", body = AckResponse),
        (status = 200, description = "Already acknowledged by this municipality since the last change", body = AckResponse),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a municipality key, or not a municipality the warning went to", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such warning", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The warning is no longer in force", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `POST /api/v1/warnings/{id}/ack`, by a municipality key.
pub async fn acknowledge(
    State(state): State<ApiState>,
    caller: Caller,
    PathId(id): PathId,
    body: std::result::Result<Option<Json<AckRequest>>, JsonRejection>,
) -> Result<Response> {
    caller.require(&[Role::Municipality])?;
    let request = body
        .map_err(|e| ApiError::bad("body", e.body_text()))?
        .map(|Json(r)| r)
        .unwrap_or_default();
    let note = request.note.unwrap_or_default();
    if note.chars().count() > NOTE_LIMIT {
        return Err(ApiError::bad(
            "note",
            format!("the note may have at most {NOTE_LIMIT} characters"),
        ));
    }
    let municipality = caller
        .municipality
        .clone()
        .ok_or_else(|| ApiError::Forbidden("this key acts for no municipality".to_owned()))?;
    // The key's prefix goes to the log, not into the public history.
    let detail = serde_json::json!({
        "municipality": municipality,
        "note": note,
    });
    let prefix = &state.settings.topic_prefix;
    let outcome = state
        .store
        .acknowledge(id, &municipality, &detail, Utc::now(), |area, codes| {
            codes
                .iter()
                .map(|code| alert_topic(prefix, code, area))
                .collect()
        })
        .await?;
    let (event_id, new) = match outcome {
        Acknowledged::Recorded(event) => (event, true),
        Acknowledged::Already(event) => (event, false),
        Acknowledged::NoSuchWarning => return Err(ApiError::NotFound(format!("warning {id}"))),
        Acknowledged::Lifted => {
            return Err(ApiError::Conflict(format!(
                "warning {id} is no longer in force"
            )))
        }
        Acknowledged::NotConcerned => {
            return Err(ApiError::Forbidden(format!(
                "warning {id} was not sent to municipality {municipality}"
            )))
        }
    };
    tracing::info!(warning = id, event = event_id, %municipality, key = %caller.prefix, new, "warning acknowledged");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(AckResponse {
            warning_id: id,
            event_id,
            municipality,
            new,
        }),
    )
        .into_response())
}

/// `GET /api/v1/warnings`
#[derive(Serialize, ToSchema)]
pub struct WarningList {
    pub warnings: Vec<WarningBody>,
}

/// The warnings' routes (JSON, CAP, Atom, the event stream, acknowledgement) and the webhook
/// subscriptions', each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(atom))
        .routes(routes!(sse::stream))
        .routes(routes!(one))
        .routes(routes!(acknowledge))
        .routes(routes!(event_cap))
        .routes(routes!(verification::verification))
        .routes(routes!(forecasts::post_forecast))
        .routes(routes!(forecasts::sensor_forecasts))
        .routes(routes!(webhooks::list, webhooks::register))
        .routes(routes!(webhooks::one, webhooks::delete))
        .routes(routes!(webhooks::rotate))
}
