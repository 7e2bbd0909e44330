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
    let (_, _, csv) = api
        .text(&format!(
            "/api/v1/utilities/sensors/dk1.load_actual/summary?{range}&format=csv"
        ))
        .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "sensor,unit,from,to,count,flagged,mean,min,peak_at,peak"
    );
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(fields[4..6], ["8760", "0"]);
    assert_eq!(fields[7], "1411000");
    assert_eq!(fields[8], summary["peak"]["at"].as_str().unwrap());
    assert_eq!(fields[9], "3424000");

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
    let analytics = start_analytics(&config(&harness)).await;
    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
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
    let (_, rules) = api
        .call(reqwest::Method::GET, "/api/v1/quality-rules", None, None)
        .await;
    assert_eq!(rules[0]["sensor"], "dk1.load_forecast", "{rules}");
    assert_eq!(rules[0]["plausible_high"], 10_000_000.0, "{rules}");
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
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// A district meter's flow every 15 minutes through October 2026 (summer time ends on the 25th),
/// in l/s: a daily demand curve over a night minimum near 8 l/s with a little deterministic
/// noise, and `leak` l/s more from `leak.start` until `leak.end`.
pub fn district_flow(
    sensor_id: i32,
    leak: f64,
    leak_during: std::ops::Range<DateTime<Utc>>,
) -> Vec<tidemark_store::readings::ReadingRow> {
    let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    (0..31 * 96)
        .map(|i| {
            let ts = start + ChronoDuration::minutes(15 * i);
            let local = tidemark_model::time::to_local(ts, 1);
            let hour = chrono::Timelike::hour(&local) as f64
                + chrono::Timelike::minute(&local) as f64 / 60.0;
            // Lowest around 03:30, highest in the morning and the evening.
            let demand =
                8.0 + 12.0 * (((hour - 3.5) / 24.0 * std::f64::consts::TAU).cos() * -0.5 + 0.5);
            let noise = ((i * 7919) % 13) as f64 / 13.0 * 0.6;
            let value = demand + noise + if leak_during.contains(&ts) { leak } else { 0.0 };
            tidemark_store::readings::ReadingRow {
                sensor_id,
                ts,
                value,
                quality: 0,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_is_suspected_within_the_rules_nights_and_a_sound_network_raises_nothing() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
    let put = |path: String, body: serde_json::Value| {
        let (api, key) = (&api, utility.clone());
        async move {
            api.call(reqwest::Method::PUT, &path, Some(&key), Some(body))
                .await
        }
    };
    for meter in ["district-leaky", "district-sound"] {
        assert_eq!(
            put(format!("/api/v1/devices/{meter}"), serde_json::json!({}))
                .await
                .0,
            204
        );
        let (status, problem) = put(
            format!("/api/v1/sensors/{meter}.flow"),
            serde_json::json!({"device": meter, "quantity": "water_flow", "expected_interval": "15m"}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
        let (status, problem) = put(
            format!("/api/v1/utilities/leak-rules/{meter}.flow"),
            serde_json::json!({"baseline_nights": 7, "margin": 0.2, "nights": 3}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
    }
    let (status, problem) = put(
        "/api/v1/utilities/leak-rules/district-sound.flow".to_owned(),
        serde_json::json!({"night_start": "04:00", "night_end": "02:00"}),
    )
    .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("night_end"))
    );

    let analytics = start_analytics(&config).await;
    // The leak starts in the evening before the night of 20 October (22:00 UTC is 00:00 local).
    let leak_from = Utc.with_ymd_and_hms(2026, 10, 19, 22, 0, 0).unwrap();
    let never = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
    let leaky = sensor_id(&harness, "district-leaky.flow").await;
    let sound = sensor_id(&harness, "district-sound.flow").await;
    store_readings(&harness, &district_flow(leaky, 4.0, leak_from..never)).await;
    store_readings(&harness, &district_flow(sound, 4.0, never..never)).await;

    let nights_of = |meter: &'static str| {
        let api = &api;
        async move {
            let (_, body) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/utilities/sensors/{meter}.flow/night-flow?from=2026-10-01&to=2026-10-31"),
                    None,
                    None,
                )
                .await;
            body["nights"].as_array().cloned().unwrap_or_default()
        }
    };
    let done = wait_for(std::time::Duration::from_secs(30), || async {
        nights_of("district-leaky").await.len() == 31
            && nights_of("district-sound").await.len() == 31
    })
    .await;
    assert!(done, "every night of October is found for both meters");
    // Eight 15-minute readings in the two-hour window, twelve in the night of 25 October (the
    // repeated hour when summer time ends).
    let nights = nights_of("district-sound").await;
    assert_eq!(nights[24]["night"], "2026-10-25");
    assert_eq!(nights[24]["samples"], 12);
    assert_eq!(nights[23]["samples"], 8);

    // The trend is the least-squares slope of the nights asked for: flat for the sound district,
    // rising across the leaky one's leak, and the same as the test's own fit of the minima.
    let trend_of = |meter: &'static str, from: &'static str, to: &'static str| {
        let api = &api;
        async move {
            let (_, body) = api
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/api/v1/utilities/sensors/{meter}.flow/night-flow?from={from}&to={to}"
                    ),
                    None,
                    None,
                )
                .await;
            let minima: Vec<f64> = body["nights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["min"].as_f64().unwrap())
                .collect();
            let n = minima.len() as f64;
            let x_mean = (n - 1.0) / 2.0;
            let y_mean = minima.iter().sum::<f64>() / n;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for (x, y) in minima.iter().enumerate() {
                sxy += (x as f64 - x_mean) * (y - y_mean);
                sxx += (x as f64 - x_mean).powi(2);
            }
            (body["trend"]["per_night"].as_f64().unwrap(), sxy / sxx)
        }
    };
    let (sound, fitted) = trend_of("district-sound", "2026-10-01", "2026-10-31").await;
    assert!(
        (sound - fitted).abs() < 1e-9 && sound.abs() < 0.05,
        "{sound}"
    );
    let (leaky, fitted) = trend_of("district-leaky", "2026-10-13", "2026-10-26").await;
    assert!((leaky - fitted).abs() < 1e-9 && leaky > 0.2, "{leaky}");

    let (_, leaks) = api
        .call(reqwest::Method::GET, "/api/v1/utilities/leaks", None, None)
        .await;
    let leaks = leaks["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "only the leaky district: {leaks:?}");
    assert_eq!(leaks[0]["sensor"], "district-leaky.flow");
    assert_eq!(leaks[0]["since"], "2026-10-20");
    assert_eq!(
        leaks[0]["raised_on"], "2026-10-22",
        "the third night above the baseline"
    );
    assert!(
        leaks[0]["night_flow"].as_f64().unwrap() > leaks[0]["baseline"].as_f64().unwrap() * 1.2
    );
    assert!(leaks[0]["ended_on"].is_null(), "the leak goes on");
    assert!(leaks[0]["alert"].is_i64(), "and was raised as an alert");
    let (_, _, csv) = api.text("/api/v1/utilities/leaks?format=csv").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "sensor,since,raised_on,baseline,night_flow,found_at,ended_on,alert"
    );
    assert!(lines[1].starts_with("district-leaky.flow,2026-10-20,2026-10-22,"));
    let (_, _, csv) = api
        .text("/api/v1/utilities/sensors/district-sound.flow/night-flow?from=2026-10-01&to=2026-10-31&format=csv")
        .await;
    assert_eq!(csv.lines().count(), 32);
    assert!(csv.lines().nth(25).unwrap().starts_with("2026-10-25,"));
    analytics.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_comes_from_registers_by_danish_day_and_month_and_skips_a_reset() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
    let put = |path: String, body: serde_json::Value| {
        let (api, key) = (&api, utility.clone());
        async move {
            api.call(reqwest::Method::PUT, &path, Some(&key), Some(body))
                .await
        }
    };
    // Two heat meters in Aarhus, one in Copenhagen.
    for (meter, code, lon, lat) in [
        ("heat-a", "0751", 10.20, 56.15),
        ("heat-b", "0751", 10.21, 56.16),
        ("heat-c", "0101", 12.57, 55.68),
    ] {
        assert_eq!(
            put(format!("/api/v1/devices/{meter}"), serde_json::json!({}))
                .await
                .0,
            204
        );
        let (status, problem) = put(
            format!("/api/v1/stations/{meter}"),
            serde_json::json!({"name": meter, "kind": "meter", "lon": lon, "lat": lat, "municipality_code": code}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
        let (status, problem) = put(
            format!("/api/v1/sensors/{meter}.heat"),
            serde_json::json!({"device": meter, "station": meter, "quantity": "heat_energy", "expected_interval": "15m"}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
    }
    // Registers every 15 minutes from 24 to 27 October 2026 (summer time ends on the 25th):
    // heat-a rises 10 kWh an hour, heat-b and heat-c 5, and heat-b's meter is replaced at noon
    // UTC on the 26th (its register starts again from 0).
    let start = Utc.with_ymd_and_hms(2026, 10, 24, 0, 0, 0).unwrap();
    let replaced = (2 * 24 + 12) * 4;
    let mut rows = Vec::new();
    for (meter, per_quarter) in [("heat-a", 2.5), ("heat-b", 1.25), ("heat-c", 1.25)] {
        let id = sensor_id(&harness, &format!("{meter}.heat")).await;
        for i in 0..3 * 96 {
            let value = if meter == "heat-b" && i >= replaced {
                per_quarter * (i - replaced) as f64
            } else {
                1000.0 + per_quarter * i as f64
            };
            rows.push(tidemark_store::readings::ReadingRow {
                sensor_id: id,
                ts: start + ChronoDuration::minutes(15 * i),
                value,
                quality: 0,
            });
        }
    }
    store_readings(&harness, &rows).await;

    // From Danish midnight on the 25th (22:00 UTC) to Danish midnight on the 27th (23:00 UTC).
    let range = "from=2026-10-24T22:00:00Z&to=2026-10-26T23:00:00Z";
    let ask = |query: String| {
        let api = &api;
        async move {
            let (status, body) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/utilities/consumption?{query}"),
                    None,
                    None,
                )
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            body["periods"].as_array().cloned().unwrap()
        }
    };
    let days = ask(format!(
        "{range}&municipality=0751&quantity=heat_energy&period=day"
    ))
    .await;
    let days: Vec<(String, f64, i64, i64)> = days
        .iter()
        .map(|d| {
            (
                d["start"].as_str().unwrap().to_owned(),
                d["kwh"].as_f64().unwrap(),
                d["meters"].as_i64().unwrap(),
                d["resets"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            // 25 hours in the day summer time ends: 250 + 125.
            ("2026-10-24T22:00:00Z".to_owned(), 375.0, 2, 0),
            // heat-b's register fell: left out, and counted as a reset.
            ("2026-10-25T23:00:00Z".to_owned(), 240.0, 1, 1),
        ]
    );
    let hours = ask(format!("{range}&sensor=heat-a.heat&period=hour")).await;
    assert_eq!(hours.len(), 49);
    assert!(hours.iter().all(|h| h["kwh"] == 10.0));
    let month = ask(format!(
        "{range}&municipality=0751&quantity=heat_energy&period=month"
    ))
    .await;
    assert_eq!(month.len(), 1);
    assert_eq!(
        month[0]["start"], "2026-09-30T22:00:00Z",
        "October in Danish time"
    );
    assert_eq!(month[0]["kwh"], 490.0);
    let copenhagen = ask(format!("{range}&municipality=0101&quantity=heat_energy")).await;
    assert_eq!(copenhagen[0]["kwh"], 125.0);
    // By area: a box around Aarhus finds its two meters, one around Copenhagen the third, and
    // a box with a municipality outside it nothing.
    let aarhus_box = "bbox=10.1,56.1,10.3,56.2";
    let month = ask(format!(
        "{range}&{aarhus_box}&quantity=heat_energy&period=month"
    ))
    .await;
    assert_eq!(
        (month.len(), &month[0]["kwh"]),
        (1, &serde_json::json!(490.0))
    );
    let copenhagen = ask(format!(
        "{range}&bbox=12.4,55.6,12.7,55.8&quantity=heat_energy"
    ))
    .await;
    assert_eq!(copenhagen[0]["kwh"], 125.0);
    let neither = ask(format!(
        "{range}&{aarhus_box}&municipality=0101&quantity=heat_energy"
    ))
    .await;
    assert!(neither.is_empty(), "{neither:?}");
    let (status, problem) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/consumption?{range}&bbox=10.3,56.1,10.1,56.2&quantity=heat_energy"),
            None,
            None,
        )
        .await;
    assert_eq!((status, problem["parameter"].as_str()), (400, Some("bbox")));

    let (status, problem) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/consumption?{range}&municipality=0751&quantity=power"),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("quantity"))
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_consumption_is_production_less_export_over_production() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
    let put = |path: String, body: serde_json::Value| {
        let (api, key) = (&api, utility.clone());
        async move {
            api.call(reqwest::Method::PUT, &path, Some(&key), Some(body))
                .await
        }
    };
    assert_eq!(
        put("/api/v1/devices/pv-site".to_owned(), serde_json::json!({}))
            .await
            .0,
        204
    );
    for sensor in ["pv-site.generation", "pv-site.export"] {
        let (status, problem) = put(
            format!("/api/v1/sensors/{sensor}"),
            serde_json::json!({"device": "pv-site", "quantity": "energy_export", "expected_interval": "1h"}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
    }
    // Hourly registers from 31 May 2026: 3 kWh produced and 1 kWh exported in each hour from 08:00
    // to 16:00 Danish summer time (06:00 to 14:00 UTC).
    let start = Utc.with_ymd_and_hms(2026, 5, 31, 0, 0, 0).unwrap();
    let (generation, export) = (
        sensor_id(&harness, "pv-site.generation").await,
        sensor_id(&harness, "pv-site.export").await,
    );
    let mut rows = Vec::new();
    let (mut produced, mut exported) = (0.0, 0.0);
    for i in 0..4 * 24 {
        let ts = start + ChronoDuration::hours(i);
        // A register read at ts holds the hour that ended then.
        let hour_ended = (chrono::Timelike::hour(&ts) + 23) % 24;
        if (6..14).contains(&hour_ended) {
            produced += 3.0;
            exported += 1.0;
        }
        for (sensor_id, value) in [(generation, produced), (export, exported)] {
            rows.push(tidemark_store::readings::ReadingRow {
                sensor_id,
                ts,
                value,
                quality: 0,
            });
        }
    }
    store_readings(&harness, &rows).await;
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/utilities/self-consumption?production=pv-site.generation&export=pv-site.export\
             &from=2026-05-31T22:00:00Z&to=2026-06-02T22:00:00Z&period=day",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let days = body["periods"].as_array().unwrap();
    assert_eq!(days.len(), 2);
    for day in days {
        assert_eq!(day["produced_kwh"], 24.0);
        assert_eq!(day["exported_kwh"], 8.0);
        assert_eq!(day["self_consumed_kwh"], 16.0);
        assert!((day["share"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }
    assert_eq!(
        days[0]["start"], "2026-05-31T22:00:00Z",
        "1 June in Danish time"
    );
    let (_, _, csv) = api
        .text(
            "/api/v1/utilities/self-consumption?production=pv-site.generation&export=pv-site.export\
             &from=2026-05-31T22:00:00Z&to=2026-06-02T22:00:00Z&period=day&format=csv",
        )
        .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(
        lines[0],
        "start,produced_kwh,exported_kwh,self_consumed_kwh,share"
    );
    assert!(
        lines[1].starts_with("2026-05-31T22:00:00Z,24,8,16,0.666"),
        "{csv}"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_odense_leak_is_suspected_and_the_sound_district_raises_nothing_in_a_month() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let ingest = harness.ingest_ready("water", None).await;
    // The city scenario: a leak of 2.5 l/s starts in Bolbro 50 hours in; Vollsmose has none.
    simulate_all(&harness, "city", "30d").await;
    let client = sql(&harness).await;
    let first: DateTime<Utc> = client
        .query_one(
            "SELECT min(r.ts) FROM readings r JOIN sensors s ON s.id = r.sensor_id \
             WHERE s.key = 'odense-bolbro.water_flow'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The meter reads every 15 minutes from one interval after the start.
    let leak_start = first - ChronoDuration::minutes(15) + ChronoDuration::hours(50);

    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
    let analytics = start_analytics(&config).await;
    for district in ["odense-bolbro", "odense-vollsmose"] {
        let (status, problem) = api
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/utilities/leak-rules/{district}.water_flow"),
                Some(&utility),
                Some(serde_json::json!({"baseline_nights": 2, "margin": 0.2, "nights": 3})),
            )
            .await;
        assert_eq!(status, 204, "{problem}");
    }
    let nights = |district: &'static str| {
        let api = &api;
        async move {
            let (_, body) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/utilities/sensors/{district}.water_flow/night-flow"),
                    None,
                    None,
                )
                .await;
            body["nights"].as_array().map_or(0, Vec::len)
        }
    };
    let found = wait_for(std::time::Duration::from_secs(60), || async {
        nights("odense-bolbro").await >= 29 && nights("odense-vollsmose").await >= 29
    })
    .await;
    assert!(found, "a month of nights is found for both districts");

    // The first night whose window (02:00 to 04:00 Danish time) holds no reading from before the
    // leak is its first night above the baseline (a night's flow is its window's minimum); the
    // rule's third such night raises the suspicion. The leak starts on a reading's time, so a
    // window starting less than one interval before it already holds only leaking readings:
    // what counts is where the window's first reading falls, not the window's start.
    let interval = ChronoDuration::minutes(15);
    let mut night = tidemark_model::time::to_local(leak_start, 1).date();
    while tidemark_model::time::from_local(night.and_hms_opt(2, 0, 0).unwrap(), 1)
        <= leak_start - interval
    {
        night = night.succ_opt().unwrap();
    }
    let (_, leaks) = api
        .call(reqwest::Method::GET, "/api/v1/utilities/leaks", None, None)
        .await;
    let leaks = leaks["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "Bolbro only: {leaks:?}");
    assert_eq!(leaks[0]["sensor"], "odense-bolbro.water_flow");
    assert_eq!(leaks[0]["since"], night.to_string());
    let third = night + ChronoDuration::days(2);
    assert_eq!(leaks[0]["raised_on"], third.to_string());
    // Raised as a utility alert for Odense, still in force: the simulated leak is never mended.
    let (_, alerts) = api
        .call(reqwest::Method::GET, "/api/v1/utilities/alerts", None, None)
        .await;
    let alerts = alerts["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["id"], leaks[0]["alert"]);
    assert_eq!(alerts[0]["meter"]["key"], "odense-bolbro.water_flow");
    assert_eq!(alerts[0]["municipalities"], serde_json::json!(["0461"]));
    assert_eq!(alerts[0]["state"], "in_force");
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}
