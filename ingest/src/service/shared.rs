//! What the session, the preparer and the committer share: the settings, errors, a message on its
//! way, the connection generation acknowledgements are checked against, and the bounds.

use crate::config::IngestConfig;
use crate::metrics::Metrics;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rumqttc::QoS;
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::topic::TopicError;
use tidemark_store::DatabaseConfig;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
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
pub(crate) struct Received {
    /// Its MQTT topic (for a JetStream message, the device's topic its subject stands for).
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) received_at: DateTime<Utc>,
    /// How it is acknowledged once committed.
    pub(crate) ack: Ack,
    /// Bytes this message holds of the `max_buffered_bytes` budget, given back when it is dropped.
    pub(crate) buffered: usize,
    pub(crate) _buffer: OwnedSemaphorePermit,
}

/// What acknowledges a message: all that is left of it once committed (no payload, no share of
/// the buffer).
pub(crate) enum Ack {
    /// An MQTT message: its packet id, valid only on the connection it arrived on.
    Mqtt {
        pkid: u16,
        qos: QoS,
        connection: u64,
    },
    /// A JetStream message: the subject its acknowledgement is published to. Any connection will
    /// do, and one that comes too late (after the ack wait) only leads to a redelivery, which the
    /// unique key absorbs.
    Nats { reply: async_nats::Subject },
}

/// The MQTT connection generation. It moves on every connection error, under the write lock, and
/// acknowledgements are queued only under the read lock while the generation is still theirs: so
/// an acknowledgement meant for one connection is never sent on the next, where the same packet id
/// may name another message.
#[derive(Default)]
pub(crate) struct Generation(pub(crate) RwLock<u64>);

impl Generation {
    pub(crate) fn current(&self) -> u64 {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Room in the queue of requests to rumqttc's event loop: the subscription and the disconnect.
/// Acknowledgements do not go through it (see [`AckQueue`]).
pub(crate) const REQUEST_QUEUE: usize = 64;

/// MQTT acknowledgements on their way from the committer to the session task, which writes every
/// one waiting and flushes them in one write to the socket. rumqttc's own `AsyncClient::ack` sends
/// each acknowledgement through its request queue and flushes it in a system call of its own; at
/// one reading per message that was about a fifth of ingest's CPU time.
///
/// Acknowledgements are queued in the order their messages were committed, only under the
/// connection generation's read lock while the generation is still theirs, and the session task
/// empties the queue under the write lock when the connection goes: so none is ever written on a
/// connection other than the one its message arrived on. The queue holds at most one entry per
/// packet id of the current connection.
#[derive(Default)]
pub(crate) struct AckQueue {
    queued: Mutex<Vec<(u16, QoS)>>,
    ready: Notify,
}

impl AckQueue {
    /// Queues acknowledgements (packet id, QoS of the message) and wakes the session task.
    pub(crate) fn push(&self, acks: impl IntoIterator<Item = (u16, QoS)>) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let before = queued.len();
        queued.extend(acks);
        if queued.len() > before {
            self.ready.notify_one();
        }
    }

    /// Everything queued, oldest first.
    pub(crate) fn take(&self) -> Vec<(u16, QoS)> {
        std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Drops everything queued (the connection it was meant for is gone).
    pub(crate) fn clear(&self) {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Resolves once something was queued since the last time it resolved.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await
    }
}

/// How many bytes the rejections of one batch may write (payloads once each, and reasons). A batch
/// that would write more ends early; the rest of its messages start the next one.
pub(crate) const REJECTION_BYTES_PER_BATCH: usize = 8 * 1024 * 1024;

/// A task that dies with its owner: if `run` is dropped (its task aborted, as in a crash), the
/// MQTT session goes with it instead of living on unowned.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

/// How often plain-mode partitions and retention are looked after.
pub(crate) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

impl<T> AbortOnDrop<T> {
    pub(crate) async fn join(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a source hands its messages on, each with its share of the `max_buffered_bytes` budget.
pub(crate) struct Intake {
    pub(crate) tx: mpsc::UnboundedSender<Received>,
    pub(crate) buffer: Arc<Semaphore>,
    pub(crate) max_buffered: usize,
    pub(crate) metrics: Arc<Metrics>,
}

impl Intake {
    /// Takes the message's share of the buffer, waiting while there is no room (the source reads
    /// nothing more meanwhile, so the broker holds the rest), and hands the message on. False when
    /// ingest is stopping.
    pub(crate) async fn take(
        &self,
        topic: String,
        payload: Bytes,
        ack: Ack,
        stop: &CancellationToken,
    ) -> bool {
        let size = payload.len().clamp(1, self.max_buffered);
        // While there is room, the share is taken at once, without arming a wait for it and for
        // the stop: that was a few percent of ingest's CPU at one reading per message.
        let permit = match self.buffer.clone().try_acquire_many_owned(size as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return false,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                _ = stop.cancelled() => return false,
                permit = self.buffer.clone().acquire_many_owned(size as u32) => match permit {
                    Ok(permit) => permit,
                    Err(_) => return false,
                },
            },
        };
        self.metrics.buffered_bytes.inc_by(size as i64);
        let received = Received {
            topic,
            payload,
            received_at: Utc::now(),
            ack,
            buffered: size,
            _buffer: permit,
        };
        self.tx.send(received).is_ok()
    }
}
