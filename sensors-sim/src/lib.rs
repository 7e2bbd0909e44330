//! Simulated devices that publish over MQTT like real ones, and replay of recorded data.
//!
//! # Layout
//!
//! - [`scenario`]: scenario files: stations, devices, sensors and the process behind each.
//! - [`process`]: the physical processes (rain cells, linear reservoirs, tides and surges, load
//!   profiles, solar output, heat meters, water demand, waste containers). Pure.
//! - [`engine`]: steps a scenario through simulated time into messages, with faults. Deterministic.
//! - [`replay`]: the recorded data sets (`tests/fixtures/`) as readings with their reference data.
//! - [`publish`]: one MQTT connection per device; paces simulated time against the wall clock.
//! - [`load`]: a load generator for benchmarks and loss tests.

pub mod engine;
pub mod forecast;
pub mod load;
pub mod process;
pub mod publish;
pub mod replay;
pub mod scenario;
