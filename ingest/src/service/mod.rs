//! The ingest service: a source task that only moves messages (the MQTT session, or the JetStream
//! puller of `nats`), a preparer that batches and decodes, and a committer that commits two batches at a time and acknowledges each, in order,
//! once it and every batch before it have committed.
//!
//! Memory is bounded by `max_buffered_bytes`: the session task takes a share of that budget for
//! each message before it polls the connection again, so when the budget is spent it stops reading
//! the socket and the broker's sends back up in TCP. The share is given back as soon as the
//! message's batch has committed, before its acknowledgement leaves, so the session task never
//! waits on itself.
//!
//! A batch the database refuses for good (a data exception, an integrity violation, a program
//! limit) is split until the message behind the refusal stands alone; that message is kept as a
//! rejection (`storage_refused`) and acknowledged, and the rest is stored. Other errors (a lost
//! connection, a serialization failure) are retried with backoff, acknowledging nothing.

pub mod commit;
pub mod nats;
pub mod prepare;
pub mod session;
pub mod shared;

use crate::config::Source;
use crate::message::Rules;
use crate::metrics::Metrics;
use chrono::Utc;
use commit::{Acknowledger, Committer};
use prepare::Preparer;
use rumqttc::AsyncClient;
pub use session::write_acknowledgements;
use session::{maintenance_loop, mqtt_options, session_loop};
use shared::{AbortOnDrop, AckQueue, Generation, Intake, REQUEST_QUEUE};
pub use shared::{Error, Settings};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::forecast::ForecastLimits;
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::wire::Limits;
use tidemark_store::Store;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Runs ingest until `shutdown` is cancelled; then finishes the batch in hand and disconnects.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Settings {
        ingest: config,
        mqtt,
        database,
    } = settings;
    config.validate().map_err(Error::Config)?;
    let topics = ReadingsTopics::new(&mqtt.topic_prefix)?;
    let filters = vec![
        topics.filter(config.shared_group.as_deref())?,
        topics.forecast_filter(config.shared_group.as_deref())?,
    ];
    let store = Store::connect(&database).await?;
    let directory = store.directory().await?;

    let (tx, rx) = mpsc::unbounded_channel();
    let intake = Intake {
        tx,
        buffer: Arc::new(Semaphore::new(config.max_buffered_bytes)),
        max_buffered: config.max_buffered_bytes,
        metrics: metrics.clone(),
    };
    let session_stop = CancellationToken::new();
    // With JetStream, `_in_progress` keeps the messages in hand from being delivered again while
    // their commits wait.
    let (session, acks, _in_progress) = match config.source {
        Source::Mqtt => {
            let (client, eventloop) = AsyncClient::new(mqtt_options(&config, &mqtt), REQUEST_QUEUE);
            let connection = Arc::new(Generation::default());
            let queue = Arc::new(AckQueue::default());
            let session = AbortOnDrop(tokio::spawn(session_loop(
                eventloop,
                client.clone(),
                filters,
                intake,
                connection.clone(),
                queue.clone(),
                session_stop.clone(),
            )));
            let acks = Acknowledger::Mqtt {
                client,
                queue,
                connection,
            };
            (session, acks, None)
        }
        Source::Nats => {
            let client = nats::connect(&config.nats).await.map_err(Error::Config)?;
            let in_hand = Arc::new(nats::InHand::default());
            let session = AbortOnDrop(tokio::spawn(nats::session_loop(
                client.clone(),
                config.clone(),
                nats::stream_subjects(&topics)?,
                intake,
                in_hand.clone(),
                session_stop.clone(),
            )));
            let in_progress = AbortOnDrop(tokio::spawn(nats::keep_in_progress(
                client.clone(),
                in_hand.clone(),
                config.nats.ack_wait,
                session_stop.clone(),
            )));
            (
                session,
                Acknowledger::Nats { client, in_hand },
                Some(in_progress),
            )
        }
    };
    let _rollups = AbortOnDrop(tokio::spawn({
        let (store, stop) = (store.clone(), shutdown.clone());
        let every = database.rollup_refresh;
        async move {
            store
                .keep_rollups_fresh(every, stop.cancelled_owned())
                .await
        }
    }));
    let _maintenance = AbortOnDrop(tokio::spawn(maintenance_loop(
        store.clone(),
        database,
        metrics.clone(),
        shutdown.clone(),
    )));
    tracing::info!(
        client_id = %config.client_id,
        source = ?config.source,
        mode = %store.mode(),
        "ingest started"
    );

    let preparer = Preparer {
        store: store.clone(),
        topics,
        directory,
        directory_loaded: Utc::now(),
        rules: Rules {
            time: config.time_rules(),
            limits: Limits {
                max_bytes: config.max_payload_bytes,
                max_readings: config.max_readings_per_message,
            },
            forecast: ForecastLimits {
                max_bytes: config.max_payload_bytes,
                future_tolerance: chrono::Duration::from_std(config.future_tolerance)
                    .unwrap_or(chrono::Duration::MAX),
                max_age: chrono::Duration::from_std(config.max_age)
                    .unwrap_or(chrono::Duration::MAX),
                ..ForecastLimits::default()
            },
        },
        config: config.clone(),
        carried: VecDeque::new(),
    };
    let closing = acks.clone();
    let committer = Committer {
        store,
        acks,
        metrics,
        config,
    };
    // Two stages, so that decoding the next batch overlaps committing. The channel holds one
    // prepared batch, and the committer commits at most `COMMITS_AT_ONCE` at a time.
    let (prepared_tx, prepared_rx) = mpsc::channel(1);
    let committing = AbortOnDrop(tokio::spawn(committer.run(prepared_rx, shutdown.clone())));
    preparer.run(rx, prepared_tx, &shutdown).await;
    committing.join().await;

    // Acknowledgements queued by the committer go out before the disconnect: the session task
    // writes what is queued before it polls for the next request.
    match &closing {
        Acknowledger::Mqtt { client, .. } => {
            let _ = client.disconnect().await;
            if tokio::time::timeout(Duration::from_secs(5), session.join())
                .await
                .is_err()
            {
                tracing::warn!("mqtt session did not close within 5s");
            }
        }
        Acknowledger::Nats { client, .. } => {
            // The session stops pulling; what it pulled and did not hand on is delivered again
            // after the ack wait.
            session_stop.cancel();
            session.join().await;
            if tokio::time::timeout(Duration::from_secs(5), client.flush())
                .await
                .map_or(true, |flushed| flushed.is_err())
            {
                tracing::warn!("nats acknowledgements not flushed within 5s");
            }
        }
    }
    session_stop.cancel();
    tracing::info!("ingest stopped");
    Ok(())
}
