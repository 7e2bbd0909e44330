//! `tidemark import`: a Danish utility's CSV (semicolons, decimal commas, local time across both
//! changes of the clocks, its own quality codes, bad rows) and a wide Parquet file, through the
//! binary, into a database `tidemark migrate` made; twice, to show nothing is stored twice.

use crate::support::sql_client;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use tidemark_testkit::{test_server, TestDatabase};

fn tidemark(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TIDEMARK_ENV")
        .env_remove("TIDEMARK_CONFIG")
        .env("TIDEMARK__DATABASE__URL", url)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn migrated() -> (TestDatabase, tokio_postgres::Client) {
    let database = TestDatabase::create(&test_server()).await.unwrap();
    let migrated = tidemark(&database.config.url, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let client = sql_client(&database.config.url).await;
    (database, client)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemark-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `(sensor, UTC time, value, quality)` of every stored reading, in order.
async fn readings(client: &tokio_postgres::Client) -> Vec<(String, String, f64, i16)> {
    client
        .query(
            "SELECT s.key, to_char(r.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI\"Z\"'), \
                    r.value, r.quality \
             FROM readings r JOIN sensors s ON s.id = r.sensor_id ORDER BY 1, r.ts",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn import(url: &str, file: &Path, mapping: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import",
        file.to_str().unwrap(),
        "--mapping",
        mapping.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tidemark(url, &args)
}

#[tokio::test]
async fn a_danish_csv_is_imported_once_with_its_bad_rows_kept() {
    let (database, client) = migrated().await;
    let dir = scratch("csv");
    let file = dir.join("vandstand.csv");
    // A byte-order mark as spreadsheet programs write it; the repeated hour of 26 October 2025
    // twice (summer time, then standard time); a time the clocks skipped on 30 March.
    std::fs::write(
        &file,
        "\u{feff}Målepunkt;Tidspunkt;Værdi;Enhed;Kvalitet\n\
         flensburg.sea_level;2025-10-26 01:30;512,5;cm;G\n\
         flensburg.sea_level;2025-10-26 02:30;520;cm;G\n\
         flensburg.sea_level;2025-10-26 02:30;530;cm;T\n\
         flensburg.sea_level;2025-10-26 03:30;540;cm;G\n\
         kiel-holtenau.sea_level;2025-07-01 12:00;1.234,5;mm;G\n\
         ukendt.sensor;2025-07-01 12:00;1;m;G\n\
         flensburg.sea_level;2025-07-01 12:00;abc;cm;G\n\
         flensburg.sea_level;2025-03-30 02:30;500;cm;G\n\
         flensburg.sea_level;2025-07-01 13:00;5000;cm;G\n\
         flensburg.sea_level;2025-07-01 14:00;;cm;G\n\
         flensburg.sea_level;2025-07-01 15:00;500;cm;X\n",
    )
    .unwrap();
    let mapping = dir.join("vandstand.toml");
    std::fs::write(
        &mapping,
        "delimiter = \";\"\ndecimal = \",\"\nthousands = \".\"\n\
         time_zone = \"Europe/Copenhagen\"\n\
         [columns]\ntime = \"Tidspunkt\"\nsensor = \"Målepunkt\"\nvalue = \"Værdi\"\n\
         unit = \"Enhed\"\nquality = \"Kvalitet\"\n\
         [quality]\nG = \"good\"\nT = \"suspect\"\n",
    )
    .unwrap();
    let url = &database.config.url;

    let dry = import(url, &file, &mapping, &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("dry run"),
        "{}",
        text(&dry.stdout)
    );
    assert!(
        readings(&client).await.is_empty(),
        "a dry run writes nothing"
    );

    let expected = vec![
        (
            "flensburg.sea_level".to_owned(),
            "2025-10-25T23:30Z".to_owned(),
            5.125,
            0,
        ),
        (
            "flensburg.sea_level".to_owned(),
            "2025-10-26T00:30Z".to_owned(),
            5.2,
            0,
        ),
        (
            "flensburg.sea_level".to_owned(),
            "2025-10-26T01:30Z".to_owned(),
            5.3,
            1,
        ),
        (
            "flensburg.sea_level".to_owned(),
            "2025-10-26T02:30Z".to_owned(),
            5.4,
            0,
        ),
        (
            "kiel-holtenau.sea_level".to_owned(),
            "2025-07-01T10:00Z".to_owned(),
            1.2345,
            0,
        ),
    ];
    let rejected = "SELECT m.reason_code, m.reason FROM rejected_messages m \
                    WHERE m.topic = 'import/vandstand.csv' ORDER BY m.reason";
    let mut first_rejections = Vec::new();
    for run in 0..2 {
        let output = import(url, &file, &mapping, &[]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let summary = text(&output.stdout);
        let stored = if run == 0 {
            "5 stored, 0 already"
        } else {
            "0 stored, 5 already"
        };
        assert!(
            summary.contains("11 rows, 5 readings")
                && summary.contains(stored)
                && summary.contains("5 refused, 1 empty cells"),
            "{summary}"
        );
        assert!(
            text(&output.stderr).contains("11 rows"),
            "the progress line"
        );
        let stored = readings(&client).await;
        assert_eq!(stored.len(), expected.len(), "{stored:?}");
        for (got, want) in stored.iter().zip(&expected) {
            assert_eq!((&got.0, &got.1, got.3), (&want.0, &want.1, want.3));
            assert!((got.2 - want.2).abs() < 1e-9, "{got:?} {want:?}");
        }
        let rejections: Vec<(String, String)> = client
            .query(rejected, &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if run == 0 {
            first_rejections = rejections;
        } else {
            assert_eq!(
                rejections, first_rejections,
                "kept once however often imported"
            );
        }
    }
    let codes: Vec<&str> = first_rejections.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes.len(), 5, "{first_rejections:?}");
    for (code, says) in [
        ("unknown_sensor", "ukendt.sensor"),
        ("malformed", "\"abc\" is not a number"),
        ("malformed", "does not exist"),
        ("out_of_range", "outside the physical range"),
        ("malformed", "quality \"X\""),
    ] {
        assert!(
            first_rejections.iter().any(|(c, reason)| c == code
                && reason.contains(says)
                && reason.starts_with("row ")),
            "{code} {says}: {first_rejections:?}"
        );
    }
    drop(client);
    database.drop_database().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A wide Parquet file: a UTC timestamp column and one value column per gauge, with gaps.
fn write_wide_parquet(path: &Path) {
    let schema = Arc::new(
        parse_message_type(
            "message gauges {\n required int64 time (TIMESTAMP(MICROS, true));\n \
             optional double flensburg;\n optional double kiel;\n \
             optional binary flag (STRING);\n}",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2025-11-01T00:00:00Z")
        .unwrap()
        .timestamp_micros();
    let times: Vec<i64> = (0..3).map(|i| base + i * 600_000_000).collect();
    let mut group = writer.next_row_group().unwrap();
    let mut index = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        match index {
            0 => {
                column
                    .typed::<Int64Type>()
                    .write_batch(&times, None, None)
                    .unwrap();
            }
            1 => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&[101.0, 102.0, 103.0], Some(&[1, 1, 1]), None)
                    .unwrap();
            }
            2 => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&[0.5, 0.75], Some(&[1, 0, 1]), None)
                    .unwrap();
            }
            _ => {
                let flags = [ByteArray::from("ok"), ByteArray::from("doubtful")];
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&flags, Some(&[1, 0, 1]), None)
                    .unwrap();
            }
        }
        column.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[tokio::test]
async fn a_wide_parquet_file_is_imported_column_by_column() {
    let (database, client) = migrated().await;
    let dir = scratch("parquet");
    let file = dir.join("gauges.parquet");
    write_wide_parquet(&file);
    let mapping = dir.join("gauges.toml");
    std::fs::write(
        &mapping,
        "layout = \"wide\"\n[columns]\ntime = \"time\"\n\
         [[wide]]\ncolumn = \"flensburg\"\nsensor = \"flensburg.sea_level\"\nunit = \"cm\"\n\
         [[wide]]\ncolumn = \"kiel\"\nsensor = \"kiel-holtenau.sea_level\"\nquality = \"flag\"\n\
         [quality]\nok = \"good\"\ndoubtful = \"suspect\"\n",
    )
    .unwrap();
    let output = import(&database.config.url, &file, &mapping, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = text(&output.stdout);
    assert!(
        summary.contains("3 rows, 5 readings (5 stored"),
        "{summary}"
    );
    assert!(summary.contains("0 refused, 1 empty cells"), "{summary}");
    let stored = readings(&client).await;
    let want = [
        ("flensburg.sea_level", "2025-11-01T00:00Z", 1.01, 0),
        ("flensburg.sea_level", "2025-11-01T00:10Z", 1.02, 0),
        ("flensburg.sea_level", "2025-11-01T00:20Z", 1.03, 0),
        ("kiel-holtenau.sea_level", "2025-11-01T00:00Z", 0.5, 0),
        ("kiel-holtenau.sea_level", "2025-11-01T00:20Z", 0.75, 1),
    ];
    assert_eq!(stored.len(), want.len(), "{stored:?}");
    for (got, want) in stored.iter().zip(want) {
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.3),
            (want.0, want.1, want.3)
        );
        assert!((got.2 - want.2).abs() < 1e-9, "{got:?}");
    }
    drop(client);
    database.drop_database().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_mapping_that_does_not_fit_is_named_before_anything_is_written() {
    let (database, client) = migrated().await;
    let dir = scratch("usage");
    let file = dir.join("data.csv");
    std::fs::write(&file, "tid,værdi\n2025-01-01T00:00:00Z,1\n").unwrap();
    let mapping = dir.join("bad.toml");
    std::fs::write(
        &mapping,
        "sensor = \"flensburg.sea_level\"\n[colums]\ntime = \"tid\"\n",
    )
    .unwrap();
    let output = import(&database.config.url, &file, &mapping, &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("colums"),
        "{}",
        text(&output.stderr)
    );

    std::fs::write(
        &mapping,
        "sensor = \"flensburg.sea_level\"\n[columns]\ntime = \"tid\"\nvalue = \"value\"\n",
    )
    .unwrap();
    let output = import(&database.config.url, &file, &mapping, &[]);
    assert_eq!(output.status.code(), Some(1));
    let error = text(&output.stderr);
    assert!(
        error.contains("no column \"value\"") && error.contains("\"værdi\""),
        "{error}"
    );
    assert!(readings(&client).await.is_empty());
    drop(client);
    database.drop_database().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
