//! The ingest service: an MQTT session task that only moves packets, and a writer task that
//! batches, commits and then acknowledges.
//!
//! Memory is bounded by `max_buffered_bytes`: the session task takes a share of that budget for
//! each message before it polls the connection again, so when the budget is spent it stops reading
//! the socket and the broker's sends back up in TCP. The share is given back as soon as the
//! message's batch has committed, before its acknowledgement leaves, so the session task never
//! waits on itself.
//!
//! A batch the database refuses for good (a data exception, an integrity violation, a program
//! limit) is split until the message behind the refusal stands alone; that message is kept as a
//! rejection (`storage_refused`) and acknowledged, and the rest is stored. Other errors (a lost
//! connection, a serialization failure) are retried with backoff, acknowledging nothing.

use crate::config::IngestConfig;
use crate::message::{self, Processed, Rules, STORAGE_REFUSED};
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::{ReadingsTopics, TopicError};
use tidemark_model::validate::TimeRules;
use tidemark_model::wire::Limits;
use tidemark_store::readings::{Batch, MessageRef, Origin, ReadingRow, Refusal, WriteOutcome};
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

/// A message received and not yet committed.
struct Received {
    publish: Publish,
    received_at: DateTime<Utc>,
    /// The MQTT connection it arrived on; an ack is only valid on that connection.
    connection: u64,
    /// Bytes this message holds of the `max_buffered_bytes` budget, given back when it is dropped.
    buffered: usize,
    _buffer: OwnedSemaphorePermit,
}

/// What is left of a committed message until it is acknowledged: no payload, no share of the
/// buffer.
struct Committed {
    pkid: u16,
    qos: QoS,
    connection: u64,
}

/// The MQTT connection generation. It moves on every connection error, under the write lock, and
/// acknowledgements are queued only under the read lock while the generation is still theirs: so
/// an acknowledgement meant for one connection is never sent on the next, where the same packet id
/// may name another message.
#[derive(Default)]
struct Generation(RwLock<u64>);

