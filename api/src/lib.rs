//! The HTTP API and the delivery of warnings.
//!
//! # Layout
//!
//! - [`ApiConfig`]: the `[api]` section; [`ApiSettings`] what the handlers use of it.
//! - [`ops_router`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`api_router`]: the `/api/v1` routes, with [`ApiState`], and the map dashboard.
//! - [`dashboard`]: the map dashboard's page and assets at `/`, embedded when the crate is built.
//! - [`opendata`]: stations, latest values, raw and aggregated readings (JSON, CSV, GeoJSON).
//! - [`warnings`]: warnings as JSON, CAP 1.2 and Atom; acknowledgement.
//! - [`webhooks`]: registering and managing webhook endpoints.
//! - [`sse`]: the Server-Sent Events stream and its [`sse::Hub`].
//! - [`delivery`]: the outbox dispatcher, webhooks (signing, verifying, the address guard) and
//!   retained MQTT alerts.
//! - [`cap`]: CAP 1.2 messages, the Atom feed, and the CAP 1.2 rule checker.
//! - [`caching`]: ETags and 304 answers for the public GET endpoints.
//! - [`freshness`]: `Last-Modified` and `If-Modified-Since`, from the changes the database announces.
//! - [`body`]: the JSON of a warning event on every channel.
//! - [`auth`]: API keys and the [`auth::Caller`] extractor.
//! - `parquet_export` (feature `parquet`): raw readings as Apache Parquet, streamed by row group.
//! - [`openapi`]: the OpenAPI 3.1 document (utoipa) and its documentation page.
//! - [`rate_limit`]: per-client token buckets, `429` with `Retry-After`.
//! - [`circular`]: material-flow records, recycling statistics and Sankey flows.
//! - [`utilities`]: a meter's summary (mean, peak) and load-duration curve.
//! - [`manage`]: API keys, devices, stations and sensors over the API, and the audit log.
//! - [`latest_cache`]: the unfiltered latest values, kept ready between batches.
//! - [`http_metrics`]: request latency by route, for `/metrics`.
//! - [`error`]: [`error::ApiError`] as `application/problem+json`.
//! - [`run`]: binds and serves until shutdown.

pub mod auth;
pub mod body;
pub mod caching;
pub mod cap;
pub mod circular;
pub mod dashboard;
pub mod error;
pub mod freshness;
pub mod http_metrics;
pub mod latest_cache;
pub mod manage;
pub mod openapi;
pub mod opendata;
#[cfg(feature = "parquet")]
pub mod parquet_export;
pub mod rate_limit;
pub mod sse;
pub mod utilities;
pub mod warnings;
pub mod webhooks;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::duration;
use tidemark_model::network::{Network, TargetPolicy};
use tidemark_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL the public reaches the API at, for links in warnings, CAP messages and feeds.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// CAP `sender`: an address that names this Tidemark installation (no spaces or commas).
    #[serde(default = "default_cap_sender")]
    pub cap_sender: String,
    /// A CAP alert expires this long after it was sent unless updated.
    #[serde(default = "default_cap_expires", with = "duration::serde_str")]
    pub cap_expires: Duration,
    /// Interval of the comment lines that keep idle Server-Sent Event streams open through proxies.
    #[serde(default = "default_sse_heartbeat", with = "duration::serde_str")]
    pub sse_heartbeat: Duration,
    /// Requests a minute to `/api/v1` per client address without an API key.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// Requests a minute per valid API key.
    #[serde(default = "default_keyed_rate_limit")]
    pub keyed_rate_limit_per_minute: u32,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client for the
    /// rate limits. Empty: every client is counted by the address it connects from.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Server-Sent Event streams open at once, in all.
    #[serde(default = "default_sse_max_streams")]
    pub sse_max_streams: usize,
    /// Server-Sent Event streams open at once per client address (an IPv6 client by its /64).
    #[serde(default = "default_sse_max_streams_per_client")]
    pub sse_max_streams_per_client: usize,
    /// Serve `/metrics`, `/readyz` and `/healthz` on this address instead of `listen` (a private
    /// interface, say). Unset: on `listen`, beside the API.
    #[serde(default)]
    pub ops_listen: Option<String>,
}

