//! Webhook endpoints over HTTP: register (the signing secret is shown once), list, show, delete,
//! rotate the secret. Municipality keys see and manage only their own municipality's endpoints,
//! utility keys only their own, operator keys all.

use crate::auth::Caller;
use crate::http::problem::{ApiError, PathId, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::network::{TargetError, TargetPolicy};
use tidemark_model::warning::{Category, Severity};
use tidemark_store::keys::Role;
use tidemark_store::webhooks::new_secret;
use tidemark_store::webhooks::{NewWebhook, WebhookRow};
use utoipa::ToSchema;

/// Longest accepted webhook URL.
const URL_LIMIT: usize = 2048;

/// Most filter entries (municipalities or areas) on one endpoint.
const FILTER_LIMIT: usize = 200;

const MANAGERS: &[Role] = &[Role::Municipality, Role::Utility, Role::Operator];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Municipality codes; empty for all (a municipality key gets its own).
    #[serde(default)]
    pub municipalities: Vec<String>,
    /// Flood area keys; empty for all.
    #[serde(default)]
    pub areas: Vec<String>,
    /// 1 (Flood Alert, the default), 2 or 3; applies to flood warnings.
    #[serde(default = "lowest_severity")]
    pub min_severity: i16,
    /// What to receive: `flood` (flood warnings, the default) and/or `leak` (utility alerts for
    /// suspected leaks in water networks).
    #[serde(default = "flood_only")]
    pub categories: Vec<String>,
}

fn lowest_severity() -> i16 {
    1
}

fn flood_only() -> Vec<String> {
    vec![crate::body::FLOOD.to_owned()]
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookBody {
    pub id: i64,
    pub url: String,
    pub description: String,
    pub municipalities: Vec<String>,
    pub areas: Vec<String>,
    /// 1 (Flood Alert) to 3 (Severe Flood Warning).
    pub min_severity: i16,
    pub categories: Vec<Category>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// Only in the answer to registration and rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// During a rotation, until when the previous secret also signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

impl WebhookBody {
    fn new(row: WebhookRow, show_secret: bool) -> WebhookBody {
        WebhookBody {
            id: row.id,
            url: row.url,
            description: row.description,
            municipalities: row.municipalities,
            areas: row.areas,
            min_severity: row.min_severity.level(),
            categories: row.categories,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            disabled_reason: row.disabled_reason,
            secret: show_secret.then_some(row.secret),
            previous_secret_valid_until: show_secret.then_some(row.previous_until).flatten(),
        }
    }
}

fn visible(caller: &Caller, row: &WebhookRow) -> bool {
    match caller.role {
        Role::Operator => true,
        Role::Municipality => row.owner_municipality == caller.municipality,
        _ => row.owner_key == caller.key_id,
    }
}

/// Registers a webhook endpoint; the answer shows its signing secret, once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = Registration,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Registered", body = WebhookBody),
        (status = 400, description = "A bad field, or an address webhooks may not reach", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key's role or municipality does not allow it", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<ApiState>,
    caller: Caller,
    body: std::result::Result<Json<Registration>, JsonRejection>,
) -> Result<Response> {
    caller.require(MANAGERS)?;
    let Json(mut request) = body.map_err(|e| ApiError::bad("body", e.body_text()))?;
    if request.url.len() > URL_LIMIT {
        return Err(ApiError::bad(
            "url",
            format!("the URL may have at most {URL_LIMIT} bytes"),
        ));
    }
    if request.description.chars().count() > 500 {
        return Err(ApiError::bad(
            "description",
            "the description may have at most 500 characters",
        ));
    }
    let min_severity = Severity::from_level(request.min_severity)
        .ok_or_else(|| ApiError::bad("min_severity", "min_severity must be 1, 2 or 3"))?;
    if request.municipalities.len() > FILTER_LIMIT || request.areas.len() > FILTER_LIMIT {
        return Err(ApiError::bad(
            "municipalities",
            format!("at most {FILTER_LIMIT} municipalities and {FILTER_LIMIT} areas"),
        ));
    }
    let mut categories = request
        .categories
        .iter()
        .map(|c| Category::parse(c))
        .collect::<Option<Vec<Category>>>()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            let all: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
            ApiError::bad(
                "categories",
                format!("categories must be one or more of {}", all.join(", ")),
            )
        })?;
    categories.sort();
    categories.dedup();
    check_registration(&state.settings.policy, &request.url)
        .await
        .map_err(|refused| ApiError::bad("url", refused.to_string()))?;
    if let Some(own) = &caller.municipality {
        if request.municipalities.iter().any(|m| m != own) {
            return Err(ApiError::Forbidden(format!(
                "a key of municipality {own} can only subscribe to its own warnings"
            )));
        }
        request.municipalities = vec![own.clone()];
    }
    request.municipalities.sort();
    request.municipalities.dedup();
    request.areas.sort();
    request.areas.dedup();
    let unknown = state
        .store
        .unknown_municipalities(&request.municipalities)
        .await?;
    if !unknown.is_empty() {
        return Err(ApiError::bad(
            "municipalities",
            format!("unknown municipality codes: {}", unknown.join(", ")),
        ));
    }
    let unknown = state.store.unknown_areas(&request.areas).await?;
    if !unknown.is_empty() {
        return Err(ApiError::bad(
            "areas",
            format!("unknown flood areas: {}", unknown.join(", ")),
        ));
    }
    let audit = caller.actor().audit(
        "webhook.create",
        String::new(),
        serde_json::json!({
            "url": request.url, "municipalities": request.municipalities, "areas": request.areas,
            "min_severity": request.min_severity, "categories": categories,
        }),
    );
    let row = state
        .store
        .create_webhook(
            &NewWebhook {
                owner_key: caller.key_id,
                owner_municipality: caller.municipality.clone(),
                url: request.url,
                description: request.description,
                municipalities: request.municipalities,
                areas: request.areas,
                min_severity,
                categories,
                secret: new_secret(),
            },
            &audit,
        )
        .await?;
    tracing::info!(webhook = row.id, key = %caller.prefix, "webhook registered");
    Ok((StatusCode::CREATED, Json(WebhookBody::new(row, true))).into_response())
}

