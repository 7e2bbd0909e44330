//! Fault injection: the real broker, database and ingest under load, broken on purpose. Every
//! scenario publishes readings with unique keys, injects its fault, drains, and prints one line
//! `fault <scenario>: published P, stored S, duplicates D, missing M` (with what the fault did),
//! then fails on any loss or duplicate. The scenarios run one at a time, so that one's load does
//! not time another's fault.
//!
//! Run them alone with `cargo test --test fault -- --nocapture`.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

// The check of answers against the API's document, which the shared harness makes.
#[path = "../it/schema.rs"]
mod schema;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::time::Duration;
use support::*;
use tidemark_testkit::{free_port, CommitCutter, PrivatePostgres};
use tokio::process::{Child, Command};

// Hostile devices: poison payloads and a memory bound that holds.
mod hardening;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Readings each scenario publishes.
const READINGS: i64 = 10_000;

/// MQTT messages as `(topic, payload)`.
type Messages = Vec<(String, Vec<u8>)>;

/// Reading keys: `(sensor, ts)`.
type Keys = Vec<(String, DateTime<Utc>)>;

/// `READINGS` single-reading messages over the harness's sensors, one second apart from `base`,
/// with the key of each.
fn load(base: DateTime<Utc>) -> (Messages, Keys) {
    let base = DateTime::from_timestamp(base.timestamp(), 0).expect("whole seconds");
    (0..READINGS)
        .map(|i| {
            let (d, s) = ((i % 9) as usize, ((i / 9) % 10) as usize);
            let ts = base + chrono::Duration::seconds(i);
            let key = sensor(d, s);
            let payload = format!(
                r#"{{"sensor":"{key}","ts":"{}","value":1.5,"unit":"m"}}"#,
                rfc3339(ts)
            );
            ((topic(&device(d)), payload.into_bytes()), (key, ts))
        })
        .unzip()
}

/// Publishes in chunks of 100, `pause` apart, so the load outlasts the fault injected into it.
fn paced(
    broker: tidemark_model::broker::BrokerConfig,
    messages: Messages,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in messages.chunks(100) {
            publish(&broker, chunk.to_vec()).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// What a scenario ended with.
#[derive(Debug)]
struct Tally {
    published: usize,
    stored: i64,
    duplicates: i64,
    missing: usize,
}

/// Counts the stored readings against the published keys, once `expected` are stored (or a
/// minute has passed), and prints the scenario's line.
async fn tally(
    harness: &Harness,
    published: &[(String, DateTime<Utc>)],
    scenario: &str,
    fault: &str,
) -> Tally {
    harness
        .settle(published.len() as u64, Duration::from_secs(120))
        .await;
    let client = sql(harness).await;
    let row = client
        .query_one(
            "SELECT count(*), count(*) - count(DISTINCT (sensor_id, ts)) FROM readings",
            &[],
        )
        .await
        .unwrap();
    let stored: HashSet<(String, DateTime<Utc>)> = client
        .query(
            "SELECT s.key, r.ts FROM readings r JOIN sensors s ON s.id = r.sensor_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tally = Tally {
        published: published.len(),
        stored: row.get(0),
        duplicates: row.get(1),
        missing: published.iter().filter(|k| !stored.contains(k)).count(),
    };
    println!(
        "fault {scenario}: published {}, stored {}, duplicates {}, missing {} ({fault})",
        tally.published, tally.stored, tally.duplicates, tally.missing
    );
    tally
}

fn assert_exactly_once(tally: &Tally) {
    assert_eq!(tally.missing, 0, "{tally:?}");
    assert_eq!(tally.duplicates, 0, "{tally:?}");
    assert_eq!(tally.stored, tally.published as i64, "{tally:?}");
}

/// Scenario 1: PostgreSQL stopped with an immediate shutdown for 30 s under load, then started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_thirty_seconds_under_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut postgres = PrivatePostgres::start()
        .await
        .expect("a private PostgreSQL");
    let harness = Harness::start_on(&postgres.config()).await;
    // 100 chunks of 100, 0.45 s apart: about 45 s of load.
    let tally = database_lost_under_load(
        &harness,
        &mut postgres,
        Recovery::StartAgain,
        Duration::from_millis(450),
        1_000,
        Duration::from_secs(30),
        "postgres-immediate-shutdown",
        "30 s down",
    )
    .await;
    assert_exactly_once(&tally);
    harness.finish().await;
}

/// How the database a scenario stopped comes back.
enum Recovery<'a> {
    /// Started again from its own data.
    StartAgain,
    /// Replaced by this standby, promoted.
    Promote(&'a PrivatePostgres),
}

/// Runs `tidemark ingest` as its own process (as in production) under `READINGS` readings
/// published `pause` apart per chunk, stops `lost` by immediate shutdown once `stored_first` are
/// stored, checks that ingest noticed after `down`, recovers, and returns the tally.
#[allow(clippy::too_many_arguments)]
async fn database_lost_under_load(
    harness: &Harness,
    lost: &mut PrivatePostgres,
    recovery: Recovery<'_>,
    pause: Duration,
    stored_first: u64,
    down: Duration,
    scenario: &str,
    fault: &str,
) -> Tally {
    let ingest = IngestProcess::spawn(harness, free_port().unwrap());
    ingest.wait_subscribed().await;
    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    let publisher = paced(harness.broker_config(), messages, pause);
    let started = harness
        .wait_for_count(stored_first, Duration::from_secs(60))
        .await;
    assert!(started, "ingest stores before the fault");
    lost.stop_immediate().await.unwrap();
    tokio::time::sleep(down).await;
    let retries = ingest
        .metric("tidemark_ingest_write_retries_total")
        .await
        .unwrap_or(0.0);
    assert!(retries > 0.0, "ingest noticed the database had gone");
    match recovery {
        Recovery::StartAgain => lost.start_again().await.unwrap(),
        Recovery::Promote(standby) => standby.promote().await.unwrap(),
    }
    publisher.await.unwrap();
    let tally = tally(
        harness,
        &keys,
        scenario,
        &format!(
            "{fault}; {} write retries",
            ingest
                .metric("tidemark_ingest_write_retries_total")
                .await
                .unwrap_or(retries)
        ),
    )
    .await;
    ingest.kill().await;
    tally
}

/// Scenario: the primary lost under load and its streaming replica promoted. Ingest names both
/// servers in one URL with `target_session_attrs=read-write`, as a production configuration
/// would, the standby first: it passes over the standby while the primary lives, and finds the
/// new primary by itself. Replication is synchronous (the primary's commit
/// waits for the standby's flush), so every reading ingest acknowledged is on the standby when
/// the primary goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_lost_under_load_and_its_replica_promoted_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (mut primary, replica, both) = primary_with_synchronous_standby().await;
    let harness = Harness::start_on(&both).await;
    let tally = database_lost_under_load(
        &harness,
        &mut primary,
        Recovery::Promote(&replica),
        Duration::from_millis(300),
        2_000,
        Duration::from_secs(5),
        "postgres-failover",
        "primary killed, replica promoted after 5 s",
    )
    .await;
    assert_exactly_once(&tally);
    harness.finish().await;
    drop(primary);
}

