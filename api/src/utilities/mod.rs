//! Utility statistics over the API: a meter's summary (mean, peak and when it occurred) and its
//! load-duration curve, from usable readings only; water district meters' leak rules, night flow
//! and suspected leaks.

pub mod leaks;
pub mod meters;

use crate::state::ApiState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The utility statistics' routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(meters::summary))
        .routes(routes!(meters::load_duration))
        .routes(routes!(leaks::night_flow))
        .routes(routes!(leaks::put_leak_rule))
        .routes(routes!(leaks::leaks))
        .routes(routes!(leaks::alerts))
        .routes(routes!(leaks::alert))
        .routes(routes!(meters::consumption))
        .routes(routes!(meters::self_consumption))
}
