//! Rollups: readings summarised per sensor in 15-minute, hourly and daily buckets, so that a long
//! aggregated series is read from a few thousand rows instead of tens of thousands.
//!
//! The relations `readings_15m`, `readings_1h` and `readings_1d` (see migration V7) are continuous
//! aggregates with TimescaleDB and tables kept by [`Store::refresh_rollups`] without it. Either way
//! the same dirty list drives them: every write of readings or quality flags notes its (sensor,
//! hour) pairs in `rollup_dirty` in its own transaction, and [`Store::aggregate`] reads dirty hours
//! (dirty days, when it reads the daily rollup) from the raw readings. A rollup row is therefore only
//! ever used where it is known to be exact.
//!
//! The hour is the unit of change: a refresh after new readings recomputes the sensor's current
//! hour in the 15-minute and hourly rollups, and its day in the daily one from the hourly rows.
//!
//! `readings_1h_days` (migration V18) packs the hourly rows a day per row, for long hourly series.
//! It is a table in both modes: the refresh repacks the days of the hours it took, from
//! `readings_1h`, before their notes are removed, and queries skip a day with a note.

use crate::coordination::ROLLUP_LOCK;
use crate::{Context, Result, Store};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use std::collections::BTreeSet;
use tokio_postgres::types::Type;
use tokio_postgres::IsolationLevel;
use tokio_postgres::Transaction;

/// A rollup relation and its bucket width in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollup {
    pub relation: &'static str,
    pub seconds: i64,
    /// The same width as TimescaleDB's `time_bucket` takes it.
    interval: &'static str,
}

/// Widest first, so that the widest one that fits a request is found first.
pub const ROLLUPS: [Rollup; 3] = [
    Rollup {
        relation: "readings_1d",
        seconds: 86_400,
        interval: "1 day",
    },
    Rollup {
        relation: "readings_1h",
        seconds: 3_600,
        interval: "1 hour",
    },
    Rollup {
        relation: "readings_15m",
        seconds: 900,
        interval: "15 minutes",
    },
];

/// SQL for "these quality flags leave the value usable": good, or only the device's suspicion
/// (see `tidemark_model::Quality::is_usable`). Only usable readings take part in rollups.
pub(crate) const USABLE: &str = "(r.quality & ~1::smallint) = 0";

/// The rollup columns computed from raw readings `r`, grouped by the caller, counting only the
/// readings that pass `filter`: n, total, lo, hi, first_ts, first_value, last_ts, last_value,
/// flagged, quality. The first and last values are the smallest and largest `[epoch, value]`
/// pairs' values (timestamps are unique per sensor), which needs no sort per bucket as an ordered
/// `array_agg` would.
pub(crate) fn raw_summary(filter: &str) -> String {
    format!(
        "count(*) FILTER (WHERE {filter}), \
         sum(r.value) FILTER (WHERE {filter}), \
         min(r.value) FILTER (WHERE {filter}), \
         max(r.value) FILTER (WHERE {filter}), \
         min(r.ts) FILTER (WHERE {filter}), \
         (min(ARRAY[date_part('epoch', r.ts), r.value]) FILTER (WHERE {filter}))[2], \
         max(r.ts) FILTER (WHERE {filter}), \
         (max(ARRAY[date_part('epoch', r.ts), r.value]) FILTER (WHERE {filter}))[2], \
         count(*) FILTER (WHERE NOT ({filter})), \
         bit_or(r.quality) FILTER (WHERE {filter})"
    )
}

/// The same columns combined from finer summaries `x` (rollup rows, or partial summaries).
pub(crate) const COMBINE: &str = "sum(x.n)::bigint, sum(x.total), min(x.lo), max(x.hi), \
     min(x.first_ts), (min(ARRAY[date_part('epoch', x.first_ts), x.first_value]) FILTER (WHERE x.first_ts IS NOT NULL))[2], \
     max(x.last_ts), (max(ARRAY[date_part('epoch', x.last_ts), x.last_value]) FILTER (WHERE x.last_ts IS NOT NULL))[2], \
     sum(x.flagged)::bigint, bit_or(x.quality)";

const COLUMNS: &str =
    "sensor_id, bucket, n, total, lo, hi, first_ts, first_value, last_ts, last_value, flagged, quality";

/// Dirty (sensor, hour) notes taken per refresh transaction.
const REFRESH_LIMIT: i64 = 10_000;

fn floor(ts: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    ts.duration_trunc(TimeDelta::seconds(seconds))
        .expect("a UTC timestamp truncates to whole hours and days")
}

/// The hour a timestamp falls in: the unit the dirty list notes.
pub(crate) fn hour_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    floor(ts, 3_600)
}

/// Notes (sensor, hour) pairs as dirty, in the writer's transaction: `$1` the sensors and `$2`
/// the hours, as [`dirty_notes`] makes them.
pub(crate) const MARK_DIRTY: &str =
    "INSERT INTO rollup_dirty (sensor_id, hour) SELECT * FROM unnest($1::int4[], $2::timestamptz[])";

