//! `tidemark-bench analytics`: the time from the commit of a reading that crosses a threshold to
//! the commit of the warning event it causes, while ingest runs at full speed on other sensors.
//!
//! Ingest and the analytics runner run in this process against a private Mosquitto and a fresh
//! database. Flood areas each hold one gauge whose thresholds switch on every reading (no
//! persistence, hysteresis or hold), so alternating high and low readings raise and lift a warning
//! each time. One connection listens to both `readings_committed` and `warnings_changed`: a
//! reading's commit is the arrival of the notification naming its batch's `received_at`, the
//! warning's commit the arrival of the notification naming its event.

use crate::ingest::percentile;
use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tidemark::config::Config;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::{DeviceId, SensorKey};
use tidemark_sensors_sim::load::{self, Device, Plan};
use tidemark_store::coordination::{Channel, Notice};
use tidemark_store::flood::{AreaRow, FloodSetup, ThresholdRow};
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
use tidemark_store::{notify, Store};
use tidemark_testkit::{Broker, TestDatabase};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AnalyticsBenchArgs {
    /// Flood areas, each with one gauge.
    #[arg(long, default_value_t = 20)]
    pub areas: usize,
    /// Background readings published in messages of 50 while the triggers run.
    #[arg(long, default_value_t = 2_000_000)]
    pub load: usize,
    /// Pause between two triggering readings.
    #[arg(long, default_value = "20ms")]
    pub interval: String,
    /// Quiet 10-minute readings (a tide below the alert level) each gauge holds before the run,
    /// up to 10 minutes ago (an evaluation reads up to `analytics.lookback` of them).
    #[arg(long, default_value = "0s")]
    pub history: String,
    /// Overrides `analytics.series_cache_readings`; 0 keeps nothing between evaluations, so
    /// that each reads its sensors' whole look-back window.
    #[arg(long)]
    pub keep_readings: Option<usize>,
    /// Gives each area a rain gauge as well (judged by DMI's cloudburst and heavy-rain rules),
    /// with the same history of 10-minute readings as its water-level gauge: light rain, below
    /// either rule.
    #[arg(long)]
    pub rain_gauges: bool,
}

pub(crate) async fn analytics(config: &Config, args: AnalyticsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.areas > 0, "--areas must be positive");
    let interval = tidemark_model::duration::parse(&args.interval)?;
    let broker = Broker::start().await?;
    let database = TestDatabase::create(&config.database).await?;
    let outcome = measure(config, &args, interval, &broker, &database.config).await;
    database.drop_database().await?;
    outcome
}

