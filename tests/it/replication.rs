//! Reads from a standby: with `database.read_url` naming a streaming standby, the API's open-data
//! reads go there and outlive the primary, while changes need the primary. No `Last-Modified` is
//! given, since the standby may lag the notifications the primary sends.

use crate::support::*;
use chrono::{DurationRound, Utc};
use std::time::Duration;
use tidemark_store::keys::Role;
use tidemark_store::readings::ReadingRow;
use tidemark_testkit::PrivatePostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_data_reads_come_from_the_standby_and_outlive_the_primary() {
    let mut primary = PrivatePostgres::start().await.unwrap();
    let replica = primary.replica().await.unwrap();
    let harness = Harness::start_on(&primary.config()).await;
    let name = harness.database.as_ref().unwrap().name.clone();
    let key = sensor(0, 0);
    let id = sensor_id(&harness, &key).await;
    let start = (Utc::now() - chrono::Duration::days(2))
        .duration_trunc(chrono::Duration::days(1))
        .unwrap();
    let rows: Vec<ReadingRow> = (0..288)
        .map(|i| ReadingRow {
            sensor_id: id,
            ts: start + chrono::Duration::minutes(10 * i),
            value: (i % 17) as f64 / 10.0,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    harness.store.refresh_all_rollups().await.unwrap();
    // The standby has replayed them.
    let standby = replica.config().with_database(&name);
    let replayed = wait_for(Duration::from_secs(30), || async {
        let Ok((client, connection)) =
            tokio_postgres::connect(&standby.url, tokio_postgres::NoTls).await
        else {
            return false;
        };
        tokio::spawn(connection);
        client
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .map(|row| row.get::<_, i64>(0) == 288)
            .unwrap_or(false)
    })
    .await;
    assert!(replayed, "the standby replayed the readings");

    let mut config = config(&harness);
    config.database.read_url = Some(standby.url.clone());
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let path = format!(
        "/api/v1/sensors/{key}/readings?from={}&to={}&bucket=1h&agg=avg,count",
        rfc3339(start),
        rfc3339(start + chrono::Duration::days(2))
    );
    let (status, before) = api.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "{before}");
    // A station made through the API (on the primary) shows in the list (from the standby) once
    // the standby has replayed it.
    let (status, made) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/stations/replicated-gauge",
            Some(&operator),
            Some(serde_json::json!({
                "name": "Replikeret", "kind": "river_gauge", "lon": 9.4, "lat": 54.8
            })),
        )
        .await;
    assert_eq!(status, 204, "{made}");
    let mut stations = serde_json::Value::Null;
    for _ in 0..300 {
        let (status, body) = api
            .call(reqwest::Method::GET, "/api/v1/stations", None, None)
            .await;
        assert_eq!(status, 200, "{body}");
        stations = body;
        if stations["stations"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stations["stations"][0]["key"], "replicated-gauge",
        "{stations}"
    );

    // No Last-Modified, even once the second of the last change has passed and the primary's
    // notifications are followed; an ETag all the same.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let response = api.http.get(api.url(&path)).send().await.unwrap();
    assert!(response.headers().get("etag").is_some());
    assert!(
        response.headers().get("last-modified").is_none(),
        "no Last-Modified from a standby"
    );

    // The primary goes: the same reads give the same answers, from the standby; a change, which
    // needs the primary, fails.
    primary.stop_immediate().await.unwrap();
    let (status, after) = api.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(before, after);
    let (status, again) = api
        .call(reqwest::Method::GET, "/api/v1/stations", None, None)
        .await;
    assert_eq!((status, again), (200, stations));
    let change = api
        .http
        .put(api.url("/api/v1/devices/new-device"))
        .bearer_auth(&operator)
        .header("content-type", "application/json")
        .body(r#"{"name": "new"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(change.status().as_u16(), 503, "a change needs the primary");

    api.shutdown.cancel();
    primary.start_again().await.unwrap();
    harness.finish().await;
    drop(replica);
}
