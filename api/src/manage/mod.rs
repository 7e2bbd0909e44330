//! Management over the API: API keys (operators), devices, their credentials, stations and
//! sensors (operators and utilities), and the audit log (operators). Every change is recorded in the audit log in the
//! transaction that makes it.

pub mod areas;
pub mod audit;
pub mod broker_admin;
pub mod common;
pub mod credentials;
pub mod keys;
pub mod reference;
pub mod rules;

use crate::state::ApiState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The management routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(reference::put_station))
        .routes(routes!(reference::put_device))
        .routes(routes!(
            credentials::list_credentials,
            credentials::issue_credential
        ))
        .routes(routes!(credentials::revoke_credential))
        .routes(routes!(reference::put_sensor))
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(rules::put_threshold))
        .routes(routes!(rules::rain_rules))
        .routes(routes!(rules::put_rain_rules))
        .routes(routes!(rules::quality_rules))
        .routes(routes!(rules::put_quality_rule))
        .routes(routes!(areas::put_flood_area))
        .routes(routes!(audit::audit))
}
