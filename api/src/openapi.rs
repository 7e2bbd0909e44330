//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations, and the
//! documentation page that renders it (written for Tidemark, with no outside assets, so it works
//! on a closed network).

use crate::body::EventBody;
use crate::state::ApiState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("An API key from `tidemark keys create`: `Bearer tmk_...` (or the password of Basic credentials, for clients that speak only Basic)".to_owned());
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// The answers every operation may give besides its own: 400 for a bad parameter or body where it
/// takes any, and 429 from the rate limit on every `/api/v1` route.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                if takes_input && !responses.contains_key("400") {
                    responses.insert(
                        "400".to_owned(),
                        problem("A bad parameter or body, named in the problem's `parameter`")
                            .into(),
                    );
                }
                if path.starts_with("/api/v1/") && !responses.contains_key("429") {
                    responses.insert(
                        "429".to_owned(),
                        problem("Over the rate limit; `Retry-After` says when to try again").into(),
                    );
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidemark API",
        description = "Flood warnings and open data from Tidemark: stations, readings, warnings (JSON, CAP 1.2, Atom, Server-Sent Events) and webhook subscriptions. Errors are application/problem+json (RFC 9457).",
        license(name = "Apache-2.0"),
    ),
    components(schemas(EventBody, crate::http::problem::Problem)),
    tags(
        (name = "open data", description = "Stations, readings and municipalities; public"),
        (name = "warnings", description = "Flood warnings and their delivery"),
        (name = "webhooks", description = "Webhook subscriptions; API key required"),
        (name = "management", description = "Keys, devices, stations, sensors and the audit log; API key required"),
        (name = "circular", description = "The circular data bank: material flows, recycling statistics, Sankey flows"),
        (name = "utilities", description = "Meter statistics: summaries with peaks, load-duration curves"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

/// The document, built once per call (cheap: it is assembled from static parts).
/// Every documented route of the API: the resources' routers, and the document with its page.
/// Routes and their documentation come from here alone ([`document`] reads the same).
pub fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes())
        .merge(crate::opendata::routes())
        .merge(crate::warnings::routes())
        .merge(crate::manage::routes())
        .merge(crate::circular::routes())
        .merge(crate::utilities::routes())
        .merge(crate::sta::routes())
}

/// The document of every route, assembled from the routers that serve them: a route and its
/// documentation are registered together (`utoipa_axum::routes!`), so neither can go missing.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = documented_routes().split_for_parts();
    let (_, ops) = crate::ops::routes().split_for_parts();
    doc.merge(ops);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    ApiKeyScheme.modify(&mut doc);
    CommonResponses.modify(&mut doc);
    doc
}

/// The document's JSON, made once.
fn document_json() -> &'static Result<String, String> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| document().to_json().map_err(|e| e.to_string()))
}

/// The document and its page.
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json() -> Response {
    match document_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot serialise the OpenAPI document");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A page that renders the OpenAPI document for people.
#[utoipa::path(get, path = "/api/v1/docs", tag = "operations",
    responses((status = 200, description = "The documentation page", body = String, content_type = "text/html")))]
pub async fn docs() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../assets/docs.html"),
    )
        .into_response()
}
