//! The open data endpoints over real HTTP against the real database: stations in every format,
//! latest values, raw readings paged by time and by arrival, and aggregation checked against the
//! readings themselves.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use std::collections::BTreeMap;
use std::time::Duration;
use tidemark_store::opendata::PackedDay;
use tidemark_store::readings::ReadingRow;

pub(crate) const SENSOR: &str = "flensburg.sea_level";
/// Readings every 10 minutes for two days.
pub(crate) const READINGS: i64 = 288;
/// The one reading flagged as a spike.
pub(crate) const SPIKE_INDEX: i64 = 100;

pub(crate) fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 10, 19, 0, 0, 0).unwrap()
}

pub(crate) fn value_at(i: i64) -> f64 {
    if i == SPIKE_INDEX {
        16.71
    } else {
        ((i * 37) % 200) as f64 / 100.0
    }
}

/// The API with the reference stations and two days of Flensburg readings (one a flagged spike).
pub(crate) async fn loaded() -> (Harness, Api) {
    let harness = Harness::start().await;
    let config = with_stations(&harness).await;
    let api = Api::start(&harness, &config).await;
    let id = sensor_id(&harness, SENSOR).await;
    let rows: Vec<ReadingRow> = (0..READINGS)
        .map(|i| ReadingRow {
            sensor_id: id,
            ts: start() + ChronoDuration::minutes(10 * i),
            value: value_at(i),
            quality: if i == SPIKE_INDEX { 256 } else { 0 },
        })
        .collect();
    store_readings(&harness, &rows).await;
    (harness, api)
}

/// A GET, whose JSON or GeoJSON answer is checked against the API's document.
async fn get(api: &Api, path: &str) -> (u16, String, String, reqwest::header::HeaderMap) {
    let response = api.http.get(api.url(path)).send().await.unwrap();
    checked_with_headers("GET", path, response).await
}

