//! The circular data bank over the API: material-flow records posted by waste operators, and the
//! statistics and flows made of them; the container registry, and the collections and overflows
//! analytics find in containers' readings.

pub mod containers;
pub mod population;
pub mod records;
pub mod statistics;

use crate::state::ApiState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The circular data bank's routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(records::flows, records::post_flows))
        .routes(routes!(statistics::statistics))
        .routes(routes!(statistics::sankey))
        .routes(routes!(containers::containers))
        .routes(routes!(containers::put_container))
        .routes(routes!(containers::collections))
        .routes(routes!(containers::overflows))
        .routes(routes!(population::put_population))
}
