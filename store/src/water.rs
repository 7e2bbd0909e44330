//! Water networks: leak rules for district meters, the minimum night flow analytics find each
//! night, and the leaks they suspect.

use crate::coordination::{self, EventSequence, Notice};
use crate::events::{append_event, EventInsert};
use crate::terms::term;
use crate::{Context, Result, Store};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use tidemark_model::warning::{Category, EventKind, Severity, WarningKind, WarningState};
use tokio_postgres::Transaction;

/// A district meter's leak rule.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakRuleRow {
    pub sensor_key: String,
    /// The night window, Danish local time.
    pub night_start: NaiveTime,
    pub night_end: NaiveTime,
    pub baseline_nights: i32,
    /// A share of the baseline (0.2: 20 % above it).
    pub margin: f64,
    pub nights: i32,
}

/// One night's minimum flow.
#[derive(Debug, Clone, PartialEq)]
pub struct NightFlowRow {
    pub night: NaiveDate,
    pub min_value: f64,
    pub at: DateTime<Utc>,
    pub samples: i32,
}

/// A suspected leak.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakRow {
    pub sensor_key: String,
    pub since: NaiveDate,
    pub raised_on: NaiveDate,
    pub baseline: f64,
    pub night_flow: f64,
    pub found_at: DateTime<Utc>,
    /// The first night back within the margin; None while the leak is suspected.
    pub ended_on: Option<NaiveDate>,
    /// The utility alert raised for it.
    pub warning_id: Option<i64>,
}

/// What a meter's night flow shows about its suspected leaks, recorded with the nights and
/// announced as a utility alert in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum LeakChange {
    /// A new suspicion: raises a leak alert.
    Raised { leak: LeakRow, alert: AlertText },
    /// The open suspicion that began on `since` ended on `night`: lifts its alert.
    Ended {
        since: NaiveDate,
        night: NaiveDate,
        night_flow: f64,
        alert: AlertText,
    },
}

/// When in the data an alert event happened, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertText {
    pub at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
}

/// A meter's suspicions as analytics need them: the one still open, and when the last one ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeakState {
    pub open: Option<LeakRow>,
    pub last_ended: Option<NaiveDate>,
}

impl LeakState {
    /// The state once `change` is recorded.
    pub fn apply(&mut self, change: &LeakChange) {
        match change {
            LeakChange::Raised { leak, .. } => self.open = Some(leak.clone()),
            LeakChange::Ended { night, .. } => {
                self.open = None;
                self.last_ended = self.last_ended.max(Some(*night));
            }
        }
    }
}

/// The district meter an alert names: its station's name (or the sensor's) and its quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterLabel {
    pub name: String,
    pub quantity: String,
}

const LEAK_COLUMNS: &str =
    "sensor_key, since, raised_on, baseline, night_flow, found_at, ended_on, warning_id";

fn leak_row(r: &tokio_postgres::Row) -> LeakRow {
    LeakRow {
        sensor_key: r.get(0),
        since: r.get(1),
        raised_on: r.get(2),
        baseline: r.get(3),
        night_flow: r.get(4),
        found_at: r.get(5),
        ended_on: r.get(6),
        warning_id: r.get(7),
    }
}

impl Store {
    /// Creates or replaces a leak rule, with an audit entry, announced on
    /// [`Channel::FloodSetupChanged`] (the channel analytics reload their setup on).
    pub async fn put_leak_rule(
        &self,
        rule: &LeakRuleRow,
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin leak rule")?;
        tx.execute(
            "INSERT INTO leak_rules (sensor_key, night_start, night_end, baseline_nights, margin, nights) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sensor_key) DO UPDATE SET \
             night_start = EXCLUDED.night_start, night_end = EXCLUDED.night_end, \
             baseline_nights = EXCLUDED.baseline_nights, margin = EXCLUDED.margin, \
             nights = EXCLUDED.nights, updated_at = now()",
            &[
                &rule.sensor_key,
                &rule.night_start,
                &rule.night_end,
                &rule.baseline_nights,
                &rule.margin,
                &rule.nights,
            ],
        )
        .await
        .context("storing a leak rule")?;
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await
    }

