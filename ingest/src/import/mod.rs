//! `tidemark import`: readings from a CSV or Parquet file (utilities' and researchers' history)
//! through the same checks and the same batch write as MQTT readings.
//!
//! A file is read on a thread of its own and handed over in batches through a channel of two, so
//! the file is never held in memory whole. Every batch is one transaction: readings already
//! stored with the same value are absorbed by the readings' key and rejections by theirs, so an
//! import that stops half-way (or runs twice) stores every reading exactly once when run again.
//! A refused row is kept in `rejected_messages` with the topic `import/<file name>`, the row as
//! its payload and the reason, as a refused MQTT message is.

mod mapping;
mod source;
mod zone;

pub use mapping::{Format, Layout, Mapping};
pub use source::Position;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use source::{Cell, Row, Source};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tidemark_model::unit::Unit;
use tidemark_model::validate::{validate, SensorSpec, TimeRules};
use tidemark_model::wire::WireReading;
use tidemark_model::{Quality, RejectReason, SensorKey};
use tidemark_store::readings::{ReadingRow, RejectionRow};
use tidemark_store::reference::Directory;
use tidemark_store::Store;
use zone::Local;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file or the mapping cannot be used: nothing was written.
    #[error("{0}")]
    Unusable(String),
    #[error(transparent)]
    Store(#[from] tidemark_store::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Check every row, write nothing.
    pub dry_run: bool,
    /// Readings and rejections per transaction.
    pub batch: usize,
    pub time_rules: TimeRules,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    /// Readings the file holds that passed the checks.
    pub readings: u64,
    /// Of those, newly stored; already stored with the same value; stored with another value
    /// (kept as rejections with reason `conflict`).
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Values refused by the checks (each kept with its reason).
    pub rejected: u64,
    /// Cells with no value, skipped.
    pub empty: u64,
}

/// The refused rows' bytes one batch may hold: rows of a file can be long.
const MAX_REJECTED_BYTES: usize = 8 << 20;

struct Batch {
    readings: Vec<ReadingRow>,
    rejections: Vec<RejectionRow>,
    summary: Summary,
    position: Position,
}

/// The file's format, from the mapping or the file name.
pub fn format_of(path: &Path, mapping: &Mapping) -> Result<Format, String> {
    if let Some(format) = mapping.file.format {
        return Ok(format);
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv" | "txt" | "tsv") => Ok(Format::Csv),
        Some("parquet" | "pq") => Ok(Format::Parquet),
        _ => Err(format!(
            "cannot tell the format of {} from its name: set format = \"csv\" or \"parquet\"",
            path.display()
        )),
    }
}

/// Imports `path`, calling `progress` after every batch.
pub async fn import(
    store: &Store,
    path: &Path,
    mapping: &Mapping,
    options: Options,
    mut progress: impl FnMut(Position, &Summary),
) -> Result<Summary, ImportError> {
    let format = format_of(path, mapping).map_err(ImportError::Unusable)?;
    let directory = store.directory().await?;
    let now = Utc::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, String>>(2);
    let reader = Reader {
        path: path.to_owned(),
        format,
        mapping: mapping.clone(),
        directory,
        now,
        options,
    };
    let thread = tokio::task::spawn_blocking(move || reader.run(&tx));
    let mut total = Summary::default();
    while let Some(batch) = rx.recv().await {
        let batch = batch.map_err(ImportError::Unusable)?;
        let mut summary = batch.summary;
        let empty = batch.readings.is_empty() && batch.rejections.is_empty();
        if !options.dry_run && !empty {
            let outcome = store
                .write_batch(&batch.readings, &batch.rejections, now)
                .await?;
            summary.stored = outcome.stored;
            summary.duplicates = outcome.duplicates;
            summary.conflicts = outcome.conflicts;
        }
        add(&mut total, &summary);
        progress(batch.position, &total);
    }
    thread
        .await
        .map_err(|e| ImportError::Unusable(format!("the file reader failed: {e}")))?;
    Ok(total)
}

fn add(total: &mut Summary, part: &Summary) {
    total.rows += part.rows;
    total.readings += part.readings;
    total.stored += part.stored;
    total.duplicates += part.duplicates;
    total.conflicts += part.conflicts;
    total.rejected += part.rejected;
    total.empty += part.empty;
}

/// Where a reading's parts are in a row.
struct Columns {
    time: usize,
    quality: Option<usize>,
    values: Vec<ValueColumn>,
    /// Long layout: the sensor and unit columns.
    sensor: Option<usize>,
    unit: Option<usize>,
}

struct ValueColumn {
    index: usize,
    /// Fixed for wide columns and for a long file of one sensor.
    sensor: Option<String>,
    unit: Option<Unit>,
    quality: Option<usize>,
}

struct Reader {
    path: PathBuf,
    format: Format,
    mapping: Mapping,
    directory: Directory,
    now: DateTime<Utc>,
    options: Options,
}

impl Reader {
    fn run(self, tx: &tokio::sync::mpsc::Sender<Result<Batch, String>>) {
        if let Err(error) = self.read(tx) {
            let _ = tx.blocking_send(Err(error));
        }
    }

