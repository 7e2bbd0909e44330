//! Flood warnings end to end: recorded data replayed through the real broker, ingest and the
//! analytics runner, with the warnings, events and outbox rows read back from the database.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use std::time::Duration;
use tidemark_model::warning::{EventKind, Severity, WarningKind};
use tidemark_sensors_sim::replay::{read, Format};
use tidemark_store::flood::EventRow;

fn utc(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 10, d, h, m, 0).unwrap()
}

/// Sensor `id`'s readings of `value`, one every 10 minutes over `minutes_ago` (counted back from
/// `now`), oldest first.
fn ten_minute_rows(
    id: i32,
    now: DateTime<Utc>,
    minutes_ago: std::ops::RangeInclusive<i64>,
    value: f64,
) -> Vec<tidemark_store::readings::ReadingRow> {
    minutes_ago
        .rev()
        .step_by(10)
        .map(|m| tidemark_store::readings::ReadingRow {
            sensor_id: id,
            ts: now - ChronoDuration::minutes(m),
            value,
            quality: 0,
        })
        .collect()
}

/// The severity in force after the events up to `at`.
fn in_force_at(events: &[EventRow], at: DateTime<Utc>) -> Option<Severity> {
    let mut severity = None;
    for event in events.iter().filter(|e| e.at <= at) {
        match event.kind {
            EventKind::Raised | EventKind::Changed => severity = event.severity,
            EventKind::Lifted => severity = None,
            _ => {}
        }
    }
    severity
}

/// The replayed 2023 Baltic surge.
const BALTIC: &str = "tests/fixtures/baltic-surge-2023/sea_level_10min.csv";

/// When the replayed recording first reached `threshold` at Flensburg.
fn flensburg_first_at_or_above(threshold: f64, shift: ChronoDuration) -> DateTime<Utc> {
    read(Format::BalticSurge, &repo(BALTIC))
        .unwrap()
        .points
        .iter()
        .find(|p| p.sensor == "flensburg.sea_level" && p.value >= threshold)
        .unwrap()
        .ts
        + shift
}

