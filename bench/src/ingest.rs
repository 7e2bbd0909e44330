//! `tidemark-bench ingest`: readings through a private Mosquitto into a fresh database, measured
//! beside the two ceilings that bound it, in the same run and interleaved with it.
//!
//! Per run, with ingest (a process of its own, `tidemark-bench ingest-stage`, which runs the ingest
//! stage as `tidemark ingest` does, so that its peak RSS and CPU time are its own) started first:
//! 1. broker ceiling: single-reading messages published and consumed at QoS 1, no database (on
//!    topics ingest does not subscribe to);
//! 2. ingest with one reading per message;
//! 3. the broker ceiling again;
//! 4. database ceiling: `--batched-readings` rows written by binary COPY straight into `readings`
//!    (on one connection unless `--ceiling-connections` says more);
//! 5. ingest with 50 readings per message, as many readings;
//! 6. the database ceiling again.
//!
//! Each ingest phase is compared with the mean of the ceilings measured just before and just
//! after it, so that a machine that slows down or speeds up during a run moves both alike.
//! Between phases the rollups are brought up to date and the database checkpoints, so that each
//! phase starts from the same state.
//!
//! Throughput runs from the first publish to the commit of the last reading, which the bench sees as
//! a `readings_committed` notification. Each reading's timestamp is its publication time, and every
//! row of a batch carries the batch's `received_at`, which the notification names, so
//! publish-to-commit latency is the notification's arrival minus the reading's timestamp.
//!
//! With `--backlog`, each run instead fills the broker with readings for ingest's stopped session
//! and measures ingest working through them from its start: throughput, peak RSS, CPU. With
//! `--nats` as well, each run does the same a second time with a private nats-server in place of
//! Mosquitto (devices publishing to its MQTT listener, ingest pulling from JetStream), so that the
//! two sources are compared in the same run.

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
    /// Readings published in the phase of one reading per message (one message each), and
    /// messages in each broker ceiling around it. A phase's rate runs to its last commit, so ingest's
    /// publish-to-commit time (about a quarter of a second at p99 there) weighs on a short phase
    /// and hardly on a long one: at 200,000 a phase took 2 to 4 s, and its ratio to the ceiling
    /// was 5 to 10 points lower than at 1,000,000 in the same hour (README).
    #[arg(long, default_value_t = 1_000_000)]
    pub readings: usize,
    /// Readings published in the phase of `--batch` readings per message, and rows written in
    /// each database ceiling around it. At 50 a message, 200,000
    /// readings went through in about half a second, not even twice their own publish-to-commit
    /// p50, so a phase measured mostly its start and end.
    #[arg(long, default_value_t = 1_000_000)]
    pub batched_readings: usize,
    /// Simulated devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Sensors per device.
    #[arg(long, default_value_t = 10)]
    pub sensors_per_device: usize,
    /// Publishing MQTT connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Connections the database ceiling writes on at once, each taking every so many of its
    /// transactions. One, a single COPY stream, is the ceiling the target is set against; ingest
    /// commits two batches at once on two connections, and `--ceiling-connections 2` shows what
    /// the database takes that way.
    #[arg(long, default_value_t = 1)]
    pub ceiling_connections: usize,
    /// Readings per message in the batched phase (and in the backlog).
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Runs; the median of each figure is reported. By default 7 for the phases and 3 for
    /// `--backlog`: on a shared two-core machine a single run's ratio to its ceilings moved by up
    /// to 30 points, and the medians of 7 runs repeated better than those of 3 (README).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Instead of the phases above: fill the broker with this many readings (2,500,000 if no
    /// number is given) for ingest's session while ingest is stopped, then start it and measure
    /// it working through them.
    #[arg(long, num_args = 0..=1, default_missing_value = "2500000")]
    pub backlog: Option<usize>,
    /// With `--backlog`: also measure each run with nats-server in place of Mosquitto and ingest
    /// pulling from JetStream (`ingest.source = "nats"`), right after the Mosquitto measurement.
    #[arg(long, requires = "backlog")]
    pub nats: bool,
}

