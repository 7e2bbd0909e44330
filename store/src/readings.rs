//! The ingest write path: one batch of readings and rejections in one transaction, idempotent under
//! redelivery, announced with `NOTIFY readings_committed`.
//!
//! Binary COPY straight into `readings` runs at about 2.5 times the rate of
//! `INSERT ... ON CONFLICT DO NOTHING`, and duplicates only arise when the broker redelivers a
//! message whose batch had committed before its acknowledgement was sent. So the common path is a
//! COPY, the transaction's first statement; a unique violation rolls the transaction back and the
//! batch goes again, in a new one, through a staging table and `INSERT ... ON CONFLICT DO NOTHING`,
//! which keeps the rows that are new and drops the rest. Either way a batch lands exactly once.
//!
//! The notification's payload is JSON: `{"sensors": [ids], "rows": n, "from": ts, "to": ts,
//! "received_at": ts}`: the newly stored rows' sensors, how many rows of those sensors, the time range
//! of the batch, and the `received_at` value the batch's rows carry.
//! Large batches send several notifications, each with part of the sensors.
//!
//! A refused message is stored once in `rejected_messages` (with its payload once, and its first
//! refusal), and each refused entry of it in `rejected_entries`. A reading for a (sensor, time)
//! that is stored with another value is refused as a `conflict`, with both values.

use crate::coordination::{self, Notice, ReadingsCommitted};
use crate::pipeline::{self, Params};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use std::collections::BTreeMap;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

/// One reading, ready for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub sensor_id: i32,
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub quality: i16,
}

/// One rejected message with a single reason: of the whole message (`entry: None`) or of one of its
/// entries. For writes that do not come from ingest's batches (tests, tools); ingest writes
/// [`Batch`]es.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectionRow {
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub device: Option<String>,
    pub payload: Vec<u8>,
    /// Index of the rejected entry within the message; `None` for the whole message.
    pub entry: Option<usize>,
    pub reason_code: &'static str,
    pub reason: String,
}

/// A message of a batch as it arrived, borrowed for the write: its payload is written at most once,
/// however many of its entries are refused.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub received_at: DateTime<Utc>,
    pub topic: &'a str,
    pub device: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Where a reading of a batch came from: its message (an index into [`Batch::messages`]) and its
/// entry within that message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub message: u32,
    pub entry: u32,
}

/// A refusal of one entry of a message, or of the whole message (`entry: None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// An index into [`Batch::messages`].
    pub message: u32,
    pub entry: Option<usize>,
    pub reason_code: &'static str,
    pub reason: String,
}

/// What one transaction writes.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub messages: &'a [MessageRef<'a>],
    pub readings: &'a [ReadingRow],
    /// Where each reading came from, parallel to `readings`; empty for readings that did not
    /// arrive as messages, whose conflicts are then counted but kept nowhere.
    pub origins: &'a [Origin],
    pub refusals: &'a [Refusal],
    /// Forecast issues, each with the index of its message in `forecast_messages`.
    pub forecasts: &'a [crate::forecasts::ForecastRow],
    pub forecast_messages: &'a [u32],
}

/// What one batch write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Readings newly stored.
    pub stored: u64,
    /// Readings already present with the same value (redeliveries), absorbed by the unique key.
    pub duplicates: u64,
    /// Readings for a stored (sensor, time) with another value: not stored, kept as rejections
    /// with reason `conflict`.
    pub conflicts: u64,
    /// Rejected messages newly stored.
    pub rejections_stored: u64,
    /// Forecast issues newly stored, and redelivered ones absorbed.
    pub forecasts_stored: u64,
    pub forecasts_duplicate: u64,
    /// Forecast issues refused as `conflict`: the same key is stored with other values.
    pub forecasts_conflict: u64,
}

/// The reason code of a reading whose (sensor, time) is stored with another value.
pub const CONFLICT: &str = "conflict";

/// Sensor ids per notification, keeping each payload well under PostgreSQL's 8,000-byte limit.
pub(crate) const SENSORS_PER_NOTIFICATION: usize = 500;
/// The longest topic kept with a rejection: MQTT allows 65,535 bytes, and an index entry at most
/// about 2,700.
const MAX_TOPIC_BYTES: usize = 1024;
/// The longest reason kept with a rejection or one of its entries.
const MAX_REASON_BYTES: usize = 512;

