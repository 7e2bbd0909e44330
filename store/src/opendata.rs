//! What the open data API reads: stations with their sensors and latest readings, the latest value
//! of every sensor, a sensor's raw readings in pages (by time, or by arrival for pollers), and
//! server-side aggregation into time buckets.

use crate::rollup::{raw_summary, rollup_for, COMBINE, ROLLUPS, USABLE};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use std::time::Duration;

/// Which stations to list. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct StationFilter {
    pub kind: Option<String>,
    /// Stations with a sensor of this quantity.
    pub quantity: Option<String>,
    pub municipality: Option<String>,
    /// `[min_lon, min_lat, max_lon, max_lat]`.
    pub bbox: Option<[f64; 4]>,
    /// `(lon, lat, radius_km)`: within the radius, nearest first.
    pub near: Option<(f64, f64, f64)>,
    pub key: Option<String>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StationRow {
    pub key: String,
    pub name: String,
    pub kind: String,
    pub lon: f64,
    pub lat: f64,
    pub municipality_code: Option<String>,
    /// Great-circle distance from the `near` point, when one was given.
    pub distance_km: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

/// A sensor with its latest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRow {
    pub sensor: String,
    pub station: Option<String>,
    pub quantity: String,
    pub name: String,
    pub expected_interval: Duration,
    /// `(ts, value, quality, received_at)` of the newest reading, if any.
    pub latest: Option<(DateTime<Utc>, f64, i16, DateTime<Utc>)>,
}

/// Which sensors' latest values to list.
#[derive(Debug, Clone, Default)]
pub struct LatestFilter {
    pub quantity: Option<String>,
    pub station: Option<String>,
    pub municipality: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub quality: i16,
    pub received_at: DateTime<Utc>,
}

/// Where a page of raw readings starts and how it is ordered.
#[derive(Debug, Clone, PartialEq)]
pub enum RawOrder {
    /// By measurement time within `[from, to)`, after `after` if given.
    Time {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<DateTime<Utc>>,
    },
    /// By arrival: readings received at or after `since`, after the `(received_at, ts)` cursor
    /// if given. Late and back-filled readings appear here when they arrive.
    Arrival {
        since: DateTime<Utc>,
        after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    },
}

/// One time bucket of a sensor's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRow {
    pub start: DateTime<Utc>,
    /// Readings aggregated (usable ones, unless all were asked for).
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub last: f64,
    /// Readings in the bucket left out because their quality flags mark them unusable.
    pub flagged: i64,
    /// The OR of the quality flags of the readings aggregated.
    pub quality: i16,
}

/// A packed day of hourly buckets (`readings_1h_days`): when it starts, and the SHA-256 of its
/// hours (migration V23), which changes whenever any of its buckets does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedDay {
    pub day: DateTime<Utc>,
    pub digest: [u8; 32],
}

/// The `holds` of a caller of [`Store::sensor_aggregate_holding`] that holds nothing.
type HoldsNothing = fn(&[PackedDay]) -> Vec<bool>;

/// A sensor's buckets as [`Store::sensor_aggregate_holding`] read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregated {
    pub quantity: String,
    /// The buckets read, oldest first: every one with readings, but those of the packed days the
    /// caller held.
    pub rows: Vec<BucketRow>,
    /// The packed days read (hourly buckets over whole days only), oldest first, each with
    /// whether the caller held it: a held day's buckets are not in `rows`.
    pub packed: Vec<(PackedDay, bool)>,
}

/// The id of the sensor whose key is `$1`, evaluated once per statement, so that the planner can
/// use it in index conditions.
const SENSOR_ID: &str = "(SELECT id FROM sensors WHERE key = $1)";

