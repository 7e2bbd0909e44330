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
    let midway = harness.wait_for_count(2_000, Duration::from_secs(60)).await;
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
    // The test server's address, as the URL names it: postgres://user@host:port/database.
    let server = database
        .url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(address, _)| address.to_owned())
        .expect("a database URL with user@host:port");
    let proxy = tidemark_testkit::TcpProxy::start(server.parse().unwrap())
        .await
        .unwrap();
    let proxied = tidemark_store::DatabaseConfig {
        url: database
            .url
            .replace(&server, &format!("127.0.0.1:{}", proxy.port)),
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
    let midway = harness.wait_for_count(2_000, Duration::from_secs(60)).await;
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
    // Shown through the broker: ingest crashes while its database is still away, and the broker
    // sends the next session (one that reaches the database directly), again, the messages the
    // crashed one had taken in (the DUP flag): it could only do so if none had been acknowledged.
    ingest.abort().await;
    let ingest = harness.ingest_with(harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-outage".into(),
        ..Default::default()
    }));
    let redelivered = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.messages_redelivered.get() > 0
    })
    .await;
    assert!(
        redelivered,
        "the broker still held unacknowledged messages for ingest's session"
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

/// A reading of sensor `key` at `ts` with `value` metres, as a device publishes it.
fn level(key: &str, ts: chrono::DateTime<Utc>, value: f64) -> Vec<u8> {
    format!(
        r#"{{"sensor":"{key}","ts":"{}","value":{value},"unit":"m"}}"#,
        rfc3339(ts)
    )
    .into_bytes()
}

/// A batch whose commit the database refuses for good (here an operator's CHECK constraint on
/// `readings`, as any data exception or integrity violation would) is split until the refused
/// messages stand alone: they are kept as `storage_refused` rejections and acknowledged, and every
/// other message of the batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_refuses_is_split_around_the_refused_messages() {
    let harness = Harness::start().await;
    let client = sql(&harness).await;
    client
        .batch_execute("ALTER TABLE readings ADD CONSTRAINT no_four CHECK (value <> 4.04)")
        .await
        .unwrap();
    let ingest = harness.ingest_ready("ingest-split", None).await;
    // Held behind a lock until every message is in hand, so that the poison shares its batches.
    let mut locker = sql(&harness).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let base = Utc::now() - chrono::Duration::hours(3);
    let mut messages = Vec::new();
    let mut poison = Vec::new();
    for i in 0..300i64 {
        let d = (i % 9) as usize;
        let ts = base + chrono::Duration::seconds(i);
        let value = if i % 100 == 50 { 4.04 } else { 1.0 };
        let payload = level(&sensor(d, 0), ts, value);
        if value == 4.04 {
            poison.push((topic(&device(d)), payload.clone()));
        }
        messages.push((topic(&device(d)), payload));
    }
    publish(&harness.broker_config(), messages).await;
    let in_hand = wait_for(Duration::from_secs(30), || async {
        ingest.metrics.messages_received.get() >= 300
    })
    .await;
    assert!(in_hand, "ingest holds the messages");
    lock.rollback().await.unwrap();
    assert_eq!(harness.settle(297, Duration::from_secs(30)).await, 297);
    let kept = wait_for(Duration::from_secs(10), || async {
        ingest.metrics.rejected_count("storage_refused") == 3
    })
    .await;
    assert!(kept, "the three refused messages are counted");
    let rejections = harness.store.recent_rejections(100).await.unwrap();
    assert_eq!(rejections.len(), 3, "{rejections:?}");
    for (topic, payload) in &poison {
        let found = rejections
            .iter()
            .find(|r| &r.payload == payload)
            .expect("each refused message is kept");
        assert_eq!(&found.topic, topic);
        assert_eq!(found.reason_code, "storage_refused");
        assert!(found.reason.contains("23514"), "{}", found.reason);
    }
    // Ingest goes on: a later reading is stored, and nothing was left unacknowledged.
    publish(
        &harness.broker_config(),
        vec![(topic(&device(1)), level(&sensor(1, 1), Utc::now(), 1.2))],
    )
    .await;
    assert_eq!(harness.settle(298, Duration::from_secs(10)).await, 298);
    ingest.stop().await;
    let again = harness.ingest_ready("ingest-split", None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        again.metrics.messages_received.get(),
        0,
        "nothing redelivered"
    );
    again.stop().await;
    harness.finish().await;
}

