//! The MQTT session: connection options, the loop that polls the connection and takes a message's
//! share of the buffer before polling again, and the periodic storage maintenance.

use super::shared::{Ack, AckQueue, Generation, Intake, MAINTENANCE_INTERVAL};
use crate::config::IngestConfig;
use crate::metrics::Metrics;
use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, PubAck, PubRec, QoS,
};
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::{DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

pub(crate) fn mqtt_options(config: &IngestConfig, mqtt: &BrokerConfig) -> MqttOptions {
    let mut options = MqttOptions::new(&config.client_id, &mqtt.host, mqtt.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(mqtt.max_packet_bytes, mqtt.max_packet_bytes);
    if let Some(username) = &mqtt.username {
        let password = mqtt.password.as_ref().map(|p| p.expose()).unwrap_or("");
        options.set_credentials(username, password);
    }
    options
}

/// What the session loop does next.
enum Step {
    Stop,
    WriteAcks,
    Polled(Result<Event, ConnectionError>),
}

/// How long the session waits, once it has taken every message the connection held, before it
/// reads again. Left to wake on every arrival, it took about 15 messages a wake-up at one reading
/// per message, and each wake-up cost a wait in the kernel, a thread switch and a read. With the
/// tick it takes a few dozen, and ingest's CPU per reading there fell by about a sixth (README,
/// together with the buffer's share taken at once in `Intake::take`). Nothing waits longer than
/// the tick: the broker's messages wait in the socket, and acknowledgements and a stop end it.
pub(crate) const READ_TICK: Duration = Duration::from_millis(1);

#[allow(clippy::too_many_arguments)]
pub(crate) async fn session_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    intake: Intake,
    connection: Arc<Generation>,
    acks: Arc<AckQueue>,
    stop: CancellationToken,
) {
    let metrics = intake.metrics.clone();
    let mut backoff = Duration::from_millis(100);
    // Armed once and kept, rather than made and dropped for every message.
    let mut stopped = std::pin::pin!(stop.cancelled());
    let mut acks_ready = std::pin::pin!(acks.ready());
    // Whether the last poll brought an event, so that the next one only takes what is waiting.
    let mut eager = false;
    loop {
        // Queued acknowledgements go first. Polling is given up for them where it waits: on the
        // socket or the request queue, which lose nothing when dropped (rumqttc's reads and
        // flushes keep their progress in its buffers), or in the middle of a flush, which the
        // acknowledgements' own flush completes. It never waits while putting a request it has
        // taken into its write buffer (giving that up would lose the request): that waits only
        // on a buffer already holding 8 KiB, and the buffer is empty whenever a poll begins (a
        // finished poll flushes it, and so does every write of acknowledgements, which is what
        // follows a poll given up). A poll given up because nothing was waiting (for the tick)
        // is the same, except that no write of acknowledgements need follow it: a flush it gave
        // up can only hold what a poll writes itself (a ping, the subscriptions), far below
        // 8 KiB, and the next write of acknowledgements or poll that reads or writes sends it.
        let step = tokio::select! {
            biased;
            _ = &mut stopped => Step::Stop,
            _ = &mut acks_ready => Step::WriteAcks,
            event = eventloop.poll() => Step::Polled(event),
            // Nothing was waiting: a tick for more to gather (see `READ_TICK`).
            _ = std::future::ready(()), if eager => {
                eager = false;
                tokio::select! {
                    biased;
                    _ = &mut stopped => Step::Stop,
                    _ = &mut acks_ready => Step::WriteAcks,
                    _ = tokio::time::sleep(READ_TICK) => continue,
                }
            }
        };
        let event = match step {
            Step::Stop => return,
            Step::WriteAcks => {
                acks_ready.set(acks.ready());
                match write_acks(&mut eventloop, &acks, &metrics).await {
                    Ok(()) => continue,
                    Err(error) => Err(error),
                }
            }
            Step::Polled(event) => {
                eager = event.is_ok();
                event
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                metrics.subscribed.set(0);
                tracing::info!(
                    connection = connection.current(),
                    session_present = ack.session_present,
                    "mqtt connected"
                );
                // Re-subscribing on a resumed session is harmless and covers a broker that lost it.
                let subscriptions = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(error) = client.try_subscribe_many(subscriptions) {
                    tracing::error!(%error, "cannot queue the subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                metrics.messages_received.inc();
                if publish.dup {
                    metrics.messages_redelivered.inc();
                }
                let ack = Ack::Mqtt {
                    pkid: publish.pkid,
                    qos: publish.qos,
                    connection: connection.current(),
                };
                // The message's share of the buffer, before the connection is polled again: while
                // there is no room, nothing reads the socket, and the broker holds the rest.
                if !intake
                    .take(publish.topic, publish.payload, ack, &stop)
                    .await
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, rumqttc::SubscribeReasonCode::Success(_)));
                if granted {
                    metrics.subscribed.set(1);
                } else {
                    tracing::error!(filters = ?filters, "the broker refused a subscription");
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                {
                    // The connection is gone: its generation ends now, not at the next CONNACK.
                    // Acknowledgements queued before this point are dropped; none can be queued
                    // for the old generation after it.
                    let mut generation = connection.0.write().unwrap_or_else(|e| e.into_inner());
                    *generation += 1;
                    acks.clear();
                    eventloop.clean();
                }
                metrics.mqtt_errors.inc();
                metrics.subscribed.set(0);
                tracing::warn!(%error, retry_in = ?backoff, "mqtt connection error");
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes every queued acknowledgement on the connection and flushes them at once. Without a
/// connection there is nothing to write: the queue was emptied when the last one went, and
/// nothing is queued for a connection that is gone.
async fn write_acks(
    eventloop: &mut EventLoop,
    acks: &AckQueue,
    metrics: &Metrics,
) -> Result<(), ConnectionError> {
    let queued = acks.take();
    let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    if eventloop.network.is_none() {
        return Ok(());
    }
    let written = queued.len() as u64;
    match tokio::time::timeout(timeout, write_acknowledgements(eventloop, queued)).await {
        Ok(Ok(())) => {
            metrics.mqtt_acks_sent.inc_by(written);
            metrics.mqtt_ack_writes.inc();
            Ok(())
        }
        Ok(Err(error)) => Err(ConnectionError::MqttState(error)),
        Err(_) => Err(ConnectionError::FlushTimeout),
    }
}

/// Writes acknowledgements (packet id and QoS of the message each answers) into the connection's
/// buffer and flushes them in one write: one system call for them all, where rumqttc's
/// `AsyncClient::ack` makes one for each. Nothing is written without a connection. For a client
/// that polls `eventloop` itself and has set manual acknowledgements: the buffer is empty whenever
/// a poll has finished (a finished poll flushes it).
pub async fn write_acknowledgements(
    eventloop: &mut EventLoop,
    acks: impl IntoIterator<Item = (u16, QoS)>,
) -> Result<(), rumqttc::StateError> {
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(());
    };
    for (pkid, qos) in acks {
        let packet = match qos {
            QoS::AtLeastOnce => Packet::PubAck(PubAck::new(pkid)),
            // Not expected (the subscriptions are at QoS 1), but answered as MQTT asks.
            QoS::ExactlyOnce => Packet::PubRec(PubRec::new(pkid)),
            QoS::AtMostOnce => continue,
        };
        network.write(packet).await?;
    }
    network.flush().await
}

pub(crate) async fn maintenance_loop(
    store: Store,
    database: DatabaseConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        match store.maintain(Utc::now(), &database).await {
            // Every job whose scheduled runs fail is run here, so these are the failing ones.
            Ok(ran) => {
                metrics.timescaledb_jobs_failing.set(ran.len() as i64);
                metrics.timescaledb_jobs_run_here.inc_by(ran.len() as u64);
            }
            Err(error) => tracing::warn!(%error, "storage maintenance failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
}