impl Store {
    /// Stations, by key, or nearest first when a point is given.
    pub async fn stations(&self, filter: &StationFilter) -> Result<Vec<StationRow>> {
        let client = self.read_client().await?;
        let (near_lon, near_lat, radius) = match filter.near {
            Some((lon, lat, km)) => (Some(lon), Some(lat), Some(km)),
            None => (None, None, None),
        };
        let [min_lon, min_lat, max_lon, max_lat] = match filter.bbox {
            Some(b) => b.map(Some),
            None => [None; 4],
        };
        // Haversine distance on a sphere of radius 6371.0088 km (the IUGG mean Earth radius).
        let rows = client
            .query(
                "WITH s AS ( \
                   SELECT st.*, CASE WHEN $6::float8 IS NULL THEN NULL ELSE \
                     2 * 6371.0088 * asin(sqrt(power(sin(radians(st.lat - $7) / 2), 2) + \
                     cos(radians($7)) * cos(radians(st.lat)) * power(sin(radians(st.lon - $6) / 2), 2))) END AS km \
                   FROM stations st) \
                 SELECT key, name, kind, lon, lat, municipality_code, km, updated_at FROM s \
                 WHERE ($1::text IS NULL OR kind = $1) \
                   AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM sensors se WHERE se.station_id = s.id AND se.quantity = $2)) \
                   AND ($3::text IS NULL OR municipality_code = $3) \
                   AND ($4::text IS NULL OR key = $4) \
                   AND ($9::float8 IS NULL OR (lon BETWEEN $9 AND $11 AND lat BETWEEN $10 AND $12)) \
                   AND ($8::float8 IS NULL OR km <= $8) \
                 ORDER BY km NULLS LAST, key LIMIT $5",
                &[
                    &filter.kind,
                    &filter.quantity,
                    &filter.municipality,
                    &filter.key,
                    &filter.limit,
                    &near_lon,
                    &near_lat,
                    &radius,
                    &min_lon,
                    &min_lat,
                    &max_lon,
                    &max_lat,
                ],
            )
            .await
            .context("listing stations")?;
        Ok(rows
            .iter()
            .map(|r| StationRow {
                key: r.get(0),
                name: r.get(1),
                kind: r.get(2),
                lon: r.get(3),
                lat: r.get(4),
                municipality_code: r.get(5),
                distance_km: r.get(6),
                updated_at: r.get(7),
            })
            .collect())
    }