/// The distinct (sensor, hour) pairs of `rows`, for [`MARK_DIRTY`].
pub(crate) fn dirty_notes(
    rows: impl Iterator<Item = (i32, DateTime<Utc>)>,
) -> (Vec<i32>, Vec<DateTime<Utc>>) {
    let pairs: BTreeSet<(i32, DateTime<Utc>)> = rows.map(|(id, ts)| (id, hour_of(ts))).collect();
    pairs.into_iter().unzip()
}

/// What one transaction added to one sensor's 15-minute bucket: the rollup columns of the
/// readings it stored there (see migration V22). Kept as a note, it lets the refresh add it to the
/// bucket's row instead of reading the hour's raw readings again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delta {
    sensor_id: i32,
    quarter: DateTime<Utc>,
    /// Usable readings, their sum, smallest and largest value.
    n: i64,
    total: Option<f64>,
    lo: Option<f64>,
    hi: Option<f64>,
    /// The earliest and latest usable reading.
    first: Option<(DateTime<Utc>, f64)>,
    last: Option<(DateTime<Utc>, f64)>,
    /// Readings left out for their quality flags.
    flagged: i64,
    /// The usable readings' flags, or-ed.
    quality: Option<i16>,
}

impl Delta {
    fn empty(sensor_id: i32, quarter: DateTime<Utc>) -> Self {
        Delta {
            sensor_id,
            quarter,
            n: 0,
            total: None,
            lo: None,
            hi: None,
            first: None,
            last: None,
            flagged: 0,
            quality: None,
        }
    }

    /// Takes one reading in, as [`raw_summary`] counts it with [`USABLE`].
    fn add(&mut self, ts: DateTime<Utc>, value: f64, quality: i16) {
        if quality & !1 != 0 {
            self.flagged += 1;
            return;
        }
        self.n += 1;
        self.total = Some(self.total.map_or(value, |t| t + value));
        self.lo = Some(self.lo.map_or(value, |lo| lo.min(value)));
        self.hi = Some(self.hi.map_or(value, |hi| hi.max(value)));
        if self.first.is_none_or(|(at, _)| ts < at) {
            self.first = Some((ts, value));
        }
        if self.last.is_none_or(|(at, _)| ts > at) {
            self.last = Some((ts, value));
        }
        self.quality = Some(self.quality.unwrap_or(0) | quality);
    }
}

/// The rollup deltas of readings that were all newly stored, one per (sensor, 15-minute bucket).
pub(crate) fn quarter_deltas(
    rows: impl Iterator<Item = (i32, DateTime<Utc>, f64, i16)>,
) -> Vec<Delta> {
    // By whole seconds: `timestamp()` rounds towards the past, as the bucket does. A hash map and
    // one sort at the end: this runs for every reading ingest stores.
    let mut deltas: std::collections::HashMap<(i32, i64), Delta> = Default::default();
    for (sensor_id, ts, value, quality) in rows {
        let quarter = ts.timestamp().div_euclid(900) * 900;
        deltas
            .entry((sensor_id, quarter))
            .or_insert_with(|| {
                let start = DateTime::from_timestamp(quarter, 0).unwrap_or(ts);
                Delta::empty(sensor_id, start)
            })
            .add(ts, value, quality);
    }
    let mut deltas: Vec<Delta> = deltas.into_values().collect();
    deltas.sort_unstable_by_key(|d| (d.sensor_id, d.quarter));
    deltas
}

/// Notes deltas as dirty, in the writer's transaction: the parameters as [`DeltaColumns`] holds
/// them.
pub(crate) const MARK_DELTAS: &str = "INSERT INTO rollup_dirty (sensor_id, hour, quarter, n, \
     total, lo, hi, first_ts, first_value, last_ts, last_value, flagged, quality) \
     SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[], $4::int8[], \
     $5::float8[], $6::float8[], $7::float8[], $8::timestamptz[], $9::float8[], \
     $10::timestamptz[], $11::float8[], $12::int8[], $13::int2[])";

/// Deltas as the parallel arrays [`MARK_DELTAS`] unnests.
#[derive(Debug, Default)]
pub(crate) struct DeltaColumns {
    sensors: Vec<i32>,
    hours: Vec<DateTime<Utc>>,
    quarters: Vec<DateTime<Utc>>,
    n: Vec<i64>,
    total: Vec<Option<f64>>,
    lo: Vec<Option<f64>>,
    hi: Vec<Option<f64>>,
    first_ts: Vec<Option<DateTime<Utc>>>,
    first_value: Vec<Option<f64>>,
    last_ts: Vec<Option<DateTime<Utc>>>,
    last_value: Vec<Option<f64>>,
    flagged: Vec<i64>,
    quality: Vec<Option<i16>>,
}

