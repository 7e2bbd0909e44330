//! The flood-risk runner: LISTENs for `readings_committed`, evaluates the flood areas the new
//! readings touch, sweeps every area periodically (for staleness and holds that end without new
//! readings), and records the resulting warning events with their outbox rows.

use crate::area::{self, AreaInput, Level, LevelSensor, RainSensor, Upstream, WarningKind};
use crate::level::{LevelRule, Severity};
use crate::messages;
use crate::quality::{self, QcRules};
use crate::rain::{self, RainRule};
use crate::series::Sample;
use crate::utility::{self, LeakRule, NightWindow};
use crate::waste::{self, ContainerRule};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_model::warning::{alert_topic, utility_alert_topic};
use tidemark_model::{duration, Quality};
use tidemark_store::circular::{CollectionRow, ContainerRow, ContainerState, OverflowRow};
use tidemark_store::coordination::{Channel, Notice, ReadingsCommitted};
use tidemark_store::flood::{CrossingRow, FloodSetup, NewEvent, QualityRuleRow, TrendRow};
use tidemark_store::reference::SensorInfo;
use tidemark_store::water::{AlertText, LeakChange, LeakRow, LeakRuleRow, LeakState, NightFlowRow};
use tidemark_store::{notify, DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

/// The `[analytics]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Flood files (areas, links, thresholds, rain rules), relative to the base configuration
    /// file's folder.
    #[serde(default)]
    pub flood_files: Vec<PathBuf>,
    /// The municipality layer (GeoJSON with KOMKODE and KOMNAVN), relative likewise.
    #[serde(default = "default_municipalities")]
    pub municipalities: PathBuf,
    /// An area outside every municipality goes to the nearest one within this distance, km.
    #[serde(default = "default_nearest_km")]
    pub nearest_municipality_km: f64,
    /// How far back an evaluation reads.
    #[serde(default = "default_lookback", with = "duration::serde_str")]
    pub lookback: Duration,
    /// How often every area is evaluated, new readings or not.
    #[serde(default = "default_sweep", with = "duration::serde_str")]
    pub sweep_interval: Duration,
    /// A station is stale after this many expected intervals without a reading.
    #[serde(default = "default_stale_after")]
    pub stale_after_intervals: i32,
    /// How long notifications are gathered before evaluating.
    #[serde(default = "default_debounce", with = "duration::serde_str")]
    pub debounce: Duration,
    /// How long a rainfall alert stays after the rain last exceeded a rule.
    #[serde(default = "default_rain_hold", with = "duration::serde_str")]
    pub rain_hold: Duration,
    /// Where `tidemark analytics` serves `/metrics`, `/healthz` and `/readyz` (in `tidemark run`
    /// the API serves them).
    #[serde(default = "default_analytics_metrics_listen")]
    pub metrics_listen: String,
}

