//! The rollups give the answer the raw readings give: before their first refresh, after it, after a
//! back-filled reading and after a quality flag changes, for every bucket width, for ranges that do
//! and do not fall on rollup buckets, and in the relations themselves.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use std::collections::BTreeMap;
use std::time::Duration;
use tidemark_store::opendata::BucketRow;
use tidemark_store::readings::ReadingRow;
use tidemark_store::Store;

const SENSOR: &str = "flensburg.sea_level";

fn t(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 2, day, hour, minute, 0).unwrap()
}

/// One bucket as the test computes it from the raw rows.
#[derive(Debug, Default)]
struct Expected {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
    flagged: i64,
}

/// Buckets of `seconds` over `[from, to)`, computed in Rust from the raw rows read back with SQL.
async fn expected(
    client: &tokio_postgres::Client,
    seconds: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    all: bool,
) -> BTreeMap<i64, Expected> {
    let rows = client
        .query(
            "SELECT r.ts, r.value, r.quality FROM readings r JOIN sensors s ON s.id = r.sensor_id \
             WHERE s.key = $1 AND r.ts >= $2 AND r.ts < $3 ORDER BY r.ts",
            &[&SENSOR, &from, &to],
        )
        .await
        .unwrap();
    let mut out: BTreeMap<i64, Expected> = BTreeMap::new();
    for row in rows {
        let (ts, value, quality): (DateTime<Utc>, f64, i16) = (row.get(0), row.get(1), row.get(2));
        let bucket = out
            .entry(ts.timestamp().div_euclid(seconds) * seconds)
            .or_default();
        if all || quality & !1 == 0 {
            if bucket.count == 0 {
                bucket.min = value;
                bucket.max = value;
                bucket.first = value;
            }
            bucket.count += 1;
            bucket.sum += value;
            bucket.min = bucket.min.min(value);
            bucket.max = bucket.max.max(value);
            bucket.last = value;
        } else {
            bucket.flagged += 1;
        }
    }
    out
}

async fn check(
    store: &Store,
    client: &tokio_postgres::Client,
    seconds: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    all: bool,
) {
    let got: Vec<BucketRow> = store
        .aggregate(SENSOR, from, to, Duration::from_secs(seconds as u64), all)
        .await
        .unwrap();
    let want = expected(client, seconds, from, to, all).await;
    let context = format!("{seconds} s buckets over {from}..{to}, all qualities {all}");
    assert_eq!(
        got.iter().map(|b| b.start.timestamp()).collect::<Vec<_>>(),
        want.keys().copied().collect::<Vec<_>>(),
        "{context}: bucket starts"
    );
    for (b, w) in got.iter().zip(want.values()) {
        let at = format!("{context}, bucket {}", b.start);
        assert_eq!(b.count, w.count, "{at}: count");
        assert_eq!(b.flagged, w.flagged, "{at}: flagged");
        if w.count > 0 {
            assert!(
                (b.sum - w.sum).abs() < 1e-9,
                "{at}: sum {} != {}",
                b.sum,
                w.sum
            );
            assert_eq!((b.min, b.max), (w.min, w.max), "{at}: min, max");
            assert_eq!((b.first, b.last), (w.first, w.last), "{at}: first, last");
        } else {
            assert!(b.min.is_nan() && b.first.is_nan(), "{at}: no usable value");
        }
    }
}

/// Every bucket width and range shape the API can ask for, checked against the raw rows.
async fn check_all(store: &Store, client: &tokio_postgres::Client) {
    let aligned = (t(1, 0, 0), t(4, 0, 0));
    let ragged = (t(1, 0, 5), t(3, 22, 50));
    for (from, to) in [aligned, ragged] {
        for seconds in [900, 1_800, 3_600, 3 * 3_600, 86_400, 2 * 86_400, 600] {
            check(store, client, seconds, from, to, false).await;
        }
        check(store, client, 3_600, from, to, true).await;
    }
    // Less than one rollup bucket inside the range.
    check(store, client, 3_600, t(2, 10, 5), t(2, 10, 55), false).await;
}