impl DeltaColumns {
    pub(crate) fn new(deltas: &[Delta]) -> Self {
        let mut c = DeltaColumns::default();
        for d in deltas {
            c.sensors.push(d.sensor_id);
            c.hours.push(hour_of(d.quarter));
            c.quarters.push(d.quarter);
            c.n.push(d.n);
            c.total.push(d.total);
            c.lo.push(d.lo);
            c.hi.push(d.hi);
            c.first_ts.push(d.first.map(|f| f.0));
            c.first_value.push(d.first.map(|f| f.1));
            c.last_ts.push(d.last.map(|l| l.0));
            c.last_value.push(d.last.map(|l| l.1));
            c.flagged.push(d.flagged);
            c.quality.push(d.quality);
        }
        c
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }

    /// The parameters of [`MARK_DELTAS`].
    pub(crate) fn params(&self) -> [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 13] {
        [
            (&self.sensors, Type::INT4_ARRAY),
            (&self.hours, Type::TIMESTAMPTZ_ARRAY),
            (&self.quarters, Type::TIMESTAMPTZ_ARRAY),
            (&self.n, Type::INT8_ARRAY),
            (&self.total, Type::FLOAT8_ARRAY),
            (&self.lo, Type::FLOAT8_ARRAY),
            (&self.hi, Type::FLOAT8_ARRAY),
            (&self.first_ts, Type::TIMESTAMPTZ_ARRAY),
            (&self.first_value, Type::FLOAT8_ARRAY),
            (&self.last_ts, Type::TIMESTAMPTZ_ARRAY),
            (&self.last_value, Type::FLOAT8_ARRAY),
            (&self.flagged, Type::INT8_ARRAY),
            (&self.quality, Type::INT2_ARRAY),
        ]
    }
}

