//! `tidemark-bench forecasts`: the time from the commit of a forecast issue to the commit of the
//! warning event it causes, with forecasts for many sensors (48 hours ahead at 10-minute steps)
//! issued in rounds, each with its share of a background load, so that every round lands while
//! ingest works at full speed.
//!
//! Ingest and the analytics runner run in this process against a private Mosquitto and a fresh
//! database. Each gauge is a flood area of its own (thresholds without persistence or hold).
//! Each round issues one forecast per gauge over MQTT, as a registered source: in even rounds the
//! forecast crosses the Alert threshold two hours on, in odd rounds the Warning threshold, so each
//! issue changes its area's expected warning. One connection listens to `forecasts_committed` and
//! `warnings_changed`: an issue's commit is the arrival of the notification naming its sensor,
//! the warning's commit the arrival of the notification naming its event.

use crate::analytics::{register, Stages};
use crate::ingest::{percentile, process_cpu_seconds};
use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tidemark::config::Config;
use tidemark_model::broker::BrokerConfig;
use tidemark_sensors_sim::load::{self, Plan};
use tidemark_store::coordination::{Channel, Notice};
use tidemark_store::{notify, Store};
use tidemark_testkit::{Broker, TestDatabase};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ForecastBenchArgs {
    /// Gauges with forecasts, each its own flood area.
    #[arg(long, default_value_t = 1000)]
    pub sensors: usize,
    /// Rounds of issues, one per gauge each.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Time between the starts of two rounds.
    #[arg(long, default_value = "10m")]
    pub every: String,
    /// Background readings, published in messages of 50: each round's share goes out with it.
    #[arg(long, default_value_t = 1_000_000)]
    pub load: usize,
}

const SOURCE: &str = "bench";

pub(crate) async fn forecasts(config: &Config, args: ForecastBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sensors > 0 && args.rounds > 0,
        "--sensors and --rounds must be positive"
    );
    let every = tidemark_model::duration::parse(&args.every)?;
    let broker = Broker::start().await?;
    let database = TestDatabase::create(&config.database).await?;
    let outcome = measure(config, &args, every, &broker, &database.config).await;
    database.drop_database().await?;
    outcome
}

