//! The preparer: gathers a batch, decodes and validates it, and reloads the device directory when a
//! rejection depends on it.

use super::shared::{Received, REJECTION_BYTES_PER_BATCH};
use crate::config::IngestConfig;
use crate::message::{self, Processed, Rules};
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::ops::Range;
use tidemark_model::topic::ReadingsTopics;
use tidemark_store::forecasts::ForecastRow;
use tidemark_store::readings::{Batch, MessageRef, Origin, ReadingRow, Refusal};
use tidemark_store::reference::Directory;
use tidemark_store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a batch that is gathering looks for more messages once it has taken all there were.
const GATHER_TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// A batch decoded and validated, waiting to be committed. Rows are kept in message order, so
/// that any run of messages maps to one run of readings and one of refusals.
pub(crate) struct Prepared {
    pub(crate) messages: Vec<Received>,
    pub(crate) devices: Vec<Option<String>>,
    pub(crate) readings: Vec<ReadingRow>,
    pub(crate) origins: Vec<Origin>,
    pub(crate) refusals: Vec<Refusal>,
    pub(crate) forecasts: Vec<ForecastRow>,
    /// The message of each forecast, parallel to `forecasts`.
    pub(crate) forecast_messages: Vec<u32>,
    /// Where each message's forecasts start in `forecasts`, and one past the end.
    pub(crate) forecast_starts: Vec<usize>,
    /// Where each message's readings start in `readings` (and `origins`), and one past the end.
    pub(crate) reading_starts: Vec<usize>,
    /// Where each message's refusals start in `refusals`, and one past the end.
    pub(crate) refusal_starts: Vec<usize>,
}

impl Prepared {
    pub(crate) fn new(messages: Vec<Received>, processed: Vec<Processed>) -> Prepared {
        let mut prepared = Prepared {
            messages,
            devices: Vec::with_capacity(processed.len()),
            readings: Vec::new(),
            origins: Vec::new(),
            refusals: Vec::new(),
            forecasts: Vec::new(),
            forecast_messages: Vec::new(),
            forecast_starts: vec![0],
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
            if let Some(forecast) = p.forecast {
                prepared.forecasts.push(forecast);
                prepared.forecast_messages.push(message);
            }
            prepared.forecast_starts.push(prepared.forecasts.len());
            prepared.reading_starts.push(prepared.readings.len());
            prepared.refusal_starts.push(prepared.refusals.len());
        }
        prepared
    }

    pub(crate) fn message_refs(&self) -> Vec<MessageRef<'_>> {
        self.messages
            .iter()
            .zip(&self.devices)
            .map(|(m, device)| MessageRef {
                received_at: m.received_at,
                topic: &m.topic,
                device: device.as_deref(),
                payload: &m.payload,
            })
            .collect()
    }

    /// The rows of the messages in `part`.
    pub(crate) fn part<'a>(
        &'a self,
        messages: &'a [MessageRef<'a>],
        part: &Range<usize>,
    ) -> Batch<'a> {
        let readings = self.reading_starts[part.start]..self.reading_starts[part.end];
        let refusals = self.refusal_starts[part.start]..self.refusal_starts[part.end];
        let forecasts = self.forecast_starts[part.start]..self.forecast_starts[part.end];
        Batch {
            messages,
            readings: &self.readings[readings.clone()],
            origins: &self.origins[readings],
            refusals: &self.refusals[refusals],
            forecasts: &self.forecasts[forecasts.clone()],
            forecast_messages: &self.forecast_messages[forecasts],
        }
    }
}

/// First stage: gathers messages into batches and turns them into rows.
pub(crate) struct Preparer {
    pub(crate) store: Store,
    pub(crate) topics: ReadingsTopics,
    pub(crate) directory: Directory,
    pub(crate) directory_loaded: DateTime<Utc>,
    pub(crate) rules: Rules,
    pub(crate) config: IngestConfig,
    /// Messages a batch left over for the next one (its rejections were at their bound).
    pub(crate) carried: VecDeque<Received>,
}

