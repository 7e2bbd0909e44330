//! API keys: their roles, the hashes they are looked up by (by prefix), expiry and revocation.

use crate::audit::Audit;
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Utc};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Researcher,
    Utility,
    Municipality,
    Operator,
    /// Posts forecasts for its one source.
    Producer,
    /// Posts SensorThings Observations for its one device.
    Device,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Utility => "utility",
            Role::Municipality => "municipality",
            Role::Operator => "operator",
            Role::Producer => "producer",
            Role::Device => "device",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Researcher,
            Role::Utility,
            Role::Municipality,
            Role::Operator,
            Role::Producer,
            Role::Device,
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
    /// The forecast source a producer key posts for.
    pub source: Option<String>,
    /// The device (its key) a device key posts for.
    pub device: Option<String>,
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
    /// Required for, and only for, a producer key; registered as a source if new.
    pub source: Option<String>,
    /// Required for, and only for, a device key: a registered device's key.
    pub device: Option<String>,
    pub label: String,
    pub expires_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str =
    "id, prefix, hash, role, municipality, label, created_at, expires_at, revoked_at, source, device";

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
        source: r.get(9),
        device: r.get(10),
    })
}

impl Store {
    pub async fn create_api_key(&self, key: &NewApiKey, audit: &Audit) -> Result<ApiKeyRow> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin creating a key")?;
        crate::audit::record(&tx, audit).await?;
        if let Some(source) = &key.source {
            tx.execute(
                "INSERT INTO forecast_sources (name, label) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[source, &key.label],
            )
            .await
            .context("registering a forecast source")?;
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO api_keys (prefix, hash, role, municipality, label, expires_at, source, device) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {KEY_COLUMNS}"
                ),
                &[
                    &key.prefix,
                    &key.hash,
                    &key.role.name(),
                    &key.municipality,
                    &key.label,
                    &key.expires_at,
                    &key.source,
                    &key.device,
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
}
