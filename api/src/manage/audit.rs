//! The audit log of management actions.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_store::keys::Role;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many entries, newest first (1 to 10,000; default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditBody {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The acting key's prefix, or `cli`.
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// `GET /api/v1/audit`: management actions, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "management", params(AuditQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Audit entries", body = Vec<AuditBody>),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn audit(
    State(state): State<ApiState>,
    caller: Caller,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditBody>>> {
    caller.require(&[Role::Operator])?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad("limit", "limit must be 1 to 10000"));
    }
    let rows = state.store.audit_log(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditBody {
                id: r.id,
                at: r.at,
                actor: r.actor,
                role: r.role,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    ))
}
