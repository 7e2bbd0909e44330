//! The outbox the dispatcher drains: claims with a lease, attempts fenced by the attempt count,
//! retries and dead letters (with the `undelivered` event they record).

use crate::coordination;
use crate::events::append_undelivered;
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use std::time::Duration;

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

impl Store {
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
                let sequence = coordination::lock_event_sequence(&tx).await?;
                let detail = serde_json::json!({
                    "outbox_id": attempt.outbox_id,
                    "channel": channel,
                    "undelivered_event": event_id,
                    "attempts": attempt.attempt,
                });
                append_undelivered(&sequence, event_id, *at, &channel, &detail).await?;
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
}
