//! One careless or hostile device against `tidemark ingest` as its own process: its messages are
//! kept as rejections, the process stays within its memory bound, and every other device's
//! readings are stored as before.

use super::*;

/// A `{"readings": [...]}` message of 1,000 entries that are not objects, just under 256 KiB.
fn poison() -> Vec<u8> {
    let entry = format!("\"{}\"", "x".repeat(254));
    let entries = vec![entry; 1000].join(",");
    let payload = format!(r#"{{"readings": [{entries}]}}"#).into_bytes();
    assert!(payload.len() <= 256 * 1024 && payload.len() > 250_000);
    payload
}

/// Five poison messages from one device, then one good reading from another: the good reading is
/// stored within 5 s, ingest's peak memory stays under 256 MB, and each poison message is kept
/// once, with its payload once and its thousand refused entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_kept_once_and_stall_no_other_device() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    let ingest = IngestProcess::spawn(&harness, free_port().unwrap());
    ingest.wait_subscribed().await;
    let poisoned: Messages = (0..5)
        .map(|i| {
            // Each a little different, as five separate messages are.
            let mut payload = poison();
            payload[20] = b'a' + i as u8;
            (topic(&device(0)), payload)
        })
        .collect();
    publish(&harness.broker_config(), poisoned.clone()).await;
    let ts = DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    let good = format!(
        r#"{{"sensor":"{}","ts":"{}","value":1.5,"unit":"m"}}"#,
        sensor(1, 0),
        rfc3339(ts)
    );
    publish(
        &harness.broker_config(),
        vec![(topic(&device(1)), good.into_bytes())],
    )
    .await;
    let published = tokio::time::Instant::now();
    let stored = wait_for(Duration::from_secs(5), || async {
        harness.count().await == 1
    })
    .await;
    println!(
        "fault poison-payloads: good reading stored after {:?}; ingest peak RSS {} MB",
        published.elapsed(),
        ingest.peak_rss() / 1_000_000
    );
    assert!(
        stored,
        "the good reading is stored within 5 s of the poison"
    );
    assert!(
        ingest.peak_rss() < 256 * 1024 * 1024,
        "ingest peaked at {} bytes",
        ingest.peak_rss()
    );
    // Two batches commit at once, so the good reading's batch may be visible before the poison's:
    // the rejections are waited for, not assumed to be there already.
    wait_for(Duration::from_secs(10), || async {
        harness.store.recent_rejections(100).await.unwrap().len() >= 5
    })
    .await;
    let rejections = harness.store.recent_rejections(100).await.unwrap();
    assert_eq!(rejections.len(), 5, "one row per message");
    for (_, payload) in &poisoned {
        let kept = rejections
            .iter()
            .find(|r| &r.payload == payload)
            .expect("each poison message is kept");
        assert_eq!(kept.reason_code, "malformed");
        assert_eq!(kept.entry, Some(0));
        assert_eq!(kept.entries_rejected, 1000);
        let entries = harness.store.rejected_entries(kept.id).await.unwrap();
        assert_eq!(entries.len(), 1000);
        assert!(entries
            .iter()
            .all(|e| e.reason_code == "malformed" && e.reason.contains("an object")));
    }
    let client = sql(&harness).await;
    let bytes: i64 = client
        .query_one(
            "SELECT sum(length(payload))::int8 FROM rejected_messages",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bytes as usize,
        poisoned.iter().map(|(_, p)| p.len()).sum::<usize>(),
        "each payload is stored once"
    );
    ingest.kill().await;
    harness.finish().await;
}

/// Bytes of each message in the memory-bound scenario.
const LARGE: usize = 390_000;

/// 2,000 messages of 390 KB in flight while `readings` is locked: ingest stops reading from the
/// broker once `max_buffered_bytes` (the default) wait for a commit, so its peak memory stays
/// under the bound plus 64 MiB; once the lock goes, every message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_behind_a_locked_table_stay_within_the_memory_bound() {
    let _serial = SERIAL.lock().await;
    let harness = Harness::start().await;
    let bound = tidemark_ingest::IngestConfig::default().max_buffered_bytes as u64;
    let ingest = IngestProcess::spawn_with(
        &harness,
        free_port().unwrap(),
        &[("TIDEMARK__INGEST__MAX_PAYLOAD_BYTES", "400000")],
    );
    ingest.wait_subscribed().await;
    let locker = sql(&harness).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Valid readings padded with white space to 390 KB, each at its own second.
    let base = DateTime::from_timestamp(Utc::now().timestamp() - 7200, 0).unwrap();
    let mut keys = Vec::new();
    for chunk in 0..20 {
        let messages: Messages = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let (d, s) = ((n % 9) as usize, ((n / 9) % 10) as usize);
                let ts = base + chrono::Duration::seconds(n);
                keys.push((sensor(d, s), ts));
                let mut payload = format!(
                    r#"{{"sensor":"{}","ts":"{}","value":1.5,"unit":"m"}}"#,
                    sensor(d, s),
                    rfc3339(ts)
                )
                .into_bytes();
                payload.resize(LARGE, b' ');
                (topic(&device(d)), payload)
            })
            .collect();
        publish(&harness.broker_config(), messages).await;
    }
    // Everything is with the broker; ingest holds what its bound allows and reads no more.
    let held = wait_for(Duration::from_secs(30), || async {
        ingest
            .metric("tidemark_ingest_buffered_bytes")
            .await
            .is_some_and(|b| b as u64 > bound - 2 * LARGE as u64)
    })
    .await;
    assert!(held, "ingest fills its buffer");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received = ingest
        .metric("tidemark_ingest_messages_received_total")
        .await
        .unwrap();
    let buffered = ingest
        .metric("tidemark_ingest_buffered_bytes")
        .await
        .unwrap();
    let peak_locked = ingest.peak_rss();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let tally = tally(
        &harness,
        &keys,
        "memory-bound-locked-table",
        &format!(
            "2,000 messages of 390 KB; while locked ingest took in {received}, buffered {buffered} bytes of a {bound}-byte bound, peak RSS {} MB",
            peak_locked / 1_000_000
        ),
    )
    .await;
    assert_exactly_once(&tally);
    assert!(
        buffered as u64 <= bound,
        "the buffer stayed within its bound"
    );
    assert!(
        received < 2_000.0,
        "ingest stopped reading while nothing could commit: took in {received}"
    );
    assert!(
        peak_locked < bound + 64 * 1024 * 1024,
        "ingest's peak memory while locked: {peak_locked} bytes"
    );
    ingest.kill().await;
    harness.finish().await;
}
