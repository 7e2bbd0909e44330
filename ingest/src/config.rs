//! The `[ingest]` section of the configuration.

use serde::Deserialize;
use std::time::Duration;
use tidemark_model::duration;
use tidemark_model::validate::TimeRules;

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
    /// at least twice this, or the next batch cannot fill while one commits. Each transaction has
    /// a cost of its own in the database (its COPY, commit and notification, and a rollup note for
    /// each sensor and 15-minute bucket it touches), so at one reading a message larger batches
    /// cost it less per reading (README, benchmarks).
    #[serde(default = "default_batch_max_messages")]
    pub batch_max_messages: usize,
    /// Most readings in one transaction, estimated from the payloads' size (64 bytes a reading)
    /// before anything is decoded. As with `batch_max_messages`, each transaction costs the
    /// database something of its own, a rollup note for each sensor and 15-minute bucket it
    /// touches above all, so under load larger batches cost it less per reading (README,
    /// benchmarks).
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
    /// Where readings come from: `"mqtt"` (a subscription on the `[mqtt]` broker) or `"nats"` (a
    /// durable JetStream pull consumer, `[ingest.nats]`).
    #[serde(default)]
    pub source: Source,
    /// The JetStream side, used when `source = "nats"`.
    #[serde(default)]
    pub nats: NatsConfig,
}

/// Where ingest takes readings from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An MQTT subscription (shared with `shared_group`), acknowledged per message.
    #[default]
    Mqtt,
    /// A durable JetStream pull consumer on NATS; devices still publish MQTT, to NATS's MQTT
    /// listener, and a stream keeps their messages.
    Nats,
}

/// The `[ingest.nats]` section: the NATS servers, the stream that keeps device messages and the
/// durable consumer that every ingest process shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS client URLs (`nats://host:4222`), any node of the cluster; the client moves to
    /// another when one is lost.
    #[serde(default = "default_nats_servers")]
    pub servers: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<tidemark_model::secret::Secret>,
    /// The stream holding the readings and forecasts subjects; made if missing.
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// Copies of the stream (and the consumer) in a cluster: 1, or 3 to survive losing a node.
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
    /// The durable consumer's name. Ingest processes that name the same consumer split the
    /// messages between them.
    #[serde(default = "default_nats_consumer")]
    pub consumer: String,
    /// How long JetStream waits for a message's acknowledgement before it delivers it again: how
    /// soon a crashed process's messages go to another. While a message waits for its commit
    /// (a database outage, say), ingest marks it in progress every third of this, which starts
    /// the wait again.
    #[serde(default = "default_nats_ack_wait", with = "duration::serde_str")]
    pub ack_wait: Duration,
    /// Most messages delivered to all ingest processes and not yet acknowledged: the in-flight
    /// window, at least twice `batch_max_messages` so that the next batch fills while one commits.
    #[serde(default = "default_nats_max_ack_pending")]
    pub max_ack_pending: usize,
}

fn default_nats_servers() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".to_owned()]
}
fn default_nats_stream() -> String {
    "TIDEMARK_DEVICES".to_owned()
}
const fn default_nats_replicas() -> usize {
    1
}
fn default_nats_consumer() -> String {
    "tidemark-ingest".to_owned()
}
const fn default_nats_ack_wait() -> Duration {
    Duration::from_secs(60)
}
const fn default_nats_max_ack_pending() -> usize {
    10_000
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: default_nats_servers(),
            username: None,
            password: None,
            stream: default_nats_stream(),
            replicas: default_nats_replicas(),
            consumer: default_nats_consumer(),
            ack_wait: default_nats_ack_wait(),
            max_ack_pending: default_nats_max_ack_pending(),
        }
    }
}

/// A JetStream stream or consumer name: no whitespace, `.`, `*`, `>`, path separators or control
/// characters (the server refuses them).
fn check_nats_name(what: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if bad {
        return Err(format!(
            "ingest.nats.{what} {name:?} must be 1 to 64 characters without whitespace, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(())
}

impl NatsConfig {
    fn validate(&self, batch_max_messages: usize) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("ingest.nats.servers must name at least one server".into());
        }
        check_nats_name("stream", &self.stream)?;
        check_nats_name("consumer", &self.consumer)?;
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "ingest.nats.replicas is {}; JetStream keeps 1 to 5 copies",
                self.replicas
            ));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err("ingest.nats.ack_wait must be at least 1s".into());
        }
        if self.max_ack_pending < 2 * batch_max_messages {
            return Err(format!(
                "ingest.nats.max_ack_pending ({}) must be at least twice ingest.batch_max_messages ({batch_max_messages})",
                self.max_ack_pending
            ));
        }
        Ok(())
    }
}