async fn count(client: &tokio_postgres::Client, relation: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_answer_as_the_raw_readings_do_before_and_after_every_change() {
    let harness = Harness::start().await;
    with_stations(&harness).await;
    let store = &harness.store;
    let client = sql(&harness).await;
    let id = sensor_id(&harness, SENSOR).await;
    // Three days of readings every 7 minutes (so buckets hold different numbers of them), with a
    // flagged spike and a reading the device itself suspects (still usable).
    let rows: Vec<ReadingRow> = (0..(3 * 24 * 60 / 7))
        .map(|i| ReadingRow {
            sensor_id: id,
            ts: t(1, 0, 0) + ChronoDuration::minutes(7 * i),
            value: ((i * 53) % 311) as f64 / 100.0,
            quality: match i {
                200 => 256,
                300 => 1,
                _ => 0,
            },
        })
        .collect();
    store.write_batch(&rows, &[], Utc::now()).await.unwrap();
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 3 * 24);
    assert_eq!(count(&client, "readings_1h").await, 0);
    // Nothing refreshed yet: every hour is read from the raw readings.
    check_all(store, &client).await;

    assert_eq!(store.refresh_all_rollups().await.unwrap(), 3 * 24);
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 0);
    assert_eq!(count(&client, "readings_15m").await, 3 * 96);
    assert_eq!(count(&client, "readings_1h").await, 3 * 24);
    assert_eq!(count(&client, "readings_1d").await, 3);
    let day: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT n, flagged FROM readings_1d WHERE bucket = $1",
                &[&t(1, 0, 0)],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        day,
        (205, 1),
        "the first day: 206 readings, the spike left out"
    );
    check_all(store, &client).await;

    // A back-filled reading, the day's new maximum, lands in a refreshed hour: that hour (and its
    // day, where the daily rollup is read) comes from the raw readings until the next refresh.
    let late = ReadingRow {
        sensor_id: id,
        ts: t(2, 5, 4),
        value: 99.0,
        quality: 0,
    };
    store.write_batch(&[late], &[], Utc::now()).await.unwrap();
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 1);
    check_all(store, &client).await;
    let max_of_day = |rows: Vec<BucketRow>| rows.iter().map(|b| b.max).fold(f64::MIN, f64::max);
    let daily = store
        .aggregate(
            SENSOR,
            t(2, 0, 0),
            t(3, 0, 0),
            Duration::from_secs(86_400),
            false,
        )
        .await
        .unwrap();
    assert_eq!(max_of_day(daily), 99.0);

    // Analytics flags it: out of the aggregates at once, before any refresh.
    assert_eq!(
        store
            .set_quality(SENSOR, &[(t(2, 5, 4), 256)])
            .await
            .unwrap(),
        1
    );
    // Flagging it again changes nothing and notes nothing.
    assert_eq!(
        store
            .set_quality(SENSOR, &[(t(2, 5, 4), 256)])
            .await
            .unwrap(),
        0
    );
    check_all(store, &client).await;
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 1);
    check_all(store, &client).await;

    // The refreshed days really are read from the rollup: a change made to it behind the store's
    // back shows (and only the daily rollup's row for that day changes).
    client
        .execute(
            "UPDATE readings_1d SET hi = 1000 WHERE bucket = $1",
            &[&t(3, 0, 0)],
        )
        .await
        .unwrap();
    let daily = store
        .aggregate(
            SENSOR,
            t(3, 0, 0),
            t(4, 0, 0),
            Duration::from_secs(86_400),
            false,
        )
        .await
        .unwrap();
    assert_eq!(max_of_day(daily), 1000.0);
    let hourly = store
        .aggregate(
            SENSOR,
            t(3, 0, 0),
            t(4, 0, 0),
            Duration::from_secs(3_600),
            false,
        )
        .await
        .unwrap();
    assert!(max_of_day(hourly) < 4.0);

    // Hourly buckets over whole days come from the packed days: a change made to one behind the
    // store's back shows, in ranges of whole days and of ragged ends alike.
    client
        .execute(
            "UPDATE readings_1h_days SET hours = overlay(hours PLACING float8send(500) FROM 52 * 2 + 29) WHERE day = $1",
            &[&t(3, 0, 0)],
        )
        .await
        .unwrap();
    for (from, to) in [(t(3, 0, 0), t(4, 0, 0)), (t(2, 22, 30), t(4, 0, 0))] {
        let hourly = store
            .aggregate(SENSOR, from, to, Duration::from_secs(3_600), false)
            .await
            .unwrap();
        assert_eq!(max_of_day(hourly), 500.0, "{from}..{to}");
    }
    // Until a new reading of that day is refreshed, the day is read from the hourly rollup and
    // the raw readings instead; the refresh packs the day again.
    let late = ReadingRow {
        sensor_id: id,
        ts: t(3, 5, 4),
        value: 3.5,
        quality: 0,
    };
    store.write_batch(&[late], &[], Utc::now()).await.unwrap();
    let hourly = || async {
        store
            .aggregate(
                SENSOR,
                t(3, 0, 0),
                t(4, 0, 0),
                Duration::from_secs(3_600),
                false,
            )
            .await
            .unwrap()
    };
    assert_eq!(max_of_day(hourly().await), 3.5);
    check_all(store, &client).await;
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 1);
    assert_eq!(max_of_day(hourly().await), 3.5);
    check_all(store, &client).await;
    assert_eq!(count(&client, "readings_1h_days").await, 3);

    // A day without a packed row and without a note is read from the raw readings: between
    // packed days, and at the start of the range.
    for day in [t(2, 0, 0), t(1, 0, 0)] {
        client
            .execute("DELETE FROM readings_1h_days WHERE day = $1", &[&day])
            .await
            .unwrap();
        check_all(store, &client).await;
    }
    harness.finish().await;
}