    /// Municipalities by code: `(code, name)`, with the boundary (GeoJSON) when asked for.
    pub async fn municipalities(
        &self,
        code: Option<&str>,
        with_boundary: bool,
    ) -> Result<Vec<(String, String, Option<serde_json::Value>)>> {
        let client = self.read_client().await?;
        let rows = client
            .query(
                "SELECT code, name, CASE WHEN $2 THEN boundary END FROM municipalities \
                 WHERE $1::text IS NULL OR code = $1 ORDER BY code",
                &[&code, &with_boundary],
            )
            .await
            .context("reading municipalities")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Every sensor (filtered) with its latest reading, by sensor key.
    pub async fn latest(&self, filter: &LatestFilter) -> Result<Vec<LatestRow>> {
        let client = self.read_client().await?;
        let rows = client
            .query(
                "SELECT se.key, st.key, se.quantity, se.name, extract(epoch FROM se.expected_interval)::float8, \
                        l.ts, l.value, l.quality, l.received_at \
                 FROM sensors se LEFT JOIN stations st ON st.id = se.station_id \
                 LEFT JOIN LATERAL (SELECT r.ts, r.value, r.quality, r.received_at FROM readings r \
                     WHERE r.sensor_id = se.id ORDER BY r.ts DESC LIMIT 1) l ON true \
                 WHERE ($1::text IS NULL OR se.quantity = $1) AND ($2::text IS NULL OR st.key = $2) \
                   AND ($3::text IS NULL OR st.municipality_code = $3) \
                 ORDER BY se.key",
                &[&filter.quantity, &filter.station, &filter.municipality],
            )
            .await
            .context("reading the latest values")?;
        Ok(rows
            .iter()
            .map(|r| {
                let ts: Option<DateTime<Utc>> = r.get(5);
                LatestRow {
                    sensor: r.get(0),
                    station: r.get(1),
                    quantity: r.get(2),
                    name: r.get(3),
                    expected_interval: Duration::from_secs_f64(r.get::<_, f64>(4).max(0.0)),
                    latest: ts.map(|ts| (ts, r.get(6), r.get(7), r.get(8))),
                }
            })
            .collect())
    }

    /// Refreshes the planner's statistics of `readings` and its rollups, and clears out the notes
    /// a refresh of the rollups left behind (after a bulk load).
    pub async fn analyze_readings(&self) -> Result<()> {
        let client = self.client().await?;
        for statement in [
            "ANALYZE readings",
            "VACUUM ANALYZE readings_15m",
            "VACUUM ANALYZE readings_1h",
            "VACUUM ANALYZE readings_1d",
            "VACUUM ANALYZE readings_1h_days",
            "VACUUM ANALYZE rollup_dirty",
        ] {
            client
                .batch_execute(statement)
                .await
                .context("analysing readings")?;
        }
        Ok(())
    }

    /// A sensor's id; `None` when there is no such sensor.
    pub async fn sensor_id(&self, key: &str) -> Result<Option<i32>> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT id FROM sensors WHERE key = $1", &[&key])
            .await
            .context("looking up a sensor")?
            .map(|r| r.get(0)))
    }

    pub async fn sensor_quantity(&self, key: &str) -> Result<Option<String>> {
        quantity_of(&self.client().await?, key).await
    }

    /// [`Store::sensor_quantity`] for the open-data reads: from the standby, if reads go to one.
    pub async fn open_sensor_quantity(&self, key: &str) -> Result<Option<String>> {
        quantity_of(&self.read_client().await?, key).await
    }

    /// A sensor's raw readings in `order`, at most `limit`, streamed from the database as they
    /// are read (a large export never sits in memory whole).
    pub async fn raw_readings(
        &self,
        sensor: &str,
        order: &RawOrder,
        limit: i64,
    ) -> Result<impl Stream<Item = Result<RawReading>> + Send + 'static> {
        self.raw_slice(sensor, order, limit, 0).await
    }

    async fn raw_slice(
        &self,
        sensor: &str,
        order: &RawOrder,
        limit: i64,
        offset: i64,
    ) -> Result<impl Stream<Item = Result<RawReading>> + Send + 'static> {
        let client = self.read_client().await?;
        let sensor = sensor.to_owned();
        let statement = match order {
            RawOrder::Time { .. } => {
                "SELECT r.ts, r.value, r.quality, r.received_at FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                 WHERE s.key = $1 AND r.ts >= $2 AND r.ts < $3 AND ($4::timestamptz IS NULL OR r.ts > $4) \
                 ORDER BY r.ts LIMIT $5 OFFSET $6"
            }
            RawOrder::Arrival { .. } => {
                "SELECT r.ts, r.value, r.quality, r.received_at FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                 WHERE s.key = $1 AND r.received_at >= $2 \
                   AND ($3::timestamptz IS NULL OR (r.received_at, r.ts) > ($3, $4)) \
                 ORDER BY r.received_at, r.ts LIMIT $5 OFFSET $6"
            }
        };
        // Time: $2 from, $3 to, $4 the cursor. Arrival: $2 since, $3 and $4 the cursor.
        let (start, third, fourth): (DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            match order {
                RawOrder::Time { from, to, after } => (*from, Some(*to), *after),
                RawOrder::Arrival { since, after } => {
                    (*since, after.map(|(r, _)| r), after.map(|(_, ts)| ts))
                }
            };
        let statement = client
            .prepare_cached(statement)
            .await
            .context("preparing a read of raw readings")?;
        let stream = client
            .query_raw(
                &statement,
                [
                    &sensor as &(dyn tokio_postgres::types::ToSql + Sync),
                    &start,
                    &third,
                    &fourth,
                    &limit,
                    &offset,
                ],
            )
            .await
            .context("reading raw readings")?;
        // The pooled connection travels with the stream and returns to the pool when it ends.
        let rows = stream.map(move |row| {
            let _holds_the_connection = &client;
            let row = row.context("reading raw readings")?;
            Ok(RawReading {
                ts: row.get(0),
                value: row.get(1),
                quality: row.get(2),
                received_at: row.get(3),
            })
        });
        Ok(rows)
    }

    /// The last reading of the page of `limit` readings in `order`, if more readings follow it:
    /// where the next page starts. Read before the page itself is streamed, so that its link can
    /// go in the response headers.
    pub async fn page_end(
        &self,
        sensor: &str,
        order: &RawOrder,
        limit: i64,
    ) -> Result<Option<RawReading>> {
        let stream = self.raw_slice(sensor, order, 2, limit.max(1) - 1).await?;
        let mut rows: Vec<RawReading> = stream
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        Ok((rows.len() == 2).then(|| rows.swap_remove(0)))
    }

    /// A sensor's readings in `[from, to)` aggregated into buckets of `bucket` aligned to the Unix
    /// epoch (so daily buckets are UTC days). Only buckets with readings are returned; usable
    /// readings only unless `all_qualities`.
    ///
    /// Usable-only requests whose buckets are whole multiples of a rollup's are read from the
    /// widest such rollup for the whole rollup buckets inside the range, and from the raw readings
    /// for the partial buckets at its ends and for the hours (days, from the daily rollup) the
    /// rollup has not caught up with yet (see [`crate::rollup`]). The answer is the same either way.
    ///
    /// Hourly buckets over whole days are read from `readings_1h_days` (a row per day, its hours
    /// packed in one `bytea`) for the days without a dirty note, and from the raw readings for the
    /// rest of the range (its partial days at the ends, changed days), all in one snapshot.
    pub async fn aggregate(
        &self,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: Duration,
        all_qualities: bool,
    ) -> Result<Vec<BucketRow>> {
        Ok(self
            .sensor_aggregate(sensor, from, to, bucket, all_qualities)
            .await?
            .map(|(_, rows)| rows)
            .unwrap_or_default())
    }

    /// [`Store::aggregate`] with the sensor's quantity, looked up on the same connection (for
    /// hourly buckets over whole days, in the same snapshot and round trip); `None` for a sensor
    /// that does not exist. From the standby, if reads go to one.
    pub async fn sensor_aggregate(
        &self,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: Duration,
        all_qualities: bool,
    ) -> Result<Option<(String, Vec<BucketRow>)>> {
        let holds_nothing: Option<HoldsNothing> = None;
        Ok(self
            .sensor_aggregate_holding(sensor, from, to, bucket, all_qualities, holds_nothing)
            .await?
            .map(|read| (read.quantity, read.rows)))
    }

    /// [`Store::sensor_aggregate`] for a caller that may already hold what it needs of some packed
    /// days: `holds` is shown the packed days of the range (each with the digest of its hours)
    /// before their hours are read, and says which it holds; the hours of those are not read, and
    /// their buckets are not in the answer's `rows`. `holds` is called at most once, in the read's
    /// snapshot, and only for hourly buckets over whole days. Without `holds` the hours are read
    /// with the digests, as [`Store::sensor_aggregate`] reads them.
    pub async fn sensor_aggregate_holding(
        &self,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: Duration,
        all_qualities: bool,
        holds: Option<impl FnOnce(&[PackedDay]) -> Vec<bool>>,
    ) -> Result<Option<Aggregated>> {
        let client = self.read_client().await?;
        let [daily, ..] = ROLLUPS;
        let (days_from, days_to) = daily.inner(from, to);
        if all_qualities || bucket != Duration::from_secs(3_600) || days_from >= days_to {
            let Some(quantity) = quantity_of(&client, sensor).await? else {
                return Ok(None);
            };
            let rows = aggregate_range(&client, sensor, from, to, bucket, all_qualities).await?;
            return Ok(Some(Aggregated {
                quantity,
                rows,
                packed: Vec::new(),
            }));
        }
        let reading = crate::pipeline::OwnTransaction::new(client);
        let found = hourly_by_days(
            reading.client(),
            sensor,
            from,
            to,
            (days_from, days_to),
            holds,
        )
        .await?;
        reading.ended();
        Ok(found)
    }
}