impl IngestBenchArgs {
    /// `--runs`, or its default for the kind of run asked for.
    fn runs(&self) -> usize {
        self.runs
            .unwrap_or(if self.backlog.is_some() { 3 } else { 7 })
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
struct RunFigures {
    /// The broker ceiling before and after the single-reading phase.
    broker_msgs_per_s: [f64; 2],
    /// Mosquitto's CPU-seconds per million messages in those two ceilings.
    broker_ceiling_cpu: [f64; 2],
    /// The database ceiling before and after the batched phase.
    database_rows_per_s: [f64; 2],
    single: Phase,
    batched: Phase,
    ingest_peak_rss_mb: f64,
}

/// Picks one phase out of a run's figures.
type PhaseOf = fn(&RunFigures) -> &Phase;

/// One ingest phase.
#[derive(Debug, Clone, Default)]
struct Phase {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU-seconds per million readings stored: ingest's own, and PostgreSQL's and Mosquitto's.
    cpu: Footprint,
    /// CPU-seconds per million readings stored that this process spent meanwhile: the load
    /// generator (the devices publishing) and the collection of commits. On a machine of few
    /// cores it competes with the pipeline for them, and the database ceiling does not.
    generator_cpu: f64,
}

/// CPU-seconds per million readings stored.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    ingest: f64,
    database: f64,
    broker: f64,
}

impl Phase {
    fn ratio(&self, ceilings: [f64; 2]) -> f64 {
        self.per_s / ((ceilings[0] + ceilings[1]) / 2.0)
    }
}

/// The most messages the benchmark's broker queues for one client (`max_queued_messages` in
/// `config/mosquitto-test.conf`). Beyond it Mosquitto drops QoS 1 messages for a client that is
/// behind, and a phase would wait for messages that never come.
const BROKER_QUEUE: usize = 1_000_000;

/// Refuses a run whose largest phase publishes more messages than the broker queues: the phases'
/// single-reading messages, or the backlog's messages of `--batch` readings.
fn check_broker_queue(args: &IngestBenchArgs) -> anyhow::Result<()> {
    let batched = args.batched_readings.div_ceil(args.batch.max(1));
    let (messages, what) = match args.backlog {
        Some(backlog) => (backlog.div_ceil(args.batch.max(1)), "--backlog"),
        None if batched > args.readings => (batched, "--batched-readings"),
        None => (args.readings, "--readings"),
    };
    if messages > BROKER_QUEUE {
        bail!(
            "{what} asks for {messages} messages in one phase; the benchmark's broker queues at most \
             {BROKER_QUEUE} for a client that is behind (max_queued_messages in \
             config/mosquitto-test.conf) and drops the rest, so the phase would never end"
        );
    }
    Ok(())
}

pub(crate) async fn ingest(
    config: &Config,
    config_file: &Path,
    args: IngestBenchArgs,
) -> anyhow::Result<()> {
    if args.readings == 0
        || args.batched_readings == 0
        || args.devices == 0
        || args.sensors_per_device == 0
        || args.runs() == 0
        || args.ceiling_connections == 0
    {
        bail!("--readings, --batched-readings, --devices, --sensors-per-device, --runs and --ceiling-connections must be positive");
    }
    check_broker_queue(&args)?;
    if let Some(backlog) = args.backlog {
        return backlog_runs(config, config_file, &args, backlog).await;
    }
    println!(
        "tidemark-bench ingest: {} readings a phase at 1 a message, {} at {} a message, {} devices x {} sensors, {} publishing connections, database ceiling on {} connection(s), {} run(s)",
        args.readings,
        args.batched_readings,
        args.batch,
        args.devices,
        args.sensors_per_device,
        args.connections,
        args.ceiling_connections,
        args.runs()
    );
    println!("machine: {} cores, {}", cores(), memory());
    let mut runs = Vec::new();
    for run in 1..=args.runs() {
        let figures = one_run(config, config_file, &args)
            .await
            .with_context(|| format!("run {run}"))?;
        let [b0, b1] = figures.broker_msgs_per_s;
        let [d0, d1] = figures.database_rows_per_s;
        println!(
            "run {run}: broker {b0:.0} | ingest 1/msg {:.0} readings/s (p50 {:.1} ms, p99 {:.1} ms) | broker {b1:.0} msg/s => {:.1} % || database {d0:.0} | ingest {}/msg {:.0} readings/s (p50 {:.1} ms, p99 {:.1} ms) | database {d1:.0} rows/s => {:.1} % || ingest peak RSS {:.1} MB",
            figures.single.per_s,
            figures.single.p50_ms,
            figures.single.p99_ms,
            100.0 * figures.single.ratio(figures.broker_msgs_per_s),
            args.batch,
            figures.batched.per_s,
            figures.batched.p50_ms,
            figures.batched.p99_ms,
            100.0 * figures.batched.ratio(figures.database_rows_per_s),
            figures.ingest_peak_rss_mb,
        );
        runs.push(figures);
    }
    let figure = |f: &dyn Fn(&RunFigures) -> f64| Spread::of(runs.iter().map(f).collect());
    let broker = figure(&|r| (r.broker_msgs_per_s[0] + r.broker_msgs_per_s[1]) / 2.0);
    let database = figure(&|r| (r.database_rows_per_s[0] + r.database_rows_per_s[1]) / 2.0);
    let single = figure(&|r| r.single.per_s);
    let batched = figure(&|r| r.batched.per_s);
    let single_ratio = figure(&|r| 100.0 * r.single.ratio(r.broker_msgs_per_s));
    let batched_ratio = figure(&|r| 100.0 * r.batched.ratio(r.database_rows_per_s));
    println!();
    println!(
        "median of {} run(s) [lowest, highest]      | value",
        runs.len()
    );
    println!("-------------------------------------------|------------------------------------");
    println!(
        "broker ceiling (QoS 1, no database)        | {} msg/s",
        broker.show(0)
    );
    println!(
        "  Mosquitto CPU-seconds per million msgs   | {}",
        figure(&|r| (r.broker_ceiling_cpu[0] + r.broker_ceiling_cpu[1]) / 2.0).show(1)
    );
    println!(
        "database ceiling (binary COPY)             | {} rows/s",
        database.show(0)
    );
    println!(
        "ingest, 1 reading per message              | {} readings/s",
        single.show(0)
    );
    println!(
        "  of the broker ceiling around it          | {} %",
        single_ratio.show(1)
    );
    println!(
        "ingest, {:>2} readings per message            | {} readings/s",
        args.batch,
        batched.show(0)
    );
    println!(
        "  of the database ceiling around it        | {} %",
        batched_ratio.show(1)
    );
    let phases: [(String, PhaseOf); 2] = [
        ("1 reading per message".to_owned(), |r| &r.single),
        (format!("{} readings per message", args.batch), |r| {
            &r.batched
        }),
    ];
    for (label, phase) in phases {
        println!("{label}:");
        println!(
            "  publish-to-commit p50, p99               | {} ms, {} ms",
            figure(&|r| phase(r).p50_ms).show(1),
            figure(&|r| phase(r).p99_ms).show(1)
        );
        println!(
            "  CPU-seconds per million readings stored  | ingest {}, PostgreSQL {}, Mosquitto {}",
            figure(&|r| phase(r).cpu.ingest).show(1),
            figure(&|r| phase(r).cpu.database).show(1),
            figure(&|r| phase(r).cpu.broker).show(1)
        );
        println!(
            "  load generator, the same                 | {}",
            figure(&|r| phase(r).generator_cpu).show(1)
        );
    }
    println!(
        "ingest peak RSS                            | {} MB",
        figure(&|r| r.ingest_peak_rss_mb).show(1)
    );
    Ok(())
}

/// A figure over the runs: its median, lowest and highest.
struct Spread {
    median: f64,
    low: f64,
    high: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            median: values.get(values.len() / 2).copied().unwrap_or(f64::NAN),
            low: values.first().copied().unwrap_or(f64::NAN),
            high: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} [{:.*}, {:.*}]",
            decimals, self.median, decimals, self.low, decimals, self.high
        )
    }
}

