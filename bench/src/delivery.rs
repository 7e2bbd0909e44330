//! `tidemark-bench delivery`: the time from a warning event's commit to its receipt by a webhook
//! receiver, by each of many Server-Sent Events clients, and by an MQTT subscriber.
//!
//! Everything runs in this process against a private Mosquitto and a fresh database: the API (with
//! its event hub), the dispatcher, a webhook receiver on loopback, the SSE clients and the MQTT
//! subscriber. Events are recorded the way analytics records them (warning, event and outbox rows
//! in one transaction), alternating raise and lift over several areas. An event's commit instant
//! is taken when the recording call returns, just after COMMIT was answered, so the figures
//! slightly understate the true latency.

use crate::ingest::percentile;
use anyhow::Context;
use chrono::Utc;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark::config::Config;
use tidemark_api::{ApiSettings, ApiState};
use tidemark_delivery::{mqtt::AlertPublisher, DeliveryConfig, Dispatcher, Metrics};
use tidemark_model::broker::BrokerConfig;
use tidemark_store::flood::{AreaRow, FloodSetup, NewEvent};
use tidemark_store::keys::Role;
use tidemark_store::webhooks::NewWebhook;
use tidemark_store::Store;
use tidemark_testkit::peers::{MqttSubscriber, SseClient, WebhookReceiver};
use tidemark_testkit::{Broker, TestDatabase};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DeliveryBenchArgs {
    /// Connected Server-Sent Events clients.
    #[arg(long, default_value_t = 1000)]
    pub sse_clients: usize,
    /// Warning events to record.
    #[arg(long, default_value_t = 300)]
    pub events: usize,
    /// Flood areas the events rotate over.
    #[arg(long, default_value_t = 10)]
    pub areas: usize,
    /// Pause between two events.
    #[arg(long, default_value = "50ms")]
    pub interval: String,
}

/// The municipality every bench area's warnings go to.
const MUNICIPALITY: &str = "0101";

pub(crate) async fn delivery(config: &Config, args: DeliveryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.areas > 0 && args.events > 0,
        "--areas and --events must be positive"
    );
    let interval = tidemark_model::duration::parse(&args.interval)?;
    let broker = Broker::start().await?;
    let database = TestDatabase::create(&config.database).await?;
    let outcome = measure(config, &args, interval, &broker, &database.config).await;
    database.drop_database().await?;
    outcome
}

/// Latencies in milliseconds, sorted, and how many expected receipts never came.
struct Channel {
    name: &'static str,
    latencies: Vec<f64>,
    missing: usize,
}

impl Channel {
    fn new(name: &'static str, mut latencies: Vec<f64>, expected: usize) -> Channel {
        latencies.sort_by(f64::total_cmp);
        Channel {
            name,
            missing: expected.saturating_sub(latencies.len()),
            latencies,
        }
    }

