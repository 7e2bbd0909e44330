//! Warning events: appending one (with its outbox rows and its notification) under the event
//! sequence lock, reading them as every channel presents them, the warning list, and
//! acknowledgements.
//!
//! **Invariant:** warning event ids grow in commit order. Appending an event needs the
//! [`EventSequence`] guard, which only taking the transaction-scoped advisory lock returns, so a
//! reader that has seen event N and later asks for events after N misses nothing; this is what
//! lets a Server-Sent Events client resume from `Last-Event-ID`.

use crate::coordination::{self, EventSequence, Notice};
use crate::pipeline;
use crate::terms::{severity, term};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use tidemark_model::warning::{
    AreaRef, Category, EventBody, EventKind, Messages, Severity, WarningKind, WarningState,
};
use tokio_postgres::types::{ToSql, Type};

/// Queues the events for every webhook whose filter matches it. A webhook matches when it is
/// active, it receives the warning's category, its municipality and area filters (empty = all;
/// areas filter the warnings of areas only) meet the warning's, a municipality
/// owner is among the warning's municipalities, and either the warning's severity at this event
/// reaches its minimum or an earlier event of the same warning was already queued for it (so a
/// receiver that heard of a warning also hears how it changed and ended).
/// `$1` holds the event ids (`bigint[]`), at most one event of each warning: whether a webhook
/// hears of an event depends on the deliveries queued for the warning's earlier events.
const QUEUE_WEBHOOKS: &str = "INSERT INTO outbox (event_id, channel, target) \
     SELECT e.id, 'webhook', wh.id::text \
     FROM warning_events e JOIN warnings w ON w.id = e.warning_id \
     CROSS JOIN LATERAL (SELECT p.severity FROM warning_events p WHERE p.warning_id = e.warning_id \
         AND p.id <= e.id AND p.severity IS NOT NULL ORDER BY p.id DESC LIMIT 1) sev \
     JOIN webhooks wh ON wh.deleted_at IS NULL AND wh.disabled_at IS NULL \
     WHERE e.id = ANY ($1) AND w.category = ANY (wh.categories) \
       AND (cardinality(wh.municipalities) = 0 OR wh.municipalities && w.municipalities) \
       AND (cardinality(wh.areas) = 0 OR w.area_key IS NULL OR e.area_key = ANY (wh.areas)) \
       AND (wh.owner_municipality IS NULL OR wh.owner_municipality = ANY (w.municipalities)) \
       AND (sev.severity >= wh.min_severity OR EXISTS ( \
           SELECT 1 FROM outbox o JOIN warning_events q ON q.id = o.event_id \
           WHERE q.warning_id = e.warning_id AND o.channel = 'webhook' AND o.target = wh.id::text)) \
     ORDER BY e.id, wh.id";

/// A warning event to append, with what it concerns: a flood area, or a district meter for a leak.
pub(crate) struct EventInsert<'a> {
    pub warning_id: i64,
    pub category: Category,
    pub area_key: Option<&'a str>,
    pub sensor_key: Option<&'a str>,
    pub kind: EventKind,
    /// Set on events that change the warning's severity, with `warning_kind`.
    pub severity: Option<Severity>,
    pub warning_kind: Option<WarningKind>,
    pub at: DateTime<Utc>,
    pub message_en: &'a str,
    pub message_da: &'a str,
    pub detail: &'a serde_json::Value,
}

/// Appends an event in the transaction that holds the event sequence lock, with an MQTT delivery
/// to each of `mqtt_topics` and the matching webhooks, and announces it on `warnings_changed`
/// when the transaction commits.
pub(crate) async fn append_event(
    sequence: &EventSequence<'_>,
    event: &EventInsert<'_>,
    mqtt_topics: &[String],
) -> Result<i64> {
    let ids = append_events(sequence, &[(event, mqtt_topics)], &[]).await?;
    Ok(ids[0])
}