impl Generation {
    fn current(&self) -> u64 {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Room in the queue of requests to the MQTT session (acknowledgements, the subscription). One
/// connection can have at most 65,535 QoS 1 messages unacknowledged (a packet id each), and only the
/// current connection's are acknowledged, so acknowledgements always find room: the committer never
/// waits on the session task, which may itself be waiting for the buffer room that the committer's
/// next commit frees. (The queue grows only as far as it is used.)
const REQUEST_QUEUE: usize = 65_536 + 64;

/// How many bytes the rejections of one batch may write (payloads once each, and reasons). A batch
/// that would write more ends early; the rest of its messages start the next one.
const REJECTION_BYTES_PER_BATCH: usize = 8 * 1024 * 1024;

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

    let (client, eventloop) = AsyncClient::new(mqtt_options(&config, &mqtt), REQUEST_QUEUE);
    let connection = Arc::new(Generation::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let buffer = Arc::new(Semaphore::new(config.max_buffered_bytes));
    let session_stop = CancellationToken::new();
    let session = AbortOnDrop(tokio::spawn(session_loop(
        eventloop,
        client.clone(),
        filter,
        tx,
        buffer,
        config.max_buffered_bytes,
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
        metrics.clone(),
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
        carried: VecDeque::new(),
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
    max_buffered: usize,
    connection: Arc<Generation>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
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
                if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(%error, "cannot queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                metrics.messages_received.inc();
                if publish.dup {
                    metrics.messages_redelivered.inc();
                }
                let size = publish.payload.len().clamp(1, max_buffered);
                // The message's share of the buffer, before the connection is polled again: while
                // there is no room, nothing reads the socket, and the broker holds the rest.
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    permit = buffer.clone().acquire_many_owned(size as u32) => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                metrics.buffered_bytes.inc_by(size as i64);
                let received = Received {
                    publish,
                    received_at: Utc::now(),
                    connection: connection.current(),
                    buffered: size,
                    _buffer: permit,
                };
                if tx.send(received).is_err() {
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
                    tracing::error!(filter = %filter, "the broker refused the readings subscription");
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                {
                    // The connection is gone: its generation ends now, not at the next CONNACK.
                    // Acknowledgements queued before this point are dropped from the request
                    // queue (rumqttc keeps no PUBACK across a reconnect); none can be queued for
                    // the old generation after it.
                    let mut generation = connection.0.write().unwrap_or_else(|e| e.into_inner());
                    *generation += 1;
                    eventloop.clean();
                }
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

async fn maintenance_loop(
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

/// A batch decoded and validated, waiting to be committed. Rows are kept in message order, so
/// that any run of messages maps to one run of readings and one of refusals.
struct Prepared {
    messages: Vec<Received>,
    devices: Vec<Option<String>>,
    readings: Vec<ReadingRow>,
    origins: Vec<Origin>,
    refusals: Vec<Refusal>,
    /// Where each message's readings start in `readings` (and `origins`), and one past the end.
    reading_starts: Vec<usize>,
    /// Where each message's refusals start in `refusals`, and one past the end.
    refusal_starts: Vec<usize>,
}

impl Prepared {
    fn new(messages: Vec<Received>, processed: Vec<Processed>) -> Prepared {
        let mut prepared = Prepared {
            messages,
            devices: Vec::with_capacity(processed.len()),
            readings: Vec::new(),
            origins: Vec::new(),
            refusals: Vec::new(),
            reading_starts: vec![0],
            refusal_starts: vec![0],
        };
        for (index, p) in processed.into_iter().enumerate() {
            let message = index as u32;
            prepared.devices.push(p.device);
            prepared.readings.extend(p.readings);
            prepared
                .origins
                .extend(p.entries.into_iter().map(|entry| Origin { message, entry }));
            prepared
                .refusals
                .extend(p.refusals.into_iter().map(|r| Refusal {
                    message,
                    entry: r.entry,
                    reason_code: r.reason_code,
                    reason: r.reason,
                }));
            prepared.reading_starts.push(prepared.readings.len());
            prepared.refusal_starts.push(prepared.refusals.len());
        }
        prepared
    }

    fn message_refs(&self) -> Vec<MessageRef<'_>> {
        self.messages
            .iter()
            .zip(&self.devices)
            .map(|(m, device)| MessageRef {
                received_at: m.received_at,
                topic: &m.publish.topic,
                device: device.as_deref(),
                payload: &m.publish.payload,
            })
            .collect()
    }

    /// The rows of the messages in `part`.
    fn part<'a>(&'a self, messages: &'a [MessageRef<'a>], part: &Range<usize>) -> Batch<'a> {
        let readings = self.reading_starts[part.start]..self.reading_starts[part.end];
        let refusals = self.refusal_starts[part.start]..self.refusal_starts[part.end];
        Batch {
            messages,
            readings: &self.readings[readings.clone()],
            origins: &self.origins[readings],
            refusals: &self.refusals[refusals],
        }
    }
}

/// First stage: gathers messages into batches and turns them into rows.
struct Preparer {
    store: Store,
    topics: ReadingsTopics,
    directory: Directory,
    directory_loaded: DateTime<Utc>,
    rules: Rules,
    config: IngestConfig,
    /// Messages a batch left over for the next one (its rejections were at their bound).
    carried: VecDeque<Received>,
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
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Received>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Received>> {
        let first = match self.carried.pop_front() {
            Some(first) => first,
            None => tokio::select! {
                _ = shutdown.cancelled() => return None,
                first = rx.recv() => first?,
            },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.batch_linger;
        // Payload bytes stand in for readings (a reading takes about 64 bytes of JSON), so that a
        // batch is bounded before anything is decoded.
        let max_bytes = self.config.batch_max_readings * 64;
        let mut bytes = batch[0].publish.payload.len();
        while batch.len() < self.config.batch_max_messages && bytes < max_bytes {
            let next = if let Some(next) = self.carried.pop_front() {
                next
            } else {
                match rx.try_recv() {
                    Ok(next) => next,
                    Err(_) => tokio::select! {
                        biased;
                        next = rx.recv() => match next { Some(next) => next, None => break },
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = shutdown.cancelled() => break,
                    },
                }
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

    async fn prepare(&mut self, mut messages: Vec<Received>) -> Prepared {
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
        // Bound what the batch writes as rejections; the first message always goes.
        let mut rejection_bytes = 0;
        let mut keep = processed.len();
        for (index, (m, p)) in messages.iter().zip(&processed).enumerate() {
            rejection_bytes += p.rejection_bytes(m.publish.payload.len());
            if index > 0 && rejection_bytes > REJECTION_BYTES_PER_BATCH {
                keep = index;
                break;
            }
        }
        if keep < messages.len() {
            processed.truncate(keep);
            for left in messages.drain(keep..).rev() {
                self.carried.push_front(left);
            }
        }
        Prepared::new(messages, processed)
    }
}

/// Second stage: commits each prepared batch, then acknowledges its messages.
struct Committer {
    store: Store,
    client: AsyncClient,
    connection: Arc<Generation>,
    metrics: Arc<Metrics>,
    config: IngestConfig,
}

/// How one write of part of a batch ended.
enum Attempt {
    Committed(WriteOutcome),
    /// The database refused it for good: writing it again cannot succeed.
    Refused(tidemark_store::Error),
    /// Shut down before it could commit.
    Stopped,
}

impl Committer {
    async fn run(self, mut prepared: mpsc::Receiver<Prepared>, shutdown: CancellationToken) {
        while let Some(batch) = prepared.recv().await {
            if !self.commit(&batch, &shutdown).await {
                // Shut down before the batch could be committed: leave it unacknowledged so the
                // broker delivers it again to the next session.
                return;
            }
            // Committed: the payloads and their share of the buffer go now, before the
            // acknowledgements, which may wait for the session task to take them.
            let committed: Vec<Committed> = batch
                .messages
                .into_iter()
                .map(|m| {
                    self.metrics.buffered_bytes.dec_by(m.buffered as i64);
                    Committed {
                        pkid: m.publish.pkid,
                        qos: m.publish.qos,
                        connection: m.connection,
                    }
                })
                .collect();
            self.acknowledge(committed).await;
        }
    }

    /// Commits the batch, splitting it around any message the database refuses for good.
    /// Returns false if shut down first.
    async fn commit(&self, batch: &Prepared, shutdown: &CancellationToken) -> bool {
        let messages = batch.message_refs();
        let mut parts: VecDeque<Range<usize>> = VecDeque::new();
        parts.push_back(0..batch.messages.len());
        while let Some(part) = parts.pop_front() {
            let rows = batch.part(&messages, &part);
            match self.write(rows, shutdown).await {
                Attempt::Committed(outcome) => self.count(rows, outcome),
                Attempt::Stopped => return false,
                Attempt::Refused(error) if part.len() > 1 => {
                    let middle = part.start + part.len() / 2;
                    tracing::warn!(
                        stage = "ingest",
                        %error,
                        messages = part.len(),
                        "the database refused a batch; writing its halves apart"
                    );
                    parts.push_front(middle..part.end);
                    parts.push_front(part.start..middle);
                }
                Attempt::Refused(error) => {
                    if !self.refuse(&messages, part.start, &error, shutdown).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Keeps a message whose rows the database refused for good as a rejection of its own.
    /// Returns false if shut down first.
    async fn refuse(
        &self,
        messages: &[MessageRef<'_>],
        index: usize,
        error: &tidemark_store::Error,
        shutdown: &CancellationToken,
    ) -> bool {
        let refusal = [Refusal {
            message: index as u32,
            entry: None,
            reason_code: STORAGE_REFUSED,
            reason: format!(
                "the database refused this message's rows ({}): {error}",
                error.sqlstate().unwrap_or("-")
            ),
        }];
        let rows = Batch {
            messages,
            readings: &[],
            origins: &[],
            refusals: &refusal,
        };
        match self.write(rows, shutdown).await {
            Attempt::Committed(outcome) => {
                self.count(rows, outcome);
                true
            }
            Attempt::Stopped => false,
            Attempt::Refused(again) => {
                // Not even its rejection can be stored: keeping it would stall every device behind
                // it, so it is acknowledged, counted and logged in full.
                self.metrics.rejections_unstored.inc();
                tracing::error!(
                    stage = "ingest",
                    topic = %messages[index].topic.escape_debug(),
                    payload_bytes = messages[index].payload.len(),
                    error = %again,
                    "a refused message could not be kept as a rejection; acknowledging it"
                );
                true
            }
        }
    }

    /// Writes rows, retrying with backoff until they commit, the database refuses them for good,
    /// or ingest shuts down.
    async fn write(&self, rows: Batch<'_>, shutdown: &CancellationToken) -> Attempt {
        let mut backoff = self.config.retry_initial;
        loop {
            let started = Instant::now();
            match self.store.write(rows, Utc::now()).await {
                Ok(outcome) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    return Attempt::Committed(outcome);
                }
                Err(error) if error.is_permanent() => return Attempt::Refused(error),
                Err(error) => {
                    self.metrics.write_retries.inc();
                    tracing::warn!(stage = "ingest", %error, retry_in = ?backoff, "batch write failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Attempt::Stopped,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Counts what a committed write stored and refused, and logs each refused message once.
    fn count(&self, rows: Batch<'_>, outcome: WriteOutcome) {
        self.metrics.readings_stored.inc_by(outcome.stored);
        self.metrics.readings_duplicate.inc_by(outcome.duplicates);
        if outcome.conflicts > 0 {
            self.metrics
                .rejected
                .get_or_create(&vec![("reason", tidemark_store::readings::CONFLICT)])
                .inc_by(outcome.conflicts);
            tracing::warn!(
                stage = "ingest",
                readings = outcome.conflicts,
                "readings conflict with stored values of the same sensor and time"
            );
        }
        let mut last = None;
        for refusal in rows.refusals {
            self.metrics
                .rejected
                .get_or_create(&vec![("reason", refusal.reason_code)])
                .inc();
            if last == Some(refusal.message) {
                continue;
            }
            last = Some(refusal.message);
            let message = &rows.messages[refusal.message as usize];
            tracing::warn!(
                stage = "ingest",
                device = message.device.unwrap_or("-"),
                topic = %message.topic.escape_debug(),
                reason = %refusal.reason,
                "rejected payload"
            );
        }
    }

    async fn acknowledge(&self, messages: Vec<Committed>) {
        for message in messages {
            let generation = self.connection.0.read().unwrap_or_else(|e| e.into_inner());
            // A message from an earlier connection will be (or has been) redelivered with the
            // same packet id; acking the old copy could acknowledge another message.
            if message.connection != *generation {
                continue;
            }
            let mut ack = Publish::new("", message.qos, Vec::<u8>::new());
            ack.pkid = message.pkid;
            // The queue has room for every packet id of a connection (REQUEST_QUEUE). Should an
            // acknowledgement still not be queued, the broker sends the message again and the
            // unique key absorbs it.
            if let Err(error) = self.client.try_ack(&ack) {
                tracing::warn!(%error, "cannot queue an acknowledgement");
            }
        }
    }
}