const fn default_sse_max_streams() -> usize {
    1000
}
const fn default_sse_max_streams_per_client() -> usize {
    20
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".to_owned()
}
fn default_cap_sender() -> String {
    "tidemark@localhost".to_owned()
}
const fn default_cap_expires() -> Duration {
    Duration::from_secs(6 * 3600)
}
const fn default_sse_heartbeat() -> Duration {
    Duration::from_secs(15)
}
const fn default_rate_limit() -> u32 {
    600
}
const fn default_keyed_rate_limit() -> u32 {
    6000
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            public_url: default_public_url(),
            cap_sender: default_cap_sender(),
            cap_expires: default_cap_expires(),
            sse_heartbeat: default_sse_heartbeat(),
            rate_limit_per_minute: default_rate_limit(),
            keyed_rate_limit_per_minute: default_keyed_rate_limit(),
            trusted_proxies: Vec::new(),
            sse_max_streams: default_sse_max_streams(),
            sse_max_streams_per_client: default_sse_max_streams_per_client(),
            ops_listen: None,
        }
    }
}

impl ApiConfig {
    /// Checks what can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "api.public_url {:?} must start with http:// or https://",
                self.public_url
            ));
        }
        if self.cap_sender.is_empty() || self.cap_sender.contains([' ', ',', '<', '&']) {
            return Err(format!(
                "api.cap_sender {:?} must be non-empty without spaces, commas, < or &",
                self.cap_sender
            ));
        }
        if self.sse_heartbeat.is_zero() {
            return Err("api.sse_heartbeat must be positive".to_owned());
        }
        if self.rate_limit_per_minute == 0 || self.keyed_rate_limit_per_minute == 0 {
            return Err(
                "api.rate_limit_per_minute and api.keyed_rate_limit_per_minute must be positive"
                    .to_owned(),
            );
        }
        self.proxies()?;
        if self.sse_max_streams == 0 || self.sse_max_streams_per_client == 0 {
            return Err(
                "api.sse_max_streams and api.sse_max_streams_per_client must be positive"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn proxies(&self) -> Result<Vec<Network>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| Network::parse(p).map_err(|e| format!("api.trusted_proxies: {e}")))
            .collect()
    }
}

/// What the `/api/v1` handlers need besides the store.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: String,
    pub cap: cap::CapSettings,
    pub sse_heartbeat: Duration,
    /// The MQTT topic prefix (alerts go to `<prefix>/alerts/...`).
    pub topic_prefix: String,
    /// Where webhooks may point.
    pub policy: Arc<TargetPolicy>,
    /// How long a rotated-out webhook secret keeps signing.
    pub rotation_grace: Duration,
    pub rate_limit_per_minute: u32,
    pub keyed_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
    pub sse_max_streams: usize,
    pub sse_max_streams_per_client: usize,
}