    pub async fn leak_rules(&self) -> Result<Vec<LeakRuleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, night_start, night_end, baseline_nights, margin, nights \
                 FROM leak_rules ORDER BY sensor_key",
                &[],
            )
            .await
            .context("reading leak rules")?;
        Ok(rows
            .iter()
            .map(|r| LeakRuleRow {
                sensor_key: r.get(0),
                night_start: r.get(1),
                night_end: r.get(2),
                baseline_nights: r.get(3),
                margin: r.get(4),
                nights: r.get(5),
            })
            .collect())
    }

    /// Replaces a meter's night minima from `from_night` on and records what they show about its
    /// leaks (`changes`, in order), in one transaction: a new suspicion raises a leak alert (with
    /// an MQTT delivery to `mqtt_topic(municipality)` for each municipality of the meter's
    /// station, and the matching webhooks), and the end of the open one lifts its alert. A
    /// suspicion already recorded is not raised again.
    pub async fn store_night_flow(
        &self,
        sensor: &str,
        from_night: NaiveDate,
        minima: &[NightFlowRow],
        changes: &[LeakChange],
        mqtt_topic: impl Fn(&str) -> String,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin night flow")?;
        tx.execute(
            "DELETE FROM night_flow WHERE sensor_key = $1 AND night >= $2",
            &[&sensor, &from_night],
        )
        .await
        .context("clearing night flow")?;
        for m in minima.iter().filter(|m| m.night >= from_night) {
            tx.execute(
                "INSERT INTO night_flow (sensor_key, night, min_value, at, samples) VALUES ($1, $2, $3, $4, $5)",
                &[&sensor, &m.night, &m.min_value, &m.at, &m.samples],
            )
            .await
            .context("storing a night's flow")?;
        }
        for change in changes {
            match change {
                LeakChange::Raised { leak, alert } => {
                    raise_leak_alert(&tx, sensor, leak, alert, &mqtt_topic).await?
                }
                LeakChange::Ended {
                    since,
                    night,
                    night_flow,
                    alert,
                } => {
                    lift_leak_alert(&tx, sensor, *since, *night, *night_flow, alert, &mqtt_topic)
                        .await?
                }
            }
        }
        tx.commit().await.context("commit night flow")
    }

    /// A meter's open suspicion and the night its last one ended.
    pub async fn leak_state(&self, sensor: &str) -> Result<LeakState> {
        let client = self.client().await?;
        let open = client
            .query_opt(
                &format!(
                    "SELECT {LEAK_COLUMNS} FROM leak_suspicions WHERE sensor_key = $1 AND ended_on IS NULL"
                ),
                &[&sensor],
            )
            .await
            .context("reading the open leak")?;
        let last_ended: Option<NaiveDate> = client
            .query_one(
                "SELECT max(ended_on) FROM leak_suspicions WHERE sensor_key = $1",
                &[&sensor],
            )
            .await
            .context("reading the last leak's end")?
            .get(0);
        Ok(LeakState {
            open: open.as_ref().map(leak_row),
            last_ended,
        })
    }

    /// The name and quantity of a district meter, None if there is no such sensor.
    pub async fn meter_label(&self, sensor: &str) -> Result<Option<MeterLabel>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT COALESCE(st.name, NULLIF(s.name, ''), s.key), s.quantity FROM sensors s \
                 LEFT JOIN stations st ON st.id = s.station_id WHERE s.key = $1",
                &[&sensor],
            )
            .await
            .context("reading a meter")?;
        Ok(row.map(|r| MeterLabel {
            name: r.get(0),
            quantity: r.get(1),
        }))
    }

    /// A meter's night minima in `[from, to]`, oldest first.
    pub async fn night_flow(
        &self,
        sensor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<NightFlowRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT night, min_value, at, samples FROM night_flow \
                 WHERE sensor_key = $1 AND night >= $2 AND night <= $3 ORDER BY night",
                &[&sensor, &from, &to],
            )
            .await
            .context("reading night flow")?;
        Ok(rows
            .iter()
            .map(|r| NightFlowRow {
                night: r.get(0),
                min_value: r.get(1),
                at: r.get(2),
                samples: r.get(3),
            })
            .collect())
    }

    /// The trend of a meter's night minima in `[from, to]`: the least-squares slope in the flow's
    /// unit per night, None with fewer than two nights.
    pub async fn night_flow_trend(
        &self,
        sensor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<f64>> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT regr_slope(min_value, (night - $2)::double precision) FROM night_flow \
                 WHERE sensor_key = $1 AND night >= $2 AND night <= $3",
                &[&sensor, &from, &to],
            )
            .await
            .context("reading the night flow trend")?;
        Ok(row.get(0))
    }

    /// Suspected leaks, newest first, of one meter or all.
    pub async fn leaks(&self, sensor: Option<&str>) -> Result<Vec<LeakRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {LEAK_COLUMNS} FROM leak_suspicions \
                     WHERE ($1::text IS NULL OR sensor_key = $1) ORDER BY since DESC, sensor_key"
                ),
                &[&sensor],
            )
            .await
            .context("reading suspected leaks")?;
        Ok(rows.iter().map(leak_row).collect())
    }
}