/// A resent reading with the stored value is a duplicate; with another value it is kept as a
/// `conflict` naming both values, and the stored value stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_resend_is_kept_as_a_rejection_with_both_values() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-conflict", None).await;
    let ts = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 600, 0).unwrap();
    let key = sensor(2, 3);
    let first = level(&key, ts, 1.25);
    publish(
        &harness.broker_config(),
        vec![(topic(&device(2)), first.clone())],
    )
    .await;
    assert_eq!(harness.settle(1, Duration::from_secs(20)).await, 1);
    // The same again, then a batch with another value for the same time beside a new reading.
    publish(&harness.broker_config(), vec![(topic(&device(2)), first)]).await;
    let other = format!(
        r#"{{"readings":[{{"sensor":"{key}","ts":"{t}","value":1.5,"unit":"m"}},{{"sensor":"{key}","ts":"{t}","value":7,"unit":"m"}},{{"sensor":"{key}","ts":"{n}","value":1.0,"unit":"m"}}]}}"#,
        t = rfc3339(ts),
        n = rfc3339(ts + chrono::Duration::seconds(60)),
    );
    publish(
        &harness.broker_config(),
        vec![(topic(&device(2)), other.clone().into_bytes())],
    )
    .await;
    assert_eq!(harness.settle(2, Duration::from_secs(20)).await, 2);
    let kept = wait_for(Duration::from_secs(10), || async {
        !harness
            .store
            .recent_rejections(10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(kept, "the conflict is kept");
    let rejections = harness.store.recent_rejections(10).await.unwrap();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    let conflict = &rejections[0];
    assert_eq!(conflict.reason_code, "conflict");
    assert_eq!(conflict.payload, other.as_bytes());
    assert_eq!(conflict.entries_rejected, 2);
    let entries = harness.store.rejected_entries(conflict.id).await.unwrap();
    let described: Vec<(usize, &str)> = entries
        .iter()
        .map(|e| (e.entry, e.reason_code.as_str()))
        .collect();
    assert_eq!(described, vec![(0, "conflict"), (1, "conflict")]);
    assert!(
        entries[0].reason.contains("1.25") && entries[0].reason.contains("1.5"),
        "{}",
        entries[0].reason
    );
    assert!(entries[1].reason.contains('7'), "{}", entries[1].reason);
    let stored = harness.store.sensor_readings(&key).await.unwrap();
    assert_eq!(stored[0].1, 1.25, "the stored value stays");
    assert_eq!(ingest.metrics.readings_duplicate.get(), 1);
    assert_eq!(ingest.metrics.rejected_count("conflict"), 2);
    ingest.stop().await;
    harness.finish().await;
}

/// A loopback proxy in front of the broker that reads the MQTT packets passing through: per
/// connection, which packet ids the broker published (QoS 1) and which the client acknowledged.
/// `cut` drops every connection and refuses new ones until `restore`.
struct AckWatch {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Per connection, in order: acknowledgements for a packet id beyond the publishes of that id
    /// on the same connection (an acknowledgement meant for another connection).
    excess: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    /// Per connection: the QoS 1 packet ids the broker published, and those the client
    /// acknowledged, each in the order they passed.
    order: std::sync::Arc<std::sync::Mutex<Vec<PacketOrder>>>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// One connection's QoS 1 packet ids: published by the broker, and acknowledged by the client.
type PacketOrder = (Vec<u16>, Vec<u16>);

/// Complete MQTT packets at the front of `buffer`, removed from it: (first byte, body).
fn mqtt_packets(buffer: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut packets = Vec::new();
    loop {
        let (mut length, mut shift, mut at) = (0usize, 0, 1);
        let complete = loop {
            let Some(byte) = buffer.get(at) else {
                break false;
            };
            length |= ((byte & 0x7f) as usize) << shift;
            shift += 7;
            at += 1;
            if byte & 0x80 == 0 {
                break true;
            }
        };
        if !complete || buffer.len() < at + length {
            return packets;
        }
        let body = buffer[at..at + length].to_vec();
        packets.push((buffer[0], body));
        buffer.drain(..at + length);
    }
}

impl AckWatch {
    async fn start(broker_port: u16) -> AckWatch {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let excess = Arc::new(Mutex::new(Vec::new()));
        let order: Arc<Mutex<Vec<PacketOrder>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (accept_down, accept_excess, accept_order, accept_tasks) =
            (down.clone(), excess.clone(), order.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accept_down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                else {
                    continue;
                };
                let connection = {
                    let mut excess = accept_excess.lock().unwrap();
                    excess.push(0);
                    accept_order.lock().unwrap().push((Vec::new(), Vec::new()));
                    excess.len() - 1
                };
                let (published_order, acked_order) = (accept_order.clone(), accept_order.clone());
                let published: Arc<Mutex<HashMap<u16, u32>>> = Arc::default();
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut broker_read, mut broker_write) = outbound.into_split();
                let seen = published.clone();
                let down_stream = tokio::spawn(async move {
                    let (mut chunk, mut buffer) = (vec![0u8; 65536], Vec::new());
                    while let Ok(n @ 1..) = broker_read.read(&mut chunk).await {
                        buffer.extend_from_slice(&chunk[..n]);
                        for (first, body) in mqtt_packets(&mut buffer) {
                            if first >> 4 == 3 && (first >> 1) & 3 > 0 {
                                let topic = u16::from_be_bytes([body[0], body[1]]) as usize;
                                let pkid = u16::from_be_bytes([body[2 + topic], body[3 + topic]]);
                                *seen.lock().unwrap().entry(pkid).or_default() += 1;
                                published_order.lock().unwrap()[connection].0.push(pkid);
                            }
                        }
                        if client_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let counts = accept_excess.clone();
                let up_stream = tokio::spawn(async move {
                    let (mut chunk, mut buffer) = (vec![0u8; 65536], Vec::new());
                    let mut acked: HashMap<u16, u32> = HashMap::new();
                    while let Ok(n @ 1..) = client_read.read(&mut chunk).await {
                        buffer.extend_from_slice(&chunk[..n]);
                        for (first, body) in mqtt_packets(&mut buffer) {
                            if first >> 4 == 4 {
                                let pkid = u16::from_be_bytes([body[0], body[1]]);
                                acked_order.lock().unwrap()[connection].1.push(pkid);
                                let acks = acked.entry(pkid).or_default();
                                *acks += 1;
                                let publishes =
                                    published.lock().unwrap().get(&pkid).copied().unwrap_or(0);
                                if *acks > publishes {
                                    counts.lock().unwrap()[connection] += 1;
                                }
                            }
                        }
                        if broker_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut tasks = accept_tasks.lock().unwrap();
                tasks.push(down_stream.abort_handle());
                tasks.push(up_stream.abort_handle());
            }
        });
        AckWatch {
            port,
            down,
            excess,
            order,
            tasks,
            accept,
        }
    }

    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn excess(&self) -> Vec<u32> {
        self.excess.lock().unwrap().clone()
    }

    /// A connection's published and acknowledged packet ids, in order.
    fn order(&self, connection: usize) -> (Vec<u16>, Vec<u16>) {
        self.order.lock().unwrap()[connection].clone()
    }
}

impl Drop for AckWatch {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// An ingest instance connected through an [`AckWatch`], subscribed.
async fn ingest_behind_a_watch(harness: &Harness, client_id: &str) -> (AckWatch, IngestHandle) {
    let watch = AckWatch::start(harness.broker.port).await;
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: client_id.into(),
        ..Default::default()
    });
    settings.mqtt.port = watch.port;
    let ingest = harness.ingest_with(settings);
    ingest.subscribed(client_id).await;
    (watch, ingest)
}

/// `count` single-reading messages from nine devices, a second apart from an hour ago.
fn an_hour_ago(count: i64, sensor_index: usize, value: f64) -> Vec<(String, Vec<u8>)> {
    let base = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    (0..count)
        .map(|i| {
            let d = (i % 9) as usize;
            let ts = base + chrono::Duration::seconds(i);
            (
                topic(&device(d)),
                level(&sensor(d, sensor_index), ts, value),
            )
        })
        .collect()
}

/// Messages committed while the connection they came on is gone are not acknowledged on the next
/// connection: the broker sends them again there, and each packet id it sends is acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_of_a_lost_connection_are_never_sent_on_the_next() {
    let harness = Harness::start().await;
    let (watch, ingest) = ingest_behind_a_watch(&harness, "ingest-generations").await;
    let mut locker = sql(&harness).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    publish(&harness.broker_config(), an_hour_ago(50, 2, 1.0)).await;
    let in_hand = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.messages_received.get() >= 50
    })
    .await;
    assert!(in_hand, "ingest holds the messages, unacknowledged");
    // The connection goes, and stays gone while the messages commit.
    watch.cut();
    let noticed = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.mqtt_errors.get() >= 1
    })
    .await;
    assert!(noticed, "ingest notices the lost connection");
    lock.rollback().await.unwrap();
    let committed = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.readings_stored.get() >= 50
    })
    .await;
    assert!(committed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.restore();
    // The broker sends the 50 again on the new connection; they are absorbed and acknowledged.
    let absorbed = wait_for(Duration::from_secs(30), || async {
        ingest.metrics.readings_duplicate.get() >= 50
    })
    .await;
    assert!(
        absorbed,
        "the broker redelivered what was never acknowledged"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let excess = watch.excess();
    assert!(excess.len() >= 2, "a second connection: {excess:?}");
    assert!(
        excess.iter().all(|n| *n == 0),
        "acknowledgements sent for packets not published on their connection: {excess:?}"
    );
    assert_eq!(harness.count().await, 50);
    ingest.stop().await;
    harness.finish().await;
}

/// Acknowledgements leave in the order their messages arrived (as MQTT asks of QoS 1), each once,
/// and those of messages committed together leave together: a few writes to the socket for a few
/// batches, not one per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_leave_in_arrival_order_a_batch_at_a_time() {
    let harness = Harness::start().await;
    let (watch, ingest) = ingest_behind_a_watch(&harness, "ingest-ack-order").await;
    // The readings table is locked while the messages arrive, so that they wait together.
    let mut locker = sql(&harness).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let count = 300i64;
    publish(&harness.broker_config(), an_hour_ago(count, 3, 2.0)).await;
    let in_hand = wait_for(Duration::from_secs(20), || async {
        ingest.metrics.messages_received.get() >= count as u64
    })
    .await;
    assert!(in_hand, "ingest holds the messages, unacknowledged");
    assert_eq!(ingest.metrics.mqtt_acks_sent.get(), 0);
    lock.rollback().await.unwrap();
    let acknowledged = wait_for(Duration::from_secs(20), || async {
        watch.order(0).1.len() >= count as usize
    })
    .await;
    assert!(acknowledged, "every message is acknowledged once committed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (published, acked) = watch.order(0);
    assert_eq!(
        published.len(),
        count as usize,
        "one connection, no redelivery"
    );
    assert_eq!(
        acked, published,
        "acknowledgements in the order the broker published"
    );
    assert_eq!(ingest.metrics.mqtt_acks_sent.get(), count as u64);
    let writes = ingest.metrics.mqtt_ack_writes.get();
    assert!(
        (1..=10).contains(&writes),
        "{count} acknowledgements of a few batches went out in {writes} writes"
    );
    assert_eq!(harness.count().await, count as u64);
    ingest.stop().await;
    harness.finish().await;
}
