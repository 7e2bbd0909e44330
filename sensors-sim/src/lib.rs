//! Simulated devices that publish over MQTT like real ones.
//!
//! # Layout
//!
//! - [`load`]: a load generator: many devices publishing Tidemark JSON readings at QoS 1 as fast as
//!   the broker takes them, for benchmarks and loss tests.

pub mod load;
