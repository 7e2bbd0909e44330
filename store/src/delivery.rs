//! Delivery of warning events: API keys, webhook endpoints, the outbox that the dispatcher drains
//! (claims with a lease, attempts, retries, dead letters), acknowledgements, and the events as
//! every channel presents them.
//!
//! **Invariant:** warning event ids grow in commit order. Every transaction that inserts into
//! `warning_events` first takes one transaction-scoped advisory lock ([`lock_event_sequence`]),
//! so a reader that has seen event N and later asks for events after N misses nothing; this is
//! what lets a Server-Sent Events client resume from `Last-Event-ID`.

use crate::audit::Audit;
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_postgres::Transaction;

/// Serialises writers of `warning_events` until the transaction ends (see the module invariant).
pub(crate) async fn lock_event_sequence(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tidemark.warning_events'))",
        &[],
    )
    .await
    .context("taking the warning event lock")?;
    Ok(())
}

/// Queues the event for every webhook whose filter matches it. A webhook matches when it is
/// active, it receives the warning's category, its municipality and area filters (empty = all;
/// areas filter flood warnings only) meet the warning's, a municipality
/// owner is among the warning's municipalities, and either the warning's severity at this event
/// reaches its minimum or an earlier event of the same warning was already queued for it (so a
/// receiver that heard of a warning also hears how it changed and ended).
pub(crate) async fn queue_webhooks(tx: &Transaction<'_>, event_id: i64) -> Result<u64> {
    tx.execute(
        "INSERT INTO outbox (event_id, channel, target) \
         SELECT e.id, 'webhook', wh.id::text \
         FROM warning_events e JOIN warnings w ON w.id = e.warning_id \
         CROSS JOIN LATERAL (SELECT p.severity FROM warning_events p WHERE p.warning_id = e.warning_id \
             AND p.id <= e.id AND p.severity IS NOT NULL ORDER BY p.id DESC LIMIT 1) sev \
         JOIN webhooks wh ON wh.deleted_at IS NULL AND wh.disabled_at IS NULL \
         WHERE e.id = $1 AND w.category = ANY (wh.categories) \
           AND (cardinality(wh.municipalities) = 0 OR wh.municipalities && w.municipalities) \
           AND (cardinality(wh.areas) = 0 OR w.category <> 'flood' OR e.area_key = ANY (wh.areas)) \
           AND (wh.owner_municipality IS NULL OR wh.owner_municipality = ANY (w.municipalities)) \
           AND (sev.severity >= wh.min_severity OR EXISTS ( \
               SELECT 1 FROM outbox o JOIN warning_events q ON q.id = o.event_id \
               WHERE q.warning_id = e.warning_id AND o.channel = 'webhook' AND o.target = wh.id::text))",
        &[&event_id],
    )
    .await
    .context("queueing webhook deliveries")
}

/// A warning event to append, with what it concerns: a flood area, or a district meter for a leak.
pub(crate) struct EventInsert<'a> {
    pub warning_id: i64,
    pub category: &'a str,
    pub area_key: Option<&'a str>,
    pub sensor_key: Option<&'a str>,
    pub kind: &'a str,
    /// Set on events that change the warning's severity, with `warning_kind`.
    pub severity: Option<i16>,
    pub warning_kind: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub message_en: &'a str,
    pub message_da: &'a str,
    pub detail: &'a serde_json::Value,
}

