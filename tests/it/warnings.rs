//! Flood warnings end to end: recorded data replayed through the real broker, ingest and the
//! analytics runner, with the warnings, events and outbox rows read back from the database.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tidemark::config::Config;
use tidemark::sim::{replay, ReplayArgs};
use tidemark_analytics::runner::{AnalyticsConfig, Metrics};
use tidemark_sensors_sim::replay::{read, Format};
use tidemark_store::flood::EventRow;
use tokio_util::sync::CancellationToken;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn config(harness: &Harness) -> Config {
    Config {
        database: harness.settings(Default::default()).database,
        analytics: AnalyticsConfig {
            flood_files: vec![
                repo("config/flood/baltic-2023.toml"),
                repo("config/flood/calder-2025.toml"),
            ],
            municipalities: repo("config/reference/dk-kommuner/kommuner.geojson"),
            sweep_interval: Duration::from_secs(2),
            ..AnalyticsConfig::default()
        },
        ..Config::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tidemark_analytics::runner::Error>>,
    metrics: Arc<Metrics>,
}

async fn start_analytics(config: &Config) -> Running {
    tidemark::app::load_flood(config).await.unwrap();
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
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
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn replay_file(
    harness: &Harness,
    format: Format,
    name: &str,
    path: &str,
) -> chrono::Duration {
    let file = repo(path);
    let recording = read(format, &file).unwrap();
    let args = ReplayArgs {
        file,
        format: name.into(),
        speed: 0.0,
        no_shift: false,
        passwords: None,
    };
    let database = harness.settings(Default::default()).database;
    let report = replay(
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
    report.shift
}

/// Waits until the analytics runner has been idle (no new events) for two sweeps.
async fn quiet(running: &Running) {
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

fn utc(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 10, d, h, m, 0).unwrap()
}

/// The severity in force after the events up to `at`.
fn in_force_at(events: &[EventRow], at: DateTime<Utc>) -> Option<i16> {
    let mut severity = None;
    for event in events.iter().filter(|e| e.at <= at) {
        match event.kind.as_str() {
            "raised" | "changed" => severity = event.severity,
            "lifted" => severity = None,
            _ => {}
        }
    }
    severity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baltic_surge_raises_escalates_and_lifts_flensburg_and_reports_kappeln_stale() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-warnings", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let shift = replay_file(
        &harness,
        Format::BalticSurge,
        "baltic-surge",
        "tests/fixtures/baltic-surge-2023/sea_level_10min.csv",
    )
    .await;
    quiet(&analytics).await;

    let store = &harness.store;
    let flensburg = store.warning_events("flensburg-fjord").await.unwrap();
    let kinds: Vec<&str> = flensburg.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"raised"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"lifted"), "{kinds:?}");
    // Every severity in turn, each no later than its first sample at or above the threshold plus
    // the 20-minute persistence (the recorded first crossings: 1.00 m, 1.50 m, 2.00 m).
    let first_at_or_above = |threshold: f64| {
        let recording = read(
            Format::BalticSurge,
            &repo("tests/fixtures/baltic-surge-2023/sea_level_10min.csv"),
        )
        .unwrap();
        recording
            .points
            .iter()
            .find(|p| p.sensor == "flensburg.sea_level" && p.value >= threshold)
            .unwrap()
            .ts
            + shift
    };
    for (severity, threshold) in [(1, 1.00), (2, 1.50), (3, 2.00)] {
        let raised = flensburg
            .iter()
            .find(|e| e.severity >= Some(severity) && e.kind != "lifted")
            .unwrap_or_else(|| panic!("severity {severity} reached: {kinds:?}"));
        assert!(
            raised.at <= first_at_or_above(threshold) + ChronoDuration::minutes(20),
            "severity {severity} raised at {}",
            raised.at
        );
    }
    assert_eq!(
        in_force_at(&flensburg, utc(20, 21, 40) + shift),
        Some(3),
        "Severe at the 2.270 m peak"
    );
    let warnings = store.warnings(Some("flensburg-fjord")).await.unwrap();
    assert!(
        warnings.iter().all(|w| w.municipalities == ["0580"]),
        "Aabenraa, across the border"
    );
    let lifted = flensburg.last().unwrap();
    assert!(
        lifted.message_en.contains("no longer in force"),
        "{}",
        lifted.message_en
    );
    assert!(
        lifted.message_da.contains("ikke længere gældende"),
        "{}",
        lifted.message_da
    );
    let outbox = store.outbox_for(flensburg[0].id).await.unwrap();
    assert_eq!(
        outbox,
        [(
            "mqtt".to_owned(),
            "tidemark/v1/alerts/0580/flensburg-fjord".to_owned()
        )]
    );

    let kiel = store.warning_events("kiel-fjord").await.unwrap();
    assert!(!kiel.is_empty());
    assert!(
        kiel.iter().all(|e| e.severity < Some(3)),
        "Kiel-Holtenau (1.953 m) never reaches Severe"
    );

    let kappeln = store.warning_events("schlei-kappeln").await.unwrap();
    let stale = kappeln
        .iter()
        .find(|e| e.kind == "stale")
        .expect("Kappeln is reported stale");
    assert_eq!(
        stale.at,
        utc(20, 12, 50) + shift,
        "three missed 10-minute readings after 12:20"
    );
    assert!(
        in_force_at(&kappeln, stale.at).is_some_and(|s| s >= 2),
        "still in force when it went silent"
    );
    assert!(
        !kappeln
            .iter()
            .any(|e| e.kind == "lifted" && e.at > stale.at && e.at < utc(23, 0, 0) + shift),
        "nothing lifts it while the gauge is silent"
    );

    assert_eq!(analytics.metrics.failures.get(), 0);
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calder_valley_in_late_summer_raises_nothing() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-calder", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    replay_file(
        &harness,
        Format::Calder,
        "calder",
        "tests/fixtures/calder-2025",
    )
    .await;
    quiet(&analytics).await;
    assert!(analytics.metrics.evaluations.get() > 0);
    assert_eq!(analytics.metrics.failures.get(), 0);
    assert!(
        harness.store.warnings(None).await.unwrap().is_empty(),
        "no warning is ever raised"
    );
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}
