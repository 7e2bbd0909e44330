//! Real services for tests and benchmarks, never part of the product: private Mosquitto brokers
//! on free loopback ports started from the project's own configuration, a fresh PostgreSQL
//! database per test, private PostgreSQL clusters, TCP proxies that cut connections, and the
//! receiving ends of warning delivery.
//!
//! - [`admin`]: creating, listing and dropping whole databases.
//! - [`cap`]: the CAP 1.2 rules a message is checked against.
//! - [`broker`]: [`Broker`], a private Mosquitto (test, or production configuration with TLS).
//! - [`database`]: [`TestDatabase`] on [`test_server`].
//! - [`nats`]: [`Nats`], private nats-server nodes with JetStream and MQTT, one or a cluster.
//! - [`postgres`]: [`PrivatePostgres`], a cluster of the test's own to stop and start.
//! - [`proxy`]: [`TcpProxy`] and [`CommitCutter`].
//! - [`peers`]: webhook receiver, SSE client, MQTT subscriber.

pub mod admin;
pub mod broker;
pub mod cap;
pub mod database;
pub mod nats;
pub mod peers;
pub mod postgres;
pub mod proxy;

pub use broker::Broker;
pub use database::{test_server, TestDatabase};
pub use nats::Nats;
pub use postgres::PrivatePostgres;
pub use proxy::{CommitCutter, TcpProxy};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mosquitto not found (looked for {0}); install it with `apt-get install mosquitto`")]
    NoMosquitto(String),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error("mosquitto did not accept connections on port {port} within 10s; its log: {log}")]
    BrokerNotReady { port: u16, log: String },
    #[error("database: {0}")]
    Store(#[from] tidemark_store::Error),
    #[error("{context}: {cause}")]
    Admin {
        context: &'static str,
        cause: tokio_postgres::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |cause| Error::Io { context, cause }
}

/// A file of the config folder.
pub(crate) fn read_config(name: &str) -> Result<String, Error> {
    let path = config_dir().join(name);
    std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
}

/// The folder holding `default.toml`, `mosquitto-test.conf` and the reference files.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit crate lives in the workspace")
        .join("config")
}

/// A free TCP port on loopback, as the kernel hands it out.
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding port 0"))?;
    Ok(listener
        .local_addr()
        .map_err(io("reading the bound port"))?
        .port())
}
