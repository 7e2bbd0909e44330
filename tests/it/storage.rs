//! Storage in both modes against the real server.

use crate::support::{is_hypertable, sql_client, timescale_database};
use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;
use tidemark_store::readings::{ReadingRow, RejectionRow};
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
use tidemark_store::schema::{migrate, server_offers_timescaledb};
use tidemark_store::{DatabaseConfig, Error, StorageMode, Store, TimescaleSetting};
use tidemark_testkit::{test_server, TestDatabase};

fn utc(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
}

async fn one_sensor(store: &Store) -> i32 {
    let data = ReferenceData {
        devices: vec![DeviceRecord {
            key: "d1".into(),
            name: String::new(),
        }],
        stations: vec![],
        sensors: vec![SensorRecord {
            key: "d1.level".into(),
            device: "d1".into(),
            station: None,
            quantity: "water_level".into(),
            name: String::new(),
            expected_interval: Duration::from_secs(600),
        }],
    };
    store.apply_reference(&data).await.unwrap();
    // Loading the same file again changes nothing.
    store.apply_reference(&data).await.unwrap();
    let directory = store.directory().await.unwrap();
    assert_eq!(directory.sensors.len(), 1);
    directory.sensors.values().next().unwrap().0
}

/// A fresh database left at schema `version` (as that release made it), with `rows` added by SQL,
/// and a connection to it.
async fn database_at(version: i32, rows: &str) -> (TestDatabase, tokio_postgres::Client) {
    let database = TestDatabase::create(&test_server()).await.unwrap();
    tidemark_store::schema::migrate_to_version(&database.config, version)
        .await
        .unwrap();
    let client = sql_client(&database.config.url).await;
    client.batch_execute(rows).await.unwrap();
    (database, client)
}

fn rows(sensor_id: i32, times: &[DateTime<Utc>]) -> Vec<ReadingRow> {
    times
        .iter()
        .enumerate()
        .map(|(i, ts)| ReadingRow {
            sensor_id,
            ts: *ts,
            value: 1.0 + i as f64,
            quality: 0,
        })
        .collect()
}

/// Writes, reads back and rewrites readings: the checks both modes must pass.
/// The rollups, in whichever mode is active, answer as the raw readings do: three days of readings
/// (none flagged, so the usable-only answer, read from a rollup, must equal the all-readings answer,
/// computed from the raw readings), before and after a refresh.
async fn rollups_match_raw(store: &Store, sensor_id: i32) {
    let start = utc(2024, 4, 1);
    let batch: Vec<ReadingRow> = (0..432)
        .map(|i| ReadingRow {
            sensor_id,
            ts: start + chrono::Duration::minutes(10 * i),
            value: ((i * 29) % 97) as f64 / 10.0,
            quality: 0,
        })
        .collect();
    store.write_batch(&batch, &[], Utc::now()).await.unwrap();
    let end = start + chrono::Duration::days(3);
    let check = || async {
        for seconds in [900, 3_600, 86_400] {
            let bucket = Duration::from_secs(seconds);
            let rolled = store
                .aggregate("d1.level", start, end, bucket, false)
                .await
                .unwrap();
            let raw = store
                .aggregate("d1.level", start, end, bucket, true)
                .await
                .unwrap();
            assert_eq!(rolled.len(), raw.len(), "{seconds} s buckets");
            for (a, b) in rolled.iter().zip(&raw) {
                assert_eq!(
                    (a.start, a.count, a.min, a.max, a.first, a.last),
                    (b.start, b.count, b.min, b.max, b.first, b.last)
                );
                assert!((a.sum - b.sum).abs() < 1e-9);
            }
        }
    };
    check().await;
    assert!(store.dirty_rollup_hours().await.unwrap() > 0);
    store.refresh_all_rollups().await.unwrap();
    assert_eq!(store.dirty_rollup_hours().await.unwrap(), 0);
    check().await;
}

