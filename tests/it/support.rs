//! The harness every integration test uses.

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidemark::testkit::{test_server, Broker, TestDatabase};
use tidemark_ingest::{IngestConfig, Metrics, Settings};
use tidemark_model::broker::BrokerConfig;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
use tidemark_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Devices `gauge-0` .. `gauge-9`, each with sensors `g<d>.level-0` .. `g<d>.level-9` (water level).
pub const DEVICES: usize = 10;
pub const SENSORS_PER_DEVICE: usize = 10;

pub fn device(d: usize) -> String {
    format!("gauge-{d}")
}

pub fn sensor(d: usize, s: usize) -> String {
    format!("g{d}.level-{s}")
}

pub fn topic(device: &str) -> String {
    format!("tidemark/v1/readings/{device}")
}

pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A broker, a migrated database with the test devices, and ingest instances started on demand.
pub struct Harness {
    pub broker: Broker,
    pub database: Option<TestDatabase>,
    pub store: Store,
}

/// One running ingest instance.
pub struct IngestHandle {
    pub task: JoinHandle<Result<(), tidemark_ingest::Error>>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

impl Harness {
    pub async fn start() -> Harness {
        let broker = Broker::start().await.expect("start mosquitto");
        let database = TestDatabase::create(&test_server())
            .await
            .expect("create a test database");
        tidemark_store::schema::migrate(&database.config)
            .await
            .expect("migrate");
        let store = Store::connect(&database.config).await.expect("connect");
        store
            .apply_reference(&reference())
            .await
            .expect("load reference data");
        Harness {
            broker,
            database: Some(database),
            store,
        }
    }

    pub fn broker_config(&self) -> BrokerConfig {
        self.broker.config()
    }

    pub fn settings(&self, ingest: IngestConfig) -> Settings {
        Settings {
            ingest,
            mqtt: self.broker_config(),
            database: self.database.as_ref().expect("database").config.clone(),
        }
    }

    /// Starts an ingest instance with `client_id` (and a shared group if given).
    pub fn ingest(&self, client_id: &str, shared_group: Option<&str>) -> IngestHandle {
        let config = IngestConfig {
            client_id: client_id.to_owned(),
            shared_group: shared_group.map(str::to_owned),
            ..IngestConfig::default()
        };
        self.ingest_with(self.settings(config))
    }

    /// Starts an ingest instance with these settings.
    pub fn ingest_with(&self, settings: Settings) -> IngestHandle {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tidemark_ingest::run(
            settings,
            metrics.clone(),
            shutdown.clone(),
        ));
        IngestHandle {
            task,
            shutdown,
            metrics,
        }
    }

    /// Starts an ingest instance and waits until the broker has confirmed its subscription.
    pub async fn ingest_ready(&self, client_id: &str, shared_group: Option<&str>) -> IngestHandle {
        let handle = self.ingest(client_id, shared_group);
        handle.subscribed(client_id).await;
        handle
    }

    /// Readings stored.
    pub async fn count(&self) -> u64 {
        self.store.count_readings().await.unwrap()
    }

    /// Waits until `expected` readings are stored and stay so, then returns the count.
    pub async fn settle(&self, expected: u64, timeout: Duration) -> u64 {
        wait_for(timeout, || async { self.count().await >= expected }).await;
        // Give any duplicate (which would be a bug) time to land before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.count().await
    }

    pub async fn finish(mut self) {
        if let Some(database) = self.database.take() {
            drop(self.store);
            database
                .drop_database()
                .await
                .expect("drop the test database");
        }
    }
}

impl IngestHandle {
    /// Waits until the broker has confirmed this instance's subscription.
    pub async fn subscribed(&self, name: &str) {
        let subscribed = wait_for(Duration::from_secs(20), || async {
            self.metrics.subscribed.get() == 1
        })
        .await;
        assert!(subscribed, "ingest {name} did not subscribe within 20 s");
    }

    /// Graceful stop: the batch in hand is committed and acknowledged.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("ingest stops within 20 s")
            .expect("ingest task joins")
            .expect("ingest ends without error");
    }

    /// A crash: the task is aborted wherever it is.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn reference() -> ReferenceData {
    let mut data = ReferenceData::default();
    for d in 0..DEVICES {
        data.devices.push(DeviceRecord {
            key: device(d),
            name: String::new(),
        });
        for s in 0..SENSORS_PER_DEVICE {
            data.sensors.push(SensorRecord {
                key: sensor(d, s),
                device: device(d),
                station: None,
                quantity: "water_level".to_owned(),
                name: String::new(),
                expected_interval: Duration::from_secs(600),
            });
        }
    }
    data
}

