//! The API's contract of routes: every operation it has always offered is both in the OpenAPI
//! document and served (never the fallback's 404 nor a 405), and the document offers nothing more.

use crate::support::*;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Every operation of the API, as clients know it.
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/stations"),
    ("GET", "/api/v1/stations/{key}"),
    ("PUT", "/api/v1/stations/{key}"),
    ("PUT", "/api/v1/devices/{key}"),
    ("GET", "/api/v1/devices/{key}/credentials"),
    ("POST", "/api/v1/devices/{key}/credentials"),
    ("DELETE", "/api/v1/devices/{key}/credentials/{id}"),
    ("PUT", "/api/v1/sensors/{key}"),
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/{prefix}"),
    ("PUT", "/api/v1/thresholds/{sensor}"),
    ("GET", "/api/v1/rain-rules"),
    ("PUT", "/api/v1/rain-rules/{sensor}"),
    ("GET", "/api/v1/quality-rules"),
    ("PUT", "/api/v1/quality-rules/{sensor}"),
    ("GET", "/api/v1/circular/material-flows"),
    ("POST", "/api/v1/circular/material-flows"),
    ("GET", "/api/v1/circular/statistics"),
    ("GET", "/api/v1/circular/flows"),
    ("GET", "/api/v1/circular/containers"),
    ("PUT", "/api/v1/circular/containers/{key}"),
    ("GET", "/api/v1/circular/collections"),
    ("GET", "/api/v1/circular/overflows"),
    ("GET", "/api/v1/utilities/sensors/{key}/summary"),
    ("GET", "/api/v1/utilities/sensors/{key}/load-duration"),
    ("GET", "/api/v1/utilities/sensors/{key}/night-flow"),
    ("PUT", "/api/v1/utilities/leak-rules/{sensor}"),
    ("GET", "/api/v1/utilities/leaks"),
    ("GET", "/api/v1/utilities/alerts"),
    ("GET", "/api/v1/utilities/alerts/{id}"),
    ("GET", "/api/v1/utilities/consumption"),
    ("GET", "/api/v1/utilities/self-consumption"),
    ("GET", "/api/v1/flood-areas"),
    ("PUT", "/api/v1/flood-areas/{key}"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/latest"),
    ("GET", "/api/v1/municipalities"),
    ("GET", "/api/v1/municipalities/{code}"),
    ("PUT", "/api/v1/municipalities/{code}/population"),
    ("GET", "/api/v1/sensors/{key}/readings"),
    ("GET", "/api/v1/warnings"),
    ("GET", "/api/v1/warnings.atom"),
    ("GET", "/api/v1/warnings/stream"),
    ("GET", "/api/v1/warnings/{id}"),
    ("POST", "/api/v1/warnings/{id}/ack"),
    ("GET", "/api/v1/warning-events/{file}"),
    ("GET", "/api/v1/verification"),
    ("POST", "/api/v1/forecasts"),
    ("GET", "/api/v1/sensors/{key}/forecasts"),
    ("GET", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/{id}"),
    ("DELETE", "/api/v1/webhooks/{id}"),
    ("POST", "/api/v1/webhooks/{id}/rotate-secret"),
    ("GET", "/sta/v1.1"),
    ("GET", "/sta/v1.1/{path}"),
    ("POST", "/sta/v1.1/{path}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_documented_and_served_and_the_document_offers_no_other() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_base = format!("http://{}", ops_listener.local_addr().unwrap());
    let ops = tidemark_api::ops_router(tidemark_api::OpsState {
        store: harness.store.clone(),
        broker: config.mqtt.clone(),
        registry: Arc::new(prometheus_client::registry::Registry::default()),
    });
    tokio::spawn(tidemark_api::serve(ops_listener, ops, api.shutdown.clone()));

    let text = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not part of the contract"
    );
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "part of the contract but not documented"
    );

    for (method, path) in OPERATIONS {
        // Path parameters get values no resource has: the route must still be found.
        let concrete = path
            .replace("{file}", "1.cap")
            .replace("{id}", "1")
            .replace("{path}", "Things(1)/Datastreams")
            .replace(['{', '}'], "");
        let base = if path.starts_with("/api/") || path.starts_with("/sta/") {
            &api.base
        } else {
            &ops_base
        };
        let request = api
            .http
            .request(method.parse().unwrap(), format!("{base}{concrete}"));
        let request = if *method == "GET" || *method == "DELETE" {
            request
        } else {
            request
                .header("content-type", "application/json")
                .body("{}")
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        // The event stream answers with headers and then holds on: nothing more to read here.
        let body = if path.ends_with("/stream") {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        assert_ne!(status, 405, "{method} {path} is not routed: {body}");
        assert!(
            !(status == 404 && body.contains("this resource")),
            "{method} {path} fell through to the fallback: {body}"
        );
    }
    api.shutdown.cancel();
    harness.finish().await;
}
