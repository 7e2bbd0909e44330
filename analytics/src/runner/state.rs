//! What the runner holds: its settings, errors, metrics, and the model of the configuration it
//! reloads when the setup changes.

use super::config::AnalyticsConfig;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use tidemark_store::circular::ContainerRow;
use tidemark_store::flood::{FloodSetup, QualityRuleRow};
use tidemark_store::reference::SensorInfo;
use tidemark_store::water::LeakRuleRow;
use tidemark_store::{DatabaseConfig, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("analytics cannot start: {0}")]
    Store(#[from] tidemark_store::Error),
}

pub struct Metrics {
    pub evaluations: Counter,
    pub events: Counter,
    pub failures: Counter,
    pub evaluation_seconds: Histogram,
    /// Readings read from the database for evaluations, and those kept between them.
    pub series_readings_read: Counter,
    pub series_readings_kept: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            evaluations: Counter::default(),
            events: Counter::default(),
            failures: Counter::default(),
            evaluation_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            series_readings_read: Counter::default(),
            series_readings_kept: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("tidemark_analytics");
        sub.register(
            "evaluations",
            "Flood area evaluations",
            metrics.evaluations.clone(),
        );
        sub.register("events", "Warning events recorded", metrics.events.clone());
        sub.register(
            "failures",
            "Evaluations that failed",
            metrics.failures.clone(),
        );
        sub.register(
            "evaluation_seconds",
            "Time to evaluate an area and record its events",
            metrics.evaluation_seconds.clone(),
        );
        sub.register(
            "series_readings_read",
            "Readings read from the database for evaluations",
            metrics.series_readings_read.clone(),
        );
        sub.register(
            "series_readings_kept",
            "Readings kept between evaluations",
            metrics.series_readings_kept.clone(),
        );
        metrics
    }
}

/// Everything the runner needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub analytics: AnalyticsConfig,
    pub database: DatabaseConfig,
    /// The MQTT topic prefix alerts are published under (by delivery, from the outbox).
    pub topic_prefix: String,
}

/// What the runner knows of the configuration, reloaded when an unknown sensor shows up.
pub(crate) struct Model {
    /// Quality rules of sensors outside the flood setup (meters, containers).
    pub(crate) quality_rules: Vec<QualityRuleRow>,
    /// The container registry, whose readings give collections and overflows.
    pub(crate) containers: Vec<ContainerRow>,
    /// Leak rules of water district meters.
    pub(crate) leak_rules: Vec<LeakRuleRow>,
    pub(crate) setup: FloodSetup,
    pub(crate) sensors: HashMap<String, SensorInfo>,
    pub(crate) by_id: HashMap<i32, String>,
}

impl Model {
    pub(crate) async fn load(store: &Store) -> Result<Model, tidemark_store::Error> {
        let setup = store.flood_setup().await?;
        let catalog = store.sensor_catalog().await?;
        Ok(Model {
            setup,
            quality_rules: store.quality_rules().await?,
            containers: store.containers().await?,
            leak_rules: store.leak_rules().await?,
            by_id: catalog.iter().map(|s| (s.id, s.key.clone())).collect(),
            sensors: catalog.into_iter().map(|s| (s.key.clone(), s)).collect(),
        })
    }

    /// The areas a sensor's readings affect: those holding it, and those downstream of it.
    pub(crate) fn areas_of(&self, sensor: &str) -> Vec<String> {
        self.setup
            .areas
            .iter()
            .filter(|a| a.sensors.iter().any(|s| s == sensor))
            .map(|a| a.key.clone())
            .chain(
                self.setup
                    .links
                    .iter()
                    .filter(|l| l.upstream_sensor == sensor)
                    .map(|l| l.downstream_area.clone()),
            )
            .collect()
    }
}

/// Before any reading Tidemark keeps (and well inside what PostgreSQL's timestamps hold).
pub(crate) const HISTORY_START: DateTime<Utc> = DateTime::UNIX_EPOCH;