/// Verification over the replayed surge, with a grace of an hour.
async fn surge_scores(
    config: &tidemark::config::Config,
    shift: ChronoDuration,
) -> std::collections::BTreeMap<(String, Severity), tidemark_model::verification::Score> {
    tidemark::verify::scores(
        &config.database,
        utc(15, 0, 0) + shift,
        utc(26, 0, 0) + shift,
        ChronoDuration::hours(1),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baltic_surge_raises_escalates_and_lifts_flensburg_and_reports_kappeln_stale() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-warnings", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let shift = replay_all(&harness, Format::BalticSurge, "baltic-surge", BALTIC)
        .await
        .shift;
    quiet(&analytics).await;

    let store = &harness.store;
    // Each gauge as analytics last evaluated it (what the dashboard colours stations by):
    // Flensburg at its last reading, back below its thresholds.
    let trends = store.trends(None).await.unwrap();
    let gauges: Vec<&str> = trends.iter().map(|t| t.sensor_key.as_str()).collect();
    assert_eq!(
        gauges,
        [
            "flensburg.sea_level",
            "kappeln.sea_level",
            "kiel-holtenau.sea_level"
        ]
    );
    let flensburg_trend = &trends[0];
    let last = store.sensor_readings("flensburg.sea_level").await.unwrap();
    assert_eq!(flensburg_trend.at, last.last().unwrap().0);
    assert_eq!(flensburg_trend.severity, None);
    assert!(flensburg_trend.rate_per_hour.is_some());
    let flensburg = store.warning_events("flensburg-fjord").await.unwrap();
    let kinds: Vec<&str> = flensburg.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds.first(), Some(&"raised"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"lifted"), "{kinds:?}");
    // Every severity in turn, each no later than its first sample at or above the threshold plus
    // the 20-minute persistence (the recorded first crossings: 1.00 m, 1.50 m, 2.00 m).
    let first_at_or_above = |threshold: f64| flensburg_first_at_or_above(threshold, shift);
    let first_threshold = |severity: Severity| match severity {
        Severity::Alert => 1.00,
        Severity::Warning => 1.50,
        Severity::Severe => 2.00,
    };
    for severity in Severity::ALL {
        let threshold = first_threshold(severity);
        let raised = flensburg
            .iter()
            .find(|e| e.severity >= Some(severity) && e.kind != "lifted")
            .unwrap_or_else(|| panic!("severity {severity} reached: {kinds:?}"));
        assert!(
            raised.at <= first_at_or_above(threshold) + ChronoDuration::minutes(20),
            "severity {severity} raised at {}",
            raised.at
        );
    }
    assert_eq!(
        in_force_at(&flensburg, utc(20, 21, 40) + shift),
        Some(Severity::Severe),
        "Severe at the 2.270 m peak"
    );
    let warnings = store.warnings(Some("flensburg-fjord")).await.unwrap();
    assert!(
        warnings.iter().all(|w| w.municipalities == ["0580"]),
        "Aabenraa, across the border"
    );
    let lifted = flensburg.last().unwrap();
    assert!(
        lifted.message_en.contains("no longer in force"),
        "{}",
        lifted.message_en
    );
    assert!(
        lifted.message_da.contains("ikke længere gældende"),
        "{}",
        lifted.message_da
    );
    let outbox = store.outbox_for(flensburg[0].id).await.unwrap();
    assert_eq!(
        outbox,
        [(
            "mqtt".to_owned(),
            "tidemark/v1/alerts/0580/flensburg-fjord".to_owned()
        )]
    );

    let kiel = store.warning_events("kiel-fjord").await.unwrap();
    assert!(!kiel.is_empty());
    assert!(
        kiel.iter().all(|e| e.severity < Some(Severity::Severe)),
        "Kiel-Holtenau (1.953 m) never reaches Severe"
    );

    let kappeln = store.warning_events("schlei-kappeln").await.unwrap();
    let stale = kappeln
        .iter()
        .find(|e| e.kind == "stale")
        .expect("Kappeln is reported stale");
    assert_eq!(
        stale.at,
        utc(20, 12, 50) + shift,
        "three missed 10-minute readings after 12:20"
    );
    assert!(
        in_force_at(&kappeln, stale.at).is_some_and(|s| s >= Severity::Warning),
        "still in force when it went silent"
    );
    assert!(
        !kappeln
            .iter()
            .any(|e| e.kind == "lifted" && e.at > stale.at && e.at < utc(23, 0, 0) + shift),
        "nothing lifts it while the gauge is silent"
    );

    // Verification over the replayed period, against the flood events the readings show: every
    // Flensburg event of every severity was warned of, each event starts at the recording's first
    // reading at the threshold, and its lead time runs from the first event that put the severity
    // in force (an expected warning from the rising trend, ahead of the water).
    let scores = surge_scores(&config, shift).await;
    for severity in Severity::ALL {
        let score = &scores[&("flensburg-fjord".to_owned(), severity)];
        let tally = score.tally();
        assert!(
            tally.hits >= 1 && tally.misses == 0,
            "{severity}: {score:?}"
        );
        let first = &score.events[0];
        assert_eq!(
            first.first_crossing,
            first_at_or_above(first_threshold(severity)),
            "{severity}: the event starts at the recording's first reading at the threshold"
        );
        let warned = flensburg
            .iter()
            .find(|e| e.severity >= Some(severity) && e.kind != EventKind::Lifted)
            .unwrap();
        assert_eq!(
            first.lead_minutes(),
            Some((first.first_crossing - warned.at).num_minutes()),
            "{severity}: lead time from {} ({})",
            warned.at,
            warned.message_en
        );
        // Later tides under the same warning are hits without a lead time of their own.
        for later in &score.events[1..] {
            assert_eq!(
                later.continues,
                later.warned_at == first.warned_at,
                "{later:?}"
            );
        }
    }
    // The same over the API, for one area, as JSON and as CSV.
    let api = Api::start(&harness, &config).await;
    let period = format!(
        "from={}&to={}",
        (utc(15, 0, 0) + shift).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (utc(26, 0, 0) + shift).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/verification?{period}&area=flensburg-fjord"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<&str> = body["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["severity"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["alert", "warning", "severe"], "{body}");
    for (i, severity) in Severity::ALL.into_iter().enumerate() {
        let score = &scores[&("flensburg-fjord".to_owned(), severity)];
        let listed = &body["scores"][i];
        assert_eq!(listed["hits"], score.tally().hits, "{listed}");
        assert_eq!(
            listed["events"][0]["lead_minutes"],
            score.events[0].lead_minutes().unwrap(),
            "{listed}"
        );
    }
    assert_eq!(body["overall"]["probability_of_detection"], 1.0, "{body}");
    let (_, _, csv) = api
        .text(&format!(
            "/api/v1/verification?{period}&area=flensburg-fjord&severity=severe&format=csv"
        ))
        .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].starts_with("flensburg-fjord,severe,1,0,0,"),
        "{csv}"
    );
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/verification?{period}&area=atlantis"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, problem) = api
        .call(reqwest::Method::GET, "/api/v1/verification", None, None)
        .await;
    assert_eq!((status, problem["parameter"].as_str()), (400, Some("from")));

    let kiel_severe = scores.get(&("kiel-fjord".to_owned(), Severity::Severe));
    assert!(
        kiel_severe.is_none(),
        "no Severe event and no Severe warning at Kiel: {kiel_severe:?}"
    );

    assert_eq!(analytics.metrics.failures.get(), 0);
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Simulated forecasts every 6 hours, 48 hours ahead, with the README's error model (0.10 m at
/// 12 h growing to 0.25 m at 36 h).
fn simulated_forecasts() -> tidemark::sim::ForecastArgs {
    tidemark::sim::ForecastArgs {
        enabled: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_warn_flensburg_hours_before_the_surge_and_the_water_takes_over() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-forecasts", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let path = BALTIC;
    let report = replay_all_with(
        &harness,
        Format::BalticSurge,
        "baltic-surge",
        path,
        simulated_forecasts(),
    )
    .await;
    assert!(report.forecasts > 100, "{report:?}");
    quiet(&analytics).await;
    let shift = report.shift;
    let first_crossing = flensburg_first_at_or_above(1.50, shift);
    // Verification finds the first Flood Warning event at the recording's first reading at 1.50 m,
    // and the warning in force then was put in force by the forecasts hours before.
    let scores = surge_scores(&config, shift).await;
    let score = &scores[&("flensburg-fjord".to_owned(), Severity::Warning)];
    let first = &score.events[0];
    assert_eq!(first.first_crossing, first_crossing, "{score:?}");
    let warned_at = first.warned_at.expect("warned of");
    assert_eq!(
        first.lead_minutes(),
        Some((first_crossing - warned_at).num_minutes()),
        "{score:?}"
    );
    assert!(
        warned_at <= first_crossing - ChronoDuration::hours(6),
        "the Flood Warning came at {warned_at}, the water at {first_crossing}"
    );
    let flensburg = harness
        .store
        .warning_events("flensburg-fjord")
        .await
        .unwrap();
    let warned = flensburg
        .iter()
        .find(|e| e.at == warned_at && e.severity >= Some(Severity::Warning))
        .expect("the event that put the Flood Warning in force");
    let history = harness
        .store
        .warning_history(warned.warning_id)
        .await
        .unwrap();
    let event = history.iter().find(|e| e.id == warned.id).unwrap();
    assert_eq!(event.warning_kind, WarningKind::Expected);
    assert_eq!(event.detail["cause"], "forecast", "{}", event.detail);
    assert_eq!(event.detail["source"], "sim", "{}", event.detail);
    assert!(event.detail["issued_at"].is_string(), "{}", event.detail);
    assert!(
        event.message_en.contains("forecast"),
        "{}",
        event.message_en
    );
    // The observed crossing takes the warning over: its kind changes, and it is raised once.
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == EventKind::Raised)
            .count(),
        1,
        "{history:?}"
    );
    assert!(
        history
            .iter()
            .any(|e| e.warning_kind == WarningKind::Observed
                && e.severity >= Severity::Warning
                && e.at >= first_crossing),
        "the water takes over: {history:?}"
    );
    assert_eq!(analytics.metrics.failures.get(), 0);
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calder_valley_in_late_summer_raises_nothing_even_with_forecasts() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-calder", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    let report = replay_all_with(
        &harness,
        Format::Calder,
        "calder",
        "tests/fixtures/calder-2025",
        simulated_forecasts(),
    )
    .await;
    assert!(report.forecasts > 0, "{report:?}");
    quiet(&analytics).await;
    assert!(analytics.metrics.evaluations.get() > 0);
    assert_eq!(analytics.metrics.failures.get(), 0);
    assert!(
        harness.store.warnings(None).await.unwrap().is_empty(),
        "no warning is ever raised"
    );
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_week_with_forecasts_raises_nothing_at_copenhagen_harbour() {
    let harness = Harness::start().await;
    let ingest = harness
        .ingest_ready("ingest-baseline-forecasts", None)
        .await;
    let config = config(&harness);
    // The baseline scenario's harbour gauge, with the Baltic storm-surge classes as thresholds.
    let sensor = "koebenhavn-havn.sea_level";
    harness
        .store
        .apply_flood_setup(&tidemark_store::flood::FloodSetup {
            areas: vec![tidemark_store::flood::AreaRow {
                key: "koebenhavn-havn".into(),
                name: "Københavns Havn".into(),
                polygon: serde_json::json!({"type": "Polygon", "coordinates": [[[12.58, 55.68], [12.61, 55.68], [12.61, 55.70], [12.58, 55.70], [12.58, 55.68]]]}),
                municipality_codes: vec!["0101".into()],
                sensors: vec![sensor.into()],
                forecast_horizon: Duration::from_secs(24 * 3600),
                hazard: tidemark_model::warning::Category::Flood,
            }],
            thresholds: vec![tidemark_store::flood::ThresholdRow {
                sensor_key: sensor.into(),
                alert: 1.0,
                warning: 1.5,
                severe: 2.0,
                persistence: Duration::from_secs(20 * 60),
                min_readings: 2,
                hysteresis: 0.1,
                hold: Duration::from_secs(3600),
                rate_window: Duration::from_secs(3600),
                lead_time: Duration::from_secs(1800),
                plausible_low: -3.0,
                plausible_high: 4.0,
                spike_floor: 0.3,
                rate_alert: None,
                falling: false,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let analytics = start_analytics(&config).await;
    let report = simulate_all_with(&harness, "baseline", "7d", simulated_forecasts()).await;
    assert!(report.forecasts >= 27, "{report:?}");
    quiet(&analytics).await;
    let forecasts = harness
        .store
        .forecasts_since(&[sensor.to_owned()], chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert!(forecasts.len() >= 27 && forecasts.iter().all(|f| f.source == "sim"));
    assert!(analytics.metrics.evaluations.get() > 0);
    assert_eq!(analytics.metrics.failures.get(), 0);
    assert!(
        harness
            .store
            .warning_events("koebenhavn-havn")
            .await
            .unwrap()
            .is_empty(),
        "no warning from a quiet week's forecasts"
    );
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_cloudburst_raises_a_rain_alert_then_a_river_warning_downstream() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-cloudburst", None).await;
    let config = config(&harness);
    let analytics = start_analytics(&config).await;
    simulate_all(&harness, "cloudburst", "12h").await;
    quiet(&analytics).await;
    let events = harness
        .store
        .warning_events("aarhus-aa-city")
        .await
        .unwrap();
    let first = events.first().expect("the cloudburst raises a warning");
    assert_eq!(first.kind, "raised");
    assert!(
        first.message_en.contains("mm of rain"),
        "a rainfall alert first: {}",
        first.message_en
    );
    let river = events
        .iter()
        .find(|e| {
            e.severity == Some(Severity::Warning) && e.message_en.contains("aarhus-aa-city.level")
        })
        .expect("a river warning downstream");
    assert!(
        river.at - first.at >= ChronoDuration::hours(1),
        "after the lag: {} then {}",
        first.at,
        river.at
    );
    let sewer = harness
        .store
        .warning_events("aarhus-c-sewer")
        .await
        .unwrap();
    assert!(
        sewer.first().is_some_and(|e| e.at < river.at),
        "the sewer answers first"
    );
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_flagged_good_by_the_device_is_flagged_on_the_reading_and_raises_nothing() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-spike", None).await;
    let sensor = sensor(0, 0);
    let flood_file = harbour_flood_file("spike", &sensor);
    let mut config = config(&harness);
    config.analytics.flood_files = vec![flood_file.clone()];
    let analytics = start_analytics(&config).await;
    let start = Utc::now() - ChronoDuration::hours(3);
    let messages: Vec<(String, Vec<u8>)> = (0..18)
        .map(|i| {
            let value = if i == 9 {
                16.71
            } else {
                0.40 + 0.01 * (i % 3) as f64
            };
            let ts = rfc3339(start + ChronoDuration::minutes(10 * i));
            let payload = format!(
                r#"{{"sensor":"{sensor}","ts":"{ts}","value":{value},"unit":"m","quality":"good"}}"#
            );
            (topic(&device(0)), payload.into_bytes())
        })
        .collect();
    publish(&harness.broker_config(), messages).await;
    harness.settle(18, Duration::from_secs(30)).await;
    let flagged = wait_for(Duration::from_secs(30), || async {
        harness
            .store
            .sensor_readings(&sensor)
            .await
            .unwrap()
            .iter()
            .any(|r| r.2 & tidemark_model::Quality::SPIKE.0 != 0)
    })
    .await;
    assert!(flagged, "the spike is flagged on the stored reading");
    quiet(&analytics).await;
    let readings = harness.store.sensor_readings(&sensor).await.unwrap();
    let spikes: Vec<f64> = readings
        .iter()
        .filter(|r| r.2 & tidemark_model::Quality::SPIKE.0 != 0)
        .map(|r| r.1)
        .collect();
    assert_eq!(spikes, [16.71]);
    assert!(
        harness.store.warnings(None).await.unwrap().is_empty(),
        "the spike raises nothing"
    );
    let _ = std::fs::remove_file(flood_file);
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Two analytics processes over one replayed surge: each area's events form one history, every
/// change recorded once. Each writer checks, under the area's lock, that the area's last event is
/// still the one its evaluation read, and evaluates again when it is not. Whether the two runners
/// actually race over an area depends on timing (it rarely happens here); the next test makes the
/// race itself deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_analytics_runners_record_every_event_exactly_once() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-two-analytics", None).await;
    let config = config(&harness);
    let first = start_analytics(&config).await;
    let second = start_analytics(&config).await;
    replay_all(&harness, Format::BalticSurge, "baltic-surge", BALTIC).await;
    quiet(&first).await;
    quiet(&second).await;
    let total = assert_one_history_per_area(&harness).await;
    assert!(
        total >= 4,
        "the surge raised, changed and lifted warnings: {total} events"
    );
    first.stop().await;
    second.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Checks that each Baltic area's events tell one history, each event recorded once, and returns
/// how many events there are in all.
async fn assert_one_history_per_area(harness: &Harness) -> usize {
    let mut total = 0;
    for area in ["flensburg-fjord", "kiel-fjord", "schlei-kappeln"] {
        let mut events = harness.store.warning_events(area).await.unwrap();
        events.sort_by_key(|e| e.id);
        total += events.len();
        // One history: a raise only when nothing is in force, everything else only while something
        // is, a change that changes something, stale only when fresh and fresh only when stale.
        let (mut in_force, mut stale) = (None::<Option<Severity>>, false);
        for e in &events {
            let story = format!(
                "{area}: {:?}",
                events
                    .iter()
                    .map(|e| (&e.kind, e.severity, e.at))
                    .collect::<Vec<_>>()
            );
            match e.kind {
                EventKind::Raised => {
                    assert!(in_force.is_none(), "raised twice: {story}");
                    in_force = Some(e.severity);
                }
                EventKind::Changed => {
                    assert!(in_force.is_some(), "changed nothing in force: {story}");
                    in_force = Some(e.severity);
                }
                EventKind::Stale => {
                    assert!(in_force.is_some() && !stale, "stale twice: {story}");
                    stale = true;
                }
                EventKind::Fresh => {
                    assert!(stale, "fresh twice: {story}");
                    stale = false;
                }
                EventKind::Lifted => {
                    assert!(in_force.is_some(), "lifted twice: {story}");
                    in_force = None;
                    stale = false;
                }
                _ => {}
            }
        }
        let mut keys: Vec<(EventKind, Option<Severity>, chrono::DateTime<chrono::Utc>)> =
            events.iter().map(|e| (e.kind, e.severity, e.at)).collect();
        let all = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all, "{area}: an event recorded twice");
    }
    total
}

/// Two `tidemark analytics` processes over one replayed surge record every event exactly once:
/// the area's last event is checked under its lock, and a writer whose view is outdated
/// evaluates again instead of recording the same change twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_analytics_processes_record_every_event_exactly_once() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-two-processes", None).await;
    let config = config(&harness);
    tidemark::app::load_flood(&config).await.unwrap();
    let mut processes = Vec::new();
    let mut metrics_urls = Vec::new();
    for _ in 0..2 {
        let port = tidemark_testkit::free_port().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .arg("analytics")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("TIDEMARK_ENV")
            .env("TIDEMARK__DATABASE__URL", &config.database.url)
            .env("TIDEMARK__MQTT__PORT", config.mqtt.port.to_string())
            .env("TIDEMARK__ANALYTICS__SWEEP_INTERVAL", "2s")
            .env(
                "TIDEMARK__ANALYTICS__METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        processes.push(child);
        metrics_urls.push(format!("http://127.0.0.1:{port}/metrics"));
    }
    // Both serve their metrics once they run.
    let counters = |url: String| async move {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let value = |name: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some((
            value("tidemark_analytics_evaluations_total")?,
            value("tidemark_analytics_events_total")?,
        ))
    };
    for url in &metrics_urls {
        let up = wait_for(Duration::from_secs(30), || async {
            counters(url.clone()).await.is_some()
        })
        .await;
        assert!(up, "tidemark analytics serves {url}");
    }
    replay_all(&harness, Format::BalticSurge, "baltic-surge", BALTIC).await;
    // Settled when neither process has recorded an event for a while (as `quiet` does for one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let settled = loop {
        let mut now = Vec::new();
        for url in &metrics_urls {
            now.push(counters(url.clone()).await);
        }
        // Sweeps keep evaluating; the events recorded are what must stop changing.
        let evaluated = now
            .iter()
            .all(|c| c.is_some_and(|(evaluations, _)| evaluations > 0));
        let events: Vec<Option<u64>> = now.iter().map(|c| c.map(|(_, events)| events)).collect();
        if evaluated && last.as_ref() == Some(&events) {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        last = Some(events);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    };
    assert!(settled, "both analytics processes evaluate and settle");
    let total = assert_one_history_per_area(&harness).await;
    assert!(
        total >= 4,
        "the surge raised, changed and lifted warnings: {total} events"
    );
    for mut process in processes {
        process.kill().await.unwrap();
    }
    ingest.stop().await;
    harness.finish().await;
}

/// The lock behind two analytics processes, made deterministic: two writers decide about one
/// area at the same time, each recording that the warning went stale unless it already is. The
/// first holds the area's lock while it decides (slowly); the second waits for the lock, reads
/// the area after the first recorded its event, and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_decide_about_an_area_one_after_the_other() {
    use tidemark_store::flood::{AreaDecision, NewEvent};
    let harness = Harness::start().await;
    let config = config(&harness);
    tidemark::app::load_flood(&config).await.unwrap();
    let area = "flensburg-fjord";
    let municipalities = ["0580".to_owned()];
    let event = |kind: EventKind| NewEvent {
        kind,
        severity: Some(Severity::Warning),
        warning_kind: tidemark_model::warning::WarningKind::Observed,
        at: chrono::Utc::now(),
        message_en: format!("Flensburg {kind}."),
        message_da: format!("Flensborg {kind}."),
        trigger: serde_json::json!({}),
    };
    let store = &harness.store;
    store
        .record_area_events(area, &municipalities, &[event(EventKind::Raised)], &[], &[])
        .await
        .unwrap();
    // Stale, unless the area's warning already is: what the runner decides, made slow.
    let decide = |status: &tidemark_store::flood::AreaStatus| {
        std::thread::sleep(Duration::from_millis(300));
        let stale = status.current.as_ref().is_some_and(|w| w.stale);
        AreaDecision {
            events: if stale {
                vec![]
            } else {
                vec![event(EventKind::Stale)]
            },
            crossings: vec![],
        }
    };
    let first = store.decide_area(area, &municipalities, &[], decide);
    let second = async {
        // Starts while the first is deciding under the lock.
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.decide_area(area, &municipalities, &[], decide).await
    };
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.1.events.len(), 1, "the first records the stale event");
    assert!(
        second.1.events.is_empty(),
        "the second decides from what the first recorded: {:?}",
        second.1.events
    );
    let kinds: Vec<EventKind> = store
        .warning_events(area)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Raised, EventKind::Stale]);
    harness.finish().await;
}

/// The flood setup loaded, and a store of one pooled connection, with the key of the first
/// threshold's sensor: every recording gets the connection the one before it used.
async fn one_connection_store(harness: &Harness) -> (tidemark_store::Store, String) {
    let config = config(harness);
    tidemark::app::load_flood(&config).await.unwrap();
    let store = tidemark_store::Store::connect(&tidemark_store::DatabaseConfig {
        pool_size: 1,
        ..config.database.clone()
    })
    .await
    .unwrap();
    let sensor = store.flood_setup().await.unwrap().thresholds[0]
        .sensor_key
        .clone();
    (store, sensor)
}

/// A statement that fails inside a warning's recording (here its MQTT delivery, refused by a
/// trigger) fails the whole recording with the reason of the statement that failed, not of those
/// sent after it in the same round trip; nothing of it is left behind, and the connection serves
/// the next recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_statement_records_nothing_and_says_why() {
    use tidemark_store::flood::{CrossingRow, NewEvent};
    let harness = Harness::start().await;
    // One connection: the second recording gets the one the first failed on.
    let (store, sensor) = one_connection_store(&harness).await;
    let area = "flensburg-fjord";
    let municipalities = ["0580".to_owned()];
    let topics = ["tidemark/alerts/0580/flensburg-fjord".to_owned()];
    let at = Utc::now() - ChronoDuration::minutes(5);
    let raised = [NewEvent {
        kind: EventKind::Raised,
        severity: Some(Severity::Warning),
        warning_kind: WarningKind::Observed,
        at,
        message_en: "Raised.".to_owned(),
        message_da: "Udsendt.".to_owned(),
        trigger: serde_json::json!({}),
    }];
    let crossing = [CrossingRow {
        sensor_key: sensor,
        severity: Severity::Warning,
        up: true,
        at,
        value: 1.6,
    }];
    let client = sql(&harness).await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'deliveries refused by the test'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let error = store
        .record_area_events(area, &municipalities, &raised, &topics, &crossing)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("deliveries refused by the test"), "{error}");
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    for table in [
        "warnings",
        "warning_events",
        "outbox",
        "threshold_crossings",
    ] {
        assert_eq!(count(table).await, 0, "nothing is left in {table}");
    }

    client
        .batch_execute("DROP TRIGGER refuse ON outbox")
        .await
        .unwrap();
    let ids = store
        .record_area_events(area, &municipalities, &raised, &topics, &crossing)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    for table in [
        "warnings",
        "warning_events",
        "outbox",
        "threshold_crossings",
    ] {
        assert_eq!(count(table).await, 1, "one row in {table}");
    }
    harness.finish().await;
}

