//! The HTTP API, by resource.
//!
//! # Layout
//!
//! - [`state`]: [`ApiConfig`] (the `[api]` section), [`ApiSettings`] and [`ApiState`].
//! - [`api_router`]: the `/api/v1` routes, from [`openapi::documented_routes`], with their
//!   middleware, and the map dashboard; [`ops_router`]: `/healthz`, `/readyz`, `/metrics`.
//! - Resources, each a folder with its `routes()`: [`opendata`], [`warnings`] (with [`cap`],
//!   [`sse`] and [`webhooks`]), [`manage`], [`circular`], [`utilities`].
//! - [`sta`]: the OGC SensorThings API v1.1 (read) under `/sta/v1.1`.
//! - [`http`]: formats, query parsing, CSV and JSON answers; [`http::problem`] the
//!   `application/problem+json` errors.
//! - [`body`]: the warning vocabulary as the API spells it.
//! - [`auth`]: API keys and the [`auth::Caller`] extractor.
//! - [`openapi`]: the OpenAPI 3.1 document and its documentation page.
//! - Middleware: [`rate_limit`], [`freshness`] (`Last-Modified`), [`caching`] (ETags),
//!   [`http_metrics`].
//! - [`dashboard`]: the map dashboard's page and assets at `/`, embedded when the crate is built.
//! - [`run`] and [`serve`]: bind and serve until shutdown.

pub mod auth;
pub mod body;
pub mod caching;
pub mod circular;
pub mod dashboard;
pub mod freshness;
pub mod http;
pub mod http_metrics;
pub mod hub;
pub mod manage;
pub mod openapi;
pub mod opendata;
pub mod ops;
pub mod rate_limit;
pub mod sta;
pub mod state;
pub mod utilities;
pub mod warnings;

pub use ops::{healthz, metrics, ops_router, readyz, OpsState};
pub use state::{ApiConfig, ApiSettings, ApiState};
pub use warnings::{cap, sse, webhooks};

use axum::http::header;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The `/api/v1` routes.
pub fn api_router(state: ApiState) -> Router {
    let (routes, _) = openapi::documented_routes().split_for_parts();
    routes
        .merge(dashboard::router())
        .fallback(|| async { http::problem::ApiError::NotFound("this resource".to_owned()) })
        .layer(axum::middleware::from_fn(caching::etag))
        .layer(axum::middleware::from_fn_with_state(
            state.freshness.clone(),
            freshness::last_modified,
        ))
        .layer(axum::middleware::from_fn_with_state(
            rate_limit::Limits {
                limiter: state.limiter.clone(),
                store: state.store.clone(),
                trusted_proxies: std::sync::Arc::new(state.settings.trusted_proxies.clone()),
            },
            rate_limit::limit,
        ))
        // Compressed when the client accepts gzip (streams too, chunk by chunk); readable from
        // browser pages on other origins, with the headers paging and caching use exposed.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([
                    axum::http::Method::GET,
                    axum::http::Method::POST,
                    axum::http::Method::DELETE,
                    axum::http::Method::PUT,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::ACCEPT,
                    header::IF_NONE_MATCH,
                    header::IF_MODIFIED_SINCE,
                    axum::http::HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([
                    header::ETAG,
                    header::LAST_MODIFIED,
                    header::LINK,
                    header::RETRY_AFTER,
                    axum::http::HeaderName::from_static("ratelimit-limit"),
                    axum::http::HeaderName::from_static("ratelimit-remaining"),
                    axum::http::HeaderName::from_static("ratelimit-reset"),
                ]),
        )
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
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
    // The peer's address is what rate limits key anonymous clients by.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Events and streamed pages go out as soon as they are written, not held back by Nagle's
    // algorithm waiting for the client's delayed acknowledgement.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, service)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}