fn default_client_id() -> String {
    "tidemark-ingest".to_owned()
}
const fn default_batch_max_messages() -> usize {
    4000
}
const fn default_batch_max_readings() -> usize {
    40_000
}
const fn default_batch_linger() -> Duration {
    Duration::from_millis(20)
}
const fn default_max_buffered_bytes() -> usize {
    // A full batch holds about 2.6 MB of payloads (`batch_max_readings` at 64 bytes a reading),
    // and at most four batches are in hand (two committing, one prepared, one gathering): 16 MiB
    // leaves room for larger messages, and keeps ingest's peak RSS working through a backlog
    // under 100 MB.
    16 * 1024 * 1024
}
const fn default_max_payload_bytes() -> usize {
    256 * 1024
}
const fn default_max_readings_per_message() -> usize {
    1000
}
const fn default_future_tolerance() -> Duration {
    TimeRules::DEFAULT.future_tolerance
}
const fn default_max_age() -> Duration {
    TimeRules::DEFAULT.max_age
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
            source: Source::default(),
            nats: NatsConfig::default(),
        }
    }
}

impl IngestConfig {
    /// The time bounds on accepted readings, which the API's SensorThings create applies too.
    pub fn time_rules(&self) -> TimeRules {
        TimeRules {
            future_tolerance: self.future_tolerance,
            max_age: self.max_age,
        }
    }

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
        if self.source == Source::Nats {
            self.nats.validate(self.batch_max_messages)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IngestConfig, String> {
        let config: IngestConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn mqtt_is_the_source_unless_nats_is_named() {
        assert_eq!(parse("").unwrap().source, Source::Mqtt);
        let config = parse(
            r#"
            source = "nats"
            [nats]
            servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
            replicas = 3
            ack_wait = "2m"
            "#,
        )
        .unwrap();
        assert_eq!(config.source, Source::Nats);
        assert_eq!(config.nats.servers.len(), 2);
        assert_eq!(config.nats.replicas, 3);
        assert_eq!(config.nats.ack_wait, Duration::from_secs(120));
        assert_eq!(config.nats.consumer, "tidemark-ingest");
        assert!(parse(r#"source = "kafka""#).is_err());
        assert!(
            parse("[nats]\nstreams = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn nats_settings_are_checked_only_for_the_nats_source() {
        let refused = [
            "[nats]\nservers = []",
            "[nats]\nstream = \"a.b\"",
            "[nats]\nconsumer = \"a b\"",
            "[nats]\nconsumer = \"\"",
            "[nats]\nreplicas = 0",
            "[nats]\nreplicas = 7",
            "[nats]\nack_wait = \"500ms\"",
            "batch_max_messages = 1000\n[nats]\nmax_ack_pending = 1999",
        ];
        for text in refused {
            assert!(
                parse(text).is_ok(),
                "ignored while the source is MQTT: {text}"
            );
            let error = parse(&format!("source = \"nats\"\n{text}")).unwrap_err();
            assert!(error.contains("ingest.nats."), "{text}: {error}");
        }
    }

    /// `config/default.toml` is what an operator reads and edits: each ingest setting it names
    /// must be the built-in default, so that a default changed in one place is changed in both.
    #[test]
    fn the_shipped_file_names_the_built_in_defaults() {
        let text =
            std::fs::read_to_string(tidemark_testkit::config_dir().join("default.toml")).unwrap();
        let shipped: toml::Value = toml::from_str(&text).unwrap();
        let from_file: IngestConfig = shipped["ingest"].clone().try_into().unwrap();
        assert_eq!(
            format!("{from_file:?}"),
            format!("{:?}", IngestConfig::default())
        );
    }

    /// The batch a default ingest gathers, and the in-flight window of each Mosquitto
    /// configuration the project ships: the window must hold two batches, or the next batch
    /// cannot fill while one commits.
    #[test]
    fn every_shipped_broker_window_holds_two_default_batches() {
        // `config/default.toml` names the same batch (`the_shipped_file_names_the_built_in_defaults`).
        let config_dir = tidemark_testkit::config_dir();
        let batch = IngestConfig::default().batch_max_messages;
        for file in [
            "mosquitto.conf",
            "mosquitto-local.conf",
            "mosquitto-test.conf",
        ] {
            let text = std::fs::read_to_string(config_dir.join(file)).unwrap();
            let window: Vec<usize> =
                tidemark_testkit::broker::numeric_settings(&text, "max_inflight_messages")
                    .map(|value| value.parse().unwrap())
                    .collect();
            assert_eq!(window.len(), 1, "{file} sets max_inflight_messages once");
            assert!(
                window[0] >= 2 * batch,
                "{file}: a window of {} does not hold two batches of {batch}",
                window[0]
            );
        }
    }
}
