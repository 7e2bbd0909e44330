//! The HTTP API. For now it serves what operators need to run Tidemark: health, readiness and
//! Prometheus metrics. The open data and warning endpoints grow here.
//!
//! # Layout
//!
//! - [`ApiConfig`]: the `[api]` section.
//! - [`ops_router`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`run`]: binds and serves until shutdown.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What the operational endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    pub broker: BrokerConfig,
    pub registry: Arc<Registry>,
}

/// `/healthz` (the process answers), `/readyz` (database and broker reachable) and `/metrics`.
pub fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> Response {
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
    let body = format!(
        "database: {}\nbroker: {}\n",
        if database { "ok" } else { "unreachable" },
        if broker { "ok" } else { "unreachable" }
    );
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
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

/// Binds `config.listen` and serves `router` until `shutdown` is cancelled.
pub async fn run(
    config: ApiConfig,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|cause| Error::Bind {
            addr: config.listen.clone(),
            cause,
        })?;
    serve(listener, router, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}
