//! Per-route HTTP metrics: a latency histogram by method, route template and status class, so that
//! `/metrics` shows which endpoint is slow without one series per URL.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

type RouteLabels = Vec<(&'static str, String)>;

/// Seconds from a request's arrival to its response headers (for a stream, to its start).
pub struct HttpMetrics {
    pub request_seconds: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Arc<HttpMetrics> {
        let metrics = HttpMetrics {
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
        };
        registry.sub_registry_with_prefix("tidemark_http").register(
            "request_seconds",
            "Seconds from a request's arrival to its response, by method, route and status class",
            metrics.request_seconds.clone(),
        );
        Arc::new(metrics)
    }
}

async fn track(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template ("/api/v1/stations/{key}"), never the raw path, bounds the series.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    let labels = vec![("method", method), ("route", route), ("status", class)];
    metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Times every request `router` answers.
pub fn instrument(router: Router, metrics: Arc<HttpMetrics>) -> Router {
    router.route_layer(axum::middleware::from_fn_with_state(metrics, track))
}