async fn round_trip(store: &Store, sensor_id: i32, times: &[DateTime<Utc>]) {
    let batch = rows(sensor_id, times);
    let first = store.write_batch(&batch, &[], Utc::now()).await.unwrap();
    assert_eq!((first.stored, first.duplicates), (times.len() as u64, 0));
    let stored = store.sensor_readings("d1.level").await.unwrap();
    let got: Vec<(DateTime<Utc>, f64)> = stored.iter().map(|r| (r.0, r.1)).collect();
    let want: Vec<(DateTime<Utc>, f64)> = batch.iter().map(|r| (r.ts, r.value)).collect();
    assert_eq!(got, want);

    // A redelivered batch lands once; a batch mixing old and new keeps only the new.
    let again = store.write_batch(&batch, &[], Utc::now()).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, times.len() as u64));
    let mut mixed = batch.clone();
    mixed.push(ReadingRow {
        sensor_id,
        ts: times[0] + chrono::Duration::seconds(1),
        value: 9.0,
        quality: 0,
    });
    let partial = store.write_batch(&mixed, &[], Utc::now()).await.unwrap();
    assert_eq!(
        (partial.stored, partial.duplicates),
        (1, times.len() as u64)
    );
    assert_eq!(
        store.count_readings().await.unwrap(),
        times.len() as u64 + 1
    );

    // A rejection redelivered is kept once.
    let rejection = RejectionRow {
        received_at: Utc::now(),
        topic: "tidemark/v1/readings/d1".into(),
        device: Some("d1".into()),
        payload: b"\xff\x00not json".to_vec(),
        entry: None,
        reason_code: "malformed",
        reason: "malformed payload".into(),
    };
    let once = store
        .write_batch(&[], std::slice::from_ref(&rejection), Utc::now())
        .await
        .unwrap();
    let twice = store
        .write_batch(&[], std::slice::from_ref(&rejection), Utc::now())
        .await
        .unwrap();
    assert_eq!((once.rejections_stored, twice.rejections_stored), (1, 0));
    let kept = store.recent_rejections(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, rejection.payload);
}

#[tokio::test]
async fn plain_postgresql_partitions_round_trip_and_retention() {
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let config = DatabaseConfig {
        timescaledb: TimescaleSetting::Off,
        ..database.config.clone()
    };
    assert_eq!(migrate(&config).await.unwrap(), StorageMode::Plain);
    // Migrating again (every start does) is harmless.
    assert_eq!(migrate(&config).await.unwrap(), StorageMode::Plain);
    let store = Store::connect(&config).await.unwrap();
    assert_eq!(store.mode(), StorageMode::Plain);
    let sensor_id = one_sensor(&store).await;

    // Partitions for this month and the configured months ahead exist after migrate.
    let partitions = store.partition_names().await.unwrap();
    let this_month = format!("readings_p{}", Utc::now().format("%Y%m"));
    assert!(partitions.contains(&this_month), "{partitions:?}");
    assert_eq!(partitions.len() as u32, 1 + config.partitions_ahead);

    // Writing into past months creates their partitions on demand.
    let times = [utc(2024, 1, 15), utc(2024, 2, 15), utc(2024, 3, 15)];
    round_trip(&store, sensor_id, &times).await;
    rollups_match_raw(&store, sensor_id).await;
    let partitions = store.partition_names().await.unwrap();
    for month in ["readings_p202401", "readings_p202402", "readings_p202403"] {
        assert!(
            partitions.contains(&month.to_owned()),
            "{month} in {partitions:?}"
        );
    }

    // Retention drops whole months past the cutoff and keeps the rest.
    let recent = Utc::now() - chrono::Duration::days(1);
    store
        .write_batch(&rows(sensor_id, &[recent]), &[], Utc::now())
        .await
        .unwrap();
    let retained = DatabaseConfig {
        retention: Some(Duration::from_secs(90 * 86_400)),
        ..config.clone()
    };
    store.maintain(Utc::now(), &retained).await.unwrap();
    let partitions = store.partition_names().await.unwrap();
    assert!(
        !partitions.iter().any(|p| p.starts_with("readings_p2024")),
        "{partitions:?}"
    );
    assert_eq!(store.count_readings().await.unwrap(), 1);

    drop(store);
    database.drop_database().await.unwrap();
}

