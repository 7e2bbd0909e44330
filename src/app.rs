//! The CLI's commands as functions, so that tests start the stages exactly as `main` does.

use crate::config::Config;
use anyhow::Context;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tidemark_analytics::geography::Municipalities;
use tidemark_analytics::setup;
use tidemark_api::{ApiState, OpsState};
use tidemark_ingest::Metrics;
use tidemark_store::{StorageMode, Store};
use tokio_util::sync::CancellationToken;

/// Migrates the database (creating it if needed) and loads the reference and flood files.
pub async fn migrate(config: &Config) -> anyhow::Result<StorageMode> {
    let mode = tidemark_store::schema::migrate(&config.database).await?;
    load_reference(config).await?;
    load_flood(config).await?;
    Ok(mode)
}

/// Loads the municipality layer and the flood files, working out each area's municipalities.
pub async fn load_flood(config: &Config) -> anyhow::Result<()> {
    let analytics = &config.analytics;
    let path = analytics.municipalities.display().to_string();
    let text = tokio::fs::read_to_string(&analytics.municipalities)
        .await
        .with_context(|| format!("reading the municipality layer {path}"))?;
    let layer = Municipalities::from_geojson(&text).with_context(|| format!("reading {path}"))?;
    let store = Store::connect(&config.database).await?;
    store
        .replace_municipalities(&setup::municipality_rows(&layer))
        .await?;
    let positions = store
        .sensor_catalog()
        .await?
        .into_iter()
        .filter_map(|s| Some((s.key, s.position?)))
        .collect();
    let files: Vec<String> = analytics
        .flood_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let flood = setup::load(
        &files,
        &layer,
        analytics.nearest_municipality_km,
        &positions,
    )?;
    store.apply_flood_setup(&flood).await?;
    tracing::info!(
        municipalities = layer.by_code.len(),
        areas = flood.areas.len(),
        thresholds = flood.thresholds.len(),
        "flood setup loaded"
    );
    Ok(())
}

/// Loads every configured reference file into the database.
pub async fn load_reference(config: &Config) -> anyhow::Result<()> {
    if config.reference.files.is_empty() {
        return Ok(());
    }
    let store = Store::connect(&config.database).await?;
    for file in &config.reference.files {
        let path = file.display().to_string();
        let data = tidemark_store::reference::read_file(&path)?;
        store.apply_reference(&data).await?;
        tracing::info!(
            file = %path,
            devices = data.devices.len(),
            stations = data.stations.len(),
            sensors = data.sensors.len(),
            "reference data loaded"
        );
    }
    Ok(())
}

/// The ingest stage alone, with its own `/metrics`, `/healthz` and `/readyz` on
/// `ingest.metrics_listen`.
pub async fn ingest(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = tidemark_api::ApiConfig {
        listen: config.ingest.metrics_listen.clone(),
        ..config.api.clone()
    };
    serve_stages(config, listen, Stages::INGEST, shutdown).await
}

/// The HTTP API and the delivery of warnings, without ingest or analytics.
pub async fn api(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve_stages(config, config.api.clone(), Stages::API, shutdown).await
}

/// The analytics stage alone, with its own `/metrics`, `/healthz` and `/readyz` on
/// `analytics.metrics_listen`. Several may share a database.
pub async fn analytics(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = tidemark_api::ApiConfig {
        listen: config.analytics.metrics_listen.clone(),
        ..config.api.clone()
    };
    serve_stages(config, listen, Stages::ANALYTICS, shutdown).await
}

/// The delivery stage alone, with its own `/metrics`, `/healthz` and `/readyz` on
/// `delivery.metrics_listen`. Several may share a database.
pub async fn delivery(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = tidemark_api::ApiConfig {
        listen: config.delivery.metrics_listen.clone(),
        ..config.api.clone()
    };
    serve_stages(config, listen, Stages::DELIVERY, shutdown).await
}

/// Every stage in one process: migrate, then ingest, analytics, the API and delivery side by side.
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mode = migrate(config).await?;
    tracing::info!(%mode, "storage ready");
    serve_stages(config, config.api.clone(), Stages::ALL, shutdown).await
}

