//! Ingest through the real broker into the real database.

use crate::support::*;
use chrono::Utc;
use std::time::Duration;

const TEN_THOUSAND: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_ten_thousand_mixed_readings_exactly_once() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-mixed", None).await;
    let messages = mixed_messages(Utc::now() - chrono::Duration::days(30));
    publish(&harness.broker_config(), messages).await;
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert_eq!(ingest.metrics.readings_duplicate.get(), 0);
    assert!(
        ingest
            .metrics
            .rejected
            .get_or_create(&vec![("reason", "malformed")])
            .get()
            == 0
    );
    // Values arrive in canonical units: "cm" and "mm" become metres.
    let values = harness.store.sensor_readings(&sensor(1, 0)).await.unwrap();
    assert!(
        values.iter().all(|(_, v, _)| (0.5..=2.0).contains(v)),
        "{values:?}"
    );
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_published_twice_is_stored_once() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-twice", None).await;
    let messages = mixed_messages(Utc::now() - chrono::Duration::days(30));
    let twice: Vec<_> = messages
        .iter()
        .flat_map(|m| [m.clone(), m.clone()])
        .collect();
    publish(&harness.broker_config(), twice).await;
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert_eq!(ingest.metrics.readings_duplicate.get(), TEN_THOUSAND);
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_kept_with_their_reason_and_good_ones_around_them_stored() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-rejects", None).await;
    let now = Utc::now();
    let ts = |minutes: i64| rfc3339(now + chrono::Duration::minutes(minutes));
    let reading = |sensor: &str, ts: String, value: &str, unit: &str| {
        format!(r#"{{"sensor":"{sensor}","ts":"{ts}","value":{value},"unit":"{unit}"}}"#)
    };
    let (a, b) = (sensor(0, 0), sensor(1, 0));
    let oversized = format!(
        r#"{{"readings":[{}]}}"#,
        vec![reading(&a, ts(-1), "1", "m"); 3500].join(",")
    );
    // (device, payload, expected reason code; None = stored)
    let cases: Vec<(String, String, Option<&str>)> = vec![
        (device(0), reading(&a, ts(-50), "1.25", "m"), None),
        (device(0), "this is not json".into(), Some("malformed")),
        (
            device(0),
            reading(&a, ts(-49), "1000", "m"),
            Some("out_of_range"),
        ),
        (device(0), reading(&a, ts(60), "1.0", "m"), Some("future")),
        (
            device(0),
            reading(&a, "2001-01-01T00:00:00Z".into(), "1.0", "m"),
            Some("too_old"),
        ),
        (
            "gauge-unknown".into(),
            reading(&a, ts(-48), "1.0", "m"),
            Some("unknown_device"),
        ),
        (
            device(0),
            reading(&b, ts(-47), "1.0", "m"),
            Some("wrong_device"),
        ),
        (
            device(0),
            reading("no.such.sensor", ts(-46), "1.0", "m"),
            Some("unknown_sensor"),
        ),
        (
            device(0),
            reading(&a, ts(-45), "1.0", "kWh"),
            Some("unit_mismatch"),
        ),
        (
            device(0),
            reading(&a, ts(-44), "1.0", "ft"),
            Some("unknown_unit"),
        ),
        (
            device(0),
            format!(r#"[{{"n":"{a}","t":-60,"v":1.0,"u":"m"}}]"#),
            Some("malformed"),
        ),
        (device(0), oversized, Some("malformed")),
        (device(0), reading(&a, ts(-40), "130", "cm"), None),
    ];
    let messages = cases
        .iter()
        .map(|(device, payload, _)| (topic(device), payload.clone().into_bytes()))
        .collect();
    publish(&harness.broker_config(), messages).await;
    let expected_rejections = cases.iter().filter(|c| c.2.is_some()).count();
    let rejected = wait_for(Duration::from_secs(30), || async {
        harness.store.recent_rejections(100).await.unwrap().len() >= expected_rejections
    })
    .await;
    assert!(rejected, "every bad message is kept");
    assert_eq!(
        harness.settle(2, Duration::from_secs(10)).await,
        2,
        "the good readings around them"
    );
    let stored = harness.store.recent_rejections(100).await.unwrap();
    assert_eq!(stored.len(), expected_rejections);
    for (device, payload, code) in &cases {
        let Some(code) = code else { continue };
        let found = stored
            .iter()
            .find(|r| r.payload == payload.as_bytes() && r.topic == topic(device))
            .unwrap_or_else(|| {
                panic!(
                    "no rejection kept for {code}: {}",
                    &payload[..payload.len().min(120)]
                )
            });
        assert_eq!(found.reason_code, *code, "{}", found.reason);
        assert_eq!(found.device.as_deref(), Some(device.as_str()));
        assert!(!found.reason.is_empty());
    }
    assert_eq!(ingest.metrics.rejected_count("malformed"), 3);
    assert_eq!(ingest.metrics.rejected_count("future"), 1);
    let values: Vec<f64> = harness
        .store
        .sensor_readings(&a)
        .await
        .unwrap()
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(values, [1.25, 1.3]);
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_loses_and_duplicates_nothing() {
    let harness = Harness::start().await;
    let first = harness.ingest_ready("ingest-crash", None).await;
    let publisher = paced_publisher(
        harness.broker_config(),
        single_messages(Utc::now() - chrono::Duration::days(30)),
    );
    let midway = wait_for(Duration::from_secs(60), || async {
        harness.count().await >= 2_000
    })
    .await;
    assert!(midway, "ingest stored part of the stream");
    first.abort().await;
    let stored_at_crash = harness.count().await;
    let second = harness.ingest("ingest-crash", None);
    publisher.await.unwrap();
    all_stored_once_after_a_fault(&harness, stored_at_crash, "the crash").await;
    second.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_shared_subscription_store_everything_once() {
    let harness = Harness::start().await;
    let one = harness
        .ingest_ready("ingest-shared-1", Some("ingest"))
        .await;
    let two = harness
        .ingest_ready("ingest-shared-2", Some("ingest"))
        .await;
    let messages = mixed_messages(Utc::now() - chrono::Duration::days(30));
    publish(&harness.broker_config(), messages).await;
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    let (by_one, by_two) = (
        one.metrics.readings_stored.get(),
        two.metrics.readings_stored.get(),
    );
    assert!(
        by_two > 0,
        "the second instance took part of the load (first {by_one}, second {by_two})"
    );
    assert_eq!(
        one.metrics.readings_duplicate.get() + two.metrics.readings_duplicate.get(),
        0
    );
    one.stop().await;
    two.stop().await;
    harness.finish().await;
}

/// After a fault injected mid-stream: every one of the 10,000 readings is stored exactly once, and
/// the fault really did come before the stream had been stored.
async fn all_stored_once_after_a_fault(harness: &Harness, stored_at_fault: u64, fault: &str) {
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert!(
        stored_at_fault < TEN_THOUSAND,
        "{fault} happened mid-stream ({stored_at_fault} stored)"
    );
}

/// 10,000 single-reading messages over the test sensors, one second apart from `base`.
fn single_messages(base: chrono::DateTime<Utc>) -> Vec<(String, Vec<u8>)> {
    (0..TEN_THOUSAND as i64)
        .map(|i| {
            let (d, s) = ((i % 9) as usize, ((i / 9) % 10) as usize);
            let ts = rfc3339(base + chrono::Duration::seconds(i));
            let payload = format!(
                r#"{{"sensor":"{}","ts":"{ts}","value":1.5,"unit":"m"}}"#,
                sensor(d, s)
            );
            (topic(&device(d)), payload.into_bytes())
        })
        .collect()
}

/// Publishes in chunks of 100 with short pauses, so that a stream outlasts a fault injected into it.
fn paced_publisher(
    broker: tidemark_model::broker::BrokerConfig,
    messages: Vec<(String, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in messages.chunks(100) {
            publish(&broker, chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_acknowledgements_and_loses_nothing() {
    let harness = Harness::start().await;
    let database = harness.settings(Default::default()).database;
    let proxy = tidemark::testkit::TcpProxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let proxied = tidemark_store::DatabaseConfig {
        url: database
            .url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port)),
        ..database
    };
    assert_ne!(
        proxied.url,
        harness.settings(Default::default()).database.url
    );
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-outage".into(),
        ..Default::default()
    });
    settings.database = proxied;
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("ingest-outage").await;

    let publisher = paced_publisher(
        harness.broker_config(),
        single_messages(Utc::now() - chrono::Duration::days(30)),
    );
    let midway = wait_for(Duration::from_secs(60), || async {
        harness.count().await >= 2_000
    })
    .await;
    assert!(midway, "ingest stored part of the stream before the outage");
    proxy.cut();
    let failing = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.write_retries.get() > 0
    })
    .await;
    assert!(failing, "ingest noticed the outage");
    let during = harness.count().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        harness.count().await,
        during,
        "nothing is written while the database is unreachable"
    );
    proxy.restore();
    publisher.await.unwrap();
    all_stored_once_after_a_fault(&harness, during, "the outage").await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_holds_messages_back_without_stalling() {
    // A buffer of two payloads: nearly every message waits for room in the session task, which
    // goes on polling the broker meanwhile, and every reading still lands once.
    let harness = Harness::start().await;
    let config = tidemark_ingest::IngestConfig {
        client_id: "ingest-small-buffer".into(),
        max_payload_bytes: 8 * 1024,
        max_buffered_bytes: 16 * 1024,
        ..Default::default()
    };
    let ingest = harness.ingest_with(harness.settings(config));
    ingest.subscribed("ingest-small-buffer").await;
    publish(
        &harness.broker_config(),
        mixed_messages(Utc::now() - chrono::Duration::days(30)),
    )
    .await;
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    ingest.stop().await;
    harness.finish().await;
}
