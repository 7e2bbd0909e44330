//! A municipality's population, which per-person statistics divide by.

use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tidemark_store::keys::Role;
use utoipa::ToSchema;

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
