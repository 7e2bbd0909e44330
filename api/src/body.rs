//! The warning event's body ([`tidemark_model::warning::EventBody`]), the same on every channel,
//! and its parts.

use tidemark_model::warning::Category;
pub use tidemark_model::warning::{AreaRef, EventBody, Messages};

/// The category of flood warnings; the other categories are utility alerts.
pub const FLOOD: &str = Category::Flood.name();
