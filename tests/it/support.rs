//! The harness every integration test uses.

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tidemark::config::Config;
use tidemark_api::{ApiSettings, ApiState};
use tidemark_delivery::DeliveryConfig;
use tidemark_ingest::{IngestConfig, Metrics, Settings};
use tidemark_model::broker::BrokerConfig;
use tidemark_store::keys::Role;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
use tidemark_store::Store;
use tidemark_testkit::{test_server, Broker, TestDatabase};
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
        Harness::start_on(&test_server()).await
    }

    /// A harness whose database is on `server` (a private cluster, for faults that stop it).
    pub async fn start_on(server: &tidemark_store::DatabaseConfig) -> Harness {
        let broker = Broker::start().await.expect("start mosquitto");
        Harness::assemble(broker, server).await
    }

    /// A harness around `broker` (one with authentication, say).
    pub async fn with_broker(broker: Broker) -> Harness {
        Harness::assemble(broker, &test_server()).await
    }

    async fn assemble(broker: Broker, server: &tidemark_store::DatabaseConfig) -> Harness {
        let database = TestDatabase::create(server)
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

    /// Waits until `expected` readings are stored, for as long as their number keeps growing:
    /// gives up once it has not grown for `stall`. A busy machine stores slowly, and a test
    /// should not take that for a loss; an ingest that has stopped storing grows nothing.
    /// Returns whether `expected` were reached.
    pub async fn wait_for_count(&self, expected: u64, stall: Duration) -> bool {
        let mut last = self.count().await;
        let mut grew = tokio::time::Instant::now();
        loop {
            if last >= expected {
                return true;
            }
            if grew.elapsed() >= stall {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.count().await;
            if now > last {
                (last, grew) = (now, tokio::time::Instant::now());
            }
        }
    }

    /// Waits until `expected` readings are stored (or their number has not grown for `stall`),
    /// then, after time for a duplicate to land, returns the count.
    pub async fn settle(&self, expected: u64, stall: Duration) -> u64 {
        self.wait_for_count(expected, stall).await;
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
    replay_all_with(harness, format, name, path, Default::default()).await
}

/// [`replay_all`] with simulated forecasts as `forecasts` says; waits for every issue as well.
pub async fn replay_all_with(
    harness: &Harness,
    format: tidemark_sensors_sim::replay::Format,
    name: &str,
    path: &str,
    forecasts: tidemark::sim::ForecastArgs,
) -> tidemark::sim::ReplayReport {
    let file = repo(path);
    let recording = tidemark_sensors_sim::replay::read(format, &file).unwrap();
    let args = tidemark::sim::ReplayArgs {
        file,
        format: name.into(),
        speed: 0.0,
        no_shift: false,
        passwords: None,
        forecasts,
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
    let sensors: Vec<String> = recording
        .reference
        .sensors
        .iter()
        .map(|s| s.key.clone())
        .collect();
    settle_forecasts(harness, &sensors, report.forecasts).await;
    report
}

/// Runs a shipped scenario at full speed for `duration` (e.g. "12h"), registering it first, and
/// waits until ingest has stored every well-formed reading it reports. Returns its report.
pub async fn simulate_all(
    harness: &Harness,
    scenario: &str,
    duration: &str,
) -> tidemark_sensors_sim::engine::Report {
    simulate_all_with(harness, scenario, duration, Default::default()).await
}

/// [`simulate_all`] with simulated forecasts as `forecasts` says; waits for every issue as well.
pub async fn simulate_all_with(
    harness: &Harness,
    scenario: &str,
    duration: &str,
    forecasts: tidemark::sim::ForecastArgs,
) -> tidemark_sensors_sim::engine::Report {
    let path = repo(&format!("config/scenarios/{scenario}.toml"));
    let loaded = tidemark_sensors_sim::scenario::Scenario::from_file(&path).unwrap();
    let args = tidemark::sim::SimArgs {
        scenario: scenario.into(),
        seed: None,
        speed: 0.0,
        duration: Some(duration.into()),
        passwords: None,
        forecasts,
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
    let sensors: Vec<String> = loaded.sensors.iter().map(|s| s.key.clone()).collect();
    settle_forecasts(harness, &sensors, report.forecasts).await;
    report
}

/// Waits until `expected` forecast issues of `sensors` are stored.
pub async fn settle_forecasts(harness: &Harness, sensors: &[String], expected: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = harness
            .store
            .forecasts_since(sensors, chrono::DateTime::UNIX_EPOCH)
            .await
            .unwrap()
            .len() as u64;
        if stored >= expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stored} of {expected} forecast issues stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The configuration of a test that runs analytics, the API or delivery against this harness.
pub fn config(harness: &Harness) -> Config {
    Config {
        database: harness.settings(Default::default()).database,
        mqtt: harness.broker_config(),
        analytics: tidemark_analytics::runner::AnalyticsConfig {
            flood_files: vec![
                repo("config/flood/baltic-2023.toml"),
                repo("config/flood/calder-2025.toml"),
                repo("config/flood/aarhus.toml"),
                repo("config/flood/soenderjylland.toml"),
            ],
            municipalities: repo("config/reference/dk-kommuner/kommuner.geojson"),
            sweep_interval: Duration::from_secs(2),
            ..Default::default()
        },
        delivery: DeliveryConfig {
            // The receivers of these tests run on this machine.
            allow_networks: vec!["127.0.0.0/8".to_owned()],
            initial_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            ..DeliveryConfig::default()
        },
        ..Config::default()
    }
}

/// A response's status, content type, text and headers. Every JSON answer is first checked against
/// what the API's document says it is.
pub async fn checked_with_headers(
    method: &str,
    path: &str,
    response: reqwest::Response,
) -> (u16, String, String, reqwest::header::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap();
    if let Ok(body) = serde_json::from_str(&text) {
        crate::schema::assert_documented(method, path, status, &content_type, &body);
    }
    (status, content_type, text, headers)
}

async fn checked(method: &str, path: &str, response: reqwest::Response) -> (u16, String, String) {
    let (status, content_type, text, _) = checked_with_headers(method, path, response).await;
    (status, content_type, text)
}

/// The API on a free loopback port, with its event hub.
pub struct Api {
    pub base: String,
    pub state: ApiState,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn start(harness: &Harness, config: &Config) -> Api {
        tidemark::app::load_flood(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let api = tidemark_api::ApiConfig {
            public_url: base.clone(),
            sse_heartbeat: Duration::from_secs(1),
            ..config.api.clone()
        };
        let settings = ApiSettings::new(
            &api,
            config.delivery.validate().unwrap(),
            config.delivery.rotation_grace,
            "tidemark/v1",
        )
        .unwrap();
        let mut settings = settings;
        settings.broker_admin = config.api.device_credentials.then(|| config.mqtt.clone());
        settings.time_rules = config.ingest.time_rules();
        let shutdown = CancellationToken::new();
        let hub = tidemark_api::sse::Hub::start(
            harness.store.clone(),
            config.database.clone(),
            shutdown.clone(),
        );
        // With reads from a standby, a store of the API's own that sends them there.
        let store = match config.database.read_url {
            Some(_) => tidemark_store::Store::connect(&config.database)
                .await
                .unwrap(),
            None => harness.store.clone(),
        };
        let state = ApiState::new(store, settings, hub, &config.database, shutdown.clone());
        let router = tidemark_api::api_router(state.clone());
        tokio::spawn(tidemark_api::serve(listener, router, shutdown.clone()));
        Api {
            base,
            state,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn key(&self, role: Role, municipality: Option<&str>) -> String {
        tidemark_api::auth::create_key(
            &self.state.store,
            role,
            municipality.map(str::to_owned),
            "test".to_owned(),
            None,
            &tidemark_api::auth::Actor::cli(),
        )
        .await
        .unwrap()
        .0
    }

    /// Sends a request; returns the status and the JSON body (Null when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let verb = method.to_string();
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let (status, _, text) = checked(&verb, path, request.send().await.unwrap()).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn text(&self, path: &str) -> (u16, String, String) {
        checked(
            "GET",
            path,
            self.http.get(self.url(path)).send().await.unwrap(),
        )
        .await
    }

    /// Registers a webhook for `url` with a key; returns (id, secret).
    pub async fn register(&self, key: &str, url: &str, min_severity: i16) -> (i64, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/webhooks",
                Some(key),
                Some(serde_json::json!({ "url": url, "min_severity": min_severity })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_i64().unwrap(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A flood file of one area, `harbour` (Flensburg's harbour), holding `sensor` with thresholds
/// of 1.0, 1.5 and 2.0 m (persistence 20 minutes, hysteresis 0.1 m, hold an hour), written to a
/// temporary file named after `name` and this process.
pub fn harbour_flood_file(name: &str, sensor: &str) -> PathBuf {
    flood_file(name, &[("harbour", "Harbour", sensor)])
}

/// A flood file of areas `(key, name, sensor)` in Flensburg harbour, each with one level sensor at
/// 1.0 / 1.5 / 2.0 m, 20 minutes' persistence, 0.1 m hysteresis and an hour's hold.
pub fn flood_file(name: &str, areas: &[(&str, &str, &str)]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tidemark-{name}-{}.toml", std::process::id()));
    let mut text = String::new();
    for (key, name, sensor) in areas {
        text.push_str(&format!(
            r#"
[[areas]]
key = "{key}"
name = "{name}"
polygon = [[9.40, 54.78], [9.47, 54.78], [9.47, 54.82], [9.40, 54.82], [9.40, 54.78]]
sensors = ["{sensor}"]

[[thresholds]]
sensor = "{sensor}"
alert = 1.0
warning = 1.5
severe = 2.0
persistence = "20m"
hysteresis = 0.1
hold = "1h"
"#
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The database id of a sensor.
pub async fn sensor_id(harness: &Harness, key: &str) -> i32 {
    harness
        .store
        .sensor_catalog()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("sensor {key} is registered"))
        .id
}

/// [`config`] with the reference stations of `config/reference/stations.toml`, loaded.
pub async fn with_stations(harness: &Harness) -> Config {
    let config = Config {
        reference: tidemark::config::ReferenceConfig {
            files: vec![repo("config/reference/stations.toml")],
        },
        ..config(harness)
    };
    tidemark::app::load_reference(&config).await.unwrap();
    config
}

/// A plain connection to the harness's database, for SQL of the test's own.
pub async fn sql(harness: &Harness) -> tokio_postgres::Client {
    sql_client(&harness.settings(Default::default()).database.url).await
}

/// A plain SQL connection to `url`, for looking behind the store's back.
/// Whether TimescaleDB holds `table` as a hypertable, on the database `client` is connected to.
pub async fn is_hypertable(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one(
            "SELECT count(*) FROM timescaledb_information.hypertables \
             WHERE hypertable_name = $1",
            &[&table],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// A fresh database migrated with TimescaleDB required, chunks compressed after `compress_after`,
/// and a store on it. None, after saying so, where the server offers no TimescaleDB.
pub async fn timescale_database(
    compress_after: Duration,
) -> Option<(TestDatabase, tidemark_store::DatabaseConfig, Store)> {
    use tidemark_store::{StorageMode, TimescaleSetting};
    if !tidemark_store::schema::server_offers_timescaledb(&test_server())
        .await
        .unwrap()
    {
        eprintln!("TimescaleDB is not offered by this server (pg_available_extensions): skipped");
        return None;
    }
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let config = tidemark_store::DatabaseConfig {
        timescaledb: TimescaleSetting::Required,
        compress_after,
        ..database.config.clone()
    };
    assert_eq!(
        tidemark_store::schema::migrate(&config).await.unwrap(),
        StorageMode::TimescaleDb
    );
    let store = Store::connect(&config).await.unwrap();
    Some((database, config, store))
}

pub async fn sql_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Writes readings straight through the store's batch write, as ingest would commit them.
pub async fn store_readings(harness: &Harness, rows: &[tidemark_store::readings::ReadingRow]) {
    harness
        .store
        .write_batch(rows, &[], chrono::Utc::now())
        .await
        .unwrap();
}

/// The analytics runner, started on a test's configuration (its flood files loaded first).
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), tidemark_analytics::runner::Error>>,
    pub metrics: Arc<tidemark_analytics::runner::Metrics>,
}

pub async fn start_analytics(config: &Config) -> Running {
    tidemark::app::load_flood(config).await.unwrap();
    let metrics = Arc::new(tidemark_analytics::runner::Metrics::register(
        &mut Registry::default(),
    ));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tidemark_analytics::runner::run(
        config.analytics_settings(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Running {
        shutdown,
        task,
        metrics,
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until the analytics runner has been idle (no new events) for two sweeps.
pub async fn quiet(running: &Running) {
    let mut last = u64::MAX;
    let settled = wait_for(Duration::from_secs(60), || {
        let now = running.metrics.events.get();
        let same = now == last && running.metrics.evaluations.get() > 0;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            same
        }
    })
    .await;
    assert!(settled, "analytics settles");
}
