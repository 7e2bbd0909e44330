//! Webhook endpoints: what each receives (categories, municipalities, areas, a minimum
//! severity), their signing secrets and the rotation of those, and the reference checks of their
//! filters.

use crate::audit::Audit;
use crate::terms::{severity, terms};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use tidemark_model::warning::{Category, Severity};

/// Secrets carry this prefix, as in the Standard Webhooks reference libraries.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret: the scheme asks for at least 24.
const SECRET_BYTES: usize = 32;

/// A new signing secret: `whsec_` and the base64 of 32 bytes from the operating system's
/// generator.
pub fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
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
    pub min_severity: Severity,
    /// Flood, leak, or both.
    pub categories: Vec<Category>,
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
    pub min_severity: Severity,
    pub categories: Vec<Category>,
    pub secret: String,
}

const WEBHOOK_COLUMNS: &str = "id, owner_key, owner_municipality, url, description, municipalities, areas, \
     min_severity, secret, previous_secret, previous_until, created_at, disabled_at, disabled_reason, categories";

fn webhook_row(r: &tokio_postgres::Row) -> Result<WebhookRow> {
    Ok(WebhookRow {
        id: r.get(0),
        owner_key: r.get(1),
        owner_municipality: r.get(2),
        url: r.get(3),
        description: r.get(4),
        municipalities: r.get(5),
        areas: r.get(6),
        min_severity: severity(r, 7)?,
        secret: r.get(8),
        previous_secret: r.get(9),
        previous_until: r.get(10),
        created_at: r.get(11),
        disabled_at: r.get(12),
        disabled_reason: r.get(13),
        categories: terms(r, 14, Category::parse)?,
    })
}

impl Store {
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
                    &hook.min_severity.level(),
                    &hook.secret,
                    &hook.categories.iter().map(|c| c.name()).collect::<Vec<_>>(),
                ],
            )
            .await
            .context("registering a webhook")?;
        let row = webhook_row(&row)?;
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
        rows.iter().map(webhook_row).collect()
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
        row.as_ref().map(webhook_row).transpose()
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
        row.as_ref().map(webhook_row).transpose()
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
}