/// A decision found inconsistent after some of its statements ran (a change to a warning that is
/// not in force) fails before its commit, and nothing of it is left: not on the connection the
/// next recording gets either, which a transaction left open on it would commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_fails_before_its_commit_leaves_nothing_behind() {
    use tidemark_store::flood::{CrossingRow, NewEvent};
    let harness = Harness::start().await;
    // One connection: the second recording gets the one the first failed on, unless it was let go.
    let (store, sensor) = one_connection_store(&harness).await;
    let area = "flensburg-fjord";
    let municipalities = ["0580".to_owned()];
    let at = Utc::now() - ChronoDuration::minutes(5);
    let event = |kind| NewEvent {
        kind,
        severity: Some(Severity::Warning),
        warning_kind: WarningKind::Observed,
        at,
        message_en: "Event.".to_owned(),
        message_da: "Hændelse.".to_owned(),
        trigger: serde_json::json!({}),
    };
    let crossing = |value| CrossingRow {
        sensor_key: sensor.clone(),
        severity: Severity::Warning,
        up: true,
        at,
        value,
    };
    // No warning is in force, so there is none to change: the area's lock, the crossing and the
    // change have run when the decision is found wrong.
    let error = store
        .record_area_events(
            area,
            &municipalities,
            &[event(EventKind::Changed)],
            &[],
            &[crossing(1.1)],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("needs a warning in force"), "{error}");
    store
        .record_area_events(
            area,
            &municipalities,
            &[event(EventKind::Raised)],
            &[],
            &[crossing(1.2)],
        )
        .await
        .unwrap();
    let client = sql(&harness).await;
    let values: Vec<f64> = client
        .query("SELECT value FROM threshold_crossings ORDER BY value", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, [1.2], "only the recording that committed is kept");
    let events: i64 = client
        .query_one("SELECT count(*) FROM warning_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1);
    harness.finish().await;
}

