//! Retained QoS 1 alerts on `<prefix>/alerts/<municipality>/<area>`: one connection owned by one
//! task, which answers each publish once the broker has acknowledged it (PUBACK).
//!
//! A lost connection fails every publish in flight and starts a fresh client, so no acknowledgement
//! is ever matched to the wrong publish; the dispatcher retries the failed ones.

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("the alert publisher has stopped")]
    Stopped,
    #[error("the broker connection was lost before the alert was acknowledged")]
    ConnectionLost,
    #[error("the broker did not acknowledge the alert in time")]
    Timeout,
}

struct Request {
    topic: String,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// A handle to the publishing task; cheap to clone.
#[derive(Clone)]
pub struct AlertPublisher {
    requests: mpsc::Sender<Request>,
    ack_timeout: Duration,
}

impl AlertPublisher {
    /// Starts the publishing task; it runs until `shutdown`.
    pub fn start(
        broker: &BrokerConfig,
        client_id: &str,
        ack_timeout: Duration,
        shutdown: CancellationToken,
    ) -> AlertPublisher {
        let (requests, receiver) = mpsc::channel(256);
        let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes);
        if let Some(user) = &broker.username {
            let password = broker
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(user, password);
        }
        tokio::spawn(publishing(options, receiver, shutdown));
        AlertPublisher {
            requests,
            ack_timeout,
        }
    }

    /// Publishes retained at QoS 1 and waits for the broker's acknowledgement.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request {
                topic: topic.to_owned(),
                payload,
                done,
            })
            .await
            .map_err(|_| PublishError::Stopped)?;
        match tokio::time::timeout(self.ack_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::ConnectionLost),
            Err(_) => Err(PublishError::Timeout),
        }
    }
}

async fn publishing(
    options: MqttOptions,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (client, eventloop) = AsyncClient::new(options.clone(), 64);
        let ended = connection(&client, eventloop, &mut requests, &shutdown).await;
        if ended {
            let _ = client.disconnect().await;
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves one connection; true when the publisher should stop, false to reconnect.
async fn connection(
    client: &AsyncClient,
    mut eventloop: EventLoop,
    requests: &mut mpsc::Receiver<Request>,
    shutdown: &CancellationToken,
) -> bool {
    // Publishes handed to the client, in order, until the event loop names their packet id.
    let mut queued: VecDeque<oneshot::Sender<Result<(), PublishError>>> = VecDeque::new();
    let mut in_flight: HashMap<u16, oneshot::Sender<Result<(), PublishError>>> = HashMap::new();
    let mut connected = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return true,
            request = requests.recv(), if connected && queued.len() < 32 => {
                let Some(request) = request else { return true };
                match client.try_publish(request.topic, QoS::AtLeastOnce, true, request.payload) {
                    Ok(()) => queued.push_back(request.done),
                    Err(_) => {
                        let _ = request.done.send(Err(PublishError::ConnectionLost));
                    }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    tracing::debug!("alert publisher connected");
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(done) = queued.pop_front() {
                        in_flight.insert(pkid, done);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(done) = in_flight.remove(&ack.pkid) {
                        let _ = done.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "alert publisher lost the broker");
                    for done in queued.drain(..).chain(in_flight.drain().map(|(_, d)| d)) {
                        let _ = done.send(Err(PublishError::ConnectionLost));
                    }
                    return false;
                }
            }
        }
    }
}
