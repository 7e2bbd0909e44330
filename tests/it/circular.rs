//! The circular data bank over HTTP against the real database: material-flow records validated
//! field by field, refused when they overlap, and turned into the recycling rate and flows the
//! records imply; researchers read, utilities and operators post.

use crate::support::*;
use reqwest::Method;
use serde_json::json;
use tidemark_store::keys::Role;

fn record(code: &str, tonnes: f64, treatment: &str, facility: &str) -> serde_json::Value {
    json!({
        "period_from": "2025-01-01", "period_to": "2025-03-31", "municipality": "0751",
        "waste_code": code, "tonnes": tonnes, "treatment": treatment, "facility": facility,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_flows_are_validated_stored_once_and_give_the_recycling_rate() {
    let harness = Harness::start().await;
    let api = Api::start(&harness, &config(&harness)).await;
    let utility = api.key(Role::Utility, None).await;
    let researcher = api.key(Role::Researcher, None).await;
    let path = "/api/v1/circular/material-flows";
    let post = |key: Option<String>, body: serde_json::Value| {
        let api = &api;
        async move {
            api.call(Method::POST, path, key.as_deref(), Some(body))
                .await
        }
    };

    // Each kind of bad record gets a 400 naming the record and its field.
    let good = record("20 01 01", 40.0, "recycling", "Paper mill");
    let with = |field: &str, value: serde_json::Value| {
        let mut r = good.clone();
        r[field] = value;
        json!({ "records": [good.clone(), r] })
    };
    for (body, parameter) in [
        (
            with("waste_code", json!("20 01 03")),
            "records[1].waste_code",
        ),
        (with("waste_code", json!("paper")), "records[1].waste_code"),
        (with("tonnes", json!(-1.0)), "records[1].tonnes"),
        (with("tonnes", json!(1e12)), "records[1].tonnes"),
        (
            with("treatment", json!("incineration")),
            "records[1].treatment",
        ),
        (
            with("period_from", json!("2025-13-01")),
            "records[1].period_from",
        ),
        (
            with("period_to", json!("2024-12-31")),
            "records[1].period_to",
        ),
        (with("facility", json!(" ")), "records[1].facility"),
        (
            with("municipality", json!("9999")),
            "records[1].municipality",
        ),
        (
            json!({ "records": [good.clone(), good.clone()] }),
            "records[1].period_from",
        ),
        (json!({ "records": [] }), "records"),
        (json!({ "records": [good.clone()], "note": 1 }), "body"),
    ] {
        let (status, problem) = post(Some(utility.clone()), body.clone()).await;
        assert_eq!(
            (status, problem["parameter"].as_str()),
            (400, Some(parameter)),
            "{body}: {problem}"
        );
    }
    let (_, listed) = api.call(Method::GET, path, None, None).await;
    assert_eq!(
        listed["records"],
        json!([]),
        "a refused post stores nothing"
    );

    // Researchers read but do not post; without a key nobody posts.
    let set = json!({ "records": [
        record("20 01 01", 40.0, "recycling", "Paper mill"),
        record("20 03 01", 50.0, "other_recovery", "Energy plant"),
        record("20 01 38", 5.0, "preparing_for_reuse", "Reuse centre"),
        record("20 03 01", 5.0, "landfill", "Landfill"),
    ]});
    let (status, _) = post(Some(researcher.clone()), set.clone()).await;
    assert_eq!(status, 403);
    let (status, _) = post(None, set.clone()).await;
    assert_eq!(status, 401);
    let (status, body) = post(Some(utility.clone()), set.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 4);

    // The same period again overlaps what is stored: refused, once counted.
    let (status, problem) = post(Some(utility.clone()), json!({ "records": [
        json!({ "period_from": "2025-03-01", "period_to": "2025-05-31", "municipality": "0751",
                "waste_code": "200101", "tonnes": 12.0, "treatment": "recycling", "facility": "Paper mill" }),
    ]}))
    .await;
    assert_eq!(status, 409, "{problem}");
    // The next quarter is fine.
    let (status, _) = post(Some(utility.clone()), json!({ "records": [
        json!({ "period_from": "2025-04-01", "period_to": "2025-06-30", "municipality": "0751",
                "waste_code": "200101", "tonnes": 10.0, "treatment": "recycling", "facility": "Paper mill" }),
    ]}))
    .await;
    assert_eq!(status, 201);

    // Aarhus's population, given by an operator, makes per-capita figures.
    let operator = api.key(Role::Operator, None).await;
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/municipalities/0751/population",
            Some(&operator),
            Some(json!({"population": 1000})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/municipalities/9999/population",
            Some(&operator),
            Some(json!({"population": 1000})),
        )
        .await;
    assert_eq!(status, 404);

    // (40 + 5) / 100 in the first quarter; with the second, (40 + 5 + 10) / 110.
    let (status, stats) = api
        .call(
            Method::GET,
            "/api/v1/circular/statistics?municipality=0751&period=quarter",
            Some(&researcher),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let quarters = stats["statistics"].as_array().unwrap();
    assert_eq!(quarters.len(), 2);
    assert_eq!(quarters[0]["period"], "2025-Q1");
    assert_eq!(quarters[0]["generated_tonnes"], 100.0);
    assert!((quarters[0]["recycling_rate"].as_f64().unwrap() - 0.45).abs() < 1e-12);
    assert_eq!(quarters[0]["treatment_tonnes"]["landfill"], 5.0);
    assert_eq!(quarters[0]["population"], 1000);
    assert_eq!(
        quarters[0]["kg_per_capita"], 100.0,
        "100 tonnes for 1,000 inhabitants"
    );
    assert_eq!(quarters[1]["recycling_rate"], 1.0);
    assert_eq!(
        quarters[0]["recycling_rate_change"],
        serde_json::Value::Null
    );
    assert!(
        (quarters[1]["recycling_rate_change"].as_f64().unwrap() - 0.55).abs() < 1e-12,
        "the trend"
    );
    let mixed = quarters[0]["fractions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["waste_code"] == "20 03 01")
        .unwrap();
    assert_eq!(mixed["waste_name"], "mixed municipal waste");
    assert_eq!(mixed["recycling_rate"], 0.0);
    let (_, year) = api
        .call(
            Method::GET,
            "/api/v1/circular/statistics?municipality=0751",
            None,
            None,
        )
        .await;
    let year = &year["statistics"][0];
    assert_eq!(year["period"], "2025");
    assert!((year["recycling_rate"].as_f64().unwrap() - 55.0 / 110.0).abs() < 1e-12);
    // As a table: each quarter's row for the municipality, then one per fraction.
    let (status, content_type, csv) = api
        .text("/api/v1/circular/statistics?municipality=0751&period=quarter&format=csv")
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/csv; charset=utf-8")
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "period,municipality,waste_code,waste_name,generated_tonnes,preparing_for_reuse,recycling,\
         other_recovery,landfill,recycling_rate,recycling_rate_change,population,kg_per_capita"
    );
    assert_eq!(lines[1], "2025-Q1,0751,,,100,5,40,50,5,0.45,,1000,100");
    assert!(
        lines.contains(&"2025-Q1,0751,20 03 01,mixed municipal waste,55,0,0,50,5,0,,,"),
        "{csv}"
    );
    let second = lines
        .iter()
        .position(|l| l.starts_with("2025-Q2,0751,,"))
        .unwrap();
    assert!(
        lines[second].contains(",1,0.55"),
        "the trend: {}",
        lines[second]
    );

    // Flows for a Sankey diagram add up to what was posted.
    let (_, flows) = api
        .call(
            Method::GET,
            "/api/v1/circular/flows?to=2025-03-31",
            None,
            None,
        )
        .await;
    let links = flows["links"].as_array().unwrap();
    let out_of_municipality: f64 = links
        .iter()
        .filter(|l| l["source"] == "municipality:0751")
        .map(|l| l["tonnes"].as_f64().unwrap())
        .sum();
    assert_eq!(out_of_municipality, 100.0);
    assert!(links.iter().any(|l| l["source"] == "waste:20 03 01"
        && l["target"] == "treatment:landfill"
        && l["tonnes"] == 5.0));
    let (_, _, csv) = api
        .text("/api/v1/circular/flows?to=2025-03-31&format=csv")
        .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "source,target,tonnes");
    assert_eq!(lines.len(), links.len() + 1);
    assert!(
        lines.contains(&"waste:20 03 01,treatment:landfill,5"),
        "{csv}"
    );

    // The records themselves, in JSON and CSV, and who posted them in the audit log.
    let (_, listed) = api.call(Method::GET, path, None, None).await;
    assert_eq!(listed["records"].as_array().unwrap().len(), 5);
    let (status, _, csv) = api
        .text(&format!("{path}?format=csv&waste_code=20%2001%2001"))
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].contains(",20 01 01,40,recycling,Paper mill,"));
    let (_, audit) = api
        .call(Method::GET, "/api/v1/audit", Some(&operator), None)
        .await;
    assert!(audit.to_string().contains("material_flows.post"));
    let (status, problem) = api
        .call(
            Method::GET,
            &format!("{path}?from=2025-05-01&to=2025-01-01"),
            None,
            None,
        )
        .await;
    assert_eq!((status, problem["parameter"].as_str()), (400, Some("to")));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replayed_edinburgh_collections_are_found_counted_and_weighed() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let ingest = harness.ingest_ready("circular", None).await;
    let analytics = start_analytics(&config).await;
    let csv_path = "tests/fixtures/edinburgh-bins-2016/collections.csv";
    let report = replay_all(
        &harness,
        tidemark_sensors_sim::replay::Format::EdinburghBins,
        "edinburgh-bins",
        csv_path,
    )
    .await;
    assert_eq!(report.readings, 3 * 10_000);

    // What the CSV itself says: collections per site, the mean fill level before collection, and
    // the weight collected.
    let mut reader = csv::Reader::from_path(repo(csv_path)).unwrap();
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h.starts_with(name)).unwrap();
    let (site, fill, weight) = (
        column("Site"),
        column("Fill level before"),
        column("Weight (kg)"),
    );
    let mut per_site: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut fill_sum, mut weight_sum, mut events) = (0.0, 0.0, 0usize);
    for record in reader.records() {
        let f = record.unwrap();
        *per_site
            .entry(format!("bin-{}", f[site].trim()))
            .or_default() += 1;
        fill_sum += f[fill].parse::<f64>().unwrap();
        weight_sum += f[weight].parse::<f64>().unwrap();
        events += 1;
    }
    assert_eq!((events, per_site.len()), (10_000, 334));

    // The sites as containers of the registry, weighed at every lift.
    let utility = api.key(Role::Utility, None).await;
    for key in per_site.keys() {
        let (status, problem) = api
            .call(
                Method::PUT,
                &format!("/api/v1/circular/containers/{key}"),
                Some(&utility),
                Some(json!({"name": key, "lon": -3.19, "lat": 55.95, "capacity_litres": 1100.0,
                    "waste_code": "20 03 01", "fraction": "mixed",
                    "fill_sensor": format!("{key}.fill_level"), "weight_sensor": format!("{key}.weight")})),
            )
            .await;
        assert_eq!(status, 204, "{key}: {problem}");
    }
    let (status, problem) = api
        .call(
            Method::PUT,
            "/api/v1/circular/containers/bin-x",
            Some(&utility),
            Some(json!({"name": "x", "lon": -3.19, "lat": 55.95, "capacity_litres": 1100.0,
                "waste_code": "20 03 01", "fraction": "mixed", "fill_sensor": "nowhere.fill_level"})),
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("fill_sensor"))
    );

    let all_found = wait_for(std::time::Duration::from_secs(120), || async {
        let (_, body) = api
            .call(Method::GET, "/api/v1/circular/collections", None, None)
            .await;
        body["collections"].as_array().map_or(0, Vec::len) == 10_000
    })
    .await;
    assert!(all_found, "every collection of the export is found");
    let (_, body) = api
        .call(Method::GET, "/api/v1/circular/collections", None, None)
        .await;
    let summary = body["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 334);
    let mut fill_total = 0.0;
    let mut mass_total = 0.0;
    for s in summary {
        let key = s["container"].as_str().unwrap();
        assert_eq!(
            s["collections"].as_u64().unwrap() as usize,
            per_site[key],
            "{key}"
        );
        fill_total +=
            s["mean_fill_at_collection"].as_f64().unwrap() * s["collections"].as_f64().unwrap();
        mass_total += s["mass_kg"].as_f64().unwrap();
    }
    assert!((fill_total / 10_000.0 - fill_sum / 10_000.0).abs() < 1e-9);
    assert_eq!(((fill_total / 10_000.0) * 10.0).round() / 10.0, 76.9);
    assert!(
        (mass_total - weight_sum).abs() < 1e-6,
        "{mass_total} != {weight_sum}"
    );
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_container_gets_its_rate_and_time_to_full_and_a_full_one_an_overflow() {
    use chrono::{Duration as ChronoDuration, SubsecRound, Utc};
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let put = |path: String, body: serde_json::Value| {
        let (api, key) = (&api, operator.clone());
        async move { api.call(Method::PUT, &path, Some(&key), Some(body)).await }
    };
    for bin in ["bin-a", "bin-b"] {
        assert_eq!(
            put(format!("/api/v1/devices/{bin}"), json!({})).await.0,
            204
        );
        let (status, problem) = put(
            format!("/api/v1/sensors/{bin}.fill_level"),
            json!({"device": bin, "quantity": "fill_level", "expected_interval": "1h"}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
        let (status, problem) = put(
            format!("/api/v1/circular/containers/{bin}"),
            json!({"name": bin, "lon": 10.2, "lat": 56.15, "capacity_litres": 660.0,
                "waste_code": "20 01 01", "fraction": "paper", "municipality": "0751",
                "fill_sensor": format!("{bin}.fill_level")}),
        )
        .await;
        assert_eq!(status, 204, "{problem}");
    }
    let analytics = start_analytics(&config).await;

    // bin-a: 40 % rising 2 points an hour for nine hours; bin-b: full for the last four hours.
    let now = Utc::now().trunc_subsecs(0);
    let (a, b) = (
        sensor_id(&harness, "bin-a.fill_level").await,
        sensor_id(&harness, "bin-b.fill_level").await,
    );
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..10)
        .flat_map(|i| {
            let ts = now - ChronoDuration::hours(9 - i);
            [
                tidemark_store::readings::ReadingRow {
                    sensor_id: a,
                    ts,
                    value: 40.0 + 2.0 * i as f64,
                    quality: 0,
                },
                tidemark_store::readings::ReadingRow {
                    sensor_id: b,
                    ts,
                    value: if i >= 5 { 100.0 } else { 60.0 + 5.0 * i as f64 },
                    quality: 0,
                },
            ]
        })
        .collect();
    let fill_level_reaches = |level: f64| {
        let api = &api;
        wait_for(std::time::Duration::from_secs(30), move || async move {
            let (_, body) = api
                .call(Method::GET, "/api/v1/circular/containers", None, None)
                .await;
            body["containers"][0]["fill_level"] == level
        })
    };
    // The first six hours, which the runner may find in its start-up sweep; the rest once it has
    // seen them, so that only a notification of new readings can bring those to the container.
    store_readings(&harness, &rows[..12]).await;
    assert!(
        fill_level_reaches(50.0).await,
        "analytics found the first readings"
    );
    store_readings(&harness, &rows[12..]).await;
    assert!(
        fill_level_reaches(58.0).await,
        "analytics looked at the new readings"
    );
    let (_, body) = api
        .call(Method::GET, "/api/v1/circular/containers", None, None)
        .await;
    let bin_a = &body["containers"][0];
    assert_eq!(bin_a["key"], "bin-a");
    assert!((bin_a["fill_rate_per_hour"].as_f64().unwrap() - 2.0).abs() < 1e-9);
    let full_at = chrono::DateTime::parse_from_rfc3339(bin_a["full_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        full_at,
        now + ChronoDuration::hours(21),
        "(100 - 58) / 2 hours after the last reading"
    );
    assert_eq!(
        body["containers"][1]["full_at"],
        serde_json::Value::Null,
        "already full"
    );
    // The registry as GeoJSON points and as CSV too.
    let (status, geo) = api
        .call(
            Method::GET,
            "/api/v1/circular/containers?format=geojson",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(geo["type"], "FeatureCollection");
    assert_eq!(
        geo["features"][0]["geometry"]["coordinates"],
        json!([10.2, 56.15])
    );
    assert_eq!(geo["features"][0]["properties"]["fill_level"], 58.0);
    let (_, _, csv) = api.text("/api/v1/circular/containers?format=csv").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("key,name,lon,lat,capacity_litres"));
    assert!(lines[1].starts_with("bin-a,bin-a,10.2,56.15,660"));

    let (_, overflows) = api
        .call(
            Method::GET,
            "/api/v1/circular/overflows?municipality=0751",
            None,
            None,
        )
        .await;
    let events = overflows["overflows"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{overflows}");
    assert_eq!(events[0]["container"], "bin-b");
    assert_eq!(events[0]["until"], serde_json::Value::Null, "still full");
    let from = chrono::DateTime::parse_from_rfc3339(events[0]["from"].as_str().unwrap()).unwrap();
    assert_eq!(from, now - ChronoDuration::hours(4));
    let (_, _, csv) = api.text("/api/v1/circular/overflows?format=csv").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with("bin-b,") && lines[1].ends_with(','),
        "{csv}"
    );
    analytics.stop().await;
    harness.finish().await;
}
