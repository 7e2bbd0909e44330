//! Devices on the wire: one MQTT connection per device (client id and user name are the device id),
//! QoS 1, a persistent session so that unacknowledged messages are sent again after a reconnect,
//! and pacing of simulated time against the wall clock.

use crate::engine::{Engine, Publication, Report};
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::DeviceId;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid topic prefix: {0}")]
    Topic(#[from] tidemark_model::topic::TopicError),
    #[error("publishing for device {device} failed: {cause}")]
    Publish {
        device: String,
        cause: rumqttc::ClientError,
    },
    #[error("the broker acknowledged {acked} of {published} messages within {seconds} s")]
    Unacknowledged {
        acked: u64,
        published: u64,
        seconds: u64,
    },
    #[error("cannot read the password file {path}: {cause}")]
    Passwords { path: String, cause: std::io::Error },
}

/// Passwords per device, from a file of `device:password` lines (the plain-text input format of
/// `mosquitto_passwd -U`). Blank lines and lines starting with `#` are skipped.
pub fn read_passwords(path: &str) -> Result<HashMap<String, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Passwords {
        path: path.to_owned(),
        cause,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(device, password)| (device.to_owned(), password.to_owned()))
        .collect())
}

struct DeviceClient {
    client: AsyncClient,
    topic: String,
    published: u64,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// One connection per device.
pub struct Fleet {
    devices: Vec<DeviceClient>,
}

impl Fleet {
    pub fn connect(
        broker: &BrokerConfig,
        devices: &[DeviceId],
        passwords: &HashMap<String, String>,
    ) -> Result<Fleet, Error> {
        let topics = ReadingsTopics::new(&broker.topic_prefix)?;
        let devices = devices
            .iter()
            .map(|device| {
                connect_one(
                    broker,
                    device.as_str(),
                    topics.for_device(device),
                    passwords.get(device.as_str()).map_or("", String::as_str),
                )
            })
            .collect();
        Ok(Fleet { devices })
    }

    /// Connects a forecast source as one more member of the fleet, publishing to
    /// `<prefix>/forecasts/<source>`; returns its index.
    pub fn add_source(
        &mut self,
        broker: &BrokerConfig,
        source: &DeviceId,
        password: &str,
    ) -> Result<usize, Error> {
        let topics = ReadingsTopics::new(&broker.topic_prefix)?;
        self.devices.push(connect_one(
            broker,
            source.as_str(),
            topics.for_source(source),
            password,
        ));
        Ok(self.devices.len() - 1)
    }

    /// Publishes one message for device `index` at QoS 1.
    pub async fn publish(&mut self, index: usize, payload: Vec<u8>) -> Result<(), Error> {
        let device = &mut self.devices[index];
        device
            .client
            .publish(device.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|cause| Error::Publish {
                device: device.topic.clone(),
                cause,
            })?;
        device.published += 1;
        Ok(())
    }

    /// Waits until the broker has acknowledged everything, then disconnects every device.
    pub async fn finish(self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let published: u64 = self.devices.iter().map(|d| d.published).sum();
        loop {
            let acked: u64 = self
                .devices
                .iter()
                .map(|d| d.acked.load(Ordering::SeqCst))
                .sum();
            if acked >= published {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Unacknowledged {
                    acked,
                    published,
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for device in self.devices {
            let _ = device.client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), device.task).await;
        }
        Ok(())
    }
}

/// One MQTT connection as `user`, publishing to `topic`, counting acknowledgements.
fn connect_one(broker: &BrokerConfig, user: &str, topic: String, password: &str) -> DeviceClient {
    let mut options = MqttOptions::new(user, &broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_inflight(1000)
        .set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes)
        .set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let name = user.to_owned();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(device = %name, %error, "simulated device lost its connection");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    DeviceClient {
        client,
        topic,
        published: 0,
        acked,
        task,
    }
}

/// How fast simulated time runs: `speed` simulated seconds per wall second; 0 runs as fast as
/// the broker takes the messages.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub speed: f64,
}

impl Pace {
    /// The wall-clock offset from the run's start at which simulated offset `sim` is due.
    fn wall(&self, sim: chrono::Duration) -> Option<Duration> {
        if self.speed <= 0.0 {
            return None;
        }
        let seconds = sim.num_milliseconds() as f64 / 1000.0 / self.speed;
        Some(Duration::from_secs_f64(seconds.max(0.0)))
    }
}

/// Runs a simulation until `end` (simulated time) or shutdown, publishing as it goes.
/// `forecasts` (in time order) are published once simulated time has reached them, after the
/// readings of their time.
pub async fn run_simulation(
    engine: &mut Engine,
    fleet: &mut Fleet,
    end: DateTime<Utc>,
    pace: Pace,
    forecasts: Vec<Publication>,
    shutdown: &CancellationToken,
) -> Result<Report, Error> {
    let mut forecasts = forecasts.into_iter().peekable();
    let mut issued = 0;
    let sim_start = engine.now();
    let wall_start = Instant::now();
    // Simulated time is advanced at most an hour at a time, so that memory stays small at any speed.
    let chunk = chrono::Duration::hours(1);
    while engine.now() < end && !shutdown.is_cancelled() {
        let target = match pace.wall(chrono::Duration::zero()) {
            None => (engine.now() + chunk).min(end),
            Some(_) => {
                let elapsed = chrono::Duration::from_std(wall_start.elapsed()).unwrap_or_default();
                let due = sim_start
                    + chrono::Duration::milliseconds(
                        (elapsed.num_milliseconds() as f64 * pace.speed) as i64,
                    );
                due.min(end).min(engine.now() + chunk)
            }
        };
        for publication in engine.advance(target) {
            fleet
                .publish(publication.device, publication.payload)
                .await?;
        }
        while let Some(forecast) = forecasts.next_if(|f| f.at <= engine.now()) {
            fleet.publish(forecast.device, forecast.payload).await?;
            issued += 1;
        }
        if let Some(wall) = pace.wall(engine.now() - sim_start + chrono::Duration::seconds(1)) {
            let wait = wall
                .saturating_sub(wall_start.elapsed())
                .min(Duration::from_millis(250));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            }
        }
    }
    let mut report = engine.report();
    report.forecasts = issued;
    Ok(report)
}

/// Publishes timed messages, each at its time scaled by `pace` from the first one's.
pub async fn run_timed(
    messages: Vec<Publication>,
    fleet: &mut Fleet,
    pace: Pace,
    shutdown: &CancellationToken,
) -> Result<u64, Error> {
    let Some(first) = messages.first().map(|m| m.at) else {
        return Ok(0);
    };
    let wall_start = Instant::now();
    let mut sent = 0;
    for message in messages {
        if let Some(due) = pace.wall(message.at - first) {
            let wait = due.saturating_sub(wall_start.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        fleet.publish(message.device, message.payload).await?;
        sent += 1;
    }
    Ok(sent)
}