async fn json(api: &Api, path: &str) -> serde_json::Value {
    let (status, _, body, _) = get(api, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// CSV as rows of fields (the test data has no quoted fields).
fn csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_are_found_by_box_and_distance_in_json_geojson_and_csv() {
    let (harness, api) = loaded().await;
    let all = json(&api, "/api/v1/stations").await;
    let keys: Vec<&str> = all["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["flensburg", "kappeln", "kiel-holtenau"]);
    assert_eq!(all["stations"][0]["sensors"][0]["key"], SENSOR);
    assert_eq!(all["stations"][0]["sensors"][0]["unit"], "m");

    let boxed = json(&api, "/api/v1/stations?bbox=9.3,54.7,9.5,54.9").await;
    assert_eq!(boxed["stations"].as_array().unwrap().len(), 1);
    assert_eq!(boxed["stations"][0]["key"], "flensburg");

    // Nearest first from Kiel, with the distance (Kiel-Holtenau to Kappeln is about 35 km).
    let near = json(&api, "/api/v1/stations?near=10.204,54.383&radius_km=60").await;
    let near: Vec<(String, f64)> = near["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["distance_km"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(near[0].0, "kiel-holtenau");
    assert!(near[0].1 < 0.01);
    assert_eq!(near[1].0, "kappeln");
    assert!((30.0..40.0).contains(&near[1].1), "{near:?}");
    assert_eq!(near.len(), 2, "Flensburg is farther than 60 km: {near:?}");

    let (status, content_type, body, _) = get(&api, "/api/v1/stations?format=geojson").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/geo+json")
    );
    let geo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(geo["type"], "FeatureCollection");
    let flensburg = &geo["features"][0];
    assert_eq!(
        flensburg["geometry"]["coordinates"],
        serde_json::json!([9.434, 54.796])
    );
    assert_eq!(flensburg["properties"]["name"], "Flensburg");
    let accepted = api
        .http
        .get(api.url("/api/v1/stations"))
        .header("accept", "application/geo+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        accepted.headers()["content-type"].to_str().unwrap(),
        "application/geo+json",
        "the Accept header chooses the format too"
    );

    let (_, content_type, body, _) = get(&api, "/api/v1/stations?format=csv").await;
    assert!(content_type.starts_with("text/csv"));
    let rows = csv(&body);
    assert_eq!(rows[0][..5], ["key", "name", "kind", "lon", "lat"]);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1][3].parse::<f64>().unwrap(), 9.434);

    let detail = json(&api, "/api/v1/stations/flensburg").await;
    let latest = &detail["sensors"][0]["latest"];
    assert_eq!(latest["value"], value_at(READINGS - 1));
    assert_eq!(latest["stale"], true, "the test data is from 2023");
    let thresholds = detail["thresholds"].as_array().unwrap();
    assert_eq!(
        thresholds[0]["alert"], 1.0,
        "from config/flood/baltic-2023.toml"
    );
    let (status, _, _, _) = get(&api, "/api/v1/stations/atlantis").await;
    assert_eq!(status, 404);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_values_of_every_sensor() {
    let (harness, api) = loaded().await;
    let latest = json(&api, "/api/v1/latest?quantity=sea_level").await;
    let sensors = latest["sensors"].as_array().unwrap();
    assert_eq!(sensors.len(), 3);
    let flensburg = sensors.iter().find(|s| s["key"] == SENSOR).unwrap();
    assert_eq!(flensburg["latest"]["value"], value_at(READINGS - 1));
    assert_eq!(flensburg["station"], "flensburg");
    let kiel = sensors
        .iter()
        .find(|s| s["key"] == "kiel-holtenau.sea_level")
        .unwrap();
    assert!(kiel["latest"].is_null(), "no readings yet");
    let (_, _, body, _) = get(&api, "/api/v1/latest?format=csv").await;
    let rows = csv(&body);
    let row = rows.iter().find(|r| r[0] == SENSOR).unwrap();
    assert_eq!(row[5].parse::<f64>().unwrap(), value_at(READINGS - 1));
    assert!(
        json(&api, "/api/v1/latest?quantity=rainfall").await["sensors"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The unfiltered answer is kept ready between batches, and a new batch refreshes it.
    let flensburg_latest = |body: serde_json::Value| {
        body["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == SENSOR)
            .unwrap()["latest"]["value"]
            .as_f64()
    };
    assert_eq!(
        flensburg_latest(json(&api, "/api/v1/latest").await),
        Some(value_at(READINGS - 1))
    );
    let id = sensor_id(&harness, SENSOR).await;
    let newer = ReadingRow {
        sensor_id: id,
        ts: start() + ChronoDuration::days(3),
        value: 0.77,
        quality: 0,
    };
    store_readings(&harness, &[newer]).await;
    let refreshed = wait_for(std::time::Duration::from_secs(10), || async {
        flensburg_latest(json(&api, "/api/v1/latest").await) == Some(0.77)
    })
    .await;
    assert!(refreshed, "the new reading shows within a few seconds");
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pages_return_every_reading_once_in_json_and_csv() {
    let (harness, api) = loaded().await;
    let range = "from=2023-10-19T00:00:00Z&to=2023-10-21T00:00:00Z";
    let mut path = format!("/api/v1/sensors/{SENSOR}/readings?{range}&limit=100");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, _, body, headers) = get(&api, &path).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["unit"], "m");
        for r in page["readings"].as_array().unwrap() {
            seen.push((
                r["ts"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            ));
        }
        pages += 1;
        match page["next"].as_str() {
            Some(next) => {
                let link = headers["link"].to_str().unwrap();
                assert!(
                    link.contains(next) && link.ends_with("rel=\"next\""),
                    "{link}"
                );
                path = format!("/api/v1/sensors/{SENSOR}/readings?{range}&limit=100&cursor={next}");
            }
            None => {
                assert!(headers.get("link").is_none());
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<(String, f64)> = (0..READINGS)
        .map(|i| {
            (
                (start() + ChronoDuration::minutes(10 * i))
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                value_at(i),
            )
        })
        .collect();
    assert_eq!(seen, expected, "every reading exactly once, in order");

    let (_, content_type, body, _) = get(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{range}&limit=100000&format=csv"),
    )
    .await;
    assert!(content_type.starts_with("text/csv"));
    let rows = csv(&body);
    assert_eq!(rows[0], ["ts", "value", "quality", "received_at"]);
    let parsed: Vec<(String, f64)> = rows[1..]
        .iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(parsed, expected);
    assert_eq!(
        rows[1 + SPIKE_INDEX as usize][2],
        "256",
        "quality flags carried through"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_using_since_gets_a_back_filled_reading() {
    let (harness, api) = loaded().await;
    let before = "2000-01-01T00:00:00Z";
    let first = json(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?since={before}&limit=100000"),
    )
    .await;
    assert_eq!(
        first["readings"].as_array().unwrap().len(),
        READINGS as usize
    );
    assert!(first["next"].is_null());
    let last_page = json(
        &api,
        &format!(
            "/api/v1/sensors/{SENSOR}/readings?since={before}&limit={}",
            READINGS - 1
        ),
    )
    .await;
    let cursor = last_page["next"].as_str().unwrap().to_owned();

    // A reading from before the range the poller has seen arrives late.
    let id = sensor_id(&harness, SENSOR).await;
    let old = start() - ChronoDuration::days(3);
    harness
        .store
        .write_batch(
            &[ReadingRow {
                sensor_id: id,
                ts: old,
                value: 0.42,
                quality: 0,
            }],
            &[],
            Utc::now(),
        )
        .await
        .unwrap();
    let next = json(
        &api,
        &format!(
            "/api/v1/sensors/{SENSOR}/readings?since={before}&limit={}&cursor={cursor}",
            READINGS - 1
        ),
    )
    .await;
    let values: Vec<f64> = next["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(
        values,
        [value_at(READINGS - 1), 0.42],
        "the rest of the first delivery, then the back-fill"
    );
    // A from/to query of the range the poller already read would have missed it.
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_equals_the_readings_and_fills_gaps_as_asked() {
    let (harness, api) = loaded().await;
    let range = "from=2023-10-19T00:00:00Z&to=2023-10-21T00:00:00Z";
    let body = json(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{range}&bucket=1h&agg=avg,min,max,sum,count,first,last"),
    )
    .await;
    // The expectation, computed here from the values written: usable readings only.
    let mut hours: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for i in (0..READINGS).filter(|i| *i != SPIKE_INDEX) {
        hours.entry(i / 6).or_default().push(value_at(i));
    }
    // The sensor's quantity and unit come with the buckets, as they do with raw readings.
    let raw = json(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{range}&limit=1"),
    )
    .await;
    assert!(raw["quantity"].as_str().is_some_and(|q| !q.is_empty()));
    assert_eq!(body["quantity"], raw["quantity"]);
    assert_eq!(body["unit"], "m");
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 48);
    for (hour, values) in &hours {
        let b = &buckets[*hour as usize];
        let sum: f64 = values.iter().sum();
        assert_eq!(b["count"], values.len());
        assert!((b["sum"].as_f64().unwrap() - sum).abs() < 1e-9);
        assert!((b["avg"].as_f64().unwrap() - sum / values.len() as f64).abs() < 1e-9);
        assert_eq!(
            b["min"].as_f64().unwrap(),
            values.iter().cloned().fold(f64::MAX, f64::min)
        );
        assert_eq!(
            b["max"].as_f64().unwrap(),
            values.iter().cloned().fold(f64::MIN, f64::max)
        );
        assert_eq!(b["first"].as_f64().unwrap(), values[0]);
        assert_eq!(b["last"].as_f64().unwrap(), *values.last().unwrap());
    }
    // And the same from SQL of its own, written independently of the store's query.
    let client = sql(&harness).await;
    let rows = client
        .query(
            "SELECT extract(epoch FROM date_trunc('hour', r.ts))::bigint, avg(r.value), min(r.value), \
             max(r.value), count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id \
             WHERE s.key = $1 AND r.quality IN (0, 1) GROUP BY 1 ORDER BY 1",
            &[&SENSOR],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 48);
    for (row, bucket) in rows.iter().zip(buckets) {
        let start = DateTime::parse_from_rfc3339(bucket["start"].as_str().unwrap()).unwrap();
        assert_eq!(row.get::<_, i64>(0), start.timestamp());
        assert!((row.get::<_, f64>(1) - bucket["avg"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(row.get::<_, f64>(2), bucket["min"].as_f64().unwrap());
        assert_eq!(row.get::<_, f64>(3), bucket["max"].as_f64().unwrap());
        assert_eq!(row.get::<_, i64>(4), bucket["count"].as_i64().unwrap());
    }
    let spike_hour = &buckets[(SPIKE_INDEX / 6) as usize];
    assert_eq!(spike_hour["flagged"], 1, "the spike is counted as left out");
    assert!(
        spike_hour["max"].as_f64().unwrap() < 16.0,
        "and not averaged in"
    );
    let everything = json(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{range}&bucket=1h&agg=max&quality=all"),
    )
    .await;
    assert_eq!(
        everything["buckets"][(SPIKE_INDEX / 6) as usize]["max"],
        16.71
    );

    // Days in UTC, and a range that reaches past the data: empty days omitted, nulled, or
    // interpolated.
    let days = "from=2023-10-18T00:00:00Z&to=2023-10-22T00:00:00Z&bucket=1d&agg=avg,count";
    let omitted = json(&api, &format!("/api/v1/sensors/{SENSOR}/readings?{days}")).await;
    assert_eq!(omitted["buckets"].as_array().unwrap().len(), 2);
    let nulled = json(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{days}&fill=null"),
    )
    .await;
    let nulled = nulled["buckets"].as_array().unwrap();
    assert_eq!(nulled.len(), 4);
    assert!(nulled[0]["avg"].is_null());
    assert_eq!(nulled[0]["count"], 0);
    assert_eq!(nulled[0]["state"], "empty");

    let (_, _, body, _) = get(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?{range}&bucket=1d&agg=count,max&format=csv"),
    )
    .await;
    let rows = csv(&body);
    assert_eq!(
        rows[0],
        ["start", "count", "max", "flagged", "quality", "state"]
    );
    assert_eq!(rows[1][1], "143");
    assert_eq!(rows[2][1], "144");
    harness.finish().await;
}

/// A bucketed answer asked for again is copied, a day of hourly buckets at a time, from what was
/// written for it before (`api.bucket_cache_bytes`), yet shows every change since: a back-filled
/// reading, a rollup refresh, a quality flag set by analytics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_answer_asked_again_shows_every_change_since() {
    let (harness, api) = loaded().await;
    let path = format!(
        "/api/v1/sensors/{SENSOR}/readings?from=2023-10-18T00:00:00Z&to=2023-10-22T00:00:00Z\
         &bucket=1h&agg=avg,max,count&fill=null"
    );
    let hour = |body: &serde_json::Value, h: usize| body["buckets"][24 + h].clone();
    let first = json(&api, &path).await;
    let (found_before, _, _) = api.state.written.figures();
    assert_eq!(json(&api, &path).await, first, "the same answer again");
    let (found, _, kept) = api.state.written.figures();
    assert_eq!(found - found_before, 4, "its four days found written");
    assert!(kept > 0);

    // A reading back-filled into the first day's hour 5, the day's new maximum.
    let id = sensor_id(&harness, SENSOR).await;
    let late = ReadingRow {
        sensor_id: id,
        ts: start() + ChronoDuration::minutes(5 * 60 + 4),
        value: 42.5,
        quality: 0,
    };
    store_readings(&harness, std::slice::from_ref(&late)).await;
    let after = json(&api, &path).await;
    assert_eq!(hour(&after, 5)["max"], 42.5);
    assert_eq!(
        hour(&after, 5)["count"],
        hour(&first, 5)["count"].as_i64().unwrap() + 1
    );
    // Every other hour as before.
    for h in (0..96).filter(|h| *h != 24 + 5) {
        assert_eq!(after["buckets"][h], first["buckets"][h], "bucket {h}");
    }
    // The same once the rollups are refreshed (the rollups add in another order, so an average
    // may differ in its last digit), and then the same again from what was written for it.
    harness.store.refresh_all_rollups().await.unwrap();
    let refreshed = json(&api, &path).await;
    let (found_before, _, _) = api.state.written.figures();
    assert_eq!(json(&api, &path).await, refreshed);
    assert_eq!(api.state.written.figures().0 - found_before, 4);
    assert_eq!(hour(&refreshed, 5)["max"], 42.5);
    for h in 0..96 {
        let (now, then) = (&refreshed["buckets"][h], &after["buckets"][h]);
        assert_eq!(now["count"], then["count"], "bucket {h}");
        assert_eq!(now["max"], then["max"], "bucket {h}");
        let avg = |b: &serde_json::Value| b["avg"].as_f64().unwrap_or(0.0);
        assert!((avg(now) - avg(then)).abs() < 1e-9, "bucket {h}");
    }

    // Analytics flags it: the hour is as it was, with one reading left out.
    let flagged = harness
        .store
        .set_quality(SENSOR, &[(late.ts, 256)])
        .await
        .unwrap();
    assert_eq!(flagged, 1);
    let now = json(&api, &path).await;
    assert_eq!(hour(&now, 5)["max"], hour(&first, 5)["max"]);
    assert_eq!(hour(&now, 5)["flagged"], 1);
    harness.finish().await;
}

/// A packed day whose JSON the API holds is found by the digest of its hours, before they are
/// read, and its hours are not read; a day packed again from other hours has another digest and
/// is written afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_day_held_is_not_read_again_until_its_hours_change() {
    let (harness, api) = loaded().await;
    harness.store.refresh_all_rollups().await.unwrap();
    let (from, to) = (
        Utc.with_ymd_and_hms(2023, 10, 18, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2023, 10, 21, 12, 0, 0).unwrap(),
    );
    let (day1, day2) = (start(), start() + ChronoDuration::days(1));
    let hour = Duration::from_secs(3_600);
    // The store shows the caller the packed days (the two days with readings), and leaves out
    // the buckets of those it holds.
    let read_holding = |holds: fn(&[PackedDay], DateTime<Utc>) -> Vec<bool>| {
        let store = harness.store.clone();
        async move {
            store
                .sensor_aggregate_holding(
                    SENSOR,
                    from,
                    to,
                    hour,
                    false,
                    Some(|days: &[PackedDay]| holds(days, day2)),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let whole = read_holding(|days, _| vec![false; days.len()]).await;
    let days: Vec<_> = whole.packed.iter().map(|(d, _)| d.day).collect();
    assert_eq!(days, [day1, day2]);
    assert_eq!(whole.rows.len(), 48);
    let second_held = read_holding(|days, day2| days.iter().map(|d| d.day == day2).collect()).await;
    assert_eq!(second_held.rows, whole.rows[..24]);
    assert_eq!(second_held.packed[1], (whole.packed[1].0.clone(), true));
    let both_held = read_holding(|days, _| vec![true; days.len()]).await;
    assert!(both_held.rows.is_empty(), "{:?}", both_held.rows);
    // Without a caller that holds anything, the hours come with the digests.
    let (_, read) = harness
        .store
        .sensor_aggregate(SENSOR, from, to, hour, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, whole.rows);

    for fill in ["omit", "null"] {
        let path = format!(
            "/api/v1/sensors/{SENSOR}/readings?from=2023-10-18T12:00:00Z&to=2023-10-21T12:00:00Z\
             &bucket=1h&fill={fill}"
        );
        let first = json(&api, &path).await;
        let (found_before, _, _) = api.state.written.figures();
        assert_eq!(
            json(&api, &path).await,
            first,
            "{fill}: the same answer again"
        );
        let (found, _, _) = api.state.written.figures();
        assert!(found - found_before >= 2, "{fill}: both packed days held");
    }

    // A reading back-filled into the first day, and the day packed again: its hours, and so
    // their digest, changed.
    let path = format!(
        "/api/v1/sensors/{SENSOR}/readings?from=2023-10-18T12:00:00Z&to=2023-10-21T12:00:00Z\
         &bucket=1h&agg=max,count"
    );
    let before = json(&api, &path).await;
    let late = ReadingRow {
        sensor_id: sensor_id(&harness, SENSOR).await,
        ts: start() + ChronoDuration::minutes(5 * 60 + 4),
        value: 42.5,
        quality: 0,
    };
    store_readings(&harness, std::slice::from_ref(&late)).await;
    harness.store.refresh_all_rollups().await.unwrap();
    let after = json(&api, &path).await;
    let at_five = |body: &serde_json::Value| {
        body["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["start"] == "2023-10-19T05:00:00Z")
            .cloned()
            .unwrap()
    };
    assert_eq!(at_five(&after)["max"], 42.5);
    assert_eq!(
        at_five(&after)["count"],
        at_five(&before)["count"].as_i64().unwrap() + 1
    );
    assert_eq!(
        after["buckets"].as_array().unwrap().len(),
        before["buckets"].as_array().unwrap().len()
    );
    harness.finish().await;
}

/// Aggregated reads take turns (`api.bucket_reads` at once, twice the cores unless set): while
/// every turn is taken, a bucketed read waits, and the latest values and raw readings do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_reads_wait_their_turn_and_nothing_else_waits_with_them() {
    let (harness, api) = loaded().await;
    let turns = api.state.settings.bucket_reads;
    assert_eq!(
        turns,
        2 * std::thread::available_parallelism().unwrap().get()
    );
    let range = "from=2023-10-19T00:00:00Z&to=2023-10-21T00:00:00Z";
    let bucketed = format!("/api/v1/sensors/{SENSOR}/readings?{range}&bucket=1h&agg=avg");
    let taken = api
        .state
        .bucket_reads
        .acquire_many(turns as u32)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (http, url) = (api.http.clone(), api.url(&bucketed));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    });
    for path in [
        "/api/v1/latest".to_owned(),
        format!("/api/v1/sensors/{SENSOR}/readings?{range}&limit=10"),
    ] {
        let (status, _, body, _) = get(&api, &path).await;
        assert_eq!(status, 200, "{path} while every turn is taken: {body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a bucketed read was answered while every turn was taken"
    );
    drop(taken);
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(api.state.bucket_reads.available_permits(), turns);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_problem_naming_the_parameter() {
    let (harness, api) = loaded().await;
    let readings = format!("/api/v1/sensors/{SENSOR}/readings");
    for (query, parameter) in [
        ("from=2023-10-21T00:00:00Z&to=2023-10-19T00:00:00Z", "from"),
        ("from=yesterday", "from"),
        ("bucket=10s", "bucket"),
        ("bucket=fortnight", "bucket"),
        (
            "bucket=1m&from=2000-01-01T00:00:00Z&to=2023-01-01T00:00:00Z",
            "bucket",
        ),
        ("bucket=1h&agg=median", "agg"),
        ("bucket=1h&fill=guess", "fill"),
        ("agg=avg", "agg"),
        ("limit=0", "limit"),
        ("limit=1000000", "limit"),
        ("cursor=bm9wZQ", "cursor"),
        (
            "since=2023-10-19T00:00:00Z&from=2023-10-19T00:00:00Z",
            "since",
        ),
        ("format=xml", "format"),
        ("colour=blue", "query"),
        ("limit=1%27%3B%20DROP%20TABLE%20readings%3B--", "query"),
    ] {
        let (status, content_type, body, _) = get(&api, &format!("{readings}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(content_type, "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["parameter"], parameter, "{query}: {problem}");
        assert!(problem["detail"].as_str().unwrap().len() > 10);
    }
    for query in [
        "bbox=1,2,3",
        "bbox=10,60,9,50",
        "near=9.4",
        "radius_km=5",
        "limit=0",
    ] {
        let (status, _, body, _) = get(&api, &format!("/api/v1/stations?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let (status, _, _, _) = get(&api, "/api/v1/sensors/no.such_sensor/readings").await;
    assert_eq!(status, 404);
    // Buckets look the sensor up with the read: hourly over whole days, and other widths.
    for bucket in ["1h", "15m"] {
        let path = format!(
            "/api/v1/sensors/no.such_sensor/readings\
             ?from=2023-10-19T00:00:00Z&to=2023-10-21T00:00:00Z&bucket={bucket}"
        );
        let (status, _, body, _) = get(&api, &path).await;
        assert_eq!(status, 404, "{bucket}: {body}");
    }
    let (status, _, _, _) = get(&api, "/api/v1/sensors/..%2F..%2Fetc%2Fpasswd/readings").await;
    assert_eq!(status, 404);
    assert_eq!(
        harness.count().await,
        READINGS as u64,
        "nothing was changed"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn municipalities_with_boundaries_stations_and_warnings_in_force() {
    let (harness, api) = loaded().await;
    let mut reference = tidemark_store::reference::ReferenceData::default();
    reference
        .stations
        .push(tidemark_model::reference::StationRecord {
            key: "aarhus-aa-city".into(),
            name: "Aarhus Å, Mindet".into(),
            kind: "river_gauge".into(),
            lon: 10.2108,
            lat: 56.1530,
            municipality_code: Some("0751".into()),
        });
    harness.store.apply_reference(&reference).await.unwrap();

    let list = json(&api, "/api/v1/municipalities").await;
    let list = list["municipalities"].as_array().unwrap();
    assert!(list.len() >= 98, "{}", list.len());
    assert!(list
        .iter()
        .any(|m| m["code"] == "0751" && m["name"] == "Aarhus"));
    let (_, _, body, _) = get(&api, "/api/v1/municipalities?format=geojson").await;
    let geo: serde_json::Value = serde_json::from_str(&body).unwrap();
    let aarhus = geo["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "0751")
        .unwrap();
    assert!(
        ["Polygon", "MultiPolygon"].contains(&aarhus["geometry"]["type"].as_str().unwrap()),
        "a boundary"
    );
    let (_, _, body, _) = get(&api, "/api/v1/municipalities?format=csv").await;
    assert!(csv(&body).contains(&vec!["0751".to_owned(), "Aarhus".to_owned()]));

    let aarhus = json(&api, "/api/v1/municipalities/0751").await;
    assert_eq!(aarhus["name"], "Aarhus");
    assert_eq!(aarhus["stations"][0]["key"], "aarhus-aa-city");
    assert!(aarhus["warnings"].as_array().unwrap().is_empty());
    assert!(aarhus["boundary"]["coordinates"].is_array());

    // A warning in force for Aabenraa (the Flensburg area's municipality) shows there.
    let event = tidemark_store::flood::NewEvent {
        kind: tidemark_model::warning::EventKind::Raised,
        severity: Some(tidemark_model::warning::Severity::Warning),
        warning_kind: tidemark_model::warning::WarningKind::Observed,
        at: Utc::now(),
        message_en: "Flood Warning.".into(),
        message_da: "Oversvømmelsesvarsel.".into(),
        trigger: serde_json::json!({}),
    };
    harness
        .store
        .record_area_events("flensburg-fjord", &["0580".to_owned()], &[event], &[], &[])
        .await
        .unwrap();
    let aabenraa = json(&api, "/api/v1/municipalities/0580").await;
    let warnings = aabenraa["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0]["severity_name"], "Flood Warning");
    let (status, content_type, _, _) =
        get(&api, "/api/v1/municipalities/0580?format=geojson").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/geo+json")
    );
    let (status, _, _, _) = get(&api, "/api/v1/municipalities/9999").await;
    assert_eq!(status, 404);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_answers_are_not_sent_again_and_browsers_may_read_them() {
    let (harness, api) = loaded().await;
    let path = "/api/v1/stations/flensburg";
    let (status, _, _, headers) = get(&api, path).await;
    assert_eq!(status, 200);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let again = api
        .http
        .get(api.url(path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert!(again.text().await.unwrap().is_empty());

    // A new reading changes the station's answer, and with it the ETag.
    let id = sensor_id(&harness, SENSOR).await;
    let row = ReadingRow {
        sensor_id: id,
        ts: start() + ChronoDuration::days(5),
        value: 1.23,
        quality: 0,
    };
    store_readings(&harness, &[row]).await;
    let changed = api
        .http
        .get(api.url(path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    let gzipped = api
        .http
        .get(api.url("/api/v1/municipalities?format=geojson"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");

    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, api.url("/api/v1/warnings/1/ack"))
        .header("origin", "https://kommune.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let simple = api
        .http
        .get(api.url("/api/v1/latest"))
        .header("origin", "https://research.example")
        .send()
        .await
        .unwrap();
    assert_eq!(simple.headers()["access-control-allow-origin"], "*");
    harness.finish().await;
}

/// A GET with `If-Modified-Since` (and `If-None-Match`, when given): status, `Last-Modified`, body.
async fn conditional(
    api: &Api,
    path: &str,
    since: &str,
    etag: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut request = api
        .http
        .get(api.url(path))
        .header("if-modified-since", since);
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let modified = response
        .headers()
        .get("last-modified")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, modified, response.text().await.unwrap())
}

/// Waits until `path` answers with a `Last-Modified` (the listener is up and the second of the
/// last change has passed), and returns it.
async fn last_modified_of(api: &Api, path: &str) -> String {
    for _ in 0..50 {
        let (status, _, _, headers) = get(api, path).await;
        assert_eq!(status, 200, "{path}");
        if let Some(value) = headers.get("last-modified") {
            return value.to_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} never carried Last-Modified");
}

/// Polls `path` with `If-Modified-Since: since` until it answers 200, and returns that answer.
async fn modified_since(api: &Api, path: &str, since: &str) -> (Option<String>, String) {
    for _ in 0..50 {
        let (status, modified, body) = conditional(api, path, since, None).await;
        if status == 200 {
            return (modified, body);
        }
        assert_eq!(status, 304, "{path}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} still unmodified since {since}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_moves_with_the_data_an_answer_depends_on() {
    let (harness, api) = loaded().await;
    let areas = "/api/v1/flood-areas";
    let readings = format!(
        "/api/v1/sensors/{SENSOR}/readings?from=2023-10-19T00:00:00Z&to=2023-10-30T00:00:00Z"
    );
    let areas_lm = last_modified_of(&api, areas).await;
    let readings_lm = last_modified_of(&api, &readings).await;

    // Unchanged: 304 with the ETag a 200 would carry, and no body; an older date gets the answer.
    let response = api
        .http
        .get(api.url(areas))
        .header("if-modified-since", &areas_lm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 304);
    assert!(response.headers().contains_key("etag"));
    assert_eq!(response.headers()["last-modified"], areas_lm.as_str());
    assert!(response.text().await.unwrap().is_empty());
    let (status, _, body) = conditional(&api, areas, "Mon, 01 Jan 2024 00:00:00 GMT", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("flensburg-fjord"));
    // If-None-Match decides when both are sent.
    let (status, _, _) = conditional(&api, areas, &areas_lm, Some("\"other\"")).await;
    assert_eq!(status, 200);
    let (status, _, _) = conditional(&api, &readings, &readings_lm, None).await;
    assert_eq!(status, 304, "streamed raw readings too");
    // Answers that also move with the clock carry none: which sensors are stale (stations), and
    // a range that ends now.
    for path in [
        "/api/v1/stations".to_owned(),
        format!("/api/v1/sensors/{SENSOR}/readings"),
    ] {
        let (status, modified, _) = conditional(&api, &path, &areas_lm, None).await;
        assert_eq!((status, modified), (200, None), "{path}");
    }

    // A new reading: the readings have changed, the flood areas have not.
    let id = sensor_id(&harness, SENSOR).await;
    let row = ReadingRow {
        sensor_id: id,
        ts: start() + ChronoDuration::days(5),
        value: 1.23,
        quality: 0,
    };
    store_readings(&harness, &[row]).await;
    let (_, body) = modified_since(&api, &readings, &readings_lm).await;
    assert!(
        body.contains("1.23"),
        "the changed answer holds the new reading"
    );
    // Its Last-Modified is given once the second of the change has passed.
    let newer = last_modified_of(&api, &readings).await;
    let parse = |s: &str| DateTime::parse_from_rfc2822(s).unwrap();
    assert!(parse(&newer) > parse(&readings_lm));
    let (status, _, _) = conditional(&api, areas, &areas_lm, None).await;
    assert_eq!(status, 304, "readings do not change the flood areas");

    // A quality flag set by analytics changes the readings too.
    let flagged_lm = last_modified_of(&api, &readings).await;
    let flagged = harness
        .store
        .set_quality(SENSOR, &[(start() + ChronoDuration::days(5), 256)])
        .await
        .unwrap();
    assert_eq!(flagged, 1);
    modified_since(&api, &readings, &flagged_lm).await;

    // A flood area defined over the API changes the list of flood areas.
    let operator = api.key(tidemark_store::keys::Role::Operator, None).await;
    let area = serde_json::json!({"name": "Mølleparken", "municipalities": ["0751"],
        "polygon": [[10.19, 56.15], [10.21, 56.15], [10.21, 56.16], [10.19, 56.16]]});
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/flood-areas/aarhus-moelleparken",
            Some(&operator),
            Some(area),
        )
        .await;
    assert_eq!(status, 204);
    let (_, body) = modified_since(&api, areas, &areas_lm).await;
    assert!(body.contains("aarhus-moelleparken"));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_a_client_gets_429_with_retry_after_and_a_key_gets_more() {
    let harness = Harness::start().await;
    let mut config = config(&harness);
    config.api.rate_limit_per_minute = 5;
    config.api.keyed_rate_limit_per_minute = 100;
    let api = Api::start(&harness, &config).await;
    for remaining in (0..5).rev() {
        let (status, _, _, headers) = get(&api, "/api/v1/latest").await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-limit"], "5");
        assert_eq!(
            headers["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let (status, content_type, body, headers) = get(&api, "/api/v1/latest").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(content_type, "application/problem+json");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // An invented key counts as no key; a real one has its own, larger allowance.
    let invented = api
        .http
        .get(api.url("/api/v1/latest"))
        .bearer_auth("tmk_0123456789ab_invented")
        .send()
        .await
        .unwrap();
    assert_eq!(invented.status().as_u16(), 429);
    let key = api.key(tidemark_store::keys::Role::Researcher, None).await;
    let keyed = api
        .http
        .get(api.url("/api/v1/latest"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status().as_u16(), 200);
    assert_eq!(keyed.headers()["ratelimit-limit"], "100");
    // The same key as the password of Basic credentials counts as the key.
    let basic = api
        .http
        .get(api.url("/api/v1/latest"))
        .basic_auth("researcher", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 200);
    assert_eq!(basic.headers()["ratelimit-limit"], "100");
    harness.finish().await;
}

/// Invented keys cost the database nothing past the address's lookup allowance: the token is taken
/// before the key is looked up. Behind a trusted proxy each forwarded client has its own bucket;
/// a client that is not a trusted proxy cannot choose its bucket by forging the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_taken_before_any_key_lookup_and_only_trusted_proxies_forward() {
    let harness = Harness::start().await;
    let mut settings = config(&harness);
    settings.api.rate_limit_per_minute = 3;
    settings.api.keyed_rate_limit_per_minute = 5;
    let api = Api::start(&harness, &settings).await;
    let mut statuses = Vec::new();
    for n in 0..20 {
        let response = api
            .http
            .get(api.url("/api/v1/latest"))
            .bearer_auth(format!("tmk_0123456789ab_invented{n}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(api.state.limiter.lookups(), 5, "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Forged forwarding from a client that is not a trusted proxy: one bucket all the same.
    let forwarded = |from: &'static str| {
        api.http
            .get(api.url("/api/v1/stations"))
            .header("x-forwarded-for", from)
            .send()
    };
    let mut forged = Vec::new();
    for from in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        forged.push(forwarded(from).await.unwrap().status().as_u16());
    }
    assert_eq!(forged.last(), Some(&429), "{forged:?}");
    harness.finish().await;

    let harness = Harness::start().await;
    let mut settings = config(&harness);
    settings.api.rate_limit_per_minute = 3;
    settings.api.trusted_proxies = vec!["127.0.0.1".into()];
    let api = Api::start(&harness, &settings).await;
    for from in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "2001:db8:5:6::1",
    ] {
        for _ in 0..3 {
            let response = api
                .http
                .get(api.url("/api/v1/stations"))
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{from}");
        }
    }
    // The same IPv6 /64 is one client.
    let same_net = api
        .http
        .get(api.url("/api/v1/stations"))
        .header("x-forwarded-for", "2001:db8:5:6:ffff::9")
        .send()
        .await
        .unwrap();
    assert_eq!(same_net.status().as_u16(), 429);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_the_docs_page_needs_no_other_host() {
    let harness = Harness::start().await;
    let api = Api::start(&harness, &config(&harness)).await;
    let (status, content_type, body, _) = get(&api, "/api/v1/openapi.json").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let file = std::env::temp_dir().join(format!("tidemark-openapi-{}.json", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    // openapi-spec-validator (PyPI) is installed by scripts/test.sh.
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the document is not valid OpenAPI 3.1 (or openapi-spec-validator is missing; scripts/test.sh installs it):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let (status, content_type, page, _) = get(&api, "/api/v1/docs").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(page.contains("openapi.json"));
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the page loads nothing from another host"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_readings_export_as_parquet_with_the_same_values() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let (harness, api) = loaded().await;
    let range = "from=2023-10-19T00:00:00Z&to=2023-10-21T00:00:00Z&limit=100000";
    let response = api
        .http
        .get(api.url(&format!(
            "/api/v1/sensors/{SENSOR}/readings?{range}&format=parquet"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("flensburg.sea_level.parquet"));
    let bytes = bytes::Bytes::from(response.bytes().await.unwrap().to_vec());
    let reader = SerializedFileReader::new(bytes).expect("a Parquet file");
    let metadata = reader.metadata().file_metadata();
    assert_eq!(metadata.num_rows(), READINGS);
    let pairs: Vec<(String, String)> = metadata
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    assert!(pairs.contains(&("unit".to_owned(), "m".to_owned())));
    assert!(pairs.contains(&("sensor".to_owned(), SENSOR.to_owned())));
    let rows: Vec<(i64, f64, i32)> = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            (
                row.get_timestamp_micros(0).unwrap(),
                row.get_double(1).unwrap(),
                // INT32 annotated INTEGER(16, signed): the reader gives an i16.
                i32::from(row.get_short(2).unwrap()),
            )
        })
        .collect();
    let expected: Vec<(i64, f64, i32)> = (0..READINGS)
        .map(|i| {
            (
                (start() + ChronoDuration::minutes(10 * i)).timestamp_micros(),
                value_at(i),
                if i == SPIKE_INDEX { 256 } else { 0 },
            )
        })
        .collect();
    assert_eq!(rows, expected);

    let accepted = api
        .http
        .get(api.url(&format!("/api/v1/sensors/{SENSOR}/readings?{range}")))
        .header("accept", "application/vnd.apache.parquet")
        .send()
        .await
        .unwrap();
    assert_eq!(
        accepted.headers()["content-type"],
        "application/vnd.apache.parquet"
    );

    // Aggregates too, with the values of the JSON answer, nulls where a bucket has none.
    let hours =
        "from=2023-10-18T22:00:00Z&to=2023-10-21T00:00:00Z&bucket=1h&agg=avg,count,max&fill=null";
    let response = api
        .http
        .get(api.url(&format!(
            "/api/v1/sensors/{SENSOR}/readings?{hours}&format=parquet"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("flensburg.sea_level-1h.parquet"));
    let bytes = bytes::Bytes::from(response.bytes().await.unwrap().to_vec());
    let reader = SerializedFileReader::new(bytes).expect("a Parquet file");
    // start, avg, count, max, flagged, state
    type Row = (i64, Option<f64>, Option<i64>, Option<f64>, i64, String);
    let table: Vec<Row> = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            (
                row.get_timestamp_micros(0).unwrap(),
                row.get_double(1).ok(),
                row.get_long(2).ok(),
                row.get_double(3).ok(),
                row.get_long(4).unwrap(),
                row.get_string(6).unwrap().clone(),
            )
        })
        .collect();
    let json_answer = json(&api, &format!("/api/v1/sensors/{SENSOR}/readings?{hours}")).await;
    let buckets = json_answer["buckets"].as_array().unwrap();
    assert_eq!(table.len(), 50, "two empty hours before the data, then 48");
    assert_eq!(table.len(), buckets.len());
    for (row, bucket) in table.iter().zip(buckets) {
        let start = DateTime::parse_from_rfc3339(bucket["start"].as_str().unwrap()).unwrap();
        assert_eq!(row.0, start.timestamp_micros());
        assert_eq!(row.1, bucket["avg"].as_f64());
        assert_eq!(row.2, bucket["count"].as_i64());
        assert_eq!(row.3, bucket["max"].as_f64());
        assert_eq!(row.4, bucket["flagged"].as_i64().unwrap());
        assert_eq!(row.5, bucket["state"].as_str().unwrap());
    }
    assert_eq!(table[0].1, None, "an empty hour has no average");
    assert_eq!(table[0].5, "empty");

    // More rows than one row group holds: a year and a half of 10-minute data.
    let kiel = sensor_id(&harness, "kiel-holtenau.sea_level").await;
    let many: Vec<ReadingRow> = (0..80_000)
        .map(|i| ReadingRow {
            sensor_id: kiel,
            ts: start() + ChronoDuration::minutes(10 * i),
            value: i as f64,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &many).await;
    let big = api
        .http
        .get(api.url("/api/v1/sensors/kiel-holtenau.sea_level/readings?from=2023-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&limit=100000&format=parquet"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader = SerializedFileReader::new(bytes::Bytes::from(big.to_vec())).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 80_000);
    assert_eq!(reader.metadata().num_row_groups(), 2);
    let last = reader.get_row_iter(None).unwrap().last().unwrap().unwrap();
    assert_eq!(last.get_double(1).unwrap(), 79_999.0);
    harness.finish().await;
}