async fn one_run(
    config: &Config,
    config_file: &Path,
    args: &IngestBenchArgs,
) -> anyhow::Result<RunFigures> {
    let broker = Broker::start_saving_as_deployed().await?;
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
    // The ceiling's messages go where ingest does not listen.
    let ceiling_config = BrokerConfig {
        topic_prefix: format!("{}-ceiling", config.mqtt.topic_prefix),
        ..broker.config()
    };
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(database).await?;
    let devices = register_devices(&store, args).await?;
    let plan = |readings: usize, per_message: usize, client_prefix: &str| Plan {
        devices: devices.clone(),
        readings,
        per_message,
        connections: args.connections,
        client_prefix: client_prefix.to_owned(),
    };

    // Before every reading the phases publish: the database ceilings' rows go just before it.
    let started = Utc::now();
    let mut ingest = spawn_ingest(config_file, database, &broker_config, "bench-ingest", &[])?;
    let mut listener = notify::listen(database, &[Channel::ReadingsCommitted]).await?;
    wait_for_subscription(&broker_config, &devices[0], &mut listener).await?;
    let processes = Processes {
        ingest: ingest.id(),
        broker: broker.pid(),
    };

    quiet(&store, database, &mut listener).await?;
    (figures.broker_msgs_per_s[0], figures.broker_ceiling_cpu[0]) = broker_ceiling(
        &ceiling_config,
        &plan(args.readings, 1, "bench-broker-a"),
        &processes,
    )
    .await?;
    quiet(&store, database, &mut listener).await?;
    (listener, figures.single) = ingest_phase(
        &store,
        &broker_config,
        &plan(args.readings, 1, "bench-single"),
        listener,
        &processes,
    )
    .await?;
    quiet(&store, database, &mut listener).await?;
    (figures.broker_msgs_per_s[1], figures.broker_ceiling_cpu[1]) = broker_ceiling(
        &ceiling_config,
        &plan(args.readings, 1, "bench-broker-b"),
        &processes,
    )
    .await?;
    let sensors = args.devices * args.sensors_per_device;
    quiet(&store, database, &mut listener).await?;
    let rows = args.batched_readings;
    figures.database_rows_per_s[0] =
        database_ceiling(&store, rows, sensors, started, 1, args.ceiling_connections).await?;
    quiet(&store, database, &mut listener).await?;
    (listener, figures.batched) = ingest_phase(
        &store,
        &broker_config,
        &plan(args.batched_readings, args.batch, "bench-batched"),
        listener,
        &processes,
    )
    .await?;
    quiet(&store, database, &mut listener).await?;
    figures.database_rows_per_s[1] =
        database_ceiling(&store, rows, sensors, started, 2, args.ceiling_connections).await?;
    figures.ingest_peak_rss_mb = peak_rss_mb(ingest.id()).unwrap_or(f64::NAN);
    let _ = ingest.kill().await;
    Ok(figures)
}

