//! Utility statistics over HTTP on a real year: West Denmark's hourly load in 2019, replayed through
//! the broker and ingest, against figures computed here from the CSV itself.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDateTime, SecondsFormat, TimeZone, Utc};

const CSV: &str = "tests/fixtures/dk1-load-2019/load_hourly.csv";

fn load(item: &str) -> Vec<(DateTime<Utc>, f64)> {
    std::fs::read_to_string(repo(CSV))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[1] == item).then(|| {
                let ts = NaiveDateTime::parse_from_str(f[0], "%Y-%m-%d %H:%M:%S")
                    .unwrap()
                    .and_utc();
                (ts, f[4].parse().unwrap())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replayed_2019_load_gives_its_peak_mean_and_load_duration_curve() {
    let harness = Harness::start().await;
    let api = Api::start(&harness, &config(&harness)).await;
    let ingest = harness.ingest_ready("utilities", None).await;
    let report = replay_all(
        &harness,
        tidemark_sensors_sim::replay::Format::Dk1Load,
        "dk1-load",
        CSV,
    )
    .await;
    assert_eq!(report.readings, 2 * 8760);
    let rows = load("Load Actual");
    let shift = report.shift;
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let year = Utc.with_ymd_and_hms(2019, 1, 1, 0, 0, 0).unwrap();
    let range = format!(
        "from={}&to={}",
        rfc(year + shift),
        rfc(year + ChronoDuration::days(365) + shift)
    );

    let (status, summary) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/sensors/dk1.load_actual/summary?{range}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["count"], 8760);
    assert_eq!(summary["flagged"], 0);
    assert_eq!(summary["unit"], "kW");
    // The file is in MW; Tidemark keeps power in kW.
    assert_eq!(summary["peak"]["value"], 3_424_000.0);
    let peak_at = rows.iter().find(|(_, v)| *v == 3424.0).unwrap().0 + shift;
    let reported = DateTime::parse_from_rfc3339(summary["peak"]["at"].as_str().unwrap()).unwrap();
    assert_eq!(reported, peak_at);
    assert_eq!((summary["mean"].as_f64().unwrap() / 1000.0).round(), 2327.0);
    assert_eq!(summary["min"], 1_411_000.0);

    let (status, curve) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/sensors/dk1.load_actual/load-duration?{range}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut expected: Vec<f64> = rows.iter().map(|(_, v)| v * 1000.0).collect();
    expected.sort_by(|a, b| b.total_cmp(a));
    let got: Vec<f64> = curve["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got, expected);
    let (status, _, csv) = api
        .text(&format!(
            "/api/v1/utilities/sensors/dk1.load_actual/load-duration?{range}&format=csv"
        ))
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 8761);
    assert_eq!(lines[1], "1,0.00011415525114155251,3424000");

    let (status, problem) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/sensors/nowhere.load/summary?{range}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "{problem}");

    // The forecast's suspect hours (two of 0 MW, one of 4,952 MW in a year whose load never passed
    // 3,424 MW) break a quality rule set by the utility: running analytics flag them, and the
    // statistics leave them out.
    let metrics = std::sync::Arc::new(tidemark_analytics::runner::Metrics::register(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let analytics = tokio::spawn(tidemark_analytics::runner::run(
        config(&harness).analytics_settings(),
        metrics,
        stop.clone(),
    ));
    let utility = api.key(tidemark_store::delivery::Role::Utility, None).await;
    let rule = serde_json::json!({"plausible_low": 500_000.0, "plausible_high": 10_000_000.0,
        "spike_floor": 1_000_000.0});
    let (status, problem) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/quality-rules/dk1.load_forecast",
            Some(&utility),
            Some(serde_json::json!({"plausible_low": 5.0, "plausible_high": 1.0, "spike_floor": 0.0})),
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("plausible_high"))
    );
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/quality-rules/dk1.load_forecast",
            Some(&utility),
            Some(rule),
        )
        .await;
    assert_eq!(status, 204);
    let forecast_summary = format!("/api/v1/utilities/sensors/dk1.load_forecast/summary?{range}");
    let flagged = wait_for(std::time::Duration::from_secs(60), || async {
        let (_, s) = api
            .call(reqwest::Method::GET, &forecast_summary, None, None)
            .await;
        s["flagged"] == 3
    })
    .await;
    assert!(flagged, "the three suspect hours are flagged");
    let (_, summary) = api
        .call(reqwest::Method::GET, &forecast_summary, None, None)
        .await;
    let forecast = load("Load Forecast");
    let suspect = |v: f64| v == 0.0 || v == 4952.0;
    assert_eq!(forecast.iter().filter(|(_, v)| suspect(*v)).count(), 3);
    let kept: Vec<f64> = forecast
        .iter()
        .filter(|(_, v)| !suspect(*v))
        .map(|(_, v)| v * 1000.0)
        .collect();
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    assert_eq!(summary["count"], 8757);
    assert!((summary["mean"].as_f64().unwrap() - mean).abs() < 1e-6);
    assert!(summary["peak"]["value"].as_f64().unwrap() < 4_952_000.0);
    assert!(summary["min"].as_f64().unwrap() > 0.0);
    stop.cancel();
    analytics.await.unwrap().unwrap();
    ingest.stop().await;
    harness.finish().await;
}