/// Days that are not packed (dirty days, days without readings) are read from the raw readings,
/// a query per range between packed days (whatever has changed since the last refresh); beyond
/// this many ranges (with the partial days at the ends), the whole range is read as other bucket
/// widths are, in one query.
const MAX_UNPACKED_RANGES: usize = 8;

/// The sensor's quantity and its hourly buckets over `[from, to)` in one read-only snapshot
/// (`None` if there is no such sensor): the packed rows of the whole days in `days` that have no
/// dirty note, but those the caller `holds`, and the raw readings for the partial days at the ends
/// and for the days between packed ones. The caller ends the transaction if this fails.
///
/// Two round trips: the `BEGIN`, the quantity, the packed days and the ends (which are never
/// packed) go out together; then the days between packed ones, if any, with the `COMMIT`. With
/// `holds`, the first round trip reads only the packed days' digests, and the second the hours of
/// those not held: by the range again when none is held (a range scan of the index, where probing
/// it once per day cost PostgreSQL a third to a half more), by their days otherwise. The
/// statements are prepared first, so that nothing waits on a `Parse` and lands after the `COMMIT`.
async fn hourly_by_days(
    client: &deadpool_postgres::Object,
    sensor: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    (days_from, days_to): (DateTime<Utc>, DateTime<Utc>),
    holds: Option<impl FnOnce(&[PackedDay]) -> Vec<bool>>,
) -> Result<Option<Aggregated>> {
    let quantity_of = client
        .prepare_cached(QUANTITY_OF)
        .await
        .context("preparing a sensor look-up")?;
    // The packed days without a dirty note: `day` first, then `columns`.
    let packed_days = |columns: &str| {
        format!(
            "WITH dirty AS (SELECT DISTINCT date_bin('1 day', d.hour, 'epoch'::timestamptz) AS day \
                 FROM rollup_dirty d WHERE d.sensor_id = {SENSOR_ID} AND d.hour >= $2 AND d.hour < $3) \
             SELECT p.day, {columns} FROM readings_1h_days p \
             WHERE p.sensor_id = {SENSOR_ID} AND p.day >= $2 AND p.day < $3 \
               AND p.day NOT IN (SELECT day FROM dirty) \
             ORDER BY p.day"
        )
    };
    // Day, hours, digest: the layout `unpack_day` reads.
    let packed_whole = client
        .prepare_cached(&packed_days("p.hours, p.digest"))
        .await
        .context("preparing the read of packed hourly days")?;
    let packed_digests = client
        .prepare_cached(&packed_days("p.digest"))
        .await
        .context("preparing the read of packed days' digests")?;
    let packed_of = client
        .prepare_cached(&format!(
            "SELECT p.day, p.hours FROM readings_1h_days p \
             WHERE p.sensor_id = {SENSOR_ID} AND p.day = ANY($2::timestamptz[]) ORDER BY p.day"
        ))
        .await
        .context("preparing the read of packed hours")?;
    let raw_hours = client
        .prepare_cached(&raw_aggregation(USABLE))
        .await
        .context("preparing an hourly aggregation of readings")?;
    let hour = Duration::from_secs(3_600);
    let hours = |(start, end)| run_aggregation(client, &raw_hours, sensor, start, end, hour);
    // The partial days are read from the raw readings, which are partitioned: PostgreSQL would
    // plan those statements again on every execution (a plan for all partitions looks dearer to
    // it than one for the partition asked for), which cost twice what running them does. The
    // generic plan prunes the partitions when it starts.
    let begin = async {
        client
            .batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET LOCAL plan_cache_mode = force_generic_plan",
            )
            .await
            .context("beginning to read an hourly series")
    };
    let quantity = async {
        client
            .query_opt(&quantity_of, &[&sensor])
            .await
            .context("looking up a sensor")
    };
    // Without `holds`, the hours are read in the first round trip.
    let whole_first = holds.is_none();
    let first = if whole_first {
        &packed_whole
    } else {
        &packed_digests
    };
    let packed = async {
        client
            .query(first, &[&sensor, &days_from, &days_to])
            .await
            .context("reading packed hourly days")
    };
    let (head, tail) = (
        (from < days_from).then_some((from, days_from)),
        (days_to < to).then_some((days_to, to)),
    );
    // Polled in this order, and each sends its statement when first polled.
    let ((), quantity, packed, ends) = futures_util::future::try_join4(
        begin,
        quantity,
        packed,
        futures_util::future::try_join_all(head.into_iter().chain(tail).map(hours)),
    )
    .await?;
    let commit = async {
        client
            .batch_execute("COMMIT")
            .await
            .context("ending the read of an hourly series")
    };
    let Some(quantity) = quantity.map(|row| row.get::<_, String>(0)) else {
        commit.await?;
        return Ok(None);
    };
    let digest_at = if whole_first { 2 } else { 1 };
    let packed_rows = packed;
    let packed = packed_rows
        .iter()
        .map(|row| {
            let day: DateTime<Utc> = row.get(0);
            let digest: &[u8] = row.get(digest_at);
            let digest = digest.try_into().map_err(|_| {
                crate::Error::Inconsistent(format!(
                    "the digest of the packed hours of {day} is {} bytes, not 32",
                    digest.len()
                ))
            })?;
            Ok(PackedDay { day, digest })
        })
        .collect::<Result<Vec<PackedDay>>>()?;

    let day = chrono::Duration::days(1);
    let mut between = Vec::new();
    let mut at = days_from;
    for packed_day in &packed {
        if at < packed_day.day {
            between.push((at, packed_day.day));
        }
        at = packed_day.day + day;
    }
    if at < days_to {
        between.push((at, days_to));
    }
    if between.len() + ends.len() > MAX_UNPACKED_RANGES {
        let rows =
            aggregate_range(client, sensor, from, to, Duration::from_secs(3_600), false).await?;
        commit.await?;
        return Ok(Some(Aggregated {
            quantity,
            rows,
            packed: Vec::new(),
        }));
    }
    let (held, wanted) = match holds {
        None => (vec![false; packed.len()], Vec::new()),
        Some(holds) => {
            let mut held = holds(&packed);
            held.resize(packed.len(), false);
            let wanted: Vec<DateTime<Utc>> = packed
                .iter()
                .zip(&held)
                .filter(|(_, &held)| !held)
                .map(|(packed_day, _)| packed_day.day)
                .collect();
            (held, wanted)
        }
    };
    let unpacked = async {
        if wanted.is_empty() {
            Ok(Vec::new())
        } else if wanted.len() == packed.len() {
            client
                .query(&packed_whole, &[&sensor, &days_from, &days_to])
                .await
                .context("reading packed hours")
        } else {
            client
                .query(&packed_of, &[&sensor, &wanted])
                .await
                .context("reading packed hours")
        }
    };
    let (unpacked, between, ()) = futures_util::future::try_join3(
        unpacked,
        futures_util::future::try_join_all(between.into_iter().map(hours)),
        commit,
    )
    .await?;
    // The same snapshot: every day wanted is there, as its digest was.
    if unpacked.len() != wanted.len() {
        return Err(crate::Error::Inconsistent(format!(
            "{} packed days asked for in one snapshot, {} read",
            wanted.len(),
            unpacked.len()
        )));
    }
    let unpacked = if whole_first { packed_rows } else { unpacked };

    let mut ends = ends.into_iter();
    let head = head.and_then(|_| ends.next()).unwrap_or_default();
    let size = unpacked.len() * 24
        + head.len()
        + between
            .iter()
            .chain(ends.as_slice())
            .map(Vec::len)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend(head);
    for row in &unpacked {
        unpack_day(row, &mut out)?;
    }
    out.extend(between.into_iter().flatten());
    out.extend(ends.flatten());
    // Each part is in order, and most often they follow one another: then there is nothing to
    // sort (a stable sort would still take a buffer half the size of a year's rows to find that
    // out). Otherwise the sort only interleaves the runs.
    if !out.is_sorted_by_key(|b| b.start) {
        out.sort_by_key(|b| b.start);
    }
    Ok(Some(Aggregated {
        quantity,
        rows: out,
        packed: packed.into_iter().zip(held).collect(),
    }))
}