fn issue(sensor: &str, issued_at: DateTime<Utc>, peak: f64) -> Vec<u8> {
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let values: Vec<String> = (1..=288)
        .map(|step| {
            let at = issued_at + chrono::Duration::minutes(10 * step);
            let value = if (12..=18).contains(&step) { peak } else { 0.3 };
            format!(r#"{{"valid_at":"{}","value":{value}}}"#, stamp(at))
        })
        .collect();
    format!(
        r#"{{"sensor":"{sensor}","issued_at":"{}","unit":"m","values":[{}]}}"#,
        stamp(issued_at),
        values.join(",")
    )
    .into_bytes()
}

async fn measure(
    config: &Config,
    args: &ForecastBenchArgs,
    every: Duration,
    broker: &Broker,
    database: &tidemark_store::DatabaseConfig,
) -> anyhow::Result<()> {
    let mqtt = BrokerConfig {
        topic_prefix: config.mqtt.topic_prefix.clone(),
        ..broker.config()
    };
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(database).await?;
    let (gauges, background) = register(&store, args.sensors, false).await?;
    store.add_forecast_source(SOURCE, "benchmark").await?;
    let ids: HashMap<String, i32> = store
        .sensor_catalog()
        .await?
        .into_iter()
        .map(|s| (s.key, s.id))
        .collect();

    let stages = Stages::start(config, &mqtt, database, "bench-forecasts-ingest").await?;
    stages.wait_for_start_up(gauges.len()).await?;
    let (ingest_metrics, analytics_metrics) = (
        stages.ingest_metrics.clone(),
        stages.analytics_metrics.clone(),
    );
    let mut listener = notify::listen(
        database,
        &[Channel::ForecastsCommitted, Channel::WarningsChanged],
    )
    .await?;

    let stop_listening = CancellationToken::new();
    let stop = stop_listening.clone();
    let collector = tokio::spawn(async move {
        // Per sensor id, the arrival of each notification naming it, in order (one per round).
        let mut commits: HashMap<i32, Vec<DateTime<Utc>>> = HashMap::new();
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
                Notice::ForecastsCommitted { sensors } => {
                    for id in sensors {
                        commits.entry(id).or_default().push(arrived);
                    }
                }
                _ => {}
            }
        }
        (commits, events)
    });

    let cpu_before = process_cpu_seconds(std::process::id());
    let started = std::time::Instant::now();
    let topic = format!("{}/forecasts/{SOURCE}", mqtt.topic_prefix);
    let mut payload_bytes = 0usize;
    let mut background_readings = 0usize;
    for round in 0..args.rounds {
        // Each round's share of the background load goes out with the round, so that every
        // round's issues land while ingest works at full speed.
        let share = args.load / args.rounds + usize::from(round < args.load % args.rounds);
        let loading = (share > 0).then(|| {
            let plan = Plan {
                devices: background.clone(),
                readings: share,
                per_message: 50,
                connections: 2,
                client_prefix: format!("bench-forecasts-load-{round}"),
            };
            let mqtt = mqtt.clone();
            tokio::spawn(async move { load::publish(&mqtt, &plan).await })
        });
        let round_started = std::time::Instant::now();
        let issued_at = Utc::now();
        let peak = if round % 2 == 0 { 1.2 } else { 1.7 };
        let messages: Vec<(String, Vec<u8>)> = gauges
            .iter()
            .map(|(_, sensor)| (topic.clone(), issue(sensor, issued_at, peak)))
            .collect();
        payload_bytes += messages.iter().map(|(_, p)| p.len()).sum::<usize>();
        tokio::time::timeout(
            Duration::from_secs(120),
            load::publish_messages(&mqtt, SOURCE, messages),
        )
        .await
        .context("a round of forecasts was not acknowledged within 120 s")??;
        if let Some(loading) = loading {
            background_readings += loading.await??.readings;
        }
        eprintln!(
            "bench forecasts: round {} of {} issued in {:.1} s; ingest stored {} readings, {} issues",
            round + 1,
            args.rounds,
            round_started.elapsed().as_secs_f64(),
            ingest_metrics.readings_stored.get(),
            ingest_metrics.forecasts_stored.get(),
        );
        if round + 1 < args.rounds {
            tokio::time::sleep(every.saturating_sub(round_started.elapsed())).await;
        }
    }
    let expected = (args.sensors * args.rounds) as u64;
    for _ in 0..600 {
        if analytics_metrics.events.get() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(std::process::id()) - cpu_before;
    stages.stop().await;
    stop_listening.cancel();
    let (commits, event_arrivals) = collector.await.context("the listener task failed")?;

    let mut latencies = Vec::new();
    let mut unmatched = 0;
    for (a, (_, sensor)) in gauges.iter().enumerate() {
        let events = store.warning_events(&format!("bench-area-{a}")).await?;
        let committed = ids.get(sensor).and_then(|id| commits.get(id));
        for round in 0..args.rounds {
            let commit = committed.and_then(|c| c.get(round)).copied();
            let warned = events
                .get(round)
                .and_then(|e| event_arrivals.get(&e.id).copied());
            match (commit, warned) {
                (Some(c), Some(w)) => {
                    latencies.push((w - c).num_microseconds().unwrap_or(0) as f64 / 1000.0)
                }
                _ => unmatched += 1,
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "tidemark-bench forecasts: {} sensors x {} rounds every {} ({} issues of 288 values, {:.1} MB), each round with its share of {} background readings",
        gauges.len(),
        args.rounds,
        args.every,
        expected,
        payload_bytes as f64 / 1e6,
        background_readings,
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "forecast commit to warning commit: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} events ({} unmatched)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len(),
        unmatched
    );
    println!(
        "resources: {cpu:.1} CPU-seconds in {seconds:.1} s for ingest, analytics and the load generator in this process; {} evaluations, {} failed",
        analytics_metrics.evaluations.get(),
        analytics_metrics.failures.get()
    );
    Ok(())
}