/// The widest rollup a request for `bucket_seconds` buckets can be answered from: one whose width
/// divides the bucket, with at least one of its buckets inside `[from, to)`.
pub fn rollup_for(bucket_seconds: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Rollup> {
    ROLLUPS.into_iter().find(|r| {
        bucket_seconds % r.seconds == 0 && {
            let (start, end) = r.inner(from, to);
            start < end
        }
    })
}

impl Rollup {
    /// The span one dirty note makes unusable in this rollup: its hour, or its day in the daily
    /// rollup.
    pub fn slot_seconds(&self) -> i64 {
        self.seconds.max(3_600)
    }

    /// The part of `[from, to)` made of whole buckets of this rollup.
    pub fn inner(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let width = TimeDelta::seconds(self.seconds);
        let floor = |t: DateTime<Utc>| t.duration_trunc(width).unwrap_or(t);
        let start = floor(from);
        let start = if start < from { start + width } else { start };
        (start, floor(to))
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// (sensor, hour) pairs recomputed.
    pub refreshed: u64,
    /// Whether dirty pairs remain (more than `limit` were waiting, or another refresh held the lock).
    pub more: bool,
}

impl RefreshOutcome {
    /// Another refresh holds the lock: nothing done, and work may remain.
    const BUSY: RefreshOutcome = RefreshOutcome {
        refreshed: 0,
        more: true,
    };
}

impl Store {
    /// Recomputes up to `limit` dirty (sensor, hour) pairs in every rollup. Only one refresh runs at a
    /// time across all processes; a call that finds another running returns at once with `more`.
    pub async fn refresh_rollups(&self, limit: i64) -> Result<RefreshOutcome> {
        if self.continuous_rollups {
            self.refresh_continuous(limit).await
        } else {
            self.refresh_tables(limit).await
        }
    }

    /// Refreshes until nothing is dirty (after a bulk load, in tests and benchmarks).
    pub async fn refresh_all_rollups(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let outcome = self.refresh_rollups(REFRESH_LIMIT).await?;
            total += outcome.refreshed;
            if !outcome.more {
                return Ok(total);
            }
            if outcome.refreshed == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }

    /// Keeps the rollups caught up: a refresh every `every` until `stop` completes. Several
    /// processes may run this; the refresh lock lets one at a time work.
    pub async fn keep_rollups_fresh(
        &self,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            let pause = match self.refresh_rollups(REFRESH_LIMIT).await {
                // A backlog (a back-fill or a replay) is worked off without waiting.
                Ok(outcome) if outcome.more && outcome.refreshed > 0 => std::time::Duration::ZERO,
                Ok(_) => every,
                Err(error) => {
                    tracing::warn!(%error, "refreshing the rollups failed");
                    every
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// How many dirty (sensor, hour) pairs wait for a refresh (a pair may have several notes).
    pub async fn dirty_rollup_hours(&self) -> Result<i64> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM (SELECT DISTINCT sensor_id, hour FROM rollup_dirty) d",
                &[],
            )
            .await
            .context("counting dirty rollup hours")?
            .get(0))
    }

    /// Plain mode: the dirty pairs are taken, and their rollup rows deleted and computed again, in
    /// one transaction: the 15-minute rows of each hour from the raw readings, the hour's row from
    /// those, and the row of each day concerned from its hourly rows.
    async fn refresh_tables(&self, limit: i64) -> Result<RefreshOutcome> {
        let mut client = self.client().await?;
        // One snapshot for the whole refresh: the notes it takes, the raw readings it reads and
        // the rows it adds deltas to must agree. Under read committed a batch committing between
        // two statements would have its readings counted from the raw rows while its delta note
        // stays behind, to be added a second time by the next refresh.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await
            .context("begin rollup refresh")?;
        match refresh_in(&tx, limit).await {
            Ok(outcome) => {
                tx.commit().await.context("commit rollup refresh")?;
                Ok(outcome)
            }
            // The snapshot was taken just before the refresh that held the lock committed: what
            // it saw is gone. The next refresh starts afresh.
            Err(error) if error.sqlstate() == Some("40001") => Ok(RefreshOutcome::BUSY),
            Err(error) => Err(error),
        }
    }
    /// TimescaleDB mode: the continuous aggregates are refreshed over the dirty hours (days, for
    /// the daily one) with
    /// `refresh_continuous_aggregate`, which runs its own transactions, so the notes are removed
    /// afterwards, and only those that were read before the refresh began.
    async fn refresh_continuous(&self, limit: i64) -> Result<RefreshOutcome> {
        let mut client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&ROLLUP_LOCK])
            .await
            .context("taking the rollup lock")?
            .get(0);
        if !locked {
            return Ok(RefreshOutcome::BUSY);
        }
        let outcome = async {
            let taken = client
                .query(
                    "SELECT id, hour, sensor_id FROM rollup_dirty ORDER BY id LIMIT $1",
                    &[&limit],
                )
                .await
                .context("reading dirty rollup hours")?;
            if taken.is_empty() {
                return Ok(RefreshOutcome::default());
            }
            // By id, not by an id bound: ids are given out before commit, so a note with a lower id
            // than these may still be committed after the refresh has begun.
            let ids: Vec<i64> = taken.iter().map(|r| r.get(0)).collect();
            let hours: BTreeSet<DateTime<Utc>> = taken.iter().map(|r| r.get(1)).collect();
            // What was refreshed, as plain mode counts it: distinct (sensor, hour) pairs, however
            // many notes each had.
            let pairs: BTreeSet<(i32, DateTime<Utc>)> =
                taken.iter().map(|r| (r.get(2), r.get(1))).collect();
            for rollup in ROLLUPS.iter().rev() {
                for (start, end) in windows(&hours, rollup.slot_seconds()) {
                    // CALL cannot take parameters through the extended protocol inside an implicit
                    // transaction, so the window goes in as literals of our own timestamps.
                    client
                        .batch_execute(&format!(
                            "CALL refresh_continuous_aggregate('{}', '{}'::timestamptz, '{}'::timestamptz)",
                            rollup.relation,
                            start.to_rfc3339(),
                            end.to_rfc3339()
                        ))
                        .await
                        .context("refreshing a continuous aggregate")?;
                }
            }
            // The packed days from the hourly aggregate just refreshed, before the notes that
            // keep queries off them go.
            let (day_sensors, days) = sensor_days(pairs.iter().copied());
            let tx = client.transaction().await.context("begin packing days")?;
            pack_days(&tx, &day_sensors, &days).await?;
            tx.commit().await.context("commit packing days")?;
            client
                .execute("DELETE FROM rollup_dirty WHERE id = ANY($1)", &[&ids])
                .await
                .context("removing refreshed rollup notes")?;
            Ok(RefreshOutcome {
                refreshed: pairs.len() as u64,
                more: more_waiting(&**client).await?,
            })
        }
        .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&ROLLUP_LOCK])
            .await;
        outcome
    }
}

