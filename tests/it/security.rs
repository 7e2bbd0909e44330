//! Device security against a Mosquitto started from the shipped `config/mosquitto.conf` and
//! `config/mosquitto.acl`: every client logs in, device passwords travel only over TLS, a device
//! publishes only to its own readings topic and reads nobody's, no device can take over another
//! client's session, only the API writes alerts, and ingest checks each reading's sensor against
//! the topic's device besides.

use crate::support::*;
use chrono::Utc;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use std::time::Duration;
use tidemark_testkit::Broker;

const INGEST_PASSWORD: &str = "ingest-password";

fn client(port: u16, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    AsyncClient::new(options, 16)
}

/// The broker's answer to a connection attempt.
async fn connect(events: &mut EventLoop) -> Result<(), String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return match ack.code {
                    ConnectReturnCode::Success => Ok(()),
                    code => Err(format!("{code:?}")),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("no answer".into()),
        }
    }
}

/// Polls until the broker acknowledges `n` publications (PUBACK) or subscriptions (SUBACK);
/// returns the SUBACK return codes seen.
async fn acknowledged(events: &mut EventLoop, mut n: usize) -> Vec<String> {
    let mut codes = Vec::new();
    while n > 0 {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => n -= 1,
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                codes.extend(ack.return_codes.iter().map(|c| format!("{c:?}")));
                n -= 1;
            }
            Ok(Ok(_)) => {}
            other => panic!("waiting for acknowledgements: {other:?}"),
        }
    }
    codes
}

fn reading(sensor_key: &str, ts: chrono::DateTime<Utc>) -> Vec<u8> {
    format!(
        r#"{{"sensor":"{sensor_key}","ts":"{}","value":1.25,"unit":"m"}}"#,
        rfc3339(ts)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_only_as_itself_and_reads_no_one_elses_readings() {
    let (a, b) = (device(0), device(1));
    let broker = Broker::start_secure(
        &[("tidemark-ingest", INGEST_PASSWORD)],
        &[(&a, "password-a"), (&b, "password-b")],
    )
    .await
    .unwrap();
    let (services_port, port) = (broker.port, broker.device_port.expect("a device listener"));
    let ca = broker.ca_file();
    let harness = Harness::with_broker(broker).await;
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-secure".into(),
        ..Default::default()
    });
    settings.mqtt.username = Some("tidemark-ingest".into());
    settings.mqtt.password = Some(tidemark_model::secret::Secret::new(INGEST_PASSWORD));
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("ingest-secure").await;

    // No login, a wrong password, and a device's name with another's password: refused. On the
    // services' listener (loopback) a device's login asking for ingest's client id is refused:
    // the broker ties a device's login to its key as client id. Plain TCP does not reach the
    // devices' listener.
    let (_, mut anonymous) = tls_client(port, "anonymous", &ca, None, None);
    assert!(connect(&mut anonymous).await.is_err());
    let (_, mut wrong) = tls_client(port, "wrong", &ca, None, Some((&a, "password-b")));
    assert!(connect(&mut wrong).await.is_err());
    let (_, mut services) = client(services_port, "tidemark-ingest", Some((&a, "password-a")));
    assert!(connect(&mut services).await.is_err());
    let (_, mut plain) = client(port, "device-a", Some((&a, "password-a")));
    assert!(connect(&mut plain).await.is_err());

    // Device A, logged in, publishes a reading of B's sensor on B's topic (the broker drops it),
    // one of B's sensor on its own topic (ingest rejects it), then one of its own.
    let (device_a, mut events_a) =
        tls_client(port, "device-a", &ca, None, Some((&a, "password-a")));
    connect(&mut events_a).await.unwrap();
    let base = Utc::now() - chrono::Duration::hours(1);
    let impostor = chrono::Duration::seconds(1);
    for (topic_of, sensor_key, offset) in [
        (&b, sensor(1, 0), impostor),
        (&a, sensor(1, 1), chrono::Duration::seconds(2)),
        (&a, sensor(0, 0), chrono::Duration::seconds(3)),
    ] {
        device_a
            .publish(
                topic(topic_of),
                QoS::AtLeastOnce,
                false,
                reading(&sensor_key, base + offset),
            )
            .await
            .unwrap();
    }
    acknowledged(&mut events_a, 3).await;
    assert_eq!(
        harness.settle(1, Duration::from_secs(20)).await,
        1,
        "only A's own reading of its own sensor is stored"
    );
    let client_sql = sql(&harness).await;
    let rejected: Vec<(String, String)> = client_sql
        .query(
            "SELECT topic, reason_code FROM rejected_messages ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rejected,
        [(topic(&a), "wrong_device".to_owned())],
        "B's sensor on A's topic is refused by ingest; B's topic never reached it"
    );

    // A subscribes to B's readings and hears nothing of what B publishes, though ingest does.
    device_a
        .subscribe(topic(&b), QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = acknowledged(&mut events_a, 1).await;
    let (device_b, mut events_b) =
        tls_client(port, "device-b", &ca, None, Some((&b, "password-b")));
    connect(&mut events_b).await.unwrap();
    device_b
        .publish(
            topic(&b),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(1, 0), base + impostor),
        )
        .await
        .unwrap();
    acknowledged(&mut events_b, 1).await;
    assert_eq!(harness.settle(2, Duration::from_secs(20)).await, 2);
    // By the time ingest has stored it the broker has routed it to every subscriber; what A
    // would have received is already on its connection.
    let heard = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events_a.poll().await {
                return p.topic;
            }
        }
    })
    .await;
    assert!(heard.is_err(), "A heard {heard:?} (SUBACK {codes:?})");
    ingest.stop().await;
    harness.finish().await;
}