/// The 15-minute rollup row of `SENSOR` at `bucket`: n, total, lo, hi, first, last, flagged.
async fn quarter_row(
    client: &tokio_postgres::Client,
    id: i32,
    bucket: DateTime<Utc>,
) -> (i64, f64, f64, f64, f64, f64, i64) {
    let row = client
        .query_one(
            "SELECT n, total, lo, hi, first_value, last_value, flagged FROM readings_15m \
             WHERE sensor_id = $1 AND bucket = $2",
            &[&id, &bucket],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    )
}

/// The start of the current hour: readings there (and in the hour before) are noted with deltas.
fn this_hour() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - now.rem_euclid(3_600), 0).unwrap()
}

/// New readings in a refreshed hour are added to its rollup rows, not read again with the hour:
/// a reading removed behind the store's back stays counted after they are added. Readings that
/// go through staging (some were stored already) and a changed quality flag have the hour
/// computed again from the raw readings, which the removal then shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_readings_are_added_to_the_rollups_without_reading_the_hour_again() {
    let harness = Harness::start().await;
    with_stations(&harness).await;
    let store = &harness.store;
    let client = sql(&harness).await;
    let id = sensor_id(&harness, SENSOR).await;
    // The current hour, as live readings arrive (some of them ahead of the clock: the store does
    // not check that).
    let hour = this_hour();
    let day = hour - ChronoDuration::seconds(hour.timestamp().rem_euclid(86_400));
    let at = |minute: i64| hour + ChronoDuration::minutes(minute);
    let reading = |minute: i64, value: f64, quality: i16| ReadingRow {
        sensor_id: id,
        ts: at(minute),
        value,
        quality,
    };
    store
        .write_batch(
            &[
                reading(1, 2.0, 0),
                reading(4, 6.0, 0),
                reading(7, 50.0, 256),
                // A back-filled reading, years old: its hour is noted to be read again.
                ReadingRow {
                    ts: t(5, 10, 0),
                    ..reading(0, 1.0, 0)
                },
            ],
            &[],
            Utc::now(),
        )
        .await
        .unwrap();
    let notes: Vec<(DateTime<Utc>, bool)> = client
        .query(
            "SELECT hour, quarter IS NOT NULL FROM rollup_dirty ORDER BY hour",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(notes, [(t(5, 10, 0), false), (hour, true)]);
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 2);
    assert_eq!(
        quarter_row(&client, id, t(5, 10, 0)).await,
        (1, 1.0, 1.0, 1.0, 1.0, 1.0, 0)
    );
    let quarter = at(0);
    assert_eq!(
        quarter_row(&client, id, quarter).await,
        (2, 8.0, 2.0, 6.0, 2.0, 6.0, 1)
    );
    // Gone behind the store's back: no note, the rollup row still counts it.
    client
        .execute(
            "DELETE FROM readings WHERE sensor_id = $1 AND ts = $2",
            &[&id, &at(4)],
        )
        .await
        .unwrap();
    // Two batches before the next refresh: earlier, later, a new minimum, a flagged one, and
    // one in the next quarter of the hour.
    store
        .write_batch(&[reading(0, 3.0, 0), reading(9, 1.0, 0)], &[], Utc::now())
        .await
        .unwrap();
    store
        .write_batch(
            &[
                reading(12, 4.0, 1),
                reading(13, 80.0, 512),
                reading(20, 9.0, 0),
            ],
            &[],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 1);
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 1);
    assert_eq!(
        quarter_row(&client, id, quarter).await,
        (5, 16.0, 1.0, 6.0, 3.0, 4.0, 2),
        "the deleted 6.0 still counted: the new readings were added to the row"
    );
    assert_eq!(
        quarter_row(&client, id, at(15)).await,
        (1, 9.0, 9.0, 9.0, 9.0, 9.0, 0)
    );
    let hour: (i64, f64, i64) = {
        let row = client
            .query_one(
                "SELECT n, total, flagged FROM readings_1h WHERE sensor_id = $1 AND bucket = $2",
                &[&id, &at(0)],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(hour, (6, 25.0, 2), "the hour from its 15-minute rows");

    // One reading stored already and one new: the batch goes through staging, and its note
    // has the hour read again, without the deleted reading.
    store
        .write_batch(&[reading(0, 3.0, 0), reading(10, 2.5, 0)], &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 1);
    assert_eq!(
        quarter_row(&client, id, quarter).await,
        (5, 12.5, 1.0, 4.0, 3.0, 4.0, 2)
    );
    for seconds in [900, 3_600, 86_400] {
        check(
            store,
            &client,
            seconds,
            day,
            day + ChronoDuration::days(1),
            false,
        )
        .await;
    }

    // A changed flag has the hour read again as well, deltas beside it or not.
    client
        .execute(
            "DELETE FROM readings WHERE sensor_id = $1 AND ts = $2",
            &[&id, &at(20)],
        )
        .await
        .unwrap();
    store
        .write_batch(&[reading(30, 7.0, 0)], &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(store.set_quality(SENSOR, &[(at(1), 256)]).await.unwrap(), 1);
    assert_eq!(store.refresh_all_rollups().await.unwrap(), 1);
    let quarters: i64 = client
        .query_one(
            "SELECT count(*) FROM readings_15m WHERE sensor_id = $1 AND bucket >= $2 AND bucket < $3",
            &[&id, &at(0), &at(60)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        quarters, 2,
        "the emptied quarter is gone, the new one is there"
    );
    assert_eq!(
        quarter_row(&client, id, quarter).await,
        (4, 10.5, 1.0, 4.0, 3.0, 4.0, 3)
    );
    harness.finish().await;
}

/// Refreshes running while batches commit and flags change never count a reading twice or miss
/// one: what the rollups say at the end is what the raw readings say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_beside_committing_batches_count_every_reading_once() {
    let harness = Harness::start().await;
    with_stations(&harness).await;
    let store = harness.store.clone();
    let client = sql(&harness).await;
    let id = sensor_id(&harness, SENSOR).await;
    let batches = 800;
    // From the hour before the current one: live readings, noted with deltas.
    let base = this_hour() - ChronoDuration::hours(1);
    let day = base - ChronoDuration::seconds(base.timestamp().rem_euclid(86_400));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for b in 0..batches {
                // A reading a minute over five and a half days, ten a batch, interleaved across
                // batches: reading i goes in batch i % 800, so an hour's readings arrive in 60
                // batches in a row, as a live hour's do.
                let rows: Vec<ReadingRow> = (0..10)
                    .map(|k| {
                        let i = k * batches + b;
                        ReadingRow {
                            sensor_id: id,
                            ts: base + ChronoDuration::minutes(i),
                            value: ((i * 37) % 101) as f64 / 10.0,
                            quality: if i % 17 == 0 { 256 } else { 0 },
                        }
                    })
                    .collect();
                store.write_batch(&rows, &[], Utc::now()).await.unwrap();
                if b >= 2 && b % 2 == 0 {
                    // A flag set on a reading stored two batches ago, in an hour whose readings
                    // are still arriving: that hour is read again from the raw readings while
                    // its deltas keep coming, about once for each hour.
                    let i = (b / 2 % 10) * batches + b - 2;
                    let ts = base + ChronoDuration::minutes(i);
                    store.set_quality(SENSOR, &[(ts, 256)]).await.unwrap();
                }
            }
        })
    };
    let refresher = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut refreshes = 0;
            while !writer.is_finished() {
                store.refresh_rollups(10_000).await.unwrap();
                refreshes += 1;
            }
            writer.await.unwrap();
            refreshes
        })
    };
    let refreshes = refresher.await.unwrap();
    assert!(
        refreshes > 10,
        "only {refreshes} refreshes ran beside the writer"
    );
    store.refresh_all_rollups().await.unwrap();
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 0);
    for seconds in [900, 3_600, 86_400] {
        check(
            &store,
            &client,
            seconds,
            day,
            day + ChronoDuration::days(7),
            false,
        )
        .await;
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ingest_keeps_the_rollups_caught_up() {
    let harness = Harness::start().await;
    with_stations(&harness).await;
    let mut settings = harness.settings(Default::default());
    settings.database.rollup_refresh = Duration::from_millis(200);
    let ingest = harness.ingest_with(settings);
    let id = sensor_id(&harness, SENSOR).await;
    let rows: Vec<ReadingRow> = (0..48)
        .map(|i| ReadingRow {
            sensor_id: id,
            ts: t(10, 0, 0) + ChronoDuration::hours(i),
            value: i as f64,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    let store = harness.store.clone();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let store = store.clone();
            async move { store.dirty_rollup_hours().await.unwrap() == 0 }
        })
        .await,
        "the refresher works off the dirty days"
    );
    let client = sql(&harness).await;
    assert_eq!(count(&client, "readings_1d").await, 2);
    ingest.stop().await;
    harness.finish().await;
}