/// An evaluation of many areas records them together, in one transaction: each area's events in
/// order, each with its warning, its MQTT deliveries, the webhooks that match it and its
/// notification. One area is raised at Flood Warning and changed down to Flood Alert in the same
/// decision: a webhook for Flood Warnings and up hears both, because it heard of the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_areas_are_decided_together_each_in_order() {
    use tidemark_store::coordination::{Channel, Notice};
    use tidemark_store::flood::{AreaDecision, AreaTarget, NewEvent};
    let harness = Harness::start().await;
    let config = config(&harness);
    tidemark::app::load_flood(&config).await.unwrap();
    let store = &harness.store;
    let setup = store.flood_setup().await.unwrap();
    let areas: Vec<&tidemark_store::flood::AreaRow> = setup.areas.iter().take(3).collect();
    assert_eq!(areas.len(), 3, "the flood files hold three areas or more");
    let client = sql(&harness).await;
    client
        .batch_execute(
            "INSERT INTO api_keys (prefix, hash, role) VALUES ('tm_test', '\\x00', 'operator'); \
             INSERT INTO webhooks (owner_key, url, min_severity, secret) \
             SELECT id, 'http://127.0.0.1:9/hook', 2, 'whsec_test' FROM api_keys WHERE prefix = 'tm_test'",
        )
        .await
        .unwrap();
    let at = Utc::now() - ChronoDuration::minutes(10);
    let event = |kind: EventKind, severity: Option<Severity>, minutes: i64| NewEvent {
        kind,
        severity,
        warning_kind: WarningKind::Observed,
        at: at + ChronoDuration::minutes(minutes),
        message_en: format!("{kind}."),
        message_da: format!("{kind}."),
        trigger: serde_json::json!({}),
    };
    // The third area has a warning in force already.
    store
        .record_area_events(
            &areas[2].key,
            &areas[2].municipality_codes,
            &[event(EventKind::Raised, Some(Severity::Warning), 0)],
            &[],
            &[],
        )
        .await
        .unwrap();
    let mut listener =
        tidemark_store::notify::listen(&config.database, &[Channel::WarningsChanged])
            .await
            .unwrap();
    let topics: Vec<Vec<String>> = (0..3).map(|i| vec![format!("alerts/{i}")]).collect();
    let targets: Vec<AreaTarget<'_>> = areas
        .iter()
        .zip(&topics)
        .map(|(area, topics)| AreaTarget {
            key: &area.key,
            municipalities: &area.municipality_codes,
            mqtt_topics: topics,
        })
        .collect();
    let decisions = [
        vec![
            event(EventKind::Raised, Some(Severity::Warning), 1),
            event(EventKind::Changed, Some(Severity::Alert), 2),
        ],
        vec![event(EventKind::Raised, Some(Severity::Severe), 1)],
        vec![event(EventKind::Lifted, None, 2)],
    ];
    let mut seen = Vec::new();
    let decided = store
        .decide_areas(&targets, |i, status| {
            seen.push((i, status.current.is_some()));
            AreaDecision {
                events: decisions[i].clone(),
                crossings: vec![],
            }
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        [(0, false), (1, false), (2, true)],
        "each area's status, read under its lock"
    );
    let ids: Vec<Vec<i64>> = decided.iter().map(|(ids, _)| ids.clone()).collect();
    assert_eq!(ids.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 1]);
    assert!(ids[0][0] < ids[0][1], "an area's events in order: {ids:?}");

    for (i, area) in areas.iter().enumerate() {
        let events = store.warning_events(&area.key).await.unwrap();
        let recorded: Vec<i64> = events
            .iter()
            .map(|e| e.id)
            .rev()
            .take(ids[i].len())
            .rev()
            .collect();
        assert_eq!(recorded, ids[i], "area {} holds its events", area.key);
        for id in &ids[i] {
            let outbox = store.outbox_for(*id).await.unwrap();
            assert!(
                outbox.contains(&("mqtt".to_owned(), format!("alerts/{i}"))),
                "event {id}: {outbox:?}"
            );
            assert!(
                outbox.iter().any(|(channel, _)| channel == "webhook"),
                "event {id} of area {i} goes to the webhook: {outbox:?}"
            );
        }
    }
    let warnings = store.warnings(None).await.unwrap();
    let state = |key: &str| {
        warnings
            .iter()
            .filter(|w| w.area_key == key)
            .map(|w| (w.severity, w.state))
            .collect::<Vec<_>>()
    };
    use tidemark_model::warning::WarningState;
    assert_eq!(
        state(&areas[0].key),
        [(Severity::Alert, WarningState::InForce)]
    );
    assert_eq!(
        state(&areas[1].key),
        [(Severity::Severe, WarningState::InForce)]
    );
    assert_eq!(
        state(&areas[2].key),
        [(Severity::Warning, WarningState::Lifted)]
    );

    let mut announced = Vec::new();
    while announced.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
            Ok(Some(Notice::WarningsChanged { event_id })) => announced.push(event_id),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let mut all: Vec<i64> = ids.concat();
    all.sort_unstable();
    assert_eq!(announced, all, "every event announced once, in id order");
    harness.finish().await;
}

