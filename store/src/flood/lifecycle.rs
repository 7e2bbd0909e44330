//! The warning lifecycle: an area's recorded state, recording an evaluation's events under the area's
//! lock (with their warnings, outbox rows and threshold crossings), and reading them back.

use super::*;
use crate::pipeline;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

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
        let target = AreaTarget {
            key: area_key,
            municipalities,
            mqtt_topics,
        };
        let mut decide = Some(decide);
        let mut decided = self
            .decide_areas(&[target], |_, status| {
                decide.take().map(|d| d(status)).unwrap_or_default()
            })
            .await?;
        Ok(decided.remove(0))
    }

    /// [`Store::decide_area`] for many areas at once, in one transaction and a few statements
    /// whatever their number: every area's lock (taken in one order, so that two writers of
    /// overlapping sets cannot deadlock), every status, then `decide(i, status)` for the `i`-th
    /// area, and every event with its warning and deliveries. Returns each area's event ids and
    /// decision, in the order given. An area may be given once only.
    pub async fn decide_areas(
        &self,
        areas: &[AreaTarget<'_>],
        mut decide: impl FnMut(usize, &AreaStatus) -> AreaDecision,
    ) -> Result<Vec<(Vec<i64>, AreaDecision)>> {
        let keys: Vec<&str> = areas.iter().map(|a| a.key).collect();
        // The transaction is begun and committed by statements sent with others: under load
        // each round trip waits for the backend and then this process to be scheduled again.
        let own = pipeline::OwnTransaction::new(self.client().await?);
        let client: &tokio_postgres::Client = own.client();
        // The locks first, then what they guard, in one round trip (the server runs them in
        // order); and the areas' hazards, which their events' category needs.
        let in_force = in_force_query();
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&keys, Type::TEXT_ARRAY)];
        let answers = pipeline::in_one_flight(
            client,
            &[
                ("BEGIN", &[]),
                (coordination::LOCK_AREAS, &params),
                (LAST_EVENTS, &params),
                (&in_force, &params),
                (HAZARDS, &params),
            ],
        )
        .await
        .context("taking the areas' locks and reading their statuses")?;
        let statuses = statuses(&keys, &answers[2], &answers[3])?;
        let categories = categories(&keys, &answers[4]);
        let decisions: Vec<AreaDecision> = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| decide(i, status))
            .collect();
        let ids = write_decisions_and_commit(client, areas, &categories, &decisions).await?;
        own.ended();
        Ok(ids.into_iter().zip(decisions).collect())
    }
}

/// A flood area whose events [`Store::decide_areas`] records, with where they go.
#[derive(Debug, Clone, Copy)]
pub struct AreaTarget<'a> {
    pub key: &'a str,
    /// The warning's municipalities, set when it is raised.
    pub municipalities: &'a [String],
    /// Every event gets an MQTT delivery to each of these.
    pub mqtt_topics: &'a [String],
}

/// The area's status as `client` (a connection, or a transaction holding the area's lock) sees
/// it.
async fn read_status(client: &impl GenericClient, area_key: &str) -> Result<AreaStatus> {
    Ok(read_statuses(client, &[area_key]).await?.remove(0))
}

/// Each area's time of its last event, by [`statuses`].
const LAST_EVENTS: &str =
    "SELECT k, (SELECT max(at) FROM warning_events e WHERE e.area_key = k) FROM unnest($1::text[]) k";

/// The areas' warnings in force, by [`statuses`].
fn in_force_query() -> String {
    format!("{WARNING_SELECT} WHERE w.area_key = ANY ($1) AND w.state = 'in_force'")
}

/// Each area's hazard, by [`categories`].
const HAZARDS: &str = "SELECT key, hazard FROM flood_areas WHERE key = ANY ($1)";

/// The areas' statuses, in the order given.
async fn read_statuses(client: &impl GenericClient, area_keys: &[&str]) -> Result<Vec<AreaStatus>> {
    let last = client
        .query_typed(LAST_EVENTS, &[(&area_keys, Type::TEXT_ARRAY)])
        .await
        .context("reading the areas' last events")?;
    let in_force = client
        .query_typed(&in_force_query(), &[(&area_keys, Type::TEXT_ARRAY)])
        .await
        .context("reading the areas' warnings in force")?;
    statuses(area_keys, &last, &in_force)
}