/// Between phases: the rollups brought up to date (so that no phase inherits the refresh of the
/// one before), a checkpoint (so that none falls inside a phase, and every phase starts from the
/// same state of the write-ahead log), and the commit notifications of the phase before (the
/// database ceiling's too) taken off the listener.
async fn quiet(
    store: &Store,
    database: &DatabaseConfig,
    listener: &mut notify::Listener,
) -> anyhow::Result<()> {
    store.refresh_all_rollups().await?;
    // CHECKPOINT needs a superuser or the pg_checkpoint role: without either the phases still
    // run, with checkpoints wherever the server puts them.
    static CHECKPOINT_REFUSED: std::sync::Once = std::sync::Once::new();
    if let Err(error) = tidemark_testkit::admin::execute(database, "CHECKPOINT").await {
        CHECKPOINT_REFUSED.call_once(|| {
            eprintln!("bench ingest: no checkpoint between phases ({error})");
        });
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
    {
    }
    Ok(())
}

/// The processes whose CPU time a phase counts.
struct Processes {
    ingest: Option<u32>,
    broker: Option<u32>,
}

impl Processes {
    fn broker_cpu_seconds(&self) -> f64 {
        self.broker.map_or(f64::NAN, process_cpu_seconds)
    }

    fn cpu_seconds(&self) -> [f64; 3] {
        [
            self.ingest.map_or(f64::NAN, process_cpu_seconds),
            postgres_cpu_seconds(),
            self.broker_cpu_seconds(),
        ]
    }
}

/// Publishes a plan's readings for ingest and measures them stored.
async fn ingest_phase(
    store: &Store,
    broker: &BrokerConfig,
    plan: &Plan,
    listener: notify::Listener,
    processes: &Processes,
) -> anyhow::Result<(notify::Listener, Phase)> {
    let since = Utc::now();
    let cpu_before = processes.cpu_seconds();
    let generator_before = process_cpu_seconds(std::process::id());
    let commits = tokio::spawn(collect_commits(listener, plan.readings as u64));
    let report = load::publish(broker, plan).await?;
    let (listener, commit_times) = commits.await??;
    let cpu_after = processes.cpu_seconds();
    let generator_after = process_cpu_seconds(std::process::id());
    let last_commit = commit_times
        .values()
        .copied()
        .max()
        .unwrap_or(report.last_ack);
    let seconds = (last_commit - report.first_publish)
        .num_microseconds()
        .unwrap_or(1) as f64
        / 1e6;
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
    let per_million = |i: usize| (cpu_after[i] - cpu_before[i]) * 1e6 / report.readings as f64;
    Ok((
        listener,
        Phase {
            per_s: report.readings as f64 / seconds,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            cpu: Footprint {
                ingest: per_million(0),
                database: per_million(1),
                broker: per_million(2),
            },
            generator_cpu: (generator_after - generator_before) * 1e6 / report.readings as f64,
        },
    ))
}

/// `--backlog`: per run, ingest subscribes once and stops; the broker takes `backlog` readings
/// (in messages of `--batch`) for its session; then ingest starts again and works through them.
async fn backlog_runs(
    config: &Config,
    config_file: &Path,
    args: &IngestBenchArgs,
    backlog: usize,
) -> anyhow::Result<()> {
    println!(
        "tidemark-bench ingest --backlog: {backlog} readings in messages of {} waiting in the broker before ingest starts, {} devices x {} sensors, {} run(s)",
        args.batch, args.devices, args.sensors_per_device, args.runs()
    );
    println!("machine: {} cores, {}", cores(), memory());
    let mut runs: Vec<(f64, f64, Footprint)> = Vec::new();
    let mut nats_runs: Vec<(f64, f64, Footprint)> = Vec::new();
    for run in 1..=args.runs() {
        let mut brokers = vec![BacklogBroker::Mosquitto(Box::new(
            Broker::start_saving_as_deployed().await?,
        ))];
        if args.nats {
            brokers.push(BacklogBroker::Nats(tidemark_testkit::Nats::start().await?));
        }
        for broker in &brokers {
            let database = TestDatabase::create(&config.database).await?;
            let outcome = backlog_run(config, config_file, args, backlog, broker, &database.config)
                .await
                .with_context(|| format!("run {run} through {}", broker.name()));
            database.drop_database().await?;
            let (per_s, rss, cpu) = outcome?;
            println!(
                "run {run} ({}): {per_s:.0} readings/s from ingest's start to the last commit | ingest peak RSS {rss:.1} MB | CPU-seconds per million readings: ingest {:.1}, PostgreSQL {:.1}, {} {:.1}",
                broker.name(),
                cpu.ingest,
                cpu.database,
                broker.name(),
                cpu.broker
            );
            match broker {
                BacklogBroker::Mosquitto(_) => runs.push((per_s, rss, cpu)),
                BacklogBroker::Nats(_) => nats_runs.push((per_s, rss, cpu)),
            }
        }
    }
    println!();
    println!("median of {} run(s) [lowest, highest]", runs.len());
    for (name, runs) in [("Mosquitto", &runs), ("nats-server", &nats_runs)] {
        if runs.is_empty() {
            continue;
        }
        let figure =
            |f: &dyn Fn(&(f64, f64, Footprint)) -> f64| Spread::of(runs.iter().map(f).collect());
        let source = if name == "Mosquitto" {
            "an MQTT subscription"
        } else {
            "a JetStream consumer"
        };
        println!("{name}, ingest on {source}:");
        println!(
            "  ingest working through the backlog      | {} readings/s",
            figure(&|r| r.0).show(0)
        );
        println!(
            "  ingest peak RSS                         | {} MB",
            figure(&|r| r.1).show(1)
        );
        println!(
            "  CPU-seconds per million readings        | ingest {}, PostgreSQL {}, {name} {}",
            figure(&|r| r.2.ingest).show(1),
            figure(&|r| r.2.database).show(1),
            figure(&|r| r.2.broker).show(1)
        );
    }
    Ok(())
}

/// Where a backlog waits: Mosquitto, holding ingest's persistent session, or nats-server, holding
/// the stream and ingest's durable consumer.
enum BacklogBroker {
    Mosquitto(Box<Broker>),
    Nats(tidemark_testkit::Nats),
}

impl BacklogBroker {
    fn name(&self) -> &'static str {
        match self {
            BacklogBroker::Mosquitto(_) => "Mosquitto",
            BacklogBroker::Nats(_) => "nats-server",
        }
    }

    /// Where devices publish.
    fn mqtt(&self) -> BrokerConfig {
        match self {
            BacklogBroker::Mosquitto(broker) => broker.config(),
            BacklogBroker::Nats(nats) => nats.mqtt(0),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            BacklogBroker::Mosquitto(broker) => broker.pid(),
            BacklogBroker::Nats(nats) => nats.pid(0),
        }
    }

    /// The settings that point ingest at it.
    fn ingest_env(&self) -> Vec<(&'static str, String)> {
        match self {
            BacklogBroker::Mosquitto(_) => Vec::new(),
            BacklogBroker::Nats(nats) => vec![
                ("TIDEMARK__INGEST__SOURCE", "nats".to_owned()),
                (
                    "TIDEMARK__INGEST__NATS__SERVERS",
                    format!("[\"{}\"]", nats.url(0)),
                ),
            ],
        }
    }
}

