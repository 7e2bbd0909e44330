//! A load generator: devices publishing readings at QoS 1 as fast as the broker acknowledges them.
//!
//! Every reading is unique: a sensor's timestamps strictly increase, and each is the wall-clock time
//! of its publication, so that a consumer can measure publish-to-commit latency from the stored row.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Timelike, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::{DeviceId, SensorKey};

/// A device and the sensors it publishes for.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: DeviceId,
    pub sensors: Vec<SensorKey>,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub devices: Vec<Device>,
    /// Total readings.
    pub readings: usize,
    /// Readings per message: 1 publishes single-reading objects, more publish batches.
    pub per_message: usize,
    /// Concurrent MQTT connections sharing the devices.
    pub connections: usize,
    /// Client ids are `<client_prefix>-<n>`.
    pub client_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the plan has no devices, no sensors or nothing to publish")]
    EmptyPlan,
    #[error("invalid topic prefix: {0}")]
    Topic(#[from] tidemark_model::topic::TopicError),
    #[error("publishing failed: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("mqtt connection failed: {0}")]
    Connection(#[from] rumqttc::ConnectionError),
    #[error("publisher task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What was published.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub messages: usize,
    pub readings: usize,
    pub first_publish: DateTime<Utc>,
    /// When the broker had acknowledged the last message.
    pub last_ack: DateTime<Utc>,
}

/// Publishes the plan and returns once the broker has acknowledged every message.
pub async fn publish(broker: &BrokerConfig, plan: &Plan) -> Result<Report, Error> {
    let topics = ReadingsTopics::new(&broker.topic_prefix)?;
    let with_sensors: Vec<&Device> = plan
        .devices
        .iter()
        .filter(|d| !d.sensors.is_empty())
        .collect();
    if with_sensors.is_empty() || plan.readings == 0 || plan.per_message == 0 {
        return Err(Error::EmptyPlan);
    }
    let connections = plan.connections.clamp(1, with_sensors.len());
    // Messages per connection, spread as evenly as the per-message size allows.
    let total_messages = plan.readings.div_ceil(plan.per_message);
    let mut tasks = Vec::new();
    let first_publish = Utc::now();
    for n in 0..connections {
        let devices: Vec<Device> = with_sensors
            .iter()
            .skip(n)
            .step_by(connections)
            .map(|d| (*d).clone())
            .collect();
        let messages = total_messages / connections + usize::from(n < total_messages % connections);
        let readings_before: usize = (0..n)
            .map(|k| total_messages / connections + usize::from(k < total_messages % connections))
            .sum::<usize>()
            * plan.per_message;
        let readings =
            (messages * plan.per_message).min(plan.readings.saturating_sub(readings_before));
        let options = options(broker, &format!("{}-{n}", plan.client_prefix));
        let topics = topics.clone();
        let per_message = plan.per_message;
        tasks.push(tokio::spawn(async move {
            publish_connection(options, topics, devices, readings, per_message).await
        }));
    }
    let mut messages = 0;
    let mut readings = 0;
    let mut last_ack = first_publish;
    for task in tasks {
        let (m, r, ack) = task.await??;
        messages += m;
        readings += r;
        last_ack = last_ack.max(ack);
    }
    Ok(Report {
        messages,
        readings,
        first_publish,
        last_ack,
    })
}

fn options(broker: &BrokerConfig, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(FLUSH_TIMEOUT_SECS))
        .set_clean_session(true)
        .set_inflight(1000)
        .set_request_channel_capacity(1000)
        .set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes);
    if let Some(username) = &broker.username {
        options.set_credentials(
            username,
            broker.password.as_ref().map_or("", |p| p.expose()),
        );
    }
    options
}

/// Publishes `readings` from `devices` on one connection; returns (messages, readings, last ack).
async fn publish_connection(
    options: MqttOptions,
    topics: ReadingsTopics,
    devices: Vec<Device>,
    readings: usize,
    per_message: usize,
) -> Result<(usize, usize, DateTime<Utc>), Error> {
    let messages = readings.div_ceil(per_message);
    let mut clock = SensorClock::default();
    let mut remaining = readings;
    let mut device_index = 0;
    let last_ack = publish_generated(options, messages, || {
        let device = &devices[device_index % devices.len()];
        device_index += 1;
        let count = remaining.min(per_message);
        remaining -= count;
        let payload = payload(device, count, per_message == 1, &mut clock);
        (topics.for_device(&device.id), payload)
    })
    .await?;
    Ok((messages, readings, last_ack))
}

