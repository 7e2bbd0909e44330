//! API keys over the API: create (shown once), list, revoke.

use super::common::body;
use crate::auth::{Caller, KeyScope};
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_store::keys::Role;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// researcher, utility, municipality, operator, producer or device.
    pub role: String,
    /// The municipality code a municipality key acts for; required for, and only for, that role.
    pub municipality: Option<String>,
    /// The forecast source a producer key posts for (an identifier such as `dmi`); required for,
    /// and only for, that role.
    pub source: Option<String>,
    /// The registered device (its key) a device key posts SensorThings Observations for;
    /// required for, and only for, that role.
    pub device: Option<String>,
    #[serde(default)]
    pub label: String,
    /// Lifetime such as `90d`; without it the key lasts until revoked.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    pub prefix: String,
    pub role: String,
    pub municipality: Option<String>,
    /// A producer key's forecast source.
    pub source: Option<String>,
    /// A device key's device.
    pub device: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key itself: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

pub(crate) fn key_body(row: tidemark_store::keys::ApiKeyRow, key: Option<String>) -> KeyBody {
    KeyBody {
        prefix: row.prefix,
        role: row.role.name().to_owned(),
        municipality: row.municipality,
        source: row.source,
        device: row.device,
        label: row.label,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        key,
    }
}

/// Creates an API key; the answer shows it once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "management", request_body = NewKey,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = KeyBody),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(state): State<ApiState>,
    caller: Caller,
    request: std::result::Result<Json<NewKey>, JsonRejection>,
) -> Result<Response> {
    caller.require(&[Role::Operator])?;
    let request = body(request)?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::bad(
            "role",
            "role must be researcher, utility, municipality, operator, producer or device",
        )
    })?;
    let scope = KeyScope {
        municipality: request.municipality,
        source: request.source,
        device: request.device,
    };
    if let Some((field, owner)) = scope.mismatch(role) {
        return Err(ApiError::bad(
            field,
            format!(
                "{field} is required for, and only for, a {} key",
                owner.name()
            ),
        ));
    }
    if let Some(device) = &scope.device {
        if state.store.device_enabled(device).await?.is_none() {
            return Err(ApiError::bad("device", format!("unknown device {device}")));
        }
    }
    if let Some(source) = &scope.source {
        tidemark_model::DeviceId::parse(source).map_err(|e| {
            ApiError::bad(
                "source",
                format!("source {source:?} is not an identifier: {e}"),
            )
        })?;
    }
    if request.label.chars().count() > 200 {
        return Err(ApiError::bad(
            "label",
            "the label may have at most 200 characters",
        ));
    }
    if let Some(code) = &scope.municipality {
        let unknown = state
            .store
            .unknown_municipalities(std::slice::from_ref(code))
            .await?;
        if !unknown.is_empty() {
            return Err(ApiError::bad(
                "municipality",
                format!("unknown municipality {code}"),
            ));
        }
    }
    let expires_at = match &request.expires_in {
        Some(text) => {
            let lifetime = tidemark_model::duration::parse(text)
                .map_err(|e| ApiError::bad("expires_in", e.to_string()))?;
            let lifetime = chrono::Duration::from_std(lifetime)
                .map_err(|_| ApiError::bad("expires_in", "expires_in is too long"))?;
            Some(Utc::now() + lifetime)
        }
        None => None,
    };
    let (key, row) = crate::auth::create_scoped_key(
        &state.store,
        role,
        scope,
        request.label,
        expires_at,
        &caller.actor(),
    )
    .await?;
    tracing::info!(key = %row.prefix, by = %caller.prefix, role = role.name(), "api key created");
    Ok((StatusCode::CREATED, Json(key_body(row, Some(key)))).into_response())
}

/// `GET /api/v1/keys`
#[utoipa::path(get, path = "/api/v1/keys", tag = "management", security(("api_key" = [])),
    responses(
        (status = 200, description = "Every key (never the keys themselves)", body = Vec<KeyBody>),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<KeyBody>>> {
    caller.require(&[Role::Operator])?;
    let keys = state.store.api_keys().await?;
    Ok(Json(keys.into_iter().map(|k| key_body(k, None)).collect()))
}

/// `DELETE /api/v1/keys/{prefix}`: revokes a key.
#[utoipa::path(delete, path = "/api/v1/keys/{prefix}", tag = "management", security(("api_key" = [])),
    params(("prefix" = String, Path, description = "The key's prefix (12 hex digits)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No active key with this prefix", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(prefix): Path<String>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let audit = caller
        .actor()
        .audit("key.revoke", format!("key {prefix}"), serde_json::json!({}));
    if !state
        .store
        .revoke_api_key(&prefix, Utc::now(), &audit)
        .await?
    {
        return Err(ApiError::NotFound(format!("an active key {prefix}")));
    }
    tracing::info!(key = %prefix, by = %caller.prefix, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}