const COPY_COLUMNS: [Type; 5] = [
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::INT2,
    Type::TIMESTAMPTZ,
];
const STAGING_COLUMNS: [Type; 6] = [
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::INT2,
    Type::TIMESTAMPTZ,
    Type::INT4,
];

impl Store {
    /// Writes readings and single-reason rejections in one transaction (see [`Store::write`]).
    pub async fn write_batch(
        &self,
        readings: &[ReadingRow],
        rejections: &[RejectionRow],
        received_at: DateTime<Utc>,
    ) -> Result<WriteOutcome> {
        let messages: Vec<MessageRef> = rejections
            .iter()
            .map(|r| MessageRef {
                received_at: r.received_at,
                topic: &r.topic,
                device: r.device.as_deref(),
                payload: &r.payload,
            })
            .collect();
        let refusals: Vec<Refusal> = rejections
            .iter()
            .enumerate()
            .map(|(i, r)| Refusal {
                message: i as u32,
                entry: r.entry,
                reason_code: r.reason_code,
                reason: r.reason.clone(),
            })
            .collect();
        let batch = Batch {
            messages: &messages,
            readings,
            origins: &[],
            refusals: &refusals,
            forecasts: &[],
            forecast_messages: &[],
        };
        self.write(batch, received_at).await
    }

    /// Writes a batch in one transaction and commits it. On error nothing of the batch is kept, and
    /// the same batch may be written again; [`crate::Error::is_permanent`] tells whether doing so
    /// can succeed.
    pub async fn write(
        &self,
        batch: Batch<'_>,
        received_at: DateTime<Utc>,
    ) -> Result<WriteOutcome> {
        self.write_in_turn(batch, received_at, std::future::ready(()))
            .await
    }

    /// [`Store::write`], with everything written but the commit, which waits for `turn`: so that
    /// batches written at once still commit (and notify) in the order they came.
    pub async fn write_in_turn(
        &self,
        batch: Batch<'_>,
        received_at: DateTime<Utc>,
        turn: impl std::future::Future<Output = ()>,
    ) -> Result<WriteOutcome> {
        let readings = batch.readings;
        if let (Some(first), Some(last)) = (
            readings.iter().map(|r| r.ts).min(),
            readings.iter().map(|r| r.ts).max(),
        ) {
            self.ensure_partitions(first, last).await?;
        }
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.context("begin batch")?;
        let mut outcome = WriteOutcome::default();
        // The batch's refusals, and those the write finds (conflicts).
        let mut conflicts: Vec<Refusal> = Vec::new();
        if !readings.is_empty() {
            // The readings are the transaction's first statement: when some are stored already,
            // the transaction has nothing else to lose, and the batch starts over through staging.
            let written = match copy_readings(&tx, readings, received_at).await? {
                Some(written) => written,
                None => {
                    tx.rollback()
                        .await
                        .context("rolling back the batch's COPY")?;
                    tx = client.transaction().await.context("begin batch again")?;
                    write_through_staging(&tx, readings, received_at).await?
                }
            };
            outcome.stored = written.stored.len() as u64;
            outcome.conflicts = written.conflicts.len() as u64;
            outcome.duplicates =
                (readings.len() - written.stored.len() - written.conflicts.len()) as u64;
            // Tables kept by Tidemark take what the batch added to each 15-minute bucket;
            // TimescaleDB's continuous aggregates are recomputed from the raw readings anyway.
            let deltas = (written.all_new && !self.continuous_rollups).then_some(readings);
            record_stored(&tx, &written.stored, deltas, received_at).await?;
            for (index, stored_value) in written.conflicts {
                let Some(origin) = batch.origins.get(index) else {
                    continue;
                };
                let reading = &readings[index];
                conflicts.push(Refusal {
                    message: origin.message,
                    entry: Some(origin.entry as usize),
                    reason_code: CONFLICT,
                    reason: format!(
                        "sensor {} at {} is stored with the value {stored_value}; this reading has {}",
                        reading.sensor_id,
                        reading.ts.to_rfc3339(),
                        reading.value
                    ),
                });
            }
        }
        if !batch.forecasts.is_empty() {
            let stored = crate::forecasts::write_forecasts(&tx, batch.forecasts).await?;
            for ((row, stored), message) in batch
                .forecasts
                .iter()
                .zip(stored)
                .zip(batch.forecast_messages)
            {
                match stored {
                    crate::forecasts::Stored::New => outcome.forecasts_stored += 1,
                    crate::forecasts::Stored::Duplicate => outcome.forecasts_duplicate += 1,
                    crate::forecasts::Stored::Conflict => {
                        outcome.forecasts_conflict += 1;
                        conflicts.push(Refusal {
                        message: *message,
                        entry: None,
                        reason_code: CONFLICT,
                        reason: format!(
                            "a forecast of sensor {} from {} issued at {} is stored with other values",
                            row.sensor_id,
                            row.source,
                            row.issued_at.to_rfc3339()
                        ),
                    })
                    }
                }
            }
        }
        if !batch.refusals.is_empty() || !conflicts.is_empty() {
            let refusals = batch.refusals.iter().chain(&conflicts);
            outcome.rejections_stored = write_rejections(&tx, batch.messages, refusals).await?;
        }
        turn.await;
        tx.commit().await.context("commit batch")?;
        Ok(outcome)
    }
}

