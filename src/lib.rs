//! The `tidemark` binary's library: configuration layering and the wiring of the stages into one
//! process. The test kit (`tidemark-testkit`) and the benchmarks (`tidemark-bench`) are crates of
//! their own, so nothing here is there only for tests.
//!
//! # Layout
//!
//! - [`config`]: [`config::Config`], the layered configuration of every stage.
//! - [`app`]: `migrate`, `ingest`, `api` and `run` as the CLI calls them.
//! - [`keys`]: `tidemark keys`, creating, listing and revoking API keys.
//! - [`sim`]: `tidemark sim` and `tidemark replay`.
//! - [`verify`]: `tidemark verify`, warning verification for a period.

pub mod app;
pub mod config;
pub mod import;
pub mod keys;
pub mod sim;
pub mod verify;
