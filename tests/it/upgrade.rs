//! Upgrades: a database made by each earlier schema version, with rows in every table, migrated
//! one version at a time to the current one. No migration may change or lose a row (compared on
//! the columns the table had before it ran), every table holds data at every version, and the
//! store reads the upgraded data as it reads its own.
//!
//! The rows are `tests/fixtures/upgrade/V<n>.sql`, each run right after migration `n`, filling
//! the tables that version made. A new migration that makes a table needs a file of its own, or
//! this test fails naming the empty table.

use crate::support::{repo, sql_client};
use chrono::{Duration as Days, Utc};
use std::collections::BTreeMap;
use std::time::Duration;
use tidemark_store::schema::{migrate, migrate_to_version};
use tidemark_store::Store;
use tidemark_testkit::{test_server, TestDatabase};

/// A table's columns (in their order) and its rows as JSON text over those columns, sorted.
#[derive(Debug, PartialEq)]
pub struct Table {
    columns: Vec<String>,
    rows: Vec<String>,
}

/// The highest version among the store's migration files.
fn latest_version() -> i32 {
    std::fs::read_dir(repo("store/migrations"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_prefix('V')?.split("__").next()?.parse().ok()
        })
        .max()
        .unwrap()
}

/// Every table of the schema (partitioned tables once, not their partitions) with its columns.
async fn tables(client: &tokio_postgres::Client) -> BTreeMap<String, Vec<String>> {
    client
        .query(
            "SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND c.relname <> 'refinery_schema_history' \
             GROUP BY c.relname",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The rows of `table` over `columns`, as JSON text, sorted; an error if the table or a column
/// is gone.
async fn rows(
    client: &tokio_postgres::Client,
    table: &str,
    columns: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let list: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
    let sql = format!(
        "SELECT row_to_json(x)::text FROM (SELECT {} FROM {}) x",
        list.join(", "),
        quoted(table)
    );
    let mut rows: Vec<String> = client
        .query(&sql, &[])
        .await?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    rows.sort();
    Ok(rows)
}

pub async fn snapshot(client: &tokio_postgres::Client) -> BTreeMap<String, Table> {
    let mut snapshot = BTreeMap::new();
    for (name, columns) in tables(client).await {
        let rows = rows(client, &name, &columns).await.unwrap();
        snapshot.insert(name, Table { columns, rows });
    }
    snapshot
}

/// Builds the database version by version to the current one, with the fixture rows; returns it
/// with its final snapshot.
pub async fn upgraded_database() -> (TestDatabase, BTreeMap<String, Table>) {
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let latest = latest_version();
    let mut before: Option<BTreeMap<String, Table>> = None;
    for version in 1..=latest {
        if version < latest {
            migrate_to_version(&database.config, version).await.unwrap();
        } else {
            // The last step as a release runs it, with the store's upkeep after the migrations.
            migrate(&database.config).await.unwrap();
        }
        let client = sql_client(&database.config.url).await;
        for (name, table) in before.iter().flatten() {
            let now = rows(&client, name, &table.columns)
                .await
                .unwrap_or_else(|e| {
                    panic!("after V{version}, {name} cannot be read as before: {e}")
                });
            assert!(
                now == table.rows,
                "V{version} changed the rows of {name}:\nbefore {:#?}\nafter {now:#?}",
                table.rows
            );
        }
        let fixture = repo(&format!("tests/fixtures/upgrade/V{version}.sql"));
        if fixture.exists() {
            let sql = std::fs::read_to_string(&fixture).unwrap();
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
        }
        let snapshot = snapshot(&client).await;
        for (name, table) in &snapshot {
            assert!(
                !table.rows.is_empty(),
                "{name} is empty at schema version {version}: give it rows in \
                 tests/fixtures/upgrade/V<n>.sql for the version that made it"
            );
        }
        before = Some(snapshot);
    }
    (database, before.unwrap())
}

#[tokio::test]
async fn every_earlier_version_upgrades_with_its_data_unchanged() {
    let (database, _) = upgraded_database().await;
    let client = sql_client(&database.config.url).await;
    let store = Store::connect(&database.config).await.unwrap();

    // Raw readings of the upgraded database through the store, one hour at a time: from the raw
    // readings while the migrations' dirty notes stand, from the packed and hourly rollups once a
    // refresh has taken them. Both must answer as the readings do.
    let day = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - Days::days(3);
    let hour = Duration::from_secs(3_600);
    let mut answers = Vec::new();
    for refreshed in [false, true] {
        if refreshed {
            store.refresh_all_rollups().await.unwrap();
            let dirty: i64 = client
                .query_one("SELECT count(*) FROM rollup_dirty", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(dirty, 0);
        }
        let buckets = store
            .aggregate("up.level", day, day + Days::days(3), hour, false)
            .await
            .unwrap();
        assert_eq!(buckets.len(), 72, "an hourly bucket for each of three days");
        assert!(buckets.iter().all(|b| b.count + b.flagged == 6));
        assert_eq!(buckets.iter().map(|b| b.flagged).sum::<i64>(), 3);
        answers.push(buckets);
    }
    for (raw, rolled) in answers[0].iter().zip(&answers[1]) {
        // Sums may differ in the last place: the rollup adds the readings in another order.
        assert!((raw.sum - rolled.sum).abs() < 1e-9, "{raw:?} {rolled:?}");
        let exact = |b: &tidemark_store::opendata::BucketRow| {
            (
                b.start, b.count, b.min, b.max, b.first, b.last, b.flagged, b.quality,
            )
        };
        assert_eq!(exact(raw), exact(rolled));
    }

    // The rest of what earlier versions kept, through the store's own readers.
    let leaks = store.leaks(Some("up.flow")).await.unwrap();
    let ends: Vec<_> = leaks
        .iter()
        .map(|l| (l.since.to_string(), l.ended_on))
        .collect();
    assert_eq!(
        ends,
        [
            ("2025-12-20".to_owned(), None),
            ("2025-12-10".to_owned(), Some("2025-12-20".parse().unwrap()))
        ],
        "the suspicion recorded before ends existed ended when the next began"
    );
    let setup = store.flood_setup().await.unwrap();
    let hazards: Vec<_> = setup
        .areas
        .iter()
        .map(|a| (a.key.as_str(), a.hazard))
        .collect();
    assert_eq!(
        hazards,
        [
            ("up-harbour-area", tidemark_model::warning::Category::Flood),
            ("up-wellfield", tidemark_model::warning::Category::Drought)
        ]
    );
    let level = setup.thresholds.iter().find(|t| t.sensor_key == "up.level");
    assert_eq!(
        level.map(|t| (t.rate_alert, t.falling)),
        Some((Some(0.3), false))
    );
    assert!(setup.hazard_problems().is_empty());
    assert_eq!(setup.rain_rules.len(), 2);
    let rejections = store.recent_rejections(10).await.unwrap();
    assert_eq!(rejections.len(), 3);
    assert_eq!(
        rejections
            .iter()
            .map(|r| r.entries_rejected)
            .collect::<Vec<_>>(),
        [2, 0, 0]
    );
    let forecasts = store
        .latest_forecasts("up.level", None, None)
        .await
        .unwrap();
    assert_eq!(
        forecasts.len(),
        2,
        "the outside source's issue and the nowcast's"
    );
    assert!(forecasts.iter().all(|f| f.values.len() == 4));
    drop(client);
    drop(store);
    database.drop_database().await.unwrap();
}
