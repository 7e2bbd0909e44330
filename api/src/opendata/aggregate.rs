//! Readings aggregated on the server into time buckets, filled where a bucket is empty.

#[cfg(feature = "parquet")]
use super::parquet_export;
use super::query::{time_range, ReadingsQuery, AGGREGATES, MAX_BUCKETS, MIN_BUCKET};
use super::stations::unit_of;
use super::written::{self, WrittenBuckets};
use crate::http::problem::{ApiError, Result};
#[cfg(feature = "parquet")]
use crate::http::PARQUET;
use crate::http::{rfc3339, typed, Format};
use crate::state::ApiState;
#[cfg(feature = "parquet")]
use axum::http::{header, HeaderValue};
use axum::response::Response;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tidemark_store::opendata::{BucketRow, PackedDay};
use utoipa::ToSchema;

/// One output bucket: a stored bucket, an empty one, or one interpolated across a gap. A stored
/// one is borrowed from the rows read, so that a year of them is not copied once more. Or, in
/// JSON only, a whole packed day of hourly buckets (starting at the given time) whose JSON was
/// found written for the digest of its hours, and whose hours were therefore not read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Filled<'a> {
    Stored(&'a BucketRow),
    Empty(DateTime<Utc>),
    Interpolated(DateTime<Utc>, f64),
    Held(DateTime<Utc>, &'a [u8]),
}

/// Fills the buckets between `from` and `to` that have no readings, as asked: omitted, empty, or
/// (for the average) interpolated linearly between the neighbouring buckets when the gap spans
/// at most `max_gap` buckets.
///
/// The `held` days are each a [`Filled::Held`] in its place, standing for its [`written::GROUP`]
/// buckets (none of `stored` falls in them). Held days come only with `omit` or `null`:
/// interpolation would need their buckets.
pub(crate) fn fill_buckets<'a>(
    stored: &'a [BucketRow],
    held: &[(DateTime<Utc>, &'a [u8])],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: ChronoDuration,
    mode: &str,
    max_gap: u32,
) -> Vec<Filled<'a>> {
    let mut held = held.iter().peekable();
    if mode == "omit" {
        let mut out = Vec::with_capacity(stored.len() + held.len());
        for row in stored {
            while let Some(&&(day, bytes)) = held.peek().filter(|(day, _)| *day < row.start) {
                out.push(Filled::Held(day, bytes));
                held.next();
            }
            out.push(Filled::Stored(row));
        }
        out.extend(held.map(|&(day, bytes)| Filled::Held(day, bytes)));
        return out;
    }
    let step = bucket.num_microseconds().unwrap_or(1).max(1);
    let first = from.timestamp_micros().div_euclid(step) * step;
    let mut by_start: BTreeMap<i64, &BucketRow> = stored
        .iter()
        .map(|b| (b.start.timestamp_micros(), b))
        .collect();
    let mut out = Vec::new();
    let mut at = first;
    while at < to.timestamp_micros() {
        let start = DateTime::from_timestamp_micros(at).unwrap_or(from);
        // A held day stands for its buckets, which start where the walk is (days of hourly
        // buckets start at midnight, hours from the range's start land on it).
        if let Some(&&(day, bytes)) = held.peek().filter(|(day, _)| *day <= start) {
            out.push(Filled::Held(day, bytes));
            held.next();
            at = day.timestamp_micros() + step * written::GROUP;
            continue;
        }
        match by_start.remove(&at) {
            Some(row) => out.push(Filled::Stored(row)),
            None => out.push(Filled::Empty(start)),
        }
        at += step;
    }
    if mode == "interpolate" {
        let average = |f: &Filled| match f {
            Filled::Stored(b) if b.count > 0 => Some(b.sum / b.count as f64),
            _ => None,
        };
        let known: Vec<usize> = (0..out.len())
            .filter(|i| average(&out[*i]).is_some())
            .collect();
        for pair in known.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let gap = b - a - 1;
            if gap == 0 || gap > max_gap as usize {
                continue;
            }
            let (va, vb) = (
                average(&out[a]).unwrap_or(0.0),
                average(&out[b]).unwrap_or(0.0),
            );
            for (i, slot) in out.iter_mut().enumerate().take(b).skip(a + 1) {
                if let Filled::Empty(start) = *slot {
                    let t = (i - a) as f64 / (b - a) as f64;
                    *slot = Filled::Interpolated(start, va + (vb - va) * t);
                }
            }
        }
    }
    out
}

