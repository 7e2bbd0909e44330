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
use tidemark_store::flood::{AreaRow, FloodSetup, LinkRow, QualityRuleRow, ThresholdRow};
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
    /// Readings evaluations took anew, rather than going on from an earlier evaluation.
    pub readings_evaluated: Counter,
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
            readings_evaluated: Counter::default(),
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
        sub.register(
            "readings_evaluated",
            "Readings evaluations took anew, rather than going on from an earlier evaluation",
            metrics.readings_evaluated.clone(),
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
    /// Look-ups into `setup`, so that an evaluation of many areas of a national network does not
    /// search every area's, threshold's and link's list for each of them.
    index: SetupIndex,
}

/// Where in the flood setup each area, threshold and link is.
#[derive(Default)]
struct SetupIndex {
    /// Each area's place in `setup.areas` (the first, should a key repeat).
    area: HashMap<String, usize>,
    /// Each level sensor's thresholds' place in `setup.thresholds` (the first).
    threshold: HashMap<String, usize>,
    /// Each area's upstream links' places in `setup.links`, in order.
    links_into: HashMap<String, Vec<usize>>,
    /// The areas each sensor's readings affect, as [`Model::areas_of`] gives them.
    areas_of: HashMap<String, Vec<String>>,
}

impl SetupIndex {
    fn of(setup: &FloodSetup) -> SetupIndex {
        let mut index = SetupIndex::default();
        for (i, area) in setup.areas.iter().enumerate() {
            index.area.entry(area.key.clone()).or_insert(i);
            for sensor in &area.sensors {
                let areas = index.areas_of.entry(sensor.clone()).or_default();
                // Once per area, however often the area lists the sensor.
                if areas.last() != Some(&area.key) {
                    areas.push(area.key.clone());
                }
            }
        }
        for (i, threshold) in setup.thresholds.iter().enumerate() {
            index
                .threshold
                .entry(threshold.sensor_key.clone())
                .or_insert(i);
        }
        for (i, link) in setup.links.iter().enumerate() {
            index
                .links_into
                .entry(link.downstream_area.clone())
                .or_default()
                .push(i);
            index
                .areas_of
                .entry(link.upstream_sensor.clone())
                .or_default()
                .push(link.downstream_area.clone());
        }
        index
    }
}

impl Model {
    pub(crate) async fn load(store: &Store) -> Result<Model, tidemark_store::Error> {
        let setup = store.flood_setup().await?;
        let catalog = store.sensor_catalog().await?;
        Ok(Model {
            index: SetupIndex::of(&setup),
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
        self.index.areas_of.get(sensor).cloned().unwrap_or_default()
    }

    /// The flood area with this key.
    pub(crate) fn area(&self, key: &str) -> Option<&AreaRow> {
        self.index.area.get(key).map(|&i| &self.setup.areas[i])
    }

    /// A level sensor's thresholds.
    pub(crate) fn thresholds(&self, sensor: &str) -> Option<&ThresholdRow> {
        self.index
            .threshold
            .get(sensor)
            .map(|&i| &self.setup.thresholds[i])
    }

    /// The links from upstream sensors into the area, in the setup's order.
    pub(crate) fn links_into<'a>(&'a self, area: &str) -> impl Iterator<Item = &'a LinkRow> {
        self.index
            .links_into
            .get(area)
            .into_iter()
            .flatten()
            .map(|&i| &self.setup.links[i])
    }
}

/// Before any reading Tidemark keeps (and well inside what PostgreSQL's timestamps hold).
pub(crate) const HISTORY_START: DateTime<Utc> = DateTime::UNIX_EPOCH;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn area(key: &str, sensors: &[&str]) -> AreaRow {
        AreaRow {
            key: key.into(),
            name: key.into(),
            polygon: serde_json::Value::Null,
            municipality_codes: vec![],
            sensors: sensors.iter().map(|s| s.to_string()).collect(),
            forecast_horizon: Duration::from_secs(3600),
            hazard: tidemark_model::warning::Category::Flood,
        }
    }

    fn threshold(sensor: &str, alert: f64) -> ThresholdRow {
        ThresholdRow {
            sensor_key: sensor.into(),
            alert,
            warning: alert + 1.0,
            severe: alert + 2.0,
            persistence: Duration::ZERO,
            min_readings: 1,
            hysteresis: 0.0,
            hold: Duration::ZERO,
            rate_window: Duration::from_secs(3600),
            lead_time: Duration::ZERO,
            plausible_low: -10.0,
            plausible_high: 10.0,
            spike_floor: 1.0,
            rate_alert: None,
            falling: false,
        }
    }

    fn link(sensor: &str, area: &str) -> LinkRow {
        LinkRow {
            upstream_sensor: sensor.into(),
            downstream_area: area.into(),
            travel_time: Duration::from_secs(600),
        }
    }

    #[test]
    fn the_look_ups_find_what_searching_the_setup_finds() {
        let setup = FloodSetup {
            areas: vec![
                area("a", &["g1", "r1", "g1"]),
                area("b", &["g2", "r1"]),
                area("c", &[]),
            ],
            links: vec![
                link("g1", "b"),
                link("u1", "c"),
                link("u2", "c"),
                link("g2", "a"),
            ],
            thresholds: vec![
                threshold("g1", 1.0),
                threshold("g2", 2.0),
                threshold("g1", 3.0),
            ],
            rain_rules: vec![],
        };
        let model = Model {
            quality_rules: vec![],
            containers: vec![],
            leak_rules: vec![],
            index: SetupIndex::of(&setup),
            setup,
            sensors: HashMap::new(),
            by_id: HashMap::new(),
        };
        for sensor in ["g1", "g2", "r1", "u1", "u2", "nowhere"] {
            let searched: Vec<String> = model
                .setup
                .areas
                .iter()
                .filter(|a| a.sensors.iter().any(|s| s == sensor))
                .map(|a| a.key.clone())
                .chain(
                    model
                        .setup
                        .links
                        .iter()
                        .filter(|l| l.upstream_sensor == sensor)
                        .map(|l| l.downstream_area.clone()),
                )
                .collect();
            assert_eq!(model.areas_of(sensor), searched, "{sensor}");
            assert_eq!(
                model.thresholds(sensor),
                model
                    .setup
                    .thresholds
                    .iter()
                    .find(|t| t.sensor_key == sensor),
                "{sensor}"
            );
        }
        assert_eq!(model.areas_of("g1"), ["a", "b"]);
        for key in ["a", "b", "c", "nowhere"] {
            assert_eq!(
                model.area(key),
                model.setup.areas.iter().find(|a| a.key == key)
            );
            let searched: Vec<&LinkRow> = model
                .setup
                .links
                .iter()
                .filter(|l| l.downstream_area == key)
                .collect();
            assert_eq!(model.links_into(key).collect::<Vec<_>>(), searched, "{key}");
        }
    }
}