/// Hostile requests: a NUL character in a parameter or a body, SQL injection and path traversal
/// probes, and oversized bodies and query strings. Each gets a 4xx problem, none a 5xx, and
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_4xx_and_change_nothing() {
    use reqwest::Method;
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let operator = api.key(tidemark_store::keys::Role::Operator, None).await;
    let client = sql(&harness).await;
    let snapshot = || async {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM stations), (SELECT count(*) FROM sensors), \
                 (SELECT count(*) FROM api_keys), (SELECT count(*) FROM audit_log), \
                 to_regclass('readings') IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
            row.get::<_, bool>(4),
        )
    };
    let before = snapshot().await;

    let station = |name: &str| serde_json::json!({"name": name, "kind": "river_gauge", "lon": 10.2, "lat": 56.1, "municipality_code": "0751"});
    let probes: Vec<(Method, String, Option<serde_json::Value>, &[u16])> = vec![
        // A NUL character, which PostgreSQL cannot store in text: the request's fault.
        (
            Method::GET,
            "/api/v1/utilities/self-consumption?production=%00&export=x".into(),
            None,
            &[400],
        ),
        (
            Method::GET,
            "/api/v1/stations/a%00b".into(),
            None,
            &[400, 404],
        ),
        (
            Method::PUT,
            "/api/v1/stations/nul-station".into(),
            Some(station("Aarhus\u{0}Å")),
            &[400],
        ),
        // SQL injection: parameters are bound, never spliced, so these are just strange keys.
        (
            Method::GET,
            "/api/v1/stations/x'%20OR%20'1'='1".into(),
            None,
            &[404],
        ),
        (
            Method::GET,
            "/api/v1/sensors/x';%20DROP%20TABLE%20readings;--/readings".into(),
            None,
            &[400, 404],
        ),
        (
            Method::GET,
            "/api/v1/warnings?municipality=0751'%20OR%201=1--".into(),
            None,
            &[200],
        ),
        (
            Method::DELETE,
            "/api/v1/keys/x'%20OR%20'1'='1".into(),
            None,
            &[400, 404],
        ),
        (
            Method::PUT,
            "/api/v1/stations/x';DROP%20TABLE%20stations;--".into(),
            Some(station("x")),
            &[400],
        ),
        // Path traversal: nothing is served from the file system.
        (
            Method::GET,
            "/api/v1/stations/..%2F..%2F..%2Fetc%2Fpasswd".into(),
            None,
            &[404],
        ),
        (
            Method::GET,
            "/api/v1/docs/../../Cargo.toml".into(),
            None,
            &[404],
        ),
        (
            Method::GET,
            "/api/v1/warning-events/..%2F..%2Fconfig%2Fdefault.toml".into(),
            None,
            &[404],
        ),
    ];
    for (method, path, body, allowed) in probes {
        let (status, problem) = api.call(method.clone(), &path, Some(&operator), body).await;
        assert!(
            allowed.contains(&status),
            "{method} {path}: {status} {problem}"
        );
        if status >= 400 {
            assert!(
                problem["detail"].is_string(),
                "{method} {path}: a problem body"
            );
        }
    }

    // Bounded bodies and query strings.
    let huge = "x".repeat(3 * 1024 * 1024);
    let response = api
        .http
        .post(api.url("/api/v1/circular/material-flows"))
        .bearer_auth(&operator)
        .header("content-type", "application/json")
        .body(format!(r#"{{"records": [], "note": "{huge}"}}"#))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!([400, 413].contains(&status), "a 3 MB body: {status}");
    // A query string of 1 MB, sent raw (HTTP clients refuse to build one): refused before any
    // handler sees it.
    let status_line = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = api.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!(
            "GET /api/v1/stations?kind={} HTTP/1.1\r\nhost: localhost\r\n\r\n",
            "k".repeat(1024 * 1024)
        );
        // The server may close the connection before it has read everything.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = vec![0u8; 64];
        let n = stream.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        (400..500).contains(&status) || status_line.is_empty(),
        "a 1 MB query: {status_line:?}"
    );

    assert_eq!(snapshot().await, before, "nothing changed");
    harness.finish().await;
}