/// Plain mode's refresh in `tx` (repeatable read), committed by the caller: the dirty pairs are
/// taken; an hour with a note that carries no delta has its 15-minute rows computed again from the
/// raw readings, and an hour whose notes all carry deltas has them added to its 15-minute rows;
/// then each hour's row is computed from its 15-minute rows and each day's from its hourly rows.
async fn refresh_in(tx: &Transaction<'_>, limit: i64) -> Result<RefreshOutcome> {
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ROLLUP_LOCK])
        .await
        .context("taking the rollup lock")?
        .get(0);
    if !locked {
        return Ok(RefreshOutcome::BUSY);
    }
    // Every note of a picked pair goes, and the deltas among them come back summed per
    // 15-minute bucket; notes without a delta come back as one row per pair, quarter NULL.
    let taken = tx
        .query(
            &format!(
                "WITH pick AS (SELECT DISTINCT sensor_id, hour FROM \
                     (SELECT sensor_id, hour FROM rollup_dirty ORDER BY id LIMIT $1) p), \
                 gone AS (DELETE FROM rollup_dirty d USING pick \
                     WHERE d.sensor_id = pick.sensor_id AND d.hour = pick.hour RETURNING d.*) \
                 SELECT x.sensor_id, x.hour, x.quarter, {COMBINE} FROM gone x \
                 GROUP BY x.sensor_id, x.hour, x.quarter"
            ),
            &[&limit],
        )
        .await
        .context("taking dirty rollup hours")?;
    let mut pairs: BTreeSet<(i32, DateTime<Utc>)> = BTreeSet::new();
    let mut whole: BTreeSet<(i32, DateTime<Utc>)> = BTreeSet::new();
    let mut deltas: Vec<Delta> = Vec::new();
    for row in &taken {
        let pair = (row.get(0), row.get(1));
        pairs.insert(pair);
        match row.get::<_, Option<DateTime<Utc>>>(2) {
            None => {
                whole.insert(pair);
            }
            Some(quarter) => {
                let at = |ts: usize, value: usize| {
                    row.get::<_, Option<DateTime<Utc>>>(ts)
                        .zip(row.get::<_, Option<f64>>(value))
                };
                deltas.push(Delta {
                    sensor_id: pair.0,
                    quarter,
                    n: row.get(3),
                    total: row.get(4),
                    lo: row.get(5),
                    hi: row.get(6),
                    first: at(7, 8),
                    last: at(9, 10),
                    flagged: row.get(11),
                    quality: row.get(12),
                })
            }
        }
    }
    // An hour recomputed from the raw readings has its deltas in it already.
    deltas.retain(|d| !whole.contains(&(d.sensor_id, hour_of(d.quarter))));
    let (sensors, hours): (Vec<i32>, Vec<DateTime<Utc>>) = pairs.iter().copied().unzip();
    let (whole_sensors, whole_hours): (Vec<i32>, Vec<DateTime<Utc>>) =
        whole.iter().copied().unzip();
    let (day_sensors, days) = sensor_days(pairs.iter().copied());
    // Each pair is worked through its own index range (LATERAL, and nested loops for the
    // deletes), whatever the planner guesses about the unnested arrays or a rollup whose
    // statistics lag behind; and without JIT: many small lookups are never worth compiling.
    tx.batch_execute(
        "SET LOCAL jit = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
    )
    .await
    .context("setting up the rollup refresh")?;
    let [daily, hourly, quarter] = ROLLUPS;
    let unnested = "unnest($1::int4[], $2::timestamptz[]) AS p(sensor_id, start)";
    // (rollup, the finer rollup it is combined from, the pairs, the span of one pair)
    let steps = [
        (quarter, None, (&whole_sensors, &whole_hours), "1 hour"),
        (hourly, Some(quarter), (&sensors, &hours), "1 hour"),
        (daily, Some(hourly), (&day_sensors, &days), "1 day"),
    ];
    for (rollup, finer, (ids, starts), span) in steps {
        if finer == Some(quarter) && !deltas.is_empty() {
            add_deltas(tx, &deltas).await?;
        }
        if ids.is_empty() {
            continue;
        }
        tx.execute(
            &format!(
                "DELETE FROM {} x USING {unnested} WHERE x.sensor_id = p.sensor_id \
                 AND x.bucket >= p.start AND x.bucket < p.start + interval '{span}'",
                rollup.relation
            ),
            &[ids, starts],
        )
        .await
        .context("clearing rollup rows")?;
        let insert = match finer {
            // Up to four 15-minute rows per hour, from the raw readings.
            None => format!(
                "INSERT INTO {} ({COLUMNS}) \
                 SELECT p.sensor_id, b.* FROM {unnested} CROSS JOIN LATERAL ( \
                   SELECT date_bin(interval '{}', r.ts, 'epoch'::timestamptz), {} \
                   FROM readings r WHERE r.sensor_id = p.sensor_id \
                     AND r.ts >= p.start AND r.ts < p.start + interval '{span}' \
                   GROUP BY 1) b",
                rollup.relation,
                rollup.interval,
                raw_summary(USABLE),
            ),
            // One row per pair: the span is exactly one bucket of this rollup.
            Some(finer) => format!(
                "INSERT INTO {} ({COLUMNS}) \
                 SELECT p.sensor_id, p.start, b.* FROM {unnested} CROSS JOIN LATERAL ( \
                   SELECT {COMBINE} FROM {} x WHERE x.sensor_id = p.sensor_id \
                     AND x.bucket >= p.start AND x.bucket < p.start + interval '{span}' \
                   HAVING count(*) > 0) b",
                rollup.relation, finer.relation,
            ),
        };
        tx.execute(&insert, &[ids, starts])
            .await
            .context("computing rollup rows")?;
    }
    pack_days(tx, &day_sensors, &days).await?;
    Ok(RefreshOutcome {
        refreshed: pairs.len() as u64,
        more: more_waiting(tx).await?,
    })
}

/// Whether dirty notes wait (as `client` sees them): what [`RefreshOutcome::more`] tells.
async fn more_waiting(client: &impl tokio_postgres::GenericClient) -> Result<bool> {
    Ok(client
        .query_one("SELECT EXISTS (SELECT 1 FROM rollup_dirty)", &[])
        .await
        .context("looking for more dirty rollup hours")?
        .get(0))
}