/// A private primary with a synchronous streaming standby, and the server configuration that names
/// both, the standby first, with `target_session_attrs=read-write`.
async fn primary_with_synchronous_standby() -> (
    PrivatePostgres,
    PrivatePostgres,
    tidemark_store::DatabaseConfig,
) {
    let primary = PrivatePostgres::start()
        .await
        .expect("a private PostgreSQL");
    let replica = primary.replica().await.expect("a streaming replica");
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        primary.execute(statement).await.unwrap();
    }
    let both = tidemark_store::DatabaseConfig {
        url: format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            replica.port, primary.port
        ),
        ..primary.config()
    };
    (primary, replica, both)
}

/// The Baltic surge of October 2023 as recorded.
const BALTIC: &str = "tests/fixtures/baltic-surge-2023/sea_level_10min.csv";

/// The areas of the Baltic surge.
const BALTIC_AREAS: [&str; 3] = ["flensburg-fjord", "kiel-fjord", "schlei-kappeln"];

/// Every warning event of the Baltic areas, by area, as `(id, kind, severity, at)`.
async fn baltic_events(harness: &Harness) -> Vec<(i64, String, Option<i16>, DateTime<Utc>)> {
    let mut all = Vec::new();
    for area in BALTIC_AREAS {
        for e in harness.store.warning_events(area).await.unwrap() {
            all.push((
                e.id,
                format!("{area} {:?}", e.kind),
                e.severity.map(|s| s.level()),
                e.at,
            ));
        }
    }
    all.sort();
    all
}