/// Secrets never reach the logs: `tidemark api` runs as its own process at debug level with canary
/// values for the database and broker passwords, is called with a canary API key (valid, and
/// forged), makes a key and a webhook secret, and afterwards none of them is anywhere in what it
/// wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_logs() {
    let harness = Harness::start().await;
    let database = harness.settings(Default::default()).database;
    let port = tidemark_testkit::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let operator = tidemark_api::auth::create_key(
        &harness.store,
        tidemark_store::keys::Role::Operator,
        None,
        "canary".into(),
        None,
        &tidemark_api::auth::Actor::cli(),
    )
    .await
    .unwrap()
    .0;
    let database_password = "canary-database-password-5e1f";
    let broker_password = "canary-broker-password-9a3c";
    // The operator key's prefix with a secret of our own: looked up, and refused.
    let forged_key = format!(
        "{}_canaryForgedSecretcanaryForgedSecret0123456",
        &operator[..16]
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let log_path = std::env::temp_dir().join(format!("tidemark-canary-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("--config")
        .arg(format!("{root}/config/default.toml"))
        .arg("api")
        .env("RUST_LOG", "debug")
        .env("TIDEMARK__DATABASE__URL", &database.url)
        // Trust authentication accepts any password, so the canary travels but changes nothing.
        .env("TIDEMARK__DATABASE__PASSWORD", database_password)
        .env("TIDEMARK__MQTT__PORT", harness.broker.port.to_string())
        .env("TIDEMARK__MQTT__USERNAME", "tidemark-api")
        .env("TIDEMARK__MQTT__PASSWORD", broker_password)
        .env("TIDEMARK__API__LISTEN", format!("127.0.0.1:{port}"))
        .env("TIDEMARK__API__PUBLIC_URL", &base)
        .env("TIDEMARK__DELIVERY__ALLOW_NETWORKS", "[\"127.0.0.0/8\"]")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let ready = wait_for(Duration::from_secs(30), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "the API comes up");

    let call = |method: reqwest::Method, path: &str, key: &str, body: Option<serde_json::Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
            )
        }
    };
    let (status, _) = call(reqwest::Method::GET, "/api/v1/keys", &forged_key, None).await;
    assert_eq!(status, 401);
    let (status, made) = call(
        reqwest::Method::POST,
        "/api/v1/keys",
        &operator,
        Some(serde_json::json!({"role": "researcher", "label": "canary"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let made_key = made["key"].as_str().unwrap().to_owned();
    let receiver = tidemark_testkit::peers::WebhookReceiver::start()
        .await
        .unwrap();
    let (status, hook) = call(
        reqwest::Method::POST,
        "/api/v1/webhooks",
        &operator,
        Some(serde_json::json!({"url": receiver.url})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let webhook_secret = hook["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = call(
        reqwest::Method::POST,
        &format!("/api/v1/webhooks/{}/rotate-secret", hook["id"]),
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let rotated_secret = rotated["secret"].as_str().unwrap().to_owned();
    let (status, _) = call(reqwest::Method::GET, "/api/v1/keys", &made_key, None).await;
    assert_eq!(status, 403);

    // SIGTERM, so that the process writes what it has and shuts down as it would in service.
    tokio::process::Command::new("kill")
        .args(["-TERM", &api.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), api.wait()).await;
    let written = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        written.lines().count() > 5 && written.contains("DEBUG"),
        "the process logged at debug level"
    );
    // A key is `tmk_<prefix>_<secret>`; the prefix names it in logs, the secret must never show.
    let key_secret = |key: &str| key.splitn(3, '_').nth(2).unwrap_or(key).to_owned();
    for (what, secret) in [
        ("the database password", database_password.to_owned()),
        ("the broker password", broker_password.to_owned()),
        ("the operator key", key_secret(&operator)),
        ("a forged key", key_secret(&forged_key)),
        ("a key made over the API", key_secret(&made_key)),
        ("a webhook secret", webhook_secret.clone()),
        ("a rotated webhook secret", rotated_secret.clone()),
    ] {
        assert!(
            !written.contains(&secret),
            "{what} is in the log: {}",
            written
                .lines()
                .find(|l| l.contains(&secret))
                .unwrap_or_default()
                .replace(&secret, "<secret>")
        );
    }
    harness.finish().await;
}

/// An MQTT client over TLS to `port`, trusting `ca`, presenting `identity` (certificate and key
/// files) and logging in with `login` if given.
fn tls_client(
    port: u16,
    id: &str,
    ca: &std::path::Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    login: Option<(&str, &str)>,
) -> (AsyncClient, EventLoop) {
    tls_session(port, id, ca, identity, login, true)
}

/// [`tls_client`] with a clean or a persistent session.
fn tls_session(
    port: u16,
    id: &str,
    ca: &std::path::Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    login: Option<(&str, &str)>,
    clean: bool,
) -> (AsyncClient, EventLoop) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(clean);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    AsyncClient::new(options, 16)
}

/// Devices over mutual TLS on the shipped configuration's certificate listener, with a throwaway
/// CA made here: a device's certificate is its login (its common name is its user name, so the
/// ACL holds it to its own topic), and a client without a certificate, or with one from a CA the
/// broker does not know, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_with_client_certificates_over_mutual_tls() {
    let (a, b) = (device(0), device(1));
    let broker = Broker::start_secure(&[("tidemark-ingest", INGEST_PASSWORD)], &[])
        .await
        .unwrap();
    let tls_port = broker.tls_port.expect("a TLS listener");
    let ca = broker.ca_file();
    let device_a = broker.client_certificate(&a, true).await.unwrap();
    broker.register(&a, None).await.unwrap();
    let rogue_b = broker.client_certificate(&b, false).await.unwrap();
    let harness = Harness::with_broker(broker).await;
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-tls".into(),
        ..Default::default()
    });
    settings.mqtt.username = Some("tidemark-ingest".into());
    settings.mqtt.password = Some(tidemark_model::secret::Secret::new(INGEST_PASSWORD));
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("ingest-tls").await;

    // No certificate, and a certificate for B from a CA the broker does not trust: refused.
    let (_, mut bare) = tls_client(tls_port, "bare", &ca, None, None);
    assert!(connect(&mut bare).await.is_err());
    let (_, mut rogue) = tls_client(tls_port, "rogue", &ca, Some(&rogue_b), None);
    assert!(connect(&mut rogue).await.is_err());

    // A's certificate: its own readings land; a reading on B's topic is dropped by the broker.
    let (client, mut events) = tls_client(tls_port, "device-a-tls", &ca, Some(&device_a), None);
    connect(&mut events).await.unwrap();
    let base = Utc::now() - chrono::Duration::hours(1);
    client
        .publish(
            topic(&b),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(1, 0), base),
        )
        .await
        .unwrap();
    client
        .publish(
            topic(&a),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(0, 0), base + chrono::Duration::seconds(1)),
        )
        .await
        .unwrap();
    acknowledged(&mut events, 2).await;
    assert_eq!(
        harness.settle(1, Duration::from_secs(20)).await,
        1,
        "A's reading is stored, the one on B's topic never arrives"
    );
    let stored: Vec<String> = sql(&harness)
        .await
        .query(
            "SELECT s.key FROM readings r JOIN sensors s ON s.id = r.sensor_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, [sensor(0, 0)]);
    ingest.stop().await;
    harness.finish().await;
}

