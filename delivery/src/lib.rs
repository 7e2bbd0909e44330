//! The delivery stage: drains the outbox of warning events over webhooks and MQTT. (Server-Sent
//! Events are the API's: they read the events themselves.)
//!
//! # Layout
//!
//! - [`DeliveryConfig`]: the `[delivery]` section; [`run`] the stage, as `tidemark delivery` runs it.
//! - [`dispatcher::Dispatcher`]: claims due outbox rows with a lease, delivers them, records every
//!   attempt, retries with exponential backoff and jitter up to a horizon, then dead-letters.
//! - [`webhook`]: Standard Webhooks signing and verification, and the guarded HTTP client.
//! - [`mqtt`]: retained QoS 1 alerts with their acknowledgement.
//!
//! **Invariant:** a row is marked delivered only after its channel confirmed it (a 2xx answer, a
//! PUBACK). A dispatcher that dies in between leaves the row claimed until its lease ends; then
//! it is sent again with the same id (`webhook-id`, the event id in the body), never lost.

pub mod config;
pub mod dispatcher;
pub mod mqtt;
pub mod webhook;

pub use config::{DeliveryConfig, Error, Jitter, Metrics};
pub use dispatcher::Dispatcher;

use std::sync::Arc;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::{DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

/// What the delivery stage needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub delivery: DeliveryConfig,
    /// The broker alerts are published to, and the topic prefix they go under.
    pub mqtt: BrokerConfig,
    pub database: DatabaseConfig,
    /// The API's public URL, which event bodies link their CAP messages to.
    pub public_url: String,
}

/// The delivery stage until `shutdown`: the alert publisher's MQTT connection and a dispatcher.
/// Several may run against one database.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    settings.delivery.validate().map_err(Error::Config)?;
    let store = Store::connect(&settings.database).await?;
    let alerts = mqtt::AlertPublisher::start(
        &settings.mqtt,
        &settings.delivery.client_id(),
        settings.delivery.timeout,
        shutdown.clone(),
    );
    let dispatcher = Dispatcher::new(
        store,
        settings.delivery,
        alerts,
        &settings.mqtt.topic_prefix,
        &settings.public_url,
        metrics,
    )?;
    tracing::info!("delivery started");
    dispatcher.run(&settings.database, shutdown).await
}