async fn backlog_run(
    config: &Config,
    config_file: &Path,
    args: &IngestBenchArgs,
    backlog: usize,
    broker: &BacklogBroker,
    database: &DatabaseConfig,
) -> anyhow::Result<(f64, f64, Footprint)> {
    let broker_config = BrokerConfig {
        topic_prefix: config.mqtt.topic_prefix.clone(),
        ..broker.mqtt()
    };
    let env = broker.ingest_env();
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(database).await?;
    let devices = register_devices(&store, args).await?;
    let mut listener = notify::listen(database, &[Channel::ReadingsCommitted]).await?;
    // Ingest's session exists (persistent, subscribed), then ingest goes away.
    let mut first = spawn_ingest(config_file, database, &broker_config, "bench-backlog", &env)?;
    wait_for_subscription(&broker_config, &devices[0], &mut listener).await?;
    first.kill().await?;
    load::publish(
        &broker_config,
        &Plan {
            devices: devices.clone(),
            readings: backlog,
            per_message: args.batch,
            connections: args.connections,
            client_prefix: "bench-backlog".to_owned(),
        },
    )
    .await?;
    let commits = tokio::spawn(collect_commits(listener, backlog as u64));
    let started = Utc::now();
    let mut ingest = spawn_ingest(config_file, database, &broker_config, "bench-backlog", &env)?;
    let processes = Processes {
        ingest: ingest.id(),
        broker: broker.pid(),
    };
    let before = processes.cpu_seconds();
    // The ingest process's own CPU time counts from its start: it is new.
    let before = [0.0, before[1], before[2]];
    let (_, commit_times) = commits.await??;
    let after = processes.cpu_seconds();
    let rss = peak_rss_mb(ingest.id()).unwrap_or(f64::NAN);
    let _ = ingest.kill().await;
    let last = commit_times.values().copied().max().unwrap_or(started);
    let seconds = (last - started).num_microseconds().unwrap_or(1) as f64 / 1e6;
    let per_million = |i: usize| (after[i] - before[i]) * 1e6 / backlog as f64;
    Ok((
        backlog as f64 / seconds,
        rss,
        Footprint {
            ingest: per_million(0),
            database: per_million(1),
            broker: per_million(2),
        },
    ))
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

/// Messages per second through the broker alone (published and consumed at QoS 1, acknowledged
/// by the consumer as they arrive), and Mosquitto's CPU-seconds per million of them.
async fn broker_ceiling(
    broker: &BrokerConfig,
    plan: &Plan,
    processes: &Processes,
) -> anyhow::Result<(f64, f64)> {
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
        let last = consume_acknowledging(&mut eventloop, expected).await?;
        let _ = client.disconnect().await;
        anyhow::Ok(last)
    });
    let cpu_before = processes.broker_cpu_seconds();
    let report = load::publish(broker, plan).await?;
    let last = tokio::time::timeout(Duration::from_secs(300), consumer)
        .await
        .context("the broker-ceiling consumer did not receive every message in 300s")???;
    let cpu = (processes.broker_cpu_seconds() - cpu_before) * 1e6 / report.messages as f64;
    let seconds = (last - report.first_publish)
        .num_microseconds()
        .unwrap_or(1) as f64
        / 1e6;
    Ok((report.messages as f64 / seconds, cpu))
}