/// The areas' statuses, in the order given, from the answers of [`LAST_EVENTS`] and
/// [`in_force_query`].
fn statuses(
    area_keys: &[&str],
    last: &[tokio_postgres::Row],
    in_force: &[tokio_postgres::Row],
) -> Result<Vec<AreaStatus>> {
    let last: HashMap<String, DateTime<Utc>> = last
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<DateTime<Utc>>>(1)?)))
        .collect();
    // At most one warning of an area is in force (a unique index holds that).
    let mut current: HashMap<String, WarningRow> = HashMap::new();
    for row in in_force {
        let warning = warning_row(row)?;
        current.insert(warning.area_key.clone(), warning);
    }
    Ok(area_keys
        .iter()
        .map(|key| AreaStatus {
            last_at: last.get(*key).copied(),
            current: current.remove(*key),
        })
        .collect())
}

/// Each area's category, in the order given, from the answer of [`HAZARDS`]: a drought area's
/// warnings and events carry its category; every other area's are flood warnings.
fn categories(area_keys: &[&str], hazards: &[tokio_postgres::Row]) -> Vec<Category> {
    let hazards: HashMap<String, String> = hazards.iter().map(|r| (r.get(0), r.get(1))).collect();
    area_keys
        .iter()
        .map(|key| {
            hazards
                .get(*key)
                .and_then(|h| Category::parse(h))
                .unwrap_or(Category::Flood)
        })
        .collect()
}