impl Preparer {
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Received>,
        prepared: mpsc::Sender<Prepared>,
        shutdown: &CancellationToken,
    ) {
        while let Some(batch) = gather(&mut self.carried, &self.config, &mut rx, shutdown).await {
            let batch = self.prepare(batch).await;
            if prepared.send(batch).await.is_err() {
                return;
            }
        }
        // Returning drops the sender: the committer finishes what it holds and stops.
    }

    pub(crate) fn process_all(&self, batch: &[Received]) -> Vec<Processed> {
        batch
            .iter()
            .map(|m| {
                message::process(
                    &m.topic,
                    &m.payload,
                    m.received_at,
                    &self.topics,
                    &self.directory,
                    self.rules,
                )
            })
            .collect()
    }

    pub(crate) async fn prepare(&mut self, mut messages: Vec<Received>) -> Prepared {
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
            rejection_bytes += p.rejection_bytes(m.payload.len());
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

/// Takes the messages carried over first, then waits for a first message, then takes more until
/// the batch holds `batch_max_messages` or about `batch_max_readings` readings' worth of payload,
/// or `batch_linger` has passed since its first message. `None` when ingest is stopping (or the
/// source is gone) before a first message.
async fn gather(
    carried: &mut VecDeque<Received>,
    config: &IngestConfig,
    rx: &mut mpsc::UnboundedReceiver<Received>,
    shutdown: &CancellationToken,
) -> Option<Vec<Received>> {
    let first = match carried.pop_front() {
        Some(first) => first,
        None => tokio::select! {
            _ = shutdown.cancelled() => return None,
            first = rx.recv() => first?,
        },
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + config.batch_linger;
    // Payload bytes stand in for readings (a reading takes about 64 bytes of JSON), so that a
    // batch is bounded before anything is decoded.
    let max_bytes = config.batch_max_readings * 64;
    let mut bytes = batch[0].payload.len();
    while batch.len() < config.batch_max_messages && bytes < max_bytes {
        let next = if let Some(next) = carried.pop_front() {
            next
        } else {
            match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                // Nothing waiting: look again after a tick, rather than have the source wake this
                // task for each message as it trickles in (at one reading per message, a thread
                // woken per message cost more CPU than the message).
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until((now + GATHER_TICK).min(deadline)) => {}
                    }
                    continue;
                }
            }
        };
        bytes += next.payload.len();
        batch.push(next);
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::shared::Ack;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Semaphore;
    use tokio::time::Instant;

    fn message(n: u16) -> Received {
        let budget = Arc::new(Semaphore::new(1));
        Received {
            topic: format!("tidemark/v1/readings/d{n}"),
            payload: bytes::Bytes::from_static(b"{}"),
            received_at: Utc::now(),
            ack: Ack::Mqtt {
                pkid: n,
                qos: rumqttc::QoS::AtLeastOnce,
                connection: 0,
            },
            buffered: 2,
            _buffer: budget.try_acquire_owned().unwrap(),
        }
    }

    fn ids(batch: &[Received]) -> Vec<u16> {
        batch
            .iter()
            .map(|m| match m.ack {
                Ack::Mqtt { pkid, .. } => pkid,
                Ack::Nats { .. } => unreachable!(),
            })
            .collect()
    }

    /// A batch takes what arrives within the linger after its first message, however it
    /// trickles in, ends when the linger is over, and leaves later messages to the next batch.
    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_what_arrives_within_its_linger() {
        let config = IngestConfig {
            batch_linger: Duration::from_millis(20),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let mut carried = VecDeque::new();
        let start = Instant::now();
        tokio::spawn(async move {
            for (at, n) in [(0, 1), (0, 2), (3, 3), (7, 4), (19, 5), (25, 6), (60, 7)] {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                tx.send(message(n)).unwrap();
            }
        });
        let first = gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .unwrap();
        assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
        let over = start.elapsed();
        assert!(
            over >= Duration::from_millis(20) && over <= Duration::from_millis(21),
            "{over:?}"
        );
        let second = gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .unwrap();
        assert_eq!(ids(&second), [6]);
        let third = gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .unwrap();
        assert_eq!(ids(&third), [7]);
        // The source is gone: nothing more.
        assert!(gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .is_none());
    }

    /// A full batch goes at once, and a stop ends the linger with what the batch holds.
    #[tokio::test(start_paused = true)]
    async fn a_full_batch_does_not_linger_and_a_stop_ends_the_linger() {
        let config = IngestConfig {
            batch_linger: Duration::from_secs(10),
            batch_max_messages: 3,
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let mut carried = VecDeque::new();
        for n in 1..=4 {
            tx.send(message(n)).unwrap();
        }
        let start = Instant::now();
        let full = gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .unwrap();
        assert_eq!(ids(&full), [1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        });
        let rest = gather(&mut carried, &config, &mut rx, &shutdown)
            .await
            .unwrap();
        assert_eq!(ids(&rest), [4]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        drop(tx);
    }
}
