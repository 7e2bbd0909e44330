//! The `[database]` section of the configuration.

use crate::{Error, Result};
use serde::Deserialize;
use std::str::FromStr;
use std::time::Duration;
use tidemark_model::{duration, Secret};

/// Whether to use TimescaleDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimescaleSetting {
    /// Use TimescaleDB when the server offers the extension, plain PostgreSQL otherwise.
    #[default]
    Auto,
    /// Fail at start-up unless TimescaleDB can be used.
    Required,
    /// Never use TimescaleDB.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL without a password: `postgres://user@host:port/database`.
    #[serde(default = "default_url")]
    pub url: String,
    /// A streaming standby the API's open-data reads (stations, latest values, readings and
    /// aggregates) may go to, sparing the primary; everything else stays on `url`. Same database
    /// name, password and options.
    #[serde(default)]
    pub read_url: Option<String>,
    /// The password, if the server asks for one. Only from the environment:
    /// `TIDEMARK__DATABASE__PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// `auto`, `required` or `off`.
    #[serde(default)]
    pub timescaledb: TimescaleSetting,
    /// TimescaleDB: compress chunks once their data is older than this.
    #[serde(default = "default_compress_after", with = "duration::serde_str")]
    pub compress_after: Duration,
    /// Drop readings older than this (a TimescaleDB retention policy, or whole monthly partitions on
    /// plain PostgreSQL). Unset keeps everything.
    #[serde(default, with = "duration::option_str")]
    pub retention: Option<Duration>,
    /// Delete forecast issues made longer ago than this (both modes).
    #[serde(default = "default_forecast_retention", with = "duration::serde_str")]
    pub forecast_retention: Duration,
    /// Plain PostgreSQL: how many monthly partitions to keep created ahead of the current month.
    #[serde(default = "default_partitions_ahead")]
    pub partitions_ahead: u32,
    /// How long to wait for a connection before giving up.
    #[serde(default = "default_connect_timeout", with = "duration::serde_str")]
    pub connect_timeout: Duration,
    /// How often the 15-minute, hourly and daily rollups catch up with changed readings. Queries
    /// are exact in between; they read the days not yet caught up from the raw readings.
    #[serde(default = "default_rollup_refresh", with = "duration::serde_str")]
    pub rollup_refresh: Duration,
}

fn default_url() -> String {
    "postgres://postgres@127.0.0.1:5432/tidemark".to_owned()
}
const fn default_pool_size() -> usize {
    8
}
const fn default_compress_after() -> Duration {
    Duration::from_secs(7 * 86_400)
}
const fn default_forecast_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}
const fn default_partitions_ahead() -> u32 {
    3
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_rollup_refresh() -> Duration {
    Duration::from_secs(10)
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: default_url(),
            read_url: None,
            password: None,
            pool_size: default_pool_size(),
            timescaledb: TimescaleSetting::default(),
            compress_after: default_compress_after(),
            retention: None,
            forecast_retention: default_forecast_retention(),
            partitions_ahead: default_partitions_ahead(),
            connect_timeout: default_connect_timeout(),
            rollup_refresh: default_rollup_refresh(),
        }
    }
}