/// An hourly read runs its statements in a transaction it begins and ends itself. Cancelled in
/// the middle (a client that goes away), it must not hand its connection back to the pool still
/// inside that transaction: the next read on it would see the old snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_hourly_read_leaves_no_transaction_behind() {
    let harness = Harness::start().await;
    with_stations(&harness).await;
    let client = sql(&harness).await;
    let id = sensor_id(&harness, SENSOR).await;
    let reading = |ts: DateTime<Utc>, value: f64| ReadingRow {
        sensor_id: id,
        ts,
        value,
        quality: 0,
    };
    let rows: Vec<ReadingRow> = (0..3 * 24)
        .map(|h| reading(t(1, 0, 0) + ChronoDuration::hours(h), h as f64))
        .collect();
    harness
        .store
        .write_batch(&rows, &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(harness.store.refresh_all_rollups().await.unwrap(), 3 * 24);
    // One connection, so that the next read gets the one the cancelled read had, if it went back.
    let config = harness.database.as_ref().unwrap().config.clone();
    let one = Store::connect(&tidemark_store::DatabaseConfig {
        pool_size: 1,
        ..config
    })
    .await
    .unwrap();
    // A partial day at each end and a packed day between them.
    let (from, to) = (t(1, 12, 0), t(3, 12, 0));
    let hourly = |store: Store| async move {
        store
            .aggregate(SENSOR, from, to, Duration::from_secs(3_600), false)
            .await
    };
    assert_eq!(hourly(one.clone()).await.unwrap().len(), 48);

    // The packed days are locked, so the read waits inside its transaction; then it is cancelled.
    let locker = sql(&harness).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE readings_1h_days IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let blocked = tokio::spawn(hourly(one.clone()));
    let locks_waited_on = || async {
        client
            .query_one(waiting, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || async {
            locks_waited_on().await == 1
        })
        .await,
        "the read waits for the lock"
    );
    blocked.abort();
    assert!(blocked.await.unwrap_err().is_cancelled());
    locker.batch_execute("COMMIT").await.unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || async {
            locks_waited_on().await == 0
        })
        .await,
        "the cancelled read's statements have run"
    );

    // A reading written now, in the partial day at the end, must be in the next read.
    let new = reading(t(3, 5, 30), 1_000.0);
    harness
        .store
        .write_batch(&[new], &[], Utc::now())
        .await
        .unwrap();
    let fresh = hourly(harness.store.clone()).await.unwrap();
    assert_eq!(fresh.iter().map(|b| b.count).sum::<i64>(), 48 + 1);
    let after = hourly(one.clone()).await.unwrap();
    assert_eq!(
        after.iter().map(|b| b.count).sum::<i64>(),
        48 + 1,
        "the read after the cancelled one sees the reading written since"
    );
    assert_eq!(after, fresh);
    harness.finish().await;
}