/// Bytes per hour in a packed day (see migration V18): hour (int2), n (int4), flagged (int4),
/// quality (int2), then total, lo, hi, first and last value (float8), big-endian.
const PACKED_ENTRY: usize = 52;

/// One packed day's hourly buckets, appended to `out`.
fn unpack_day(row: &tokio_postgres::Row, out: &mut Vec<BucketRow>) -> Result<()> {
    let day: DateTime<Utc> = row.get(0);
    let hours: &[u8] = row.get(1);
    if hours.len() % PACKED_ENTRY != 0 {
        return Err(crate::Error::Inconsistent(format!(
            "the packed hours of {day} are {} bytes, not a whole number of entries",
            hours.len()
        )));
    }
    // A day starts at midnight UTC, so an hour's start is the day's date at that hour, without
    // date arithmetic for each of a year's 8,760 hours.
    let (date, midnight) = (day.date_naive(), day.time() == chrono::NaiveTime::MIN);
    let start = |hour: i16| {
        u32::try_from(hour)
            .ok()
            .filter(|_| midnight)
            .and_then(|h| date.and_hms_opt(h, 0, 0))
            .map_or_else(
                || day + chrono::Duration::hours(i64::from(hour)),
                |t| t.and_utc(),
            )
    };
    for entry in hours.chunks_exact(PACKED_ENTRY) {
        let field = |at: usize, width: usize| &entry[at..at + width];
        let int2 = |at: usize| i16::from_be_bytes([entry[at], entry[at + 1]]);
        let int4 = |at: usize| i32::from_be_bytes(field(at, 4).try_into().unwrap_or_default());
        let float8 = |at: usize| f64::from_be_bytes(field(at, 8).try_into().unwrap_or_default());
        let count = i64::from(int4(2));
        out.push(BucketRow {
            start: start(int2(0)),
            count,
            sum: if count == 0 { 0.0 } else { float8(12) },
            min: float8(20),
            max: float8(28),
            first: float8(36),
            last: float8(44),
            flagged: i64::from(int4(6)),
            quality: int2(10),
        });
    }
    Ok(())
}