async fn measure(
    config: &Config,
    args: &AnalyticsBenchArgs,
    interval: Duration,
    broker: &Broker,
    database: &tidemark_store::DatabaseConfig,
) -> anyhow::Result<()> {
    let mqtt = BrokerConfig {
        topic_prefix: config.mqtt.topic_prefix.clone(),
        ..broker.config()
    };
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(database).await?;
    let (gauges, background) = register(&store, args.areas, args.rain_gauges).await?;
    let history = tidemark_model::duration::parse(&args.history)?;
    let held = fill_history(&store, &gauges, args.rain_gauges, history).await?;

    let mut config = config.clone();
    if let Some(keep) = args.keep_readings {
        config.analytics.series_cache_readings = keep;
    }
    let config = &config;
    let stages = Stages::start(config, &mqtt, database, "bench-analytics-ingest").await?;
    stages.wait_for_start_up(gauges.len()).await?;
    let (ingest_metrics, analytics_metrics) = (
        stages.ingest_metrics.clone(),
        stages.analytics_metrics.clone(),
    );
    // What evaluations read from here on, beside how many ran.
    let (read_before, evaluations_before) = (
        analytics_metrics.series_readings_read.get(),
        analytics_metrics.evaluations.get(),
    );
    let mut listener = notify::listen(
        database,
        &[Channel::ReadingsCommitted, Channel::WarningsChanged],
    )
    .await?;

    let stop_listening = CancellationToken::new();
    let stop = stop_listening.clone();
    let collector = tokio::spawn(async move {
        let mut commits: HashMap<i64, DateTime<Utc>> = HashMap::new();
        let mut events: HashMap<i64, DateTime<Utc>> = HashMap::new();
        loop {
            let notification = tokio::select! {
                _ = stop.cancelled() => break,
                n = listener.recv() => match n { Some(n) => n, None => break },
            };
            let arrived = Utc::now();
            match notification {
                Notice::WarningsChanged { event_id } => {
                    events.insert(event_id, arrived);
                }
                Notice::ReadingsCommitted(batch) => {
                    commits
                        .entry(batch.received_at.timestamp_micros())
                        .or_insert(arrived);
                }
                _ => {}
            }
        }
        (commits, events)
    });

    let load_plan = Plan {
        devices: background,
        readings: args.load,
        per_message: 50,
        connections: 2,
        client_prefix: "bench-analytics-load".into(),
    };
    let background_mqtt = mqtt.clone();
    let started = std::time::Instant::now();
    let loading = tokio::spawn(async move { load::publish(&background_mqtt, &load_plan).await });
    let mut triggers: Vec<(usize, DateTime<Utc>)> = Vec::new();
    let mut round = 0usize;
    // Triggers run for as long as ingest is still working through the background load.
    while !loading.is_finished() || ingest_metrics.readings_stored.get() < args.load as u64 {
        let area = round % gauges.len();
        let high = (round / gauges.len()) % 2 == 0;
        let now = Utc::now();
        let ts = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let payload = format!(
            r#"{{"sensor":"{}","ts":"{}","value":{},"unit":"m"}}"#,
            gauges[area].1,
            ts.to_rfc3339_opts(SecondsFormat::Micros, true),
            if high { 2.5 } else { 0.2 }
        );
        let topic = format!("{}/readings/{}", mqtt.topic_prefix, gauges[area].0);
        tokio::time::timeout(
            Duration::from_secs(10),
            load::publish_messages(&mqtt, "bench-trigger", vec![(topic, payload.into_bytes())]),
        )
        .await
        .context("a triggering reading was not acknowledged within 10 s")??;
        triggers.push((area, ts));
        round += 1;
        if round % 250 == 0 {
            eprintln!(
                "bench analytics: {:.0} s, {} triggers, ingest stored {} of {}, {} bytes buffered",
                started.elapsed().as_secs_f64(),
                round,
                ingest_metrics.readings_stored.get(),
                args.load,
                ingest_metrics.buffered_bytes.get()
            );
        }
        tokio::time::sleep(interval).await;
    }
    let load_report = loading.await??;
    let load_seconds = started.elapsed().as_secs_f64();
    // Let the last triggers' events land before counting.
    let expected_events = triggers.len() as u64;
    for _ in 0..100 {
        if analytics_metrics.events.get() >= expected_events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stages.stop().await;
    stop_listening.cancel();
    let (commits, event_arrivals) = collector.await.context("the listener task failed")?;

    let mut latencies = Vec::new();
    let mut unmatched = 0;
    let mut events_by_area: HashMap<usize, Vec<tidemark_store::flood::EventRow>> = HashMap::new();
    for area in 0..gauges.len() {
        events_by_area.insert(
            area,
            store.warning_events(&format!("bench-area-{area}")).await?,
        );
    }
    for (area, ts) in &triggers {
        let committed = store
            .received_at(&gauges[*area].1, *ts)
            .await?
            .and_then(|received| commits.get(&received.timestamp_micros()).copied());
        let warned = events_by_area[area]
            .iter()
            .find(|e| e.at == *ts)
            .and_then(|e| event_arrivals.get(&e.id).copied());
        match (committed, warned) {
            (Some(c), Some(w)) => {
                latencies.push((w - c).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            }
            (committed, warned) => {
                eprintln!(
                    "bench analytics: unmatched trigger of area {area} at {ts}: commit seen {}, event found {}",
                    committed.is_some(),
                    warned.is_some()
                );
                unmatched += 1
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "tidemark-bench analytics: {} areas, {} triggering readings every {} while {} background readings were ingested ({:.0} readings/s published)",
        gauges.len(),
        triggers.len(),
        args.interval,
        load_report.readings,
        load_report.readings as f64 / load_seconds,
    );
    println!(
        "machine: {} cores; history {} of 10-minute readings per gauge ({held} in all){}, analytics.series_cache_readings {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.history,
        if args.rain_gauges { "; a rain gauge in each area" } else { "" },
        config.analytics.series_cache_readings,
    );
    println!(
        "reading commit to warning commit: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} events ({} unmatched)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len(),
        unmatched
    );
    println!(
        "ingest stored {} readings; analytics ran {} evaluations, {} failed",
        ingest_metrics.readings_stored.get(),
        analytics_metrics.evaluations.get(),
        analytics_metrics.failures.get()
    );
    let evaluations = analytics_metrics.evaluations.get() - evaluations_before;
    let read = analytics_metrics.series_readings_read.get() - read_before;
    println!(
        "readings read from the database for evaluations after start-up: {read} ({:.1} per area evaluated)",
        read as f64 / evaluations.max(1) as f64
    );
    Ok(())
}

/// Ingest and the analytics runner, running in this process on the bench's broker and database.
pub(crate) struct Stages {
    shutdown: CancellationToken,
    pub(crate) ingest_metrics: Arc<tidemark_ingest::Metrics>,
    pub(crate) analytics_metrics: Arc<tidemark_analytics::runner::Metrics>,
    ingest: tokio::task::JoinHandle<Result<(), tidemark_ingest::Error>>,
    analytics: tokio::task::JoinHandle<Result<(), tidemark_analytics::runner::Error>>,
}

impl Stages {
    /// Starts both, and waits until ingest has subscribed.
    pub(crate) async fn start(
        config: &Config,
        mqtt: &BrokerConfig,
        database: &tidemark_store::DatabaseConfig,
        client_id: &str,
    ) -> anyhow::Result<Stages> {
        let shutdown = CancellationToken::new();
        let mut registry = Registry::default();
        let ingest_metrics = Arc::new(tidemark_ingest::Metrics::register(&mut registry));
        let analytics_metrics =
            Arc::new(tidemark_analytics::runner::Metrics::register(&mut registry));
        let ingest = tokio::spawn(tidemark_ingest::run(
            tidemark_ingest::Settings {
                ingest: tidemark_ingest::IngestConfig {
                    client_id: client_id.into(),
                    ..config.ingest.clone()
                },
                mqtt: mqtt.clone(),
                database: database.clone(),
            },
            ingest_metrics.clone(),
            shutdown.clone(),
        ));
        let analytics = tokio::spawn(tidemark_analytics::runner::run(
            tidemark_analytics::runner::Settings {
                analytics: config.analytics.clone(),
                database: database.clone(),
                topic_prefix: mqtt.topic_prefix.clone(),
            },
            analytics_metrics.clone(),
            shutdown.clone(),
        ));
        for _ in 0..200 {
            if ingest_metrics.subscribed.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            ingest_metrics.subscribed.get() == 1,
            "ingest did not subscribe"
        );
        Ok(Stages {
            shutdown,
            ingest_metrics,
            analytics_metrics,
            ingest,
            analytics,
        })
    }

    /// Waits until the runner has evaluated `areas` areas: its start-up sweep of every area
    /// is over, so that what follows measures the running state, not the start.
    pub(crate) async fn wait_for_start_up(&self, areas: usize) -> anyhow::Result<()> {
        for _ in 0..1200 {
            if self.analytics_metrics.evaluations.get() >= areas as u64 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("analytics did not evaluate every area within 120 s of its start")
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.ingest.await;
        let _ = self.analytics.await;
    }
}

/// Gives each gauge (and each area's rain gauge, with `rain`) `history` of quiet 10-minute
/// readings, up to 10 minutes ago; returns how many readings that is in all.
async fn fill_history(
    store: &Store,
    gauges: &[(String, String)],
    rain: bool,
    history: Duration,
) -> anyhow::Result<usize> {
    let per_gauge = (history.as_secs() / 600) as i64;
    if per_gauge == 0 {
        return Ok(0);
    }
    let catalog = store.sensor_catalog().await?;
    let now = Utc::now();
    let mut batch = Vec::new();
    let mut written = 0;
    let sensors = gauges.iter().flat_map(|(device, level)| {
        let rain = rain.then(|| (rain_gauge(device), true));
        std::iter::once((level.clone(), false)).chain(rain)
    });
    for (sensor, is_rain) in sensors {
        let sensor_id = catalog
            .iter()
            .find(|s| s.key == sensor)
            .map(|s| s.id)
            .context("a bench gauge is not registered")?;
        for i in 1..=per_gauge {
            let value = if is_rain { shower(i) } else { tide(i) };
            batch.push(tidemark_store::readings::ReadingRow {
                sensor_id,
                ts: now - chrono::Duration::minutes(10 * i),
                value,
                quality: 0,
            });
        }
        if batch.len() >= 200_000 {
            written += batch.len();
            store.write_batch(&batch, &[], Utc::now()).await?;
            batch.clear();
        }
    }
    written += batch.len();
    store.write_batch(&batch, &[], Utc::now()).await?;
    store.analyze_readings().await?;
    Ok(written)
}

/// A gauge's quiet history `i` readings of 10 minutes back: a tide between 0.3 and 0.7 m, below
/// the alert level (a constant level would be flagged as a stuck sensor).
pub(crate) fn tide(i: i64) -> f64 {
    0.5 + 0.2 * (i as f64 / 74.5 * std::f64::consts::TAU).sin()
}

/// A rain gauge's history `i` readings of 10 minutes back: a shower of 0.2 to 1.2 mm per 10
/// minutes every four hours, at most 3.0 mm in 30 minutes and 8.4 mm in 6 hours, well below DMI's
/// 15 and 24 mm.
pub(crate) fn shower(i: i64) -> f64 {
    if i % 24 < 6 {
        0.2 * (i % 24 + 1) as f64
    } else {
        0.0
    }
}

/// The rain gauge of the bench device `device`.
fn rain_gauge(device: &str) -> String {
    format!("{device}.rain")
}

/// Registers `areas` flood areas, each with a water-level gauge (and, with `rain`, a rain gauge
/// on the same device), and the background load's devices. Returns each area's device and level
/// sensor, and the background devices.
pub(crate) async fn register(
    store: &Store,
    areas: usize,
    rain: bool,
) -> anyhow::Result<(Vec<(String, String)>, Vec<Device>)> {
    let mut reference = ReferenceData::default();
    let mut setup = FloodSetup::default();
    let mut gauges = Vec::new();
    for a in 0..areas {
        let device = format!("bench-gauge-{a}");
        let sensor = format!("bench-gauge-{a}.level");
        reference.devices.push(DeviceRecord {
            key: device.clone(),
            name: String::new(),
        });
        reference.sensors.push(SensorRecord {
            key: sensor.clone(),
            device: device.clone(),
            station: None,
            quantity: "water_level".into(),
            name: String::new(),
            expected_interval: Duration::from_secs(3600),
        });
        let mut sensors = vec![sensor.clone()];
        if rain {
            reference.sensors.push(SensorRecord {
                key: rain_gauge(&device),
                device: device.clone(),
                station: None,
                quantity: "rainfall".into(),
                name: String::new(),
                expected_interval: Duration::from_secs(600),
            });
            sensors.push(rain_gauge(&device));
        }
        let lon = 10.0 + a as f64 * 0.01;
        setup.areas.push(AreaRow {
            key: format!("bench-area-{a}"),
            name: format!("bench area {a}"),
            polygon: serde_json::json!({"type": "Polygon", "coordinates": [[[lon, 56.0], [lon + 0.005, 56.0], [lon + 0.005, 56.005], [lon, 56.005], [lon, 56.0]]]}),
            municipality_codes: vec![],
            sensors,
            forecast_horizon: std::time::Duration::from_secs(24 * 3600),
            hazard: tidemark_model::warning::Category::Flood,
        });
        setup.thresholds.push(ThresholdRow {
            sensor_key: sensor.clone(),
            alert: 1.0,
            warning: 1.5,
            severe: 2.0,
            persistence: Duration::ZERO,
            min_readings: 1,
            hysteresis: 0.0,
            hold: Duration::ZERO,
            rate_window: Duration::from_secs(3600),
            lead_time: Duration::ZERO,
            plausible_low: -10.0,
            plausible_high: 10.0,
            spike_floor: 100.0,
            rate_alert: None,
            falling: false,
        });
        gauges.push((device, sensor));
    }
    let mut background = Vec::new();
    for d in 0..20 {
        let device = format!("bench-load-{d}");
        reference.devices.push(DeviceRecord {
            key: device.clone(),
            name: String::new(),
        });
        let mut sensors = Vec::new();
        for s in 0..10 {
            let sensor = format!("bench-load-{d}.level-{s}");
            reference.sensors.push(SensorRecord {
                key: sensor.clone(),
                device: device.clone(),
                station: None,
                quantity: "water_level".into(),
                name: String::new(),
                expected_interval: Duration::from_secs(60),
            });
            sensors.push(SensorKey::parse(&sensor)?);
        }
        background.push(Device {
            id: DeviceId::parse(&device)?,
            sensors,
        });
    }
    store.apply_reference(&reference).await?;
    store
        .apply_flood_setup(&setup)
        .await
        .context("registering the bench areas")?;
    Ok((gauges, background))
}