/// Takes the meter's lock and the event sequence lock, and returns the municipalities of the
/// meter's station.
async fn lock_meter<'a>(
    tx: &'a Transaction<'a>,
    sensor: &str,
) -> Result<(EventSequence<'a>, Vec<String>)> {
    coordination::lock_meter(tx, sensor).await?;
    let sequence = coordination::lock_event_sequence(tx).await?;
    let row = tx
        .query_one(
            "SELECT ARRAY(SELECT st.municipality_code FROM sensors s JOIN stations st ON st.id = s.station_id \
             WHERE s.key = $1 AND st.municipality_code IS NOT NULL)",
            &[&sensor],
        )
        .await
        .context("reading the meter's municipality")?;
    Ok((sequence, row.get(0)))
}

/// Records a new suspicion and raises its leak alert; nothing if it was recorded before.
async fn raise_leak_alert(
    tx: &Transaction<'_>,
    sensor: &str,
    leak: &LeakRow,
    alert: &AlertText,
    mqtt_topic: &impl Fn(&str) -> String,
) -> Result<()> {
    let (sequence, municipalities) = lock_meter(tx, sensor).await?;
    let recorded = tx
        .execute(
            "INSERT INTO leak_suspicions (sensor_key, since, raised_on, baseline, night_flow) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &sensor,
                &leak.since,
                &leak.raised_on,
                &leak.baseline,
                &leak.night_flow,
            ],
        )
        .await
        .context("recording a suspected leak")?;
    if recorded == 0 {
        return Ok(());
    }
    let detail = serde_json::json!({
        "sensor": sensor,
        "since": leak.since,
        "raised_on": leak.raised_on,
        "baseline": leak.baseline,
        "night_flow": leak.night_flow,
    });
    let warning_id: i64 = tx
        .query_one(
            "INSERT INTO warnings (category, sensor_key, severity, kind, state, raised_at, changed_at, \
             municipalities, trigger, message_en, message_da) \
             VALUES ('leak', $1, 1, 'observed', 'in_force', $2, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &sensor,
                &alert.at,
                &municipalities,
                &detail,
                &alert.message_en,
                &alert.message_da,
            ],
        )
        .await
        .context("raising a leak alert")?
        .get(0);
    tx.execute(
        "UPDATE leak_suspicions SET warning_id = $3 WHERE sensor_key = $1 AND since = $2",
        &[&sensor, &leak.since, &warning_id],
    )
    .await
    .context("linking the leak to its alert")?;
    let topics: Vec<String> = municipalities.iter().map(|m| mqtt_topic(m)).collect();
    append_leak_event(
        &sequence,
        warning_id,
        sensor,
        EventKind::Raised,
        alert,
        &detail,
        &topics,
    )
    .await
}

/// Appends a leak alert's event, with its deliveries. A raise sets the alert's severity (always 1:
/// a leak has one level) and kind (observed); later events carry them forward.
async fn append_leak_event(
    sequence: &EventSequence<'_>,
    warning_id: i64,
    sensor: &str,
    kind: EventKind,
    alert: &AlertText,
    detail: &serde_json::Value,
    topics: &[String],
) -> Result<()> {
    let raised = kind == EventKind::Raised;
    append_event(
        sequence,
        &EventInsert {
            warning_id,
            category: Category::Leak,
            area_key: None,
            sensor_key: Some(sensor),
            kind,
            severity: raised.then_some(Severity::Alert),
            warning_kind: raised.then_some(WarningKind::Observed),
            at: alert.at,
            message_en: &alert.message_en,
            message_da: &alert.message_da,
            detail,
        },
        topics,
    )
    .await?;
    Ok(())
}

