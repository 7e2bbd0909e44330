//! The `tidemark` binary's library: configuration layering, the wiring of the stages into one
//! process, the benchmarks, and the test kit that starts real services.
//!
//! # Layout
//!
//! - [`config`]: [`config::Config`], the layered configuration of every stage.
//! - [`app`]: `migrate`, `ingest`, `api` and `run` as the CLI calls them.
//! - [`keys`]: `tidemark keys`, creating, listing and revoking API keys.
//! - [`bench`]: `tidemark bench ingest`.
//! - [`bench_analytics`]: `tidemark bench analytics`.
//! - [`bench_api`]: `tidemark bench api`.
//! - [`bench_delivery`]: `tidemark bench delivery`.
//! - [`sim`]: `tidemark sim` and `tidemark replay`.
//! - [`verify`]: `tidemark verify`, warning verification for a period.
//! - [`peers`]: the receiving ends of warning delivery (webhook receiver, SSE client, MQTT
//!   subscriber), for tests and benchmarks.
//! - [`testkit`]: a private Mosquitto and fresh databases, for tests and benchmarks.

pub mod app;
pub mod bench;
pub mod bench_analytics;
pub mod bench_api;
pub mod bench_delivery;
pub mod config;
pub mod keys;
pub mod peers;
pub mod sim;
pub mod testkit;
pub mod verify;
