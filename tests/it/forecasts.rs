//! Forecasts in: over MQTT from a registered source and over the API with a producer key, each
//! issue stored once, every refusal kept with its reason; and read back by sensor.

use crate::support::*;
use chrono::{Duration as ChronoDuration, SecondsFormat, Utc};
use std::time::Duration;
use tidemark_store::keys::Role;

fn forecast(sensor: &str, issued_at: chrono::DateTime<Utc>, first: f64) -> serde_json::Value {
    let stamp = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    serde_json::json!({
        "sensor": sensor, "issued_at": stamp(issued_at), "unit": "cm",
        "values": (1..=6).map(|h| serde_json::json!({
            "valid_at": stamp(issued_at + ChronoDuration::hours(h)),
            "value": first + 10.0 * h as f64,
            "quantiles": {"0.1": first + 10.0 * h as f64 - 5.0, "0.9": first + 10.0 * h as f64 + 5.0},
        })).collect::<Vec<_>>(),
    })
}

async fn rejection_codes(harness: &Harness) -> Vec<(String, String)> {
    sql(harness)
        .await
        .query(
            "SELECT topic, reason_code FROM rejected_messages ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_arrive_once_over_mqtt_and_the_api_and_refusals_are_kept() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-forecasts-in", None).await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let producer = api.key(Role::Operator, None).await;
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(&producer),
            Some(serde_json::json!({"role": "producer", "source": "dmi", "label": "DMI storm surge"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"], "dmi");
    let dmi = created["key"].as_str().unwrap().to_owned();
    let (status, problem) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(&producer),
            Some(serde_json::json!({"role": "producer"})),
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("source"))
    );

    let sensor = sensor(0, 0);
    let issued = Utc::now() - ChronoDuration::minutes(10);
    let sensor_other = sensor_key_other();
    // Over MQTT, as the registered source "dmi": one good issue (twice: a redelivery), and as an
    // unregistered source, a malformed payload, an unknown sensor and a conflicting re-issue.
    let good = forecast(&sensor, issued, 100.0).to_string().into_bytes();
    publish(
        &harness.broker_config(),
        vec![
            ("tidemark/v1/forecasts/dmi".into(), good.clone()),
            ("tidemark/v1/forecasts/dmi".into(), good.clone()),
            ("tidemark/v1/forecasts/nobody".into(), good.clone()),
            (
                "tidemark/v1/forecasts/dmi".into(),
                b"{\"sensor\": 1}".to_vec(),
            ),
            (
                "tidemark/v1/forecasts/dmi".into(),
                forecast(&sensor_other, issued, 100.0)
                    .to_string()
                    .into_bytes(),
            ),
            (
                "tidemark/v1/forecasts/dmi".into(),
                forecast(&sensor, issued, 300.0).to_string().into_bytes(),
            ),
        ],
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(30), || async {
            rejection_codes(&harness).await.len() == 4
        })
        .await,
        "{:?}",
        rejection_codes(&harness).await
    );
    let codes: Vec<String> = rejection_codes(&harness)
        .await
        .into_iter()
        .map(|(_, code)| code)
        .collect();
    assert_eq!(
        codes,
        ["unknown_source", "malformed", "unknown_sensor", "conflict"]
    );
    assert_eq!(ingest.metrics.forecasts_stored.get(), 1);
    assert_eq!(ingest.metrics.forecasts_duplicate.get(), 1);

    // Read back: in the canonical unit, with quantiles.
    let path = format!("/api/v1/sensors/{sensor}/forecasts");
    let (status, body) = api.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "{body}");
    let issues = body.as_array().unwrap();
    assert_eq!(issues.len(), 1, "{body}");
    assert_eq!(issues[0]["source"], "dmi");
    assert_eq!(issues[0]["unit"], "m");
    assert_eq!(issues[0]["values"].as_array().unwrap().len(), 6);
    assert_eq!(issues[0]["values"][0]["value"], 1.1);
    let high = issues[0]["values"][0]["quantiles"]["0.9"].as_f64().unwrap();
    assert!((high - 1.15).abs() < 1e-9, "{body}");

    // Over the API with the producer key: a later issue is stored, the same again is a
    // duplicate, other values under its key a conflict, a fault a 400 naming its code.
    let later = forecast(&sensor, issued + ChronoDuration::minutes(5), 120.0);
    let post = |body: serde_json::Value, key: String| {
        let api = &api;
        async move {
            api.call(
                reqwest::Method::POST,
                "/api/v1/forecasts",
                Some(&key),
                Some(body),
            )
            .await
        }
    };
    let (status, receipt) = post(later.clone(), dmi.clone()).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (201, Some("stored")),
        "{receipt}"
    );
    let (status, receipt) = post(later.clone(), dmi.clone()).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("duplicate")),
        "{receipt}"
    );
    let mut changed = later.clone();
    changed["values"][0]["value"] = serde_json::json!(999.0);
    let (status, _) = post(changed, dmi.clone()).await;
    assert_eq!(status, 409);
    let mut future = later.clone();
    future["issued_at"] = serde_json::json!(
        (Utc::now() + ChronoDuration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let (status, problem) = post(future, dmi.clone()).await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("future")),
        "{problem}"
    );
    let (status, _) = post(later.clone(), producer.clone()).await;
    assert_eq!(status, 403, "an operator key is not a producer key");
    let (status, body) = api.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body[0]["values"][0]["value"], 1.3,
        "the latest issue: {body}"
    );
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            &format!(
                "{path}?issued_at={}",
                issued
                    .to_rfc3339_opts(SecondsFormat::Secs, true)
                    .replace('+', "%2B")
            ),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body[0]["values"][0]["value"], 1.1,
        "the issue asked for: {body}"
    );
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/sensors/no.such/forecasts",
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Retention takes whole issues older than its cutoff.
    let expired = harness
        .store
        .expire_forecasts(issued + ChronoDuration::minutes(1))
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let (_, body) = api.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["values"][0]["value"], 1.3);
    ingest.stop().await;
    harness.finish().await;
}

