//! Ingest: take device messages (an MQTT subscription, or a JetStream pull consumer), decode,
//! validate, batch, write once, acknowledge after commit.
//!
//! # Layout
//!
//! - [`config`]: [`IngestConfig`], the `[ingest]` section.
//! - [`message`]: one message to rows and rejections (pure).
//! - [`metrics`]: [`Metrics`], what ingest counts.
//! - [`service`]: [`run`], the MQTT session or JetStream puller, and the batch writer.
//! - [`import`]: readings from CSV and Parquet files, through the same checks and batch write.
//!
//! **Invariant:** a message is acknowledged to the broker only after the transaction holding its
//! readings (or its rejection) has committed. Anything not yet acknowledged is redelivered by the
//! broker after a crash or reconnect, and the unique key of `readings` absorbs the copy.

pub mod config;
pub mod forecast;
pub mod import;
pub mod message;
pub mod metrics;
pub mod service;

pub use config::IngestConfig;
pub use metrics::Metrics;
pub use service::{run, Error, Settings};
