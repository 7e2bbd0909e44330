//! The operational routes: `/healthz` (the process answers), `/readyz` (database, broker and the
//! TimescaleDB jobs) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::Store;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the operational endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    pub broker: BrokerConfig,
    pub registry: Arc<Registry>,
}

/// `/healthz` (the process answers), `/readyz` (database and broker reachable) and `/metrics`.
pub fn ops_router(state: OpsState) -> Router {
    let (router, _) = routes().split_for_parts();
    router.with_state(state)
}

/// The operational routes with their documentation.
pub fn routes() -> OpenApiRouter<OpsState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The database and the broker are reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "The database or the broker is unreachable", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz(State(state): State<OpsState>) -> Response {
    let database = state.store.ping().await;
    let broker_addr = format!("{}:{}", state.broker.host, state.broker.port);
    let broker = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&broker_addr)
        )
        .await,
        Ok(Ok(_))
    );
    let mut body = format!(
        "database: {}\nbroker: {}\n",
        if database { "ok" } else { "unreachable" },
        if broker { "ok" } else { "unreachable" }
    );
    // TimescaleDB's background jobs: a failing one is reported, not fatal (Tidemark's maintenance
    // runs it itself), so that operators see that the scheduler needs attention.
    if let Ok(jobs) = state.store.timescale_jobs().await {
        let failing: Vec<String> = jobs
            .iter()
            .filter(|j| j.failing())
            .map(|j| {
                format!(
                    "{} (job {}, {} of {} runs failed: {})",
                    j.proc_name,
                    j.job_id,
                    j.total_failures,
                    j.total_runs,
                    j.last_error.as_deref().unwrap_or("no error recorded")
                )
            })
            .collect();
        if !jobs.is_empty() {
            body.push_str(&if failing.is_empty() {
                "timescaledb jobs: ok\n".to_owned()
            } else {
                format!(
                    "timescaledb jobs: failing in the scheduler, run by Tidemark's maintenance \
                     instead: {}\n",
                    failing.join("; ")
                )
            });
        }
    }
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        tracing::error!(%error, "cannot encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
