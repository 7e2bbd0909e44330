//! The simulator and replay through the real broker and ingest.

use crate::support::*;
use chrono::TimeZone;
use std::time::Duration;
use tidemark_sensors_sim::replay::Format;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_cloudburst_is_stored_except_exactly_the_malformed_messages() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-sim", None).await;
    let report = simulate_all(&harness, "cloudburst", "24h").await;
    assert!(
        report.malformed > 0 && report.duplicates > 0,
        "the run injected faults: {report:?}"
    );
    let rejections = wait_for(Duration::from_secs(20), || async {
        harness.store.recent_rejections(1000).await.unwrap().len() as u64 >= report.malformed
    })
    .await;
    assert!(rejections);
    let kept = harness.store.recent_rejections(1000).await.unwrap();
    assert_eq!(
        kept.len() as u64,
        report.malformed,
        "one rejection per malformed message, nothing else"
    );
    assert!(
        kept.iter().all(|r| r.reason_code == "malformed"),
        "{kept:?}"
    );
    assert!(
        ingest.metrics.readings_duplicate.get() > 0,
        "duplicated messages were absorbed"
    );
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_baltic_surge_stores_every_flensburg_value_and_its_peak() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-replay", None).await;
    let report = replay_all(
        &harness,
        Format::BalticSurge,
        "baltic-surge",
        "tests/fixtures/baltic-surge-2023/sea_level_10min.csv",
    )
    .await;
    assert_eq!(report.readings, 10_687);
    assert_eq!(harness.count().await, 10_687);
    let flensburg = harness
        .store
        .sensor_readings("flensburg.sea_level")
        .await
        .unwrap();
    assert_eq!(
        flensburg.len(),
        1584,
        "every 10-minute value of the Flensburg gauge"
    );
    assert!(
        flensburg.iter().all(|r| r.2 == 0),
        "all of them flagged good by the source"
    );
    let peak = flensburg.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let recorded_peak = chrono::Utc
        .with_ymd_and_hms(2023, 10, 20, 21, 40, 0)
        .unwrap();
    assert_eq!((peak.0, peak.1), (recorded_peak + report.shift, 2.27));
    // The gauge's bad values (quality 3 at Warnemünde) are stored, flagged bad.
    let warnemuende = harness
        .store
        .sensor_readings("warnemuende.sea_level")
        .await
        .unwrap();
    assert_eq!(warnemuende.iter().filter(|r| r.2 == 2).count(), 4);
    ingest.stop().await;
    harness.finish().await;
}
