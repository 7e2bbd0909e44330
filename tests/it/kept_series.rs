//! The readings analytics keeps between evaluations: always what a whole read would give, and
//! only what changed read again.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::time::Duration;
use tidemark_analytics::runner::series_cache::SeriesCache;
use tidemark_store::readings::ReadingRow;

fn rows(sensor_id: i32, times: impl Iterator<Item = DateTime<Utc>>, value: f64) -> Vec<ReadingRow> {
    times
        .map(|ts| ReadingRow {
            sensor_id,
            ts,
            value,
            quality: 0,
        })
        .collect()
}

/// The kept readings against a whole read after every kind of change: new readings, a late
/// reading between kept ones, quality flags, the window moving on, and too little room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_readings_equal_a_whole_read_after_new_late_and_flagged_readings() {
    let harness = Harness::start().await;
    let keys = vec![sensor(0, 0), sensor(0, 1), sensor(0, 2)];
    let (a, b) = (
        sensor_id(&harness, &keys[0]).await,
        sensor_id(&harness, &keys[1]).await,
    );
    // Whole seconds, as stored (PostgreSQL keeps microseconds).
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let hour = |h: i64| now - ChronoDuration::hours(h);
    let start = hour(48);
    // Two days of hourly readings of the first two sensors (the third has none), and some
    // before the window.
    store_readings(&harness, &rows(a, (1..=50).map(hour), 0.5)).await;
    store_readings(&harness, &rows(b, (1..=50).map(hour), 0.7)).await;
    let mut kept = SeriesCache::new(1_000_000, Duration::from_secs(3600));
    let whole = |start| {
        let (store, keys) = (harness.store.clone(), keys.clone());
        async move { store.series(&keys, start).await.unwrap() }
    };
    let first = kept
        .series(&harness.store, &keys, start, now)
        .await
        .unwrap();
    assert_eq!(first, whole(start).await);
    // A sensor named twice is read once.
    let twice = [keys[0].clone(), keys[0].clone()];
    assert_eq!(
        harness.store.series(&twice, start).await.unwrap()[&keys[0]],
        first[&keys[0]]
    );
    assert_eq!(first[&keys[0]].len(), 48);
    assert!(
        !first.contains_key(&keys[2]),
        "a sensor without readings is left out"
    );
    assert_eq!(kept.readings_read(), 48 + 48);

    // Nothing changed: nothing is read.
    let again = kept
        .series(&harness.store, &keys, start, now)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(kept.readings_read(), 96);

    // A new reading of the first sensor, and a late one of the second between kept ones (its
    // batch's earliest time is what the notification names).
    let late = hour(30) + ChronoDuration::minutes(30);
    store_readings(&harness, &rows(a, [now].into_iter(), 2.5)).await;
    store_readings(&harness, &rows(b, [late].into_iter(), 9.0)).await;
    kept.changed(&keys[0], now);
    kept.changed(&keys[1], late);
    let changed = kept
        .series(&harness.store, &keys, start, now)
        .await
        .unwrap();
    assert_eq!(changed, whole(start).await);
    assert!(changed[&keys[1]].iter().any(|r| r.0 == late && r.1 == 9.0));
    // The new reading, and the second sensor's from the late one on (itself and 29 more).
    assert_eq!(kept.readings_read(), 96 + 1 + 30);

    // A reading of the third sensor, kept before without any.
    let c = sensor_id(&harness, &keys[2]).await;
    store_readings(&harness, &rows(c, [hour(1)].into_iter(), 1.0)).await;
    kept.changed(&keys[2], hour(1));
    assert_eq!(
        kept.series(&harness.store, &keys, start, now)
            .await
            .unwrap(),
        whole(start).await
    );

    // Quality flags set on a kept reading.
    harness
        .store
        .set_quality(&keys[0], &[(hour(10), 256)])
        .await
        .unwrap();
    kept.changed(&keys[0], hour(10));
    let flagged = kept
        .series(&harness.store, &keys, start, now)
        .await
        .unwrap();
    assert_eq!(flagged, whole(start).await);
    assert!(flagged[&keys[0]]
        .iter()
        .any(|r| r.0 == hour(10) && r.2 == 256));

    // The window moves on: what fell out of it is let go.
    let later = hour(24);
    let moved = kept
        .series(&harness.store, &keys, later, now)
        .await
        .unwrap();
    assert_eq!(moved, whole(later).await);
    assert_eq!(
        kept.readings_held(),
        moved.values().map(Vec::len).sum::<usize>()
    );

    // Too little room: the least recently used are let go and read whole when asked for again.
    let mut small = SeriesCache::new(30, Duration::from_secs(3600));
    for key in keys.iter().chain(keys.iter()) {
        let one = small
            .series(&harness.store, std::slice::from_ref(key), start, now)
            .await
            .unwrap();
        assert_eq!(
            one,
            harness
                .store
                .series(std::slice::from_ref(key), start)
                .await
                .unwrap()
        );
        assert!(small.readings_held() <= 30);
    }
    harness.finish().await;
}

