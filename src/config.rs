//! Layered configuration: the base file (`config/default.toml`), then an environment file
//! (`config/<env>.toml`, chosen by `--env` or `TIDEMARK_ENV`), then `TIDEMARK__SECTION__KEY`
//! environment variables. Unknown keys are errors that name the key. Secrets (`database.password`,
//! `mqtt.password`) are accepted only from the environment.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tidemark_api::ApiConfig;
use tidemark_ingest::IngestConfig;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::DatabaseConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL / TimescaleDB.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The MQTT broker.
    #[serde(default)]
    pub mqtt: BrokerConfig,
    /// The ingest stage.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Reference data files.
    #[serde(default)]
    pub reference: ReferenceConfig,
    /// Flood risk.
    #[serde(default)]
    pub analytics: tidemark_analytics::runner::AnalyticsConfig,
    /// Delivery of warnings: webhooks, MQTT alerts, retries.
    #[serde(default)]
    pub delivery: tidemark_delivery::DeliveryConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// TOML files of devices, stations and sensors, loaded (idempotently) at start and by
    /// `tidemark migrate`. Relative paths are relative to the base configuration file's folder.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

const SECRET_KEYS: [&str; 3] = ["database.password", "mqtt.password", "ingest.nats.password"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("{key} is a secret and may only be set in the environment (TIDEMARK__{}), not in {file}", key.replace('.', "__").to_uppercase())]
    SecretInFile { key: &'static str, file: String },
    #[error("configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Figment(#[from] Box<figment::Error>),
}

impl Config {
    /// Loads the layers. `env` names the environment file next to `base` (`config/<env>.toml`).
    pub fn load(base: &Path, env: Option<&str>) -> Result<Config, ConfigError> {
        if !base.exists() {
            return Err(ConfigError::Missing(base.to_owned()));
        }
        let mut files = vec![base.to_owned()];
        if let Some(env) = env.filter(|e| !e.is_empty()) {
            let path = base.with_file_name(format!("{env}.toml"));
            if !path.exists() {
                return Err(ConfigError::Missing(path));
            }
            files.push(path);
        }
        let mut figment = Figment::new();
        for file in &files {
            let layer = Figment::from(Toml::file(file));
            for key in SECRET_KEYS {
                if layer.find_value(key).is_ok() {
                    return Err(ConfigError::SecretInFile {
                        key,
                        file: file.display().to_string(),
                    });
                }
            }
            figment = figment.merge(Toml::file(file));
        }
        let figment = figment.merge(Env::prefixed("TIDEMARK__").split("__"));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        let folder = base.parent().unwrap_or(Path::new("."));
        let paths = config
            .reference
            .files
            .iter_mut()
            .chain(config.analytics.flood_files.iter_mut())
            .chain(std::iter::once(&mut config.analytics.municipalities));
        for file in paths {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
        }
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Pure checks across sections.
    pub fn validate(&self) -> Result<(), String> {
        self.database.validate()?;
        self.ingest.validate()?;
        tidemark_model::topic::ReadingsTopics::new(&self.mqtt.topic_prefix)
            .map_err(|e| e.to_string())?;
        tidemark_api::ApiSettings::new(
            &self.api,
            self.delivery.validate()?,
            self.delivery.rotation_grace,
            &self.mqtt.topic_prefix,
        )?;
        if self.mqtt.max_packet_bytes <= self.ingest.max_payload_bytes {
            return Err(format!(
                "mqtt.max_packet_bytes ({}) must exceed ingest.max_payload_bytes ({})",
                self.mqtt.max_packet_bytes, self.ingest.max_payload_bytes
            ));
        }
        Ok(())
    }

    pub fn analytics_settings(&self) -> tidemark_analytics::runner::Settings {
        tidemark_analytics::runner::Settings {
            analytics: self.analytics.clone(),
            database: self.database.clone(),
            topic_prefix: self.mqtt.topic_prefix.clone(),
        }
    }

    /// What the `/api/v1` handlers use; valid once [`Config::validate`] passed.
    pub fn api_settings(&self) -> Result<tidemark_api::ApiSettings, String> {
        let mut settings = tidemark_api::ApiSettings::new(
            &self.api,
            self.delivery.validate()?,
            self.delivery.rotation_grace,
            &self.mqtt.topic_prefix,
        )?;
        settings.broker_admin = self.api.device_credentials.then(|| self.mqtt.clone());
        settings.time_rules = self.ingest.time_rules();
        Ok(settings)
    }

    pub fn ingest_settings(&self) -> tidemark_ingest::Settings {
        tidemark_ingest::Settings {
            ingest: self.ingest.clone(),
            mqtt: self.mqtt.clone(),
            database: self.database.clone(),
        }
    }

    pub fn delivery_settings(&self) -> tidemark_delivery::Settings {
        tidemark_delivery::Settings {
            delivery: self.delivery.clone(),
            mqtt: self.mqtt.clone(),
            database: self.database.clone(),
            public_url: self.api.public_url.trim_end_matches('/').to_owned(),
        }
    }
}

/// The options every binary takes to find its configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Base configuration file. Keys may be overridden by config/<env>.toml and by
    /// TIDEMARK__SECTION__KEY environment variables.
    #[arg(
        long,
        global = true,
        default_value = "config/default.toml",
        env = "TIDEMARK_CONFIG"
    )]
    pub config: PathBuf,
    /// Environment file to layer over the base file: config/<ENV>.toml.
    #[arg(long, global = true, env = "TIDEMARK_ENV")]
    pub env: Option<String>,
}

impl ConfigArgs {
    /// The configuration these options name, layered and checked.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config, self.env.as_deref())
    }
}

#[cfg(test)]
// figment's own Jail API returns its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "default.toml",
                "[database]\npool_size = 4\n[mqtt]\nport = 1884\n",
            )?;
            jail.create_file("ci.toml", "[mqtt]\nport = 1885\n")?;
            jail.set_env("TIDEMARK__DATABASE__POOL_SIZE", "6");
            let config = Config::load(Path::new("default.toml"), Some("ci")).unwrap();
            assert_eq!(config.database.pool_size, 6);
            assert_eq!(config.mqtt.port, 1885);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[ingest]\nbatch_max_mesages = 4\n")?;
            let error = Config::load(Path::new("default.toml"), None)
                .unwrap_err()
                .to_string();
            assert!(error.contains("batch_max_mesages"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_only_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[database]\npassword = \"hunter2\"\n")?;
            let error = Config::load(Path::new("default.toml"), None)
                .unwrap_err()
                .to_string();
            assert!(error.contains("TIDEMARK__DATABASE__PASSWORD"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");

            jail.create_file("default.toml", "")?;
            jail.set_env("TIDEMARK__DATABASE__PASSWORD", "canary-secret");
            let config = Config::load(Path::new("default.toml"), None).unwrap();
            assert!(!format!("{config:?}").contains("canary-secret"));
            Ok(())
        });
    }

    #[test]
    fn missing_files_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("default.toml", "")?;
            let error = Config::load(Path::new("default.toml"), Some("prod"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("prod.toml"), "{error}");
            Ok(())
        });
    }
}