/// A write in turn writes everything but waits for its turn to commit: until then nothing of it is
/// visible (nor, in the same transaction, notified), and once the turn comes it commits.
#[tokio::test]
async fn a_write_in_turn_commits_only_once_its_turn_has_come() {
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let config = DatabaseConfig {
        timescaledb: TimescaleSetting::Off,
        ..database.config.clone()
    };
    migrate(&config).await.unwrap();
    let store = Store::connect(&config).await.unwrap();
    let sensor_id = one_sensor(&store).await;
    let readings = rows(sensor_id, &[utc(2024, 1, 15), utc(2024, 1, 16)]);
    let (turn, wait) = tokio::sync::oneshot::channel::<()>();
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            let batch = tidemark_store::readings::Batch {
                messages: &[],
                readings: &readings,
                origins: &[],
                refusals: &[],
                forecasts: &[],
                forecast_messages: &[],
            };
            let turn = async {
                let _ = wait.await;
            };
            store.write_in_turn(batch, Utc::now(), turn).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the write waits for its turn");
    assert_eq!(
        store.count_readings().await.unwrap(),
        0,
        "nothing committed"
    );
    turn.send(()).unwrap();
    let outcome = write.await.unwrap().unwrap();
    assert_eq!(outcome.stored, 2);
    assert_eq!(store.count_readings().await.unwrap(), 2);
    drop(store);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn timescaledb_hypertable_compression_retention_round_trip() {
    if !server_offers_timescaledb(&test_server()).await.unwrap() {
        eprintln!("TimescaleDB is not offered by this server (pg_available_extensions): skipped");
        return;
    }
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let config = DatabaseConfig {
        timescaledb: TimescaleSetting::Required,
        retention: Some(Duration::from_secs(3650 * 86_400)),
        ..database.config.clone()
    };
    assert_eq!(migrate(&config).await.unwrap(), StorageMode::TimescaleDb);
    assert_eq!(migrate(&config).await.unwrap(), StorageMode::TimescaleDb);
    let store = Store::connect(&config).await.unwrap();
    let status = store.timescale_status().await.unwrap();
    assert!(status.hypertable, "{status:?}");
    assert!(status.compression_enabled, "{status:?}");
    assert_eq!(status.segment_by, ["sensor_id"]);
    assert!(status.compression_policy, "{status:?}");
    assert!(status.retention_policy, "{status:?}");
    let sensor_id = one_sensor(&store).await;
    round_trip(
        &store,
        sensor_id,
        &[utc(2024, 1, 15), utc(2024, 2, 15), utc(2024, 3, 15)],
    )
    .await;
    assert_eq!(
        status.continuous_aggregates,
        ["readings_15m", "readings_1d", "readings_1h"]
    );
    rollups_match_raw(&store, sensor_id).await;
    // Forecasts are a hypertable as well, and retention deletes old issues from it.
    let client = sql_client(&config.url).await;
    assert!(is_hypertable(&client, "forecasts").await);
    let issued_at = utc(2024, 3, 1);
    let row = tidemark_store::forecasts::ForecastRow {
        sensor_id,
        source: "nowcast".into(),
        issued_at,
        values: vec![tidemark_model::forecast::ForecastValue {
            valid_at: issued_at + chrono::Duration::hours(1),
            value: 1.0,
            quantiles: Vec::new(),
        }],
    };
    assert_eq!(
        store.store_forecast(&row).await.unwrap(),
        tidemark_store::forecasts::Stored::New
    );
    assert_eq!(
        store
            .expire_forecasts(issued_at + chrono::Duration::days(1))
            .await
            .unwrap(),
        1
    );
    let left: i64 = client
        .query_one("SELECT count(*) FROM forecasts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    drop(store);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn requiring_timescaledb_where_it_is_missing_fails_with_a_clear_error() {
    if server_offers_timescaledb(&test_server()).await.unwrap() {
        eprintln!(
            "TimescaleDB is offered by this server: the missing-extension path is not reachable"
        );
        return;
    }
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let config = DatabaseConfig {
        timescaledb: TimescaleSetting::Required,
        ..database.config.clone()
    };
    let error = migrate(&config).await.unwrap_err();
    assert!(matches!(error, Error::TimescaleUnavailable(_)), "{error}");
    assert!(
        error.to_string().contains("pg_available_extensions"),
        "{error}"
    );
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_to_utility_alerts_ends_all_but_each_meters_latest_suspicion() {
    // A database as the release before utility alerts left it, with suspicions recorded then:
    // several for one meter, one for another.
    let (database, client) = database_at(
        13,
        "INSERT INTO devices (key) VALUES ('district'); \
         INSERT INTO sensors (key, device_id, quantity) \
           SELECT k, d.id, 'water_flow' FROM devices d, unnest(ARRAY['a.flow', 'b.flow']) k; \
         INSERT INTO leak_suspicions (sensor_key, since, raised_on, baseline, night_flow) VALUES \
           ('a.flow', '2026-01-01', '2026-01-03', 8, 12), \
           ('a.flow', '2026-02-01', '2026-02-03', 8, 12), \
           ('a.flow', '2026-03-01', '2026-03-03', 8, 12), \
           ('b.flow', '2026-01-05', '2026-01-07', 8, 12);",
    )
    .await;
    migrate(&database.config).await.unwrap();
    let ends: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT sensor_key, since::text, ended_on::text FROM leak_suspicions ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let row = |s: &str, since: &str, ended: Option<&str>| {
        (s.to_owned(), since.to_owned(), ended.map(str::to_owned))
    };
    assert_eq!(
        ends,
        [
            row("a.flow", "2026-01-01", Some("2026-02-01")),
            row("a.flow", "2026-02-01", Some("2026-03-01")),
            row("a.flow", "2026-03-01", None),
            row("b.flow", "2026-01-05", None),
        ],
        "each meter keeps one open suspicion, as the new unique index demands"
    );
    drop(client);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn upgrading_folds_per_entry_rejections_into_one_row_per_message() {
    // Earlier releases kept a row, with the whole payload, per refused entry.
    let (database, _) = database_at(
        15,

        "INSERT INTO rejected_messages (received_at, topic, device, payload, entry, reason_code, reason) VALUES \
           ('2026-01-01T00:00:00Z', 't/a', 'a', '\\x01', 0, 'malformed', 'first'), \
           ('2026-01-01T00:00:00Z', 't/a', 'a', '\\x01', 2, 'future', 'third'), \
           ('2026-01-01T00:00:00Z', 't/a', 'a', '\\x01', 1, 'malformed', 'second'), \
           ('2026-01-01T00:00:01Z', 't/a', 'a', '\\x02', -1, 'malformed', 'whole');",
    )
    .await;
    migrate(&database.config).await.unwrap();
    let store = Store::connect(&database.config).await.unwrap();
    let mut kept = store.recent_rejections(10).await.unwrap();
    kept.sort_by_key(|r| r.id);
    let summary: Vec<(Option<usize>, &str, u32)> = kept
        .iter()
        .map(|r| (r.entry, r.reason.as_str(), r.entries_rejected))
        .collect();
    assert_eq!(summary, vec![(Some(0), "first", 3), (None, "whole", 0)]);
    let entries: Vec<(usize, String)> = store
        .rejected_entries(kept[0].id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.entry, e.reason))
        .collect();
    assert_eq!(
        entries,
        vec![
            (0, "first".into()),
            (1, "second".into()),
            (2, "third".into())
        ]
    );
    drop(store);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn loading_a_station_without_a_municipality_keeps_the_one_it_has() {
    use tidemark_store::reference::StationRecord;
    let database = TestDatabase::create(&test_server()).await.unwrap();
    migrate(&database.config).await.unwrap();
    let store = Store::connect(&database.config).await.unwrap();
    let station = |code: Option<&str>| ReferenceData {
        stations: vec![StationRecord {
            key: "soenderborg".into(),
            name: "Sønderborg".into(),
            kind: "tide_gauge".into(),
            lon: 9.79,
            lat: 54.91,
            municipality_code: code.map(str::to_owned),
        }],
        ..Default::default()
    };
    let code = || async {
        sql_client(&database.config.url)
            .await
            .query_one(
                "SELECT municipality_code FROM stations WHERE key = 'soenderborg'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };
    store.apply_reference(&station(Some("0540"))).await.unwrap();
    // A replay knows no municipality codes: it loads the station again without one.
    store.apply_reference(&station(None)).await.unwrap();
    assert_eq!(code().await.as_deref(), Some("0540"));
    store.apply_reference(&station(Some("0563"))).await.unwrap();
    assert_eq!(code().await.as_deref(), Some("0563"));
    drop(store);
    database.drop_database().await.unwrap();
}

/// A server that offers TimescaleDB but does not preload it (the library installed, postgresql.conf
/// not yet changed): `auto` falls back to plain PostgreSQL with a warning, and `required` fails
/// naming shared_preload_libraries. The cluster is a private one made without preloading, from
/// the server binaries found (or `TIDEMARK_TEST_PG_BIN`); skipped where they offer no TimescaleDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_offered_but_not_preloaded_falls_back_to_plain_or_says_why() {
    let server = tidemark_testkit::PrivatePostgres::start().await.unwrap();
    if !server_offers_timescaledb(&server.config()).await.unwrap() {
        eprintln!("these PostgreSQL binaries offer no TimescaleDB: skipped");
        return;
    }
    let auto = DatabaseConfig {
        timescaledb: TimescaleSetting::Auto,
        ..server.config().with_database("half_auto")
    };
    assert_eq!(migrate(&auto).await.unwrap(), StorageMode::Plain);
    let store = Store::connect(&auto).await.unwrap();
    assert_eq!(store.mode(), StorageMode::Plain);
    let required = DatabaseConfig {
        timescaledb: TimescaleSetting::Required,
        ..server.config().with_database("half_required")
    };
    let error = migrate(&required).await.unwrap_err();
    assert!(matches!(error, Error::TimescaleUnavailable(_)), "{error}");
    assert!(
        error.to_string().contains("shared_preload_libraries"),
        "{error}"
    );
}

/// TimescaleDB's background jobs on `readings` are watched: where the scheduler's runs fail (as on
/// PostgreSQL 15.20 with TimescaleDB 2.28.3), `/readyz` says so with the error, and maintenance runs
/// the jobs itself, so old chunks are compressed all the same. Where the scheduler's runs succeed,
/// `/readyz` says the jobs are fine. Skipped where the server offers no TimescaleDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_timescaledb_jobs_are_reported_and_run_by_maintenance() {
    let Some((database, config, store)) = timescale_database(Duration::from_secs(7 * 86_400)).await
    else {
        return;
    };
    let sensor_id = one_sensor(&store).await;
    let old = Utc::now() - chrono::Duration::days(30);
    store
        .write_batch(
            &rows(sensor_id, &[old, old + chrono::Duration::hours(1)]),
            &[],
            Utc::now(),
        )
        .await
        .unwrap();
    let client = sql_client(&config.url).await;
    // Let the scheduler run the compression job now.
    client
        .batch_execute(
            "SELECT alter_job(job_id, next_start => now()) FROM timescaledb_information.jobs \
             WHERE hypertable_name = 'readings' AND proc_name = 'policy_compression'",
        )
        .await
        .unwrap();
    let mut ran = false;
    for _ in 0..100 {
        let jobs = store.timescale_jobs().await.unwrap();
        // A run counts as soon as it starts; wait for its outcome.
        if jobs.iter().any(|j| {
            j.proc_name == "policy_compression" && j.total_runs > 0 && j.last_run_status.is_some()
        }) {
            ran = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ran, "the scheduler ran the compression job");
    let compression = store
        .timescale_jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.proc_name == "policy_compression")
        .unwrap();
    let ready = tidemark_api::readyz(axum::extract::State(tidemark_api::OpsState {
        store: store.clone(),
        broker: tidemark_model::broker::BrokerConfig::default(),
        registry: std::sync::Arc::new(prometheus_client::registry::Registry::default()),
    }))
    .await;
    let body = axum::body::to_bytes(ready.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    let compressed = || async {
        client
            .query_one(
                "SELECT count(*) FROM timescaledb_information.chunks \
                 WHERE hypertable_name = 'readings' AND is_compressed",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    if compression.failing() {
        eprintln!("the scheduler's compression runs fail here: {compression:?}");
        assert!(body.contains("failing in the scheduler"), "{body}");
        assert!(body.contains("policy_compression"), "{body}");
        assert!(
            body.contains(compression.last_error.as_deref().unwrap()),
            "{body}"
        );
        // (The failure may come after the chunk was compressed: on PostgreSQL 15.20 the job
        // compresses, then fails as it ends.)
        let ran = store.maintain(Utc::now(), &config).await.unwrap();
        assert!(!ran.is_empty(), "maintenance ran the failing job");
    } else {
        assert!(body.contains("timescaledb jobs: ok"), "{body}");
    }
    assert!(compressed().await >= 1, "the old chunk is compressed");
    drop(store);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn upgrading_packs_the_hourly_rows_already_computed() {
    // Hourly rollup rows as a release before the packed days left them: two days of one sensor,
    // one hour of flagged readings only, and a third day with a change not yet refreshed.
    let (database, client) = database_at(
        17,
        "INSERT INTO devices (key) VALUES ('gauge'); \
         INSERT INTO sensors (key, device_id, quantity) \
           SELECT 'gauge.level', d.id, 'water_level' FROM devices d; \
         INSERT INTO readings_1h (sensor_id, bucket, n, total, lo, hi, first_ts, first_value, \
             last_ts, last_value, flagged, quality) \
           SELECT s.id, h, 6, 6 * (extract(epoch FROM h) / 3600 % 100), 1, 2 + extract(hour FROM h), \
             h, 1.5, h + interval '50 minutes', 1.25, 1, 1 \
           FROM sensors s, generate_series('2026-01-01T00:00:00Z'::timestamptz, \
             '2026-01-03T23:00:00Z', interval '1 hour') h; \
         UPDATE readings_1h SET n = 0, total = NULL, lo = NULL, hi = NULL, first_ts = NULL, \
             first_value = NULL, last_ts = NULL, last_value = NULL, flagged = 6, quality = NULL \
           WHERE bucket = '2026-01-02T05:00:00Z'; \
         INSERT INTO rollup_dirty (sensor_id, hour) SELECT id, '2026-01-03T07:00:00Z' FROM sensors;",
    )
    .await;
    migrate(&database.config).await.unwrap();
    let packed: i64 = client
        .query_one("SELECT count(*) FROM readings_1h_days", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(packed, 3, "a packed row for every day with hourly rows");
    let store = Store::connect(&database.config).await.unwrap();
    let day = |d: u32| Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap();
    let buckets = store
        .aggregate(
            "gauge.level",
            day(1),
            day(4),
            Duration::from_secs(3_600),
            false,
        )
        .await
        .unwrap();
    // The first two days come from the packed rows, exactly as the hourly rows hold them; the
    // third has a dirty note, so it is read from the raw readings (none here).
    assert_eq!(buckets.len(), 48);
    for (i, b) in buckets.iter().enumerate() {
        let start = day(1) + chrono::Duration::hours(i as i64);
        assert_eq!(b.start, start);
        if start == Utc.with_ymd_and_hms(2026, 1, 2, 5, 0, 0).unwrap() {
            assert_eq!((b.count, b.flagged, b.quality), (0, 6, 0));
            assert!(b.min.is_nan() && b.max.is_nan() && b.first.is_nan());
            continue;
        }
        let hour = (start.timestamp() / 3600 % 100) as f64;
        assert_eq!(
            (b.count, b.sum, b.min, b.max, b.first, b.last, b.flagged, b.quality),
            (6, 6.0 * hour, 1.0, 2.0 + (i % 24) as f64, 1.5, 1.25, 1, 1),
            "{start}"
        );
    }
    drop(client);
    database.drop_database().await.unwrap();
}