/// Receives `expected` messages and acknowledges each as it arrives, and returns when the last
/// arrived. The acknowledgements of the messages one read of the socket brought (rumqttc reads up
/// to ten at a time) go out in one write, through ingest's own writer of them, which it calls
/// once per commit: through `AsyncClient::ack` each would go in a system call and a TCP segment
/// of its own, which the consumer and the broker on the same two cores would pay for once per
/// message, and the ceiling would be the slow consumer's, not the broker's.
async fn consume_acknowledging(
    eventloop: &mut rumqttc::EventLoop,
    expected: usize,
) -> anyhow::Result<DateTime<Utc>> {
    let mut received = 0;
    let mut unacknowledged: Vec<u16> = Vec::new();
    while received < expected {
        if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await? {
            received += 1;
            unacknowledged.push(publish.pkid);
        }
        // The events of that read are all taken: acknowledge what they brought.
        if eventloop.state.events.is_empty() && !unacknowledged.is_empty() {
            let acks = unacknowledged
                .drain(..)
                .map(|pkid| (pkid, QoS::AtLeastOnce));
            tidemark_ingest::service::write_acknowledgements(eventloop, acks).await?;
        }
    }
    Ok(Utc::now())
}

/// Rows per second written by binary COPY straight into `readings` (the store's batch write, whose
/// common path is exactly that), in batches of 50,000 rows, on `connections` connections at once
/// (`--ceiling-connections`). The `nth` ceiling's rows are timed just before `before` (the run's
/// start), each ceiling's before the last's, so that they never collide with the ingest phases'
/// publication times or another ceiling's rows, and yet are as recent as ingest's readings: the
/// store notes them for the rollups as it notes ingest's (see `record_stored`), and the rollup
/// refresh that ingest runs meanwhile costs what it does for ingest's own readings, not the
/// reading again of whole hours that older rows would cost.
async fn database_ceiling(
    store: &Store,
    readings: usize,
    sensors: usize,
    before: DateTime<Utc>,
    nth: i32,
    connections: usize,
) -> anyhow::Result<f64> {
    let sensor_ids: Vec<i32> = store
        .directory()
        .await?
        .sensors
        .values()
        .map(|(id, _)| *id)
        .collect();
    anyhow::ensure!(sensor_ids.len() == sensors, "expected {sensors} sensors");
    let base = ceiling_start(before, readings, sensor_ids.len(), nth);
    let rows: Vec<ReadingRow> = (0..readings)
        .map(|i| ReadingRow {
            sensor_id: sensor_ids[i % sensor_ids.len()],
            ts: base + chrono::Duration::microseconds((i / sensor_ids.len()) as i64),
            value: 1.0 + (i % 100) as f64 / 100.0,
            quality: 0,
        })
        .collect();
    let chunks: Vec<&[ReadingRow]> = rows.chunks(50_000).collect();
    let started = Instant::now();
    futures_util::future::try_join_all((0..connections).map(|first| {
        let chunks = &chunks;
        async move {
            for chunk in chunks.iter().skip(first).step_by(connections) {
                store.write_batch(chunk, &[], Utc::now()).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    Ok(readings as f64 / started.elapsed().as_secs_f64())
}

/// Where the `nth` database ceiling's rows begin: each sensor's rows are a microsecond apart, and
/// each ceiling's end at least a second before the next one's start, the last one's before
/// `before`.
fn ceiling_start(
    before: DateTime<Utc>,
    readings: usize,
    sensors: usize,
    nth: i32,
) -> DateTime<Utc> {
    let span = chrono::Duration::microseconds(readings.div_ceil(sensors.max(1)) as i64)
        + chrono::Duration::seconds(1);
    before - span * nth
}

fn spawn_ingest(
    config_file: &Path,
    database: &DatabaseConfig,
    broker: &BrokerConfig,
    client_id: &str,
    env: &[(&str, String)],
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let metrics_port = tidemark_testkit::free_port()?;
    let child = tokio::process::Command::new(exe)
        .arg("ingest-stage")
        .env("TIDEMARK__DATABASE__URL", &database.url)
        .env("TIDEMARK__MQTT__PORT", broker.port.to_string())
        .env("TIDEMARK__MQTT__HOST", &broker.host)
        .env("TIDEMARK__INGEST__CLIENT_ID", client_id)
        .env(
            "TIDEMARK__INGEST__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("TIDEMARK__REFERENCE__FILES", "[]")
        .envs(env.iter().map(|(k, v)| (k, v)))
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

/// The median of `values` with their lowest and highest: "1.2 ms (1.0 to 1.5)".
pub(crate) fn spread(values: &[f64], unit: &str, digits: usize) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return "none".into();
    }
    format!(
        "{:.digits$} {unit} ({:.digits$} to {:.digits$})",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU-seconds (user and system) a process has used, from `/proc/PID/stat`; with `children`,
/// also those of its children that have ended.
fn stat_cpu_seconds(stat: &str, children: bool) -> f64 {
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after the name.
    let own = ticks(11) + ticks(12);
    let ended = if children { ticks(13) + ticks(14) } else { 0.0 };
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    (own + ended) / 100.0
}

/// CPU-seconds a process has used.
pub(crate) fn process_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(f64::NAN, |stat| stat_cpu_seconds(&stat, false))
}

/// CPU-seconds used by every PostgreSQL process on this machine (the server the benches use, and
/// through the postmaster's count of its ended children, backends and workers that have gone).
pub(crate) fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| stat_cpu_seconds(&stat, true))
        .sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IngestBenchArgs,
    }

    fn args(line: &[&str]) -> IngestBenchArgs {
        Cli::try_parse_from(std::iter::once("ingest").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn a_phase_larger_than_the_broker_queue_is_refused() {
        assert!(check_broker_queue(&args(&[])).is_ok());
        assert!(check_broker_queue(&args(&["--readings", "1000000"])).is_ok());
        let refused = check_broker_queue(&args(&["--readings", "1000001"])).unwrap_err();
        assert!(
            refused.to_string().contains("max_queued_messages"),
            "{refused}"
        );
        // The backlog counts messages of --batch readings.
        assert!(check_broker_queue(&args(&["--backlog"])).is_ok());
        assert!(check_broker_queue(&args(&["--backlog", "50000000"])).is_ok());
        assert!(check_broker_queue(&args(&["--backlog", "50000001"])).is_err());
        assert!(check_broker_queue(&args(&["--backlog", "2000000", "--batch", "1"])).is_err());
        // So does the batched phase.
        let batched = |n: &str| check_broker_queue(&args(&["--batched-readings", n]));
        assert!(batched("50000000").is_ok());
        let refused = batched("50000001").unwrap_err();
        assert!(
            refused.to_string().contains("--batched-readings"),
            "{refused}"
        );
        assert!(
            check_broker_queue(&args(&["--batched-readings", "2000000", "--batch", "1"])).is_err()
        );
    }

    #[test]
    fn the_phases_run_seven_times_and_a_backlog_three_unless_told() {
        assert_eq!(args(&[]).runs(), 7);
        assert_eq!(args(&["--backlog"]).runs(), 3);
        assert_eq!(args(&["--backlog", "1000", "--nats"]).runs(), 3);
        assert_eq!(args(&["--runs", "1"]).runs(), 1);
        assert_eq!(args(&["--backlog", "--runs", "5"]).runs(), 5);
    }

    #[tokio::test]
    async fn the_broker_ceilings_consumer_acknowledges_every_message() {
        // Three times the broker's in-flight window: without acknowledgements it would stop
        // sending there.
        let readings = 3 * Broker::in_flight_window().unwrap();
        let broker = Broker::start().await.unwrap();
        let config = broker.config();
        let devices = (0..6)
            .map(|d| Device {
                id: DeviceId::parse(&format!("ceiling-device-{d}")).unwrap(),
                sensors: (0..10)
                    .map(|s| SensorKey::parse(&format!("ceiling-{d}.level-{s}")).unwrap())
                    .collect(),
            })
            .collect();
        let plan = Plan {
            devices,
            readings,
            per_message: 1,
            connections: 2,
            client_prefix: "ceiling-test".to_owned(),
        };
        let processes = Processes {
            ingest: None,
            broker: broker.pid(),
        };
        let (rate, cpu) = tokio::time::timeout(
            Duration::from_secs(60),
            broker_ceiling(&config, &plan, &processes),
        )
        .await
        .expect("every message consumed within 60 s")
        .unwrap();
        assert!(
            rate > 0.0 && cpu > 0.0,
            "{rate} msg/s, {cpu} CPU-s per million"
        );
    }

    #[tokio::test]
    async fn a_database_ceiling_writes_every_row_once_on_any_number_of_connections() {
        let database = TestDatabase::create(&tidemark_testkit::test_server())
            .await
            .unwrap();
        tidemark_store::schema::migrate(&database.config)
            .await
            .unwrap();
        let store = Store::connect(&database.config).await.unwrap();
        register_devices(
            &store,
            &args(&["--devices", "3", "--sensors-per-device", "2"]),
        )
        .await
        .unwrap();
        // To the microsecond, as PostgreSQL keeps the rows' times.
        let before = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        // 170,001 rows are four transactions (the last of 20,001 rows): one connection takes
        // them all, three take two, one and one, and five leave one connection without any.
        let rows = 170_001;
        for (nth, connections) in [(1, 1), (2, 3), (3, 5)] {
            let since = Utc::now();
            let rate = database_ceiling(&store, rows, 6, before, nth, connections)
                .await
                .unwrap();
            assert!(rate > 0.0, "{rate}");
            let written = store.received_since(since).await.unwrap();
            assert_eq!(written.len(), rows, "{connections} connection(s)");
            let (first, last) = (ceiling_start(before, rows, 6, nth), before);
            assert!(written.iter().all(|(ts, _)| (first..last).contains(ts)));
        }
        drop(store);
        database.drop_database().await.unwrap();
    }

    #[test]
    fn the_database_ceilings_rows_are_recent_and_never_meet() {
        let before = Utc::now();
        for (readings, sensors) in [(1_000_000, 1_000), (5_000_000, 3), (7, 10)] {
            // The rows of the nth ceiling, first and last.
            let rows = |nth| {
                let start = ceiling_start(before, readings, sensors, nth);
                let per_sensor = readings.div_ceil(sensors) as i64;
                (
                    start,
                    start + chrono::Duration::microseconds(per_sensor - 1),
                )
            };
            let (first, second) = (rows(1), rows(2));
            assert!(first.1 < before, "{readings} over {sensors}: {first:?}");
            assert!(
                second.1 < first.0,
                "{readings} over {sensors}: {second:?} {first:?}"
            );
            // Recent: in a run shorter than an hour, within the hours whose readings the store
            // notes as deltas (the hour of arrival and the one before).
            assert!(
                before - second.0 < chrono::Duration::minutes(1),
                "{second:?}"
            );
        }
    }
}
