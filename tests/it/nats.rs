//! Ingest from NATS JetStream: devices publish MQTT to nats-server's MQTT listener, a stream keeps
//! their messages, and ingest pulls them from a durable consumer, acknowledging after commit.

use crate::support::*;
use chrono::Utc;
use std::time::Duration;
use tidemark_ingest::config::{NatsConfig, Source};
use tidemark_ingest::{IngestConfig, Settings};
use tidemark_testkit::Nats;

const TEN_THOUSAND: u64 = 10_000;

/// Ingest settings that pull from `nats` through `consumer`.
fn from_nats(harness: &Harness, nats: &Nats, consumer: &str) -> Settings {
    let mut settings = harness.settings(IngestConfig {
        client_id: consumer.to_owned(),
        source: Source::Nats,
        nats: NatsConfig {
            servers: nats.urls(),
            consumer: consumer.to_owned(),
            ..NatsConfig::default()
        },
        ..IngestConfig::default()
    });
    settings.mqtt = nats.mqtt(0);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_published_to_nats_are_stored_once_and_acknowledged_after_commit() {
    let nats = Nats::start().await.unwrap();
    let harness = Harness::start().await;
    let stream = NatsConfig::default().stream;
    let first = harness.ingest_with(from_nats(&harness, &nats, "it-nats"));
    first.subscribed("it-nats").await;

    // Ten thousand readings in single, batched and SenML messages, and two bad messages whose
    // rejections must name the MQTT topic the device used, not the NATS subject.
    let mut messages = mixed_messages(Utc::now() - chrono::Duration::days(30));
    messages.push((topic(&device(0)), b"this is not json".to_vec()));
    messages.push((
        topic("gauge-unknown"),
        format!(
            r#"{{"sensor":"{}","ts":"{}","value":1.0,"unit":"m"}}"#,
            sensor(0, 0),
            rfc3339(Utc::now())
        )
        .into_bytes(),
    ));
    publish(&nats.mqtt(0), messages).await;
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert_eq!(first.metrics.readings_duplicate.get(), 0);
    let kept = wait_for(Duration::from_secs(20), || async {
        harness.store.recent_rejections(10).await.unwrap().len() == 2
    })
    .await;
    assert!(kept, "both bad messages are kept as rejections");
    let rejections = harness.store.recent_rejections(10).await.unwrap();
    for (device, code) in [
        (device(0), "malformed"),
        ("gauge-unknown".into(), "unknown_device"),
    ] {
        assert!(
            rejections
                .iter()
                .any(|r| r.topic == topic(&device) && r.reason_code == code),
            "{code} kept under {}: {rejections:?}",
            topic(&device)
        );
    }
    // Every message was acknowledged: the work-queue stream has let them all go.
    let drained = wait_for(Duration::from_secs(20), || async {
        nats.stream_messages(0, &stream).await == Some(0)
    })
    .await;
    assert!(
        drained,
        "the stream still holds {:?} messages",
        nats.stream_messages(0, &stream).await
    );
    first.stop().await;

    // While no ingest runs, the stream keeps what devices send; then two processes share the
    // durable consumer, and each message is stored once.
    publish(
        &nats.mqtt(0),
        mixed_messages(Utc::now() - chrono::Duration::days(20)),
    )
    .await;
    let held = wait_for(Duration::from_secs(10), || async {
        nats.stream_messages(0, &stream).await.unwrap_or(0) > 0
    })
    .await;
    assert!(
        held,
        "the stream holds the messages sent while ingest was down"
    );
    let a = harness.ingest_with(from_nats(&harness, &nats, "it-nats"));
    let b = harness.ingest_with(from_nats(&harness, &nats, "it-nats"));
    assert_eq!(
        harness
            .settle(2 * TEN_THOUSAND, Duration::from_secs(60))
            .await,
        2 * TEN_THOUSAND
    );
    let stored = (
        a.metrics.readings_stored.get(),
        b.metrics.readings_stored.get(),
    );
    assert_eq!(stored.0 + stored.1, TEN_THOUSAND);
    assert_eq!(
        a.metrics.readings_duplicate.get() + b.metrics.readings_duplicate.get(),
        0
    );
    a.stop().await;
    b.stop().await;
    harness.finish().await;
}

/// Ten thousand readings pulled by an ingest on `consumer` (ack wait 2 s) whose commits wait
/// behind a lock on `readings`, which the returned client holds until it rolls back.
async fn pulled_behind_a_lock(
    harness: &Harness,
    nats: &Nats,
    consumer: &str,
) -> (tokio_postgres::Client, IngestHandle, Settings) {
    let locker = sql(harness).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE readings IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut settings = from_nats(harness, nats, consumer);
    settings.ingest.nats.ack_wait = Duration::from_secs(2);
    let ingest = harness.ingest_with(settings.clone());
    ingest.subscribed(consumer).await;
    publish(
        &nats.mqtt(0),
        mixed_messages(Utc::now() - chrono::Duration::days(30)),
    )
    .await;
    let pulled = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.messages_received.get() > 0
    })
    .await;
    assert!(pulled, "ingest pulled messages");
    (locker, ingest, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pulled_by_a_crashed_ingest_are_delivered_again_after_the_ack_wait() {
    let nats = Nats::start().await.unwrap();
    let harness = Harness::start().await;
    // The first ingest pulls and cannot commit.
    let (locker, crashing, settings) = pulled_behind_a_lock(&harness, &nats, "it-nats-crash").await;
    // Crash with messages pulled and uncommitted; no acknowledgement may have left for them.
    crashing.abort().await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    let next = harness.ingest_with(settings);
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert!(
        next.metrics.messages_redelivered.get() > 0,
        "the crashed process's messages came again"
    );
    next.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_while_commits_wait_are_not_delivered_again() {
    let nats = Nats::start().await.unwrap();
    let harness = Harness::start().await;
    // Commits wait behind a lock for four ack waits.
    let (locker, ingest, _) = pulled_behind_a_lock(&harness, &nats, "it-nats-held").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        ingest.metrics.messages_redelivered.get(),
        0,
        "messages in hand were marked in progress, not delivered again"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        harness.settle(TEN_THOUSAND, Duration::from_secs(60)).await,
        TEN_THOUSAND
    );
    assert_eq!(ingest.metrics.messages_redelivered.get(), 0);
    assert_eq!(ingest.metrics.readings_duplicate.get(), 0);
    ingest.stop().await;
    harness.finish().await;
}