/// What writing a batch's readings did.
struct Written {
    /// `(sensor_id, ts)` of the rows newly stored.
    stored: Vec<(i32, DateTime<Utc>)>,
    /// Index in the batch and stored value of each reading whose (sensor, time) is stored with
    /// another value.
    conflicts: Vec<(usize, f64)>,
    /// Every reading of the batch was newly stored (COPY straight into `readings`).
    all_new: bool,
}

/// Copies `readings` straight into `readings`, or returns `None` (the transaction aborted) when
/// some of them are stored already.
async fn copy_readings(
    tx: &deadpool_postgres::Transaction<'_>,
    readings: &[ReadingRow],
    received_at: DateTime<Utc>,
) -> Result<Option<Written>> {
    match copy_rows(
        tx,
        "COPY readings (sensor_id, ts, value, quality, received_at) FROM STDIN (FORMAT binary)",
        readings,
        received_at,
        false,
    )
    .await
    {
        Ok(_) => Ok(Some(Written {
            stored: readings.iter().map(|r| (r.sensor_id, r.ts)).collect(),
            conflicts: Vec::new(),
            all_new: true,
        })),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(cause) => Err(crate::Error::Query {
            context: "copying readings",
            cause,
        }),
    }
}

/// Writes `readings` through a staging table: the first of each (sensor, time) that is new is
/// stored, and those stored with another value are found.
async fn write_through_staging(
    tx: &deadpool_postgres::Transaction<'_>,
    readings: &[ReadingRow],
    received_at: DateTime<Utc>,
) -> Result<Written> {
    // Some rows are stored already: through a staging table that keeps each row's place in the
    // batch, store the first of each (sensor, time) that is new, and find those stored with
    // another value.
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS readings_incoming \
         (sensor_id int4 NOT NULL, ts timestamptz NOT NULL, value float8 NOT NULL, \
          quality int2 NOT NULL, received_at timestamptz NOT NULL, ord int4 NOT NULL) \
         ON COMMIT DELETE ROWS",
    )
    .await
    .context("creating the staging table")?;
    copy_rows(
        tx,
        "COPY readings_incoming (sensor_id, ts, value, quality, received_at, ord) FROM STDIN (FORMAT binary)",
        readings,
        received_at,
        true,
    )
    .await
    .context("copying readings into staging")?;
    let rows = tx
        .query(
            "INSERT INTO readings (sensor_id, ts, value, quality, received_at) \
             SELECT DISTINCT ON (sensor_id, ts) sensor_id, ts, value, quality, received_at \
             FROM readings_incoming ORDER BY sensor_id, ts, ord \
             ON CONFLICT (sensor_id, ts) DO NOTHING RETURNING sensor_id, ts",
            &[],
        )
        .await
        .context("inserting staged readings")?;
    let conflicts = tx
        .query(
            "SELECT i.ord, r.value FROM readings_incoming i \
             JOIN readings r ON r.sensor_id = i.sensor_id AND r.ts = i.ts \
             WHERE r.value <> i.value ORDER BY i.ord",
            &[],
        )
        .await
        .context("finding conflicting readings")?;
    tx.batch_execute("TRUNCATE readings_incoming")
        .await
        .context("emptying the staging table")?;
    Ok(Written {
        stored: rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
        conflicts: conflicts
            .iter()
            .map(|row| (row.get::<_, i32>(0) as usize, row.get(1)))
            .collect(),
        all_new: false,
    })
}

