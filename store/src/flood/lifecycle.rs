//! The warning lifecycle: an area's recorded state, recording an evaluation's events under the area's
//! lock (with their warnings, outbox rows and threshold crossings), and reading them back.

use super::*;

impl Store {
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
