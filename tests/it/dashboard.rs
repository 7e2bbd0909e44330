//! The map dashboard in a real browser: headless Chromium, driven by playwright-core from
//! `dashboard/e2e/dashboard.mjs`, against the API serving the embedded dashboard, with ingest and
//! analytics running and the storm-surge simulator publishing once the page is open.
//!
//! Needs Debian's chromium and the dashboard's npm packages: `scripts/test.sh` installs both
//! (`scripts/browser.sh`, `scripts/dashboard.sh`). The screenshots go to
//! `<target>/tmp/dashboard-screenshots/`.

use crate::support::*;
use chrono::Utc;
use reqwest::Method;
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tidemark_store::keys::Role;
use tokio_util::sync::CancellationToken;

fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("TIDEMARK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
    );
    assert!(
        path.is_file(),
        "{} is missing: install Chromium with `bash scripts/browser.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

fn playwright() {
    assert!(
        repo("dashboard/node_modules/playwright-core").is_dir(),
        "the dashboard's npm packages are missing: run `bash scripts/dashboard.sh` (scripts/test.sh does)"
    );
}

/// Odense's waste, containers and water, for the circular and utility view.
async fn odense(harness: &Harness, api: &Api) {
    let utility = api.key(Role::Utility, None).await;
    let call = |method: Method, path: String, body: serde_json::Value| {
        let (api, utility) = (api, utility.clone());
        async move {
            let (status, problem) = api.call(method, &path, Some(&utility), Some(body)).await;
            assert!(status < 300, "{path}: {status} {problem}");
        }
    };
    // The city scenario's first ten days, with a leak starting in Bolbro 50 hours in.
    let city =
        tidemark_sensors_sim::scenario::Scenario::from_file(&repo("config/scenarios/city.toml"))
            .unwrap();
    harness
        .store
        .apply_reference(&city.reference())
        .await
        .unwrap();
    call(
        Method::PUT,
        "/api/v1/utilities/leak-rules/odense-bolbro.water_flow".into(),
        json!({"baseline_nights": 2, "margin": 0.2, "nights": 3}),
    )
    .await;
    simulate_all(harness, "city", "10d").await;
    call(
        Method::PUT,
        "/api/v1/circular/containers/banegaard-paper".into(),
        json!({
            "name": "Banegård paper", "lon": 10.3866, "lat": 55.4017, "capacity_litres": 2500.0,
            "waste_code": "20 01 01", "fraction": "paper", "municipality": "0461",
            "fill_sensor": "banegaard-paper.fill_level",
        }),
    )
    .await;
    let fill = sensor_id(harness, "banegaard-paper.fill_level").await;
    store_readings(
        harness,
        &[tidemark_store::readings::ReadingRow {
            sensor_id: fill,
            ts: Utc::now(),
            value: 85.0,
            quality: 0,
        }],
    )
    .await;
    let record = |code: &str, tonnes: f64, treatment: &str, facility: &str| {
        json!({
            "period_from": "2025-01-01", "period_to": "2025-12-31", "municipality": "0461",
            "waste_code": code, "tonnes": tonnes, "treatment": treatment, "facility": facility,
        })
    };
    call(
        Method::POST,
        "/api/v1/circular/material-flows".into(),
        json!({"records": [
            record("20 01 01", 40.0, "recycling", "Paper mill"),
            record("20 03 01", 60.0, "other_recovery", "Fynsværket"),
        ]}),
    )
    .await;
    let ready = wait_for(Duration::from_secs(90), || async {
        let (_, leaks) = api
            .call(Method::GET, "/api/v1/utilities/leaks", None, None)
            .await;
        let (_, containers) = api
            .call(Method::GET, "/api/v1/circular/containers", None, None)
            .await;
        leaks["leaks"].as_array().is_some_and(|l| !l.is_empty())
            && containers["containers"][0]["fill_level"] == 85.0
    })
    .await;
    assert!(
        ready,
        "analytics found the Bolbro leak and the container's fill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_storm_surge_live_in_a_real_browser() {
    let chromium = chromium();
    playwright();
    let harness = Harness::start().await;
    let _ingest = harness.ingest_ready("dashboard", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let api = Api::start(&harness, &config).await;
    odense(&harness, &api).await;
    // The fjord stations exist before the page opens; their readings come with the surge.
    let scenario_file = repo("config/scenarios/storm-surge.toml");
    let surge = tidemark_sensors_sim::scenario::Scenario::from_file(&scenario_file).unwrap();
    harness
        .store
        .apply_reference(&surge.reference())
        .await
        .unwrap();
    let aabenraa = api.key(Role::Municipality, Some("0580")).await;

    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let mut browser = Command::new("node")
        .arg("e2e/dashboard.mjs")
        .current_dir(repo("dashboard"))
        .env("TIDEMARK_URL", &api.base)
        .env("TIDEMARK_KEY", &aabenraa)
        .env("TIDEMARK_SCREENSHOTS", &screenshots)
        .env("TIDEMARK_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs the browser test");
    let (lines, mut received) = tokio::sync::mpsc::unbounded_channel();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("{line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = received.recv().await {
            output.push(line.clone());
            if line == "READY" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "the page opened: {}",
        output.join("\n")
    );

    // A day of the surge in 30 seconds: 48 simulated minutes a second.
    let database = config.database.clone();
    let broker = harness.broker_config();
    let simulation = tokio::spawn(async move {
        let args = tidemark::sim::SimArgs {
            scenario: scenario_file.display().to_string(),
            seed: None,
            speed: 2880.0,
            duration: Some("24h".into()),
            passwords: None,
            forecasts: Default::default(),
        };
        tidemark::sim::simulate(&database, &broker, &surge, &args, &CancellationToken::new())
            .await
            .unwrap()
    });
    while let Some(line) = received.recv().await {
        output.push(line);
    }
    let status = tokio::task::spawn_blocking(move || browser.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success() && output.last().map(String::as_str) == Some("PASS"),
        "the browser test failed ({status}); screenshots in {}:\n{}",
        screenshots.display(),
        output.join("\n")
    );
    for name in [
        "1-before-the-surge",
        "3-flood-warning",
        "4-station-chart",
        "5-acknowledge-asks-for-a-key",
        "6-acknowledged",
        "8-circular-and-utilities",
        "9-phone",
    ] {
        assert!(screenshots.join(format!("{name}.png")).is_file(), "{name}");
    }
    let report = simulation.await.unwrap();
    assert!(report.readings > 0);

    // What the page drew the station from: analytics' evaluation of the gauge.
    let (_, station) = api
        .call(Method::GET, "/api/v1/stations/aabenraa-havn", None, None)
        .await;
    assert!(
        ["alert", "warning", "severe"].contains(&station["state"].as_str().unwrap()),
        "{station}"
    );
    assert!(station["trends"][0]["rate_per_hour"].is_f64(), "{station}");
    analytics.stop().await;
    harness.finish().await;
}