/// Appends an event in the caller's transaction, which holds [`lock_event_sequence`], with an MQTT
/// delivery to each of `mqtt_topics` and the matching webhooks, and announces it on
/// `warnings_changed` when the transaction commits.
pub(crate) async fn append_event(
    tx: &Transaction<'_>,
    event: &EventInsert<'_>,
    mqtt_topics: &[String],
) -> Result<i64> {
    let event_id: i64 = tx
        .query_one(
            "INSERT INTO warning_events (warning_id, category, area_key, sensor_key, kind, severity, at, \
             message_en, message_da, detail, warning_kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            &[
                &event.warning_id,
                &event.category,
                &event.area_key,
                &event.sensor_key,
                &event.kind,
                &event.severity,
                &event.at,
                &event.message_en,
                &event.message_da,
                event.detail,
                &event.warning_kind,
            ],
        )
        .await
        .context("recording a warning event")?
        .get(0);
    for topic in mqtt_topics {
        tx.execute(
            "INSERT INTO outbox (event_id, channel, target) VALUES ($1, 'mqtt', $2)",
            &[&event_id, topic],
        )
        .await
        .context("queueing a delivery")?;
    }
    queue_webhooks(tx, event_id).await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&crate::flood::WARNINGS_CHANGED, &event_id.to_string()],
    )
    .await
    .context("notifying warnings_changed")?;
    Ok(event_id)
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Researcher,
    Utility,
    Municipality,
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Utility => "utility",
            Role::Municipality => "municipality",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Researcher,
            Role::Utility,
            Role::Municipality,
            Role::Operator,
        ]
        .into_iter()
        .find(|r| r.name() == text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: i64,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub role: Role,
    pub municipality: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key to create; the hash is of the whole key, which is never stored.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub prefix: String,
    pub hash: Vec<u8>,
    pub role: Role,
    pub municipality: Option<String>,
    pub label: String,
    pub expires_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str =
    "id, prefix, hash, role, municipality, label, created_at, expires_at, revoked_at";

fn key_row(r: &tokio_postgres::Row) -> Result<ApiKeyRow> {
    let role: String = r.get(3);
    Ok(ApiKeyRow {
        id: r.get(0),
        prefix: r.get(1),
        hash: r.get(2),
        role: Role::parse(&role)
            .ok_or_else(|| Error::Inconsistent(format!("unknown key role {role}")))?,
        municipality: r.get(4),
        label: r.get(5),
        created_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
    })
}

/// A webhook endpoint as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub id: i64,
    pub owner_key: i64,
    pub owner_municipality: Option<String>,
    pub url: String,
    pub description: String,
    pub municipalities: Vec<String>,
    pub areas: Vec<String>,
    pub min_severity: i16,
    /// flood, leak, or both.
    pub categories: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub owner_key: i64,
    pub owner_municipality: Option<String>,
    pub url: String,
    pub description: String,
    pub municipalities: Vec<String>,
    pub areas: Vec<String>,
    pub min_severity: i16,
    pub categories: Vec<String>,
    pub secret: String,
}

const WEBHOOK_COLUMNS: &str = "id, owner_key, owner_municipality, url, description, municipalities, areas, \
     min_severity, secret, previous_secret, previous_until, created_at, disabled_at, disabled_reason, categories";

fn webhook_row(r: &tokio_postgres::Row) -> WebhookRow {
    WebhookRow {
        id: r.get(0),
        owner_key: r.get(1),
        owner_municipality: r.get(2),
        url: r.get(3),
        description: r.get(4),
        municipalities: r.get(5),
        areas: r.get(6),
        min_severity: r.get(7),
        secret: r.get(8),
        previous_secret: r.get(9),
        previous_until: r.get(10),
        created_at: r.get(11),
        disabled_at: r.get(12),
        disabled_reason: r.get(13),
        categories: r.get(14),
    }
}

/// A warning event as the delivery channels present it: the event, the warning's state at that
/// event (its severity and kind carried forward from the latest event that set them), and what
/// it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningEvent {
    pub id: i64,
    pub warning_id: i64,
    /// flood (a flood warning) or leak (a utility alert).
    pub category: String,
    /// The flood area's key for a flood warning, the district meter's sensor key for a leak.
    pub subject_key: String,
    /// The flood area's name, or the district meter's station name.
    pub subject_name: String,
    /// raised, changed, lifted, acknowledged, stale, fresh or undelivered.
    pub kind: String,
    /// The warning's severity as of this event.
    pub severity: i16,
    /// observed or expected, as of this event.
    pub warning_kind: String,
    pub at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub message_en: String,
    pub message_da: String,
    pub detail: serde_json::Value,
    pub municipalities: Vec<String>,
    /// The warning's state now (in_force or lifted).
    pub warning_state: String,
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

fn warning_event(r: &tokio_postgres::Row) -> WarningEvent {
    WarningEvent {
        id: r.get(0),
        warning_id: r.get(1),
        category: r.get(2),
        subject_key: r.get(3),
        subject_name: r.get(4),
        kind: r.get(5),
        severity: r.get(6),
        warning_kind: r.get(7),
        at: r.get(8),
        recorded_at: r.get(9),
        message_en: r.get(10),
        message_da: r.get(11),
        detail: r.get(12),
        municipalities: r.get(13),
        warning_state: r.get(14),
    }
}