pub(crate) async fn aggregated(
    state: &ApiState,
    sensor: &str,
    query: ReadingsQuery,
    format: Format,
) -> Result<Response> {
    for (name, given) in [
        ("since", query.since.is_some()),
        ("cursor", query.cursor.is_some()),
        ("limit", query.limit.is_some()),
    ] {
        if given {
            return Err(ApiError::bad(
                name,
                format!("{name} applies only to raw readings, not with bucket"),
            ));
        }
    }
    let text = query.bucket.as_deref().unwrap_or_default();
    let bucket = tidemark_model::duration::parse(text)
        .map_err(|e| ApiError::bad("bucket", e.to_string()))?;
    if bucket < MIN_BUCKET {
        return Err(ApiError::bad("bucket", "bucket must be at least 1m"));
    }
    let (from, to) = time_range(&query)?;
    let chrono_bucket = ChronoDuration::from_std(bucket)
        .map_err(|_| ApiError::bad("bucket", "bucket is too long"))?;
    let buckets = (to - from).num_seconds() / chrono_bucket.num_seconds().max(1);
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad(
            "bucket",
            format!("{buckets} buckets asked for; at most {MAX_BUCKETS}: use a larger bucket or a shorter range"),
        ));
    }
    let aggregates: Vec<&str> = match &query.agg {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => vec!["avg", "min", "max", "count"],
    };
    if let Some(bad) = aggregates.iter().find(|a| !AGGREGATES.contains(a)) {
        return Err(ApiError::bad(
            "agg",
            format!("agg {bad:?} is not one of {}", AGGREGATES.join(", ")),
        ));
    }
    let fill = query.fill.as_deref().unwrap_or("omit");
    if !["omit", "null", "interpolate"].contains(&fill) {
        return Err(ApiError::bad(
            "fill",
            "fill must be omit, null or interpolate",
        ));
    }
    let all = match query.quality.as_deref() {
        None | Some("usable") => false,
        Some("all") => true,
        Some(_) => return Err(ApiError::bad("quality", "quality must be usable or all")),
    };
    // A year of hourly buckets is about a megabyte of rows and as much of answer, and a few
    // milliseconds of a core to write: at most `api.bucket_reads` are read and written at once,
    // the rest wait in order, holding no connection and no rows, so that long series asked for
    // by many clients at once cannot take every pooled connection from the other reads. The
    // latest values and other reads do not wait here.
    let _turn = state
        .bucket_reads
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Which of `AGGREGATES` (the order of `BucketItem`'s fields) were asked for, for JSON.
    let asked: [bool; 7] = AGGREGATES.map(|a| aggregates.contains(&a));
    // In JSON, a packed day of hourly buckets is written the same from the same hours, whatever
    // else the page holds (unless interpolated across days): what was written for a day whose
    // hours have the same digest is found before its hours are read, and they are not read.
    let written = &state.written;
    let by_digest = written.enabled()
        && fill != "interpolate"
        && !matches!(format, Format::Csv | Format::Parquet);
    let shape = written::Shape {
        asked,
        nulls: fill == "null",
    };
    // The packed days' keys, and what was found under them.
    let mut keys: Vec<u128> = Vec::new();
    let mut found: Vec<Option<Arc<[u8]>>> = Vec::new();
    let read = state
        .store
        .sensor_aggregate_holding(
            sensor,
            from,
            to,
            bucket,
            all,
            by_digest.then_some(|days: &[PackedDay]| {
                keys = days
                    .iter()
                    .map(|d| written.day_key(d.day, &d.digest, shape))
                    .collect();
                found = written.find(&keys);
                found.iter().map(Option::is_some).collect()
            }),
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("sensor {sensor}")))?;
    let quantity = read.quantity.as_str();
    let mut held = Vec::new();
    let mut day_keys = Vec::new();
    for (i, (day, was_held)) in read.packed.iter().enumerate() {
        match (found.get(i).and_then(Option::as_deref), keys.get(i)) {
            (Some(bytes), _) if *was_held => held.push((day.day, bytes)),
            (_, Some(&key)) => day_keys.push((day.day, key)),
            _ => {}
        }
    }
    let filled = fill_buckets(
        &read.rows,
        &held,
        from,
        to,
        chrono_bucket,
        fill,
        query.max_gap.unwrap_or(3),
    );
    // The CSV and Parquet columns, in the order asked for (every name is known: checked above).
    let columns: Vec<usize> = aggregates
        .iter()
        .filter_map(|a| AGGREGATES.iter().position(|known| known == a))
        .collect();
    let picked = |f: &Filled| {
        let all = values(f);
        columns.iter().map(move |&i| all[i])
    };
    // A number as CSV writes it: as JSON does, whole numbers as integers.
    let number = |v: f64| -> String { whole(v).map_or_else(|| v.to_string(), |n| n.to_string()) };
    Ok(match format {
        #[cfg(feature = "parquet")]
        Format::Parquet => {
            let records: Vec<parquet_export::BucketRecord> = filled
                .iter()
                .map(|f| {
                    let (start, flagged, quality, state) = meta(f);
                    parquet_export::BucketRecord {
                        start,
                        values: picked(f).collect(),
                        flagged,
                        quality,
                        state: state.name(),
                    }
                })
                .collect();
            let names: Vec<String> = aggregates.iter().map(|a| (*a).to_owned()).collect();
            let metadata = vec![
                ("sensor".to_owned(), sensor.to_owned()),
                ("quantity".to_owned(), quantity.to_owned()),
                ("unit".to_owned(), unit_of(quantity).to_owned()),
                ("bucket".to_owned(), text.to_owned()),
            ];
            let file = tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                parquet_export::buckets(&names, &records, metadata)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut response = typed(PARQUET, file);
            if let Ok(disposition) = HeaderValue::from_str(&format!(
                "attachment; filename=\"{}-{}.parquet\"",
                sensor.replace('"', ""),
                text.replace('"', "")
            )) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, disposition);
            }
            response
        }
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => {
            return Err(ApiError::bad(
                "format",
                "this build has no Parquet support (the cargo feature parquet is off)",
            ))
        }
        Format::Csv => {
            let mut out = format!("start,{},flagged,quality,state\n", aggregates.join(","));
            for f in &filled {
                let (start, flagged, quality, kind) = meta(f);
                let values: Vec<String> = picked(f)
                    .map(|v| v.map(number).unwrap_or_default())
                    .collect();
                out.push_str(&format!(
                    "{},{},{flagged},{quality},{}\n",
                    rfc3339(start),
                    values.join(","),
                    kind.name()
                ));
            }
            typed("text/csv; charset=utf-8", out)
        }
        _ => typed(
            "application/json",
            page_json(
                BucketPage {
                    sensor: sensor.to_owned(),
                    quantity: quantity.to_owned(),
                    unit: unit_of(quantity),
                    bucket: text.to_owned(),
                    from,
                    to,
                    buckets: Vec::new(),
                },
                &filled,
                asked,
                chrono_bucket,
                written,
                &day_keys,
            )?,
        ),
    })
}

