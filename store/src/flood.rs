//! Flood geography, thresholds, and the warning lifecycle: warnings, their append-only events, and
//! the outbox rows that delivery drains, written in one transaction.

use crate::coordination::{self, Notice};
use crate::events::{append_event, EventInsert};
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tidemark_model::warning::{Category, EventKind, Severity, WarningKind};

#[derive(Debug, Clone, PartialEq)]
pub struct MunicipalityRow {
    pub code: String,
    pub name: String,
    /// GeoJSON MultiPolygon.
    pub boundary: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AreaRow {
    pub key: String,
    pub name: String,
    /// GeoJSON Polygon.
    pub polygon: serde_json::Value,
    pub municipality_codes: Vec<String>,
    pub sensors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub upstream_sensor: String,
    pub downstream_area: String,
    pub travel_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    pub sensor_key: String,
    pub alert: f64,
    pub warning: f64,
    pub severe: f64,
    pub persistence: Duration,
    pub min_readings: i32,
    pub hysteresis: f64,
    pub hold: Duration,
    pub rate_window: Duration,
    pub lead_time: Duration,
    pub plausible_low: f64,
    pub plausible_high: f64,
    pub spike_floor: f64,
    /// Rising at least this fast (units per hour) raises an expected alert.
    pub rate_alert: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RainRuleRow {
    pub sensor_key: String,
    pub window: Duration,
    pub more_than_mm: f64,
    pub severity: i16,
}

/// Everything the flood-risk runner evaluates against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FloodSetup {
    pub areas: Vec<AreaRow>,
    pub links: Vec<LinkRow>,
    pub thresholds: Vec<ThresholdRow>,
    pub rain_rules: Vec<RainRuleRow>,
}

/// What an area's evaluation starts from.
#[derive(Debug, Clone)]
pub struct AreaStatus {
    /// When the area's last event happened (data time).
    pub last_at: Option<DateTime<Utc>>,
    /// The id of the area's last event: what [`Store::record_area_events_after`] checks.
    pub last_event_id: Option<i64>,
    /// The warning in force, if any.
    pub current: Option<WarningRow>,
}

/// An area's warning as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningRow {
    pub id: i64,
    pub area_key: String,
    pub severity: i16,
    pub kind: String,
    pub state: String,
    pub raised_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub stale: bool,
    pub municipalities: Vec<String>,
    pub message_en: String,
    pub message_da: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub warning_id: i64,
    pub area_key: String,
    pub kind: String,
    pub severity: Option<i16>,
    pub at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
}

/// An event of an area's evaluation to record: raised, changed, lifted, stale or fresh.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    /// The severity in force after the event, on raised and changed.
    pub severity: Option<Severity>,
    pub warning_kind: WarningKind,
    pub at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
    pub trigger: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrossingRow {
    pub sensor_key: String,
    pub severity: i16,
    pub up: bool,
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// A level sensor as flood analytics last evaluated it (`level_trends`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrendRow {
    pub sensor_key: String,
    pub at: DateTime<Utc>,
    pub value: f64,
    pub severity: Option<i16>,
    pub rate_per_hour: Option<f64>,
    /// The next threshold's severity and when the trend reaches it.
    pub projected: Option<(i16, DateTime<Utc>)>,
}

/// The columns of warning_events every event query selects, in this order.
const EVENT_COLUMNS: &str = "id, warning_id, area_key, kind, severity, at, message_en, message_da";

