//! Readings as Apache Parquet.
//!
//! Raw readings are written row group by row group while the rows stream from the database, so an
//! export never holds more than one row group in memory. Columns: `ts` and `received_at` (INT64,
//! timestamps in microseconds, UTC), `value` (DOUBLE, in the quantity's canonical unit), `quality`
//! (INT32 holding the 16-bit flags).
//!
//! Aggregated buckets (at most the API's bucket limit, already in memory) are written in one go by
//! [`buckets`]: `start` (timestamp), one column per aggregate asked for (DOUBLE, `count` INT64;
//! null where a bucket has no value), `flagged` (INT64), `quality` (INT32) and `state` (STRING).
//!
//! The file's key-value metadata names the sensor, quantity and unit. Snappy-compressed.

use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::io::Write;
use std::sync::Arc;
use tidemark_store::opendata::RawReading;
use tokio::sync::mpsc;

/// Rows per row group: about 1.5 MB of column data before compression.
const ROW_GROUP: usize = 65_536;

/// Bytes gathered before they go to the response.
const CHUNK: usize = 256 * 1024;

const SCHEMA: &str = "message readings {
    required int64 ts (TIMESTAMP(MICROS, true));
    required double value;
    required int32 quality (INTEGER(16, true));
    required int64 received_at (TIMESTAMP(MICROS, true));
}";

type Chunk = Result<Bytes, std::io::Error>;

/// A `Write` that hands its bytes to the response body in chunks. Used from a blocking thread.
struct Sink {
    sender: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl Sink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

type Writer = SerializedFileWriter<Sink>;

fn io_error(error: parquet::errors::ParquetError) -> std::io::Error {
    std::io::Error::other(error)
}

fn write_group(writer: &mut Writer, rows: &[RawReading]) -> parquet::errors::Result<()> {
    let ts: Vec<i64> = rows.iter().map(|r| r.ts.timestamp_micros()).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
    let quality: Vec<i32> = rows.iter().map(|r| i32::from(r.quality)).collect();
    let received: Vec<i64> = rows
        .iter()
        .map(|r| r.received_at.timestamp_micros())
        .collect();
    let mut group = writer.next_row_group()?;
    let mut index = 0;
    while let Some(mut column) = group.next_column()? {
        match index {
            0 => column.typed::<Int64Type>().write_batch(&ts, None, None)?,
            1 => column
                .typed::<DoubleType>()
                .write_batch(&values, None, None)?,
            2 => column
                .typed::<Int32Type>()
                .write_batch(&quality, None, None)?,
            _ => column
                .typed::<Int64Type>()
                .write_batch(&received, None, None)?,
        };
        column.close()?;
        index += 1;
    }
    group.close()?;
    Ok(())
}

/// The response body: `rows` written as a Parquet file as they arrive.
pub fn body(
    rows: impl Stream<Item = tidemark_store::Result<RawReading>> + Send + 'static,
    metadata: Vec<(String, String)>,
) -> Body {
    let (sender, receiver) = mpsc::channel::<Chunk>(8);
    tokio::spawn(async move {
        let failed = sender.clone();
        if let Err(error) = produce(rows, metadata, sender).await {
            tracing::warn!(%error, "parquet export ended early");
            let _ = failed.send(Err(error)).await;
        }
    });
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Body::from_stream(chunks)
}

fn properties(metadata: Vec<(String, String)>) -> Arc<WriterProperties> {
    Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("tidemark ", env!("CARGO_PKG_VERSION")).to_owned())
            .set_key_value_metadata(Some(
                metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            ))
            .build(),
    )
}

/// One aggregated bucket, as [`buckets`] writes it.
#[derive(Debug, Clone)]
pub struct BucketRecord {
    pub start: DateTime<Utc>,
    /// One per aggregate asked for, in the order asked; `None` where the bucket has no value.
    pub values: Vec<Option<f64>>,
    pub flagged: i64,
    pub quality: i16,
    pub state: &'static str,
}

/// Aggregated buckets as a whole Parquet file. `aggregates` name the value columns; `count`
/// becomes an integer column.
pub fn buckets(
    aggregates: &[&str],
    rows: &[BucketRecord],
    metadata: Vec<(String, String)>,
) -> parquet::errors::Result<Vec<u8>> {
    let mut schema =
        String::from("message buckets {\n required int64 start (TIMESTAMP(MICROS, true));\n");
    for name in aggregates {
        let kind = if *name == "count" { "int64" } else { "double" };
        schema.push_str(&format!(" optional {kind} {name};\n"));
    }
    schema.push_str(
        " required int64 flagged;\n required int32 quality (INTEGER(16, true));\n required binary state (STRING);\n}",
    );
    let schema = Arc::new(parse_message_type(&schema)?);
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties(metadata))?;
    let mut group = writer.next_row_group()?;
    let mut index = 0;
    while let Some(mut column) = group.next_column()? {
        if index == 0 {
            let starts: Vec<i64> = rows.iter().map(|r| r.start.timestamp_micros()).collect();
            column
                .typed::<Int64Type>()
                .write_batch(&starts, None, None)?;
        } else if index <= aggregates.len() {
            let at = index - 1;
            let present: Vec<i16> = rows
                .iter()
                .map(|r| i16::from(r.values[at].is_some()))
                .collect();
            let values = rows.iter().filter_map(|r| r.values[at]);
            if aggregates[at] == "count" {
                let counts: Vec<i64> = values.map(|v| v as i64).collect();
                column
                    .typed::<Int64Type>()
                    .write_batch(&counts, Some(&present), None)?;
            } else {
                let values: Vec<f64> = values.collect();
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, Some(&present), None)?;
            }
        } else {
            match index - aggregates.len() {
                1 => {
                    let flagged: Vec<i64> = rows.iter().map(|r| r.flagged).collect();
                    column
                        .typed::<Int64Type>()
                        .write_batch(&flagged, None, None)?;
                }
                2 => {
                    let quality: Vec<i32> = rows.iter().map(|r| i32::from(r.quality)).collect();
                    column
                        .typed::<Int32Type>()
                        .write_batch(&quality, None, None)?;
                }
                _ => {
                    let states: Vec<ByteArray> =
                        rows.iter().map(|r| ByteArray::from(r.state)).collect();
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&states, None, None)?;
                }
            }
        }
        column.close()?;
        index += 1;
    }
    group.close()?;
    writer.into_inner()
}

async fn produce(
    rows: impl Stream<Item = tidemark_store::Result<RawReading>> + Send + 'static,
    metadata: Vec<(String, String)>,
    sender: mpsc::Sender<Chunk>,
) -> std::io::Result<()> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(io_error)?);
    let properties = properties(metadata);
    let sink = Sink {
        sender,
        buffer: Vec::with_capacity(CHUNK),
    };
    let mut writer = tokio::task::spawn_blocking(move || Writer::new(sink, schema, properties))
        .await
        .map_err(std::io::Error::other)?
        .map_err(io_error)?;
    let mut rows = Box::pin(rows);
    let mut batch = Vec::with_capacity(ROW_GROUP);
    loop {
        let next = rows.next().await;
        let done = next.is_none();
        if let Some(row) = next {
            batch.push(row.map_err(std::io::Error::other)?);
        }
        if batch.len() == ROW_GROUP || (done && !batch.is_empty()) {
            let rows = std::mem::take(&mut batch);
            writer = tokio::task::spawn_blocking(move || {
                write_group(&mut writer, &rows).map(|()| writer)
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(io_error)?;
        }
        if done {
            break;
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut sink = writer.into_inner().map_err(io_error)?;
        sink.flush()
    })
    .await
    .map_err(std::io::Error::other)?
}
