//! The `[ingest]` section of the configuration.

use serde::Deserialize;
use std::time::Duration;
use tidemark_model::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// MQTT client id. Stable, so that the broker keeps the session (and the messages queued for it)
    /// while ingest restarts. Several ingest processes need distinct ids.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Join the shared subscription `$share/<group>/...` so that several ingest processes split the
    /// load. Unset: a plain subscription.
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Most messages in one database transaction. Messages are acknowledged only after their batch
    /// commits, so the broker's in-flight window for this client (`max_inflight_messages`) must be
    /// at least twice this, or the next batch cannot fill while one commits.
    #[serde(default = "default_batch_max_messages")]
    pub batch_max_messages: usize,
    /// Most readings in one transaction.
    #[serde(default = "default_batch_max_readings")]
    pub batch_max_readings: usize,
    /// How long a batch waits for more messages once it has one.
    #[serde(default = "default_batch_linger", with = "duration::serde_str")]
    pub batch_linger: Duration,
    /// Upper bound on payload bytes received and not yet committed. When reached, ingest stops
    /// reading from the broker, which holds the rest.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Largest payload decoded; a larger one is rejected.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most readings one message may carry.
    #[serde(default = "default_max_readings_per_message")]
    pub max_readings_per_message: usize,
    /// How far ahead of this host's clock a reading may be timed.
    #[serde(default = "default_future_tolerance", with = "duration::serde_str")]
    pub future_tolerance: Duration,
    /// How old a reading may be when it arrives (back-fill and replays).
    #[serde(default = "default_max_age", with = "duration::serde_str")]
    pub max_age: Duration,
    /// First wait before retrying a failed database write; doubles up to `retry_max`.
    #[serde(default = "default_retry_initial", with = "duration::serde_str")]
    pub retry_initial: Duration,
    /// Longest wait between database retries.
    #[serde(default = "default_retry_max", with = "duration::serde_str")]
    pub retry_max: Duration,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "duration::serde_str")]
    pub keep_alive: Duration,
    /// Where `tidemark ingest` serves `/metrics`, `/healthz` and `/readyz` (in `tidemark run` the
    /// API serves them).
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
}

fn default_client_id() -> String {
    "tidemark-ingest".to_owned()
}
const fn default_batch_max_messages() -> usize {
    1000
}
const fn default_batch_max_readings() -> usize {
    20_000
}
const fn default_batch_linger() -> Duration {
    Duration::from_millis(20)
}
const fn default_max_buffered_bytes() -> usize {
    // A batch of 50-reading messages holds about 1.2 MB of payloads, and at most four batches are
    // in hand (two committing, one prepared, one gathering): 16 MiB leaves room for larger
    // messages, and keeps ingest's peak RSS working through a backlog near 100 MB.
    16 * 1024 * 1024
}
const fn default_max_payload_bytes() -> usize {
    256 * 1024
}
const fn default_max_readings_per_message() -> usize {
    1000
}
const fn default_future_tolerance() -> Duration {
    Duration::from_secs(10 * 60)
}
const fn default_max_age() -> Duration {
    Duration::from_secs(400 * 86_400)
}
const fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(10)
}
const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9091".to_owned()
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            client_id: default_client_id(),
            shared_group: None,
            batch_max_messages: default_batch_max_messages(),
            batch_max_readings: default_batch_max_readings(),
            batch_linger: default_batch_linger(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_payload_bytes: default_max_payload_bytes(),
            max_readings_per_message: default_max_readings_per_message(),
            future_tolerance: default_future_tolerance(),
            max_age: default_max_age(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            keep_alive: default_keep_alive(),
            metrics_listen: default_metrics_listen(),
        }
    }
}

impl IngestConfig {
    /// Pure checks, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        tidemark_model::DeviceId::parse(&self.client_id)
            .map_err(|e| format!("ingest.client_id {:?}: {e}", self.client_id))?;
        if self.batch_max_messages == 0 || self.batch_max_readings == 0 {
            return Err(
                "ingest.batch_max_messages and batch_max_readings must be at least 1".into(),
            );
        }
        if self.max_buffered_bytes < self.max_payload_bytes {
            return Err(format!(
                "ingest.max_buffered_bytes ({}) must be at least ingest.max_payload_bytes ({})",
                self.max_buffered_bytes, self.max_payload_bytes
            ));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(
                "ingest.retry_initial must be positive and at most ingest.retry_max".into(),
            );
        }
        if self.keep_alive < Duration::from_secs(1) {
            return Err("ingest.keep_alive must be at least 1s".into());
        }
        Ok(())
    }
}