/// Publishes the given messages at QoS 1 on one connection with client id `client_id`, in order,
/// and returns once the broker has acknowledged them all.
pub async fn publish_messages(
    broker: &BrokerConfig,
    client_id: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<DateTime<Utc>, Error> {
    let count = messages.len();
    let mut messages = messages.into_iter();
    publish_generated(options(broker, client_id), count, || {
        messages
            .next()
            .expect("asked for no more messages than given")
    })
    .await
}

/// How long one write to the broker may wait, in seconds (also the connection's timeout), and
/// the keep-alive: a broker slow to read large messages does not answer a ping in time either
/// (under two busy loops on the cores, the test of large messages behind a locked table then
/// ended in `AwaitPingResp` with a 30 s keep-alive).
const FLUSH_TIMEOUT_SECS: u64 = 120;

/// Publishes `count` messages made by `next` and waits for every acknowledgement; returns when the
/// last one arrived.
async fn publish_generated(
    options: MqttOptions,
    count: usize,
    mut next: impl FnMut() -> (String, Vec<u8>),
) -> Result<DateTime<Utc>, Error> {
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    // A broker that takes a while to read what is written to it is back-pressure, not a failure:
    // with large messages queued for a subscriber that does not read, Mosquitto on a busy machine
    // can leave a write waiting longer than the client's default of 5 s, and the load would end
    // in `FlushTimeout` instead of waiting.
    let mut network = eventloop.network_options();
    network.set_connection_timeout(FLUSH_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    // The event loop runs beside the publisher and counts acknowledgements.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < count {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                acked += 1;
            }
        }
        Ok::<_, rumqttc::ConnectionError>((eventloop, Utc::now()))
    });
    for _ in 0..count {
        let (topic, payload) = next();
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let (mut eventloop, last_ack) = acks.await??;
    client.disconnect().await?;
    // Let the disconnect go out; the broker would otherwise log a dropped client.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(last_ack)
}

/// Strictly increasing per-sensor timestamps at (or just after) the wall-clock time.
#[derive(Default)]
struct SensorClock(HashMap<SensorKey, DateTime<Utc>>);

impl SensorClock {
    fn next(&mut self, sensor: &SensorKey) -> DateTime<Utc> {
        let now = Utc::now();
        // Whole microseconds, as PostgreSQL stores them.
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        match self.0.get_mut(sensor) {
            Some(last) => {
                *last = if now <= *last {
                    *last + ChronoDuration::microseconds(1)
                } else {
                    now
                };
                *last
            }
            None => {
                self.0.insert(sensor.clone(), now);
                now
            }
        }
    }
}

/// A message of `count` readings from `device` (a single reading's object when `single` and
/// `count` is 1), written straight into one buffer: the generator shares the machine with what
/// it measures, so what it spends on a reading is kept small.
fn payload(device: &Device, count: usize, single: bool, clock: &mut SensorClock) -> Vec<u8> {
    let batch = !(single && count == 1);
    let mut out = String::with_capacity(count * 96 + 16);
    if batch {
        out.push_str(r#"{"readings":["#);
    }
    for k in 0..count {
        let sensor = &device.sensors[k % device.sensors.len()];
        let ts = clock.next(sensor);
        let value = 0.5 + (ts.timestamp_subsec_micros() % 1000) as f64 / 1000.0;
        if k > 0 {
            out.push(',');
        }
        // Infallible: writing to a String.
        let _ = write!(
            out,
            r#"{{"sensor":"{sensor}","ts":"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z","value":{value},"unit":"m"}}"#,
            ts.year(),
            ts.month(),
            ts.day(),
            ts.hour(),
            ts.minute(),
            ts.second(),
            ts.timestamp_subsec_micros(),
        );
    }
    if batch {
        out.push_str("]}");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase_per_sensor() {
        let mut clock = SensorClock::default();
        let sensor = SensorKey::parse("s").unwrap();
        let mut last = clock.next(&sensor);
        for _ in 0..10_000 {
            let next = clock.next(&sensor);
            assert!(next > last);
            assert_eq!(next.timestamp_subsec_nanos() % 1000, 0);
            last = next;
        }
    }

    /// Device `d` with sensors `a` and `b`.
    fn two_sensors() -> Device {
        Device {
            id: DeviceId::parse("d").unwrap(),
            sensors: vec![
                SensorKey::parse("a").unwrap(),
                SensorKey::parse("b").unwrap(),
            ],
        }
    }

    /// The payload is written by hand; it must read exactly as Tidemark JSON with RFC 3339
    /// timestamps in whole microseconds, one object for a single reading and a batch otherwise.
    #[test]
    fn payloads_are_written_exactly() {
        let device = two_sensors();
        let mut clock = SensorClock::default();
        // Last readings in the future, so that the clock counts on from them by a microsecond.
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        clock
            .0
            .insert(device.sensors[0].clone(), at("2999-01-02T03:04:05.000009Z"));
        clock
            .0
            .insert(device.sensors[1].clone(), at("2999-12-31T23:59:59.999999Z"));
        let single = payload(&device, 1, true, &mut clock);
        assert_eq!(
            String::from_utf8(single).unwrap(),
            r#"{"sensor":"a","ts":"2999-01-02T03:04:05.000010Z","value":0.51,"unit":"m"}"#
        );
        let batch = payload(&device, 2, false, &mut clock);
        assert_eq!(
            String::from_utf8(batch).unwrap(),
            concat!(
                r#"{"readings":[{"sensor":"a","ts":"2999-01-02T03:04:05.000011Z","value":0.511,"unit":"m"},"#,
                r#"{"sensor":"b","ts":"3000-01-01T00:00:00.000000Z","value":0.5,"unit":"m"}]}"#
            )
        );
    }

    #[test]
    fn payloads_decode_as_tidemark_json() {
        let device = two_sensors();
        let mut clock = SensorClock::default();
        for (count, single) in [(1, true), (50, false)] {
            let bytes = payload(&device, count, single, &mut clock);
            let entries = tidemark_model::wire::decode(&bytes, Default::default()).unwrap();
            assert_eq!(entries.len(), count);
            assert!(entries.iter().all(Result::is_ok));
        }
    }
}