/// Scenario: the Baltic surge replayed through ingest, analytics and delivery (all three on the
/// multi-host URL), the primary killed by immediate shutdown once analytics has raised the first
/// warning, and its synchronous standby promoted 5 s later. Every reading is stored once, every
/// event recorded before the loss is still there, analytics goes on to tell the rest of the
/// surge (the lift included) on the new primary, and delivery delivers every alert, those queued
/// before the loss among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_and_delivery_follow_the_primary_to_its_promoted_replica() {
    let _serial = SERIAL.lock().await;
    let (mut primary, replica, both) = primary_with_synchronous_standby().await;
    let harness = Harness::start_on(&both).await;
    let ingest = harness.ingest("fault-failover-stages", None);
    ingest.subscribed("fault-failover-stages").await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let delivery_metrics = std::sync::Arc::new(tidemark_delivery::Metrics::register(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let delivery_stop = tokio_util::sync::CancellationToken::new();
    let delivery = tokio::spawn(tidemark_delivery::run(
        config.delivery_settings(),
        delivery_metrics.clone(),
        delivery_stop.clone(),
    ));

    let replay = tokio::spawn({
        let harness_broker = harness.broker_config();
        let database = config.database.clone();
        async move {
            let file = repo(BALTIC);
            let recording = tidemark_sensors_sim::replay::read(
                tidemark_sensors_sim::replay::Format::BalticSurge,
                &file,
            )
            .unwrap();
            let args = tidemark::sim::ReplayArgs {
                file,
                format: "baltic-surge".into(),
                // Fast, yet slow enough that the primary goes in the middle of the surge.
                speed: 20_000.0,
                no_shift: false,
                passwords: None,
                forecasts: Default::default(),
            };
            tidemark::sim::replay(
                &database,
                &harness_broker,
                &recording,
                &args,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await
            .unwrap()
        }
    });
    let raised = wait_for(Duration::from_secs(120), || async {
        analytics.metrics.events.get() > 0
    })
    .await;
    assert!(raised, "analytics raises a warning before the fault");
    let before = baltic_events(&harness).await;
    let readings_before = harness.count().await;
    primary.stop_immediate().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    replica.promote().await.unwrap();
    let report = replay.await.unwrap();
    assert_eq!(
        harness
            .settle(report.readings, Duration::from_secs(120))
            .await,
        report.readings,
        "every reading stored once"
    );
    quiet(&analytics).await;
    let after = baltic_events(&harness).await;
    for event in &before {
        assert!(
            after.contains(event),
            "{event:?} survived the failover: {after:?}"
        );
    }
    let kinds: Vec<&str> = after.iter().map(|e| e.1.as_str()).collect();
    let (raises, lifts) = (
        kinds.iter().filter(|k| k.ends_with("Raised")).count(),
        kinds.iter().filter(|k| k.ends_with("Lifted")).count(),
    );
    assert!(
        after.len() > before.len() && raises > 0 && raises == lifts,
        "analytics told the rest of the surge on the new primary, every warning lifted: {after:?}"
    );
    let delivered = wait_for(Duration::from_secs(60), || async {
        let rows = harness.store.outbox("mqtt").await.unwrap_or_default();
        !rows.is_empty() && rows.iter().all(|row| row.delivered_at.is_some())
    })
    .await;
    let rows = harness.store.outbox("mqtt").await.unwrap();
    assert!(delivered, "every alert delivered: {} rows", rows.len());
    println!(
        "fault stages-failover: {} readings stored ({readings_before} before the primary went), \
         {} warning events ({} before), {} alerts delivered; analytics evaluations failed {} times",
        report.readings,
        after.len(),
        before.len(),
        rows.len(),
        analytics.metrics.failures.get()
    );
    delivery_stop.cancel();
    delivery.await.unwrap().unwrap();
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Scenario: three nats-server nodes with JetStream (stream and consumer in three copies), devices
/// publishing MQTT to one node, two `tidemark ingest` processes sharing the durable consumer. Under
/// load, a node that holds a copy of the stream (not its leader: see docs/SCALING.md) is killed
/// with SIGKILL and started again, and one ingest process is killed with SIGKILL for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_and_an_ingest_process_killed_under_load_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut nats = tidemark_testkit::Nats::cluster(3)
        .await
        .expect("a three-node nats cluster");
    let harness = Harness::start().await;
    let servers = format!(
        "[{}]",
        nats.urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let settings = [
        ("TIDEMARK__INGEST__SOURCE", "nats"),
        ("TIDEMARK__INGEST__NATS__SERVERS", servers.as_str()),
        ("TIDEMARK__INGEST__NATS__REPLICAS", "3"),
        ("TIDEMARK__INGEST__NATS__ACK_WAIT", "5s"),
    ];
    let first = IngestProcess::spawn_with(&harness, free_port().unwrap(), &settings);
    first.wait_subscribed().await;
    let second = IngestProcess::spawn_with(&harness, free_port().unwrap(), &settings);
    second.wait_subscribed().await;

    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    // Devices resend a chunk the node did not acknowledge: while the cluster moves the leaders
    // of what the lost node led (MQTT sessions among them), a connection can be refused.
    let publisher = resending(nats.mqtt(0), messages, Duration::from_millis(250));
    // Faults come once 2,000 are stored, however slowly (the binaries are debug builds, and the
    // machine may be busy); only a minute without a new reading is a failure.
    let started = harness.wait_for_count(2_000, Duration::from_secs(60)).await;
    let stream = tidemark_ingest::config::NatsConfig::default().stream;
    if !started {
        let mut seen = Vec::new();
        for process in [&first, &second] {
            seen.push((
                process
                    .metric("tidemark_ingest_messages_received_total")
                    .await,
                process
                    .metric("tidemark_ingest_readings_stored_total")
                    .await,
                process.metric("tidemark_ingest_subscribed").await,
            ));
        }
        panic!(
            "ingest stores before the faults: {} stored, the stream holds {:?}, ingest \
             (received, stored, subscribed) {seen:?}; the nodes' logs:\n{}",
            harness.count().await,
            nats.stream_messages(0, &stream).await,
            (0..3).map(|i| nats.log(i)).collect::<Vec<_>>().join("\n")
        );
    }
    let leader = nats
        .stream_leader(0, &stream)
        .await
        .expect("a stream leader");
    let victim = (1..3)
        .find(|&i| nats.nodes[i].name != leader)
        .expect("a follower beside the devices' node");
    nats.kill(victim).await.unwrap();
    let killed = nats.nodes[victim].name.clone();
    let at_kill = harness.count().await;
    let moved_on = harness
        .wait_for_count(at_kill + 1_000, Duration::from_secs(60))
        .await;
    assert!(
        moved_on,
        "ingest goes on with a node down; the nodes' logs:\n{}",
        (0..3).map(|i| nats.log(i)).collect::<Vec<_>>().join("\n")
    );
    first.kill().await;
    let ingest_killed_at = harness.count().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.start_again(victim).await.unwrap();
    let resent = publisher.await.unwrap();
    let tally = tally(
        &harness,
        &keys,
        "nats-cluster",
        &format!(
            "node {killed} (stream leader {leader}) killed at {at_kill} stored and started again, \
             one of two ingest processes killed at {ingest_killed_at}; devices resent {resent} \
             chunks; {} redelivered to the other ingest",
            second
                .metric("tidemark_ingest_messages_redelivered_total")
                .await
                .unwrap_or(0.0)
        ),
    )
    .await;
    assert_exactly_once(&tally);
    second.kill().await;
    harness.finish().await;
}

/// `tidemark ingest` as its own process, against the harness's database and broker.
struct IngestProcess {
    child: Child,
    metrics: String,
}

impl IngestProcess {
    fn spawn(harness: &Harness, metrics_port: u16) -> IngestProcess {
        IngestProcess::spawn_with(harness, metrics_port, &[])
    }

    /// With more settings as `TIDEMARK__...` environment variables.
    fn spawn_with(
        harness: &Harness,
        metrics_port: u16,
        settings: &[(&str, &str)],
    ) -> IngestProcess {
        let root = env!("CARGO_MANIFEST_DIR");
        let database = harness.database.as_ref().expect("database");
        let child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .arg("--config")
            .arg(format!("{root}/config/default.toml"))
            .arg("ingest")
            .env("TIDEMARK__DATABASE__URL", &database.config.url)
            .env("TIDEMARK__MQTT__PORT", harness.broker.port.to_string())
            .env("TIDEMARK__INGEST__CLIENT_ID", "fault-ingest-process")
            .env(
                "TIDEMARK__INGEST__METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .envs(settings.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tidemark ingest");
        IngestProcess {
            child,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        }
    }

    /// A counter or gauge from the process's metrics, None while it does not answer.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .find(|line| line.split(' ').next() == Some(name))
            .and_then(|line| line.split(' ').nth(1)?.parse().ok())
    }

    /// The most memory the process has held (its peak resident set, VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("ingest is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    async fn wait_subscribed(&self) {
        let subscribed = wait_for(Duration::from_secs(30), || async {
            self.metric("tidemark_ingest_subscribed").await == Some(1.0)
        })
        .await;
        assert!(subscribed, "ingest subscribed");
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL ingest");
    }
}

/// Scenario 2: ingest killed with SIGKILL at random moments, ten times, under load, with its
/// persistent session. The first kill comes while its writes wait behind a lock on the table, so
/// that it certainly dies holding unacknowledged messages, which the broker must send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_ten_times_under_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    let metrics_port = free_port().unwrap();
    let mut ingest = IngestProcess::spawn(&harness, metrics_port);
    let subscribed = wait_for(Duration::from_secs(30), || async {
        ingest.metric("tidemark_ingest_subscribed").await == Some(1.0)
    })
    .await;
    assert!(subscribed, "ingest subscribed");
    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    // About 25 s of load.
    let publisher = paced(
        harness.broker_config(),
        messages,
        Duration::from_millis(250),
    );
    // Seeded, so a failing run can be repeated.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let (mut redelivered, mut absorbed) = (0.0, 0.0);
    let locker = sql(&harness).await;
    for kill in 0..10 {
        // Each process lives a random while once it is taking messages.
        let taking = wait_for(Duration::from_secs(30), || async {
            ingest
                .metric("tidemark_ingest_messages_received_total")
                .await
                .is_some_and(|n| n > 0.0)
        })
        .await;
        assert!(taking, "ingest {kill} takes messages");
        // The first dies with messages certainly in hand and unacknowledged: its writes wait
        // behind a lock on the table, and the lock goes only after the kill.
        let lock = if kill == 0 {
            locker
                .batch_execute("BEGIN; LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let stalled = wait_for(Duration::from_secs(30), || async {
                ingest
                    .metric("tidemark_ingest_buffered_bytes")
                    .await
                    .is_some_and(|n| n > 0.0)
            })
            .await;
            assert!(stalled, "ingest holds messages it cannot commit");
            true
        } else {
            false
        };
        let life = Duration::from_millis(rng.random_range(300..2_000));
        let until = tokio::time::Instant::now() + life;
        // What this process has counted, read until just before it dies.
        let (mut seen_redelivered, mut seen_absorbed) = (0.0, 0.0);
        while tokio::time::Instant::now() < until {
            if let Some(v) = ingest
                .metric("tidemark_ingest_messages_redelivered_total")
                .await
            {
                seen_redelivered = v;
            }
            if let Some(v) = ingest
                .metric("tidemark_ingest_readings_duplicate_total")
                .await
            {
                seen_absorbed = v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ingest.kill().await;
        if lock {
            locker.batch_execute("ROLLBACK").await.unwrap();
        }
        redelivered += seen_redelivered;
        absorbed += seen_absorbed;
        ingest = IngestProcess::spawn(&harness, metrics_port);
    }
    publisher.await.unwrap();
    let stored_all = harness
        .wait_for_count(READINGS as u64, Duration::from_secs(120))
        .await;
    assert!(stored_all, "the last ingest drains the session");
    redelivered += ingest
        .metric("tidemark_ingest_messages_redelivered_total")
        .await
        .unwrap_or(0.0);
    absorbed += ingest
        .metric("tidemark_ingest_readings_duplicate_total")
        .await
        .unwrap_or(0.0);
    let tally = tally(
        &harness,
        &keys,
        "ingest-sigkill-x10",
        &format!(
            "10 kills; at least {redelivered} messages redelivered, {absorbed} readings absorbed as duplicates"
        ),
    )
    .await;
    assert_exactly_once(&tally);
    assert!(
        redelivered > 0.0,
        "the broker redelivered what the killed processes had not acknowledged"
    );
    ingest.kill().await;
    harness.finish().await;
}

/// Scenario 3: the connection to PostgreSQL cut between COMMIT and its answer, eight times under
/// load: ingest cannot know whether the batch committed, writes it again, and the unique key
/// absorbs what had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_whose_answer_is_lost_are_written_again_without_duplicates() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    let database = harness.settings(Default::default()).database;
    let server = database
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the test server's URL")
        .to_owned();
    let cutter = CommitCutter::start(server.parse().expect("a socket address"))
        .await
        .unwrap();
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "fault-commit".into(),
        ..Default::default()
    });
    settings.database.url = database
        .url
        .replace(&server, &format!("127.0.0.1:{}", cutter.port));
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("fault-commit").await;
    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    let publisher = paced(
        harness.broker_config(),
        messages,
        Duration::from_millis(200),
    );
    for round in 0..8u32 {
        cutter.arm(1);
        let cut = wait_for(Duration::from_secs(30), || async { cutter.cuts() > round }).await;
        assert!(cut, "commit {round} was cut");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    publisher.await.unwrap();
    let tally = tally(
        &harness,
        &keys,
        "commit-answer-lost",
        &format!(
            "{} commits cut; {} write retries; {} readings absorbed as duplicates",
            cutter.cuts(),
            ingest.metrics.write_retries.get(),
            ingest.metrics.readings_duplicate.get()
        ),
    )
    .await;
    assert_exactly_once(&tally);
    assert!(
        ingest.metrics.readings_duplicate.get() > 0,
        "the batches that had committed came back as duplicates and were absorbed"
    );
    ingest.stop().await;
    harness.finish().await;
}