/// Warnings from the readings alone (no forecasts, and the rising-trend projection turned off, as
/// before forecasts): each of Flensburg's severities is warned of only once the water has stayed
/// above its threshold for the 20-minute persistence, and verification, which finds the events in
/// the readings, reports that as a negative lead time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_forecasts_or_trend_verification_reports_warnings_after_the_water() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-observed-only", None).await;
    let mut config = config(&harness);
    let flood = std::fs::read_to_string(repo("config/flood/baltic-2023.toml")).unwrap();
    assert!(flood.contains("lead_time = \"30m\""));
    let dir = std::env::temp_dir().join(format!("tidemark-observed-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("baltic-2023.toml");
    std::fs::write(
        &file,
        flood.replace("lead_time = \"30m\"", "lead_time = \"0s\""),
    )
    .unwrap();
    config.analytics.flood_files = vec![file];
    let analytics = start_analytics(&config).await;
    let path = BALTIC;
    let shift = replay_all(&harness, Format::BalticSurge, "baltic-surge", path)
        .await
        .shift;
    quiet(&analytics).await;
    let first_at_or_above = |threshold: f64| flensburg_first_at_or_above(threshold, shift);
    let scores = surge_scores(&config, shift).await;
    let flensburg = harness
        .store
        .warning_events("flensburg-fjord")
        .await
        .unwrap();
    for (severity, threshold) in Severity::ALL.into_iter().zip([1.0, 1.5, 2.0]) {
        let score = &scores[&("flensburg-fjord".to_owned(), severity)];
        let first = &score.events[0];
        assert_eq!(
            first.first_crossing,
            first_at_or_above(threshold),
            "{severity}"
        );
        let warned = flensburg
            .iter()
            .find(|e| e.severity >= Some(severity) && e.kind != EventKind::Lifted)
            .unwrap();
        assert_eq!(
            first.warned_at,
            Some(warned.at),
            "{severity}: {}",
            warned.message_en
        );
        let lead = first
            .lead_minutes()
            .expect("the first event has a lead time");
        assert_eq!(
            lead,
            (first.first_crossing - warned.at).num_minutes(),
            "{severity}: lead time from {}",
            warned.at
        );
        assert!(
            lead <= -20,
            "{severity}: a lead time of {lead} minutes, where the warning should come the 20-minute persistence late"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Groundwater sinking at the example well of `config/reference/groundwater.toml`, with the
/// falling thresholds of `config/flood/groundwater.toml`: a drought area's warning rises to a
/// Drought Warning as the level falls below 18 and 17 m, and is served as a drought warning over
/// the API and in CAP; a flood area's thresholds may not point downwards, nor a drought area's up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinking_groundwater_raises_a_drought_warning() {
    let harness = Harness::start().await;
    let mut config = config(&harness);
    config.reference.files = vec![repo("config/reference/groundwater.toml")];
    config.analytics.flood_files = vec![repo("config/flood/groundwater.toml")];
    tidemark::app::load_reference(&config).await.unwrap();
    let sensor = "beder-grundvand.groundwater_level";
    let id = sensor_id(&harness, sensor).await;
    // Hourly, on the hour: 18.6 m falling 0.1 m an hour to 16.6 m (after 20 hours), then level;
    // the last reading is one to two hours old.
    let start = Utc
        .timestamp_opt(
            (Utc::now() - ChronoDuration::hours(31)).timestamp() / 3600 * 3600,
            0,
        )
        .unwrap();
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..31)
        .map(|h| tidemark_store::readings::ReadingRow {
            sensor_id: id,
            ts: start + ChronoDuration::hours(h),
            value: 18.6 - 0.1 * h.min(20) as f64,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    let analytics = start_analytics(&config).await;
    quiet(&analytics).await;

    let warnings = harness
        .store
        .warnings(Some("beder-kildeplads"))
        .await
        .unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!(
        (
            warning.category,
            warning.severity,
            warning.kind,
            warning.state.name()
        ),
        (
            tidemark_model::warning::Category::Drought,
            Severity::Warning,
            WarningKind::Observed,
            "in_force"
        )
    );
    assert!(
        warning
            .message_en
            .starts_with("Drought Warning for Beder kildeplads:")
            && warning
                .message_en
                .contains("at or below the 17.00 m threshold"),
        "{}",
        warning.message_en
    );
    assert!(
        warning
            .message_da
            .starts_with("Tørkevarsel for Beder kildeplads:")
            && warning
                .message_da
                .contains("på eller under tærsklen på 17.00 m"),
        "{}",
        warning.message_da
    );
    // Alert when the level had been at or below 18.0 m for six hours (from hour 6), Warning
    // when at or below 17.0 m for six hours (from hour 16), observed each time.
    let events = harness
        .store
        .warning_events("beder-kildeplads")
        .await
        .unwrap();
    // Expected an hour before each threshold from the falling trend (0.1 m/h, an hour's lead
    // time), observed once the level has stood at or below it for six hours and three readings:
    // at or below 18.0 m from hour 6, at or below 17.0 m from hour 16.
    let history: Vec<(EventKind, Option<Severity>, i64, bool)> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.severity,
                (e.at - start).num_hours(),
                e.message_en.contains("is falling 0.10 m/h"),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (EventKind::Raised, Some(Severity::Alert), 5, true),
            (EventKind::Changed, Some(Severity::Alert), 12, false),
            (EventKind::Changed, Some(Severity::Warning), 15, true),
            (EventKind::Changed, Some(Severity::Warning), 22, false),
        ]
    );

    let api = Api::start(&harness, &config).await;
    let (status, list) = api
        .call(reqwest::Method::GET, "/api/v1/warnings", None, None)
        .await;
    assert_eq!(status, 200);
    let listed = &list["warnings"][0];
    assert_eq!(listed["category"], "drought", "{list}");
    assert_eq!(listed["severity_name"], "Drought Warning");
    let cap = reqwest::get(listed["links"]["cap"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "<event>Drought Warning</event>",
        "<event>Tørkevarsel</event>",
        "<senderName>Tidemark drought warnings</senderName>",
        "Save water",
    ] {
        assert!(cap.contains(expected), "{expected} in {cap}");
    }

    // Rising thresholds for a sensor of a drought area are refused, over the API as in a file.
    let operator = api.key(tidemark_store::keys::Role::Operator, None).await;
    let (status, problem) = api
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/thresholds/{sensor}"),
            Some(&operator),
            Some(serde_json::json!({
                "alert": 16.0, "warning": 17.0, "severe": 18.0, "persistence": "6h",
                "min_readings": 3, "hysteresis": 0.1, "hold": "24h", "rate_window": "24h",
                "lead_time": "1h", "plausible_low": 0.0, "plausible_high": 60.0,
                "spike_floor": 1.0, "rate_alert": null,
            })),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("drought area"), "{problem}");
    let flipped =
        std::env::temp_dir().join(format!("tidemark-flipped-{}.toml", std::process::id()));
    std::fs::write(
        &flipped,
        std::fs::read_to_string(repo("config/flood/groundwater.toml"))
            .unwrap()
            .replace("hazard = \"drought\"", "hazard = \"flood\""),
    )
    .unwrap();
    let mut flipped_config = config.clone();
    flipped_config.analytics.flood_files = vec![flipped.clone()];
    let error = tidemark::app::load_flood(&flipped_config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("its thresholds fall"), "{error}");
    let _ = std::fs::remove_file(flipped);
    api.shutdown.cancel();
    analytics.stop().await;
    harness.finish().await;
}

/// Two batches of one station's readings that commit in the opposite order to their times (as two
/// batches committing at once can): the later, quiet readings first, then the earlier ones that
/// rose to Flood Warning and fell back. The area records the same events, with the same times, as
/// an area whose station's batches committed in time order: the warning raised at the water and
/// lifted after it fell, none lost for having been evaluated after the readings that follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_out_of_time_order_record_the_events_of_batches_in_order() {
    let harness = Harness::start().await;
    let (in_order, out_of_order) = (sensor(0, 0), sensor(0, 1));
    let flood_file = flood_file(
        "out-of-order",
        &[
            ("in-order", "In order", &in_order),
            ("out-of-order", "Out of order", &out_of_order),
        ],
    );
    let ids = [
        sensor_id(&harness, &in_order).await,
        sensor_id(&harness, &out_of_order).await,
    ];
    // Whole seconds, as stored. Ten-minute readings: a quiet day up to three hours ago, then
    // (batch A) fifty minutes at Flood Warning level, then (batch B) quiet again up to now.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let at = |minutes_ago: i64| now - ChronoDuration::minutes(minutes_ago);
    let rows = |id: i32, minutes_ago, value| ten_minute_rows(id, now, minutes_ago, value);
    for id in ids {
        store_readings(&harness, &rows(id, 180..=24 * 60, 0.4)).await;
    }
    let mut config = config(&harness);
    config.analytics.flood_files = vec![flood_file.clone()];
    let analytics = start_analytics(&config).await;
    quiet(&analytics).await;
    let batch_a = |id| rows(id, 120..=170, 1.7);
    let batch_b = |id| rows(id, 0..=110, 0.4);
    store_readings(&harness, &batch_a(ids[0])).await;
    store_readings(&harness, &batch_b(ids[0])).await;
    store_readings(&harness, &batch_b(ids[1])).await;
    // Batch B is evaluated alone before batch A commits: nothing to record yet.
    quiet(&analytics).await;
    let events = |area: &'static str| {
        let store = harness.store.clone();
        async move {
            store
                .warning_events(area)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.kind, e.severity, e.at))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        events("out-of-order").await,
        [],
        "quiet readings alone raise nothing"
    );
    store_readings(&harness, &batch_a(ids[1])).await;
    quiet(&analytics).await;
    let expected = events("in-order").await;
    let kinds: Vec<(EventKind, Option<Severity>)> =
        expected.iter().map(|(k, s, _)| (*k, *s)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Raised, Some(Severity::Warning)),
            (EventKind::Lifted, Some(Severity::Warning))
        ],
        "batches in order: raised at the water and lifted after the hold: {expected:?}"
    );
    assert!(
        (at(170)..=at(120)).contains(&expected[0].2),
        "raised at the water: {expected:?}"
    );
    assert!(
        (at(110)..=now).contains(&expected[1].2),
        "lifted after the water fell: {expected:?}"
    );
    assert_eq!(events("out-of-order").await, expected);
    let _ = std::fs::remove_file(flood_file);
    analytics.stop().await;
    harness.finish().await;
}

