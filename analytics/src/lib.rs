//! Flood risk, the warning lifecycle, and circular-material and utility statistics.
//!
//! # Layout
//!
//! Nothing yet: this crate is where the flood risk engine (a pure numerical core over arrays, and a
//! runner that LISTENs for `readings_committed`) will live. It is in the workspace now so that the
//! crate graph of ARCHITECTURE.md holds from the start: it may depend on `model` and `store`, and no
//! crate depends on it.
