//! The shared vocabulary of Tidemark. No I/O: nothing here opens a socket, a file or a database.
//!
//! # Layout
//!
//! - [`broker`]: [`broker::BrokerConfig`], where the MQTT broker is.
//! - [`certificate`]: the common name and validity of a device's X.509 client certificate.
//! - [`dynsec`]: device logins in Mosquitto's dynamic-security plugin (its commands and answers).
//! - [`id`]: [`DeviceId`] and [`SensorKey`], the identifiers devices use on the wire.
//! - [`unit`]: [`Unit`], parsed from Tidemark and SenML spellings, and conversion within a [`Dimension`].
//! - [`quantity`]: [`Quantity`], what a sensor measures, with its canonical unit and physical range.
//! - [`reading`]: [`Reading`], a validated value in canonical units, and its [`Quality`] flags.
//! - [`wire`]: the wire formats (Tidemark JSON v1, SenML JSON per RFC 8428) and their total decoder.
//! - [`time`]: European civil time (summer-time rule) without a time-zone database.
//! - [`topic`]: MQTT topic names for readings.
//! - [`reference`]: devices, stations and sensors as reference files write them.
//! - [`validate`]: the rules that turn a decoded [`wire::WireReading`] into a [`Reading`] or a [`Rejection`].
//! - [`duration`]: human-friendly durations (`"10m"`, `"30d"`) for configuration files.
//! - [`secret`]: [`Secret`], a value from the environment that never prints.
//! - [`waste`]: the European List of Waste codes of packaging and municipal waste.
//! - [`warning`]: the warning vocabulary (severity, kind, state, category, event kind), the alert
//!   topics, and [`warning::EventBody`], the JSON of a warning event on every channel.
//! - [`random`]: [`random::SeededRng`], reproducible uniform draws from a seed.
//! - [`network`]: networks, and which addresses an outbound request may reach.
//! - [`odata`]: the SensorThings query language (`$filter`, `$expand`, ...), parsed.
//! - [`forecast`]: forecasts as they arrive (topic, JSON v1) and their validation.
//! - [`verification`]: warnings scored against the flood events the readings show (hits, misses,
//!   false alarms, lead times, detection and false alarm rates).

pub mod broker;
pub mod certificate;
pub mod duration;
pub mod dynsec;
pub mod forecast;
pub mod id;
pub mod network;
pub mod odata;
pub mod quantity;
pub mod random;
pub mod reading;
pub mod reference;
pub mod secret;
pub mod time;
pub mod topic;
pub mod unit;
pub mod validate;
pub mod verification;
pub mod warning;
pub mod waste;
pub mod wire;

pub use id::{DeviceId, SensorKey};
pub use quantity::Quantity;
pub use reading::{Quality, Reading};
pub use secret::Secret;
pub use unit::{Dimension, Unit};
pub use validate::{RejectReason, Rejection};
