//! `tidemark-bench ingest`: readings through a private Mosquitto into a fresh database, measured
//! beside the two ceilings that bound it, in the same run.
//!
//! Per run:
//! 1. broker ceiling: the single-reading messages published and consumed at QoS 1, no database;
//! 2. database ceiling: the same number of rows written by binary COPY straight into `readings`;
//! 3. ingest (a process of its own, `tidemark-bench ingest-stage`, which runs the ingest stage as
//!    `tidemark ingest` does, so that its peak RSS is its own) with one reading
//!    per message, then with 50 readings per message.
//!
//! Throughput runs from the first publish to the commit of the last reading, which the bench sees as
//! a `readings_committed` notification. Each reading's timestamp is its publication time, and every
//! row of a batch carries the batch's `received_at`, which the notification names, so
//! publish-to-commit latency is the notification's arrival minus the reading's timestamp.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tidemark::config::Config;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::{DeviceId, SensorKey};
use tidemark_sensors_sim::load::{self, Device, Plan};
use tidemark_store::coordination::{Channel, Notice};
use tidemark_store::readings::ReadingRow;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
use tidemark_store::{notify, DatabaseConfig, Store};
use tidemark_testkit::{Broker, TestDatabase};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IngestBenchArgs {
    /// Readings published in each phase.
    #[arg(long, default_value_t = 200_000)]
    pub readings: usize,
    /// Simulated devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Sensors per device.
    #[arg(long, default_value_t = 10)]
    pub sensors_per_device: usize,
    /// Publishing MQTT connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Readings per message in the batched phase.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Runs; the median of each figure is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
struct RunFigures {
    broker_msgs_per_s: f64,
    database_rows_per_s: f64,
    single_per_s: f64,
    single_p50_ms: f64,
    single_p99_ms: f64,
    batched_per_s: f64,
    batched_p50_ms: f64,
    batched_p99_ms: f64,
    ingest_peak_rss_mb: f64,
}

pub(crate) async fn ingest(
    config: &Config,
    config_file: &Path,
    args: IngestBenchArgs,
) -> anyhow::Result<()> {
    if args.readings == 0 || args.devices == 0 || args.sensors_per_device == 0 || args.runs == 0 {
        bail!("--readings, --devices, --sensors-per-device and --runs must be positive");
    }
    println!(
        "tidemark-bench ingest: {} readings per phase, {} devices x {} sensors, {} publishing connections, {} run(s)",
        args.readings, args.devices, args.sensors_per_device, args.connections, args.runs
    );
    println!("machine: {} cores, {}", cores(), memory());
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let figures = one_run(config, config_file, &args)
            .await
            .with_context(|| format!("run {run}"))?;
        println!(
            "run {run}: broker {:.0} msg/s | database {:.0} rows/s | ingest 1/msg {:.0} readings/s (p50 {:.1} ms, p99 {:.1} ms) | ingest {}/msg {:.0} readings/s (p50 {:.1} ms, p99 {:.1} ms) | ingest peak RSS {:.1} MB",
            figures.broker_msgs_per_s,
            figures.database_rows_per_s,
            figures.single_per_s,
            figures.single_p50_ms,
            figures.single_p99_ms,
            args.batch,
            figures.batched_per_s,
            figures.batched_p50_ms,
            figures.batched_p99_ms,
            figures.ingest_peak_rss_mb,
        );
        runs.push(figures);
    }
    let median = |f: fn(&RunFigures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let broker = median(|r| r.broker_msgs_per_s);
    let database = median(|r| r.database_rows_per_s);
    let single = median(|r| r.single_per_s);
    let batched = median(|r| r.batched_per_s);
    println!();
    println!(
        "median of {} run(s)                      | value          | vs ceiling",
        runs.len()
    );
    println!("-----------------------------------------|----------------|-----------");
    println!("broker ceiling (QoS 1, no database)      | {broker:>9.0} msg/s |");
    println!("database ceiling (binary COPY)           | {database:>8.0} rows/s |");
    println!(
        "ingest, 1 reading per message            | {single:>6.0} readings/s | {:>5.1} % of broker",
        100.0 * single / broker
    );
    println!(
        "ingest, {:>2} readings per message          | {batched:>6.0} readings/s | {:>5.1} % of database",
        args.batch,
        100.0 * batched / database
    );
    println!(
        "publish-to-commit, 1 per message         | p50 {:.1} ms, p99 {:.1} ms",
        median(|r| r.single_p50_ms),
        median(|r| r.single_p99_ms)
    );
    println!(
        "publish-to-commit, {:>2} per message        | p50 {:.1} ms, p99 {:.1} ms",
        args.batch,
        median(|r| r.batched_p50_ms),
        median(|r| r.batched_p99_ms)
    );
    println!(
        "ingest peak RSS                          | {:.1} MB",
        median(|r| r.ingest_peak_rss_mb)
    );
    Ok(())
}

async fn one_run(
    config: &Config,
    config_file: &Path,
    args: &IngestBenchArgs,
) -> anyhow::Result<RunFigures> {
    let broker = Broker::start().await?;
    let database = TestDatabase::create(&config.database).await?;
    let outcome = measure(config, config_file, args, &broker, &database.config).await;
    database.drop_database().await?;
    outcome
}

async fn measure(
    config: &Config,
    config_file: &Path,
    args: &IngestBenchArgs,
    broker: &Broker,
    database: &DatabaseConfig,
) -> anyhow::Result<RunFigures> {
    let mut figures = RunFigures::default();
    let broker_config = BrokerConfig {
        topic_prefix: config.mqtt.topic_prefix.clone(),
        ..broker.config()
    };
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(database).await?;
    let devices = register_devices(&store, args).await?;
    let plan = |per_message: usize, client_prefix: &str| Plan {
        devices: devices.clone(),
        readings: args.readings,
        per_message,
        connections: args.connections,
        client_prefix: client_prefix.to_owned(),
    };

    figures.broker_msgs_per_s = broker_ceiling(&broker_config, &plan(1, "bench-broker")).await?;
    figures.database_rows_per_s = database_ceiling(
        &store,
        args.readings,
        args.devices * args.sensors_per_device,
    )
    .await?;

    let mut ingest = spawn_ingest(config_file, database, &broker_config)?;
    let mut listener = notify::listen(database, &[Channel::ReadingsCommitted]).await?;
    wait_for_subscription(&broker_config, &devices[0], &mut listener).await?;

    for (per_message, prefix) in [(1, "bench-single"), (args.batch, "bench-batched")] {
        let since = Utc::now();
        let commits = tokio::spawn(collect_commits(listener, args.readings as u64));
        let report = load::publish(&broker_config, &plan(per_message, prefix)).await?;
        let (returned, commit_times) = commits.await??;
        listener = returned;
        let last_commit = commit_times
            .values()
            .copied()
            .max()
            .unwrap_or(report.last_ack);
        let seconds = (last_commit - report.first_publish)
            .num_microseconds()
            .unwrap_or(1) as f64
            / 1e6;
        let per_s = report.readings as f64 / seconds;
        let mut latencies: Vec<f64> = store
            .received_since(since)
            .await?
            .into_iter()
            .filter_map(|(ts, received_at)| {
                let commit = commit_times.get(&received_at.timestamp_micros())?;
                Some((*commit - ts).num_microseconds()? as f64 / 1000.0)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
        if per_message == 1 {
            (
                figures.single_per_s,
                figures.single_p50_ms,
                figures.single_p99_ms,
            ) = (per_s, p50, p99);
        } else {
            (
                figures.batched_per_s,
                figures.batched_p50_ms,
                figures.batched_p99_ms,
            ) = (per_s, p50, p99);
        }
    }
    figures.ingest_peak_rss_mb = peak_rss_mb(ingest.id()).unwrap_or(f64::NAN);
    let _ = ingest.kill().await;
    Ok(figures)
}

async fn register_devices(store: &Store, args: &IngestBenchArgs) -> anyhow::Result<Vec<Device>> {
    let mut reference = ReferenceData::default();
    let mut devices = Vec::new();
    for d in 0..args.devices {
        let key = format!("bench-device-{d}");
        reference.devices.push(DeviceRecord {
            key: key.clone(),
            name: String::new(),
        });
        let mut sensors = Vec::new();
        for s in 0..args.sensors_per_device {
            let sensor = format!("bench-{d}.level-{s}");
            reference.sensors.push(SensorRecord {
                key: sensor.clone(),
                device: key.clone(),
                station: None,
                quantity: "water_level".to_owned(),
                name: String::new(),
                expected_interval: Duration::from_secs(60),
            });
            sensors.push(SensorKey::parse(&sensor)?);
        }
        devices.push(Device {
            id: DeviceId::parse(&key)?,
            sensors,
        });
    }
    store.apply_reference(&reference).await?;
    Ok(devices)
}

/// Messages per second through the broker alone: published and consumed at QoS 1, each
/// acknowledged by the consumer as it arrives.
async fn broker_ceiling(broker: &BrokerConfig, plan: &Plan) -> anyhow::Result<f64> {
    let topics = ReadingsTopics::new(&broker.topic_prefix)?;
    let mut options = MqttOptions::new("bench-broker-consumer", &broker.host, broker.port);
    options
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    client
        .subscribe(topics.filter(None)?, QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let expected = plan.readings.div_ceil(plan.per_message);
    let consumer = tokio::spawn(async move {
        let mut received = 0;
        while received < expected {
            if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await? {
                received += 1;
                client.try_ack(&publish)?;
            }
        }
        let last = Utc::now();
        let _ = client.disconnect().await;
        anyhow::Ok(last)
    });
    let report = load::publish(broker, plan).await?;
    let last = tokio::time::timeout(Duration::from_secs(300), consumer)
        .await
        .context("the broker-ceiling consumer did not receive every message in 300s")???;
    let seconds = (last - report.first_publish)
        .num_microseconds()
        .unwrap_or(1) as f64
        / 1e6;
    Ok(report.messages as f64 / seconds)
}

/// Rows per second written by binary COPY straight into `readings` (the store's batch write, whose
/// common path is exactly that), in batches of 50,000 rows.
async fn database_ceiling(store: &Store, readings: usize, sensors: usize) -> anyhow::Result<f64> {
    let sensor_ids: Vec<i32> = store
        .directory()
        .await?
        .sensors
        .values()
        .map(|(id, _)| *id)
        .collect();
    anyhow::ensure!(sensor_ids.len() == sensors, "expected {sensors} sensors");
    // A day back, so that these rows never collide with the ingest phases' publication times.
    let base = Utc::now() - chrono::Duration::days(1);
    let rows: Vec<ReadingRow> = (0..readings)
        .map(|i| ReadingRow {
            sensor_id: sensor_ids[i % sensor_ids.len()],
            ts: base + chrono::Duration::microseconds((i / sensor_ids.len()) as i64),
            value: 1.0 + (i % 100) as f64 / 100.0,
            quality: 0,
        })
        .collect();
    let started = Instant::now();
    for chunk in rows.chunks(50_000) {
        store.write_batch(chunk, &[], Utc::now()).await?;
    }
    Ok(readings as f64 / started.elapsed().as_secs_f64())
}

fn spawn_ingest(
    config_file: &Path,
    database: &DatabaseConfig,
    broker: &BrokerConfig,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let metrics_port = tidemark_testkit::free_port()?;
    let child = tokio::process::Command::new(exe)
        .arg("ingest-stage")
        .env("TIDEMARK__DATABASE__URL", &database.url)
        .env("TIDEMARK__MQTT__PORT", broker.port.to_string())
        .env("TIDEMARK__MQTT__HOST", &broker.host)
        .env("TIDEMARK__INGEST__CLIENT_ID", "bench-ingest")
        .env(
            "TIDEMARK__INGEST__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("TIDEMARK__REFERENCE__FILES", "[]")
        .env("RUST_LOG", "warn")
        .env_remove("TIDEMARK_ENV")
        .arg("--config")
        .arg(config_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the ingest stage")?;
    Ok(child)
}

/// Publishes probe readings until one is committed: then ingest is subscribed.
async fn wait_for_subscription(
    broker: &BrokerConfig,
    device: &Device,
    listener: &mut notify::Listener,
) -> anyhow::Result<()> {
    let probe = Device {
        id: device.id.clone(),
        sensors: vec![device.sensors[0].clone()],
    };
    for _ in 0..100 {
        load::publish(
            broker,
            &Plan {
                devices: vec![probe.clone()],
                readings: 1,
                per_message: 1,
                connections: 1,
                client_prefix: "bench-probe".to_owned(),
            },
        )
        .await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await
        {
            // Drain whatever else the probes produced.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
            {
            }
            return Ok(());
        }
    }
    bail!("ingest did not store a probe reading within 20 s")
}

/// Collects commit notifications until `expected` rows are announced: received_at (µs) to arrival.
async fn collect_commits(
    mut listener: notify::Listener,
    expected: u64,
) -> anyhow::Result<(notify::Listener, HashMap<i64, DateTime<Utc>>)> {
    let mut commits = HashMap::new();
    let mut rows = 0;
    while rows < expected {
        let notification = tokio::time::timeout(Duration::from_secs(60), listener.recv())
            .await
            .with_context(|| format!("no commit for 60 s with {rows} of {expected} rows stored"))?
            .context("the listening connection closed")?;
        let arrived = Utc::now();
        let Notice::ReadingsCommitted(batch) = notification else {
            continue;
        };
        rows += batch.rows;
        commits
            .entry(batch.received_at.timestamp_micros())
            .or_insert(arrived);
    }
    Ok((listener, commits))
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB memory", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown memory".to_owned())
}
