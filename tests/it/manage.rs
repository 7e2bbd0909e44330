//! Management over the API: keys, devices, stations and sensors, with every action in the audit
//! log, and the roles that may and may not.

use crate::support::*;
use reqwest::Method;
use tidemark_store::keys::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_keys_utilities_manage_stations_and_the_audit_log_shows_who() {
    let harness = Harness::start().await;
    let api = Api::start(&harness, &config(&harness)).await;
    let operator = api.key(Role::Operator, None).await;
    let utility = api.key(Role::Utility, None).await;
    let researcher = api.key(Role::Researcher, None).await;

    // Keys: operators only.
    let new_key = serde_json::json!({"role": "municipality", "municipality": "0751", "label": "Aarhus beredskab", "expires_in": "30d"});
    for (key, expected) in [(None, 401), (Some(&researcher), 403), (Some(&utility), 403)] {
        let (status, _) = api
            .call(
                Method::POST,
                "/api/v1/keys",
                key.map(String::as_str),
                Some(new_key.clone()),
            )
            .await;
        assert_eq!(status, expected);
    }
    let (status, created) = api
        .call(Method::POST, "/api/v1/keys", Some(&operator), Some(new_key))
        .await;
    assert_eq!(status, 201, "{created}");
    let aarhus_key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "municipality");
    assert!(created["expires_at"].is_string());
    let (status, _) = api
        .call(Method::GET, "/api/v1/webhooks", Some(&aarhus_key), None)
        .await;
    assert_eq!(status, 200, "the new key works");
    let (status, listed) = api
        .call(Method::GET, "/api/v1/keys", Some(&operator), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none()),
        "keys are shown only once"
    );
    for (body, field) in [
        (serde_json::json!({"role": "mayor"}), "role"),
        (serde_json::json!({"role": "municipality"}), "municipality"),
        (
            serde_json::json!({"role": "researcher", "municipality": "0751"}),
            "municipality",
        ),
        (
            serde_json::json!({"role": "municipality", "municipality": "9999"}),
            "municipality",
        ),
        (
            serde_json::json!({"role": "researcher", "expires_in": "soon"}),
            "expires_in",
        ),
        (
            serde_json::json!({"role": "researcher", "admin": true}),
            "body",
        ),
    ] {
        let (status, problem) = api
            .call(Method::POST, "/api/v1/keys", Some(&operator), Some(body))
            .await;
        assert_eq!(
            (status, problem["parameter"].as_str()),
            (400, Some(field)),
            "{problem}"
        );
    }

    // Stations, devices and sensors: operators and utilities.
    let station = serde_json::json!({"name": "Aarhus Å, Mølleparken", "kind": "river_gauge", "lon": 10.2038, "lat": 56.1571, "municipality_code": "0751"});
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/stations/aarhus-moelleparken",
            Some(&aarhus_key),
            Some(station.clone()),
        )
        .await;
    assert_eq!(status, 403, "a municipality key does not edit stations");
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/stations/aarhus-moelleparken",
            Some(&utility),
            Some(station),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/devices/aarhus-logger-7",
            Some(&utility),
            Some(serde_json::json!({"name": "Logger 7"})),
        )
        .await;
    assert_eq!(status, 204);
    let sensor = serde_json::json!({"device": "aarhus-logger-7", "station": "aarhus-moelleparken", "quantity": "water_level", "expected_interval": "10m"});
    let (status, problem) = api
        .call(
            Method::PUT,
            "/api/v1/sensors/aarhus-moelleparken.level",
            Some(&utility),
            Some(sensor),
        )
        .await;
    assert_eq!(status, 204, "{problem}");
    let (_, shown) = api
        .call(
            Method::GET,
            "/api/v1/stations/aarhus-moelleparken",
            None,
            None,
        )
        .await;
    assert_eq!(shown["name"], "Aarhus Å, Mølleparken");
    assert_eq!(shown["municipality"], "0751");
    assert_eq!(shown["sensors"][0]["key"], "aarhus-moelleparken.level");
    for (path, body, field) in [
        (
            "/api/v1/stations/x",
            serde_json::json!({"name": "x", "kind": "river_gauge", "lon": 200.0, "lat": 56.0}),
            "lon",
        ),
        (
            "/api/v1/stations/x",
            serde_json::json!({"name": "x", "kind": "river_gauge", "lon": 10.0, "lat": 56.0, "municipality_code": "9999"}),
            "municipality_code",
        ),
        (
            "/api/v1/sensors/x.level",
            serde_json::json!({"device": "nobody", "quantity": "water_level", "expected_interval": "10m"}),
            "body",
        ),
        (
            "/api/v1/sensors/x.level",
            serde_json::json!({"device": "aarhus-logger-7", "quantity": "happiness", "expected_interval": "10m"}),
            "body",
        ),
        (
            "/api/v1/sensors/x.level",
            serde_json::json!({"device": "aarhus-logger-7", "quantity": "water_level", "expected_interval": "often"}),
            "expected_interval",
        ),
    ] {
        let (status, problem) = api
            .call(Method::PUT, path, Some(&utility), Some(body))
            .await;
        assert_eq!(
            (status, problem["parameter"].as_str()),
            (400, Some(field)),
            "{path}: {problem}"
        );
    }

    // Revocation, and the log of it all.
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{prefix}"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(Method::GET, "/api/v1/webhooks", Some(&aarhus_key), None)
        .await;
    assert_eq!(status, 401, "a revoked key is refused");
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{prefix}"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (status, _) = api
        .call(Method::GET, "/api/v1/audit", Some(&utility), None)
        .await;
    assert_eq!(status, 403);
    let (status, log) = api
        .call(
            Method::GET,
            "/api/v1/audit?limit=100",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let entries: Vec<(String, String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let operator_prefix = operator[4..16].to_owned();
    let utility_prefix = utility[4..16].to_owned();
    for expected in [
        (
            "key.revoke".to_owned(),
            operator_prefix.clone(),
            format!("key {prefix}"),
        ),
        (
            "sensor.put".to_owned(),
            utility_prefix.clone(),
            "sensor aarhus-moelleparken.level".to_owned(),
        ),
        (
            "device.put".to_owned(),
            utility_prefix.clone(),
            "device aarhus-logger-7".to_owned(),
        ),
        (
            "station.put".to_owned(),
            utility_prefix,
            "station aarhus-moelleparken".to_owned(),
        ),
        (
            "key.create".to_owned(),
            operator_prefix,
            format!("key {prefix}"),
        ),
    ] {
        assert!(entries.contains(&expected), "{expected:?} in {entries:?}");
    }
    let count = |action: &str| entries.iter().filter(|(a, ..)| a == action).count();
    assert_eq!(
        (count("station.put"), count("sensor.put")),
        (1, 1),
        "refused and failed changes leave no entry (a failed change rolls its entry back)"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_refuses_no_key_a_dead_key_and_the_wrong_role() {
    let harness = Harness::start().await;
    let api = Api::start(&harness, &config(&harness)).await;
    let researcher = api.key(Role::Researcher, None).await;
    let utility = api.key(Role::Utility, None).await;
    // Operator keys, which could do all of it, but one has expired and one is revoked.
    let cli = tidemark_api::auth::Actor::cli();
    let (expired, _) = tidemark_api::auth::create_key(
        &harness.store,
        Role::Operator,
        None,
        "expired".into(),
        Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        &cli,
    )
    .await
    .unwrap();
    let (revoked, row) = tidemark_api::auth::create_key(
        &harness.store,
        Role::Operator,
        None,
        "revoked".into(),
        None,
        &cli,
    )
    .await
    .unwrap();
    assert!(harness
        .store
        .revoke_api_key(
            &row.prefix,
            chrono::Utc::now(),
            &cli.audit("key.revoke", String::new(), serde_json::json!({}))
        )
        .await
        .unwrap());
    let json = serde_json::json!({});
    // (method, path, a role that may not)
    let routes: [(Method, &str, &str); 24] = [
        (Method::POST, "/api/v1/keys", &utility),
        (Method::GET, "/api/v1/keys", &utility),
        (Method::DELETE, "/api/v1/keys/0123456789ab", &utility),
        (Method::GET, "/api/v1/audit", &utility),
        (Method::PUT, "/api/v1/thresholds/s.level", &utility),
        (Method::PUT, "/api/v1/flood-areas/a", &utility),
        (Method::PUT, "/api/v1/rain-rules/s.rain", &utility),
        (Method::POST, "/api/v1/circular/material-flows", &researcher),
        (Method::PUT, "/api/v1/quality-rules/s.level", &researcher),
        (Method::PUT, "/api/v1/circular/containers/c", &researcher),
        (
            Method::PUT,
            "/api/v1/municipalities/0751/population",
            &utility,
        ),
        (
            Method::PUT,
            "/api/v1/utilities/leak-rules/w.flow",
            &researcher,
        ),
        (Method::PUT, "/api/v1/devices/d", &researcher),
        (Method::POST, "/api/v1/devices/d/credentials", &researcher),
        (Method::GET, "/api/v1/devices/d/credentials", &researcher),
        (
            Method::DELETE,
            "/api/v1/devices/d/credentials/1",
            &researcher,
        ),
        (Method::PUT, "/api/v1/stations/s", &researcher),
        (Method::PUT, "/api/v1/sensors/s.level", &researcher),
        (Method::POST, "/api/v1/webhooks", &researcher),
        (Method::GET, "/api/v1/webhooks", &researcher),
        (Method::GET, "/api/v1/webhooks/1", &researcher),
        (Method::DELETE, "/api/v1/webhooks/1", &researcher),
        (
            Method::POST,
            "/api/v1/webhooks/1/rotate-secret",
            &researcher,
        ),
        (Method::POST, "/api/v1/warnings/1/ack", &utility),
    ];
    for (method, path, wrong_role) in routes {
        let body = (method != Method::GET && method != Method::DELETE).then(|| json.clone());
        let (status, problem) = api.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key: {problem}");
        let (status, _) = api
            .call(
                method.clone(),
                path,
                Some("tmk_0123456789ab_wrong"),
                body.clone(),
            )
            .await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
        for (what, key) in [("an expired", &expired), ("a revoked", &revoked)] {
            let (status, _) = api
                .call(method.clone(), path, Some(key), body.clone())
                .await;
            assert_eq!(status, 401, "{method} {path} with {what} key");
        }
        let (status, problem) = api.call(method.clone(), path, Some(wrong_role), body).await;
        assert_eq!(
            status, 403,
            "{method} {path} with the wrong role: {problem}"
        );
    }
    // Without api.device_credentials, an operator is told this installation does not issue
    // device credentials, and nothing is recorded.
    let operator = api.key(Role::Operator, None).await;
    let (status, problem) = api
        .call(
            Method::POST,
            &format!("/api/v1/devices/{}/credentials", device(0)),
            Some(&operator),
            Some(serde_json::json!({"kind": "password"})),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    let (status, list) = api
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/credentials", device(0)),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!((status, list), (200, serde_json::json!([])));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_changed_over_the_api_takes_effect_in_running_analytics() {
    use chrono::{Duration as ChronoDuration, SubsecRound, Utc};
    use std::time::Duration;
    let harness = Harness::start().await;
    let config = with_stations(&harness).await;
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let analytics = start_analytics(&config).await;

    // Two hours at 0.80 m: under Flensburg's 1.00 m Flood Alert level.
    let id = sensor_id(&harness, "flensburg.sea_level").await;
    let now = Utc::now().trunc_subsecs(0);
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..12)
        .map(|i| tidemark_store::readings::ReadingRow {
            sensor_id: id,
            ts: now - ChronoDuration::minutes(10 * (11 - i)),
            value: 0.8,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    let evaluated = wait_for(Duration::from_secs(20), || async {
        analytics.metrics.evaluations.get() > 0
    })
    .await;
    assert!(evaluated);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        harness
            .store
            .warning_events("flensburg-fjord")
            .await
            .unwrap()
            .is_empty(),
        "0.80 m raises nothing at first"
    );

    let lower = |alert: f64| {
        serde_json::json!({
            "alert": alert, "warning": 1.5, "severe": 2.0, "persistence": "0s", "min_readings": 1,
            "hysteresis": 0.1, "hold": "1h", "rate_window": "1h", "lead_time": "0s",
            "plausible_low": -3.0, "plausible_high": 4.0, "spike_floor": 0.3,
        })
    };
    let (status, problem) = api
        .call(
            Method::PUT,
            "/api/v1/thresholds/flensburg.sea_level",
            Some(&operator),
            Some(lower(1.7)),
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("warning"))
    );
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/thresholds/nowhere.level",
            Some(&operator),
            Some(lower(0.5)),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/thresholds/flensburg.sea_level",
            Some(&operator),
            Some(lower(0.5)),
        )
        .await;
    assert_eq!(status, 204);
    let raised = wait_for(Duration::from_secs(30), || async {
        harness
            .store
            .warning_events("flensburg-fjord")
            .await
            .unwrap()
            .iter()
            .any(|e| {
                e.kind == "raised" && e.severity == Some(tidemark_model::warning::Severity::Alert)
            })
    })
    .await;
    assert!(
        raised,
        "the lowered Flood Alert level raises a warning without a restart"
    );
    let (_, station) = api
        .call(Method::GET, "/api/v1/stations/flensburg", None, None)
        .await;
    assert_eq!(station["thresholds"][0]["alert"], 0.5);
    analytics.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_define_flood_areas_and_everyone_can_list_them() {
    let harness = Harness::start().await;
    let config = with_stations(&harness).await;
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let area = |polygon: serde_json::Value, municipalities: serde_json::Value, sensor: &str| {
        serde_json::json!({
            "name": "Kappeln harbour", "polygon": polygon, "sensors": [sensor],
            "municipalities": municipalities,
            "upstream": [{"sensor": "flensburg.sea_level", "travel_time": "2h"}],
        })
    };
    let square = serde_json::json!([[9.93, 54.66], [9.95, 54.66], [9.95, 54.67], [9.93, 54.67]]);
    for (body, field) in [
        (
            area(
                serde_json::json!([[9.93, 54.66], [9.95, 54.66]]),
                serde_json::json!(["0580"]),
                "kappeln.sea_level",
            ),
            "polygon",
        ),
        (
            area(
                serde_json::json!([[954.0, 54.66], [9.95, 54.66], [9.95, 54.67]]),
                serde_json::json!(["0580"]),
                "kappeln.sea_level",
            ),
            "polygon",
        ),
        (
            area(square.clone(), serde_json::json!([]), "kappeln.sea_level"),
            "municipalities",
        ),
        (
            area(
                square.clone(),
                serde_json::json!(["9999"]),
                "kappeln.sea_level",
            ),
            "municipalities",
        ),
        (
            area(
                square.clone(),
                serde_json::json!(["0580"]),
                "atlantis.level",
            ),
            "sensors",
        ),
    ] {
        let (status, problem) = api
            .call(
                Method::PUT,
                "/api/v1/flood-areas/kappeln-harbour",
                Some(&operator),
                Some(body),
            )
            .await;
        assert_eq!(
            (status, problem["parameter"].as_str()),
            (400, Some(field)),
            "{problem}"
        );
    }
    let (status, problem) = api
        .call(
            Method::PUT,
            "/api/v1/flood-areas/kappeln-harbour",
            Some(&operator),
            Some(area(
                square,
                serde_json::json!(["0580"]),
                "kappeln.sea_level",
            )),
        )
        .await;
    assert_eq!(status, 204, "{problem}");

    let (status, areas) = api
        .call(Method::GET, "/api/v1/flood-areas", None, None)
        .await;
    assert_eq!(status, 200);
    let kappeln = areas
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "kappeln-harbour")
        .expect("the new area is listed");
    assert_eq!(kappeln["sensors"], serde_json::json!(["kappeln.sea_level"]));
    assert_eq!(kappeln["municipalities"], serde_json::json!(["0580"]));
    assert_eq!(kappeln["upstream"][0]["travel_time_seconds"], 7200);
    let ring = kappeln["polygon"]["coordinates"][0].as_array().unwrap();
    assert_eq!(ring.len(), 5, "the outline is closed");
    assert!(kappeln["warning_severity"].is_null());
    let (status, content_type, body) = api.text("/api/v1/flood-areas?format=geojson").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/geo+json")
    );
    let geo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(geo["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == "kappeln-harbour" && f["geometry"]["type"] == "Polygon"));
    let (_, log) = api
        .call(Method::GET, "/api/v1/audit", Some(&operator), None)
        .await;
    assert_eq!(log[0]["action"], "flood-area.put");
    assert_eq!(log[0]["target"], "flood area kappeln-harbour");
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rain_rules_changed_over_the_api_take_effect_in_running_analytics() {
    use chrono::{Duration as ChronoDuration, SubsecRound, Utc};
    use std::time::Duration;
    let harness = Harness::start().await;
    let config = with_stations(&harness).await;
    let api = Api::start(&harness, &config).await;
    let operator = api.key(Role::Operator, None).await;
    let put = |path: &str, body: serde_json::Value| {
        let (api, operator, path) = (&api, operator.clone(), path.to_owned());
        async move {
            api.call(Method::PUT, &path, Some(&operator), Some(body))
                .await
        }
    };
    // The Viby rain gauge of the Aarhus flood area, registered over the API.
    let (status, _) = put(
        "/api/v1/devices/aarhus-viby",
        serde_json::json!({"name": "Viby"}),
    )
    .await;
    assert_eq!(status, 204);
    let (status, problem) = put(
        "/api/v1/sensors/aarhus-viby.rainfall",
        serde_json::json!({"device": "aarhus-viby", "quantity": "rainfall", "expected_interval": "10m"}),
    )
    .await;
    assert_eq!(status, 204, "{problem}");

    // Bad rules are refused, naming the field.
    let rules = |window: &str, mm: f64, severity: &str| serde_json::json!({"rules": [{"window": window, "more_than_mm": mm, "severity": severity}]});
    let path = "/api/v1/rain-rules/aarhus-viby.rainfall";
    for (body, field) in [
        (rules("0s", 10.0, "alert"), "window"),
        (rules("8d", 10.0, "alert"), "window"),
        (rules("soon", 10.0, "alert"), "window"),
        (rules("1h", -1.0, "alert"), "more_than_mm"),
        (rules("1h", 10.0, "huge"), "severity"),
        (
            serde_json::json!({"rules": [
                {"window": "1h", "more_than_mm": 10, "severity": "alert"},
                {"window": "60m", "more_than_mm": 20, "severity": "warning"}]}),
            "window",
        ),
        (serde_json::json!({"rules": [], "extra": 1}), "body"),
    ] {
        let (status, problem) = put(path, body.clone()).await;
        assert_eq!(
            (status, problem["parameter"].as_str()),
            (400, Some(field)),
            "{body}: {problem}"
        );
    }
    let (status, problem) = put(
        "/api/v1/rain-rules/flensburg.sea_level",
        rules("1h", 10.0, "alert"),
    )
    .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("sensor"))
    );
    let (status, _) = put(
        "/api/v1/rain-rules/nowhere.rainfall",
        rules("1h", 10.0, "alert"),
    )
    .await;
    assert_eq!(status, 404);

    let analytics = start_analytics(&config).await;
    // 2 mm every 10 minutes for an hour: 12 mm, under DMI's 15 mm in 30 minutes and 24 mm in 6 hours.
    let id = sensor_id(&harness, "aarhus-viby.rainfall").await;
    let now = Utc::now().trunc_subsecs(0);
    let rows: Vec<tidemark_store::readings::ReadingRow> = (0..6)
        .map(|i| tidemark_store::readings::ReadingRow {
            sensor_id: id,
            ts: now - ChronoDuration::minutes(10 * (5 - i)),
            value: 2.0,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    assert!(
        wait_for(Duration::from_secs(20), || async {
            analytics.metrics.evaluations.get() > 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raised = || async {
        harness
            .store
            .warning_events("aarhus-aa-city")
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == "raised")
    };
    assert!(
        !raised().await,
        "12 mm in an hour raises nothing by DMI's rules"
    );

    let (status, _) = put(path, rules("1h", 10.0, "alert")).await;
    assert_eq!(status, 204);
    assert!(
        wait_for(Duration::from_secs(30), raised).await,
        "more than 10 mm in an hour, by the new rule, raises a rain alert without a restart"
    );
    let (status, listed) = api
        .call(Method::GET, "/api/v1/rain-rules", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        serde_json::json!([{"sensor": "aarhus-viby.rainfall",
            "rules": [{"window": "1h", "more_than_mm": 10.0, "severity": "alert"}]}])
    );
    let (_, audit) = api
        .call(Method::GET, "/api/v1/audit", Some(&operator), None)
        .await;
    assert!(audit.to_string().contains("rain_rules.put"));

    // An empty list returns the gauge to the default rules.
    let (status, _) = put(path, serde_json::json!({"rules": []})).await;
    assert_eq!(status, 204);
    let (_, listed) = api
        .call(Method::GET, "/api/v1/rain-rules", None, None)
        .await;
    assert_eq!(listed, serde_json::json!([]));
    analytics.stop().await;
    harness.finish().await;
}
