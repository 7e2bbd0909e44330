//! The ingest service: an MQTT session task that only moves packets, and a writer task that
//! batches, commits and then acknowledges.
//!
//! The session task never waits on the database or on buffer space, so keep-alives and
//! acknowledgements flow while the database is slow or down. What is received but not yet committed
//! is bounded by the broker's in-flight window of unacknowledged messages; of it, at most
//! `max_buffered_bytes` are handed to the batcher, and the rest wait in the session task.

use crate::config::IngestConfig;
use crate::message::{self, Processed, Rules};
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::{ReadingsTopics, TopicError};
use tidemark_model::validate::TimeRules;
use tidemark_model::wire::Limits;
use tidemark_store::readings::{ReadingRow, RejectionRow};
use tidemark_store::reference::Directory;
use tidemark_store::{DatabaseConfig, Store};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ingest configuration: {0}")]
    Config(String),
    #[error("invalid topic configuration: {0}")]
    Topic(#[from] TopicError),
    #[error("ingest cannot start: {0}")]
    Store(#[from] tidemark_store::Error),
}

/// Everything ingest needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest: IngestConfig,
    pub mqtt: BrokerConfig,
    pub database: DatabaseConfig,
}

/// A message received and not yet acknowledged.
struct Received {
    publish: Publish,
    received_at: DateTime<Utc>,
    /// The MQTT connection it arrived on; an ack is only valid on that connection.
    connection: u64,
    /// Bytes this message holds of the `max_buffered_bytes` budget, released when it is dropped.
    buffered: usize,
    _buffer: OwnedSemaphorePermit,
}

/// A task that dies with its owner: if `run` is dropped (its task aborted, as in a crash), the
/// MQTT session goes with it instead of living on unowned.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often plain-mode partitions and retention are looked after.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs ingest until `shutdown` is cancelled; then finishes the batch in hand and disconnects.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Settings {
        ingest: config,
        mqtt,
        database,
    } = settings;
    config.validate().map_err(Error::Config)?;
    let topics = ReadingsTopics::new(&mqtt.topic_prefix)?;
    let filter = topics.filter(config.shared_group.as_deref())?;
    let store = Store::connect(&database).await?;
    let directory = store.directory().await?;

    let (client, eventloop) = AsyncClient::new(
        mqtt_options(&config, &mqtt),
        config.batch_max_messages * 2 + 16,
    );
    let connection = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let buffer = Arc::new(Semaphore::new(config.max_buffered_bytes));
    let session_stop = CancellationToken::new();
    let session = AbortOnDrop(tokio::spawn(session_loop(
        eventloop,
        client.clone(),
        filter,
        tx,
        buffer,
        config.max_payload_bytes,
        connection.clone(),
        metrics.clone(),
        session_stop.clone(),
    )));
    let _rollups = AbortOnDrop(tokio::spawn({
        let (store, stop) = (store.clone(), shutdown.clone());
        let every = database.rollup_refresh;
        async move {
            store
                .keep_rollups_fresh(every, stop.cancelled_owned())
                .await
        }
    }));
    let _maintenance = AbortOnDrop(tokio::spawn(maintenance_loop(
        store.clone(),
        database,
        shutdown.clone(),
    )));
    tracing::info!(client_id = %config.client_id, mode = %store.mode(), "ingest started");

    let preparer = Preparer {
        store: store.clone(),
        topics,
        directory,
        directory_loaded: Utc::now(),
        rules: Rules {
            time: TimeRules {
                future_tolerance: config.future_tolerance,
                max_age: config.max_age,
            },
            limits: Limits {
                max_bytes: config.max_payload_bytes,
                max_readings: config.max_readings_per_message,
            },
        },
        config: config.clone(),
    };
    let committer = Committer {
        store,
        client: client.clone(),
        connection,
        metrics,
        config,
    };
    // Two stages, so that decoding the next batch overlaps committing this one. The channel holds
    // one prepared batch: at most two batches wait on the database at any time.
    let (prepared_tx, prepared_rx) = mpsc::channel(1);
    let committing = AbortOnDrop(tokio::spawn(committer.run(prepared_rx, shutdown.clone())));
    preparer.run(rx, prepared_tx, &shutdown).await;
    committing.join().await;

    // Acknowledgements queued by the writer go out before the disconnect, in request order.
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), session.join())
        .await
        .is_err()
    {
        tracing::warn!("mqtt session did not close within 5s");
    }
    session_stop.cancel();
    tracing::info!("ingest stopped");
    Ok(())
}

