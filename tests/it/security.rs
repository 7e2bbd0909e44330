//! Device security against a Mosquitto started from the shipped `config/mosquitto-secure.conf` and
//! `config/mosquitto.acl`: every client logs in, a device publishes only to its own readings topic
//! and reads nobody's, and ingest checks each reading's sensor against the topic's device besides.

use crate::support::*;
use chrono::Utc;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use std::time::Duration;
use tidemark::testkit::Broker;

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
    let broker = Broker::start_secure(&[
        ("tidemark-ingest", INGEST_PASSWORD),
        (&a, "password-a"),
        (&b, "password-b"),
    ])
    .await
    .unwrap();
    let port = broker.port;
    let harness = Harness::with_broker(broker).await;
    let mut settings = harness.settings(tidemark_ingest::IngestConfig {
        client_id: "ingest-secure".into(),
        ..Default::default()
    });
    settings.mqtt.username = Some("tidemark-ingest".into());
    settings.mqtt.password = Some(tidemark_model::secret::Secret::new(INGEST_PASSWORD));
    let ingest = harness.ingest_with(settings);
    ingest.subscribed("ingest-secure").await;

    // No login, a wrong password, and a device's name with another's password: refused.
    let (_, mut anonymous) = client(port, "anonymous", None);
    assert!(connect(&mut anonymous).await.is_err());
    let (_, mut wrong) = client(port, "wrong", Some((&a, "password-b")));
    assert!(connect(&mut wrong).await.is_err());

    // Device A, logged in, publishes a reading of B's sensor on B's topic (the broker drops it),
    // one of B's sensor on its own topic (ingest rejects it), then one of its own.
    let (device_a, mut events_a) = client(port, "device-a", Some((&a, "password-a")));
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
    let (device_b, mut events_b) = client(port, "device-b", Some((&b, "password-b")));
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