fn default_municipalities() -> PathBuf {
    PathBuf::from("reference/dk-kommuner/kommuner.geojson")
}
const fn default_nearest_km() -> f64 {
    25.0
}
const fn default_lookback() -> Duration {
    Duration::from_secs(14 * 86_400)
}
const fn default_sweep() -> Duration {
    Duration::from_secs(60)
}
const fn default_stale_after() -> i32 {
    3
}
const fn default_debounce() -> Duration {
    Duration::from_millis(20)
}
fn default_analytics_metrics_listen() -> String {
    "127.0.0.1:9092".to_owned()
}
const fn default_rain_hold() -> Duration {
    Duration::from_secs(3600)
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            flood_files: Vec::new(),
            municipalities: default_municipalities(),
            nearest_municipality_km: default_nearest_km(),
            lookback: default_lookback(),
            sweep_interval: default_sweep(),
            stale_after_intervals: default_stale_after(),
            debounce: default_debounce(),
            rain_hold: default_rain_hold(),
            metrics_listen: default_analytics_metrics_listen(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("analytics cannot start: {0}")]
    Store(#[from] tidemark_store::Error),
}

pub struct Metrics {
    pub evaluations: Counter,
    pub events: Counter,
    pub failures: Counter,
    /// Evaluations done again because another process recorded the area's events first.
    pub superseded: Counter,
    pub evaluation_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            evaluations: Counter::default(),
            events: Counter::default(),
            failures: Counter::default(),
            superseded: Counter::default(),
            evaluation_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
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
            "superseded",
            "Evaluations done again because another process recorded the area's events first",
            metrics.superseded.clone(),
        );
        sub.register(
            "evaluation_seconds",
            "Time to evaluate an area and record its events",
            metrics.evaluation_seconds.clone(),
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
struct Model {
    /// Quality rules of sensors outside the flood setup (meters, containers).
    quality_rules: Vec<QualityRuleRow>,
    /// The container registry, whose readings give collections and overflows.
    containers: Vec<ContainerRow>,
    /// Leak rules of water district meters.
    leak_rules: Vec<LeakRuleRow>,
    setup: FloodSetup,
    sensors: HashMap<String, SensorInfo>,
    by_id: HashMap<i32, String>,
}

impl Model {
    async fn load(store: &Store) -> Result<Model, tidemark_store::Error> {
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
    fn areas_of(&self, sensor: &str) -> Vec<String> {
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

/// Areas evaluated at the same time; each takes a pooled connection.
const CONCURRENT_EVALUATIONS: usize = 4;

/// Runs until `shutdown`.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = Store::connect(&settings.database).await?;
    // Quality findings change rollup days too; the refresher stops when this function returns.
    let refresher_stop = shutdown.child_token();
    let _refresher = refresher_stop.clone().drop_guard();
    tokio::spawn({
        let store = store.clone();
        let every = settings.database.rollup_refresh;
        async move {
            store
                .keep_rollups_fresh(every, refresher_stop.cancelled_owned())
                .await
        }
    });
    // Listening before the setup is read, so that no change falls between the two.
    let channels = [Channel::ReadingsCommitted, Channel::FloodSetupChanged];
    let mut listener = notify::listen(&settings.database, &channels).await?;
    let mut model = Model::load(&store).await?;
    tracing::info!(areas = model.setup.areas.len(), "analytics started");
    if let Err(error) = check_rule_sensors(&store, &model.quality_rules, HISTORY_START).await {
        tracing::warn!(%error, "quality checks failed");
    }
    if let Err(error) = find_container_events(&store, &model.containers, HISTORY_START).await {
        tracing::warn!(%error, "container events failed");
    }
    if let Err(error) = find_night_flow(
        &store,
        &model.leak_rules,
        HISTORY_START,
        &settings.topic_prefix,
    )
    .await
    {
        tracing::warn!(%error, "night flow failed");
    }
    let mut pending: BTreeSet<String> = model.setup.areas.iter().map(|a| a.key.clone()).collect();
    let mut sweep = tokio::time::interval(settings.analytics.sweep_interval);
    sweep.tick().await;
    loop {
        // Areas are independent (each has its own advisory lock), so a few are evaluated at once.
        futures_util::stream::iter(std::mem::take(&mut pending))
            .for_each_concurrent(CONCURRENT_EVALUATIONS, |area| {
                let (store, model, settings, metrics) = (&store, &model, &settings, &metrics);
                async move { evaluate_area(store, model, settings, &area, metrics).await }
            })
            .await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                pending.extend(model.setup.areas.iter().map(|a| a.key.clone()));
            }
            notification = listener.recv() => {
                let Some(first) = notification else {
                    tracing::warn!("the readings listener closed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match notify::listen(&settings.database, &channels).await {
                        Ok(fresh) => listener = fresh,
                        Err(error) => tracing::warn!(%error, "cannot listen for readings"),
                    }
                    // Readings may have been missed meanwhile: look at everything.
                    pending.extend(model.setup.areas.iter().map(|a| a.key.clone()));
                    continue;
                };
                let mut notifications = vec![first];
                let deadline = tokio::time::Instant::now() + settings.analytics.debounce;
                while let Ok(Some(more)) = tokio::time::timeout_at(deadline, listener.recv()).await {
                    notifications.push(more);
                }
                // A changed setup (over the API, or a migrate) is reloaded, and every area looked at.
                if notifications.contains(&Notice::FloodSetupChanged) {
                    match Model::load(&store).await {
                        Ok(fresh) => {
                            // Only new or changed containers and rules are looked at again.
                            let changed: Vec<ContainerRow> = fresh
                                .containers
                                .iter()
                                .filter(|c| !model.containers.contains(c))
                                .cloned()
                                .collect();
                            let changed_quality: Vec<QualityRuleRow> = fresh
                                .quality_rules
                                .iter()
                                .filter(|r| !model.quality_rules.contains(r))
                                .cloned()
                                .collect();
                            let changed_rules: Vec<LeakRuleRow> = fresh
                                .leak_rules
                                .iter()
                                .filter(|r| !model.leak_rules.contains(r))
                                .cloned()
                                .collect();
                            model = fresh;
                            tracing::info!(areas = model.setup.areas.len(), "flood setup reloaded");
                            // A new or changed quality rule applies to the whole history.
                            if let Err(error) = check_rule_sensors(&store, &changed_quality, HISTORY_START).await {
                                tracing::warn!(%error, "quality checks failed");
                            }
                            if let Err(error) = find_container_events(&store, &changed, HISTORY_START).await {
                                tracing::warn!(%error, "container events failed");
                            }
                            if let Err(error) = find_night_flow(&store, &changed_rules, HISTORY_START, &settings.topic_prefix).await {
                                tracing::warn!(%error, "night flow failed");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot reload the flood setup"),
                    }
                    pending.extend(model.setup.areas.iter().map(|a| a.key.clone()));
                }
                let batches: Vec<ReadingsCommitted> = notifications
                    .into_iter()
                    .filter_map(|n| match n {
                        Notice::ReadingsCommitted(batch) => Some(batch),
                        _ => None,
                    })
                    .collect();
                let ids: BTreeSet<i32> = batches
                    .iter()
                    .flat_map(|b| b.sensors.iter().copied())
                    .collect();
                if ids.iter().any(|id| !model.by_id.contains_key(id)) {
                    match Model::load(&store).await {
                        Ok(fresh) => model = fresh,
                        Err(error) => tracing::warn!(%error, "cannot reload the flood setup"),
                    }
                }
                // Sensors with a quality rule are checked from a day before the earliest new reading,
                // so that a reading is judged again once its later neighbours have come.
                let earliest = batches.iter().map(|b| b.from).min();
                let ruled: Vec<QualityRuleRow> = model
                    .quality_rules
                    .iter()
                    .filter(|r| ids.iter().any(|id| model.by_id.get(id) == Some(&r.sensor_key)))
                    .cloned()
                    .collect();
                if let (Some(earliest), false) = (earliest, ruled.is_empty()) {
                    let from = earliest - chrono::Duration::days(1);
                    if let Err(error) = check_rule_sensors(&store, &ruled, from).await {
                        tracing::warn!(%error, "quality checks failed");
                    }
                }
                let touched: Vec<ContainerRow> = model
                    .containers
                    .iter()
                    .filter(|c| {
                        ids.iter().any(|id| {
                            model.by_id.get(id).is_some_and(|key| {
                                key == &c.fill_sensor || c.weight_sensor.as_ref() == Some(key)
                            })
                        })
                    })
                    .cloned()
                    .collect();
                if let (Some(earliest), false) = (earliest, touched.is_empty()) {
                    if let Err(error) = find_container_events(&store, &touched, earliest).await {
                        tracing::warn!(%error, "container events failed");
                    }
                }
                let metered: Vec<LeakRuleRow> = model
                    .leak_rules
                    .iter()
                    .filter(|r| ids.iter().any(|id| model.by_id.get(id) == Some(&r.sensor_key)))
                    .cloned()
                    .collect();
                if let (Some(earliest), false) = (earliest, metered.is_empty()) {
                    if let Err(error) = find_night_flow(&store, &metered, earliest, &settings.topic_prefix).await {
                        tracing::warn!(%error, "night flow failed");
                    }
                }
                for id in ids {
                    if let Some(key) = model.by_id.get(&id) {
                        pending.extend(model.areas_of(key));
                    }
                }
            }
        }
    }
    tracing::info!("analytics stopped");
    Ok(())
}

/// Before any reading Tidemark keeps (and well inside what PostgreSQL's timestamps hold).
const HISTORY_START: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The flags data-quality checks own; the device's own flags are never cleared.
const CHECK_FLAGS: i16 = Quality::SPIKE.0 | Quality::STUCK.0 | Quality::OUT_OF_RANGE.0;

/// Runs the data-quality checks of sensors with a quality rule over their readings from `from` on,
/// and writes the flags that changed. Flags set earlier by these checks are judged afresh, so a
/// reading at the edge of an earlier batch loses a flag its later neighbours disprove.
async fn check_rule_sensors(
    store: &Store,
    rules: &[QualityRuleRow],
    from: DateTime<Utc>,
) -> Result<(), tidemark_store::Error> {
    if rules.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = rules.iter().map(|r| r.sensor_key.clone()).collect();
    let series = store.series(&keys, from).await?;
    for rule in rules {
        let Some(rows) = series.get(&rule.sensor_key) else {
            continue;
        };
        let fresh: Vec<Sample> = rows
            .iter()
            .map(|(ts, value, q)| Sample {
                ts: *ts,
                value: *value,
                quality: Quality(q & !CHECK_FLAGS),
            })
            .collect();
        let qc = QcRules {
            plausible: (rule.plausible_low, rule.plausible_high),
            spike_floor: rule.spike_floor,
            stuck_run: usize::try_from(rule.stuck_run).unwrap_or(0),
            ..QcRules::default()
        };
        let changed: Vec<(DateTime<Utc>, i16)> = quality::check(&fresh, &qc)
            .into_iter()
            .zip(rows)
            .filter(|(flag, (_, _, stored))| flag.0 != *stored)
            .map(|(flag, (ts, _, _))| (*ts, flag.0))
            .collect();
        if !changed.is_empty() {
            let flagged = store.set_quality(&rule.sensor_key, &changed).await?;
            tracing::info!(stage = "analytics", sensor = %rule.sensor_key, flagged, "quality flags changed");
        }
    }
    Ok(())
}

/// How far before new readings a container's events are found again: a collection is read off the
/// fill level before it, and an overflow may have begun earlier.
const CONTAINER_LOOKBACK: chrono::Duration = chrono::Duration::days(2);

/// Finds the collections and overflow events of `containers` from `from` on (with
/// [`CONTAINER_LOOKBACK`] of readings before it) and replaces the stored ones.
async fn find_container_events(
    store: &Store,
    containers: &[ContainerRow],
    from: DateTime<Utc>,
) -> Result<(), tidemark_store::Error> {
    if containers.is_empty() {
        return Ok(());
    }
    let rule = ContainerRule::default();
    let since = if from > HISTORY_START + CONTAINER_LOOKBACK {
        from - CONTAINER_LOOKBACK
    } else {
        HISTORY_START
    };
    let keys: Vec<String> = containers
        .iter()
        .flat_map(|c| std::iter::once(c.fill_sensor.clone()).chain(c.weight_sensor.clone()))
        .collect();
    let series = store.series(&keys, since).await?;
    let now = Utc::now();
    for c in containers {
        let fill = samples(series.get(&c.fill_sensor));
        let collections = match &c.weight_sensor {
            Some(w) => waste::weighed_collections(&fill, &samples(series.get(w)), &rule),
            None => waste::collections(&fill, &rule),
        };
        let collections: Vec<CollectionRow> = collections
            .into_iter()
            .map(|k| CollectionRow {
                container: c.key.clone(),
                at: k.at,
                fill_before: k.before,
                fill_after: k.after,
                partial: k.partial,
                volume_litres: k.volume_litres(c.capacity_litres),
                mass_kg: k.mass_kg,
            })
            .collect();
        let overflows: Vec<OverflowRow> = waste::overflows(&fill, &rule, now)
            .into_iter()
            .map(|o| OverflowRow {
                container: c.key.clone(),
                from: o.from,
                until: o.until,
            })
            .collect();
        let latest = fill.iter().rev().find(|s| s.quality.is_usable());
        let state = ContainerState {
            fill: latest.map(|s| (s.value, s.ts)),
            fill_rate_per_hour: waste::fill_rate(&fill, &rule, now),
            full_at: waste::time_to_full(&fill, &rule, now),
            computed_at: now,
        };
        // Events are replaced from the start of the readings read, not before: an event found
        // only in part (its start before them) is left as it was.
        store
            .replace_container_events(&c.key, from, &collections, &overflows, &state)
            .await?;
    }
    Ok(())
}

/// Most leak changes (raises and lifts) recorded for one meter in one pass.
const MAX_LEAK_CHANGES: usize = 100;

/// Finds the minimum night flow of each district meter with a leak rule, from a little more than
/// the rule's baseline and run of nights before `from` (the whole history from [`HISTORY_START`]),
/// and stores the nights with what they show: new suspected leaks (raised as leak alerts on
/// `<prefix>/utility-alerts/<municipality>/<meter>`) and the end of open ones (lifting them).
async fn find_night_flow(
    store: &Store,
    rules: &[LeakRuleRow],
    from: DateTime<Utc>,
    topic_prefix: &str,
) -> Result<(), tidemark_store::Error> {
    for rule in rules {
        let lookback = chrono::Duration::days(i64::from(rule.baseline_nights + rule.nights) + 2);
        let since = if from > HISTORY_START + lookback {
            from - lookback
        } else {
            HISTORY_START
        };
        let series = store
            .series(std::slice::from_ref(&rule.sensor_key), since)
            .await?;
        let window = NightWindow {
            start: rule.night_start,
            end: rule.night_end,
            standard_hours: tidemark_model::time::DENMARK_STANDARD_HOURS,
        };
        let minima = utility::night_minima(&samples(series.get(&rule.sensor_key)), &window);
        // The first night read may lack its early hours; it is left as stored.
        let first_full = (since + chrono::Duration::days(1)).date_naive();
        let rows: Vec<NightFlowRow> = minima
            .iter()
            .map(|m| NightFlowRow {
                night: m.night,
                min_value: m.value,
                at: m.at,
                samples: i32::try_from(m.samples).unwrap_or(i32::MAX),
            })
            .collect();
        let label = store.meter_label(&rule.sensor_key).await?;
        let name = label.as_ref().map_or(rule.sensor_key.as_str(), |l| &l.name);
        let unit = label
            .as_ref()
            .and_then(|l| tidemark_model::Quantity::parse(&l.quantity).ok())
            .map_or("", |q| q.canonical_unit().symbol());
        // Changes in order, each against the state the ones before left: nights that show a leak
        // begin and end are a raise and then a lift. Every change moves past the nights of the
        // one before, so this ends; the bound is a guard, not a limit any real history reaches.
        let mut state = store.leak_state(&rule.sensor_key).await?;
        let mut changes = Vec::new();
        while changes.len() < MAX_LEAK_CHANGES {
            let Some(change) = next_leak_change(rule, &state, &minima, name, unit) else {
                break;
            };
            state.apply(&change);
            changes.push(change);
        }
        let meter = &rule.sensor_key;
        store
            .store_night_flow(meter, first_full, &rows, &changes, |code| {
                utility_alert_topic(topic_prefix, code, meter)
            })
            .await?;
    }
    Ok(())
}

/// What a meter's nights show against its suspicions (`state`): the end of the open one, or else
/// a new one after the last one ended. `name` and `unit` are the meter's, for the messages.
fn next_leak_change(
    rule: &LeakRuleRow,
    state: &LeakState,
    minima: &[utility::NightMinimum],
    name: &str,
    unit: &str,
) -> Option<LeakChange> {
    if let Some(open) = &state.open {
        let end = utility::leak_end(minima, open.baseline, rule.margin, open.raised_on)?;
        tracing::info!(stage = "analytics", sensor = %rule.sensor_key, since = %open.since, ended = %end.night, "suspected leak ended");
        let (message_en, message_da) = messages::leak_ended(name, end.night, end.value, unit);
        return Some(LeakChange::Ended {
            since: open.since,
            night: end.night,
            night_flow: end.value,
            alert: AlertText {
                at: end.at,
                message_en,
                message_da,
            },
        });
    }
    // A new suspicion is looked for only after the last one ended, with a baseline of the nights
    // since then, so that an old leak is never raised again.
    let fresh: Vec<utility::NightMinimum> = minima
        .iter()
        .filter(|m| state.last_ended.is_none_or(|ended| m.night >= ended))
        .cloned()
        .collect();
    let rule_of_nights = LeakRule {
        baseline_nights: usize::try_from(rule.baseline_nights).unwrap_or(1),
        margin: rule.margin,
        nights: usize::try_from(rule.nights).unwrap_or(1),
    };
    let leak = utility::leak_suspicion(&fresh, &rule_of_nights)?;
    tracing::warn!(stage = "analytics", sensor = %rule.sensor_key, since = %leak.since, "suspected leak");
    let at = fresh
        .iter()
        .find(|m| m.night == leak.raised_on)
        .map_or_else(Utc::now, |m| m.at);
    let (message_en, message_da) = messages::leak_raised(name, &leak, unit);
    Some(LeakChange::Raised {
        leak: LeakRow {
            sensor_key: rule.sensor_key.clone(),
            since: leak.since,
            raised_on: leak.raised_on,
            baseline: leak.baseline,
            night_flow: leak.night_flow,
            found_at: Utc::now(),
            ended_on: None,
            warning_id: None,
        },
        alert: AlertText {
            at,
            message_en,
            message_da,
        },
    })
}

fn samples(series: Option<&Vec<(DateTime<Utc>, f64, i16)>>) -> Vec<Sample> {
    series
        .map(|rows| {
            rows.iter()
                .map(|(ts, value, quality)| Sample {
                    ts: *ts,
                    value: *value,
                    quality: Quality(*quality),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

async fn evaluate_area(
    store: &Store,
    model: &Model,
    settings: &Settings,
    key: &str,
    metrics: &Metrics,
) {
    let started = Instant::now();
    // Another analytics process may record the area's events between this one's reading and its
    // writing; then the area is evaluated again from what that one recorded.
    let mut outcome = try_evaluate_area(store, model, settings, key).await;
    for _ in 0..3 {
        if !matches!(outcome, Err(tidemark_store::Error::Superseded(_))) {
            break;
        }
        metrics.superseded.inc();
        outcome = try_evaluate_area(store, model, settings, key).await;
    }
    match outcome {
        Ok(recorded) => {
            metrics.evaluations.inc();
            metrics.events.inc_by(recorded);
            metrics
                .evaluation_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(error) => {
            metrics.failures.inc();
            tracing::warn!(stage = "analytics", area = %key, %error, "evaluation failed");
        }
    }
}

async fn try_evaluate_area(
    store: &Store,
    model: &Model,
    settings: &Settings,
    key: &str,
) -> Result<u64, tidemark_store::Error> {
    let Some(area) = model.setup.areas.iter().find(|a| a.key == key) else {
        return Ok(0);
    };
    let now = Utc::now();
    let links: Vec<_> = model
        .setup
        .links
        .iter()
        .filter(|l| l.downstream_area == key)
        .collect();
    let keys: Vec<String> = area
        .sensors
        .iter()
        .cloned()
        .chain(links.iter().map(|l| l.upstream_sensor.clone()))
        .collect();
    let series = store
        .series(&keys, now - chrono(settings.analytics.lookback))
        .await?;
    let received = store.last_received(&keys).await?;
    let level_sensor = |sensor: &str| -> Option<LevelSensor> {
        let t = model
            .setup
            .thresholds
            .iter()
            .find(|t| t.sensor_key == sensor)?;
        Some(LevelSensor {
            key: sensor.to_owned(),
            rule: LevelRule {
                thresholds: [t.alert, t.warning, t.severe],
                persistence: chrono(t.persistence),
                min_readings: t.min_readings.max(1) as u32,
                hysteresis: t.hysteresis,
                hold: chrono(t.hold),
            },
            qc: QcRules {
                spike_floor: t.spike_floor,
                plausible: (t.plausible_low, t.plausible_high),
                ..QcRules::default()
            },
            rate_window: chrono(t.rate_window),
            lead_time: chrono(t.lead_time),
            rate_alert: t.rate_alert,
            expected_interval: model
                .sensors
                .get(sensor)
                .map(|s| chrono(s.expected_interval))
                .unwrap_or(chrono::Duration::minutes(15)),
            samples: samples(series.get(sensor)),
            last_received: received.get(sensor).copied(),
        })
    };
    let mut input = AreaInput {
        key: key.to_owned(),
        levels: Vec::new(),
        rains: Vec::new(),
        upstream: Vec::new(),
        stale_after_intervals: settings.analytics.stale_after_intervals,
    };
    for sensor in &area.sensors {
        let is_rain = model
            .sensors
            .get(sensor)
            .is_some_and(|s| s.quantity == "rainfall");
        if is_rain {
            let configured: Vec<RainRule> = model
                .setup
                .rain_rules
                .iter()
                .filter(|r| &r.sensor_key == sensor)
                .map(|r| RainRule {
                    window: chrono(r.window),
                    more_than_mm: r.more_than_mm,
                    severity: match r.severity {
                        3 => Severity::Severe,
                        2 => Severity::Warning,
                        _ => Severity::Alert,
                    },
                })
                .collect();
            input.rains.push(RainSensor {
                key: sensor.clone(),
                rules: if configured.is_empty() {
                    rain::dmi_rules()
                } else {
                    configured
                },
                hold: chrono(settings.analytics.rain_hold),
                samples: samples(series.get(sensor)),
            });
        } else if let Some(level) = level_sensor(sensor) {
            input.levels.push(level);
        }
    }
    for link in links {
        if let Some(sensor) = level_sensor(&link.upstream_sensor) {
            input.upstream.push(Upstream {
                sensor,
                travel_time: chrono(link.travel_time),
            });
        }
    }
    let evaluation = area::evaluate(&input, now);
    let trends: Vec<TrendRow> = evaluation
        .trends
        .iter()
        .map(|t| TrendRow {
            sensor_key: t.sensor.clone(),
            at: t.at,
            value: t.value,
            severity: t.severity.map(Severity::level),
            rate_per_hour: t.rate,
            projected: t.projected.map(|(s, at)| (s.level(), at)),
        })
        .collect();
    store.record_trends(&trends).await?;
    let mut flags: HashMap<&str, Vec<(DateTime<Utc>, i16)>> = HashMap::new();
    for (sensor, ts, quality) in &evaluation.flags {
        flags
            .entry(sensor.as_str())
            .or_default()
            .push((*ts, quality.0));
    }
    for (sensor, flags) in flags {
        let flagged = store.set_quality(sensor, &flags).await?;
        tracing::info!(
            stage = "analytics",
            sensor,
            flagged,
            "readings flagged by data-quality checks"
        );
    }
    let status = store.area_status(key).await?;
    let (last_at, current) = (status.last_at, status.current);
    let in_force = current.as_ref().map(|w| Level {
        severity: match w.severity {
            3 => Severity::Severe,
            2 => Severity::Warning,
            _ => Severity::Alert,
        },
        kind: if w.kind == "observed" {
            WarningKind::Observed
        } else {
            WarningKind::Expected
        },
    });
    let events = area::events(
        &evaluation,
        last_at,
        in_force,
        current.as_ref().is_some_and(|w| w.stale),
    );
    if events.is_empty() {
        return Ok(0);
    }
    let new_events: Vec<NewEvent> = events
        .iter()
        .map(|event| {
            let (message_en, message_da) = messages::compose(&area.name, event);
            NewEvent {
                kind: event.kind,
                severity: event.level.map(|l| l.severity),
                warning_kind: event.level.map_or(WarningKind::Observed, |l| l.kind),
                at: event.at,
                message_en,
                message_da,
                trigger: event.trigger.as_ref().map_or(serde_json::json!({}), |t| {
                    serde_json::json!({
                        "sensor": t.sensor, "cause": t.cause, "value": t.value, "threshold": t.threshold,
                        "rate": t.rate, "expected_at": t.expected_at,
                    })
                }),
            }
        })
        .collect();
    let deliveries: Vec<String> = area
        .municipality_codes
        .iter()
        .map(|code| alert_topic(&settings.topic_prefix, code, key))
        .collect();
    let crossings: Vec<CrossingRow> = evaluation
        .crossings
        .iter()
        .filter(|c| last_at.is_none_or(|last| c.at > last))
        .map(|c| CrossingRow {
            sensor_key: c.sensor.clone(),
            severity: c.severity.level(),
            up: c.up,
            at: c.at,
            value: c.value,
        })
        .collect();
    store
        .record_area_events_after(
            Some(status.last_event_id),
            key,
            &area.municipality_codes,
            &new_events,
            &deliveries,
            &crossings,
        )
        .await?;
    for event in &new_events {
        tracing::info!(area = %key, kind = %event.kind, severity = ?event.severity, at = %event.at, "warning event");
    }
    Ok(new_events.len() as u64)
}