/// Connects, then disconnects cleanly.
async fn visit(client: AsyncClient, mut events: EventLoop) -> Result<(), String> {
    connect(&mut events).await?;
    client.disconnect().await.map_err(|e| e.to_string())?;
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(2), events.poll()).await {
        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(())
}

/// A device that logs in with its own credentials and asks for ingest's client id, with a clean or
/// a persistent session, over its password or its certificate: the shipped configuration gives it
/// its own login as client id, so it neither takes over ingest's connection nor wipes the session
/// that holds ingest's queued messages. And only the API's login writes the alert topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_can_take_over_ingests_session_or_write_alerts() {
    let a = device(0);
    let broker = Broker::start_secure(
        &[
            ("tidemark-ingest", INGEST_PASSWORD),
            ("tidemark-api", "api-password"),
        ],
        &[(&a, "password-a")],
    )
    .await
    .unwrap();
    let (services_port, device_port) = (broker.port, broker.device_port.unwrap());
    let tls_port = broker.tls_port.unwrap();
    let ca = broker.ca_file();
    let certificate = broker.client_certificate(&a, true).await.unwrap();
    let harness = Harness::with_broker(broker).await;
    let settings = || {
        let mut settings = harness.settings(tidemark_ingest::IngestConfig::default());
        settings.mqtt.username = Some("tidemark-ingest".into());
        settings.mqtt.password = Some(tidemark_model::secret::Secret::new(INGEST_PASSWORD));
        settings
    };
    let ingest = harness.ingest_with(settings());
    ingest.subscribed("tidemark-ingest").await;
    // Ingest's client id asked for over the password listener and the certificate listener, each
    // with a clean and a persistent session: (port, with a certificate, clean session).
    let impostors = [
        (device_port, false, true),
        (device_port, false, false),
        (tls_port, true, true),
        (tls_port, true, false),
    ];
    let impostor = |(port, with_certificate, clean): (u16, bool, bool)| {
        tls_session(
            port,
            "tidemark-ingest",
            &ca,
            with_certificate.then_some(&certificate),
            (!with_certificate).then_some((a.as_str(), "password-a")),
            clean,
        )
    };
    // While ingest is connected: the impostors come and go; ingest's connection stays.
    for attempt in impostors {
        let (client, events) = impostor(attempt);
        visit(client, events)
            .await
            .unwrap_or_else(|e| panic!("impostor {attempt:?} logs in as itself: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ingest.metrics.mqtt_errors.get(),
        0,
        "ingest's connection was never taken over"
    );

    // While ingest is away, its session holds what devices publish; impostors with clean sessions
    // come and go; ingest comes back to every message.
    ingest.stop().await;
    let base = Utc::now() - chrono::Duration::hours(1);
    let (device_a, mut events_a) = tls_client(
        device_port,
        "publisher",
        &ca,
        None,
        Some((&a, "password-a")),
    );
    connect(&mut events_a).await.unwrap();
    for i in 0..50 {
        device_a
            .publish(
                topic(&a),
                QoS::AtLeastOnce,
                false,
                reading(&sensor(0, 1), base + chrono::Duration::seconds(i)),
            )
            .await
            .unwrap();
        acknowledged(&mut events_a, 1).await;
    }
    for attempt in impostors {
        let (client, events) = impostor(attempt);
        visit(client, events).await.unwrap();
    }
    let ingest = harness.ingest_with(settings());
    assert_eq!(
        harness.settle(50, Duration::from_secs(20)).await,
        50,
        "ingest's queued messages survived the impostors"
    );

    // Alerts: the API posts a retained alert, then a device and ingest post over it; theirs are
    // dropped by the broker, and the API's stands.
    let alert = "tidemark/v1/alerts/0580/aabenraa-harbour";
    for (port, login, with_tls) in [
        (services_port, ("tidemark-api", "api-password"), false),
        (device_port, (a.as_str(), "password-a"), true),
        (services_port, ("tidemark-ingest", INGEST_PASSWORD), false),
    ] {
        let (client, mut events) = if with_tls {
            tls_client(port, "poster", &ca, None, Some(login))
        } else {
            client(port, &format!("poster-{}", login.0), Some(login))
        };
        connect(&mut events).await.unwrap();
        client
            .publish(alert, QoS::AtLeastOnce, true, login.0.as_bytes().to_vec())
            .await
            .unwrap();
        acknowledged(&mut events, 1).await;
    }
    let (listener, mut heard) =
        tls_client(device_port, "listener", &ca, None, Some((&a, "password-a")));
    connect(&mut heard).await.unwrap();
    listener.subscribe(alert, QoS::AtLeastOnce).await.unwrap();
    let retained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = heard.poll().await {
                return String::from_utf8_lossy(&p.payload).into_owned();
            }
        }
    })
    .await;
    assert_eq!(
        retained.as_deref(),
        Ok("tidemark-api"),
        "only the API's alert stands"
    );
    ingest.stop().await;
    harness.finish().await;
}