/// Adds deltas to their 15-minute rows (made if missing), as [`COMBINE`] would combine the two.
async fn add_deltas(tx: &Transaction<'_>, deltas: &[Delta]) -> Result<()> {
    let columns = DeltaColumns::new(deltas);
    let params = columns.params();
    // Without the hour ($2), which the rollup row does not keep.
    let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, (value, _))| *value)
        .collect();
    let relation = ROLLUPS[2].relation;
    tx.execute(
        &format!(
            "INSERT INTO {relation} AS x ({COLUMNS}) \
             SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::int8[], $4::float8[], \
                 $5::float8[], $6::float8[], $7::timestamptz[], $8::float8[], \
                 $9::timestamptz[], $10::float8[], $11::int8[], $12::int2[]) \
             ON CONFLICT (sensor_id, bucket) DO UPDATE SET \
               n = x.n + excluded.n, \
               total = CASE WHEN x.total IS NULL THEN excluded.total \
                 WHEN excluded.total IS NULL THEN x.total ELSE x.total + excluded.total END, \
               lo = least(x.lo, excluded.lo), \
               hi = greatest(x.hi, excluded.hi), \
               first_ts = CASE WHEN x.first_ts IS NULL OR excluded.first_ts < x.first_ts \
                 THEN excluded.first_ts ELSE x.first_ts END, \
               first_value = CASE WHEN x.first_ts IS NULL OR excluded.first_ts < x.first_ts \
                 THEN excluded.first_value ELSE x.first_value END, \
               last_ts = CASE WHEN x.last_ts IS NULL OR excluded.last_ts > x.last_ts \
                 THEN excluded.last_ts ELSE x.last_ts END, \
               last_value = CASE WHEN x.last_ts IS NULL OR excluded.last_ts > x.last_ts \
                 THEN excluded.last_value ELSE x.last_value END, \
               flagged = x.flagged + excluded.flagged, \
               quality = CASE WHEN x.quality IS NULL THEN excluded.quality \
                 WHEN excluded.quality IS NULL THEN x.quality ELSE x.quality | excluded.quality END"
        ),
        &values,
    )
    .await
    .context("adding deltas to the 15-minute rollup")?;
    Ok(())
}

/// The distinct (sensor, day) pairs that (sensor, hour) pairs fall in, as the parallel arrays the
/// refresh statements unnest.
fn sensor_days(
    hours: impl Iterator<Item = (i32, DateTime<Utc>)>,
) -> (Vec<i32>, Vec<DateTime<Utc>>) {
    let days: BTreeSet<(i32, DateTime<Utc>)> = hours
        .map(|(sensor, hour)| (sensor, floor(hour, 86_400)))
        .collect();
    days.into_iter().unzip()
}

/// The `hours` of a packed day (see migration V18 and [`crate::opendata`]) from its hourly rows
/// `x`, the day starting at `p.start`: per hour, oldest first, the hour of the day (int2), n and
/// flagged (int4), quality (int2), total, lo, hi, first and last value (float8, NaN for NULL), as
/// the binary send functions write them.
const PACKED_HOURS: &str = "string_agg( \
       int2send((date_part('epoch', x.bucket - p.start) / 3600)::smallint) \
       || int4send(x.n::integer) || int4send(x.flagged::integer) \
       || int2send(coalesce(x.quality, 0::smallint)) \
       || float8send(coalesce(x.total, 'NaN')) || float8send(coalesce(x.lo, 'NaN')) \
       || float8send(coalesce(x.hi, 'NaN')) || float8send(coalesce(x.first_value, 'NaN')) \
       || float8send(coalesce(x.last_value, 'NaN')), \
       ''::bytea ORDER BY x.bucket)";

/// Computes again, in `tx`, the packed rows of `readings_1h_days` (migration V18) for the
/// `(sensors[i], days[i])` pairs, from their hourly rows; a day left without hourly rows loses its
/// packed row.
async fn pack_days(tx: &Transaction<'_>, sensors: &[i32], days: &[DateTime<Utc>]) -> Result<()> {
    if sensors.is_empty() {
        return Ok(());
    }
    let pairs = "unnest($1::int4[], $2::timestamptz[]) AS p(sensor_id, start)";
    tx.execute(
        &format!(
            "DELETE FROM readings_1h_days x USING {pairs} \
             WHERE x.sensor_id = p.sensor_id AND x.day = p.start"
        ),
        &[&sensors, &days],
    )
    .await
    .context("clearing packed days")?;
    tx.execute(
        &format!(
            "INSERT INTO readings_1h_days \
             SELECT p.sensor_id, p.start, b.hours FROM {pairs} CROSS JOIN LATERAL ( \
               SELECT {PACKED_HOURS} AS hours \
               FROM readings_1h x WHERE x.sensor_id = p.sensor_id \
                 AND x.bucket >= p.start AND x.bucket < p.start + interval '1 day' \
               HAVING count(*) > 0) b"
        ),
        &[&sensors, &days],
    )
    .await
    .context("packing days of hourly rows")?;
    Ok(())
}