/// [`Store::aggregate`] from the rollup rows and the raw readings, on `client`.
async fn aggregate_range(
    client: &impl deadpool_postgres::GenericClient,
    sensor: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Duration,
    all_qualities: bool,
) -> Result<Vec<BucketRow>> {
    let seconds = bucket.as_secs_f64();
    let whole_seconds = (bucket.subsec_nanos() == 0).then_some(bucket.as_secs() as i64);
    let rollup = whole_seconds
        .filter(|_| !all_qualities)
        .and_then(|secs| rollup_for(secs, from, to));
    let rows = match rollup {
        Some(rollup) => {
            let (inner_from, inner_to) = rollup.inner(from, to);
            // Rollup rows in a slot with a dirty note are read from the raw readings instead.
            let slot = rollup.slot_seconds() as f64;
            let raw = raw_summary(USABLE);
            // Buckets as wide as the rollup's come each from exactly one part (a rollup row,
            // an end of the range, or a dirty slot) and need no combining.
            let combined = if whole_seconds == Some(rollup.seconds) {
                "SELECT x.* FROM parts x ORDER BY 1".to_owned()
            } else {
                format!(
                    "SELECT date_bin(make_interval(secs => $4), x.bucket, 'epoch'::timestamptz), {COMBINE} \
                     FROM parts x GROUP BY 1 ORDER BY 1"
                )
            };
            client
                .query(
                    &format!(
                        "WITH dirty AS (SELECT DISTINCT date_bin(make_interval(secs => $7), d.hour, 'epoch'::timestamptz) AS slot \
                             FROM rollup_dirty d WHERE d.sensor_id = {SENSOR_ID} \
                               AND d.hour >= date_bin(make_interval(secs => $7), $5, 'epoch'::timestamptz) AND d.hour < $6), \
                         parts AS ( \
                             SELECT x.bucket, x.n, x.total, x.lo, x.hi, x.first_ts, x.first_value, \
                                    x.last_ts, x.last_value, x.flagged, x.quality \
                             FROM {relation} x \
                             WHERE x.sensor_id = {SENSOR_ID} AND x.bucket >= $5 AND x.bucket < $6 \
                               AND date_bin(make_interval(secs => $7), x.bucket, 'epoch'::timestamptz) \
                                   NOT IN (SELECT slot FROM dirty) \
                             UNION ALL \
                             SELECT date_bin(make_interval(secs => $4), r.ts, 'epoch'::timestamptz), {raw} \
                             FROM readings r WHERE r.sensor_id = {SENSOR_ID} AND r.ts >= $2 AND r.ts < $5 GROUP BY 1 \
                             UNION ALL \
                             SELECT date_bin(make_interval(secs => $4), r.ts, 'epoch'::timestamptz), {raw} \
                             FROM readings r WHERE r.sensor_id = {SENSOR_ID} AND r.ts >= $6 AND r.ts < $3 GROUP BY 1 \
                             UNION ALL \
                             SELECT date_bin(make_interval(secs => $4), r.ts, 'epoch'::timestamptz), {raw} \
                             FROM dirty d JOIN readings r ON r.sensor_id = {SENSOR_ID} \
                               AND r.ts >= greatest(d.slot, $5) AND r.ts < least(d.slot + make_interval(secs => $7), $6) \
                             GROUP BY 1) \
                         {combined}",
                        relation = rollup.relation,
                    ),
                    &[&sensor, &from, &to, &seconds, &inner_from, &inner_to, &slot],
                )
                .await
                .context("aggregating readings from a rollup")?
        }
        None => return aggregate_raw(client, sensor, from, to, bucket, all_qualities).await,
    };
    Ok(bucket_rows(&rows))
}

