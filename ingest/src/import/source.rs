//! Rows out of a CSV or Parquet file, as cells, with the raw text of each row kept for rejections.

use super::mapping::{Encoding, Format};
use chrono::{DateTime, NaiveDateTime, Utc};
use parquet::basic::LogicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// One cell as the file holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    Number(f64),
    /// A Parquet timestamp marked as UTC.
    Instant(DateTime<Utc>),
    /// A Parquet timestamp not marked as UTC: a local time.
    Local(NaiveDateTime),
}

/// A row that cannot be read at all: its number, whatever bytes of it there are, and why.
pub struct Unreadable {
    pub number: u64,
    pub raw: Vec<u8>,
    pub reason: String,
}

pub struct Row {
    /// The row's line (CSV) or number (Parquet), from 1 for the first data row.
    pub number: u64,
    pub cells: Vec<Cell>,
    /// The row as text: what a rejection keeps.
    pub raw: Vec<u8>,
}

/// How far through the file: bytes for CSV, rows for Parquet.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub done: u64,
    pub total: u64,
}

pub enum Source {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        encoding: Encoding,
        delimiter: u8,
        total: u64,
        record: csv::ByteRecord,
        rows: u64,
    },
    Parquet {
        rows: RowIter<'static>,
        /// Per column: whether a timestamp in it is a local time.
        local: Vec<bool>,
        total: u64,
        done: u64,
    },
}

fn decode(bytes: &[u8], encoding: Encoding) -> Result<String, String> {
    match encoding {
        Encoding::Utf8 => std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
            "the text is not UTF-8: save the file as UTF-8, or set encoding = \"windows-1252\""
                .to_owned()
        }),
        Encoding::Windows1252 => Ok(bytes.iter().map(|b| windows_1252(*b)).collect()),
    }
}

/// Windows-1252: Latin-1 but for 0x80 to 0x9F.
fn windows_1252(byte: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match byte {
        0x80..=0x9f => HIGH[usize::from(byte - 0x80)],
        other => char::from(other),
    }
}

impl Source {
    /// Opens `path`, returning the source and its column names.
    pub fn open(
        path: &Path,
        format: Format,
        delimiter: char,
        encoding: Encoding,
    ) -> Result<(Source, Vec<String>), String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        match format {
            Format::Csv => {
                let delimiter = u8::try_from(delimiter)
                    .ok()
                    .filter(u8::is_ascii)
                    .ok_or("the delimiter must be one ASCII character")?;
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(delimiter)
                    .flexible(true)
                    .from_reader(BufReader::new(file));
                let header = reader
                    .byte_headers()
                    .map_err(|e| format!("cannot read the header row: {e}"))?
                    .clone();
                let names = header
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        // A byte-order mark, as spreadsheet programs write, is not the name.
                        let name = if i == 0 {
                            name.strip_prefix(b"\xef\xbb\xbf").unwrap_or(name)
                        } else {
                            name
                        };
                        decode(name, encoding).map(|n| n.trim().to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((
                    Source::Csv {
                        reader,
                        encoding,
                        delimiter,
                        total,
                        record: csv::ByteRecord::new(),
                        rows: 0,
                    },
                    names,
                ))
            }
            Format::Parquet => {
                let reader = SerializedFileReader::new(file)
                    .map_err(|e| format!("not a Parquet file I can read: {e}"))?;
                let metadata = reader.metadata().file_metadata();
                let total = u64::try_from(metadata.num_rows()).unwrap_or(0);
                let schema = metadata.schema_descr();
                let mut names = Vec::new();
                let mut local = Vec::new();
                for field in schema.root_schema().get_fields() {
                    names.push(field.name().to_owned());
                    local.push(matches!(
                        field.get_basic_info().logical_type_ref(),
                        Some(LogicalType::Timestamp(t)) if !t.is_adjusted_to_u_t_c
                    ));
                }
                let rows = RowIter::from_file_into(Box::new(reader));
                Ok((
                    Source::Parquet {
                        rows,
                        local,
                        total,
                        done: 0,
                    },
                    names,
                ))
            }
        }
    }