/// Readings of `<device>.sea_level`, `value` metres at each of `times`, as messages.
fn sea_levels(device: &str, times: &[DateTime<Utc>], value: f64) -> Messages {
    times
        .iter()
        .map(|ts| {
            let payload = format!(
                r#"{{"sensor":"{device}.sea_level","ts":"{}","value":{value},"unit":"m"}}"#,
                rfc3339(*ts)
            );
            (topic(device), payload.into_bytes())
        })
        .collect()
}

/// Every five minutes from `from` for `count` readings.
fn every_five_minutes(from: DateTime<Utc>, count: i64) -> Vec<DateTime<Utc>> {
    let from = DateTime::from_timestamp(from.timestamp() / 300 * 300, 0).expect("whole minutes");
    (0..count)
        .map(|i| from + chrono::Duration::minutes(5 * i))
        .collect()
}

/// An area's warning events so far, as `kind@at`.
async fn area_events(harness: &Harness, area: &str) -> Vec<String> {
    harness
        .store
        .warning_events(area)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}@{}", e.kind, e.at))
        .collect()
}

/// Scenario 6: clock skew and late data. With a warning in force, readings an hour in the future
/// are rejected, and readings a week late (high ones and low ones) are stored and evaluated, and
/// neither raise, change nor lift it. Where nothing is in force, a week-late surge is placed in
/// the area's history at its own times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_readings_are_refused_and_week_late_ones_change_no_warning() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    harness
        .store
        .apply_reference(&tidemark_store::reference::ReferenceData {
            devices: ["flensburg", "kiel-holtenau"]
                .map(|key| tidemark_store::reference::DeviceRecord {
                    key: key.into(),
                    name: String::new(),
                })
                .to_vec(),
            sensors: ["flensburg", "kiel-holtenau"]
                .map(|device| tidemark_store::reference::SensorRecord {
                    key: format!("{device}.sea_level"),
                    device: device.into(),
                    station: None,
                    quantity: "sea_level".into(),
                    name: String::new(),
                    expected_interval: Duration::from_secs(300),
                })
                .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ingest = harness.ingest_ready("fault-late", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let now = Utc::now();

    // The last 40 minutes at 2.2 m: a Severe Flood Warning, in force.
    let live = every_five_minutes(now - chrono::Duration::minutes(40), 9);
    publish(
        &harness.broker_config(),
        sea_levels("flensburg", &live, 2.2),
    )
    .await;
    let raised = wait_for(Duration::from_secs(60), || async {
        harness
            .store
            .warnings(Some("flensburg-fjord"))
            .await
            .unwrap()
            .iter()
            .any(|w| {
                w.state == "in_force" && w.severity == tidemark_model::warning::Severity::Severe
            })
    })
    .await;
    assert!(raised, "the live surge raises a severe warning");
    let before = area_events(&harness, "flensburg-fjord").await;
    let evaluations = analytics.metrics.evaluations.get();

    // An hour ahead of the clock: refused, kept with its reason.
    let ahead = every_five_minutes(now + chrono::Duration::hours(1), 3);
    publish(
        &harness.broker_config(),
        sea_levels("flensburg", &ahead, 0.1),
    )
    .await;
    // A week late: two hours of a calm sea, then two hours of a surge that never was live.
    let week_ago = now - chrono::Duration::days(7);
    let calm = every_five_minutes(week_ago, 24);
    let old_surge = every_five_minutes(week_ago + chrono::Duration::hours(2), 24);
    publish(
        &harness.broker_config(),
        sea_levels("flensburg", &calm, 0.2),
    )
    .await;
    publish(
        &harness.broker_config(),
        sea_levels("flensburg", &old_surge, 2.5),
    )
    .await;
    // And at Kiel, where nothing is in force, only that week-old surge: history, not a warning.
    publish(
        &harness.broker_config(),
        sea_levels("kiel-holtenau", &calm, 0.2),
    )
    .await;
    publish(
        &harness.broker_config(),
        sea_levels("kiel-holtenau", &old_surge, 2.5),
    )
    .await;
    let expected = (live.len() + 2 * (calm.len() + old_surge.len())) as u64;
    assert_eq!(
        harness.settle(expected, Duration::from_secs(60)).await,
        expected,
        "the late readings are stored; the future ones are not"
    );
    let mut keys: Keys = live
        .iter()
        .map(|ts| ("flensburg.sea_level".to_owned(), *ts))
        .collect();
    for device in ["flensburg", "kiel-holtenau"] {
        keys.extend(
            calm.iter()
                .chain(&old_surge)
                .map(|ts| (format!("{device}.sea_level"), *ts)),
        );
    }
    let client = sql(&harness).await;
    let refused: i64 = client
        .query_one(
            "SELECT count(*) FROM rejected_messages WHERE reason_code = 'future'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refused, ahead.len() as i64);
    // The runner evaluates the area again after the late batches, and nothing changes.
    let evaluated = wait_for(Duration::from_secs(60), || async {
        analytics.metrics.evaluations.get() > evaluations + 1
    })
    .await;
    assert!(evaluated, "the late readings are evaluated");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = area_events(&harness, "flensburg-fjord").await;
    let kiel = area_events(&harness, "kiel-fjord").await;
    let tally = tally(
        &harness,
        &keys,
        "clock-skew-and-late-data",
        &format!(
            "{} more published an hour ahead and refused; {} a week late stored; warning events before {}, after {}",
            ahead.len(),
            2 * (calm.len() + old_surge.len()),
            before.len(),
            after.len()
        ),
    )
    .await;
    assert_exactly_once(&tally);
    assert_eq!(after, before, "late data raised, changed or lifted nothing");
    // At Kiel the late data shows a surge that its data never saw end. No data is never an
    // all-clear, so that episode is recorded, but at its own time in the data, a week ago: the
    // late readings are history, never news of now.
    let kiel_rows = harness.store.warning_events("kiel-fjord").await.unwrap();
    assert!(
        kiel_rows
            .iter()
            .all(|e| e.at <= week_ago + chrono::Duration::hours(4)),
        "{kiel:?}"
    );
    let in_force = harness
        .store
        .warnings(Some("flensburg-fjord"))
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.state == "in_force")
        .count();
    assert_eq!(in_force, 1, "the live warning stays in force");
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Publishes in chunks of 100, `pause` apart, as a device that resends what the broker has not
/// acknowledged: a chunk whose acknowledgements did not all arrive (the broker went away) is sent
/// again, whole, once the broker is back.
fn resending(
    broker: tidemark_model::broker::BrokerConfig,
    messages: Messages,
    pause: Duration,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut resent = 0;
        for (n, chunk) in messages.chunks(100).enumerate() {
            loop {
                let client_id = format!("fault-device-{n}-{resent}");
                let sent = tidemark_sensors_sim::load::publish_messages(
                    &broker,
                    &client_id,
                    chunk.to_vec(),
                );
                match tokio::time::timeout(Duration::from_secs(10), sent).await {
                    Ok(Ok(_)) => break,
                    _ => {
                        resent += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            tokio::time::sleep(pause).await;
        }
        resent
    })
}

/// Scenario 4: Mosquitto stopped under load, once with SIGTERM and once with SIGKILL, each time
/// down for 5 s, with persistence on (`config/mosquitto-test.conf`: saved every second and on
/// exit), while devices resend what the broker did not acknowledge. Long: run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_under_load_loses_nothing_that_devices_resend() {
    let _serial = SERIAL.lock().await;
    let mut harness = Harness::start().await;
    let ingest = harness.ingest("fault-broker", None);
    ingest.subscribed("fault-broker").await;
    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    let publisher = resending(
        harness.broker_config(),
        messages,
        Duration::from_millis(300),
    );
    for (stored_before, graceful) in [(2_000, true), (6_000, false)] {
        let reached = harness
            .wait_for_count(stored_before, Duration::from_secs(120))
            .await;
        assert!(reached, "ingest stores before the fault");
        harness.broker.stop(graceful).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        harness.broker.start_again().await.unwrap();
    }
    let resent = publisher.await.unwrap();
    let tally = tally(
        &harness,
        &keys,
        "mosquitto-sigterm-then-sigkill",
        &format!(
            "stopped twice for 5 s; devices resent {resent} chunks of 100; {} readings absorbed as duplicates; {} MQTT reconnects by ingest",
            ingest.metrics.readings_duplicate.get(),
            ingest.metrics.mqtt_errors.get()
        ),
    )
    .await;
    assert_exactly_once(&tally);
    ingest.stop().await;
    harness.finish().await;
}

/// How long scenario 5 holds the readings table: `TIDEMARK_FAULT_LOCK_SECONDS`, by default 120.
fn lock_seconds() -> u64 {
    std::env::var("TIDEMARK_FAULT_LOCK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

/// Scenario 5: back-pressure. The readings table is locked (ACCESS EXCLUSIVE, as a long migration
/// or a stuck maintenance job would hold it) for two minutes under load: ingest's buffer stays
/// under its configured bound, nothing is acknowledged or stored meanwhile (the broker holds the
/// rest), and everything lands once the lock goes. Long: run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_from_a_locked_table_holds_acknowledgements_within_the_memory_bound() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    // Below what the broker's in-flight window (thousands of messages of about 80 bytes) would
    // send, so that the bound, not the window, is what stops ingest reading.
    let bound = 64 * 1024;
    let ingest = harness.ingest_with(harness.settings(tidemark_ingest::IngestConfig {
        client_id: "fault-back-pressure".into(),
        max_buffered_bytes: bound,
        max_payload_bytes: 8 * 1024,
        ..Default::default()
    }));
    ingest.subscribed("fault-back-pressure").await;
    let (messages, keys) = load(Utc::now() - chrono::Duration::days(2));
    let hold = Duration::from_secs(lock_seconds());
    // The load spans the lock: 100 chunks spread over the hold and 20 s more.
    let pause = (hold + Duration::from_secs(20)) / 100;
    let publisher = paced(harness.broker_config(), messages, pause);
    let started = harness.wait_for_count(500, Duration::from_secs(60)).await;
    assert!(started, "ingest stores before the lock");

    let mut locker = sql(&harness).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // A commit that was under way when the lock was granted has had time to count itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored_at_lock = ingest.metrics.readings_stored.get();
    let received_at_lock = ingest.metrics.messages_received.get();
    let until = tokio::time::Instant::now() + hold - Duration::from_secs(1);
    let mut most_buffered = 0;
    while tokio::time::Instant::now() < until {
        most_buffered = most_buffered.max(ingest.metrics.buffered_bytes.get());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received_during = ingest.metrics.messages_received.get() - received_at_lock;
    let stored_during = ingest.metrics.readings_stored.get() - stored_at_lock;
    lock.rollback().await.unwrap();
    publisher.await.unwrap();
    let tally = tally(
        &harness,
        &keys,
        "back-pressure-locked-table",
        &format!(
            "readings locked {} s; {received_during} messages taken in and {stored_during} stored while locked; most buffered {most_buffered} bytes of a {bound}-byte bound",
            hold.as_secs()
        ),
    )
    .await;
    assert_exactly_once(&tally);
    assert_eq!(
        stored_during, 0,
        "nothing commits while the table is locked"
    );
    assert!(
        most_buffered <= bound as i64,
        "the buffer stayed within its bound: {most_buffered}"
    );
    assert!(
        most_buffered > bound as i64 - 1024,
        "the buffer reached its bound (within one message), so the bound held ingest back: {most_buffered}"
    );
    // Nothing is acknowledged before it commits, so the broker sends at most its in-flight window
    // (max_inflight_messages in config/mosquitto-test.conf) and keeps the rest queued.
    let window = tidemark_testkit::Broker::in_flight_window().unwrap() as u64;
    assert!(
        received_during <= window,
        "ingest took in {received_during} messages while nothing could commit"
    );
    ingest.stop().await;
    harness.finish().await;
}

/// Scenario 7: warning delivery while the dispatcher is killed (its task aborted wherever it is,
/// between sending and recording included) eight times at seeded random moments, to webhook
/// receivers that fail (5xx), time out, and go away and come back. Every event reaches every
/// receiver at least once, under the same `webhook-id` every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_events_reach_failing_receivers_through_a_dispatcher_killed_eight_times() {
    use tidemark_delivery::{mqtt::AlertPublisher, Dispatcher, Metrics};
    use tidemark_testkit::peers::WebhookReceiver;
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    let mut config = config(&harness);
    config.delivery.timeout = Duration::from_millis(500);
    config.delivery.lease = Duration::from_secs(2);
    config.delivery.initial_backoff = Duration::from_millis(200);
    config.delivery.max_backoff = Duration::from_secs(1);
    config.delivery.poll_interval = Duration::from_millis(200);
    tidemark::app::load_flood(&config).await.unwrap();

    // Failing: answers 500 and 503 a dozen times first. Slow: holds every answer past the
    // timeout until released. Gone: nothing listens on its port until it comes back.
    let failing = WebhookReceiver::start().await.unwrap();
    failing.script(&[500, 503, 500, 503, 500, 503, 500, 503, 500, 503, 500, 503]);
    let slow = WebhookReceiver::start().await.unwrap();
    slow.hold(true);
    let gone_port = free_port().unwrap();
    let gone_url = format!("http://127.0.0.1:{gone_port}/hook");
    let cli = tidemark_api::auth::Actor::cli();
    let (_, owner) = tidemark_api::auth::create_key(
        &harness.store,
        tidemark_store::keys::Role::Operator,
        None,
        "fault".into(),
        None,
        &cli,
    )
    .await
    .unwrap();
    let mut hooks = Vec::new();
    for url in [&failing.url, &slow.url, &gone_url] {
        let row = harness
            .store
            .create_webhook(
                &tidemark_store::webhooks::NewWebhook {
                    owner_key: owner.id,
                    owner_municipality: None,
                    url: url.clone(),
                    description: "fault".into(),
                    municipalities: Vec::new(),
                    areas: Vec::new(),
                    min_severity: tidemark_model::warning::Severity::Alert,
                    categories: vec![tidemark_model::warning::Category::Flood],
                    secret: tidemark_store::webhooks::new_secret(),
                },
                &cli.audit("webhook.create", String::new(), serde_json::json!({})),
            )
            .await
            .unwrap();
        hooks.push(row.id);
    }

    // Thirty events: ten raise, change, lift rounds on the Flensburg area.
    let mut events = Vec::new();
    for round in 0..10 {
        for (kind, severity) in [("raised", Some(1)), ("changed", Some(2)), ("lifted", None)] {
            let event = tidemark_store::flood::NewEvent {
                kind: tidemark_model::warning::EventKind::parse(kind).unwrap(),
                severity: severity.and_then(tidemark_model::warning::Severity::from_level),
                warning_kind: tidemark_model::warning::WarningKind::Observed,
                at: Utc::now(),
                message_en: format!("Round {round}: {kind}."),
                message_da: format!("Runde {round}: {kind}."),
                trigger: serde_json::json!({}),
            };
            events.extend(
                harness
                    .store
                    .record_area_events("flensburg-fjord", &["0580".to_owned()], &[event], &[], &[])
                    .await
                    .unwrap(),
            );
        }
    }

    let shutdown = tokio_util::sync::CancellationToken::new();
    let spawn = |n: u32| {
        let alerts = AlertPublisher::start(
            &harness.broker_config(),
            &format!("fault-alerts-{n}"),
            Duration::from_secs(5),
            shutdown.clone(),
        );
        let dispatcher = Dispatcher::new(
            harness.store.clone(),
            config.delivery.clone(),
            alerts,
            "tidemark/v1",
            "http://127.0.0.1",
            std::sync::Arc::new(Metrics::register(
                &mut prometheus_client::registry::Registry::default(),
            )),
        )
        .unwrap();
        let (database, shutdown) = (config.database.clone(), shutdown.clone());
        tokio::spawn(async move { dispatcher.run(&database, shutdown).await })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut dispatcher = spawn(0);
    let mut gone = None;
    for kill in 1..=8u32 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_200))).await;
        dispatcher.abort();
        let _ = dispatcher.await;
        match kill {
            3 => slow.hold(false),
            5 => gone = Some(WebhookReceiver::start_on(gone_port).await.unwrap()),
            _ => {}
        }
        slow.release();
        dispatcher = spawn(kill);
    }
    let gone = gone.expect("the gone receiver came back");
    let all_delivered = wait_for(Duration::from_secs(120), || async {
        let rows = harness.store.outbox("webhook").await.unwrap();
        rows.len() == events.len() * hooks.len() && rows.iter().all(|r| r.delivered_at.is_some())
    })
    .await;
    shutdown.cancel();
    dispatcher.abort();

    let mut duplicates = 0;
    for (name, receiver) in [("failing", &failing), ("slow", &slow), ("gone", &gone)] {
        let deliveries = receiver.deliveries();
        let mut seen = HashSet::new();
        for d in &deliveries {
            let id = d.json()["id"].as_i64().unwrap();
            assert_eq!(
                d.id,
                format!("evt_{id}"),
                "{name}: one id per event, every time"
            );
            if !seen.insert(id) {
                duplicates += 1;
            }
        }
        let missing: Vec<&i64> = events.iter().filter(|e| !seen.contains(e)).collect();
        assert!(missing.is_empty(), "{name} never received {missing:?}");
    }
    println!(
        "fault dispatcher-killed-x8: published {} events x {} receivers, delivered all, missing 0 ({} repeat deliveries, as at-least-once allows; receivers failed, timed out and went away)",
        events.len(),
        hooks.len(),
        duplicates
    );
    assert!(all_delivered, "every outbox row is recorded as delivered");
    harness.finish().await;
}
