//! PostgreSQL / TimescaleDB storage. The only crate in the workspace that contains SQL.
//!
//! # Layout
//!
//! - [`audit`]: the audit log of management actions.
//! - [`circular`]: material-flow records of the circular data bank.
//! - [`config`]: [`DatabaseConfig`], the `[database]` section of the configuration.
//! - [`schema`]: migrations, capability detection ([`StorageMode`]), TimescaleDB policies and the
//!   partitions of plain PostgreSQL.
//! - [`coordination`]: the NOTIFY channels with their typed payloads, and the advisory locks.
//! - [`keys`]: API keys.
//! - [`webhooks`]: webhook endpoints, their filters and signing secrets.
//! - [`events`]: warning events (appended under the event sequence lock), the warning list and
//!   acknowledgements.
//! - [`outbox`]: the deliveries the dispatcher claims, attempts and gives up.
//! - [`flood`]: flood geography, thresholds, the flood setup, warnings and their evaluation's writes.
//! - [`reference`]: devices, stations and sensors, loaded from `config/` files and looked up by ingest.
//! - [`notify`]: LISTEN on a dedicated connection, and [`notify::Wakeups`] that reconnects.
//! - [`opendata`]: stations, latest values, raw readings in pages, aggregation into buckets.
//! - [`readings`]: the idempotent batch write of readings and rejections, with its notification.
//! - [`utility`]: a meter's summary (mean, peak) and load-duration curve.
//! - [`water`]: leak rules, night flow and suspected leaks of water district meters.
//! - [`rollup`]: the 15-minute, hourly and daily rollups and the dirty list that keeps them exact.
//!
//! [`Store`] holds the connection pool and is cheap to clone.
//!
//! **Invariant:** the relations `readings`, `readings_15m`, `readings_1h`, `readings_1d`,
//! `readings_1h_days`, `devices`, `stations`, `sensors` and `rejected_messages` have the same names
//! and columns in both storage modes; nothing outside this crate knows which mode is active.

pub mod audit;
pub mod circular;
pub mod config;
pub mod coordination;
pub mod credentials;
pub mod events;
pub mod flood;
pub mod forecasts;
pub mod keys;
pub mod notify;
pub mod opendata;
pub mod outbox;
mod pipeline;
pub mod readings;
pub mod reference;
pub mod rollup;
pub mod schema;
pub mod sta;
mod terms;
pub mod utility;
pub mod water;
pub mod webhooks;

pub use config::{DatabaseConfig, TimescaleSetting};
pub use schema::StorageMode;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::Arc;
use tokio_postgres::NoTls;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid database URL {url:?}: {}", chain(cause))]
    BadUrl {
        url: String,
        cause: tokio_postgres::Error,
    },
    #[error("cannot connect to the database at {url}: {}", chain(cause))]
    Connect {
        url: String,
        cause: tokio_postgres::Error,
    },
    #[error("cannot build the connection pool: {0}")]
    PoolBuild(String),
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database migration failed: {0}")]
    Migrate(#[from] refinery::Error),
    #[error("TimescaleDB is required by the configuration but {0}")]
    TimescaleUnavailable(String),
    #[error("inconsistent warning state: {0}")]
    Inconsistent(String),
    #[error("the database has no readings table; run `tidemark migrate` first")]
    NotMigrated,
    #[error("{context}: {}", chain(cause))]
    Query {
        context: &'static str,
        cause: tokio_postgres::Error,
    },
    #[error("reference data: {0}")]
    Reference(#[from] reference::ReferenceError),
    #[error("cannot read {path}: {cause}")]
    ReadFile { path: String, cause: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The SQLSTATE the database answered with, if the error came from the database.
    pub fn sqlstate(&self) -> Option<&str> {
        let Error::Query { cause, .. } = self else {
            return None;
        };
        Some(cause.as_db_error()?.code().code())
    }

    /// A refusal that sending the same statement again cannot change: SQLSTATE class 22 (data
    /// exception), 23 (integrity constraint violation) or 54 (program limit exceeded). Lost
    /// connections, serialization failures, deadlocks, shutdowns and missing resources are not
    /// permanent: they may pass.
    pub fn is_permanent(&self) -> bool {
        self.sqlstate().is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        })
    }

    /// The database's refusal of a value it was given (SQLSTATE class 22, data exception: a NUL
    /// character in text, a number or time out of range): the caller's input, not an outage.
    /// Returns the database's message.
    pub fn bad_input(&self) -> Option<String> {
        let Error::Query { cause, .. } = self else {
            return None;
        };
        let db = cause.as_db_error()?;
        db.code()
            .code()
            .starts_with("22")
            .then(|| db.message().to_owned())
    }
}

/// A database error with the causes it carries ("error connecting to server: Connection refused").
/// The driver's own message often leaves the useful part to its source.
fn chain(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut next = std::error::Error::source(error);
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// Attaches what was being done to a database error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, tokio_postgres::Error> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|cause| Error::Query { context, cause })
    }
}

/// How long a caller waits for a pooled connection before giving up with an error.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The storage handle: a connection pool plus what was learned about the database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The standby's pool, when reads go to one (`database.read_url`).
    read_pool: Option<Pool>,
    mode: StorageMode,
    /// Whether the rollups are continuous aggregates; tables otherwise.
    continuous_rollups: bool,
    partitions: Arc<schema::PartitionCache>,
}

/// A pool of connections made with `config`. A bounded wait turns an exhausted pool into an error
/// that is logged and retried, never a silent hang.
fn new_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| Error::PoolBuild(e.to_string()))
}

impl Store {
    /// Connects, checks the connection, and detects the storage mode of an already migrated database.
    pub async fn connect(config: &DatabaseConfig) -> Result<Store> {
        let pg_config = config.pg_config()?;
        let probe = config::connect_one(config).await?;
        let mode = schema::detect_mode(&probe).await?;
        let continuous_rollups = rollup::continuous(&probe).await?;
        drop(probe);
        let pool = new_pool(pg_config, config.pool_size)?;
        let read_pool = match config.reads() {
            Some(reads) => Some(new_pool(reads.pg_config()?, reads.pool_size)?),
            None => None,
        };
        Ok(Store {
            pool,
            read_pool,
            mode,
            continuous_rollups,
            partitions: Arc::default(),
        })
    }

    pub fn mode(&self) -> StorageMode {
        self.mode
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// A connection for the API's open-data reads: from the standby of `database.read_url` if
    /// there is one, else the primary's. Never for anything that must see its own writes.
    pub(crate) async fn read_client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.read_pool.as_ref().unwrap_or(&self.pool).get().await?)
    }

    /// True when a query round-trips, for readiness checks.
    pub async fn ping(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}
