//! Backup and restore with the scripts the README gives operators: a database with rows in every
//! table (the upgrade test's) backed up with `scripts/backup.sh` and restored into an empty one
//! with `scripts/restore.sh` holds the same rows, the same sequence positions, and answers the
//! store's queries the same.

use crate::support::{is_hypertable, sql_client};
use crate::support::{repo, timescale_database};
use crate::upgrade::{snapshot, upgraded_database};
use chrono::{Duration as Days, Utc};
use std::process::Command;
use std::time::Duration;
use tidemark_store::schema::migrate;
use tidemark_store::Store;
use tidemark_testkit::{test_server, TestDatabase};

async fn sequences(client: &tokio_postgres::Client) -> Vec<(String, Option<i64>)> {
    client
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences \
             WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Every reading, in key order, as text.
async fn readings(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT sensor_id, ts, value, quality, received_at FROM readings \
             ORDER BY sensor_id, ts",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}",
                r.get::<_, i32>(0),
                r.get::<_, chrono::DateTime<Utc>>(1),
                r.get::<_, f64>(2),
                r.get::<_, i16>(3),
                r.get::<_, chrono::DateTime<Utc>>(4)
            )
        })
        .collect()
}

/// TimescaleDB's view of a database: its chunks, continuous aggregates and jobs, as text.
async fn timescale_catalog(client: &tokio_postgres::Client) -> Vec<String> {
    let mut catalog = Vec::new();
    for query in [
        "SELECT hypertable_name || ' ' || range_start::text || ' ' || is_compressed::text \
         FROM timescaledb_information.chunks ORDER BY 1",
        "SELECT view_name::text FROM timescaledb_information.continuous_aggregates ORDER BY 1",
        "SELECT proc_name || ' ' || coalesce(hypertable_name::text, '') || ' ' || \
         schedule_interval::text || ' ' || coalesce(config::text, '') \
         FROM timescaledb_information.jobs ORDER BY 1",
    ] {
        for row in client.query(query, &[]).await.unwrap() {
            catalog.push(row.get::<_, String>(0));
        }
    }
    catalog
}