impl ApiSettings {
    /// `policy` says where webhooks may point and `rotation_grace` how long a rotated-out secret
    /// keeps signing: the delivery stage's rules, which registration checks against.
    pub fn new(
        api: &ApiConfig,
        policy: TargetPolicy,
        rotation_grace: Duration,
        topic_prefix: &str,
    ) -> Result<ApiSettings, String> {
        api.validate()?;
        let public_url = api.public_url.trim_end_matches('/').to_owned();
        Ok(ApiSettings {
            cap: cap::CapSettings {
                sender: api.cap_sender.clone(),
                public_url: public_url.clone(),
                expires_after: api.cap_expires,
            },
            public_url,
            sse_heartbeat: api.sse_heartbeat,
            topic_prefix: topic_prefix.to_owned(),
            policy: Arc::new(policy),
            rotation_grace,
            rate_limit_per_minute: api.rate_limit_per_minute,
            keyed_rate_limit_per_minute: api.keyed_rate_limit_per_minute,
            trusted_proxies: api.proxies()?,
            sse_max_streams: api.sse_max_streams,
            sse_max_streams_per_client: api.sse_max_streams_per_client,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.public_url
    }
}

/// The state of the `/api/v1` routes.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub settings: Arc<ApiSettings>,
    pub hub: sse::Hub,
    pub limiter: Arc<rate_limit::RateLimiter>,
    pub latest: Arc<latest_cache::LatestCache>,
    pub freshness: Arc<freshness::Freshness>,
    /// The Server-Sent Event streams open, by client.
    pub streams: Arc<sse::Streams>,
}

impl ApiState {
    /// The state, with its caches kept current from `database` until `shutdown`.
    pub fn new(
        store: Store,
        settings: ApiSettings,
        hub: sse::Hub,
        database: &tidemark_store::DatabaseConfig,
        shutdown: CancellationToken,
    ) -> ApiState {
        let latest = latest_cache::LatestCache::start(database.clone(), shutdown.clone());
        let freshness = freshness::Freshness::start(database.clone(), shutdown);
        let limiter = Arc::new(rate_limit::RateLimiter::new(
            settings.rate_limit_per_minute,
            settings.keyed_rate_limit_per_minute,
        ));
        let streams = Arc::new(sse::Streams::new(
            settings.sse_max_streams,
            settings.sse_max_streams_per_client,
        ));
        ApiState {
            store,
            settings: Arc::new(settings),
            hub,
            limiter,
            latest,
            freshness,
            streams,
        }
    }
}

/// The `/api/v1` routes.
pub fn api_router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/api/v1/docs", get(openapi::docs))
        .route("/api/v1/stations", get(opendata::stations))
        .route(
            "/api/v1/stations/{key}",
            get(opendata::station).put(manage::put_station),
        )
        .route("/api/v1/devices/{key}", put(manage::put_device))
        .route("/api/v1/sensors/{key}", put(manage::put_sensor))
        .route(
            "/api/v1/keys",
            get(manage::list_keys).post(manage::create_key),
        )
        .route("/api/v1/keys/{prefix}", delete(manage::revoke_key))
        .route("/api/v1/thresholds/{sensor}", put(manage::put_threshold))
        .route("/api/v1/rain-rules", get(manage::rain_rules))
        .route("/api/v1/quality-rules", get(manage::quality_rules))
        .route(
            "/api/v1/quality-rules/{sensor}",
            put(manage::put_quality_rule),
        )
        .route(
            "/api/v1/circular/material-flows",
            get(circular::flows).post(circular::post_flows),
        )
        .route("/api/v1/circular/statistics", get(circular::statistics))
        .route("/api/v1/circular/flows", get(circular::sankey))
        .route("/api/v1/circular/containers", get(circular::containers))
        .route(
            "/api/v1/circular/containers/{key}",
            put(circular::put_container),
        )
        .route("/api/v1/circular/collections", get(circular::collections))
        .route("/api/v1/circular/overflows", get(circular::overflows))
        .route(
            "/api/v1/utilities/sensors/{key}/summary",
            get(utilities::summary),
        )
        .route(
            "/api/v1/utilities/sensors/{key}/load-duration",
            get(utilities::load_duration),
        )
        .route(
            "/api/v1/utilities/sensors/{key}/night-flow",
            get(utilities::night_flow),
        )
        .route(
            "/api/v1/utilities/leak-rules/{sensor}",
            put(utilities::put_leak_rule),
        )
        .route("/api/v1/utilities/leaks", get(utilities::leaks))
        .route("/api/v1/utilities/alerts", get(utilities::alerts))
        .route("/api/v1/utilities/alerts/{id}", get(utilities::alert))
        .route("/api/v1/utilities/consumption", get(utilities::consumption))
        .route(
            "/api/v1/utilities/self-consumption",
            get(utilities::self_consumption),
        )
        .route("/api/v1/rain-rules/{sensor}", put(manage::put_rain_rules))
        .route("/api/v1/flood-areas", get(opendata::flood_areas))
        .route("/api/v1/flood-areas/{key}", put(manage::put_flood_area))
        .route("/api/v1/audit", get(manage::audit))
        .route("/api/v1/latest", get(opendata::latest))
        .route("/api/v1/municipalities", get(opendata::municipalities))
        .route("/api/v1/municipalities/{code}", get(opendata::municipality))
        .route(
            "/api/v1/municipalities/{code}/population",
            put(circular::put_population),
        )
        .route("/api/v1/sensors/{key}/readings", get(opendata::readings))
        .route("/api/v1/warnings", get(warnings::list))
        .route("/api/v1/warnings.atom", get(warnings::atom))
        .route("/api/v1/warnings/stream", get(sse::stream))
        .route("/api/v1/warnings/{id}", get(warnings::one))
        .route("/api/v1/warnings/{id}/ack", post(warnings::acknowledge))
        .route("/api/v1/warning-events/{file}", get(warnings::event_cap))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::register),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::one).delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate),
        )
        .merge(dashboard::router())
        .fallback(|| async { error::ApiError::NotFound("this resource".to_owned()) })
        .layer(axum::middleware::from_fn(caching::etag))
        .layer(axum::middleware::from_fn_with_state(
            state.freshness.clone(),
            freshness::last_modified,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
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
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
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