/// A delivery claimed by one dispatcher until its lease runs out.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub outbox_id: i64,
    pub event_id: i64,
    pub channel: String,
    pub target: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
}

/// How an attempt ended, and what to do with the row.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub outbox_id: i64,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub next: AttemptNext,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttemptNext {
    /// Delivered at this instant.
    Delivered(DateTime<Utc>),
    /// Try again at this instant.
    Retry(DateTime<Utc>),
    /// Give up at this instant; an `undelivered` event goes on the warning.
    Dead(DateTime<Utc>),
    /// The endpoint said it is gone (HTTP 410): disable it and give up on this row.
    Gone(DateTime<Utc>),
}

/// A recorded attempt, for tests and operators.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status: Option<i32>,
    pub ok: bool,
    pub error: Option<String>,
}

/// An outbox row as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: i64,
    pub channel: String,
    pub target: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
}

/// A warning with what a list shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningSummary {
    pub id: i64,
    pub area_key: String,
    pub area_name: String,
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
    /// Municipalities that acknowledged it.
    pub acknowledged_by: Vec<String>,
    /// Its latest public event.
    pub latest_event: Option<i64>,
}

/// Which warnings to list.
#[derive(Debug, Clone, Default)]
pub struct WarningFilter {
    /// in_force or lifted; all when None.
    pub state: Option<String>,
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
    pub async fn create_api_key(&self, key: &NewApiKey, audit: &Audit) -> Result<ApiKeyRow> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin creating a key")?;
        crate::audit::record(&tx, audit).await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO api_keys (prefix, hash, role, municipality, label, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
                ),
                &[
                    &key.prefix,
                    &key.hash,
                    &key.role.name(),
                    &key.municipality,
                    &key.label,
                    &key.expires_at,
                ],
            )
            .await
            .context("creating an API key")?;
        let row = key_row(&row)?;
        tx.commit().await.context("commit creating a key")?;
        Ok(row)
    }

    pub async fn api_key(&self, prefix: &str) -> Result<Option<ApiKeyRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = $1"),
                &[&prefix],
            )
            .await
            .context("looking up an API key")?;
        row.as_ref().map(key_row).transpose()
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"),
                &[],
            )
            .await
            .context("listing API keys")?;
        rows.iter().map(key_row).collect()
    }

    /// Revokes a key; false if there is no such key or it was already revoked.
    pub async fn revoke_api_key(
        &self,
        prefix: &str,
        at: DateTime<Utc>,
        audit: &Audit,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin revoking a key")?;
        let n = tx
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE prefix = $1 AND revoked_at IS NULL",
                &[&prefix, &at],
            )
            .await
            .context("revoking an API key")?;
        if n == 1 {
            crate::audit::record(&tx, audit).await?;
        }
        tx.commit().await.context("commit revoking a key")?;
        Ok(n == 1)
    }

    pub async fn create_webhook(&self, hook: &NewWebhook, audit: &Audit) -> Result<WebhookRow> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin registering a webhook")?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO webhooks (owner_key, owner_municipality, url, description, municipalities, \
                     areas, min_severity, secret, categories) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &hook.owner_key,
                    &hook.owner_municipality,
                    &hook.url,
                    &hook.description,
                    &hook.municipalities,
                    &hook.areas,
                    &hook.min_severity,
                    &hook.secret,
                    &hook.categories,
                ],
            )
            .await
            .context("registering a webhook")?;
        let row = webhook_row(&row);
        let audit = Audit {
            target: format!("webhook {}", row.id),
            ..audit.clone()
        };
        crate::audit::record(&tx, &audit).await?;
        tx.commit().await.context("commit registering a webhook")?;
        Ok(row)
    }

    /// Webhooks not deleted; all of them, or those owned by one municipality.
    pub async fn webhooks(&self, owner_municipality: Option<&str>) -> Result<Vec<WebhookRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL \
                     AND ($1::text IS NULL OR owner_municipality = $1) ORDER BY id"
                ),
                &[&owner_municipality],
            )
            .await
            .context("listing webhooks")?;
        Ok(rows.iter().map(webhook_row).collect())
    }

    pub async fn webhook(&self, id: i64) -> Result<Option<WebhookRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at IS NULL"
                ),
                &[&id],
            )
            .await
            .context("reading a webhook")?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// Deletes a webhook; its queued deliveries are given up. False if there was none.
    pub async fn delete_webhook(&self, id: i64, at: DateTime<Utc>, audit: &Audit) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin deleting a webhook")?;
        crate::audit::record(&tx, audit).await?;
        let n = tx
            .execute(
                "UPDATE webhooks SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                &[&id, &at],
            )
            .await
            .context("deleting a webhook")?;
        tx.execute(
            "UPDATE outbox SET dead_at = $2, last_error = 'endpoint deleted' \
             WHERE channel = 'webhook' AND target = $1::bigint::text AND delivered_at IS NULL AND dead_at IS NULL",
            &[&id, &at],
        )
        .await
        .context("giving up a deleted webhook's deliveries")?;
        tx.commit().await.context("commit deleting a webhook")?;
        Ok(n == 1)
    }

    /// Replaces a webhook's secret; the old one keeps signing beside it until `previous_until`.
    pub async fn rotate_webhook_secret(
        &self,
        id: i64,
        secret: &str,
        previous_until: DateTime<Utc>,
        audit: &Audit,
    ) -> Result<Option<WebhookRow>> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin rotating a secret")?;
        crate::audit::record(&tx, audit).await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE webhooks SET previous_secret = secret, previous_until = $3, secret = $2 \
                     WHERE id = $1 AND deleted_at IS NULL RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[&id, &secret, &previous_until],
            )
            .await
            .context("rotating a webhook secret")?;
        tx.commit().await.context("commit rotating a secret")?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// Claims up to `limit` due deliveries for `lease`: each claimed row's next attempt moves past
    /// the lease and its attempt count goes up, so no other dispatcher takes it meanwhile, and a
    /// dispatcher that dies before recording the outcome leaves it to be claimed again (and resent
    /// with the same id) when the lease ends.
    pub async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Claimed>> {
        let client = self.client().await?;
        let lease_end = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let rows = client
            .query(
                "UPDATE outbox o SET attempts = o.attempts + 1, next_attempt_at = $2 \
                 FROM (SELECT id FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL \
                       AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $3 \
                       FOR UPDATE SKIP LOCKED) due \
                 WHERE o.id = due.id \
                 RETURNING o.id, o.event_id, o.channel, o.target, o.attempts, o.created_at",
                &[&now, &lease_end, &limit],
            )
            .await
            .context("claiming deliveries")?;
        let mut claimed: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                outbox_id: r.get(0),
                event_id: r.get(1),
                channel: r.get(2),
                target: r.get(3),
                attempt: r.get(4),
                created_at: r.get(5),
            })
            .collect();
        claimed.sort_by_key(|c| (c.event_id, c.outbox_id));
        Ok(claimed)
    }

    /// Gives back claimed rows that were not attempted, `(outbox id, attempt)` each, so that they
    /// are due at `now` again; each only while its claim is still the caller's (`attempt` is the
    /// row's attempt count it claimed). Returns how many were given back.
    pub async fn release_claims(&self, claims: &[(i64, i32)], now: DateTime<Utc>) -> Result<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let (ids, attempts): (Vec<i64>, Vec<i32>) = claims.iter().copied().unzip();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE outbox o SET attempts = o.attempts - 1, next_attempt_at = $3 \
                 FROM unnest($1::int8[], $2::int4[]) AS c(id, attempt) \
                 WHERE o.id = c.id AND o.attempts = c.attempt \
                   AND o.delivered_at IS NULL AND o.dead_at IS NULL",
                &[&ids, &attempts, &now],
            )
            .await
            .context("releasing claimed deliveries")
    }

    /// Records an attempt and what follows from it, in one transaction, but only while the
    /// dispatcher still holds the claim: the row's attempt count is the fencing token, and a claim
    /// taken over after its lease ended has moved it on. Returns false (and records nothing) when
    /// the claim was lost.
    pub async fn record_attempt(&self, attempt: &Attempt) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin recording an attempt")?;
        let held = tx
            .query_opt(
                "SELECT 1 FROM outbox WHERE id = $1 AND attempts = $2 \
                 AND delivered_at IS NULL AND dead_at IS NULL FOR UPDATE",
                &[&attempt.outbox_id, &attempt.attempt],
            )
            .await
            .context("checking a delivery's claim")?;
        if held.is_none() {
            return Ok(false);
        }
        let ok = matches!(attempt.next, AttemptNext::Delivered(_));
        tx.execute(
            "INSERT INTO delivery_attempts (outbox_id, attempt, started_at, latency_ms, status, ok, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &attempt.outbox_id,
                &attempt.attempt,
                &attempt.started_at,
                &(attempt.latency.as_secs_f64() * 1000.0),
                &attempt.status,
                &ok,
                &attempt.error,
            ],
        )
        .await
        .context("recording a delivery attempt")?;
        match &attempt.next {
            AttemptNext::Delivered(at) => {
                tx.execute(
                    "UPDATE outbox SET delivered_at = $2, last_error = NULL WHERE id = $1",
                    &[&attempt.outbox_id, at],
                )
                .await
                .context("marking a delivery done")?;
            }
            AttemptNext::Retry(at) => {
                tx.execute(
                    "UPDATE outbox SET next_attempt_at = $2, last_error = $3 WHERE id = $1",
                    &[&attempt.outbox_id, at, &attempt.error],
                )
                .await
                .context("scheduling a retry")?;
            }
            AttemptNext::Dead(at) | AttemptNext::Gone(at) => {
                let row = tx
                    .query_one(
                        "UPDATE outbox SET dead_at = $2, last_error = $3 WHERE id = $1 \
                         RETURNING event_id, channel, target",
                        &[&attempt.outbox_id, at, &attempt.error],
                    )
                    .await
                    .context("dead-lettering a delivery")?;
                let (event_id, channel, target): (i64, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                if matches!(attempt.next, AttemptNext::Gone(_)) {
                    tx.execute(
                        "UPDATE webhooks SET disabled_at = $2, disabled_reason = 'the endpoint answered 410 Gone' \
                         WHERE id = $1::text::bigint AND disabled_at IS NULL",
                        &[&target, at],
                    )
                    .await
                    .context("disabling a gone webhook")?;
                    tx.execute(
                        "UPDATE outbox SET dead_at = $2, last_error = 'endpoint disabled (410 Gone)' \
                         WHERE channel = 'webhook' AND target = $1 AND delivered_at IS NULL AND dead_at IS NULL",
                        &[&target, at],
                    )
                    .await
                    .context("giving up a gone webhook's deliveries")?;
                }
                lock_event_sequence(&tx).await?;
                let detail = serde_json::json!({
                    "outbox_id": attempt.outbox_id,
                    "channel": channel,
                    "undelivered_event": event_id,
                    "attempts": attempt.attempt,
                });
                let event_id: i64 = tx
                    .query_one(
                        "INSERT INTO warning_events (warning_id, category, area_key, sensor_key, kind, at, \
                         message_en, message_da, detail) \
                         SELECT warning_id, category, area_key, sensor_key, 'undelivered', $2, \
                                'A delivery of this warning over ' || $3 || ' was given up.', \
                                'En levering af dette varsel via ' || $3 || ' blev opgivet.', $4 \
                         FROM warning_events WHERE id = $1 RETURNING id",
                        &[&event_id, at, &channel, &detail],
                    )
                    .await
                    .context("recording an undelivered event")?
                    .get(0);
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&crate::flood::WARNINGS_CHANGED, &event_id.to_string()],
                )
                .await
                .context("notifying warnings_changed")?;
            }
        }
        tx.commit().await.context("commit a delivery attempt")?;
        Ok(true)
    }

    pub async fn attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT attempt, started_at, status, ok, error FROM delivery_attempts \
                 WHERE outbox_id = $1 ORDER BY id",
                &[&outbox_id],
            )
            .await
            .context("reading delivery attempts")?;
        Ok(rows
            .iter()
            .map(|r| AttemptRow {
                attempt: r.get(0),
                started_at: r.get(1),
                status: r.get(2),
                ok: r.get(3),
                error: r.get(4),
            })
            .collect())
    }

    /// Outbox rows of one channel, oldest first.
    pub async fn outbox(&self, channel: &str) -> Result<Vec<OutboxRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, event_id, channel, target, attempts, next_attempt_at, last_error, \
                 delivered_at, dead_at FROM outbox WHERE channel = $1 ORDER BY id",
                &[&channel],
            )
            .await
            .context("reading the outbox")?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                event_id: r.get(1),
                channel: r.get(2),
                target: r.get(3),
                attempts: r.get(4),
                next_attempt_at: r.get(5),
                last_error: r.get(6),
                delivered_at: r.get(7),
                dead_at: r.get(8),
            })
            .collect())
    }

    /// The earliest instant a pending delivery is due, if any.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT min(next_attempt_at) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
                &[],
            )
            .await
            .context("reading the next due delivery")?;
        Ok(row.get(0))
    }

    pub async fn warning_event(&self, id: i64) -> Result<Option<WarningEvent>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{WARNING_EVENT_SELECT} WHERE e.id = $1"), &[&id])
            .await
            .context("reading a warning event")?;
        Ok(row.as_ref().map(warning_event))
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
        Ok(rows.iter().map(warning_event).collect())
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
        Ok(rows.iter().map(warning_event).collect())
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
                &[&event.category, &event.subject_key],
            )
            .await
            .context("reading an area's latest event")?;
        Ok(row.as_ref().map(warning_event))
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
    pub async fn warning_list(&self, filter: &WarningFilter) -> Result<Vec<WarningSummary>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.id, w.area_key, a.name, w.severity, w.kind, w.state, w.raised_at, w.changed_at, \
                 w.lifted_at, w.stale, w.municipalities, w.message_en, w.message_da, \
                 ARRAY(SELECT DISTINCT e.detail->>'municipality' FROM warning_events e \
                       WHERE e.warning_id = w.id AND e.kind = 'acknowledged' ORDER BY 1), \
                 (SELECT max(e.id) FROM warning_events e WHERE e.warning_id = w.id AND e.kind <> 'undelivered') \
                 FROM warnings w JOIN flood_areas a ON a.key = w.area_key \
                 WHERE ($1::text IS NULL OR w.state = $1) AND ($2::text IS NULL OR $2 = ANY (w.municipalities)) \
                 AND ($3::text IS NULL OR w.area_key = $3) AND ($4::bigint IS NULL OR w.id = $4) \
                 ORDER BY w.raised_at DESC, w.id DESC LIMIT $5",
                &[&filter.state, &filter.municipality, &filter.area, &filter.id, &filter.limit],
            )
            .await
            .context("listing warnings")?;
        Ok(rows
            .iter()
            .map(|r| WarningSummary {
                id: r.get(0),
                area_key: r.get(1),
                area_name: r.get(2),
                severity: r.get(3),
                kind: r.get(4),
                state: r.get(5),
                raised_at: r.get(6),
                changed_at: r.get(7),
                lifted_at: r.get(8),
                stale: r.get(9),
                municipalities: r.get(10),
                message_en: r.get(11),
                message_da: r.get(12),
                acknowledged_by: r.get(13),
                latest_event: r.get(14),
            })
            .collect())
    }

    /// Which of `codes` are not known municipalities.
    pub async fn unknown_municipalities(&self, codes: &[String]) -> Result<Vec<String>> {
        self.unknown_keys("SELECT 1 FROM municipalities WHERE code = k", codes)
            .await
    }

    /// Which of `keys` are not known flood areas.
    pub async fn unknown_areas(&self, keys: &[String]) -> Result<Vec<String>> {
        self.unknown_keys("SELECT 1 FROM flood_areas WHERE key = k", keys)
            .await
    }

    /// The keys `k` for which `exists` (a query over `k`) finds no row.
    async fn unknown_keys(&self, exists: &'static str, keys: &[String]) -> Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT k FROM unnest($1::text[]) k WHERE NOT EXISTS ({exists})"),
                &[&keys],
            )
            .await
            .context("checking references")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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
                "SELECT area_key, state, municipalities FROM warnings WHERE id = $1 AND category = 'flood'",
                &[&warning_id],
            )
            .await
            .context("reading the warning to acknowledge")?
        else {
            return Ok(Acknowledged::NoSuchWarning);
        };
        let (area_key, state, municipalities): (String, String, Vec<String>) =
            (warning.get(0), warning.get(1), warning.get(2));
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tidemark.area:' || $1))",
            &[&area_key],
        )
        .await
        .context("taking the area lock")?;
        lock_event_sequence(&tx).await?;
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
            &tx,
            &EventInsert {
                warning_id,
                category: "flood",
                area_key: Some(&area_key),
                sensor_key: None,
                kind: "acknowledged",
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