/// Through the runner: after the first evaluation has read an area's two weeks, a new reading
/// makes the next evaluation read that reading, not the two weeks again, and still raises the
/// warning it causes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_reads_only_new_readings_after_the_first_evaluation() {
    let harness = Harness::start().await;
    let key = sensor(0, 0);
    let id = sensor_id(&harness, &key).await;
    let flood_file = harbour_flood_file("kept", &key);
    // Thirteen days of quiet 10-minute readings, up to an hour ago.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let history: Vec<DateTime<Utc>> = (6..13 * 144)
        .rev()
        .map(|i| now - ChronoDuration::minutes(10 * i))
        .collect();
    store_readings(&harness, &rows(id, history.iter().copied(), 0.4)).await;
    let mut config = config(&harness);
    config.analytics.flood_files = vec![flood_file.clone()];
    let analytics = start_analytics(&config).await;
    quiet(&analytics).await;
    let read = || analytics.metrics.series_readings_read.get();
    let first = read();
    assert!(
        first >= history.len() as u64,
        "the first evaluation reads the two weeks ({first} readings read)"
    );
    // The water rises over the last hour.
    let rising: Vec<DateTime<Utc>> = (0..6)
        .rev()
        .map(|i| now - ChronoDuration::minutes(10 * i))
        .collect();
    store_readings(&harness, &rows(id, rising.iter().copied(), 2.5)).await;
    let raised = wait_for(Duration::from_secs(30), || async {
        !harness.store.warnings(None).await.unwrap().is_empty()
    })
    .await;
    assert!(raised, "the new readings raise a warning");
    quiet(&analytics).await;
    let since = read() - first;
    assert!(
        since <= 2 * rising.len() as u64,
        "evaluations after the first read {since} readings for {} new ones",
        rising.len()
    );
    let _ = std::fs::remove_file(flood_file);
    analytics.stop().await;
    harness.finish().await;
}

/// A quiet reading of sensor `id`, `i` intervals of 10 minutes before `now`: a centimetre's
/// ripple, so no runs of equal values and no spikes.
fn ripple(id: i32, now: DateTime<Utc>, i: i64) -> ReadingRow {
    ReadingRow {
        sensor_id: id,
        ts: now - ChronoDuration::minutes(10 * i),
        value: 0.4 + 0.01 * (i % 7) as f64,
        quality: 0,
    }
}

/// A gauge in a harbour area of its own with `days` of quiet 10-minute readings up to an hour
/// ago, and the analytics runner started on it and done with its first evaluation.
struct QuietGauge {
    harness: Harness,
    id: i32,
    now: DateTime<Utc>,
    flood_file: std::path::PathBuf,
    analytics: Running,
    history: usize,
}

impl QuietGauge {
    async fn start(name: &str, days: i64) -> QuietGauge {
        let harness = Harness::start().await;
        let key = sensor(0, 0);
        let id = sensor_id(&harness, &key).await;
        let flood_file = harbour_flood_file(name, &key);
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let history: Vec<ReadingRow> = (6..days * 144).rev().map(|i| ripple(id, now, i)).collect();
        store_readings(&harness, &history).await;
        let mut config = config(&harness);
        config.analytics.flood_files = vec![flood_file.clone()];
        let analytics = start_analytics(&config).await;
        quiet(&analytics).await;
        QuietGauge {
            harness,
            id,
            now,
            flood_file,
            analytics,
            history: history.len(),
        }
    }

