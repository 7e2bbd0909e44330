//! Errors of the HTTP API as `application/problem+json` (RFC 9457). The body names what went wrong
//! and, for a bad request, the offending parameter; internals are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        /// The parameter or field at fault.
        parameter: Option<String>,
        detail: String,
    },
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}; try again shortly")]
    Unavailable(&'static str),
    #[error("more than {0} requests a minute; wait as Retry-After says, or use an API key for a higher limit")]
    TooManyRequests(u32),
    #[error(
        "this client already has {0} event streams open; close one, or wait as Retry-After says"
    )]
    TooManyStreams(usize),
    /// A well-formed request for something this server does not implement (501).
    #[error("{detail}")]
    NotImplemented {
        parameter: Option<String>,
        detail: String,
    },
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the database is unavailable")]
    Store(tidemark_store::Error),
    /// A fault of this server; the cause is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl From<tidemark_store::Error> for ApiError {
    /// A value the database refused is the request's fault (400); anything else is the
    /// database's (503).
    fn from(error: tidemark_store::Error) -> ApiError {
        match error.bad_input() {
            Some(message) => ApiError::BadRequest {
                parameter: None,
                detail: format!("a value in the request cannot be used as given: {message}"),
            },
            None => ApiError::Store(error),
        }
    }
}

impl ApiError {
    pub fn bad(parameter: &str, detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            parameter: Some(parameter.to_owned()),
            detail: detail.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) | ApiError::TooManyStreams(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// A problem details body (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Store(cause) => {
                tracing::error!(error = %cause, "request failed in the store");
                "the database is unavailable; try again later".to_owned()
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                "the server failed to answer; try again later".to_owned()
            }
            other => other.to_string(),
        };
        let parameter = match &self {
            ApiError::BadRequest { parameter, .. } | ApiError::NotImplemented { parameter, .. } => {
                parameter.clone()
            }
            _ => None,
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            parameter,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // When to try again, for a server that is full or starting and for a client with all its
        // streams open (the rate limit sets its own).
        if matches!(self, ApiError::Unavailable(_) | ApiError::TooManyStreams(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        if matches!(self, ApiError::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tidemark\""),
            );
        }
        response
    }
}

/// A numeric id from the path (`/webhooks/{id}`); one that is not a number that fits is a
/// problem naming `id`, like every other bad parameter, rather than the router's plain text.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub i64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<PathId, ApiError> {
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad("id", e.body_text()))?;
        text.parse()
            .map(PathId)
            .map_err(|_| ApiError::bad("id", format!("{text:?} is not an id")))
    }
}