/// What a bucket holds: readings, only unusable readings, none, or an interpolated average.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Measured,
    Flagged,
    Empty,
    Interpolated,
}

impl State {
    /// The state's name in every format.
    fn name(self) -> &'static str {
        match self {
            State::Measured => "measured",
            State::Flagged => "flagged",
            State::Empty => "empty",
            State::Interpolated => "interpolated",
        }
    }

    /// The state as the JSON page writes it after a bucket's quality, ready to copy.
    fn json_field(self) -> &'static [u8] {
        match self {
            State::Measured => b",\"state\":\"measured\"",
            State::Flagged => b",\"state\":\"flagged\"",
            State::Empty => b",\"state\":\"empty\"",
            State::Interpolated => b",\"state\":\"interpolated\"",
        }
    }
}

/// A bucket's start, flagged count, quality and state.
fn meta(f: &Filled) -> (DateTime<Utc>, i64, i16, State) {
    match f {
        Filled::Stored(b) => (
            b.start,
            b.flagged,
            b.quality,
            if b.count > 0 {
                State::Measured
            } else {
                State::Flagged
            },
        ),
        Filled::Empty(s) => (*s, 0, 0, State::Empty),
        Filled::Interpolated(s, _) => (*s, 0, 0, State::Interpolated),
        // Written already: only its start is used, to place it in its group.
        Filled::Held(s, _) => (*s, 0, 0, State::Measured),
    }
}

/// A bucket as its JSON item, with the aggregates `asked` for (in the order of `AGGREGATES`).
fn bucket_item(f: &Filled, asked: [bool; 7]) -> BucketItem {
    let (start, flagged, quality, state) = meta(f);
    let values = values(f);
    let field = |i: usize| asked[i].then_some(values[i]);
    BucketItem {
        start,
        flagged,
        quality,
        state: state.name(),
        avg: field(0),
        min: field(1),
        max: field(2),
        sum: field(3),
        count: field(4),
        first: field(5),
        last: field(6),
    }
}

/// A bucket's aggregates in the order of `AGGREGATES`, each `None` where the bucket has no
/// finite value for it: the average only where interpolated, a count of 0 where empty.
fn values(f: &Filled) -> [Option<f64>; 7] {
    let all = match f {
        Filled::Stored(b) if b.count > 0 => [
            Some(b.sum / b.count as f64),
            Some(b.min),
            Some(b.max),
            Some(b.sum),
            Some(b.count as f64),
            Some(b.first),
            Some(b.last),
        ],
        Filled::Stored(_) | Filled::Empty(_) => [None, None, None, None, Some(0.0), None, None],
        Filled::Interpolated(_, v) => [Some(*v), None, None, None, None, None, None],
        Filled::Held(..) => [None; 7],
    };
    all.map(|v| v.filter(|v| v.is_finite()))
}