    fn print(&self) {
        println!(
            "{:<8} p50 {:>6.1} ms  p90 {:>6.1} ms  p99 {:>6.1} ms  max {:>7.1} ms  ({} receipts, {} missing)  target p99 < 200 ms: {}",
            self.name,
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.90),
            percentile(&self.latencies, 0.99),
            self.latencies.last().copied().unwrap_or(f64::NAN),
            self.latencies.len(),
            self.missing,
            if percentile(&self.latencies, 0.99) < 200.0 && self.missing == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

async fn measure(
    config: &Config,
    args: &DeliveryBenchArgs,
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
    let areas = register_areas(&store, args.areas).await?;
    let shutdown = CancellationToken::new();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let delivery = DeliveryConfig {
        allow_networks: vec!["127.0.0.0/8".to_owned()],
        ..config.delivery.clone()
    };
    let api = tidemark_api::ApiConfig {
        public_url: base.clone(),
        // A thousand clients from one address.
        rate_limit_per_minute: 1_000_000,
        ..config.api.clone()
    };
    let settings = ApiSettings::new(
        &api,
        delivery.validate().map_err(anyhow::Error::msg)?,
        delivery.rotation_grace,
        &mqtt.topic_prefix,
    )
    .map_err(anyhow::Error::msg)?;
    let hub = tidemark_api::sse::Hub::start(store.clone(), database.clone(), shutdown.clone());
    let router = tidemark_api::api_router(ApiState::new(
        store.clone(),
        settings,
        hub.clone(),
        database,
        shutdown.clone(),
    ));
    tokio::spawn(tidemark_api::serve(listener, router, shutdown.clone()));
    let alerts = AlertPublisher::start(&mqtt, "bench-alerts", delivery.timeout, shutdown.clone());
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let dispatcher = Dispatcher::new(
        store.clone(),
        delivery,
        alerts,
        &mqtt.topic_prefix,
        &base,
        metrics.clone(),
    )?;
    let dispatching = {
        let database = database.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { dispatcher.run(&database, shutdown).await })
    };

    let receiver = WebhookReceiver::start().await?;
    let cli = tidemark_api::auth::Actor::cli();
    let (_, owner) =
        tidemark_api::auth::create_key(&store, Role::Operator, None, "bench".into(), None, &cli)
            .await?;
    store
        .create_webhook(
            &NewWebhook {
                owner_key: owner.id,
                owner_municipality: None,
                url: receiver.url.clone(),
                description: "bench".into(),
                municipalities: Vec::new(),
                areas: Vec::new(),
                min_severity: tidemark_model::warning::Severity::Alert,
                categories: vec![tidemark_model::warning::Category::Flood],
                secret: tidemark_store::webhooks::new_secret(),
            },
            &cli.audit("webhook.create", String::new(), serde_json::json!({})),
        )
        .await?;
    let mut subscriber = MqttSubscriber::start(
        &mqtt,
        "bench-siren",
        &format!("{}/alerts/#", mqtt.topic_prefix),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::new();
    let stream_url = format!("{base}/api/v1/warnings/stream");
    let mut clients = Vec::with_capacity(args.sse_clients);
    for _ in 0..args.sse_clients {
        clients.push(
            SseClient::connect(&http, &stream_url, None)
                .await
                .map_err(anyhow::Error::msg)
                .context("connecting an SSE client")?,
        );
    }
    anyhow::ensure!(
        hub.clients() >= args.sse_clients,
        "only {} of {} SSE clients are following the hub",
        hub.clients(),
        args.sse_clients
    );
    eprintln!(
        "bench delivery: {} SSE clients connected; recording {} events",
        args.sse_clients, args.events
    );

    let mut committed: HashMap<i64, Instant> = HashMap::new();
    for round in 0..args.events {
        let area = &areas[round % areas.len()];
        let raise = (round / areas.len()) % 2 == 0;
        let event = NewEvent {
            kind: if raise {
                tidemark_model::warning::EventKind::Raised
            } else {
                tidemark_model::warning::EventKind::Lifted
            },
            severity: raise.then_some(tidemark_model::warning::Severity::Warning),
            warning_kind: tidemark_model::warning::WarningKind::Observed,
            at: Utc::now(),
            message_en: format!("Bench event {round}."),
            message_da: format!("Testhændelse {round}."),
            trigger: serde_json::json!({}),
        };
        let deliveries = vec![format!(
            "{}/alerts/{MUNICIPALITY}/{area}",
            mqtt.topic_prefix
        )];
        let ids = store
            .record_area_events(area, &[MUNICIPALITY.to_owned()], &[event], &deliveries, &[])
            .await?;
        let now = Instant::now();
        for id in ids {
            committed.insert(id, now);
        }
        tokio::time::sleep(interval).await;
    }
    // Let the last events arrive everywhere.
    let expected = committed.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.deliveries().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let webhook: Vec<f64> = receiver
        .deliveries()
        .iter()
        .filter_map(|d| {
            let id = d.json()["id"].as_i64()?;
            Some(millis(*committed.get(&id)?, d.arrived))
        })
        .collect();
    let mut sse = Vec::new();
    for client in &mut clients {
        while let Ok((event, arrived)) = client.events.try_recv() {
            if let Some(at) = event.id.and_then(|id| committed.get(&id.parse().ok()?)) {
                sse.push(millis(*at, arrived));
            }
        }
    }
    let mut mqtt_latencies = Vec::new();
    while let Ok((_, payload, _, arrived)) = subscriber.messages.try_recv() {
        let id = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v["id"].as_i64());
        if let Some(at) = id.and_then(|id| committed.get(&id)) {
            mqtt_latencies.push(millis(*at, arrived));
        }
    }
    shutdown.cancel();
    let _ = dispatching.await;

    println!(
        "tidemark-bench delivery: {} warning events over {} areas, one every {}, {} SSE clients connected",
        expected, args.areas, args.interval, args.sse_clients
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("time from the event's commit to its receipt:");
    Channel::new("webhook", webhook, expected).print();
    Channel::new("sse", sse, expected * args.sse_clients).print();
    Channel::new("mqtt", mqtt_latencies, expected).print();
    // One lookup per statement: a family's read guard lives to the end of its statement.
    let count = |family: &prometheus_client::metrics::family::Family<
        Vec<(&'static str, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
                 channel: &str| {
        family
            .get_or_create(&vec![("channel", channel.to_owned())])
            .get()
    };
    let webhook_delivered = count(&metrics.delivered, "webhook");
    let mqtt_delivered = count(&metrics.delivered, "mqtt");
    let failed = count(&metrics.failed_attempts, "webhook");
    let failed = failed + count(&metrics.failed_attempts, "mqtt");
    println!(
        "dispatcher: {webhook_delivered} webhook and {mqtt_delivered} MQTT deliveries confirmed, {failed} failed attempts"
    );
    Ok(())
}

async fn register_areas(store: &Store, areas: usize) -> anyhow::Result<Vec<String>> {
    let mut setup = FloodSetup::default();
    let mut keys = Vec::new();
    for a in 0..areas {
        let key = format!("bench-area-{a}");
        let lon = 10.0 + a as f64 * 0.01;
        setup.areas.push(AreaRow {
            key: key.clone(),
            name: format!("bench area {a}"),
            polygon: serde_json::json!({"type": "Polygon", "coordinates": [[[lon, 56.0], [lon + 0.005, 56.0], [lon + 0.005, 56.005], [lon, 56.005], [lon, 56.0]]]}),
            municipality_codes: vec![MUNICIPALITY.to_owned()],
            sensors: vec![],
            forecast_horizon: std::time::Duration::from_secs(24 * 3600),
            hazard: tidemark_model::warning::Category::Flood,
        });
        keys.push(key);
    }
    store
        .apply_flood_setup(&setup)
        .await
        .context("registering the bench areas")?;
    Ok(keys)
}