/// Writes the decisions' events, the warnings they change and their crossings in the transaction
/// `client` is in, which holds the areas' locks, and commits it. Events are written in rounds
/// (every area's first event, then every second one, ...), so that each statement changes at
/// most one warning of an area. The event lock goes with the crossings and the first round's
/// warnings, and the `COMMIT` with the last round's deliveries: a raised warning takes four round
/// trips in all, a decision without events two.
async fn write_decisions_and_commit(
    client: &tokio_postgres::Client,
    areas: &[AreaTarget<'_>],
    categories: &[Category],
    decisions: &[AreaDecision],
) -> Result<Vec<Vec<i64>>> {
    let mut ids = vec![Vec::new(); areas.len()];
    let rounds = decisions.iter().map(|d| d.events.len()).max().unwrap_or(0);
    // The crossings go in the round trip that takes the event lock (or on their own).
    let crossings: Vec<&CrossingRow> = decisions.iter().flat_map(|d| &d.crossings).collect();
    let sensors: Vec<&str> = crossings.iter().map(|c| c.sensor_key.as_str()).collect();
    let severities: Vec<i16> = crossings.iter().map(|c| c.severity.level()).collect();
    let directions: Vec<&str> = crossings
        .iter()
        .map(|c| if c.up { "up" } else { "down" })
        .collect();
    let ats: Vec<DateTime<Utc>> = crossings.iter().map(|c| c.at).collect();
    let values: Vec<f64> = crossings.iter().map(|c| c.value).collect();
    let crossing_params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&sensors, Type::TEXT_ARRAY),
        (&severities, Type::INT2_ARRAY),
        (&directions, Type::TEXT_ARRAY),
        (&ats, Type::TIMESTAMPTZ_ARRAY),
        (&values, Type::FLOAT8_ARRAY),
    ];
    let record_crossings: &[(&str, &pipeline::Params<'_>)] = if crossings.is_empty() {
        &[]
    } else {
        &[(
            "INSERT INTO threshold_crossings (sensor_key, severity, direction, at, value) \
             SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::timestamptz[], $5::float8[]) \
             ON CONFLICT DO NOTHING",
            &crossing_params,
        )]
    };
    let commit: &[(&str, &pipeline::Params<'_>)] = &[("COMMIT", &[])];
    if rounds == 0 {
        let statements: Vec<(&str, &pipeline::Params<'_>)> =
            record_crossings.iter().chain(commit).copied().collect();
        pipeline::in_one_flight(client, &statements)
            .await
            .context("recording crossings")?;
        return Ok(ids);
    }
    let mut sequence = None;
    for round in 0..rounds {
        let entries: Vec<(usize, &NewEvent)> = decisions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.events.get(round)?)))
            .collect();
        let changes = WarningChanges::new(areas, categories, &entries);
        let params = changes.params();
        let statements: Vec<(&str, &pipeline::Params<'_>)> = changes
            .statements
            .iter()
            .zip(&params)
            .map(|((sql, _), params)| (*sql, params.as_slice()))
            .collect();
        let changed = match &sequence {
            None => {
                let (locked, changed) = coordination::lock_event_sequence_between(
                    client,
                    record_crossings,
                    &statements,
                )
                .await?;
                sequence = Some(locked);
                changed
            }
            Some(_) => pipeline::in_one_flight(client, &statements)
                .await
                .context("changing the areas' warnings")?,
        };
        let warning_ids = warning_ids(areas, &entries, &changed)?;
        let inserts: Vec<EventInsert<'_>> = entries
            .iter()
            .zip(&warning_ids)
            .map(|((i, event), &warning_id)| EventInsert {
                warning_id,
                category: categories[*i],
                area_key: Some(areas[*i].key),
                sensor_key: None,
                kind: event.kind,
                severity: event.severity,
                warning_kind: event.severity.map(|_| event.warning_kind),
                at: event.at,
                message_en: &event.message_en,
                message_da: &event.message_da,
                detail: &event.trigger,
            })
            .collect();
        let with_topics: Vec<(&EventInsert<'_>, &[String])> = inserts
            .iter()
            .zip(&entries)
            .map(|(insert, (i, _))| (insert, areas[*i].mqtt_topics))
            .collect();
        let sequence = sequence
            .as_ref()
            .expect("the event sequence is locked in the first round");
        let then = if round + 1 == rounds { commit } else { &[] };
        let event_ids = append_events(sequence, &with_topics, then).await?;
        for ((i, _), id) in entries.iter().zip(event_ids) {
            ids[*i].push(id);
        }
    }
    Ok(ids)
}

/// A statement's parameters, owned.
type OwnedParams = Vec<(Box<dyn ToSql + Sync + Send>, Type)>;

/// The statements that raise, change, lift or mark the warnings the events (one per area)
/// concern, each returning `(id, area_key)` of the warnings it touched. Each area appears in one
/// of them at most, so they need none of each other's answers.
struct WarningChanges {
    statements: Vec<(&'static str, OwnedParams)>,
}

impl WarningChanges {
    fn new(
        areas: &[AreaTarget<'_>],
        categories: &[Category],
        entries: &[(usize, &NewEvent)],
    ) -> WarningChanges {
        let of_kind = |kinds: &[EventKind]| -> Vec<(usize, &NewEvent)> {
            entries
                .iter()
                .filter(|(_, e)| kinds.contains(&e.kind))
                .copied()
                .collect()
        };
        let keys = |chosen: &[(usize, &NewEvent)]| -> Vec<String> {
            chosen
                .iter()
                .map(|(i, _)| areas[*i].key.to_owned())
                .collect()
        };
        let ats = |chosen: &[(usize, &NewEvent)]| -> Vec<DateTime<Utc>> {
            chosen.iter().map(|(_, e)| e.at).collect()
        };
        let texts = |chosen: &[(usize, &NewEvent)], f: fn(&NewEvent) -> &str| -> Vec<String> {
            chosen.iter().map(|(_, e)| f(e).to_owned()).collect()
        };
        let severities = |chosen: &[(usize, &NewEvent)]| -> Vec<Option<i16>> {
            chosen
                .iter()
                .map(|(_, e)| e.severity.map(Severity::level))
                .collect()
        };
        let triggers = |chosen: &[(usize, &NewEvent)]| -> Vec<serde_json::Value> {
            chosen.iter().map(|(_, e)| e.trigger.clone()).collect()
        };
        fn param<T: ToSql + Sync + Send + 'static>(
            value: T,
            ty: Type,
        ) -> (Box<dyn ToSql + Sync + Send>, Type) {
            (Box::new(value), ty)
        }
        let mut statements: Vec<(&'static str, OwnedParams)> = Vec::new();
        let raised = of_kind(&[EventKind::Raised]);
        if !raised.is_empty() {
            let municipalities: Vec<serde_json::Value> = raised
                .iter()
                .map(|(i, _)| serde_json::json!(areas[*i].municipalities))
                .collect();
            let categories: Vec<String> = raised
                .iter()
                .map(|(i, _)| categories[*i].name().to_owned())
                .collect();
            statements.push((
                "INSERT INTO warnings (area_key, severity, kind, state, raised_at, changed_at, \
                 municipalities, trigger, message_en, message_da, category) \
                 SELECT a, v, k, 'in_force', t, t, ARRAY(SELECT jsonb_array_elements_text(m)), tr, en, da, c \
                 FROM unnest($1::text[], $2::int2[], $3::text[], $4::timestamptz[], $5::jsonb[], \
                     $6::jsonb[], $7::text[], $8::text[], $9::text[]) AS x(a, v, k, t, m, tr, en, da, c) \
                 RETURNING id, area_key",
                vec![
                    param(keys(&raised), Type::TEXT_ARRAY),
                    param(severities(&raised), Type::INT2_ARRAY),
                    param(texts(&raised, |e| e.warning_kind.name()), Type::TEXT_ARRAY),
                    param(ats(&raised), Type::TIMESTAMPTZ_ARRAY),
                    param(municipalities, Type::JSONB_ARRAY),
                    param(triggers(&raised), Type::JSONB_ARRAY),
                    param(texts(&raised, |e| &e.message_en), Type::TEXT_ARRAY),
                    param(texts(&raised, |e| &e.message_da), Type::TEXT_ARRAY),
                    param(categories, Type::TEXT_ARRAY),
                ],
            ));
        }
        let changed = of_kind(&[EventKind::Changed]);
        if !changed.is_empty() {
            statements.push((
                "UPDATE warnings w SET severity = x.v, kind = x.k, changed_at = x.t, trigger = x.tr, \
                 message_en = x.en, message_da = x.da \
                 FROM unnest($1::text[], $2::int2[], $3::text[], $4::timestamptz[], $5::jsonb[], \
                     $6::text[], $7::text[]) AS x(a, v, k, t, tr, en, da) \
                 WHERE w.area_key = x.a AND w.state = 'in_force' RETURNING w.id, w.area_key",
                vec![
                    param(keys(&changed), Type::TEXT_ARRAY),
                    param(severities(&changed), Type::INT2_ARRAY),
                    param(texts(&changed, |e| e.warning_kind.name()), Type::TEXT_ARRAY),
                    param(ats(&changed), Type::TIMESTAMPTZ_ARRAY),
                    param(triggers(&changed), Type::JSONB_ARRAY),
                    param(texts(&changed, |e| &e.message_en), Type::TEXT_ARRAY),
                    param(texts(&changed, |e| &e.message_da), Type::TEXT_ARRAY),
                ],
            ));
        }
        let lifted = of_kind(&[EventKind::Lifted]);
        if !lifted.is_empty() {
            statements.push((
                "UPDATE warnings w SET state = 'lifted', lifted_at = x.t, changed_at = x.t, stale = false, \
                 message_en = x.en, message_da = x.da \
                 FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS x(a, t, en, da) \
                 WHERE w.area_key = x.a AND w.state = 'in_force' RETURNING w.id, w.area_key",
                vec![
                    param(keys(&lifted), Type::TEXT_ARRAY),
                    param(ats(&lifted), Type::TIMESTAMPTZ_ARRAY),
                    param(texts(&lifted, |e| &e.message_en), Type::TEXT_ARRAY),
                    param(texts(&lifted, |e| &e.message_da), Type::TEXT_ARRAY),
                ],
            ));
        }
        let marked = of_kind(&[EventKind::Stale, EventKind::Fresh]);
        if !marked.is_empty() {
            let stale: Vec<bool> = marked
                .iter()
                .map(|(_, e)| e.kind == EventKind::Stale)
                .collect();
            statements.push((
                "UPDATE warnings w SET stale = x.s FROM unnest($1::text[], $2::bool[]) AS x(a, s) \
                 WHERE w.area_key = x.a AND w.state = 'in_force' RETURNING w.id, w.area_key",
                vec![
                    param(keys(&marked), Type::TEXT_ARRAY),
                    param(stale, Type::BOOL_ARRAY),
                ],
            ));
        }
        WarningChanges { statements }
    }

    /// Each statement's parameters, borrowed as a flight takes them.
    fn params(&self) -> Vec<Vec<(&(dyn ToSql + Sync), Type)>> {
        self.statements
            .iter()
            .map(|(_, params)| {
                params
                    .iter()
                    .map(|(value, ty)| (&**value as &(dyn ToSql + Sync), ty.clone()))
                    .collect()
            })
            .collect()
    }
}

/// Each event's warning id, from the rows the [`WarningChanges`] returned.
fn warning_ids(
    areas: &[AreaTarget<'_>],
    entries: &[(usize, &NewEvent)],
    changed: &[Vec<tokio_postgres::Row>],
) -> Result<Vec<i64>> {
    let warning_of: HashMap<String, i64> = changed
        .iter()
        .flatten()
        .map(|row| (row.get(1), row.get(0)))
        .collect();
    entries
        .iter()
        .map(|(i, event)| {
            if !matches!(
                event.kind,
                EventKind::Raised
                    | EventKind::Changed
                    | EventKind::Lifted
                    | EventKind::Stale
                    | EventKind::Fresh
            ) {
                return Err(Error::Inconsistent(format!(
                    "analytics do not record {} events",
                    event.kind
                )));
            }
            warning_of.get(areas[*i].key).copied().ok_or_else(|| {
                Error::Inconsistent(format!(
                    "area {}: a {} event needs a warning in force",
                    areas[*i].key, event.kind
                ))
            })
        })
        .collect()
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