/// [`Store::aggregate`] from the raw readings alone, on `client`.
async fn aggregate_raw(
    client: &impl deadpool_postgres::GenericClient,
    sensor: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Duration,
    all_qualities: bool,
) -> Result<Vec<BucketRow>> {
    let filter = if all_qualities { "true" } else { USABLE };
    let statement = client
        .prepare_cached(&raw_aggregation(filter))
        .await
        .context("preparing an aggregation of readings")?;
    run_aggregation(client, &statement, sensor, from, to, bucket).await
}

/// Runs `statement`, a [`raw_aggregation`] already prepared on `client`, for a sensor's buckets
/// over `[from, to)`.
async fn run_aggregation(
    client: &impl deadpool_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    sensor: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Duration,
) -> Result<Vec<BucketRow>> {
    let rows = client
        .query(statement, &[&sensor, &from, &to, &bucket.as_secs_f64()])
        .await
        .context("aggregating readings")?;
    Ok(bucket_rows(&rows))
}

/// The statement that aggregates a sensor's (`$1`) readings in `[$2, $3)` whose quality passes
/// `filter` into buckets of `$4` seconds, in order.
fn raw_aggregation(filter: &str) -> String {
    format!(
        "SELECT date_bin(make_interval(secs => $4), r.ts, 'epoch'::timestamptz), {} \
         FROM readings r WHERE r.sensor_id = {SENSOR_ID} AND r.ts >= $2 AND r.ts < $3 \
         GROUP BY 1 ORDER BY 1",
        raw_summary(filter)
    )
}

/// Rows of rollup columns (bucket first) as buckets.
fn bucket_rows(rows: &[tokio_postgres::Row]) -> Vec<BucketRow> {
    rows.iter()
        .map(|r| {
            let count: i64 = r.get(1);
            let value = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
            BucketRow {
                start: r.get(0),
                count,
                sum: if count == 0 { 0.0 } else { value(2) },
                min: value(3),
                max: value(4),
                first: value(6),
                last: value(8),
                flagged: r.get(9),
                quality: r.get::<_, Option<i16>>(10).unwrap_or(0),
            }
        })
        .collect()
}

/// A sensor's quantity, by its key.
const QUANTITY_OF: &str = "SELECT quantity FROM sensors WHERE key = $1";

async fn quantity_of(
    client: &impl deadpool_postgres::GenericClient,
    key: &str,
) -> Result<Option<String>> {
    let statement = client
        .prepare_cached(QUANTITY_OF)
        .await
        .context("preparing a sensor look-up")?;
    Ok(client
        .query_opt(&statement, &[&key])
        .await
        .context("looking up a sensor")?
        .map(|r| r.get(0)))
}