/// A page of buckets as JSON: `page` (its `buckets` empty) around `filled`, each with the
/// aggregates `asked` for. The same bytes `serde_json` writes for the page with
/// [`bucket_item`]s (a test holds them equal), but written directly from the buckets: a year of
/// hourly buckets is about a megabyte, and going through `Serialize` per field was most of the
/// API's CPU for it. The buckets are written into a buffer on the stack ([`Lines`]), which goes
/// to the page whenever it is nearly full; numbers are formatted by the crates `serde_json`
/// uses, without its writer in between.
///
/// The buckets go in groups of [`written::GROUP`] consecutive ones within an aligned span of that
/// many buckets of `step` (a UTC day of hourly buckets). A [`Filled::Held`] day is a group found
/// written already, and copied. A group of a packed day is kept in `written` under its key in
/// `day_keys` (by the digest of the day's hours); any other group already written from the same
/// inputs is copied from `written`, and one that is not is written and kept there.
fn page_json(
    mut page: BucketPage,
    filled: &[Filled],
    asked: [bool; 7],
    step: ChronoDuration,
    written: &WrittenBuckets,
    day_keys: &[(DateTime<Utc>, u128)],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    // Everything around the buckets through serde, ending in `"buckets":[]}`.
    if serde_json::to_writer(&mut out, &page).is_err() || !out.ends_with(b"[]}") {
        if filled.iter().any(|f| matches!(f, Filled::Held(..))) {
            return Err(ApiError::Internal(
                "a page of buckets could not be written".to_owned(),
            ));
        }
        page.buckets = filled.iter().map(|f| bucket_item(f, asked)).collect();
        return serde_json::to_vec(&page).map_err(|e| ApiError::Internal(e.to_string()));
    }
    out.truncate(out.len() - 2);
    // The aggregates asked for, by their place in `AGGREGATES`.
    let columns: Vec<usize> = (0..asked.len()).filter(|&i| asked[i]).collect();
    let span = step
        .num_microseconds()
        .unwrap_or(i64::MAX / written::GROUP)
        .max(1)
        * written::GROUP;
    let group_of = |f: &Filled| meta(f).0.timestamp_micros().div_euclid(span);
    let mut day_keys = day_keys
        .iter()
        .map(|(day, key)| (day.timestamp_micros().div_euclid(span), *key))
        .peekable();
    // Where each group ends, how it is found, and which are looked up by their inputs.
    let mut groups: Vec<(usize, Group)> = Vec::new();
    let mut lookups = Vec::new();
    let mut inputs = Vec::new();
    let mut at = 0;
    while at < filled.len() {
        let group = group_of(&filled[at]);
        if let Filled::Held(_, bytes) = filled[at] {
            groups.push((at + 1, Group::Held(bytes)));
            at += 1;
            continue;
        }
        let end = at
            + filled[at..]
                .iter()
                .take(written::GROUP as usize)
                .take_while(|f| group_of(f) == group && !matches!(f, Filled::Held(..)))
                .count();
        while day_keys.next_if(|(day, _)| *day < group).is_some() {}
        let how = if let Some((_, key)) = day_keys.next_if(|(day, _)| *day == group) {
            Group::Keep(key)
        } else if written.enabled() {
            inputs.clear();
            inputs.push(columns.iter().fold(0u8, |mask, &c| mask | 1 << c));
            for f in &filled[at..end] {
                writer_inputs(f, &columns, &mut inputs);
            }
            lookups.push(written.key(&inputs));
            Group::Look(lookups.len() - 1)
        } else {
            Group::Write
        };
        groups.push((end, how));
        at = end;
    }
    let found = written.find(&lookups);
    let mut fresh: Vec<(u128, Arc<[u8]>)> = Vec::new();
    let mut starts = Starts::default();
    let mut lines = Lines::new();
    let mut at = 0;
    for (end, how) in groups {
        if lines.len > Lines::FULL {
            spill(&mut out, &mut lines, at, filled.len());
        }
        if at > 0 {
            lines.put(b",");
        }
        let (copy, keep) = match how {
            Group::Held(bytes) => (Some(bytes), None),
            Group::Look(i) => match found.get(i).and_then(Option::as_deref) {
                Some(bytes) => (Some(bytes), None),
                None => (None, lookups.get(i).copied()),
            },
            Group::Keep(key) => (None, Some(key)),
            Group::Write => (None, None),
        };
        match copy {
            Some(bytes) => {
                spill(&mut out, &mut lines, at, filled.len());
                out.extend_from_slice(bytes);
            }
            None => {
                let from = lines.len;
                for (j, f) in filled[at..end].iter().enumerate() {
                    if j > 0 {
                        lines.put(b",");
                    }
                    write_bucket(f, &columns, &mut starts, &mut lines);
                }
                if let Some(key) = keep {
                    fresh.push((key, Arc::from(&lines.bytes()[from..])));
                }
            }
        }
        at = end;
    }
    if !fresh.is_empty() {
        written.keep(fresh);
    }
    out.extend_from_slice(lines.bytes());
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// How [`page_json`] comes by a group's JSON.
enum Group<'a> {
    /// Found written for a packed day's digest before its hours were read.
    Held(&'a [u8]),
    /// Looked up by the key of its inputs (the `i`-th looked up), and kept under it if not found.
    Look(usize),
    /// A packed day's, not found: written, and kept under this key.
    Keep(u128),
    /// Written; nothing is kept.
    Write,
}

/// Moves what `lines` holds to the end of `out`, making room first for the rest of the page
/// (about as long per bucket as the `done` buckets of `all` written so far).
fn spill(out: &mut Vec<u8>, lines: &mut Lines, done: usize, all: usize) {
    if out.capacity() - out.len() < lines.len && done > 0 {
        let written = out.len() + lines.len;
        out.reserve(lines.len + written * (all - done) / done + 64);
    }
    out.extend_from_slice(lines.bytes());
    lines.len = 0;
}

/// Appends what [`write_bucket`] writes `f` from, the key of a group in [`WrittenBuckets`]. The
/// layout can be read back field by field (after the group's first byte, which says which
/// aggregates are asked for), so two different groups never lay out alike.
fn writer_inputs(f: &Filled, columns: &[usize], to: &mut Vec<u8>) {
    let (start, flagged, quality, state) = meta(f);
    to.extend_from_slice(&start.timestamp().to_le_bytes());
    to.extend_from_slice(&start.timestamp_subsec_nanos().to_le_bytes());
    to.extend_from_slice(&flagged.to_le_bytes());
    to.extend_from_slice(&quality.to_le_bytes());
    to.push(state as u8);
    let values = values(f);
    for &column in columns {
        match values[column] {
            Some(v) => {
                to.push(1);
                to.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            None => to.push(0),
        }
    }
}

/// Writes one bucket's JSON object with the aggregates in `columns` (places in `AGGREGATES`).
#[inline(always)]
fn write_bucket(f: &Filled, columns: &[usize], starts: &mut Starts, lines: &mut Lines) {
    const NAMES: [&[u8]; 7] = [
        b",\"avg\":",
        b",\"min\":",
        b",\"max\":",
        b",\"sum\":",
        b",\"count\":",
        b",\"first\":",
        b",\"last\":",
    ];
    // The numbers are formatted first and copied last, with the rest of the bucket written
    // in between. A formatter writes its digits a few bytes at a time and shifts them to
    // place the decimal point; a wider read of them just after cannot be served from those
    // stores and waits for them to reach the cache. Copied right away, that wait was the
    // page writer's single largest cost in a profile of the year query.
    let values = values(f);
    let mut floats: [zmij::Buffer; 7] = std::array::from_fn(|_| zmij::Buffer::new());
    let mut integers: [itoa::Buffer; 7] = std::array::from_fn(|_| itoa::Buffer::new());
    let mut numbers: [&[u8]; 7] = [b"null"; 7];
    for (((&column, float), integer), number) in columns
        .iter()
        .zip(&mut floats)
        .zip(&mut integers)
        .zip(&mut numbers)
    {
        // `values` leaves only finite numbers.
        if let Some(v) = values[column] {
            *number = match whole(v) {
                Some(n) => integer.format(n).as_bytes(),
                None => float.format_finite(v).as_bytes(),
            };
        }
    }
    let (start, flagged, quality, state) = meta(f);
    lines.put(b"{\"start\":");
    if !starts.write(&start, lines) {
        let _ = serde_json::to_writer(&mut *lines, &start);
    }
    lines.put(b",\"flagged\":");
    lines.put(itoa::Buffer::new().format(flagged).as_bytes());
    lines.put(b",\"quality\":");
    lines.put(itoa::Buffer::new().format(quality).as_bytes());
    lines.put(state.json_field());
    for (&column, number) in columns.iter().zip(numbers) {
        lines.put(NAMES[column]);
        lines.put(number);
    }
    lines.put(b"}");
}

/// Buckets' JSON, written on the stack and appended to the page some kilobytes at a time rather
/// than a bucket (about a hundred bytes) at a time.
struct Lines {
    bytes: [u8; Lines::SIZE],
    len: usize,
}

impl Lines {
    const SIZE: usize = 16 * 1024;
    /// Past this, the buffer is emptied before the next group of buckets. The longest a bucket
    /// can be is about 370 bytes: its start (at most 35 through chrono), flagged (an i64),
    /// quality, the longest state and seven aggregates of at most 24 characters each with their
    /// names; a group is at most [`written::GROUP`] of them with their commas.
    const FULL: usize = Self::SIZE - 384 * written::GROUP as usize;

    fn new() -> Self {
        Self {
            bytes: [0; Self::SIZE],
            len: 0,
        }
    }

    /// Appends `bytes`. The pieces of a bucket are short, and a call to `memcpy` for each cost
    /// more than writing it: up to 32 bytes are copied as two overlapping fixed-size blocks,
    /// which compile to a few moves.
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let (at, n) = (self.len, bytes.len());
        match n {
            0 => {}
            1..=3 => {
                self.bytes[at] = bytes[0];
                self.bytes[at + n / 2] = bytes[n / 2];
                self.bytes[at + n - 1] = bytes[n - 1];
            }
            4..=7 => {
                self.block::<4>(at, &bytes[..4]);
                self.block::<4>(at + n - 4, &bytes[n - 4..]);
            }
            8..=16 => {
                self.block::<8>(at, &bytes[..8]);
                self.block::<8>(at + n - 8, &bytes[n - 8..]);
            }
            17..=32 => {
                self.block::<16>(at, &bytes[..16]);
                self.block::<16>(at + n - 16, &bytes[n - 16..]);
            }
            _ => self.bytes[at..at + n].copy_from_slice(bytes),
        }
        self.len = at + n;
    }

    /// Appends bytes computed in registers, storing each where it belongs.
    #[inline(always)]
    fn put_direct<const N: usize>(&mut self, bytes: [u8; N]) {
        let at = self.len;
        for (to, byte) in self.bytes[at..at + N].iter_mut().zip(bytes) {
            *to = byte;
        }
        self.len = at + N;
    }

    /// Copies `from`, exactly `N` bytes long, to `at`.
    #[inline(always)]
    fn block<const N: usize>(&mut self, at: usize, from: &[u8]) {
        if let (Ok(to), Ok(from)) = (
            <&mut [u8; N]>::try_from(&mut self.bytes[at..at + N]),
            <&[u8; N]>::try_from(from),
        ) {
            *to = *from;
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::io::Write for Lines {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.put(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /api/v1/sensors/{key}/readings` with `bucket`: the readings aggregated into buckets.
#[derive(Serialize, ToSchema)]
pub struct BucketPage {
    pub sensor: String,
    pub quantity: String,
    pub unit: &'static str,
    /// The bucket length as asked for (`1h`).
    pub bucket: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Oldest first.
    pub buckets: Vec<BucketItem>,
}

/// One bucket of aggregated readings; the aggregates asked for (`avg`, `min`, `max`, `sum`, `count`,
/// `first`, `last`) appear as fields, null where a bucket has no value.
/// Each aggregate is present only when asked for (`agg`), and null when the bucket has no value.
#[derive(Serialize, ToSchema)]
pub struct BucketItem {
    pub start: DateTime<Utc>,
    /// Readings left out because their quality flags make them unusable.
    pub flagged: i64,
    /// The OR of the quality flags of the readings aggregated.
    pub quality: i16,
    /// measured, flagged (only unusable readings), empty, or interpolated.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub avg: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub min: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub max: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub sum: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub count: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub first: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "number")]
    pub last: Option<Option<f64>>,
}

/// A whole number that an integer holds exactly (counts, and sums of whole values): written as
/// an integer in JSON and CSV alike.
fn whole(v: f64) -> Option<i64> {
    // Not `v.fract() == 0.0`: that calls out to `trunc` on the baseline x86-64, for every number
    // of a page. The cast saturates and sends NaN to 0, neither of which passes both tests.
    let n = v as i64;
    (v.abs() < 1e15 && n as f64 == v).then_some(n)
}

/// Writes bucket starts as `"YYYY-MM-DDTHH:MM:SSZ"` where that is how chrono writes them (whole
/// seconds in the years 0 to 9999), without chrono's general formatter: tens of thousands of them
/// made up much of the cost of a long series. It keeps the date of the last day written, since a
/// series' buckets come day by day.
#[derive(Default)]
struct Starts {
    last: Option<(i64, Option<[u8; 10]>)>,
}

impl Starts {
    /// Writes `start`, quoted, to `lines`; returns false, having written nothing, for a start
    /// chrono writes otherwise.
    ///
    /// The characters go straight into `lines`. Built in an array first, the text was read back
    /// in 16-byte blocks just after being written a byte or two at a time, and the processor
    /// cannot forward such stores to a wider read: it waited for them to reach the cache, for
    /// every bucket (as for the numbers: see [`page_json`]).
    fn write(&mut self, start: &DateTime<Utc>, lines: &mut Lines) -> bool {
        // Not `nanosecond()`, which goes by the local time: an addition of the zero offset.
        if start.timestamp_subsec_nanos() != 0 {
            return false;
        }
        let seconds = start.timestamp();
        let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        if self.last.is_none_or(|(day, _)| day != days) {
            self.last = Some((days, civil_date(days)));
        }
        // Borrowed where it was kept (written once a day), not copied out for each bucket.
        let Some((_, Some(date))) = &self.last else {
            return false;
        };
        lines.put(b"\"");
        lines.put(date);
        let (hour, minute, second) = (of_day / 3_600, of_day / 60 % 60, of_day % 60);
        let digit = |n: i64| b'0' + n as u8;
        lines.put_direct([
            b'T',
            digit(hour / 10),
            digit(hour % 10),
            b':',
            digit(minute / 10),
            digit(minute % 10),
            b':',
            digit(second / 10),
            digit(second % 10),
            b'Z',
            b'"',
        ]);
        true
    }
}

/// `YYYY-MM-DD` of the day `days` after 1970-01-01, in the proleptic Gregorian calendar; `None`
/// outside the years 0 to 9999.
fn civil_date(days: i64) -> Option<[u8; 10]> {
    // Civil date from days since 1970-01-01 (in eras of 400 years), as in Howard Hinnant's
    // `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut text = *b"0000-00-00";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    Some(text)
}

/// `value` in decimal, zero-padded to the width of `to`.
fn put_digits(to: &mut [u8], mut value: i64) {
    for digit in to.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// An aggregate asked for: a [`whole`] number as an integer, any other as a float, none as null.
fn number<S: serde::Serializer>(
    value: &Option<Option<f64>>,
    to: S,
) -> std::result::Result<S::Ok, S::Error> {
    match value.flatten() {
        Some(v) => match whole(v) {
            Some(n) => to.serialize_i64(n),
            None => to.serialize_f64(v),
        },
        None => to.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn bucket_starts_are_written_as_chrono_writes_them() {
        let mut times = vec![
            DateTime::UNIX_EPOCH,
            Utc.with_ymd_and_hms(2025, 12, 31, 23, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            // The general formatter's cases: before year 0, and fractions of a second.
            Utc.with_ymd_and_hms(-1, 6, 1, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 2, 29, 1, 2, 3).unwrap() + ChronoDuration::milliseconds(250),
        ];
        // Every day of three centuries (leap years, and 1900 and 2100 that are not), every hour
        // of a leap year, and a minute step through one day.
        let start = Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).unwrap();
        times.extend((0..300 * 366).map(|d| start + ChronoDuration::days(d)));
        let year = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        times.extend((0..366 * 24).map(|h| year + ChronoDuration::hours(h)));
        times.extend(
            (0..1440)
                .map(|m| year + ChronoDuration::minutes(m) + ChronoDuration::seconds(m * 7 % 60)),
        );
        // One writer for all, as for a page: its remembered date must never leak into another day.
        let mut starts = Starts::default();
        for t in times {
            let chrono = serde_json::to_string(&t).unwrap();
            let mut lines = Lines::new();
            if starts.write(&t, &mut lines) {
                assert_eq!(std::str::from_utf8(lines.bytes()).unwrap(), chrono);
            } else {
                use chrono::{Datelike, Timelike};
                assert!(lines.bytes().is_empty(), "{chrono}: nothing written");
                assert!(
                    t.nanosecond() != 0 || !(0..=9999).contains(&t.year()),
                    "{chrono} is left to chrono"
                );
            }
        }
    }

    #[test]
    fn a_page_is_written_as_serde_writes_it() {
        let at = |h: i64| DateTime::UNIX_EPOCH + ChronoDuration::hours(490_000 + h);
        let row = |h: i64, count: i64, v: f64| BucketRow {
            start: at(h),
            count,
            sum: v * count as f64,
            min: v - 0.5,
            max: v.trunc(),
            first: -v,
            last: v / 3.0,
            flagged: h * 3 - 7,
            quality: (h * 37 % 300) as i16,
        };
        // A start with a fraction of a second goes through chrono.
        let mut odd = row(11, 4, 3.0);
        odd.start += ChronoDuration::milliseconds(5);
        let rows: Vec<BucketRow> = [
            row(0, 2, 1.5),
            row(1, 1, -2.0),
            row(2, 3, 1e20),
            row(3, 7, 0.1 + 0.2),
            row(4, 1, -1e-7),
            // Only unusable readings: flagged, without aggregates.
            row(7, 0, 4.0),
            row(8, 2, f64::NAN),
            row(9, 1, f64::INFINITY),
            odd,
            // The largest whole numbers written as integers, and the first that are not.
            row(12, 1, 999_999_999_999_999.0),
            row(13, 1, 1e15),
        ]
        .into_iter()
        .chain((0..500).map(|h| row(14 + h, 1 + h % 6, (h as f64 * 0.731).sin() * 1e3)))
        .collect();
        // The same rows but for one field each in a few of them, as a late reading or a new
        // rollup would change them: a group holding one of them must be written afresh.
        let mut changed_rows = rows.clone();
        changed_rows[3].sum += 1e-9;
        changed_rows[40].flagged += 1;
        changed_rows[90].quality ^= 4;
        changed_rows[130].count += 1;
        changed_rows[170].last = -changed_rows[170].last;
        changed_rows[210].start += ChronoDuration::seconds(1);
        let mut changed: Vec<Filled> = changed_rows.iter().map(Filled::Stored).collect();
        changed.extend([
            Filled::Empty(at(5)),
            Filled::Interpolated(at(6), 2.5),
            Filled::Interpolated(at(10), f64::NAN),
        ]);
        let mut filled: Vec<Filled> = rows.iter().map(Filled::Stored).collect();
        filled.extend([
            Filled::Empty(at(5)),
            Filled::Interpolated(at(6), 2.25),
            Filled::Interpolated(at(10), f64::NAN),
        ]);
        // About 500 buckets of 70 to 250 bytes: the page's buffer is emptied several times, after
        // a different bucket for each choice of aggregates.
        let every: Vec<[bool; 7]> = (0..128u8)
            .map(|m| std::array::from_fn(|i| m >> i & 1 == 1))
            .collect();
        let page = |buckets| BucketPage {
            sensor: "k\u{f8}ge.\"level\"".into(),
            quantity: "water_level".into(),
            unit: "m",
            bucket: "1h".into(),
            from: at(0),
            to: at(600),
            buckets,
        };
        let serde = |filled: &[Filled], asked| {
            let items = filled.iter().map(|f| bucket_item(f, asked)).collect();
            serde_json::to_string(&page(items)).unwrap()
        };
        let write = |filled: &[Filled], asked, step, written: &WrittenBuckets| {
            let page = page_json(page(Vec::new()), filled, asked, step, written, &[]).unwrap();
            String::from_utf8(page).unwrap()
        };
        // Groups of a minute's buckets hold one hourly bucket each, of an hour's a day's, of a
        // day's 24 (the most a group holds).
        let steps = [1, 60, 1440].map(ChronoDuration::minutes);
        let none = WrittenBuckets::new(0);
        for filled in [Vec::new(), filled] {
            for &asked in &every {
                let expected = serde(&filled, asked);
                let changed_expected = serde(&changed, asked);
                for step in steps {
                    assert_eq!(
                        write(&filled, asked, step, &none),
                        expected,
                        "{asked:?} {step}"
                    );
                    // Written and kept, then copied; then the changed rows; then both again in a
                    // cache too small for all of them.
                    for budget in [64 << 20, 32 << 10] {
                        let written = WrittenBuckets::new(budget);
                        for _ in 0..2 {
                            assert_eq!(write(&filled, asked, step, &written), expected);
                            if !filled.is_empty() {
                                let again = write(&changed, asked, step, &written);
                                assert_eq!(again, changed_expected, "{asked:?} {step} {budget}");
                            }
                        }
                        let (found, _, _) = written.figures();
                        assert!(filled.is_empty() || found > 0, "{asked:?} {step} {budget}");
                    }
                }
            }
        }
    }

    /// Packed days: a page written with their keys keeps each day's JSON under the digest key, and
    /// the same page with those days held (their buckets not read) is the same, byte for byte, as
    /// serde writes it from every bucket; with `fill=null` too, and with the page's ends and a
    /// day between packed ones read from the buckets.
    #[test]
    fn held_days_write_the_page_the_buckets_would() {
        let day0 = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap();
        let hour = |h: i64| day0 + ChronoDuration::hours(h);
        // Five days and a bit either side; hours missing here and there (empty with `null`).
        let rows: Vec<BucketRow> = (-5..5 * 24 + 7)
            .filter(|h| h % 7 != 3)
            .map(|h| BucketRow {
                start: hour(h),
                count: 1 + h.rem_euclid(4),
                sum: (h as f64 * 0.37).sin() * 40.0,
                min: -1.5,
                max: h as f64 * 0.5,
                first: 0.25,
                last: 2.0,
                flagged: h.rem_euclid(3),
                quality: (h.rem_euclid(5) * 64) as i16,
            })
            .collect();
        let (from, to) = (hour(-5), hour(5 * 24 + 7));
        // Days 0, 1, 3 and 4 packed; day 2 read from the readings, as a dirty day is.
        let packed = [0, 1, 3, 4].map(|d| (day0 + ChronoDuration::days(d), [d as u8 + 1; 32]));
        let step = ChronoDuration::hours(1);
        let page = || BucketPage {
            sensor: "s".into(),
            quantity: "water_level".into(),
            unit: "m",
            bucket: "1h".into(),
            from,
            to,
            buckets: Vec::new(),
        };
        for nulls in [false, true] {
            let mode = if nulls { "null" } else { "omit" };
            for asked in [[true, true, true, false, true, false, false], [true; 7]] {
                let shape = written::Shape { asked, nulls };
                let written = WrittenBuckets::new(64 << 20);
                let keys: Vec<(DateTime<Utc>, u128)> = packed
                    .iter()
                    .map(|(day, digest)| (*day, written.day_key(*day, digest, shape)))
                    .collect();
                let all = fill_buckets(&rows, &[], from, to, step, mode, 3);
                let mut expected = page();
                expected.buckets = all.iter().map(|f| bucket_item(f, asked)).collect();
                let expected = serde_json::to_string(&expected).unwrap();
                let first = page_json(page(), &all, asked, step, &written, &keys).unwrap();
                assert_eq!(String::from_utf8(first).unwrap(), expected, "{mode}");
                // Every packed day was kept under its key.
                let found = written.find(&keys.iter().map(|k| k.1).collect::<Vec<_>>());
                assert!(found.iter().all(Option::is_some), "{mode}");
                let held: Vec<(DateTime<Utc>, &[u8])> = keys
                    .iter()
                    .zip(&found)
                    .map(|((day, _), bytes)| (*day, bytes.as_deref().unwrap()))
                    .collect();
                let unpacked: Vec<BucketRow> = rows
                    .iter()
                    .filter(|r| {
                        !packed
                            .iter()
                            .any(|(d, _)| r.start >= *d && r.start < *d + ChronoDuration::days(1))
                    })
                    .cloned()
                    .collect();
                let filled = fill_buckets(&unpacked, &held, from, to, step, mode, 3);
                assert_eq!(
                    filled
                        .iter()
                        .filter(|f| matches!(f, Filled::Held(..)))
                        .count(),
                    4
                );
                let again = page_json(page(), &filled, asked, step, &written, &[]).unwrap();
                assert_eq!(String::from_utf8(again).unwrap(), expected, "{mode} held");
            }
        }
    }

    #[test]
    fn whole_numbers_are_those_an_integer_holds_exactly_below_1e15() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -7.0,
            0.5,
            -0.5,
            999_999_999_999_999.0,
            -999_999_999_999_999.0,
            999_999_999_999_999.5,
            1e15,
            -1e15,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        values.extend((0..10_000).map(|i| (i as f64 * 0.37).sin() * 10f64.powi(i % 20)));
        values.extend((0..10_000).map(|i| ((i as f64 * 0.37).sin() * 10f64.powi(i % 20)).round()));
        for v in values {
            let expected = (v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64);
            assert_eq!(whole(v), expected, "{v:e}");
        }
    }
}