async fn copy_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: &str,
    readings: &[ReadingRow],
    received_at: DateTime<Utc>,
    with_place: bool,
) -> Result<u64, tokio_postgres::Error> {
    // Prepared once per pooled connection: a round trip less for every batch.
    let statement = tx.prepare_cached(statement).await?;
    let sink = tx.copy_in(&statement).await?;
    let columns: &[Type] = if with_place {
        &STAGING_COLUMNS
    } else {
        &COPY_COLUMNS
    };
    let writer = BinaryCopyInWriter::new(sink, columns);
    pin_mut!(writer);
    for (place, r) in readings.iter().enumerate() {
        if with_place {
            let place = place as i32;
            writer
                .as_mut()
                .write(&[
                    &r.sensor_id,
                    &r.ts,
                    &r.value,
                    &r.quality,
                    &received_at,
                    &place,
                ])
                .await?;
        } else {
            writer
                .as_mut()
                .write(&[&r.sensor_id, &r.ts, &r.value, &r.quality, &received_at])
                .await?;
        }
    }
    writer.finish().await
}

/// Notes the hours `stored` changed for the rollups and queues the notifications of their
/// commit, in one round trip. With `deltas` (the readings, every one of them among `stored`), the
/// notes of the hour they arrived in and the hour before carry what they add to each 15-minute
/// bucket.
async fn record_stored(
    tx: &Transaction<'_>,
    stored: &[(i32, DateTime<Utc>)],
    deltas: Option<&[ReadingRow]>,
    received_at: DateTime<Utc>,
) -> Result<()> {
    // Deltas pay where an hour is refreshed again and again as readings keep coming: the hour
    // of arrival and the one before. An older hour (a back-fill) is mostly written once, and
    // reading it again once costs less than a delta for each of its 15-minute buckets.
    let live_from = crate::rollup::hour_of(received_at) - chrono::TimeDelta::hours(1);
    let (sensors, hours) = match deltas {
        Some(readings) => crate::rollup::dirty_notes(
            readings
                .iter()
                .filter(|r| r.ts < live_from)
                .map(|r| (r.sensor_id, r.ts)),
        ),
        None => crate::rollup::dirty_notes(stored.iter().copied()),
    };
    let deltas = crate::rollup::DeltaColumns::new(&crate::rollup::quarter_deltas(
        deltas
            .unwrap_or_default()
            .iter()
            .filter(|r| r.ts >= live_from)
            .map(|r| (r.sensor_id, r.ts, r.value, r.quality)),
    ));
    let delta_params = deltas.params();
    let notices = committed_notices(stored, received_at);
    let (channels, payloads) = coordination::notify_params(&notices);
    let notes: &Params = &[
        (&sensors, Type::INT4_ARRAY),
        (&hours, Type::TIMESTAMPTZ_ARRAY),
    ];
    let notify: &Params = &[(&channels, Type::TEXT_ARRAY), (&payloads, Type::TEXT_ARRAY)];
    let mut statements: Vec<(&str, &Params)> = Vec::new();
    if !sensors.is_empty() {
        statements.push((crate::rollup::MARK_DIRTY, notes));
    }
    if !deltas.is_empty() {
        statements.push((crate::rollup::MARK_DELTAS, &delta_params));
    }
    if !notices.is_empty() {
        statements.push((coordination::NOTIFY_ALL, notify));
    }
    pipeline::in_one_flight(tx.client(), &statements)
        .await
        .context("noting the stored readings for the rollups and notifying their commit")?;
    Ok(())
}