/// Ends the open suspicion that began on `since` and lifts its alert.
async fn lift_leak_alert(
    tx: &Transaction<'_>,
    sensor: &str,
    since: NaiveDate,
    night: NaiveDate,
    night_flow: f64,
    alert: &AlertText,
    mqtt_topic: &impl Fn(&str) -> String,
) -> Result<()> {
    let (sequence, _) = lock_meter(tx, sensor).await?;
    let Some(row) = tx
        .query_opt(
            "UPDATE leak_suspicions SET ended_on = $3 WHERE sensor_key = $1 AND since = $2 \
             AND ended_on IS NULL RETURNING warning_id",
            &[&sensor, &since, &night],
        )
        .await
        .context("ending a suspected leak")?
    else {
        return Ok(());
    };
    let Some(warning_id) = row.get::<_, Option<i64>>(0) else {
        return Ok(());
    };
    let Some(lifted) = tx
        .query_opt(
            "UPDATE warnings SET state = 'lifted', lifted_at = $2, changed_at = $2, message_en = $3, \
             message_da = $4 WHERE id = $1 AND state = 'in_force' RETURNING municipalities",
            &[&warning_id, &alert.at, &alert.message_en, &alert.message_da],
        )
        .await
        .context("lifting a leak alert")?
    else {
        return Ok(());
    };
    let municipalities: Vec<String> = lifted.get(0);
    let topics: Vec<String> = municipalities.iter().map(|m| mqtt_topic(m)).collect();
    let detail = serde_json::json!({ "sensor": sensor, "since": since, "ended_on": night, "night_flow": night_flow });
    append_leak_event(
        &sequence,
        warning_id,
        sensor,
        EventKind::Lifted,
        alert,
        &detail,
        &topics,
    )
    .await
}

/// A utility alert (a suspected leak) with what a list shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakAlertRow {
    pub id: i64,
    pub sensor_key: String,
    pub meter_name: String,
    pub state: WarningState,
    pub raised_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub municipalities: Vec<String>,
    pub message_en: String,
    pub message_da: String,
    /// The suspicion behind it.
    pub trigger: serde_json::Value,
}

/// Which leak alerts to list.
#[derive(Debug, Clone, Default)]
pub struct LeakAlertFilter {
    /// In force or lifted; all when None.
    pub state: Option<WarningState>,
    pub municipality: Option<String>,
    pub sensor: Option<String>,
    pub id: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// Leak alerts, newest first. Flood warnings are never among them.
    pub async fn leak_alerts(&self, filter: &LeakAlertFilter) -> Result<Vec<LeakAlertRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.id, w.sensor_key, COALESCE(st.name, NULLIF(s.name, ''), s.key), w.state, \
                 w.raised_at, w.changed_at, w.lifted_at, w.municipalities, w.message_en, w.message_da, w.trigger \
                 FROM warnings w JOIN sensors s ON s.key = w.sensor_key LEFT JOIN stations st ON st.id = s.station_id \
                 WHERE w.category = 'leak' AND ($1::text IS NULL OR w.state = $1) \
                 AND ($2::text IS NULL OR $2 = ANY (w.municipalities)) \
                 AND ($3::text IS NULL OR w.sensor_key = $3) AND ($4::bigint IS NULL OR w.id = $4) \
                 ORDER BY w.raised_at DESC, w.id DESC LIMIT $5",
                &[
                    &filter.state.map(WarningState::name),
                    &filter.municipality,
                    &filter.sensor,
                    &filter.id,
                    &filter.limit,
                ],
            )
            .await
            .context("listing leak alerts")?;
        rows.iter()
            .map(|r| {
                Ok(LeakAlertRow {
                    id: r.get(0),
                    sensor_key: r.get(1),
                    meter_name: r.get(2),
                    state: term(r, 3, WarningState::parse)?,
                    raised_at: r.get(4),
                    changed_at: r.get(5),
                    lifted_at: r.get(6),
                    municipalities: r.get(7),
                    message_en: r.get(8),
                    message_da: r.get(9),
                    trigger: r.get(10),
                })
            })
            .collect()
    }
}
