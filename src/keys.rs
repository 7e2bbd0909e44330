//! `tidemark keys`: create, list and revoke API keys. A key is printed once, at creation; the
//! database keeps only its hash.

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use tidemark_store::keys::Role;
use tidemark_store::{DatabaseConfig, Store};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once).
    Create {
        /// researcher, utility, municipality, operator, producer or device.
        #[arg(long)]
        role: String,
        /// The municipality code a municipality key acts for (e.g. 0751 for Aarhus).
        #[arg(long)]
        municipality: Option<String>,
        /// The forecast source a producer key posts for (e.g. dmi).
        #[arg(long)]
        source: Option<String>,
        /// The device a device key posts SensorThings Observations for (its key, e.g.
        /// gauge-aarhus-01).
        #[arg(long)]
        device: Option<String>,
        /// What the key is for, shown in lists.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime ("90d", "12h"); without it the key lasts until revoked.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List keys (prefixes, roles, states; never the keys).
    List,
    /// Revoke a key by its prefix (the 12 hex digits after `tmk_`).
    Revoke { prefix: String },
}

pub async fn run(database: &DatabaseConfig, command: KeysCommand) -> anyhow::Result<()> {
    let store = Store::connect(database).await?;
    match command {
        KeysCommand::Create {
            role,
            municipality,
            source,
            device,
            label,
            expires_in,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!(
                    "role {role:?} is not one of researcher, utility, municipality, operator, producer, device"
                )
            })?;
            let scope = tidemark_api::auth::KeyScope {
                municipality,
                source,
                device,
            };
            if let Some((field, owner)) = scope.mismatch(role) {
                anyhow::bail!(
                    "--{field} is required for, and only for, a {} key",
                    owner.name()
                );
            }
            if let Some(device) = &scope.device {
                anyhow::ensure!(
                    store.device_enabled(device).await?.is_some(),
                    "device {device} is not registered (config/reference or the API)"
                );
            }
            if let Some(source) = &scope.source {
                tidemark_model::DeviceId::parse(source)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--source {source:?}"))?;
            }
            if let Some(code) = &scope.municipality {
                let unknown = store
                    .unknown_municipalities(std::slice::from_ref(code))
                    .await?;
                anyhow::ensure!(
                    unknown.is_empty(),
                    "municipality {code} is not loaded; run `tidemark migrate` first"
                );
            }
            let expires_at = match expires_in {
                Some(text) => {
                    let lifetime = tidemark_model::duration::parse(&text)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("--expires-in {text:?}"))?;
                    Some(Utc::now() + chrono::Duration::from_std(lifetime)?)
                }
                None => None,
            };
            let actor = tidemark_api::auth::Actor::cli();
            let (key, row) = tidemark_api::auth::create_scoped_key(
                &store, role, scope, label, expires_at, &actor,
            )
            .await?;
            println!("{key}");
            eprintln!(
                "created {} key {} (shown once; only its hash is stored){}",
                row.role.name(),
                row.prefix,
                row.expires_at
                    .map(|at| format!(", expires {at}"))
                    .unwrap_or_default()
            );
        }
        KeysCommand::List => {
            for key in store.api_keys().await? {
                let state = match (key.revoked_at, key.expires_at) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(at)) if at <= Utc::now() => format!("expired {at}"),
                    (None, Some(at)) => format!("expires {at}"),
                    (None, None) => "active".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    key.prefix,
                    key.role.name(),
                    // What the key acts for: a municipality, a forecast source or a device.
                    key.municipality
                        .as_deref()
                        .or(key.source.as_deref())
                        .or(key.device.as_deref())
                        .unwrap_or("-"),
                    state,
                    key.label
                );
            }
        }
        KeysCommand::Revoke { prefix } => {
            anyhow::ensure!(
                store
                    .revoke_api_key(
                        &prefix,
                        Utc::now(),
                        &tidemark_api::auth::Actor::cli().audit(
                            "key.revoke",
                            format!("key {prefix}"),
                            serde_json::json!({}),
                        ),
                    )
                    .await?,
                "no active key with the prefix {prefix}"
            );
            eprintln!("revoked key {prefix}");
        }
    }
    Ok(())
}