/// Appends events in order, as [`append_event`] does each, in a few statements whatever their
/// number: one evaluation of many areas records all its events in one transaction. The statements
/// `then` (a `COMMIT`, say) follow the last of them in its round trip. Returns their ids, in the
/// order given.
pub(crate) async fn append_events(
    sequence: &EventSequence<'_>,
    events: &[(&EventInsert<'_>, &[String])],
    then: &[(&str, &pipeline::Params<'_>)],
) -> Result<Vec<i64>> {
    if events.is_empty() && !then.is_empty() {
        pipeline::in_one_flight(sequence.tx(), then)
            .await
            .context("ending the recording of warning events")?;
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut start = 0;
    while start < events.len() {
        // A warning's second event starts the next part: its webhook deliveries depend on those
        // queued for the first.
        let mut warnings = std::collections::HashSet::new();
        let end = events[start..]
            .iter()
            .position(|(e, _)| !warnings.insert(e.warning_id))
            .map_or(events.len(), |n| start + n);
        let last = end == events.len();
        ids.extend(
            append_part(sequence, &events[start..end], if last { then } else { &[] }).await?,
        );
        start = end;
    }
    Ok(ids)
}

/// Appends events of distinct warnings, `then` behind them.
async fn append_part(
    sequence: &EventSequence<'_>,
    events: &[(&EventInsert<'_>, &[String])],
    then: &[(&str, &pipeline::Params<'_>)],
) -> Result<Vec<i64>> {
    let tx = sequence.tx();
    let warning_ids: Vec<i64> = events.iter().map(|(e, _)| e.warning_id).collect();
    let categories: Vec<&str> = events.iter().map(|(e, _)| e.category.name()).collect();
    let area_keys: Vec<Option<&str>> = events.iter().map(|(e, _)| e.area_key).collect();
    let sensor_keys: Vec<Option<&str>> = events.iter().map(|(e, _)| e.sensor_key).collect();
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.kind.name()).collect();
    let severities: Vec<Option<i16>> = events
        .iter()
        .map(|(e, _)| e.severity.map(Severity::level))
        .collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|(e, _)| e.at).collect();
    let messages_en: Vec<&str> = events.iter().map(|(e, _)| e.message_en).collect();
    let messages_da: Vec<&str> = events.iter().map(|(e, _)| e.message_da).collect();
    let details: Vec<&serde_json::Value> = events.iter().map(|(e, _)| e.detail).collect();
    let warning_kinds: Vec<Option<&str>> = events
        .iter()
        .map(|(e, _)| e.warning_kind.map(WarningKind::name))
        .collect();
    // Ids are drawn in the order the rows are inserted, which is the order given.
    let mut ids: Vec<i64> = tx
        .query_typed(
            "INSERT INTO warning_events (warning_id, category, area_key, sensor_key, kind, severity, at, \
             message_en, message_da, detail, warning_kind) \
             SELECT w, c, a, s, k, v, t, en, da, d, wk FROM unnest($1::bigint[], $2::text[], $3::text[], \
                 $4::text[], $5::text[], $6::int2[], $7::timestamptz[], $8::text[], $9::text[], \
                 $10::jsonb[], $11::text[]) WITH ORDINALITY AS x(w, c, a, s, k, v, t, en, da, d, wk, n) \
             ORDER BY n RETURNING id",
            &[
                (&warning_ids, Type::INT8_ARRAY),
                (&categories, Type::TEXT_ARRAY),
                (&area_keys, Type::TEXT_ARRAY),
                (&sensor_keys, Type::TEXT_ARRAY),
                (&kinds, Type::TEXT_ARRAY),
                (&severities, Type::INT2_ARRAY),
                (&ats, Type::TIMESTAMPTZ_ARRAY),
                (&messages_en, Type::TEXT_ARRAY),
                (&messages_da, Type::TEXT_ARRAY),
                (&details, Type::JSONB_ARRAY),
                (&warning_kinds, Type::TEXT_ARRAY),
            ],
        )
        .await
        .context("recording warning events")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort_unstable();
    let (outbox_events, outbox_topics): (Vec<i64>, Vec<&str>) = events
        .iter()
        .zip(&ids)
        .flat_map(|((_, topics), id)| topics.iter().map(move |t| (*id, t.as_str())))
        .unzip();
    let notices: Vec<Notice> = ids
        .iter()
        .map(|&event_id| Notice::WarningsChanged { event_id })
        .collect();
    let (channels, payloads) = coordination::notify_params(&notices);
    // The deliveries and the announcements in one round trip.
    let mqtt: [(&(dyn ToSql + Sync), Type); 2] = [
        (&outbox_events, Type::INT8_ARRAY),
        (&outbox_topics, Type::TEXT_ARRAY),
    ];
    let webhooks: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::INT8_ARRAY)];
    let notify: [(&(dyn ToSql + Sync), Type); 2] =
        [(&channels, Type::TEXT_ARRAY), (&payloads, Type::TEXT_ARRAY)];
    let mut statements: Vec<(&str, &pipeline::Params<'_>)> = Vec::with_capacity(3 + then.len());
    if !outbox_events.is_empty() {
        statements.push((
            "INSERT INTO outbox (event_id, channel, target) \
             SELECT e, 'mqtt', t FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS x(e, t, n) ORDER BY n",
            &mqtt,
        ));
    }
    statements.push((QUEUE_WEBHOOKS, &webhooks));
    statements.push((coordination::NOTIFY_ALL, &notify));
    statements.extend_from_slice(then);
    pipeline::in_one_flight(tx, &statements)
        .await
        .context("queueing deliveries and announcing the events")?;
    Ok(ids)
}

/// Appends an `undelivered` event after `event_id` (a delivery over `channel` was given up), in the
/// transaction that holds the event sequence lock, and announces it when the transaction commits.
/// It goes to no channel itself.
pub(crate) async fn append_undelivered(
    sequence: &EventSequence<'_>,
    event_id: i64,
    at: DateTime<Utc>,
    channel: &str,
    detail: &serde_json::Value,
) -> Result<i64> {
    let tx = sequence.tx();
    let event_id: i64 = tx
        .query_one(
            "INSERT INTO warning_events (warning_id, category, area_key, sensor_key, kind, at, \
             message_en, message_da, detail) \
             SELECT warning_id, category, area_key, sensor_key, 'undelivered', $2, \
                    'A delivery of this warning over ' || $3 || ' was given up.', \
                    'En levering af dette varsel via ' || $3 || ' blev opgivet.', $4 \
             FROM warning_events WHERE id = $1 RETURNING id",
            &[&event_id, &at, &channel, detail],
        )
        .await
        .context("recording an undelivered event")?
        .get(0);
    coordination::notify(tx, &Notice::WarningsChanged { event_id }).await?;
    Ok(event_id)
}

/// A warning event as the delivery channels present it: the event, the warning's state at that
/// event (its severity and kind carried forward from the latest event that set them), and what
/// it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningEvent {
    pub id: i64,
    pub warning_id: i64,
    /// A flood warning, or a utility alert (a suspected leak).
    pub category: Category,
    /// The flood area's key for a flood warning, the district meter's sensor key for a leak.
    pub subject_key: String,
    /// The flood area's name, or the district meter's station name.
    pub subject_name: String,
    pub kind: EventKind,
    /// The warning's severity as of this event.
    pub severity: Severity,
    /// Observed or expected, as of this event.
    pub warning_kind: WarningKind,
    pub at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
    pub detail: serde_json::Value,
    pub municipalities: Vec<String>,
    /// The warning's state now.
    pub warning_state: WarningState,
}

impl WarningEvent {
    /// The event as every channel carries it; `public_url` is where its CAP message is served.
    pub fn body(&self, public_url: &str) -> EventBody {
        let about_area = self.category.is_area();
        let subject = AreaRef {
            key: self.subject_key.clone(),
            name: self.subject_name.clone(),
        };
        let (area, meter) = if about_area {
            (Some(subject), None)
        } else {
            (None, Some(subject))
        };
        EventBody {
            id: self.id,
            kind: format!(
                "{}.{}",
                if about_area {
                    "warning"
                } else {
                    "utility_alert"
                },
                self.kind
            ),
            category: self.category.name().to_owned(),
            warning_id: self.warning_id,
            area,
            meter,
            severity: self.severity.level(),
            severity_name: self.category.severity_name(self.severity),
            warning_kind: self.warning_kind.name().to_owned(),
            in_force: match self.kind {
                EventKind::Lifted => false,
                // Recorded when a delivery is given up, possibly after the lift.
                EventKind::Undelivered => self.warning_state == WarningState::InForce,
                _ => true,
            },
            stale: match self.kind {
                EventKind::Stale => Some(true),
                EventKind::Fresh => Some(false),
                _ => None,
            },
            at: self.at,
            recorded_at: self.recorded_at,
            municipalities: self.municipalities.clone(),
            message: Messages {
                en: self.message_en.clone(),
                da: self.message_da.clone(),
            },
            detail: self.detail.clone(),
            cap: about_area.then(|| {
                format!(
                    "{}/api/v1/warning-events/{}.cap",
                    public_url.trim_end_matches('/'),
                    self.id
                )
            }),
        }
    }
}

const WARNING_EVENT_SELECT: &str = "SELECT e.id, e.warning_id, e.category, \
     COALESCE(e.area_key, e.sensor_key), COALESCE(a.name, st.name, NULLIF(s.name, ''), e.sensor_key), e.kind, \
     COALESCE(sev.severity, w.severity), COALESCE(wk.warning_kind, w.kind), e.at, e.recorded_at, \
     e.message_en, e.message_da, e.detail, w.municipalities, w.state \
     FROM warning_events e JOIN warnings w ON w.id = e.warning_id \
     LEFT JOIN flood_areas a ON a.key = e.area_key LEFT JOIN sensors s ON s.key = e.sensor_key \
     LEFT JOIN stations st ON st.id = s.station_id \
     LEFT JOIN LATERAL (SELECT p.severity FROM warning_events p WHERE p.warning_id = e.warning_id \
         AND p.id <= e.id AND p.severity IS NOT NULL ORDER BY p.id DESC LIMIT 1) sev ON true \
     LEFT JOIN LATERAL (SELECT p.warning_kind FROM warning_events p WHERE p.warning_id = e.warning_id \
         AND p.id <= e.id AND p.warning_kind IS NOT NULL ORDER BY p.id DESC LIMIT 1) wk ON true";

fn warning_event(r: &tokio_postgres::Row) -> Result<WarningEvent> {
    Ok(WarningEvent {
        id: r.get(0),
        warning_id: r.get(1),
        category: term(r, 2, Category::parse)?,
        subject_key: r.get(3),
        subject_name: r.get(4),
        kind: term(r, 5, EventKind::parse)?,
        severity: severity(r, 6)?,
        warning_kind: term(r, 7, WarningKind::parse)?,
        at: r.get(8),
        recorded_at: r.get(9),
        message_en: r.get(10),
        message_da: r.get(11),
        detail: r.get(12),
        municipalities: r.get(13),
        warning_state: term(r, 14, WarningState::parse)?,
    })
}

/// An area's (flood or drought) warning as it stands, with its area's name and its
/// acknowledgements.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningRow {
    pub id: i64,
    pub area_key: String,
    pub area_name: String,
    pub severity: Severity,
    pub kind: WarningKind,
    pub state: WarningState,
    pub raised_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub stale: bool,
    pub municipalities: Vec<String>,
    pub message_en: String,
    pub message_da: String,
    /// Municipalities that acknowledged it.
    pub acknowledged_by: Vec<String>,
    /// Its latest public event.
    pub latest_event: Option<i64>,
    /// Flood or drought: the area's hazard.
    pub category: Category,
}

/// What [`warning_row`] reads: `warnings w` joined with its flood area `a`, for a WHERE clause to
/// follow.
pub(crate) const WARNING_SELECT: &str = "SELECT w.id, w.area_key, a.name, w.severity, w.kind, w.state, \
     w.raised_at, w.changed_at, w.lifted_at, w.stale, w.municipalities, w.message_en, w.message_da, \
     ARRAY(SELECT DISTINCT e.detail->>'municipality' FROM warning_events e \
           WHERE e.warning_id = w.id AND e.kind = 'acknowledged' ORDER BY 1), \
     (SELECT max(e.id) FROM warning_events e WHERE e.warning_id = w.id AND e.kind <> 'undelivered'), \
     w.category \
     FROM warnings w JOIN flood_areas a ON a.key = w.area_key";

pub(crate) fn warning_row(r: &tokio_postgres::Row) -> Result<WarningRow> {
    Ok(WarningRow {
        id: r.get(0),
        area_key: r.get(1),
        area_name: r.get(2),
        severity: severity(r, 3)?,
        kind: term(r, 4, WarningKind::parse)?,
        state: term(r, 5, WarningState::parse)?,
        raised_at: r.get(6),
        changed_at: r.get(7),
        lifted_at: r.get(8),
        stale: r.get(9),
        municipalities: r.get(10),
        message_en: r.get(11),
        message_da: r.get(12),
        acknowledged_by: r.get(13),
        latest_event: r.get(14),
        category: term(r, 15, Category::parse)?,
    })
}

/// Which warnings to list.
#[derive(Debug, Clone, Default)]
pub struct WarningFilter {
    /// In force or lifted; all when None.
    pub state: Option<WarningState>,
    pub municipality: Option<String>,
    pub area: Option<String>,
    pub id: Option<i64>,
    pub limit: i64,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq)]
pub enum Acknowledged {
    /// A new acknowledged event with this id.
    Recorded(i64),
    /// This municipality already acknowledged the warning since its last change; that event's id.
    Already(i64),
    NoSuchWarning,
    /// The warning is no longer in force.
    Lifted,
    /// The municipality is not one the warning went to.
    NotConcerned,
}

impl Store {
    pub async fn warning_event(&self, id: i64) -> Result<Option<WarningEvent>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{WARNING_EVENT_SELECT} WHERE e.id = $1"), &[&id])
            .await
            .context("reading a warning event")?;
        row.as_ref().map(warning_event).transpose()
    }

    /// Events after `after_id`, in id (= commit) order, at most `limit`.
    pub async fn warning_events_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<WarningEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{WARNING_EVENT_SELECT} WHERE e.id > $1 ORDER BY e.id LIMIT $2"),
                &[&after_id, &limit],
            )
            .await
            .context("reading warning events")?;
        rows.iter().map(warning_event).collect()
    }

    /// One warning's events in order.
    pub async fn warning_history(&self, warning_id: i64) -> Result<Vec<WarningEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{WARNING_EVENT_SELECT} WHERE e.warning_id = $1 ORDER BY e.id"),
                &[&warning_id],
            )
            .await
            .context("reading a warning's history")?;
        rows.iter().map(warning_event).collect()
    }

    /// The id of the latest event, 0 when there is none.
    pub async fn last_warning_event_id(&self) -> Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(max(id), 0) FROM warning_events", &[])
            .await
            .context("reading the latest warning event")?;
        Ok(row.get(0))
    }

    /// The latest event about what `event` concerns (its flood area, or its district meter for a
    /// leak alert): what a retained MQTT message shows.
    pub async fn latest_event_like(&self, event: &WarningEvent) -> Result<Option<WarningEvent>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "{WARNING_EVENT_SELECT} WHERE e.category = $1 AND COALESCE(e.area_key, e.sensor_key) = $2 \
                     AND e.kind <> 'undelivered' ORDER BY e.id DESC LIMIT 1"
                ),
                &[&event.category.name(), &event.subject_key],
            )
            .await
            .context("reading an area's latest event")?;
        row.as_ref().map(warning_event).transpose()
    }

    /// The area's polygon (GeoJSON) and its municipalities' names by code.
    pub async fn area_geometry(
        &self,
        area_key: &str,
    ) -> Result<Option<(serde_json::Value, Vec<(String, String)>)>> {
        let client = self.client().await?;
        let Some(area) = client
            .query_opt(
                "SELECT polygon FROM flood_areas WHERE key = $1",
                &[&area_key],
            )
            .await
            .context("reading an area")?
        else {
            return Ok(None);
        };
        let names = client
            .query(
                "SELECT m.code, m.name FROM flood_areas a JOIN municipalities m \
                 ON m.code = ANY (a.municipality_codes) WHERE a.key = $1 ORDER BY m.code",
                &[&area_key],
            )
            .await
            .context("reading an area's municipalities")?;
        Ok(Some((
            area.get(0),
            names.iter().map(|r| (r.get(0), r.get(1))).collect(),
        )))
    }

    /// Flood warnings, newest first, with their area names and acknowledgements.
    pub async fn warning_list(&self, filter: &WarningFilter) -> Result<Vec<WarningRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "{WARNING_SELECT} WHERE ($1::text IS NULL OR w.state = $1) AND ($2::text IS NULL OR $2 = ANY (w.municipalities)) \
                 AND ($3::text IS NULL OR w.area_key = $3) AND ($4::bigint IS NULL OR w.id = $4) \
                 ORDER BY w.raised_at DESC, w.id DESC LIMIT $5"
                ),
                &[
                    &filter.state.map(WarningState::name),
                    &filter.municipality,
                    &filter.area,
                    &filter.id,
                    &filter.limit,
                ],
            )
            .await
            .context("listing warnings")?;
        rows.iter().map(warning_row).collect()
    }

    /// Acknowledges a flood warning for a municipality: an `acknowledged` event with MQTT
    /// deliveries to `mqtt_targets(area, municipalities)` and the matching webhooks, in one
    /// transaction. Utility alerts are not acknowledged here: they are not flood warnings.
    pub async fn acknowledge(
        &self,
        warning_id: i64,
        municipality: &str,
        detail: &serde_json::Value,
        at: DateTime<Utc>,
        mqtt_targets: impl Fn(&str, &[String]) -> Vec<String>,
    ) -> Result<Acknowledged> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin acknowledging")?;
        let Some(warning) = tx
            .query_opt(
                "SELECT area_key, state, municipalities, category FROM warnings \
                 WHERE id = $1 AND area_key IS NOT NULL",
                &[&warning_id],
            )
            .await
            .context("reading the warning to acknowledge")?
        else {
            return Ok(Acknowledged::NoSuchWarning);
        };
        let (area_key, state, municipalities): (String, String, Vec<String>) =
            (warning.get(0), warning.get(1), warning.get(2));
        let category = term(&warning, 3, Category::parse)?;
        coordination::lock_area(&tx, &area_key).await?;
        let sequence = coordination::lock_event_sequence(&tx).await?;
        // Read again under the locks: the warning may have been lifted meanwhile.
        let state: String = tx
            .query_opt("SELECT state FROM warnings WHERE id = $1", &[&warning_id])
            .await
            .context("reading the warning to acknowledge")?
            .map_or(state, |r| r.get(0));
        if state != "in_force" {
            return Ok(Acknowledged::Lifted);
        }
        if !municipalities.iter().any(|m| m == municipality) {
            return Ok(Acknowledged::NotConcerned);
        }
        let earlier = tx
            .query_opt(
                "SELECT a.id FROM warning_events a WHERE a.warning_id = $1 AND a.kind = 'acknowledged' \
                 AND a.detail->>'municipality' = $2 AND NOT EXISTS (SELECT 1 FROM warning_events c \
                 WHERE c.warning_id = $1 AND c.id > a.id AND c.kind IN ('raised', 'changed')) \
                 ORDER BY a.id DESC LIMIT 1",
                &[&warning_id, &municipality],
            )
            .await
            .context("looking for an earlier acknowledgement")?;
        if let Some(row) = earlier {
            return Ok(Acknowledged::Already(row.get(0)));
        }
        let name: String = tx
            .query_opt(
                "SELECT name FROM municipalities WHERE code = $1",
                &[&municipality],
            )
            .await
            .context("reading the municipality")?
            .map_or_else(|| municipality.to_owned(), |r| r.get(0));
        let event_id = append_event(
            &sequence,
            &EventInsert {
                warning_id,
                category,
                area_key: Some(&area_key),
                sensor_key: None,
                kind: EventKind::Acknowledged,
                severity: None,
                warning_kind: None,
                at,
                message_en: &format!("Acknowledged by {name} Municipality."),
                message_da: &format!("Kvitteret af {name} Kommune."),
                detail,
            },
            &mqtt_targets(&area_key, &municipalities),
        )
        .await?;
        tx.commit().await.context("commit an acknowledgement")?;
        Ok(Acknowledged::Recorded(event_id))
    }
}