fn event_row(r: &tokio_postgres::Row) -> EventRow {
    EventRow {
        id: r.get(0),
        warning_id: r.get(1),
        area_key: r.get(2),
        kind: r.get(3),
        severity: r.get(4),
        at: r.get(5),
        message_en: r.get(6),
        message_da: r.get(7),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn duration(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

impl Store {
    /// Replaces the municipality layer.
    pub async fn replace_municipalities(&self, rows: &[MunicipalityRow]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin municipalities")?;
        for row in rows {
            tx.execute(
                "INSERT INTO municipalities (code, name, boundary) VALUES ($1, $2, $3) \
                 ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, boundary = EXCLUDED.boundary",
                &[&row.code, &row.name, &row.boundary],
            )
            .await
            .context("upserting a municipality")?;
        }
        coordination::notify(&tx, &Notice::ReferenceChanged).await?;
        tx.commit().await.context("commit municipalities")
    }

    /// Upserts flood areas (replacing each area's sensors and links), thresholds and rain rules.
    pub async fn apply_flood_setup(&self, setup: &FloodSetup) -> Result<()> {
        self.apply_flood_setup_audited(setup, None).await
    }

    /// [`Store::apply_flood_setup`] with an audit entry in the same transaction. Either way the
    /// change is announced on [`Channel::FloodSetupChanged`] so that running analytics reload it.
    pub async fn apply_flood_setup_audited(
        &self,
        setup: &FloodSetup,
        audit: Option<&crate::audit::Audit>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin flood setup")?;
        if let Some(audit) = audit {
            crate::audit::record(&tx, audit).await?;
        }
        for area in &setup.areas {
            tx.execute(
                "INSERT INTO flood_areas (key, name, polygon, municipality_codes) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, polygon = EXCLUDED.polygon, \
                 municipality_codes = EXCLUDED.municipality_codes, updated_at = now()",
                &[&area.key, &area.name, &area.polygon, &area.municipality_codes],
            )
            .await
            .context("upserting a flood area")?;
            tx.execute(
                "DELETE FROM flood_area_sensors WHERE area_key = $1",
                &[&area.key],
            )
            .await
            .context("clearing an area's sensors")?;
            tx.execute(
                "DELETE FROM river_links WHERE downstream_area = $1",
                &[&area.key],
            )
            .await
            .context("clearing an area's links")?;
            for sensor in &area.sensors {
                tx.execute(
                    "INSERT INTO flood_area_sensors (area_key, sensor_key) VALUES ($1, $2)",
                    &[&area.key, sensor],
                )
                .await
                .context("adding a sensor to an area")?;
            }
        }
        for link in &setup.links {
            tx.execute(
                "INSERT INTO river_links (upstream_sensor, downstream_area, travel_time) \
                 VALUES ($1, $2, make_interval(secs => $3)) \
                 ON CONFLICT (upstream_sensor, downstream_area) DO UPDATE SET travel_time = EXCLUDED.travel_time",
                &[&link.upstream_sensor, &link.downstream_area, &secs(link.travel_time)],
            )
            .await
            .context("upserting a river link")?;
        }
        for t in &setup.thresholds {
            tx.execute(
                "INSERT INTO level_thresholds (sensor_key, alert, warning, severe, persistence, min_readings, \
                 hysteresis, hold, rate_window, lead_time, plausible_low, plausible_high, spike_floor, rate_alert) \
                 VALUES ($1, $2, $3, $4, make_interval(secs => $5), $6, $7, make_interval(secs => $8), \
                 make_interval(secs => $9), make_interval(secs => $10), $11, $12, $13, $14) \
                 ON CONFLICT (sensor_key) DO UPDATE SET alert = EXCLUDED.alert, warning = EXCLUDED.warning, \
                 severe = EXCLUDED.severe, persistence = EXCLUDED.persistence, min_readings = EXCLUDED.min_readings, \
                 hysteresis = EXCLUDED.hysteresis, hold = EXCLUDED.hold, rate_window = EXCLUDED.rate_window, \
                 lead_time = EXCLUDED.lead_time, plausible_low = EXCLUDED.plausible_low, \
                 plausible_high = EXCLUDED.plausible_high, spike_floor = EXCLUDED.spike_floor, \
                 rate_alert = EXCLUDED.rate_alert",
                &[
                    &t.sensor_key,
                    &t.alert,
                    &t.warning,
                    &t.severe,
                    &secs(t.persistence),
                    &t.min_readings,
                    &t.hysteresis,
                    &secs(t.hold),
                    &secs(t.rate_window),
                    &secs(t.lead_time),
                    &t.plausible_low,
                    &t.plausible_high,
                    &t.spike_floor,
                    &t.rate_alert,
                ],
            )
            .await
            .context("upserting a threshold")?;
        }
        for r in &setup.rain_rules {
            tx.execute(
                "INSERT INTO rain_rules (sensor_key, window_length, more_than_mm, severity) \
                 VALUES ($1, make_interval(secs => $2), $3, $4) \
                 ON CONFLICT (sensor_key, window_length) DO UPDATE SET more_than_mm = EXCLUDED.more_than_mm, \
                 severity = EXCLUDED.severity",
                &[&r.sensor_key, &secs(r.window), &r.more_than_mm, &r.severity],
            )
            .await
            .context("upserting a rain rule")?;
        }
        coordination::notify(&tx, &Notice::FloodSetupChanged).await?;
        tx.commit().await.context("commit flood setup")
    }

    /// Replaces every rain rule of one sensor (none left means the default rules apply), with an
    /// audit entry, in one transaction announced on [`Channel::FloodSetupChanged`].
    pub async fn replace_rain_rules(
        &self,
        sensor_key: &str,
        rules: &[RainRuleRow],
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin rain rules")?;
        tx.execute(
            "DELETE FROM rain_rules WHERE sensor_key = $1",
            &[&sensor_key],
        )
        .await
        .context("removing rain rules")?;
        for r in rules {
            tx.execute(
                "INSERT INTO rain_rules (sensor_key, window_length, more_than_mm, severity) \
                 VALUES ($1, make_interval(secs => $2), $3, $4)",
                &[&sensor_key, &secs(r.window), &r.more_than_mm, &r.severity],
            )
            .await
            .context("inserting a rain rule")?;
        }
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await
    }

    pub async fn flood_setup(&self) -> Result<FloodSetup> {
        let client = self.client().await?;
        let mut sensors: HashMap<String, Vec<String>> = HashMap::new();
        for row in client
            .query(
                "SELECT area_key, sensor_key FROM flood_area_sensors ORDER BY 1, 2",
                &[],
            )
            .await
            .context("loading area sensors")?
        {
            sensors.entry(row.get(0)).or_default().push(row.get(1));
        }
        let areas = client
            .query(
                "SELECT key, name, polygon, municipality_codes FROM flood_areas ORDER BY key",
                &[],
            )
            .await
            .context("loading flood areas")?
            .iter()
            .map(|r| AreaRow {
                key: r.get(0),
                name: r.get(1),
                polygon: r.get(2),
                municipality_codes: r.get(3),
                sensors: sensors.remove(r.get::<_, &str>(0)).unwrap_or_default(),
            })
            .collect();
        let links = client
            .query(
                "SELECT upstream_sensor, downstream_area, extract(epoch FROM travel_time)::float8 FROM river_links",
                &[],
            )
            .await
            .context("loading river links")?
            .iter()
            .map(|r| LinkRow {
                upstream_sensor: r.get(0),
                downstream_area: r.get(1),
                travel_time: duration(r.get(2)),
            })
            .collect();
        let thresholds = client
            .query(
                "SELECT sensor_key, alert, warning, severe, extract(epoch FROM persistence)::float8, min_readings, \
                 hysteresis, extract(epoch FROM hold)::float8, extract(epoch FROM rate_window)::float8, \
                 extract(epoch FROM lead_time)::float8, plausible_low, plausible_high, spike_floor, rate_alert \
                 FROM level_thresholds",
                &[],
            )
            .await
            .context("loading thresholds")?
            .iter()
            .map(|r| ThresholdRow {
                sensor_key: r.get(0),
                alert: r.get(1),
                warning: r.get(2),
                severe: r.get(3),
                persistence: duration(r.get(4)),
                min_readings: r.get(5),
                hysteresis: r.get(6),
                hold: duration(r.get(7)),
                rate_window: duration(r.get(8)),
                lead_time: duration(r.get(9)),
                plausible_low: r.get(10),
                plausible_high: r.get(11),
                spike_floor: r.get(12),
                rate_alert: r.get(13),
            })
            .collect();
        let rain_rules = client
            .query(
                "SELECT sensor_key, extract(epoch FROM window_length)::float8, more_than_mm, severity FROM rain_rules ORDER BY sensor_key, window_length",
                &[],
            )
            .await
            .context("loading rain rules")?
            .iter()
            .map(|r| RainRuleRow {
                sensor_key: r.get(0),
                window: duration(r.get(1)),
                more_than_mm: r.get(2),
                severity: r.get(3),
            })
            .collect();
        Ok(FloodSetup {
            areas,
            links,
            thresholds,
            rain_rules,
        })
    }

    /// Readings `(ts, value, quality)` of each sensor from `from` on, in time order.
    pub async fn series(
        &self,
        sensor_keys: &[String],
        from: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<(DateTime<Utc>, f64, i16)>>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.key, r.ts, r.value, r.quality FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                 WHERE s.key = ANY($1) AND r.ts >= $2 ORDER BY s.key, r.ts",
                &[&sensor_keys, &from],
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
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.key, (SELECT r.received_at FROM readings r WHERE r.sensor_id = s.id \
                 ORDER BY r.ts DESC LIMIT 1) FROM sensors s WHERE s.key = ANY($1)",
                &[&sensor_keys],
            )
            .await
            .context("reading arrival times")?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<DateTime<Utc>>>(1)?)))
            .collect())
    }

    /// The time of the area's latest event, and its warning in force if any.
    pub async fn area_status(&self, area_key: &str) -> Result<AreaStatus> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT max(at), max(id) FROM warning_events WHERE area_key = $1",
                &[&area_key],
            )
            .await
            .context("reading the last event")?;
        let (last, last_event_id): (Option<DateTime<Utc>>, Option<i64>) = (row.get(0), row.get(1));
        // The pooled connection goes back before warnings() takes one: holding one while waiting
        // for another deadlocks a pool that concurrent callers have drained.
        drop(client);
        let current = self
            .warnings(Some(area_key))
            .await?
            .into_iter()
            .find(|w| w.state == "in_force");
        Ok(AreaStatus {
            last_at: last,
            last_event_id,
            current,
        })
    }

    /// Records an area's events in order (each with an MQTT delivery to every one of `mqtt_topics`
    /// and the matching webhooks), the warning rows they change, and the crossings behind them, in
    /// one transaction, under the area's advisory lock so that one writer at a time owns an area.
    pub async fn record_area_events(
        &self,
        area_key: &str,
        municipalities: &[String],
        events: &[NewEvent],
        mqtt_topics: &[String],
        crossings: &[CrossingRow],
    ) -> Result<Vec<i64>> {
        self.record_area_events_after(
            None,
            area_key,
            municipalities,
            events,
            mqtt_topics,
            crossings,
        )
        .await
    }

    /// [`Store::record_area_events`] for events worked out from an [`AreaStatus`]: they are
    /// recorded only if the area's last event is still `seen` (its
    /// [`AreaStatus::last_event_id`]), checked under the area's lock; otherwise another writer
    /// has recorded events since, and [`Error::Superseded`] asks for the area to be evaluated
    /// again. So two analytics processes never record the same change twice.
    pub async fn record_area_events_after(
        &self,
        seen: Option<Option<i64>>,
        area_key: &str,
        municipalities: &[String],
        events: &[NewEvent],
        mqtt_topics: &[String],
        crossings: &[CrossingRow],
    ) -> Result<Vec<i64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin warning events")?;
        coordination::lock_area(&tx, area_key).await?;
        if let Some(seen) = seen {
            let last: Option<i64> = tx
                .query_one(
                    "SELECT max(id) FROM warning_events WHERE area_key = $1",
                    &[&area_key],
                )
                .await
                .context("reading the area's last event under its lock")?
                .get(0);
            if last != seen {
                return Err(Error::Superseded(area_key.to_owned()));
            }
        }
        let sequence = if events.is_empty() {
            None
        } else {
            Some(coordination::lock_event_sequence(&tx).await?)
        };
        let mut ids = Vec::new();
        for event in events {
            let severity = event.severity.map(Severity::level);
            let warning_kind = event.warning_kind.name();
            let warning_id: Option<i64> = match event.kind {
                EventKind::Raised => tx
                    .query_opt(
                        "INSERT INTO warnings (area_key, severity, kind, state, raised_at, changed_at, \
                         municipalities, trigger, message_en, message_da) \
                         VALUES ($1, $2, $3, 'in_force', $4, $4, $5, $6, $7, $8) RETURNING id",
                        &[
                            &area_key,
                            &severity,
                            &warning_kind,
                            &event.at,
                            &municipalities,
                            &event.trigger,
                            &event.message_en,
                            &event.message_da,
                        ],
                    )
                    .await
                    .context("raising a warning")?,
                EventKind::Changed => tx
                    .query_opt(
                        "UPDATE warnings SET severity = $2, kind = $3, changed_at = $4, trigger = $5, \
                         message_en = $6, message_da = $7 WHERE area_key = $1 AND state = 'in_force' RETURNING id",
                        &[
                            &area_key,
                            &severity,
                            &warning_kind,
                            &event.at,
                            &event.trigger,
                            &event.message_en,
                            &event.message_da,
                        ],
                    )
                    .await
                    .context("changing a warning")?,
                EventKind::Lifted => tx
                    .query_opt(
                        "UPDATE warnings SET state = 'lifted', lifted_at = $2, changed_at = $2, stale = false, \
                         message_en = $3, message_da = $4 WHERE area_key = $1 AND state = 'in_force' RETURNING id",
                        &[&area_key, &event.at, &event.message_en, &event.message_da],
                    )
                    .await
                    .context("lifting a warning")?,
                EventKind::Stale | EventKind::Fresh => tx
                    .query_opt(
                        "UPDATE warnings SET stale = $2 WHERE area_key = $1 AND state = 'in_force' RETURNING id",
                        &[&area_key, &(event.kind == EventKind::Stale)],
                    )
                    .await
                    .context("marking a warning stale or fresh")?,
                other => {
                    return Err(Error::Inconsistent(format!(
                        "analytics do not record {other} events"
                    )))
                }
            }
            .map(|r| r.get(0));
            let warning_id = warning_id.ok_or_else(|| {
                Error::Inconsistent(format!(
                    "area {area_key}: a {} event needs a warning in force",
                    event.kind
                ))
            })?;
            let sequence = sequence
                .as_ref()
                .expect("the event sequence is locked when there are events");
            let event_id = append_event(
                sequence,
                &EventInsert {
                    warning_id,
                    category: Category::Flood,
                    area_key: Some(area_key),
                    sensor_key: None,
                    kind: event.kind,
                    severity: event.severity,
                    warning_kind: event.severity.map(|_| event.warning_kind),
                    at: event.at,
                    message_en: &event.message_en,
                    message_da: &event.message_da,
                    detail: &event.trigger,
                },
                mqtt_topics,
            )
            .await?;
            ids.push(event_id);
        }
        for c in crossings {
            tx.execute(
                "INSERT INTO threshold_crossings (sensor_key, severity, direction, at, value) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &c.sensor_key,
                    &c.severity,
                    &if c.up { "up" } else { "down" },
                    &c.at,
                    &c.value,
                ],
            )
            .await
            .context("recording a crossing")?;
        }
        tx.commit().await.context("commit warning events")?;
        Ok(ids)
    }

    /// Warnings, newest first; all areas or one.
    pub async fn warnings(&self, area_key: Option<&str>) -> Result<Vec<WarningRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, area_key, severity, kind, state, raised_at, changed_at, lifted_at, stale, \
                 municipalities, message_en, message_da FROM warnings \
                 WHERE category = 'flood' AND ($1::text IS NULL OR area_key = $1) ORDER BY raised_at DESC, id DESC",
                &[&area_key],
            )
            .await
            .context("reading warnings")?;
        Ok(rows
            .iter()
            .map(|r| WarningRow {
                id: r.get(0),
                area_key: r.get(1),
                severity: r.get(2),
                kind: r.get(3),
                state: r.get(4),
                raised_at: r.get(5),
                changed_at: r.get(6),
                lifted_at: r.get(7),
                stale: r.get(8),
                municipalities: r.get(9),
                message_en: r.get(10),
                message_da: r.get(11),
            })
            .collect())
    }

    /// An area's events in order.
    pub async fn warning_events(&self, area_key: &str) -> Result<Vec<EventRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM warning_events WHERE area_key = $1 ORDER BY at, id"),
                &[&area_key],
            )
            .await
            .context("reading warning events")?;
        Ok(rows.iter().map(event_row).collect())
    }

    /// Up-crossings `(sensor, severity, at)` between two instants, for verification.
    pub async fn up_crossings(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, i16, DateTime<Utc>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, severity, at FROM threshold_crossings \
                 WHERE direction = 'up' AND at >= $1 AND at < $2 ORDER BY at",
                &[&from, &to],
            )
            .await
            .context("reading crossings")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Every area's events between two instants, in order.
    pub async fn events_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<EventRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM warning_events WHERE category = 'flood' \
                     AND at >= $1 AND at < $2 ORDER BY area_key, at, id"
                ),
                &[&from, &to],
            )
            .await
            .context("reading warning events")?;
        Ok(rows.iter().map(event_row).collect())
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

    /// Outbox rows `(channel, target)` queued for an event.
    pub async fn outbox_for(&self, event_id: i64) -> Result<Vec<(String, String)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT channel, target FROM outbox WHERE event_id = $1 ORDER BY id",
                &[&event_id],
            )
            .await
            .context("reading the outbox")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// A data-quality rule for a sensor outside the flood setup.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRuleRow {
    pub sensor_key: String,
    pub plausible_low: f64,
    pub plausible_high: f64,
    pub spike_floor: f64,
    pub stuck_run: i32,
}

