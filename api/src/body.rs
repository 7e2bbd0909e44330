//! The warning vocabulary as the API spells it. The event body itself
//! ([`tidemark_model::warning::EventBody`]) is the same on every channel.

pub use tidemark_model::warning::{AreaRef, EventBody, Messages};
use tidemark_model::warning::{Category, Severity};

/// The category of flood warnings; the other categories are utility alerts.
pub const FLOOD: &str = Category::Flood.name();

/// The short names of the three severities, as JSON fields and query parameters spell them.
pub fn severity_key(severity: i16) -> &'static str {
    severity_of(severity).name()
}

/// The public names of the three flood severities (after the UK Environment Agency's scheme).
pub fn severity_name(severity: i16) -> &'static str {
    severity_of(severity).public_name()
}

/// A stored level as a severity; levels outside 1 to 3 (none are stored) read as the lowest.
fn severity_of(level: i16) -> Severity {
    Severity::from_level(level.clamp(1, 3)).unwrap_or(Severity::Alert)
}