/// The notices of `stored`'s commit: one per `SENSORS_PER_NOTIFICATION` sensors.
fn committed_notices(stored: &[(i32, DateTime<Utc>)], received_at: DateTime<Utc>) -> Vec<Notice> {
    let (Some(from), Some(to)) = (
        stored.iter().map(|s| s.1).min(),
        stored.iter().map(|s| s.1).max(),
    ) else {
        return Vec::new();
    };
    let mut rows_per_sensor: BTreeMap<i32, u64> = BTreeMap::new();
    for (sensor, _) in stored {
        *rows_per_sensor.entry(*sensor).or_default() += 1;
    }
    let sensors: Vec<(i32, u64)> = rows_per_sensor.into_iter().collect();
    sensors
        .chunks(SENSORS_PER_NOTIFICATION)
        .map(|chunk| {
            Notice::ReadingsCommitted(ReadingsCommitted {
                sensors: chunk.iter().map(|(id, _)| *id).collect(),
                rows: chunk.iter().map(|(_, n)| n).sum(),
                from,
                to,
                received_at,
            })
        })
        .collect()
}

/// Text as PostgreSQL takes it: no NUL characters, and at most `max` bytes (cut at a character
/// boundary, marked with an ellipsis).
fn storable(text: &str, max: usize) -> String {
    let mut out = text.replace('\0', "\u{fffd}");
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Stores one row per refused message (its payload once) and one per refused entry. Returns how
/// many messages were newly stored: a redelivered message's refusal is absorbed by the unique index.
async fn write_rejections(
    tx: &Transaction<'_>,
    messages: &[MessageRef<'_>],
    refusals: impl Iterator<Item = &Refusal>,
) -> Result<u64> {
    let mut by_message: BTreeMap<u32, Vec<&Refusal>> = BTreeMap::new();
    for refusal in refusals {
        by_message.entry(refusal.message).or_default().push(refusal);
    }
    let mut received = Vec::new();
    let mut topics = Vec::new();
    let mut devices = Vec::new();
    let mut payloads = Vec::new();
    let mut entries = Vec::new();
    let mut codes = Vec::new();
    let mut reasons = Vec::new();
    let mut counts = Vec::new();
    let mut order = Vec::new();
    for (index, list) in &by_message {
        let Some(message) = messages.get(*index as usize) else {
            continue;
        };
        let first = list[0];
        let entry_count = list.iter().filter(|r| r.entry.is_some()).count();
        let reason = if list.len() > 1 {
            format!(
                "{} (and {} more refusals of this message, in rejected_entries)",
                storable(&first.reason, MAX_REASON_BYTES),
                list.len() - 1
            )
        } else {
            storable(&first.reason, MAX_REASON_BYTES)
        };
        received.push(message.received_at);
        topics.push(storable(message.topic, MAX_TOPIC_BYTES));
        devices.push(message.device.map(|d| storable(d, MAX_TOPIC_BYTES)));
        payloads.push(message.payload);
        entries.push(entry_index(first.entry));
        codes.push(first.reason_code);
        reasons.push(reason);
        counts.push(i32::try_from(entry_count).unwrap_or(i32::MAX));
        order.push(list);
    }
    let inserted = tx
        .query(
            "WITH input AS ( \
               SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bytea[], \
                                    $5::int4[], $6::text[], $7::text[], $8::int4[]) \
               WITH ORDINALITY AS u(received_at, topic, device, payload, entry, reason_code, \
                                    reason, entries_rejected, ord) \
             ), inserted AS ( \
               INSERT INTO rejected_messages \
                 (received_at, topic, device, payload, entry, reason_code, reason, entries_rejected) \
               SELECT received_at, topic, device, payload, entry, reason_code, reason, entries_rejected \
               FROM input ORDER BY ord \
               ON CONFLICT (topic, md5(payload), entry, reason_code) DO NOTHING \
               RETURNING id, topic, md5(payload) AS digest, entry, reason_code \
             ) \
             SELECT inserted.id, input.ord FROM inserted JOIN input \
               ON input.topic = inserted.topic AND md5(input.payload) = inserted.digest \
              AND input.entry = inserted.entry AND input.reason_code = inserted.reason_code",
            &[&received, &topics, &devices, &payloads, &entries, &codes, &reasons, &counts],
        )
        .await
        .context("storing rejected messages")?;
    let mut ids = Vec::new();
    let mut entry_ids = Vec::new();
    let mut entry_codes = Vec::new();
    let mut entry_reasons = Vec::new();
    for row in &inserted {
        let id: i64 = row.get(0);
        ids.push(id);
        let ord: i64 = row.get(1);
        for refusal in order[(ord - 1) as usize] {
            if let Some(entry) = refusal.entry {
                entry_ids.push((id, entry_index(Some(entry))));
                entry_codes.push(refusal.reason_code);
                entry_reasons.push(storable(&refusal.reason, MAX_REASON_BYTES));
            }
        }
    }
    if !entry_ids.is_empty() {
        let (message_ids, entries): (Vec<i64>, Vec<i32>) = entry_ids.into_iter().unzip();
        tx.execute(
            "INSERT INTO rejected_entries (message_id, entry, reason_code, reason) \
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[]) \
             ON CONFLICT DO NOTHING",
            &[&message_ids, &entries, &entry_codes, &entry_reasons],
        )
        .await
        .context("storing rejected entries")?;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids.len() as u64)
}

/// An entry's index as stored: -1 for the whole message.
fn entry_index(entry: Option<usize>) -> i32 {
    entry.map_or(-1, |e| i32::try_from(e).unwrap_or(i32::MAX))
}

/// A stored rejection, as operators and tests read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRejection {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub device: Option<String>,
    pub payload: Vec<u8>,
    pub entry: Option<usize>,
    pub reason_code: String,
    pub reason: String,
    /// How many of the message's entries were refused (0 when the whole message was).
    pub entries_rejected: u32,
}

/// One refused entry of a stored rejected message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntryRejection {
    pub entry: usize,
    pub reason_code: String,
    pub reason: String,
}

