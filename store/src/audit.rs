//! The audit log: every management action, written in the transaction of the change it records.

use crate::coordination::{self, Notice};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

/// Who did what to which target.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// The acting key's prefix, or `cli`.
    pub actor: String,
    pub role: String,
    /// `webhook.create`, `key.revoke`, `station.put`, ...
    pub action: &'static str,
    pub target: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// Ends a management change: its audit entry, the announcement of the change (`notice`) (so
/// that running stages reload), and the commit.
pub(crate) async fn commit_change(
    tx: deadpool_postgres::Transaction<'_>,
    audit: &Audit,
    notice: Notice,
) -> Result<()> {
    record(&tx, audit).await?;
    coordination::notify(tx.client(), &notice).await?;
    tx.commit().await.context("committing a change")
}

pub(crate) async fn record(tx: &Transaction<'_>, audit: &Audit) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_log (actor, role, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        &[
            &audit.actor,
            &audit.role,
            &audit.action,
            &audit.target,
            &audit.detail,
        ],
    )
    .await
    .context("recording an audit entry")?;
    Ok(())
}

impl Store {
    /// The newest entries first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, at, actor, role, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .context("reading the audit log")?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                role: r.get(3),
                action: r.get(4),
                target: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }
}
