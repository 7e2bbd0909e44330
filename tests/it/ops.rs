//! The operational endpoints: health, readiness and metrics over real HTTP.

use crate::support::*;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::OpsState;
use tidemark_ingest::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A minimal HTTP/1.1 GET: returns the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let harness = Harness::start().await;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let broker = harness.broker_config();
    let router = tidemark_api::ops_router(OpsState {
        store: harness.store.clone(),
        broker: broker.clone(),
        registry: Arc::new(registry),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tidemark_api::serve(listener, router, shutdown.clone()));

    // Ingest counts into the registry the endpoint serves.
    let settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-ops".into(),
        ..Default::default()
    });
    let ingest_shutdown = CancellationToken::new();
    let ingest = tokio::spawn(tidemark_ingest::run(
        settings,
        metrics.clone(),
        ingest_shutdown.clone(),
    ));
    let subscribed = wait_for(Duration::from_secs(20), || async {
        metrics.subscribed.get() == 1
    })
    .await;
    assert!(subscribed);
    let ts = rfc3339(chrono::Utc::now());
    publish(
        &broker,
        vec![
            (
                topic(&device(0)),
                format!(
                    r#"{{"sensor":"{}","ts":"{ts}","value":1,"unit":"m"}}"#,
                    sensor(0, 0)
                )
                .into_bytes(),
            ),
            (topic(&device(0)), b"nonsense".to_vec()),
        ],
    )
    .await;
    let counted = wait_for(Duration::from_secs(20), || async {
        metrics.batches.get() > 0 && metrics.rejected_count("malformed") == 1
    })
    .await;
    assert!(counted);

    assert_eq!(get(port, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    // With TimescaleDB, its jobs are reported too (failing ones do not make the service unready:
    // maintenance runs them).
    match harness.store.mode() {
        tidemark_store::StorageMode::TimescaleDb => assert!(
            body.starts_with("database: ok\nbroker: ok\ntimescaledb jobs: "),
            "{body}"
        ),
        _ => assert_eq!(body, "database: ok\nbroker: ok\n"),
    }
    let (status, body) = get(port, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "tidemark_ingest_messages_received_total 2",
        "tidemark_ingest_readings_stored_total 1",
        "tidemark_ingest_rejected_total{reason=\"malformed\"} 1",
        "tidemark_ingest_rejected_total{reason=\"future\"} 0",
        "tidemark_ingest_subscribed 1",
        "tidemark_ingest_batch_seconds_count",
    ] {
        assert!(body.contains(line), "/metrics has {line}:\n{body}");
    }

    ingest_shutdown.cancel();
    ingest.await.unwrap().unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();

    // Pointed at a port where no broker listens, the service is alive but not ready.
    let nowhere = tidemark_model::broker::BrokerConfig {
        port: tidemark_testkit::free_port().unwrap(),
        ..broker
    };
    let router = tidemark_api::ops_router(OpsState {
        store: harness.store.clone(),
        broker: nowhere,
        registry: Arc::new(Registry::default()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tidemark_api::serve(listener, router, shutdown.clone()));
    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("database: ok\nbroker: unreachable\n"),
        "{body}"
    );
    assert_eq!(get(port, "/healthz").await.0, 200);
    shutdown.cancel();
    server.await.unwrap().unwrap();
    harness.finish().await;
}

/// With `api.ops_listen`, `/metrics`, `/readyz` and `/healthz` are served there and not on the
/// public address, which serves the API alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_routes_can_have_an_address_of_their_own() {
    let harness = Harness::start().await;
    let database = harness.settings(Default::default()).database;
    let api_port = tidemark_testkit::free_port().unwrap();
    let ops_port = tidemark_testkit::free_port().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("--config")
        .arg(format!("{root}/config/default.toml"))
        .arg("api")
        .env("RUST_LOG", "warn")
        .env("TIDEMARK__DATABASE__URL", &database.url)
        .env("TIDEMARK__MQTT__PORT", harness.broker.port.to_string())
        .env("TIDEMARK__API__LISTEN", format!("127.0.0.1:{api_port}"))
        .env("TIDEMARK__API__OPS_LISTEN", format!("127.0.0.1:{ops_port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up = wait_for(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", ops_port))
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", api_port))
                .await
                .is_ok()
    })
    .await;
    assert!(up, "both addresses listen");
    let (status, body) = get(ops_port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("tidemark_"), "{body}");
    // The API's own figures are there too: the written buckets it keeps, none yet.
    for line in [
        "tidemark_api_written_buckets_hits_total 0",
        "tidemark_api_written_buckets_misses_total 0",
        "tidemark_api_written_buckets_bytes 0",
    ] {
        assert!(body.contains(line), "/metrics has {line}:\n{body}");
    }
    assert_eq!(get(ops_port, "/readyz").await.0, 200);
    assert_eq!(get(ops_port, "/healthz").await.0, 200);
    assert_eq!(get(ops_port, "/api/v1/stations").await.0, 404);
    assert_eq!(get(api_port, "/metrics").await.0, 404);
    assert_eq!(get(api_port, "/readyz").await.0, 404);
    assert_eq!(get(api_port, "/api/v1/stations").await.0, 200);
    api.kill().await.unwrap();
    harness.finish().await;
}