/// Which stages a process runs beside its HTTP server.
#[derive(Debug, Clone, Copy)]
struct Stages {
    ingest: bool,
    analytics: bool,
    api: bool,
    delivery: bool,
}

impl Stages {
    const NONE: Stages = Stages {
        ingest: false,
        analytics: false,
        api: false,
        delivery: false,
    };
    const INGEST: Stages = Stages {
        ingest: true,
        ..Stages::NONE
    };
    const ANALYTICS: Stages = Stages {
        analytics: true,
        ..Stages::NONE
    };
    const DELIVERY: Stages = Stages {
        delivery: true,
        ..Stages::NONE
    };
    const API: Stages = Stages {
        api: true,
        delivery: true,
        ..Stages::NONE
    };
    const ALL: Stages = Stages {
        ingest: true,
        analytics: true,
        api: true,
        delivery: true,
    };
}

/// The stages asked for, beside an HTTP server on `listen` that serves the shared metrics
/// registry (and the `/api/v1` routes when the API stage runs).
async fn serve_stages(
    config: &Config,
    listen: tidemark_api::ApiConfig,
    stages: Stages,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let analytics_metrics = Arc::new(tidemark_analytics::runner::Metrics::register(&mut registry));
    let delivery_metrics = Arc::new(tidemark_delivery::Metrics::register(&mut registry));
    let http_metrics = tidemark_api::http_metrics::HttpMetrics::register(&mut registry);
    let store = Store::connect(&config.database).await?;
    let mut api_routes = None;
    if stages.api {
        let settings = config.api_settings().map_err(anyhow::Error::msg)?;
        let hub =
            tidemark_api::sse::Hub::start(store.clone(), config.database.clone(), shutdown.clone());
        let state = ApiState::new(
            store.clone(),
            settings,
            hub,
            &config.database,
            shutdown.clone(),
        );
        state.written.register(&mut registry);
        api_routes = Some(tidemark_api::api_router(state));
    }
    let ops = tidemark_api::ops_router(OpsState {
        store,
        broker: config.mqtt.clone(),
        registry: Arc::new(registry),
    });
    // The operational routes go beside the API, or on an address of their own.
    let (router, ops_apart) = match (api_routes, listen.ops_listen.clone()) {
        (Some(api_routes), Some(ops_listen)) => (api_routes, Some((ops, ops_listen))),
        (Some(api_routes), None) => (ops.merge(api_routes), None),
        (None, _) => (ops, None),
    };
    let router = tidemark_api::http_metrics::instrument(router, http_metrics.clone());
    // Whichever stage ends first (an error, or shutdown) brings the others down, and all are
    // awaited, so that ingest always finishes the batches in hand.
    let http = async {
        let result = tidemark_api::run(listen.clone(), router, shutdown.clone()).await;
        shutdown.cancel();
        result
    };
    let ops_http = async {
        let Some((ops, ops_listen)) = ops_apart else {
            return Ok(());
        };
        let ops = tidemark_api::http_metrics::instrument(ops, http_metrics);
        let ops_config = tidemark_api::ApiConfig {
            listen: ops_listen,
            ..listen.clone()
        };
        let result = tidemark_api::run(ops_config, ops, shutdown.clone()).await;
        shutdown.cancel();
        result
    };
    let ingest = async {
        if !stages.ingest {
            return Ok(());
        }
        let result =
            tidemark_ingest::run(config.ingest_settings(), metrics, shutdown.clone()).await;
        shutdown.cancel();
        result
    };
    let analytics = async {
        if !stages.analytics {
            return Ok(());
        }
        let result = tidemark_analytics::runner::run(
            config.analytics_settings(),
            analytics_metrics,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        result
    };
    let delivery = async {
        if !stages.delivery {
            return Ok(());
        }
        let result = tidemark_delivery::run(
            config.delivery_settings(),
            delivery_metrics,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        result
    };
    let (http, ops_http, ingest, analytics, delivery) =
        tokio::join!(http, ops_http, ingest, analytics, delivery);
    ingest?;
    analytics?;
    delivery?;
    http?;
    ops_http?;
    Ok(())
}

/// Cancels on Ctrl-C or SIGTERM.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Structured logs to standard error, filtered by `RUST_LOG` (info by default).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