    pub fn position(&self) -> Position {
        match self {
            Source::Csv { reader, total, .. } => Position {
                done: reader.position().byte(),
                total: *total,
            },
            Source::Parquet { total, done, .. } => Position {
                done: *done,
                total: *total,
            },
        }
    }

    /// The next row; `Err` for a row that cannot be read at all (it is rejected whole).
    pub fn next_row(&mut self) -> Option<Result<Row, Unreadable>> {
        match self {
            Source::Csv {
                reader,
                encoding,
                delimiter,
                record,
                rows,
                ..
            } => {
                match reader.read_byte_record(record) {
                    Ok(false) => return None,
                    Ok(true) => {}
                    Err(e) => {
                        *rows += 1;
                        return Some(Err(Unreadable {
                            number: *rows,
                            raw: Vec::new(),
                            reason: format!("unreadable row: {e}"),
                        }));
                    }
                }
                *rows += 1;
                let raw = record.iter().collect::<Vec<_>>().join(&[*delimiter][..]);
                let cells = record
                    .iter()
                    .map(|field| {
                        decode(field, *encoding).map(|text| {
                            let text = text.trim();
                            if text.is_empty() {
                                Cell::Empty
                            } else {
                                Cell::Text(text.to_owned())
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>();
                Some(match cells {
                    Ok(cells) => Ok(Row {
                        number: *rows,
                        cells,
                        raw,
                    }),
                    Err(reason) => Err(Unreadable {
                        number: *rows,
                        raw,
                        reason,
                    }),
                })
            }
            Source::Parquet {
                rows, local, done, ..
            } => {
                let row = rows.next()?;
                *done += 1;
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        return Some(Err(Unreadable {
                            number: *done,
                            raw: Vec::new(),
                            reason: format!("unreadable row: {e}"),
                        }))
                    }
                };
                let raw = row.to_string().into_bytes();
                let cells = row
                    .get_column_iter()
                    .enumerate()
                    .map(|(i, (_, field))| cell(field, local.get(i).copied().unwrap_or(false)))
                    .collect::<Result<Vec<_>, _>>();
                Some(match cells {
                    Ok(cells) => Ok(Row {
                        number: *done,
                        cells,
                        raw,
                    }),
                    Err(reason) => Err(Unreadable {
                        number: *done,
                        raw,
                        reason,
                    }),
                })
            }
        }
    }
}

fn cell(field: &Field, local: bool) -> Result<Cell, String> {
    let micros = |us: i64| {
        DateTime::<Utc>::from_timestamp_micros(us)
            .ok_or_else(|| format!("timestamp {us} µs is out of range"))
    };
    let instant = |at: DateTime<Utc>| {
        if local {
            Cell::Local(at.naive_utc())
        } else {
            Cell::Instant(at)
        }
    };
    Ok(match field {
        Field::Null => Cell::Empty,
        Field::Str(s) if s.trim().is_empty() => Cell::Empty,
        Field::Str(s) => Cell::Text(s.trim().to_owned()),
        Field::Byte(v) => Cell::Number(f64::from(*v)),
        Field::Short(v) => Cell::Number(f64::from(*v)),
        Field::Int(v) => Cell::Number(f64::from(*v)),
        Field::Long(v) => Cell::Number(*v as f64),
        Field::UByte(v) => Cell::Number(f64::from(*v)),
        Field::UShort(v) => Cell::Number(f64::from(*v)),
        Field::UInt(v) => Cell::Number(f64::from(*v)),
        Field::ULong(v) => Cell::Number(*v as f64),
        Field::Float16(v) => Cell::Number(f64::from(*v)),
        Field::Float(v) => Cell::Number(f64::from(*v)),
        Field::Double(v) => Cell::Number(*v),
        Field::TimestampMillis(ms) => instant(micros(ms.saturating_mul(1000))?),
        Field::TimestampMicros(us) => instant(micros(*us)?),
        Field::Date(days) => instant(micros(i64::from(*days) * 86_400_000_000)?),
        other => {
            return Err(format!(
                "a Parquet value of this type cannot be read here: {other}; store numbers as \
                 doubles or integers and times as timestamps"
            ))
        }
    })
}