/// A sensor key no reference data holds.
fn sensor_key_other() -> String {
    "nowhere.level".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tide_gauge_without_forecasts_gets_tidemarks_nowcast_and_a_possible_warning_from_it() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let put = |path: String, body: serde_json::Value| {
        let (api, operator) = (&api, &operator);
        async move {
            let (status, answer) = api
                .call(reqwest::Method::PUT, &path, Some(operator), Some(body))
                .await;
            assert_eq!(status, 204, "{path}: {answer}");
        }
    };
    let sensor = "testport.sea_level";
    put(
        "/api/v1/stations/testport".into(),
        serde_json::json!({"name": "Testport", "kind": "tide_gauge", "lon": 9.43, "lat": 54.80}),
    )
    .await;
    put(
        "/api/v1/devices/testport-gauge".into(),
        serde_json::json!({"name": ""}),
    )
    .await;
    put(
        format!("/api/v1/sensors/{sensor}"),
        serde_json::json!({"device": "testport-gauge", "station": "testport",
            "quantity": "sea_level", "expected_interval": "10m"}),
    )
    .await;
    put(
        format!("/api/v1/thresholds/{sensor}"),
        serde_json::json!({"alert": 1.0, "warning": 1.5, "severe": 2.0, "persistence": "20m",
            "min_readings": 2, "hysteresis": 0.1, "hold": "1h", "rate_window": "1h",
            "lead_time": "30m", "plausible_low": -3.0, "plausible_high": 4.0, "spike_floor": 0.3}),
    )
    .await;
    put(
        "/api/v1/flood-areas/testport".into(),
        serde_json::json!({"name": "Testport harbour", "sensors": [sensor],
            "polygon": [[9.42, 54.79], [9.44, 54.79], [9.44, 54.81], [9.42, 54.81]],
            "municipalities": ["0580"], "forecast_horizon": "24h"}),
    )
    .await;
    let analytics = start_analytics(&config).await;

    // Five weeks of an M2 tide of 0.6 m, ending at low water, with a surge building to 0.9 m over
    // the last three hours: the water never reaches the 1.00 m Flood Alert threshold, but the
    // tide rising over the surge will, about six hours on.
    let sensor_id = sensor_id(&harness, sensor).await;
    let m2_hours = 360.0 / 28.984_104_2;
    let end = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..35 * 144)
        .rev()
        .map(|i| {
            let before = i as f64 / 6.0;
            let tide = -0.6 * (2.0 * std::f64::consts::PI * before / m2_hours).cos();
            let surge = 0.9 * (1.0 - before / 3.0).max(0.0);
            tidemark_store::readings::ReadingRow {
                sensor_id,
                ts: end - ChronoDuration::minutes(10 * i),
                value: tide + surge,
                quality: 0,
            }
        })
        .collect();
    assert!(rows.iter().all(|r| r.value < 1.0));
    store_readings(&harness, &rows).await;

    let nowcast_warning = || async {
        let events = harness.store.warning_events("testport").await.unwrap();
        let raised = events.into_iter().find(|e| e.kind == "raised")?;
        let history = harness
            .store
            .warning_history(raised.warning_id)
            .await
            .unwrap();
        history.into_iter().find(|e| e.id == raised.id)
    };
    assert!(
        wait_for(Duration::from_secs(60), || async {
            nowcast_warning().await.is_some()
        })
        .await,
        "a warning from the nowcast"
    );
    let event = nowcast_warning().await.unwrap();
    assert_eq!(event.detail["cause"], "forecast", "{}", event.detail);
    assert_eq!(event.detail["source"], "nowcast", "{}", event.detail);
    assert_eq!(event.detail["nowcast"], true, "{}", event.detail);
    assert_eq!(event.severity, tidemark_model::warning::Severity::Alert);
    assert_eq!(event.at, end, "issued from the latest reading");
    let expected_at: chrono::DateTime<Utc> =
        serde_json::from_value(event.detail["expected_at"].clone()).unwrap();
    let hours = (expected_at - end).num_minutes() as f64 / 60.0;
    assert!(
        (3.0..7.0).contains(&hours),
        "crossing expected {hours} h on"
    );
    let (_, _, cap) = api
        .text(&format!("/api/v1/warning-events/{}.cap", event.id))
        .await;
    assert!(cap.contains("<certainty>Possible</certainty>"), "{cap}");
    assert!(cap.contains("<urgency>Expected</urgency>"), "{cap}");
    // The nowcast itself is readable like any forecast, in metres.
    let (_, body) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/sensors/{sensor}/forecasts?source=nowcast"),
            None,
            None,
        )
        .await;
    assert_eq!(body[0]["nowcast"], true, "{body}");
    assert_eq!(body[0]["values"].as_array().unwrap().len(), 48 * 6);
    analytics.stop().await;
    harness.finish().await;
}