    /// The reading `i` intervals before now, of `value`.
    fn reading(&self, i: i64, value: f64) -> ReadingRow {
        ReadingRow {
            value,
            ..self.ripple(i)
        }
    }

    fn ripple(&self, i: i64) -> ReadingRow {
        ripple(self.id, self.now, i)
    }

    async fn finish(self) {
        let _ = std::fs::remove_file(&self.flood_file);
        self.analytics.stop().await;
        self.harness.finish().await;
    }
}

/// Through the runner: once an area's gauge has been evaluated, each later evaluation goes on
/// from the gauge's timeline as the one before left it, taking the new readings (and the last few
/// again, whose flags their next neighbours decide), not the two weeks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_goes_on_from_each_timeline_with_the_new_readings() {
    let gauge = QuietGauge::start("carried", 13).await;
    let metrics = &gauge.analytics.metrics;
    let first = metrics.readings_evaluated.get();
    assert!(
        first >= gauge.history as u64,
        "the first evaluation takes the two weeks ({first} readings taken)"
    );
    let evaluations_before = metrics.evaluations.get();
    // Six more, one at a time, each evaluated before the next.
    for i in (0..6).rev() {
        let evaluated = metrics.evaluations.get();
        store_readings(&gauge.harness, &[gauge.ripple(i)]).await;
        let done = wait_for(Duration::from_secs(30), || async {
            metrics.evaluations.get() > evaluated
        })
        .await;
        assert!(done, "the new reading is evaluated");
    }
    quiet(&gauge.analytics).await;
    let taken = metrics.readings_evaluated.get() - first;
    let evaluations = metrics.evaluations.get() - evaluations_before;
    // At most the new reading and the three before it (the spike check's neighbours) each time.
    assert!(
        taken <= 4 * evaluations,
        "{evaluations} evaluations took {taken} readings for 6 new ones"
    );
    gauge.finish().await;
}

/// Through the runner: an evaluation whose findings cannot be recorded carries nothing forward,
/// so that the flags of the readings it took are still set once recording works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_recording_carries_nothing_forward() {
    let gauge = QuietGauge::start("failed", 2).await;
    let metrics = &gauge.analytics.metrics;
    // Recording fails (every evaluation records its gauges' trends) while a spike and the
    // readings after it, which settle its flag, are evaluated.
    let client = sql(&gauge.harness).await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON level_trends \
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let spike = 4;
    let rows: Vec<ReadingRow> = (0..6)
        .rev()
        .map(|i| {
            if i == spike {
                gauge.reading(i, 3.0)
            } else {
                gauge.ripple(i)
            }
        })
        .collect();
    store_readings(&gauge.harness, &rows).await;
    let failed = wait_for(Duration::from_secs(30), || async {
        metrics.failures.get() > 0
    })
    .await;
    assert!(failed, "the evaluation fails to record");
    client
        .batch_execute("DROP TRIGGER refuse ON level_trends")
        .await
        .unwrap();
    // The next reading is evaluated and recorded.
    let evaluations = metrics.evaluations.get();
    store_readings(&gauge.harness, &[gauge.ripple(-1)]).await;
    let recorded = wait_for(Duration::from_secs(30), || async {
        metrics.evaluations.get() > evaluations
    })
    .await;
    assert!(recorded, "the next evaluation is recorded");
    let quality: i16 = client
        .query_one(
            "SELECT quality FROM readings WHERE sensor_id = $1 AND ts = $2",
            &[&gauge.id, &gauge.reading(spike, 0.0).ts],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        quality & tidemark_model::Quality::SPIKE.0,
        tidemark_model::Quality::SPIKE.0,
        "the spike is flagged ({quality})"
    );
    gauge.finish().await;
}