impl Store {
    /// How many readings are stored.
    pub async fn count_readings(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .context("counting readings")?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// `(timestamp, received_at)` of every reading received at or after `since`.
    pub async fn received_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT ts, received_at FROM readings WHERE received_at >= $1",
                &[&since],
            )
            .await
            .context("reading receipt times")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One sensor's readings `(ts, value, quality)` in time order.
    pub async fn sensor_readings(
        &self,
        sensor_key: &str,
    ) -> Result<Vec<(DateTime<Utc>, f64, i16)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT r.ts, r.value, r.quality FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                 WHERE s.key = $1 ORDER BY r.ts",
                &[&sensor_key],
            )
            .await
            .context("reading a sensor's readings")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The most recent rejections, newest first.
    pub async fn recent_rejections(&self, limit: i64) -> Result<Vec<StoredRejection>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT received_at, topic, device, payload, entry, reason_code, reason, id, \
                        entries_rejected \
                 FROM rejected_messages ORDER BY received_at DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .context("reading rejected messages")?;
        Ok(rows
            .iter()
            .map(|r| StoredRejection {
                received_at: r.get(0),
                topic: r.get(1),
                device: r.get(2),
                payload: r.get(3),
                entry: usize::try_from(r.get::<_, i32>(4)).ok(),
                reason_code: r.get(5),
                reason: r.get(6),
                id: r.get(7),
                entries_rejected: r.get::<_, i32>(8).max(0) as u32,
            })
            .collect())
    }

    /// The refused entries of a stored rejected message, in entry order.
    pub async fn rejected_entries(&self, message_id: i64) -> Result<Vec<StoredEntryRejection>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT entry, reason_code, reason FROM rejected_entries \
                 WHERE message_id = $1 ORDER BY entry, reason_code",
                &[&message_id],
            )
            .await
            .context("reading rejected entries")?;
        Ok(rows
            .iter()
            .map(|r| StoredEntryRejection {
                entry: r.get::<_, i32>(0).max(0) as usize,
                reason_code: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }
}