/// Publishes messages at QoS 1 in order and waits for the broker's acknowledgements.
pub async fn publish(broker: &BrokerConfig, messages: Vec<(String, Vec<u8>)>) {
    static CLIENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tidemark_sensors_sim::load::publish_messages(broker, &format!("test-publisher-{n}"), messages)
        .await
        .expect("publish");
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 10,000 readings over the test sensors as a mix of single readings, batches of 50 and SenML
/// packs of 25, each reading at a distinct (sensor, ts) on whole minutes after `base`.
pub fn mixed_messages(base: DateTime<Utc>) -> Vec<(String, Vec<u8>)> {
    let base = DateTime::from_timestamp(base.timestamp(), 0).expect("whole seconds");
    let mut messages = Vec::new();
    let mut next_minute = vec![0i64; DEVICES * SENSORS_PER_DEVICE];
    let mut reading = |d: usize, s: usize| {
        let slot = &mut next_minute[d * SENSORS_PER_DEVICE + s];
        *slot += 1;
        (sensor(d, s), base + chrono::Duration::minutes(*slot))
    };
    let mut d = 0;
    let mut total = 0;
    while total < 10_000 {
        let device_id = device(d % (DEVICES - 1));
        let dev = d % (DEVICES - 1);
        let remaining = 10_000 - total;
        let kind = if remaining < 50 { 0 } else { d % 3 };
        let payload = match kind {
            0 => {
                let (key, ts) = reading(dev, d % SENSORS_PER_DEVICE);
                total += 1;
                format!(
                    r#"{{"sensor":"{key}","ts":"{}","value":{:.3},"unit":"m"}}"#,
                    rfc3339(ts),
                    1.0 + (total % 7) as f64 / 10.0
                )
            }
            1 => {
                let items: Vec<String> = (0..50)
                    .map(|k| {
                        let (key, ts) = reading(dev, k % SENSORS_PER_DEVICE);
                        format!(
                            r#"{{"sensor":"{key}","ts":"{}","value":{},"unit":"cm"}}"#,
                            rfc3339(ts),
                            100 + k
                        )
                    })
                    .collect();
                total += 50;
                format!(r#"{{"readings":[{}]}}"#, items.join(","))
            }
            _ => {
                let records: Vec<String> = (0..25)
                    .map(|k| {
                        let (key, ts) = reading(dev, (k + 3) % SENSORS_PER_DEVICE);
                        let seconds = ts.timestamp_micros() as f64 / 1e6;
                        if k == 0 {
                            format!(
                                r#"{{"bn":"","bu":"mm","n":"{key}","t":{seconds},"v":{}}}"#,
                                1200 + k
                            )
                        } else {
                            format!(r#"{{"n":"{key}","t":{seconds},"v":{}}}"#, 1200 + k)
                        }
                    })
                    .collect();
                total += 25;
                format!("[{}]", records.join(","))
            }
        };
        messages.push((topic(&device_id), payload.into_bytes()));
        d += 1;
    }
    assert_eq!(total, 10_000, "the mix adds up to exactly 10,000 readings");
    messages
}

/// Replays a recorded file from the repository at full speed, shifted to end now, and waits until
/// ingest has stored every reading. Returns the replay's report.
pub async fn replay_all(
    harness: &Harness,
    format: tidemark_sensors_sim::replay::Format,
    name: &str,
    path: &str,
) -> tidemark::sim::ReplayReport {
    let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    let recording = tidemark_sensors_sim::replay::read(format, &file).unwrap();
    let args = tidemark::sim::ReplayArgs {
        file,
        format: name.into(),
        speed: 0.0,
        no_shift: false,
        passwords: None,
    };
    let database = harness.settings(Default::default()).database;
    let report = tidemark::sim::replay(
        &database,
        &harness.broker_config(),
        &recording,
        &args,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        harness
            .settle(report.readings, Duration::from_secs(60))
            .await,
        report.readings
    );
    report
}

/// Runs a shipped scenario at full speed for `duration` (e.g. "12h"), registering it first, and
/// waits until ingest has stored every well-formed reading it reports. Returns its report.
pub async fn simulate_all(
    harness: &Harness,
    scenario: &str,
    duration: &str,
) -> tidemark_sensors_sim::engine::Report {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("config/scenarios/{scenario}.toml"));
    let loaded = tidemark_sensors_sim::scenario::Scenario::from_file(&path).unwrap();
    let args = tidemark::sim::SimArgs {
        scenario: scenario.into(),
        seed: None,
        speed: 0.0,
        duration: Some(duration.into()),
        passwords: None,
    };
    let database = harness.settings(Default::default()).database;
    let report = tidemark::sim::simulate(
        &database,
        &harness.broker_config(),
        &loaded,
        &args,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        harness
            .settle(report.readings, Duration::from_secs(60))
            .await,
        report.readings
    );
    report
}
