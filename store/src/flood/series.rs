//! What evaluations read and write besides warnings: a sensor's series, quality flags, arrival times and
//! the level trends.

use super::*;

impl Store {
    /// Readings `(ts, value, quality)` of each sensor from `from` on, in time order.
    pub async fn series(
        &self,
        sensor_keys: &[String],
        from: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<(DateTime<Utc>, f64, i16)>>> {
        let starts: Vec<(&str, DateTime<Utc>)> =
            sensor_keys.iter().map(|key| (key.as_str(), from)).collect();
        self.series_from(&starts).await
    }

    /// Each sensor's readings from its own start, `starts` naming `(sensor key, start)`, in time
    /// order: what an evaluation that kept earlier readings still needs. A sensor named twice is
    /// read once, from the earlier start.
    pub async fn series_from(
        &self,
        starts: &[(&str, DateTime<Utc>)],
    ) -> Result<HashMap<String, Vec<(DateTime<Utc>, f64, i16)>>> {
        let mut earliest: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for &(key, from) in starts {
            let start = earliest.entry(key).or_insert(from);
            *start = (*start).min(from);
        }
        let (keys, froms): (Vec<&str>, Vec<DateTime<Utc>>) = earliest.into_iter().unzip();
        let client = self.client().await?;
        let rows = client
            .query(
                // One index range scan per sensor: joined the other way round, the planner may
                // scan every recent reading of every sensor, which under load costs 100 ms and more.
                "SELECT s.key, r.ts, r.value, r.quality \
                 FROM unnest($1::text[], $2::timestamptz[]) AS q(k, from_at) \
                 JOIN sensors s ON s.key = q.k \
                 CROSS JOIN LATERAL (SELECT r.ts, r.value, r.quality FROM readings r \
                     WHERE r.sensor_id = s.id AND r.ts >= q.from_at ORDER BY r.ts) r \
                 ORDER BY s.key, r.ts",
                &[&keys, &froms],
            )
            .await
            .context("loading series")?;
        let mut out: HashMap<String, Vec<(DateTime<Utc>, f64, i16)>> = HashMap::new();
        for row in rows {
            out.entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2), row.get(3)));
        }
        Ok(out)
    }

    /// Sets the quality flags of one sensor's readings (data-quality findings from analytics), and
    /// notes the hours whose flags changed for the rollups, in one statement; then announces the
    /// change (`readings_flagged`). Returns how many readings changed.
    pub async fn set_quality(
        &self,
        sensor_key: &str,
        flags: &[(DateTime<Utc>, i16)],
    ) -> Result<u64> {
        let client = self.client().await?;
        let times: Vec<DateTime<Utc>> = flags.iter().map(|f| f.0).collect();
        let qualities: Vec<i16> = flags.iter().map(|f| f.1).collect();
        let row = client
            .query_one(
                "WITH changed AS (UPDATE readings r SET quality = f.quality FROM sensors s, \
                     unnest($2::timestamptz[], $3::int2[]) AS f(ts, quality) \
                     WHERE s.key = $1 AND r.sensor_id = s.id AND r.ts = f.ts AND r.quality <> f.quality \
                     RETURNING r.sensor_id, r.ts), \
                 noted AS (INSERT INTO rollup_dirty (sensor_id, hour) \
                     SELECT DISTINCT sensor_id, date_bin('1 hour', ts, 'epoch'::timestamptz) FROM changed) \
                 SELECT count(*) FROM changed",
                &[&sensor_key, &times, &qualities],
            )
            .await
            .context("flagging readings")?;
        let changed = row.get::<_, i64>(0) as u64;
        if changed > 0 {
            // After the commit of the change, as every listener expects.
            let notice = Notice::ReadingsFlagged {
                sensor_key: sensor_key.to_owned(),
            };
            coordination::notify_now(&client, &notice).await?;
        }
        Ok(changed)
    }

    /// When each sensor's newest reading (by timestamp) arrived.
    pub async fn last_received(
        &self,
        sensor_keys: &[String],
    ) -> Result<HashMap<String, DateTime<Utc>>> {
        Ok(self
            .newest_readings(sensor_keys)
            .await?
            .into_iter()
            .map(|(key, (_, received))| (key, received))
            .collect())
    }

    /// Each sensor's newest reading (by timestamp): its time and when it arrived, from the index.
    pub async fn newest_readings(
        &self,
        sensor_keys: &[String],
    ) -> Result<HashMap<String, (DateTime<Utc>, DateTime<Utc>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.key, n.ts, n.received_at FROM sensors s \
                 CROSS JOIN LATERAL (SELECT r.ts, r.received_at FROM readings r \
                     WHERE r.sensor_id = s.id ORDER BY r.ts DESC LIMIT 1) n \
                 WHERE s.key = ANY($1)",
                &[&sensor_keys],
            )
            .await
            .context("reading the newest readings")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// When a sensor's reading at `ts` arrived.
    pub async fn received_at(
        &self,
        sensor_key: &str,
        ts: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT r.received_at FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                 WHERE s.key = $1 AND r.ts = $2",
                &[&sensor_key, &ts],
            )
            .await
            .context("reading an arrival time")?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records each sensor's latest evaluated state, unless one of a newer reading is there (a
    /// sensor in two areas is evaluated with each), in one statement.
    pub async fn record_trends(&self, trends: &[TrendRow]) -> Result<()> {
        // One row per sensor, its newest: a statement may not update a row twice.
        let mut newest: HashMap<&str, &TrendRow> = HashMap::new();
        for t in trends {
            let entry = newest.entry(&t.sensor_key).or_insert(t);
            if t.at >= entry.at {
                *entry = t;
            }
        }
        if newest.is_empty() {
            return Ok(());
        }
        let rows: Vec<&TrendRow> = newest.into_values().collect();
        let keys: Vec<&str> = rows.iter().map(|t| t.sensor_key.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = rows.iter().map(|t| t.at).collect();
        let values: Vec<f64> = rows.iter().map(|t| t.value).collect();
        let severities: Vec<Option<i16>> = rows
            .iter()
            .map(|t| t.severity.map(Severity::level))
            .collect();
        let rates: Vec<Option<f64>> = rows.iter().map(|t| t.rate_per_hour).collect();
        let projected: Vec<Option<i16>> = rows
            .iter()
            .map(|t| t.projected.map(|p| p.0.level()))
            .collect();
        let projected_at: Vec<Option<DateTime<Utc>>> =
            rows.iter().map(|t| t.projected.map(|p| p.1)).collect();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO level_trends AS t (sensor_key, at, value, severity, rate_per_hour, \
                     projected_severity, projected_at, evaluated_at) \
                 SELECT k, a, v, s, r, ps, pa, now() FROM unnest($1::text[], $2::timestamptz[], \
                     $3::float8[], $4::int2[], $5::float8[], $6::int2[], $7::timestamptz[]) \
                     AS x(k, a, v, s, r, ps, pa) \
                 ON CONFLICT (sensor_key) DO UPDATE SET at = EXCLUDED.at, value = EXCLUDED.value, \
                     severity = EXCLUDED.severity, rate_per_hour = EXCLUDED.rate_per_hour, \
                     projected_severity = EXCLUDED.projected_severity, \
                     projected_at = EXCLUDED.projected_at, evaluated_at = now() \
                 WHERE t.at <= EXCLUDED.at",
                &[
                    &keys,
                    &ats,
                    &values,
                    &severities,
                    &rates,
                    &projected,
                    &projected_at,
                ],
            )
            .await
            .context("recording sensors' trends")?;
        Ok(())
    }

    /// The evaluated state of the given level sensors (all of them with `None`).
    pub async fn trends(&self, sensors: Option<&[String]>) -> Result<Vec<TrendRow>> {
        let client = self.read_client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, at, value, severity, rate_per_hour, projected_severity, \
                     projected_at FROM level_trends \
                 WHERE $1::text[] IS NULL OR sensor_key = ANY($1) ORDER BY sensor_key",
                &[&sensors],
            )
            .await
            .context("reading sensor trends")?;
        rows.iter()
            .map(|r| {
                Ok(TrendRow {
                    sensor_key: r.get(0),
                    at: r.get(1),
                    value: r.get(2),
                    severity: opt_severity(r, 3)?,
                    rate_per_hour: r.get(4),
                    projected: opt_severity(r, 5)?.zip(r.get::<_, Option<DateTime<Utc>>>(6)),
                })
            })
            .collect()
    }
}
