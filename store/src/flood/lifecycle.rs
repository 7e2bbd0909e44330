//! The warning lifecycle: an area's recorded state, recording an evaluation's events under the area's
//! lock (with their warnings, outbox rows and threshold crossings), and reading them back.

use super::*;
use tokio_postgres::{GenericClient, Transaction};

impl Store {
    /// The area's recorded status: when its last event happened and its warning in force. A
    /// decision to record events from it belongs under the area's lock: [`Store::decide_area`].
    pub async fn area_status(&self, area_key: &str) -> Result<AreaStatus> {
        let client = self.client().await?;
        read_status(&**client, area_key).await
    }

    /// Records an area's events in order (each with an MQTT delivery to every one of `mqtt_topics`
    /// and the matching webhooks), the warning rows they change, and the crossings behind them, in
    /// one transaction, under the area's advisory lock, whatever the area's status.
    pub async fn record_area_events(
        &self,
        area_key: &str,
        municipalities: &[String],
        events: &[NewEvent],
        mqtt_topics: &[String],
        crossings: &[CrossingRow],
    ) -> Result<Vec<i64>> {
        let decision = AreaDecision {
            events: events.to_vec(),
            crossings: crossings.to_vec(),
        };
        let (ids, _) = self
            .decide_area(area_key, municipalities, mqtt_topics, |_| decision)
            .await?;
        Ok(ids)
    }

    /// Takes the area's advisory lock, reads the area's status under it, and records what
    /// `decide` makes of that status (as [`Store::record_area_events`] does), in one
    /// transaction. A second writer of the same area (another analytics process) waits for the
    /// lock and then decides from what this one recorded, so no change is ever recorded twice.
    ///
    /// `decide` is synchronous: nothing waits for the pool, the network or another lock while
    /// the area's lock and its connection are held.
    pub async fn decide_area(
        &self,
        area_key: &str,
        municipalities: &[String],
        mqtt_topics: &[String],
        decide: impl FnOnce(&AreaStatus) -> AreaDecision,
    ) -> Result<(Vec<i64>, AreaDecision)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin warning events")?;
        coordination::lock_area(&tx, area_key).await?;
        let status = read_status(&*tx, area_key).await?;
        let decision = decide(&status);
        let ids = write_decision(&tx, area_key, municipalities, mqtt_topics, &decision).await?;
        tx.commit().await.context("commit warning events")?;
        Ok((ids, decision))
    }
}

/// The area's status as `client` (a connection, or a transaction holding the area's lock) sees
/// it.
async fn read_status(client: &impl GenericClient, area_key: &str) -> Result<AreaStatus> {
    let last_at: Option<DateTime<Utc>> = client
        .query_one(
            "SELECT max(at) FROM warning_events WHERE area_key = $1",
            &[&area_key],
        )
        .await
        .context("reading the area's last event")?
        .get(0);
    let current = client
        .query_opt(
            &format!(
                "{WARNING_SELECT} WHERE w.area_key = $1 AND w.state = 'in_force' \
                 ORDER BY w.raised_at DESC, w.id DESC LIMIT 1"
            ),
            &[&area_key],
        )
        .await
        .context("reading the area's warning in force")?
        .as_ref()
        .map(warning_row)
        .transpose()?;
    Ok(AreaStatus { last_at, current })
}

/// Writes a decision's events, the warnings they change and its crossings, in `tx`, which holds
/// the area's lock.
async fn write_decision(
    tx: &Transaction<'_>,
    area_key: &str,
    municipalities: &[String],
    mqtt_topics: &[String],
    decision: &AreaDecision,
) -> Result<Vec<i64>> {
    let (events, crossings) = (&decision.events, &decision.crossings);
    let sequence = if events.is_empty() {
        None
    } else {
        Some(coordination::lock_event_sequence(tx).await?)
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
                &c.severity.level(),
                &if c.up { "up" } else { "down" },
                &c.at,
                &c.value,
            ],
        )
        .await
        .context("recording a crossing")?;
    }
    Ok(ids)
}

impl Store {
    /// Warnings, newest first; all areas or one.
    pub async fn warnings(&self, area_key: Option<&str>) -> Result<Vec<WarningRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "{WARNING_SELECT} WHERE ($1::text IS NULL OR w.area_key = $1) \
                     ORDER BY w.raised_at DESC, w.id DESC"
                ),
                &[&area_key],
            )
            .await
            .context("reading warnings")?;
        rows.iter().map(warning_row).collect()
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
        rows.iter().map(event_row).collect()
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