/// The slots of `seconds` (whole hours or days) that `hours` fall in, merged into contiguous
/// `[start, end)` windows.
fn windows(hours: &BTreeSet<DateTime<Utc>>, seconds: i64) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let width = TimeDelta::seconds(seconds);
    let mut out: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for &hour in hours {
        let start = floor(hour, seconds);
        match out.last_mut() {
            Some((_, end)) if *end >= start => *end = (*end).max(start + width),
            _ => out.push((start, start + width)),
        }
    }
    out
}

/// Whether the rollups are continuous aggregates (TimescaleDB made them) rather than tables.
pub(crate) async fn continuous(client: &tokio_postgres::Client) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = to_regclass('readings_15m')",
            &[],
        )
        .await
        .context("inspecting the rollups")?;
    // A continuous aggregate is a view over its materialisation; the tables are plain tables.
    Ok(row.is_some_and(|r| r.get::<_, i8>(0) as u8 == b'v'))
}

/// The rollup tables of plain mode, for a TimescaleDB server that cannot make continuous
/// aggregates of them; the same relations, kept by [`Store::refresh_rollups`] as in plain mode.
const ROLLUP_TABLE: &str = "CREATE TABLE IF NOT EXISTS {name} (\
    sensor_id integer NOT NULL, bucket timestamptz NOT NULL, n bigint NOT NULL, \
    total double precision, lo double precision, hi double precision, \
    first_ts timestamptz, first_value double precision, last_ts timestamptz, last_value double precision, \
    flagged bigint NOT NULL, quality smallint, \
    PRIMARY KEY (sensor_id, bucket) INCLUDE (n, total, lo, hi, first_ts, first_value, last_ts, last_value, flagged, quality))";

/// TimescaleDB mode: the rollups as continuous aggregates; where the server refuses one (an older
/// TimescaleDB without aggregate FILTER in continuous aggregates, say), the rollups are made as the
/// tables plain mode uses instead, with a warning, so that the system still starts and answers
/// the same.
pub(crate) async fn create_rollups_timescale(client: &tokio_postgres::Client) -> Result<()> {
    if let Err(error) = create_continuous_aggregates(client).await {
        tracing::warn!(%error, "cannot create the rollups as continuous aggregates; making them tables");
        for rollup in ROLLUPS {
            client
                .batch_execute(&ROLLUP_TABLE.replace("{name}", rollup.relation))
                .await
                .context("creating a rollup table")?;
        }
    }
    Ok(())
}