async fn readings_chunks(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks \
             WHERE hypertable_name = 'readings'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn script(name: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new("bash")
        .arg(repo(&format!("scripts/{name}")))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn a_backup_restores_every_row_into_an_empty_database() {
    let (source, _) = upgraded_database().await;
    let source_client = sql_client(&source.config.url).await;
    let path = std::env::temp_dir().join(format!("tidemark-backup-{}.dump", std::process::id()));
    let file = path.to_str().unwrap();
    let backed_up = script("backup.sh", &[&source.config.url, file]);
    assert!(String::from_utf8_lossy(&backed_up.stdout).contains("readings 1728,"));

    let target = TestDatabase::create(&test_server()).await.unwrap();
    let restored = script("restore.sh", &[file, &target.config.url]);
    assert!(String::from_utf8_lossy(&restored.stdout).contains("readings 1728,"));
    let target_client = sql_client(&target.config.url).await;

    let before = snapshot(&source_client).await;
    let after = snapshot(&target_client).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, table) in &before {
        assert!(after[name] == *table, "{name} differs after the restore");
    }
    assert_eq!(
        sequences(&source_client).await,
        sequences(&target_client).await
    );

    // A second restore into the same database is refused, not merged.
    let again = Command::new("bash")
        .arg(repo("scripts/restore.sh"))
        .args([file, &target.config.url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("restore into an empty database"));

    // The restored database is one the pipeline runs on: migrating finds nothing to do, and the
    // store answers as it did from the original.
    migrate(&target.config).await.unwrap();
    let day = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - Days::days(3);
    let mut answers = Vec::new();
    for config in [&source.config, &target.config] {
        let store = Store::connect(config).await.unwrap();
        let buckets = store
            .aggregate(
                "up.level",
                day,
                day + Days::days(3),
                Duration::from_secs(3_600),
                false,
            )
            .await
            .unwrap();
        answers.push(format!("{buckets:?}"));
    }
    assert_eq!(answers[0], answers[1]);
    std::fs::remove_file(&path).unwrap();
    drop((source_client, target_client));
    source.drop_database().await.unwrap();
    target.drop_database().await.unwrap();
}

/// The same round trip for a database made with TimescaleDB, where the test server offers it:
/// `restore.sh` puts the extension into its restore mode around pg_restore, and the hypertable,
/// its chunks, the continuous aggregates and the answers come back. Skipped elsewhere.
#[tokio::test]
async fn a_timescaledb_backup_restores_its_hypertables_and_answers() {
    use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord};
    use tidemark_store::{DatabaseConfig, StorageMode, TimescaleSetting};
    // Compression after 30 days: the ten days of readings below stay uncompressed, so that the
    // scheduler's compression job cannot change a chunk between the backup and the comparison.
    let Some((source, config, store)) = timescale_database(Duration::from_secs(30 * 86_400)).await
    else {
        return;
    };
    store
        .apply_reference(&ReferenceData {
            devices: vec![DeviceRecord {
                key: "d1".into(),
                name: "Målestation".into(),
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
        })
        .await
        .unwrap();
    let sensor_id = store
        .directory()
        .await
        .unwrap()
        .sensors
        .values()
        .next()
        .unwrap()
        .0;
    // Ten days of 10-minute readings over several chunks, with the rollups refreshed.
    let start = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - Days::days(10);
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..1440)
        .map(|i| tidemark_store::readings::ReadingRow {
            sensor_id,
            ts: start + Days::minutes(10 * i),
            value: ((i * 37) % 101) as f64 / 10.0,
            quality: if i % 97 == 0 { 256 } else { 0 },
        })
        .collect();
    store.write_batch(&rows, &[], Utc::now()).await.unwrap();
    store.refresh_all_rollups().await.unwrap();

    let path = std::env::temp_dir().join(format!(
        "tidemark-backup-timescaledb-{}.dump",
        std::process::id()
    ));
    let file = path.to_str().unwrap();
    script("backup.sh", &[&config.url, file]);
    let target = TestDatabase::create(&test_server()).await.unwrap();
    let restored = script("restore.sh", &[file, &target.config.url]);
    assert!(
        String::from_utf8_lossy(&restored.stdout).contains("holds TimescaleDB"),
        "restore.sh took the TimescaleDB path"
    );
    let fresh = sql_client(&target.config.url).await;
    let restoring: String = fresh
        .query_one("SHOW timescaledb.restoring", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        restoring, "off",
        "the restored database is out of restore mode"
    );
    let (source_client, target_client) = (
        sql_client(&config.url).await,
        sql_client(&target.config.url).await,
    );
    for client in [&source_client, &target_client] {
        assert!(
            is_hypertable(client, "readings").await,
            "readings is a hypertable"
        );
    }
    // The extension's catalog comes back as it was: chunks, continuous aggregates and jobs.
    assert_eq!(
        timescale_catalog(&source_client).await,
        timescale_catalog(&target_client).await
    );
    let before = readings(&source_client).await;
    assert_eq!(before.len(), 1440);
    assert_eq!(before, readings(&target_client).await);

    // Migrating the restored database finds nothing to do; the store answers from it (rollups
    // and raw) as from the original.
    let target_config = DatabaseConfig {
        timescaledb: TimescaleSetting::Required,
        compress_after: config.compress_after,
        ..target.config.clone()
    };
    assert_eq!(
        migrate(&target_config).await.unwrap(),
        StorageMode::TimescaleDb
    );
    // The extension left its restore mode, and the restored hypertable takes new readings into
    // a chunk of their own.
    let restored_chunks = readings_chunks(&fresh).await;
    let later = tidemark_store::readings::ReadingRow {
        sensor_id,
        ts: start + Days::days(60),
        value: 1.5,
        quality: 0,
    };
    let written = Store::connect(&target_config)
        .await
        .unwrap()
        .write_batch(&[later], &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(written.stored, 1);
    assert_eq!(readings_chunks(&fresh).await, restored_chunks + 1);
    let mut answers = Vec::new();
    for config in [&config, &target_config] {
        let store = Store::connect(config).await.unwrap();
        let mut answer = Vec::new();
        for (seconds, raw) in [(3_600, false), (86_400, false), (900, true)] {
            let buckets = store
                .aggregate(
                    "d1.level",
                    start,
                    start + Days::days(10),
                    Duration::from_secs(seconds),
                    raw,
                )
                .await
                .unwrap();
            answer.push(format!("{buckets:?}"));
        }
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1]);
    std::fs::remove_file(&path).unwrap();
    drop((source_client, target_client, store));
    source.drop_database().await.unwrap();
    target.drop_database().await.unwrap();
}