/// Readings committed while the runner is busy are evaluated as soon as its turn ends, not after
/// another `analytics.debounce`: their notifications were gathered for as long as the turn took.
/// The runner's first turn waits for its area's lock, held here, while readings at Flood Warning
/// level commit; with a debounce of ten minutes and no sweep due, the warning still comes at once
/// after the lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_committed_during_a_turn_are_evaluated_as_soon_as_it_ends() {
    let harness = Harness::start().await;
    let key = sensor(0, 0);
    let id = sensor_id(&harness, &key).await;
    let flood_file = harbour_flood_file("busy-turn", &key);
    // Whole seconds, as stored. A quiet day of 10-minute readings up to an hour ago.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let rows = |minutes_ago, value| ten_minute_rows(id, now, minutes_ago, value);
    store_readings(&harness, &rows(60..=24 * 60, 0.4)).await;
    let mut config = config(&harness);
    config.analytics.flood_files = vec![flood_file.clone()];
    config.analytics.debounce = Duration::from_secs(600);
    config.analytics.sweep_interval = Duration::from_secs(3600);

    // The area's lock, as the runner takes it to record its evaluation.
    let mut locker = sql(&harness).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tidemark.area:' || 'harbour'))",
        &[],
    )
    .await
    .unwrap();
    let analytics = start_analytics(&config).await;
    let watcher = sql(&harness).await;
    let waiting = wait_for(Duration::from_secs(60), || async {
        let waiters: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND wait_event = 'advisory' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiters > 0
    })
    .await;
    assert!(waiting, "the runner's first turn waits for the area's lock");
    assert!(harness.store.warnings(None).await.unwrap().is_empty());

    // The water rises over the last fifty minutes, while the turn waits. The commit's
    // notification reaches every listener at once: once this one has it, so has the runner's.
    let mut listener = tidemark_store::notify::listen(
        &harness.settings(Default::default()).database,
        &[tidemark_store::coordination::Channel::ReadingsCommitted],
    )
    .await
    .unwrap();
    store_readings(&harness, &rows(0..=50, 1.7)).await;
    let notified = tokio::time::timeout(Duration::from_secs(30), listener.recv()).await;
    assert!(
        matches!(notified, Ok(Some(_))),
        "the readings' commit is announced"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();

    let raised = wait_for(Duration::from_secs(60), || async {
        !harness.store.warnings(None).await.unwrap().is_empty()
    })
    .await;
    assert!(
        raised,
        "the readings committed during the turn raise their warning without a debounce of 10 minutes"
    );
    let _ = std::fs::remove_file(flood_file);
    analytics.stop().await;
    harness.finish().await;
}