/// The caller's webhook endpoints (an operator's: all).
#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks", security(("api_key" = [])),
    responses(
        (status = 200, description = "Webhooks", body = WebhookList),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key's role does not allow it", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<WebhookList>> {
    caller.require(MANAGERS)?;
    let rows = state.store.webhooks(caller.municipality.as_deref()).await?;
    let hooks: Vec<WebhookBody> = rows
        .into_iter()
        .filter(|row| visible(&caller, row))
        .map(|row| WebhookBody::new(row, false))
        .collect();
    Ok(Json(WebhookList { webhooks: hooks }))
}

/// The caller's webhook `id`, or 404 (also for someone else's: its existence is not disclosed).
async fn owned(state: &ApiState, caller: &Caller, id: i64) -> Result<WebhookRow> {
    caller.require(MANAGERS)?;
    state
        .store
        .webhook(id)
        .await?
        .filter(|row| visible(caller, row))
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id}")))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "The webhook's id")),
    responses(
        (status = 200, description = "The webhook", body = WebhookBody),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `GET /api/v1/webhooks/{id}`
pub async fn one(
    State(state): State<ApiState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<WebhookBody>> {
    Ok(Json(WebhookBody::new(
        owned(&state, &caller, id).await?,
        false,
    )))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "The webhook's id")),
    responses(
        (status = 204, description = "Deleted; its pending deliveries are given up"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `DELETE /api/v1/webhooks/{id}`
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode> {
    owned(&state, &caller, id).await?;
    let audit = caller.actor().audit(
        "webhook.delete",
        format!("webhook {id}"),
        serde_json::json!({}),
    );
    state.store.delete_webhook(id, Utc::now(), &audit).await?;
    tracing::info!(webhook = id, key = %caller.prefix, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "The webhook's id")),
    responses(
        (status = 200, description = "The new secret, shown once; the old one signs beside it for the grace period", body = WebhookBody),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
/// `POST /api/v1/webhooks/{id}/rotate-secret`
pub async fn rotate(
    State(state): State<ApiState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<WebhookBody>> {
    owned(&state, &caller, id).await?;
    let grace = chrono::Duration::from_std(state.settings.rotation_grace).unwrap_or_default();
    let row = state
        .store
        .rotate_webhook_secret(
            id,
            &new_secret(),
            Utc::now() + grace,
            &caller.actor().audit(
                "webhook.rotate-secret",
                format!("webhook {id}"),
                serde_json::json!({}),
            ),
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id}")))?;
    tracing::info!(webhook = id, key = %caller.prefix, "webhook secret rotated");
    Ok(Json(WebhookBody::new(row, true)))
}

/// Checks a webhook URL and every address its host resolves to, as registration does (the
/// delivery stage checks the addresses again on every connection).
pub async fn check_registration(policy: &TargetPolicy, url: &str) -> Result<url::Url, TargetError> {
    let parsed = policy.check_url(url)?;
    if let Some(url::Host::Domain(host)) = parsed.host() {
        let port = parsed.port_or_known_default().unwrap_or(443);
        let ips: Vec<std::net::IpAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| TargetError::Unresolved(host.to_owned()))?
            .map(|a| a.ip())
            .collect();
        policy.check_resolved(host, &ips)?;
    }
    Ok(parsed)
}

/// `GET /api/v1/webhooks`
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookBody>,
}
