//! What the management routes share: who may edit reference data, and reading a JSON body.

use crate::http::problem::{ApiError, Result};
use axum::extract::rejection::JsonRejection;
use axum::Json;
use tidemark_store::keys::Role;

pub(crate) const REFERENCE_EDITORS: &[Role] = &[Role::Operator, Role::Utility];

pub(crate) fn body<T>(body: std::result::Result<Json<T>, JsonRejection>) -> Result<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad("body", e.body_text()))
}