/// Waits until the broker drops the connection; Err if it is still open after 5 s.
async fn dropped(events: &mut EventLoop) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if events.poll().await.is_err() {
                return;
            }
        }
    })
    .await
    .map_err(|_| "the connection stayed open".to_owned())
}

/// Device credentials over the API, against a broker from the shipped configuration whose
/// dynamic-security plugin the API administers: an issued password and a registered certificate
/// each let their device publish its own readings and nothing else; a revocation disconnects the
/// device at once and refuses it from then on; a new password replaces the old; every change is
/// audited; Tidemark's own logins are unaffected; and the broker's logins are brought back in
/// line with the record after they drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_credentials_are_issued_and_revoked_over_the_api_at_once() {
    use reqwest::Method;
    use serde_json::json;
    let (a, b, c) = (device(0), device(1), device(2));
    let broker = Broker::start_secure(
        &[
            ("tidemark-ingest", INGEST_PASSWORD),
            ("tidemark-api", "api-password"),
        ],
        &[],
    )
    .await
    .unwrap();
    let (device_port, tls_port) = (broker.device_port.unwrap(), broker.tls_port.unwrap());
    let ca = broker.ca_file();
    let certificate_a = broker.client_certificate(&a, true).await.unwrap();
    let certificate_b = broker.client_certificate(&b, true).await.unwrap();
    let harness = Harness::with_broker(broker).await;
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-credentials".into(),
        ..Default::default()
    });
    settings.mqtt.username = Some("tidemark-ingest".into());
    settings.mqtt.password = Some(tidemark_model::secret::Secret::new(INGEST_PASSWORD));
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("ingest-credentials").await;
    let mut config = config(&harness);
    config.mqtt.username = Some("tidemark-api".into());
    config.mqtt.password = Some(tidemark_model::secret::Secret::new("api-password"));
    config.api.device_credentials = true;
    let api = Api::start(&harness, &config).await;
    let operator = api.key(tidemark_store::keys::Role::Operator, None).await;
    let utility = api.key(tidemark_store::keys::Role::Utility, None).await;
    let researcher = api.key(tidemark_store::keys::Role::Researcher, None).await;
    let path = |device: &str| format!("/api/v1/devices/{device}/credentials");
    let password = json!({"kind": "password"});
    let base = Utc::now() - chrono::Duration::hours(1);
    let at = |s: i64| base + chrono::Duration::seconds(s);

    // Refusals: a researcher, an unknown device, a bad kind, a certificate whose common name is
    // another device's, text that is not a certificate.
    let pem = |file: &std::path::Path| std::fs::read_to_string(file).unwrap();
    for (key, device, body, expected) in [
        (&researcher, a.as_str(), password.clone(), 403),
        (&operator, "no-such-device", password.clone(), 404),
        (&operator, a.as_str(), json!({"kind": "token"}), 400),
        (
            &operator,
            b.as_str(),
            json!({"kind": "certificate", "certificate": pem(&certificate_a.0)}),
            400,
        ),
        (
            &operator,
            b.as_str(),
            json!({"kind": "certificate", "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}),
            400,
        ),
    ] {
        let (status, answer) = api
            .call(Method::POST, &path(device), Some(key), Some(body))
            .await;
        assert_eq!(status, expected, "{device}: {answer}");
    }
    // Before any is issued, A's password login and B's certificate publish nothing.
    let (_, mut guess) = tls_client(device_port, &a, &ca, None, Some((&a, "guess")));
    assert!(connect(&mut guess).await.is_err());

    // A password for A, shown once: A publishes its own reading (stored) and one on B's topic
    // (dropped by the broker).
    let (status, issued) = api
        .call(
            Method::POST,
            &path(&a),
            Some(&operator),
            Some(password.clone()),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let first = issued["password"].as_str().unwrap().to_owned();
    let first_id = issued["id"].as_i64().unwrap();
    let (client_a, mut events_a) = tls_client(device_port, &a, &ca, None, Some((&a, &first)));
    connect(&mut events_a).await.unwrap();
    for (topic_of, sensor_key, s) in [(&b, sensor(1, 0), 1), (&a, sensor(0, 0), 2)] {
        client_a
            .publish(
                topic(topic_of),
                QoS::AtLeastOnce,
                false,
                reading(&sensor_key, at(s)),
            )
            .await
            .unwrap();
    }
    acknowledged(&mut events_a, 2).await;
    assert_eq!(harness.settle(1, Duration::from_secs(20)).await, 1);

    // A new password replaces the first: A's connection drops, the first is refused, the new
    // one works. The list shows both, without passwords.
    let (status, second) = api
        .call(
            Method::POST,
            &path(&a),
            Some(&utility),
            Some(password.clone()),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["replaced"].as_i64(), Some(first_id));
    dropped(&mut events_a).await.unwrap();
    let (_, mut old) = tls_client(device_port, &a, &ca, None, Some((&a, &first)));
    assert!(
        connect(&mut old).await.is_err(),
        "the replaced password is refused"
    );
    let new_password = second["password"].as_str().unwrap().to_owned();
    let (_, mut events_a) = tls_client(device_port, &a, &ca, None, Some((&a, &new_password)));
    connect(&mut events_a).await.unwrap();
    let (status, list) = api
        .call(Method::GET, &path(&a), Some(&operator), None)
        .await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|c| c.get("password").is_none()), "{list:?}");
    assert!(list[0]["revoked_at"].is_null() && !list[1]["revoked_at"].is_null());

    // Revoking it disconnects A at once, and A is refused from then on.
    let second_id = second["id"].as_i64().unwrap();
    let revoke = format!("{}/{second_id}", path(&a));
    let (status, revoked) = api
        .call(Method::DELETE, &revoke, Some(&operator), None)
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(!revoked["revoked_at"].is_null());
    dropped(&mut events_a).await.unwrap();
    let (_, mut again) = tls_client(device_port, &a, &ca, None, Some((&a, &new_password)));
    assert!(
        connect(&mut again).await.is_err(),
        "a revoked password is refused"
    );
    let (status, _) = api
        .call(Method::DELETE, &revoke, Some(&operator), None)
        .await;
    assert_eq!(status, 404, "a credential is revoked once");

    // B's certificate, registered: B publishes over mutual TLS. Revoked: B is disconnected, and
    // what it publishes after connecting again is not stored.
    let (status, registered) = api
        .call(
            Method::POST,
            &path(&b),
            Some(&operator),
            Some(json!({"kind": "certificate", "certificate": pem(&certificate_b.0)})),
        )
        .await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["username"], b.as_str());
    assert_eq!(registered["fingerprint"].as_str().unwrap().len(), 64);
    assert!(registered.get("password").is_none());
    let (client_b, mut events_b) = tls_client(tls_port, &b, &ca, Some(&certificate_b), None);
    connect(&mut events_b).await.unwrap();
    client_b
        .publish(
            topic(&b),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(1, 0), at(3)),
        )
        .await
        .unwrap();
    acknowledged(&mut events_b, 1).await;
    assert_eq!(harness.settle(2, Duration::from_secs(20)).await, 2);
    let b_id = registered["id"].as_i64().unwrap();
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("{}/{b_id}", path(&b)),
            Some(&utility),
            None,
        )
        .await;
    assert_eq!(status, 200);
    dropped(&mut events_b).await.unwrap();
    let (client_b, mut events_b) = tls_client(tls_port, &b, &ca, Some(&certificate_b), None);
    if connect(&mut events_b).await.is_ok() {
        client_b
            .publish(
                topic(&b),
                QoS::AtLeastOnce,
                false,
                reading(&sensor(1, 1), at(4)),
            )
            .await
            .unwrap();
        acknowledged(&mut events_b, 1).await;
    }

    // Tidemark's own logins are unaffected: ingest never lost its connection and still stores
    // what a device with a login publishes.
    let (status, issued_c) = api
        .call(
            Method::POST,
            &path(&c),
            Some(&operator),
            Some(password.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let (client_c, mut events_c) = tls_client(
        device_port,
        &c,
        &ca,
        None,
        Some((&c, issued_c["password"].as_str().unwrap())),
    );
    connect(&mut events_c).await.unwrap();
    client_c
        .publish(
            topic(&c),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(2, 0), at(5)),
        )
        .await
        .unwrap();
    acknowledged(&mut events_c, 1).await;
    assert_eq!(
        harness.settle(3, Duration::from_secs(20)).await,
        3,
        "C's reading is stored, B's after its revocation is not"
    );
    assert_eq!(ingest.metrics.mqtt_errors.get(), 0);

    // Every change is in the audit log.
    let (_, audit) = api
        .call(Method::GET, "/api/v1/audit", Some(&operator), None)
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("device.credential"))
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "device.credential.issue")
            .count(),
        4
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "device.credential.revoke")
            .count(),
        2
    );

    // Drift: the broker loses C's login behind Tidemark's back... C's password cannot come back,
    // and is named; a login Tidemark never issued (A, made directly) is removed; B's revoked
    // certificate stays out; a certificate in force that the broker lost comes back.
    let harness_broker = &harness.broker;
    harness_broker
        .register(&device(3), Some("made-behind-tidemarks-back"))
        .await
        .unwrap();
    let (status, registered_a) = api
        .call(
            Method::POST,
            &path(&a),
            Some(&operator),
            Some(json!({"kind": "certificate", "certificate": pem(&certificate_a.0)})),
        )
        .await;
    assert_eq!(status, 201, "{registered_a}");
    let a_id = tidemark_model::DeviceId::parse(&a).unwrap();
    let c_id = tidemark_model::DeviceId::parse(&c).unwrap();
    for id in [&a_id, &c_id] {
        harness_broker
            .dynsec(tidemark_model::dynsec::remove_device(id, "test"))
            .await
            .unwrap();
    }
    let admin = api.state.broker_admin.as_ref().unwrap();
    let done = tidemark_api::manage::broker_admin::reconcile(admin, &harness.store)
        .await
        .unwrap();
    assert_eq!(done.removed, [device(3)]);
    assert_eq!(done.restored, std::slice::from_ref(&a));
    assert_eq!(done.lost_passwords, std::slice::from_ref(&c));
    let (_, mut stray) = tls_client(
        device_port,
        &device(3),
        &ca,
        None,
        Some((&device(3), "made-behind-tidemarks-back")),
    );
    assert!(connect(&mut stray).await.is_err());
    let (client_a, mut events_a) = tls_client(tls_port, &a, &ca, Some(&certificate_a), None);
    connect(&mut events_a).await.unwrap();
    client_a
        .publish(
            topic(&a),
            QoS::AtLeastOnce,
            false,
            reading(&sensor(0, 1), at(6)),
        )
        .await
        .unwrap();
    acknowledged(&mut events_a, 1).await;
    assert_eq!(harness.settle(4, Duration::from_secs(20)).await, 4);
    ingest.stop().await;
    api.shutdown.cancel();
    harness.finish().await;
}