impl DatabaseConfig {
    /// The same configuration pointed at another database on the same server.
    pub fn with_database(&self, name: &str) -> DatabaseConfig {
        let mut copy = self.clone();
        // Parameters after the name (`?target_session_attrs=read-write`) stay.
        let (url, query) = match self.url.split_once('?') {
            Some((url, query)) => (url, Some(query)),
            None => (self.url.as_str(), None),
        };
        let base = match url.rfind('/') {
            Some(slash) if slash > "postgres://".len() => &url[..slash],
            _ => url,
        };
        copy.url = match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        };
        copy
    }

    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let mut config =
            tokio_postgres::Config::from_str(&self.url).map_err(|cause| Error::BadUrl {
                url: self.url.clone(),
                cause,
            })?;
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config.connect_timeout(self.connect_timeout);
        config.application_name("tidemark");
        // No JIT compilation: Tidemark's queries are many small index lookups, and a planner that
        // overestimates one (500 sensors at the readings per sensor of the busiest) compiles it
        // for 100 to 200 ms, every time, which is the whole of a warning's latency budget.
        let options = match config.get_options() {
            Some(options) if !options.trim().is_empty() => format!("{options} -c jit=off"),
            _ => "-c jit=off".to_owned(),
        };
        config.options(&options);
        Ok(config)
    }

    /// The configuration of the standby reads go to, if `read_url` names one.
    pub fn reads(&self) -> Option<DatabaseConfig> {
        self.read_url.as_ref().map(|url| DatabaseConfig {
            url: url.clone(),
            read_url: None,
            ..self.clone()
        })
    }

    /// Pure checks, before any connection is made.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(reads) = self.reads() {
            reads
                .validate()
                .map_err(|e| e.replace("database.url", "database.read_url"))?;
        }
        let config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| format!("database.url {:?} is not a PostgreSQL URL: {e}", self.url))?;
        if config.get_password().is_some() {
            return Err(
                "database.url must not contain a password; set TIDEMARK__DATABASE__PASSWORD instead"
                    .to_owned(),
            );
        }
        if self.pool_size == 0 {
            return Err("database.pool_size must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// One connection outside the pool; the caller drives the connection.
pub(crate) async fn connect_raw(
    config: &DatabaseConfig,
) -> Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    config
        .pg_config()?
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|cause| Error::Connect {
            url: config.url.clone(),
            cause,
        })
}

/// One connection outside the pool, with its driver task spawned.
pub async fn connect_one(config: &DatabaseConfig) -> Result<tokio_postgres::Client> {
    let (client, connection) = connect_raw(config).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_passwords_and_bad_urls() {
        let mut config = DatabaseConfig::default();
        assert!(config.validate().is_ok());
        config.url = "postgres://u:hunter2@localhost/db".into();
        assert!(config
            .validate()
            .unwrap_err()
            .contains("TIDEMARK__DATABASE__PASSWORD"));
        config.url = "postgres://localhost:notaport/db".into();
        assert!(config.validate().is_err());
    }

    #[test]
    fn connections_never_compile_queries() {
        let config = DatabaseConfig::default()
            .pg_config()
            .expect("the default URL parses");
        assert_eq!(config.get_options(), Some("-c jit=off"));
        // Options of the URL's own are kept.
        let config = DatabaseConfig {
            url: "postgres://postgres@127.0.0.1/db?options=-c%20statement_timeout%3D5s".into(),
            ..DatabaseConfig::default()
        }
        .pg_config()
        .expect("the URL parses");
        assert_eq!(
            config.get_options(),
            Some("-c statement_timeout=5s -c jit=off")
        );
    }

    #[test]
    fn a_read_url_is_checked_like_the_url() {
        let config = DatabaseConfig {
            read_url: Some("postgres://tidemark:secret@standby:5432/tidemark".to_owned()),
            ..DatabaseConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(
            error.starts_with("database.read_url must not contain a password"),
            "{error}"
        );
        let reads = DatabaseConfig {
            read_url: Some("postgres://tidemark@standby:5432/tidemark".to_owned()),
            ..DatabaseConfig::default()
        }
        .reads()
        .unwrap();
        assert_eq!(reads.url, "postgres://tidemark@standby:5432/tidemark");
        assert!(reads.read_url.is_none());
    }

    #[test]
    fn with_database_swaps_the_name() {
        let config = DatabaseConfig::default().with_database("other");
        assert_eq!(config.url, "postgres://postgres@127.0.0.1:5432/other");
        let several = DatabaseConfig {
            url: "postgres://tidemark@10.0.0.1:5432,10.0.0.2:5432/tidemark?target_session_attrs=read-write"
                .to_owned(),
            ..DatabaseConfig::default()
        };
        assert_eq!(
            several.with_database("other").url,
            "postgres://tidemark@10.0.0.1:5432,10.0.0.2:5432/other?target_session_attrs=read-write"
        );
    }
}