impl Store {
    /// Creates or replaces a sensor's quality rule, with an audit entry, announced on
    /// [`Channel::FloodSetupChanged`] (the channel analytics reload their setup on).
    pub async fn put_quality_rule(
        &self,
        rule: &QualityRuleRow,
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin quality rule")?;
        tx.execute(
            "INSERT INTO quality_rules (sensor_key, plausible_low, plausible_high, spike_floor, stuck_run) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sensor_key) DO UPDATE SET \
             plausible_low = EXCLUDED.plausible_low, plausible_high = EXCLUDED.plausible_high, \
             spike_floor = EXCLUDED.spike_floor, stuck_run = EXCLUDED.stuck_run, updated_at = now()",
            &[
                &rule.sensor_key,
                &rule.plausible_low,
                &rule.plausible_high,
                &rule.spike_floor,
                &rule.stuck_run,
            ],
        )
        .await
        .context("storing a quality rule")?;
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await
    }

    /// Every quality rule, by sensor key.
    pub async fn quality_rules(&self) -> Result<Vec<QualityRuleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, plausible_low, plausible_high, spike_floor, stuck_run \
                 FROM quality_rules ORDER BY sensor_key",
                &[],
            )
            .await
            .context("reading quality rules")?;
        Ok(rows
            .iter()
            .map(|r| QualityRuleRow {
                sensor_key: r.get(0),
                plausible_low: r.get(1),
                plausible_high: r.get(2),
                spike_floor: r.get(3),
                stuck_run: r.get(4),
            })
            .collect())
    }

    /// Records each sensor's latest evaluated state, unless one of a newer reading is there (a
    /// sensor in two areas is evaluated with each).
    pub async fn record_trends(&self, trends: &[TrendRow]) -> Result<()> {
        if trends.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let statement = client
            .prepare(
                "INSERT INTO level_trends AS t (sensor_key, at, value, severity, rate_per_hour, \
                     projected_severity, projected_at, evaluated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                 ON CONFLICT (sensor_key) DO UPDATE SET at = EXCLUDED.at, value = EXCLUDED.value, \
                     severity = EXCLUDED.severity, rate_per_hour = EXCLUDED.rate_per_hour, \
                     projected_severity = EXCLUDED.projected_severity, \
                     projected_at = EXCLUDED.projected_at, evaluated_at = now() \
                 WHERE t.at <= EXCLUDED.at",
            )
            .await
            .context("preparing the trend upsert")?;
        for t in trends {
            client
                .execute(
                    &statement,
                    &[
                        &t.sensor_key,
                        &t.at,
                        &t.value,
                        &t.severity,
                        &t.rate_per_hour,
                        &t.projected.map(|p| p.0),
                        &t.projected.map(|p| p.1),
                    ],
                )
                .await
                .context("recording a sensor's trend")?;
        }
        Ok(())
    }

    /// The evaluated state of the given level sensors (all of them with `None`).
    pub async fn trends(&self, sensors: Option<&[String]>) -> Result<Vec<TrendRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, at, value, severity, rate_per_hour, projected_severity, \
                     projected_at FROM level_trends \
                 WHERE $1::text[] IS NULL OR sensor_key = ANY($1) ORDER BY sensor_key",
                &[&sensors],
            )
            .await
            .context("reading sensor trends")?;
        Ok(rows
            .iter()
            .map(|r| TrendRow {
                sensor_key: r.get(0),
                at: r.get(1),
                value: r.get(2),
                severity: r.get(3),
                rate_per_hour: r.get(4),
                projected: r
                    .get::<_, Option<i16>>(5)
                    .zip(r.get::<_, Option<DateTime<Utc>>>(6)),
            })
            .collect())
    }
}
