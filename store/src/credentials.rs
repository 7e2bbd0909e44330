//! Device credentials: the record of each password and client certificate issued to a device,
//! and their revocation. The broker holds the logins; a change here is committed only once the
//! broker has made it (the caller's `broker` step runs inside the transaction), so that the
//! record never claims a login the broker does not have, and the audit entry goes with it.

use crate::audit::Audit;
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Utc};
use std::future::Future;

/// How a device logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Password,
    Certificate,
}

impl CredentialKind {
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Certificate => "certificate",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialKind> {
        [CredentialKind::Password, CredentialKind::Certificate]
            .into_iter()
            .find(|k| k.name() == text)
    }
}

/// A credential as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
    pub id: i64,
    pub device: String,
    pub kind: CredentialKind,
    /// A certificate's SHA-256 fingerprint (hex of its DER).
    pub fingerprint: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub issued_at: DateTime<Utc>,
    pub issued_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// A credential to issue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCredential {
    pub kind: CredentialKind,
    pub fingerprint: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
}

/// Why a credential change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError<E> {
    #[error("there is no device {0}")]
    UnknownDevice(String),
    #[error("device {device} has no credential {id} in force")]
    NotInForce { device: String, id: i64 },
    /// The broker step failed; nothing was recorded.
    #[error("{0}")]
    Broker(E),
    #[error(transparent)]
    Store(#[from] Error),
}

const COLUMNS: &str = "c.id, d.key, c.kind, c.fingerprint, c.not_after, c.issued_at, c.issued_by, \
                       c.revoked_at, c.revoked_by";

fn row(r: &tokio_postgres::Row) -> Result<CredentialRow> {
    let kind: String = r.get(2);
    Ok(CredentialRow {
        id: r.get(0),
        device: r.get(1),
        kind: CredentialKind::parse(&kind)
            .ok_or_else(|| Error::Inconsistent(format!("unknown credential kind {kind:?}")))?,
        fingerprint: r.get(3),
        not_after: r.get(4),
        issued_at: r.get(5),
        issued_by: r.get(6),
        revoked_at: r.get(7),
        revoked_by: r.get(8),
    })
}

impl Store {
    /// Issues `new` to `device`, revoking the credential in force before it, if any: locks the
    /// device, records both and the audit entry, runs `broker` and commits only if it succeeds.
    /// Returns the new credential and the one it replaced.
    pub async fn issue_device_credential<F, Fut, E>(
        &self,
        device: &str,
        new: &NewCredential,
        audit: &Audit,
        broker: F,
    ) -> std::result::Result<(CredentialRow, Option<CredentialRow>), CredentialError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
    {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin issuing a credential")?;
        crate::coordination::lock_credentials_shared(&tx).await?;
        let device_id: i32 = tx
            .query_opt(
                "SELECT id FROM devices WHERE key = $1 FOR UPDATE",
                &[&device],
            )
            .await
            .context("locking a device")?
            .ok_or_else(|| CredentialError::UnknownDevice(device.to_owned()))?
            .get(0);
        let replaced = tx
            .query_opt(
                &format!(
                    "UPDATE device_credentials c SET revoked_at = now(), revoked_by = $2 \
                     FROM devices d WHERE d.id = c.device_id AND c.device_id = $1 \
                     AND c.revoked_at IS NULL RETURNING {COLUMNS}"
                ),
                &[&device_id, &audit.actor],
            )
            .await
            .context("revoking the credential in force")?
            .map(|r| row(&r))
            .transpose()?;
        let issued = tx
            .query_one(
                &format!(
                    "WITH c AS (INSERT INTO device_credentials \
                         (device_id, kind, fingerprint, not_after, issued_by) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING *) \
                     SELECT {COLUMNS} FROM c JOIN devices d ON d.id = c.device_id"
                ),
                &[
                    &device_id,
                    &new.kind.name(),
                    &new.fingerprint,
                    &new.not_after,
                    &audit.actor,
                ],
            )
            .await
            .context("recording a credential")?;
        let issued = row(&issued)?;
        crate::audit::record(&tx, audit).await?;
        broker().await.map_err(CredentialError::Broker)?;
        tx.commit().await.context("commit issuing a credential")?;
        Ok((issued, replaced))
    }

    /// Revokes `device`'s credential `id` if it is in force: records it and the audit entry,
    /// runs `broker` and commits only if it succeeds.
    pub async fn revoke_device_credential<F, Fut, E>(
        &self,
        device: &str,
        id: i64,
        audit: &Audit,
        broker: F,
    ) -> std::result::Result<CredentialRow, CredentialError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
    {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin revoking a credential")?;
        crate::coordination::lock_credentials_shared(&tx).await?;
        let revoked = tx
            .query_opt(
                &format!(
                    "UPDATE device_credentials c SET revoked_at = now(), revoked_by = $3 \
                     FROM devices d WHERE d.id = c.device_id AND d.key = $1 AND c.id = $2 \
                     AND c.revoked_at IS NULL RETURNING {COLUMNS}"
                ),
                &[&device, &id, &audit.actor],
            )
            .await
            .context("revoking a credential")?
            .ok_or_else(|| CredentialError::NotInForce {
                device: device.to_owned(),
                id,
            })?;
        let revoked = row(&revoked)?;
        crate::audit::record(&tx, audit).await?;
        broker().await.map_err(CredentialError::Broker)?;
        tx.commit().await.context("commit revoking a credential")?;
        Ok(revoked)
    }

    /// Every credential of `device`, newest first; None if there is no such device.
    pub async fn device_credentials(&self, device: &str) -> Result<Option<Vec<CredentialRow>>> {
        let client = self.client().await?;
        let known = client
            .query_opt("SELECT 1 FROM devices WHERE key = $1", &[&device])
            .await
            .context("looking up a device")?;
        if known.is_none() {
            return Ok(None);
        }
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM device_credentials c JOIN devices d \
                     ON d.id = c.device_id WHERE d.key = $1 ORDER BY c.id DESC"
                ),
                &[&device],
            )
            .await
            .context("reading a device's credentials")?;
        rows.iter().map(row).collect::<Result<Vec<_>>>().map(Some)
    }

    /// Runs `reconcile` with every credential in force (by device), while no credential
    /// changes: for bringing the broker's logins in line with the record.
    pub async fn with_credentials_in_force<F, Fut, T>(&self, reconcile: F) -> Result<T>
    where
        F: FnOnce(Vec<CredentialRow>) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin reading the credentials in force")?;
        crate::coordination::lock_credentials_exclusive(&tx).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM device_credentials c JOIN devices d \
                     ON d.id = c.device_id WHERE c.revoked_at IS NULL ORDER BY d.key"
                ),
                &[],
            )
            .await
            .context("reading the credentials in force")?;
        let in_force = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
        let outcome = reconcile(in_force).await;
        tx.commit()
            .await
            .context("commit reading the credentials in force")?;
        Ok(outcome)
    }
}
