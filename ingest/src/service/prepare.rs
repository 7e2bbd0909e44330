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
        while let Some(batch) = self.gather(&mut rx, shutdown).await {
            let batch = self.prepare(batch).await;
            if prepared.send(batch).await.is_err() {
                return;
            }
        }
        // Returning drops the sender: the committer finishes what it holds and stops.
    }

    /// Waits for a first message, then takes more until the batch is full or has lingered.
    pub(crate) async fn gather(
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
        let mut bytes = batch[0].payload.len();
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
            bytes += next.payload.len();
            batch.push(next);
        }
        Some(batch)
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