    fn read(&self, tx: &tokio::sync::mpsc::Sender<Result<Batch, String>>) -> Result<(), String> {
        let file = &self.mapping.file;
        let (mut source, names) =
            Source::open(&self.path, self.format, file.delimiter, file.encoding)?;
        let columns = self.columns(&names)?;
        let topic = format!(
            "import/{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut batch = self.empty_batch(&source);
        let mut last: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut bytes = 0;
        while let Some(row) = source.next_row() {
            batch.summary.rows += 1;
            let before = batch.rejections.len();
            match row {
                Ok(row) => self.row(&row, &columns, &topic, &mut last, &mut batch),
                Err(bad) => {
                    batch.summary.rejected += 1;
                    batch.rejections.push(self.rejection(
                        &topic,
                        bad.raw,
                        None,
                        bad.number,
                        "malformed",
                        bad.reason,
                    ));
                }
            }
            bytes += batch.rejections[before..]
                .iter()
                .map(|r| r.payload.len())
                .sum::<usize>();
            if batch.readings.len() + batch.rejections.len() >= self.options.batch
                || bytes >= MAX_REJECTED_BYTES
            {
                batch.position = source.position();
                let full = std::mem::replace(&mut batch, self.empty_batch(&source));
                bytes = 0;
                if tx.blocking_send(Ok(full)).is_err() {
                    return Ok(());
                }
            }
        }
        batch.position = source.position();
        batch.position.done = batch.position.total.max(batch.position.done);
        let _ = tx.blocking_send(Ok(batch));
        Ok(())
    }

    fn empty_batch(&self, source: &Source) -> Batch {
        Batch {
            readings: Vec::new(),
            rejections: Vec::new(),
            summary: Summary::default(),
            position: source.position(),
        }
    }

    fn columns(&self, names: &[String]) -> Result<Columns, String> {
        let find = |name: &str| {
            names.iter().position(|n| n == name.trim()).ok_or_else(|| {
                format!(
                    "the file has no column {name:?}; its columns are {}",
                    names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        let optional = |name: &Option<String>| name.as_deref().map(find).transpose();
        let file = &self.mapping.file;
        let values = match file.layout {
            Layout::Long => vec![ValueColumn {
                index: find(file.columns.value.as_deref().unwrap_or_default())?,
                sensor: file.sensor.clone(),
                unit: self.mapping.unit,
                quality: None,
            }],
            Layout::Wide => file
                .wide
                .iter()
                .zip(&self.mapping.wide_units)
                .map(|(w, unit)| {
                    Ok(ValueColumn {
                        index: find(&w.column)?,
                        sensor: Some(w.sensor.clone()),
                        unit: unit.or(self.mapping.unit),
                        quality: optional(&w.quality)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        Ok(Columns {
            time: find(&file.columns.time)?,
            quality: optional(&file.columns.quality)?,
            values,
            sensor: optional(&file.columns.sensor)?,
            unit: optional(&file.columns.unit)?,
        })
    }

    fn rejection(
        &self,
        topic: &str,
        raw: Vec<u8>,
        entry: Option<usize>,
        row: u64,
        code: &'static str,
        reason: String,
    ) -> RejectionRow {
        RejectionRow {
            received_at: self.now,
            topic: topic.to_owned(),
            device: None,
            payload: raw,
            entry,
            reason_code: code,
            reason: format!("row {row}: {reason}"),
        }
    }

    fn row(
        &self,
        row: &Row,
        columns: &Columns,
        topic: &str,
        last: &mut HashMap<String, DateTime<Utc>>,
        batch: &mut Batch,
    ) {
        let wide = self.mapping.file.layout == Layout::Wide;
        for (i, value) in columns.values.iter().enumerate() {
            let entry = wide.then_some(i);
            match self.reading(row, columns, value, last) {
                Ok(None) => batch.summary.empty += 1,
                Ok(Some(reading)) => {
                    batch.summary.readings += 1;
                    batch.readings.push(reading);
                }
                Err((code, reason)) => {
                    batch.summary.rejected += 1;
                    batch.rejections.push(self.rejection(
                        topic,
                        row.raw.clone(),
                        entry,
                        row.number,
                        code,
                        reason,
                    ));
                }
            }
        }
    }

    /// One value of a row as a checked reading; `None` for an empty cell.
    fn reading(
        &self,
        row: &Row,
        columns: &Columns,
        value: &ValueColumn,
        last: &mut HashMap<String, DateTime<Utc>>,
    ) -> Result<Option<ReadingRow>, (&'static str, String)> {
        let cell = |i: usize| row.cells.get(i).unwrap_or(&Cell::Empty);
        let malformed = |reason: String| ("malformed", reason);
        let number = match cell(value.index) {
            Cell::Empty => return Ok(None),
            Cell::Number(n) => *n,
            Cell::Text(text) => self.mapping.number(text).map_err(malformed)?,
            Cell::Instant(_) | Cell::Local(_) => {
                return Err(malformed("a time where a value belongs".into()))
            }
        };
        let sensor = match (&value.sensor, columns.sensor.map(cell)) {
            (Some(sensor), _) => sensor.clone(),
            (None, Some(Cell::Text(sensor))) => sensor.clone(),
            (None, _) => return Err(malformed("no sensor".into())),
        };
        let key =
            SensorKey::parse(&sensor).map_err(|e| malformed(format!("sensor {sensor:?}: {e}")))?;
        let Some((sensor_id, spec)) = self.directory.sensors.get(&key) else {
            let reason = RejectReason::UnknownSensor(key);
            return Err((reason.code(), reason.to_string()));
        };
        let unit = match columns.unit.map(cell) {
            Some(Cell::Text(symbol)) => {
                Unit::parse(symbol).map_err(|e| ("unknown_unit", e.to_string()))?
            }
            _ => value.unit.unwrap_or_else(|| spec.quantity.canonical_unit()),
        };
        let quality = match value.quality.or(columns.quality).map(cell) {
            None | Some(Cell::Empty) => Quality::GOOD,
            Some(Cell::Text(code)) => self.mapping.quality(code).map_err(malformed)?,
            Some(Cell::Number(n)) => self.mapping.quality(&n.to_string()).map_err(malformed)?,
            Some(_) => return Err(malformed("a time where a quality code belongs".into())),
        };
        // Within a series, the second of two equal local times in the hour the clocks go back
        // is the later instant; a wide file's series share the row's time.
        let series = if self.mapping.file.layout == Layout::Wide {
            String::new()
        } else {
            sensor.clone()
        };
        let ts = self
            .instant(cell(columns.time), last.get(&series).copied())
            .map_err(malformed)?;
        last.insert(series, ts);
        let reading = validate(
            WireReading {
                sensor: key,
                ts,
                value: number,
                unit,
                quality,
            },
            &spec.device,
            Some(spec as &SensorSpec),
            self.now,
            self.options.time_rules,
        )
        .map_err(|reason| (reason.code(), reason.to_string()))?;
        Ok(Some(ReadingRow {
            sensor_id: *sensor_id,
            ts: reading.ts,
            value: reading.value,
            quality: reading.quality.0,
        }))
    }

    fn instant(&self, cell: &Cell, last: Option<DateTime<Utc>>) -> Result<DateTime<Utc>, String> {
        let local = |naive: NaiveDateTime| match self.mapping.zone.resolve(naive)? {
            Local::One(at) => Ok(at),
            Local::Twice(early, late) => Ok(if last.is_some_and(|l| l >= early) {
                late
            } else {
                early
            }),
        };
        let format = self.mapping.file.time_format.as_deref();
        match cell {
            Cell::Empty => Err("no time".into()),
            Cell::Instant(at) => Ok(*at),
            Cell::Local(naive) => local(*naive),
            Cell::Number(n) => epoch(*n, format),
            Cell::Text(text) => match format {
                Some("epoch" | "epoch_ms") => epoch(
                    text.parse()
                        .map_err(|_| format!("{text:?} is not a number"))?,
                    format,
                ),
                Some(format) if format.contains("%z") || format.contains("%:z") => {
                    DateTime::parse_from_str(text, format)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| format!("time {text:?} does not match {format:?}: {e}"))
                }
                Some(format) => NaiveDateTime::parse_from_str(text, format)
                    .or_else(|_| {
                        NaiveDate::parse_from_str(text, format)
                            .map(|d| d.and_time(Default::default()))
                    })
                    .map_err(|e| format!("time {text:?} does not match {format:?}: {e}"))
                    .and_then(local),
                None => {
                    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
                        return Ok(at.with_timezone(&Utc));
                    }
                    const NAIVE: [&str; 4] = [
                        "%Y-%m-%dT%H:%M:%S%.f",
                        "%Y-%m-%d %H:%M:%S%.f",
                        "%Y-%m-%dT%H:%M",
                        "%Y-%m-%d %H:%M",
                    ];
                    NAIVE
                        .iter()
                        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                        .or_else(|| {
                            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                                .ok()
                                .map(|d| d.and_time(Default::default()))
                        })
                        .ok_or_else(|| {
                            format!(
                                "time {text:?} is neither RFC 3339 nor YYYY-MM-DD[ HH:MM[:SS]]: \
                                 set time_format"
                            )
                        })
                        .and_then(local)
                }
            },
        }
    }
}

fn epoch(n: f64, format: Option<&str>) -> Result<DateTime<Utc>, String> {
    let micros = match format {
        Some("epoch") => n * 1e6,
        Some("epoch_ms") => n * 1e3,
        _ => {
            return Err(format!(
                "{n} is a number, not a time: set time_format = \"epoch\""
            ))
        }
    };
    if !micros.is_finite() || micros.abs() > 1e17 {
        return Err(format!("{n} is out of range as a time"));
    }
    DateTime::<Utc>::from_timestamp_micros(micros.round() as i64)
        .ok_or_else(|| format!("{n} is out of range as a time"))
}
