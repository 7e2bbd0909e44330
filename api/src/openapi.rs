//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations, and the
//! documentation page that renders it (written for Tidemark, with no outside assets, so it works
//! on a closed network).

use crate::body::EventBody;
use crate::opendata::{LatestItem, StationBody};
use crate::warnings::WarningBody;
use crate::webhooks::WebhookBody;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `GET /api/v1/stations`
#[derive(Serialize, ToSchema)]
pub struct StationList {
    pub stations: Vec<StationBody>,
}

/// `GET /api/v1/latest`
#[derive(Serialize, ToSchema)]
pub struct LatestList {
    pub sensors: Vec<LatestItem>,
}

/// One raw reading.
#[derive(Serialize, ToSchema)]
pub struct RawItem {
    pub ts: String,
    pub value: f64,
    /// Quality flags: 0 good, 1 suspect (device), 2 bad (device), 256 spike, 512 stuck, 1024 out of range.
    pub quality: i16,
    pub received_at: String,
}

/// One bucket of aggregated readings; the aggregates asked for (`avg`, `min`, `max`, `sum`, `count`,
/// `first`, `last`) appear as fields, null where a bucket has no value.
#[derive(Serialize, ToSchema)]
pub struct BucketItem {
    pub start: String,
    /// Readings left out because their quality flags make them unusable.
    pub flagged: i64,
    /// The OR of the quality flags of the readings aggregated.
    pub quality: i16,
    /// measured, flagged (only unusable readings), empty, or interpolated.
    pub state: String,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: Option<f64>,
    pub count: Option<i64>,
    pub first: Option<f64>,
    pub last: Option<f64>,
}

/// `GET /api/v1/sensors/{key}/readings`: `readings` and `next` for raw readings; `bucket`, `from`,
/// `to` and `buckets` when aggregated.
#[derive(Serialize, ToSchema)]
pub struct ReadingsPage {
    pub sensor: String,
    pub quantity: String,
    pub unit: String,
    pub readings: Option<Vec<RawItem>>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
    pub bucket: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub buckets: Option<Vec<BucketItem>>,
}

#[derive(Serialize, ToSchema)]
pub struct MunicipalityLinks {
    #[serde(rename = "self")]
    pub this: String,
}

#[derive(Serialize, ToSchema)]
pub struct MunicipalitySummary {
    pub code: String,
    pub name: String,
    pub links: MunicipalityLinks,
}

/// `GET /api/v1/municipalities`
#[derive(Serialize, ToSchema)]
pub struct MunicipalityList {
    pub municipalities: Vec<MunicipalitySummary>,
}

/// `GET /api/v1/municipalities/{code}`
#[derive(Serialize, ToSchema)]
pub struct MunicipalityDetail {
    pub code: String,
    pub name: String,
    pub stations: Vec<StationBody>,
    /// The warnings in force for it.
    pub warnings: Vec<serde_json::Value>,
    /// GeoJSON MultiPolygon.
    pub boundary: serde_json::Value,
}

/// `GET /api/v1/warnings`
#[derive(Serialize, ToSchema)]
pub struct WarningList {
    pub warnings: Vec<WarningBody>,
}

/// `GET /api/v1/webhooks`
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookBody>,
}

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("An API key from `tidemark keys create`: `Bearer tmk_...`".to_owned());
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
    paths(
        crate::opendata::stations,
        crate::opendata::station,
        crate::opendata::latest,
        crate::opendata::readings,
        crate::opendata::municipalities,
        crate::opendata::municipality,
        crate::warnings::list,
        crate::warnings::atom,
        crate::sse::stream,
        crate::warnings::one,
        crate::warnings::acknowledge,
        crate::warnings::event_cap,
        crate::webhooks::register,
        crate::webhooks::list,
        crate::webhooks::one,
        crate::webhooks::delete,
        crate::webhooks::rotate,
        crate::manage::create_key,
        crate::manage::list_keys,
        crate::manage::revoke_key,
        crate::manage::put_device,
        crate::manage::put_station,
        crate::manage::put_sensor,
        crate::manage::put_threshold,
        crate::manage::put_rain_rules,
        crate::manage::rain_rules,
        crate::manage::put_quality_rule,
        crate::manage::quality_rules,
        crate::circular::post_flows,
        crate::circular::flows,
        crate::circular::statistics,
        crate::circular::sankey,
        crate::circular::put_container,
        crate::circular::put_population,
        crate::circular::containers,
        crate::circular::collections,
        crate::circular::overflows,
        crate::utilities::summary,
        crate::utilities::load_duration,
        crate::utilities::put_leak_rule,
        crate::utilities::night_flow,
        crate::utilities::leaks,
        crate::utilities::alerts,
        crate::utilities::alert,
        crate::utilities::consumption,
        crate::utilities::self_consumption,
        crate::manage::put_flood_area,
        crate::opendata::flood_areas,
        crate::manage::audit,
        openapi_json,
        docs,
        crate::healthz,
        crate::readyz,
        crate::metrics,
    ),
    components(schemas(EventBody, crate::error::Problem)),
    modifiers(&ApiKeyScheme, &CommonResponses),
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
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json() -> Response {
    match document().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route(...)` in the routers, with the methods it answers, read from the source.
    fn routes() -> Vec<(String, Vec<&'static str>)> {
        let source = include_str!("lib.rs");
        let mut routes = Vec::new();
        let parts: Vec<&str> = source.split(".route(").skip(1).collect();
        for part in parts {
            let part = part.split(".fallback(").next().unwrap_or(part);
            let path = part
                .split('"')
                .nth(1)
                .expect("a route starts with its path");
            let methods = ["get", "post", "delete", "put"]
                .into_iter()
                .filter(|m| part.contains(&format!("{m}(")) || part.contains(&format!(".{m}(")))
                .collect();
            routes.push((path.to_owned(), methods));
        }
        routes
    }

    #[test]
    fn every_route_in_the_routers_is_documented_with_its_methods() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let routes = routes();
        assert!(routes.len() >= 20, "{routes:?}");
        for (path, methods) in routes {
            let item = &doc["paths"][&path];
            assert!(item.is_object(), "{path} is not in the OpenAPI document");
            for method in methods {
                assert!(
                    item[method].is_object(),
                    "{method} {path} is not documented"
                );
            }
        }
    }
}