fn mqtt_options(config: &IngestConfig, mqtt: &BrokerConfig) -> MqttOptions {
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

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    tx: mpsc::UnboundedSender<Received>,
    buffer: Arc<Semaphore>,
    max_payload: usize,
    connection: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // Messages that arrived while the buffer was full. The event loop must go on being polled
    // regardless, or the acknowledgements of committed batches could never leave and nothing would
    // free the buffer; so instead of waiting for room, newcomers wait here, bounded by the broker's
    // in-flight window.
    let mut overflow: VecDeque<(Publish, DateTime<Utc>, u64, usize)> = VecDeque::new();
    loop {
        while let Some((_, _, _, size)) = overflow.front() {
            let Ok(permit) = buffer.clone().try_acquire_many_owned(*size as u32) else {
                break;
            };
            let (publish, received_at, on, size) = overflow.pop_front().expect("front exists");
            let received = Received {
                publish,
                received_at,
                connection: on,
                buffered: size,
                _buffer: permit,
            };
            if tx.send(received).is_err() {
                return;
            }
        }
        let waiting_for = overflow.front().map_or(0, |o| o.3 as u32);
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
            room = buffer.acquire_many(waiting_for), if waiting_for > 0 => {
                // Room again: released at once and taken in order at the top of the loop.
                drop(room);
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                metrics.subscribed.set(0);
                let id = connection.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::info!(
                    connection = id,
                    session_present = ack.session_present,
                    "mqtt connected"
                );
                // Re-subscribing on a resumed session is harmless and covers a broker that lost it.
                if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(%error, "cannot queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                metrics.messages_received.inc();
                if publish.dup {
                    metrics.messages_redelivered.inc();
                }
                let size = publish.payload.len().clamp(1, max_payload.max(1));
                metrics.buffered_bytes.inc_by(size as i64);
                // Queued behind any earlier overflow, so that messages keep their order.
                overflow.push_back((publish, Utc::now(), connection.load(Ordering::SeqCst), size));
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, rumqttc::SubscribeReasonCode::Success(_)));
                if granted {
                    metrics.subscribed.set(1);
                } else {
                    tracing::error!(filter = %filter, "the broker refused the readings subscription");
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                metrics.mqtt_errors.inc();
                metrics.subscribed.set(0);
                tracing::warn!(%error, retry_in = ?backoff, "mqtt connection error");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn maintenance_loop(store: Store, database: DatabaseConfig, shutdown: CancellationToken) {
    loop {
        if let Err(error) = store.maintain(Utc::now(), &database).await {
            tracing::warn!(%error, "storage maintenance failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
}

/// A batch decoded and validated, waiting to be committed.
struct Prepared {
    messages: Vec<Received>,
    readings: Vec<ReadingRow>,
    rejections: Vec<RejectionRow>,
}

/// First stage: gathers messages into batches and turns them into rows.
struct Preparer {
    store: Store,
    topics: ReadingsTopics,
    directory: Directory,
    directory_loaded: DateTime<Utc>,
    rules: Rules,
    config: IngestConfig,
}

impl Preparer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Received>,
        prepared: mpsc::Sender<Prepared>,
        shutdown: &CancellationToken,
    ) {
        while let Some(batch) = self.gather(&mut rx, shutdown).await {
            let batch = self.prepare(batch).await;
            if prepared.send(batch).await.is_err() {
                return;
            }
        }
        // Returning drops the sender: the committer finishes what it holds and stops.
    }

    /// Waits for a first message, then takes more until the batch is full or has lingered.
    async fn gather(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Received>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Received>> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return None,
            first = rx.recv() => first?,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.batch_linger;
        // Payload bytes stand in for readings (a reading takes about 64 bytes of JSON), so that a
        // batch is bounded before anything is decoded.
        let max_bytes = self.config.batch_max_readings * 64;
        let mut bytes = batch[0].publish.payload.len();
        while batch.len() < self.config.batch_max_messages && bytes < max_bytes {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(_) => tokio::select! {
                    biased;
                    next = rx.recv() => match next { Some(next) => next, None => break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.cancelled() => break,
                },
            };
            bytes += next.publish.payload.len();
            batch.push(next);
        }
        Some(batch)
    }

    fn process_all(&self, batch: &[Received]) -> Vec<Processed> {
        batch
            .iter()
            .map(|m| {
                message::process(
                    &m.publish.topic,
                    &m.publish.payload,
                    m.received_at,
                    &self.topics,
                    &self.directory,
                    self.rules,
                )
            })
            .collect()
    }

    async fn prepare(&mut self, messages: Vec<Received>) -> Prepared {
        let mut processed = self.process_all(&messages);
        // A rejection for an unknown device or sensor is final only if judged by a directory
        // loaded after the message arrived: reference data may have been added since.
        let stale = messages
            .iter()
            .zip(&processed)
            .any(|(m, p)| p.depends_on_directory && m.received_at >= self.directory_loaded);
        if stale {
            let loaded_at = Utc::now();
            match self.store.directory().await {
                Ok(directory) => {
                    self.directory = directory;
                    self.directory_loaded = loaded_at;
                    processed = self.process_all(&messages);
                }
                Err(error) => tracing::warn!(%error, "cannot reload the device directory"),
            }
        }
        let mut readings = Vec::new();
        let mut rejections = Vec::new();
        for p in processed {
            readings.extend(p.readings);
            rejections.extend(p.rejections);
        }
        Prepared {
            messages,
            readings,
            rejections,
        }
    }
}

/// Second stage: commits each prepared batch, then acknowledges its messages.
struct Committer {
    store: Store,
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    config: IngestConfig,
}

impl Committer {
    async fn run(self, mut prepared: mpsc::Receiver<Prepared>, shutdown: CancellationToken) {
        while let Some(batch) = prepared.recv().await {
            if !self.commit(&batch, &shutdown).await {
                // Shut down before the batch could be committed: leave it unacknowledged so the
                // broker delivers it again to the next session.
                return;
            }
            self.acknowledge(batch.messages).await;
        }
    }

    /// Writes the batch, retrying with backoff until it commits. Returns false if shut down first.
    async fn commit(&self, batch: &Prepared, shutdown: &CancellationToken) -> bool {
        let mut backoff = self.config.retry_initial;
        loop {
            let started = Instant::now();
            let written = self
                .store
                .write_batch(&batch.readings, &batch.rejections, Utc::now())
                .await;
            match written {
                Ok(outcome) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    self.metrics.readings_stored.inc_by(outcome.stored);
                    self.metrics.readings_duplicate.inc_by(outcome.duplicates);
                    for rejection in &batch.rejections {
                        self.metrics
                            .rejected
                            .get_or_create(&vec![("reason", rejection.reason_code)])
                            .inc();
                        tracing::warn!(
                            stage = "ingest",
                            device = rejection.device.as_deref().unwrap_or("-"),
                            topic = %rejection.topic,
                            reason = %rejection.reason,
                            "rejected payload"
                        );
                    }
                    return true;
                }
                Err(error) => {
                    self.metrics.write_retries.inc();
                    tracing::warn!(stage = "ingest", %error, retry_in = ?backoff, "batch write failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    async fn acknowledge(&self, messages: Vec<Received>) {
        let current = self.connection.load(Ordering::SeqCst);
        for message in messages {
            self.metrics.buffered_bytes.dec_by(message.buffered as i64);
            // A message from an earlier connection will be (or has been) redelivered with the same
            // packet id; acking the old copy could acknowledge a different message.
            if message.connection != current {
                continue;
            }
            if let Err(error) = self.client.ack(&message.publish).await {
                tracing::warn!(%error, "cannot queue an acknowledgement");
            }
        }
    }
}