/// TimescaleDB mode: the rollups as continuous aggregates on `readings`, as the TimescaleDB
/// documentation describes them (`CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous)`,
/// `time_bucket` in the `GROUP BY`, `WITH NO DATA`), each directly on the hypertable. Only
/// materialised rows are read (`materialized_only`): the dirty list, not real-time aggregation,
/// covers what has not been refreshed yet.
async fn create_continuous_aggregates(client: &tokio_postgres::Client) -> Result<()> {
    for rollup in ROLLUPS {
        let sql = format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {} \
             WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS \
             SELECT r.sensor_id, time_bucket(INTERVAL '{}', r.ts) AS bucket, \
               count(*) FILTER (WHERE {USABLE}) AS n, \
               sum(r.value) FILTER (WHERE {USABLE}) AS total, \
               min(r.value) FILTER (WHERE {USABLE}) AS lo, \
               max(r.value) FILTER (WHERE {USABLE}) AS hi, \
               min(r.ts) FILTER (WHERE {USABLE}) AS first_ts, \
               first(r.value, r.ts) FILTER (WHERE {USABLE}) AS first_value, \
               max(r.ts) FILTER (WHERE {USABLE}) AS last_ts, \
               last(r.value, r.ts) FILTER (WHERE {USABLE}) AS last_value, \
               count(*) FILTER (WHERE NOT ({USABLE})) AS flagged, \
               bit_or(r.quality) FILTER (WHERE {USABLE}) AS quality \
             FROM readings r GROUP BY r.sensor_id, time_bucket(INTERVAL '{}', r.ts) \
             WITH NO DATA",
            rollup.relation, rollup.interval, rollup.interval
        );
        client
            .batch_execute(&sql)
            .await
            .context("creating a continuous aggregate")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn deltas_summarise_each_quarter_as_the_raw_summary_does() {
        let rows = [
            // Out of order within the quarter, one flagged (left out), one only suspected (kept).
            (7, "2024-01-01T10:14:00Z", 3.0, 0),
            (7, "2024-01-01T10:01:00Z", 5.0, 1),
            (7, "2024-01-01T10:05:00Z", 99.0, 256),
            (7, "2024-01-01T10:09:00Z", -2.0, 0),
            // The next quarter of the same hour, and another sensor.
            (7, "2024-01-01T10:15:00Z", 1.5, 0),
            (8, "2024-01-01T10:01:00Z", 4.0, 0),
            // Only flagged readings: counted, nothing usable.
            (9, "2024-01-01T10:20:00Z", 7.0, 512),
        ];
        let deltas = quarter_deltas(
            rows.iter()
                .map(|&(sensor, ts, value, quality)| (sensor, t(ts), value, quality)),
        );
        let keys: Vec<(i32, DateTime<Utc>)> =
            deltas.iter().map(|d| (d.sensor_id, d.quarter)).collect();
        assert_eq!(
            keys,
            [
                (7, t("2024-01-01T10:00:00Z")),
                (7, t("2024-01-01T10:15:00Z")),
                (8, t("2024-01-01T10:00:00Z")),
                (9, t("2024-01-01T10:15:00Z")),
            ]
        );
        assert_eq!(
            deltas[0],
            Delta {
                sensor_id: 7,
                quarter: t("2024-01-01T10:00:00Z"),
                n: 3,
                total: Some(6.0),
                lo: Some(-2.0),
                hi: Some(5.0),
                first: Some((t("2024-01-01T10:01:00Z"), 5.0)),
                last: Some((t("2024-01-01T10:14:00Z"), 3.0)),
                flagged: 1,
                quality: Some(1),
            }
        );
        assert_eq!(
            deltas[3],
            Delta {
                flagged: 1,
                ..Delta::empty(9, t("2024-01-01T10:15:00Z"))
            }
        );
        let columns = DeltaColumns::new(&deltas);
        assert_eq!(columns.hours, vec![t("2024-01-01T10:00:00Z"); 4]);
        assert_eq!(columns.total[3], None);
        // Before 1970 the bucket is still the one the time falls in, not the one after it.
        let before = quarter_deltas([(1, t("1969-12-31T23:59:59.5Z"), 1.0, 0)].into_iter());
        assert_eq!(before[0].quarter, t("1969-12-31T23:45:00Z"));
        assert_eq!(
            DeltaColumns::new(&before).hours,
            [t("1969-12-31T23:00:00Z")]
        );
    }

    #[test]
    fn the_widest_rollup_that_divides_the_bucket_is_chosen() {
        let (from, to) = (t("2024-01-01T00:00:00Z"), t("2025-01-01T00:00:00Z"));
        let pick = |secs| rollup_for(secs, from, to).map(|r| r.relation);
        assert_eq!(pick(86_400), Some("readings_1d"));
        assert_eq!(pick(7 * 86_400), Some("readings_1d"));
        assert_eq!(pick(3_600), Some("readings_1h"));
        assert_eq!(pick(6 * 3_600), Some("readings_1h"));
        assert_eq!(pick(1_800), Some("readings_15m"));
        assert_eq!(pick(600), None);
        assert_eq!(pick(90), None);
    }

    #[test]
    fn a_range_without_a_whole_rollup_bucket_goes_to_the_raw_readings() {
        let from = t("2024-01-01T10:05:00Z");
        assert_eq!(
            rollup_for(3_600, from, t("2024-01-01T10:25:00Z")).map(|r| r.relation),
            None
        );
        // A whole quarter hour inside: the 15-minute rollup serves the hourly buckets.
        assert_eq!(
            rollup_for(3_600, from, t("2024-01-01T10:50:00Z")).map(|r| r.relation),
            Some("readings_15m")
        );
        let hourly = ROLLUPS[1];
        assert_eq!(
            hourly.inner(from, t("2024-01-01T13:30:00Z")),
            (t("2024-01-01T11:00:00Z"), t("2024-01-01T13:00:00Z"))
        );
        assert_eq!(
            hourly.inner(t("2024-01-01T11:00:00Z"), t("2024-01-01T13:00:00Z")),
            (t("2024-01-01T11:00:00Z"), t("2024-01-01T13:00:00Z"))
        );
    }

    #[test]
    fn dirty_hours_merge_into_windows_of_hours_and_days() {
        let hours: BTreeSet<_> = [
            t("2024-03-01T22:00:00Z"),
            t("2024-03-01T23:00:00Z"),
            t("2024-03-02T01:00:00Z"),
            t("2024-03-05T07:00:00Z"),
        ]
        .into();
        assert_eq!(
            windows(&hours, 3_600),
            [
                (t("2024-03-01T22:00:00Z"), t("2024-03-02T00:00:00Z")),
                (t("2024-03-02T01:00:00Z"), t("2024-03-02T02:00:00Z")),
                (t("2024-03-05T07:00:00Z"), t("2024-03-05T08:00:00Z")),
            ]
        );
        assert_eq!(
            windows(&hours, 86_400),
            [
                (t("2024-03-01T00:00:00Z"), t("2024-03-03T00:00:00Z")),
                (t("2024-03-05T00:00:00Z"), t("2024-03-06T00:00:00Z")),
            ]
        );
        assert_eq!(
            hour_of(t("2024-03-05T23:59:59Z")),
            t("2024-03-05T23:00:00Z")
        );
        assert_eq!(ROLLUPS[0].slot_seconds(), 86_400);
        assert_eq!(ROLLUPS[2].slot_seconds(), 3_600);
    }
}
