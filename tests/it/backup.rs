//! Backup and restore with the scripts the README gives operators: a database with rows in every
//! table (the upgrade test's) backed up with `scripts/backup.sh` and restored into an empty one
//! with `scripts/restore.sh` holds the same rows, the same sequence positions, and answers the
//! store's queries the same.

use crate::support::repo;
use crate::support::sql_client;
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
