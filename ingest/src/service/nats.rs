//! The JetStream source: devices publish MQTT to NATS's MQTT listener, a stream keeps their
//! messages, and every ingest process pulls from one durable consumer. A message is acknowledged
//! explicitly once its batch has committed, as an MQTT message is; the consumer's `ack_wait` and
//! `max_ack_pending` do what the MQTT broker's retry and in-flight window do.
//!
//! NATS names MQTT topics as subjects: `/` becomes `.`, an empty level `/`, and (from
//! nats-server 2.10) a `.` inside a level `//`. [`topic_to_subject`] and [`subject_to_topic`] are
//! that mapping and its inverse, so the rest of ingest sees the topic the device published to.

use super::shared::{Ack, Intake};
use crate::config::{IngestConfig, NatsConfig};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_model::topic::{ReadingsTopics, TopicError};
use tokio_util::sync::CancellationToken;

/// The NATS subject that NATS's MQTT listener publishes a message on `topic` to.
pub fn topic_to_subject(topic: &str) -> String {
    let bytes = topic.as_bytes();
    let mut subject = String::with_capacity(topic.len() + 4);
    for (i, c) in topic.char_indices() {
        match c {
            '/' => {
                if i == 0 || subject.ends_with('.') {
                    // An empty level before this separator.
                    subject.push_str("/.");
                } else if i + 1 == bytes.len() || bytes[i + 1] == b'/' {
                    // An empty level after it.
                    subject.push_str("./");
                } else {
                    subject.push('.');
                }
            }
            '.' => subject.push_str("//"),
            c => subject.push(c),
        }
    }
    subject
}

/// The MQTT topic a subject from NATS's MQTT listener was published to: the inverse of
/// [`topic_to_subject`].
pub fn subject_to_topic(subject: &str) -> String {
    let mut topic = String::with_capacity(subject.len());
    let mut chars = subject.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => topic.push('/'),
            '/' => match chars.peek() {
                Some('/') => {
                    chars.next();
                    topic.push('.');
                }
                Some('.') => {
                    chars.next();
                    topic.push('/');
                }
                // A lone '/' marks an empty last level, which the '.' before it made already.
                _ => {}
            },
            c => topic.push(c),
        }
    }
    topic
}

/// The subjects the stream keeps: every device's readings and every forecast source's forecasts
/// under the topic prefix.
pub fn stream_subjects(topics: &ReadingsTopics) -> Result<Vec<String>, TopicError> {
    // `<prefix>/readings/+`: the MQTT wildcard level becomes NATS's.
    [topics.filter(None)?, topics.forecast_filter(None)?]
        .iter()
        .map(|filter| {
            let stem = filter.strip_suffix('+').unwrap_or(filter);
            Ok(format!(
                "{}*",
                topic_to_subject(&format!("{stem}x")).trim_end_matches('x')
            ))
        })
        .collect()
}

/// Connects to NATS. With `retry_on_initial_connect` this returns at once and the client keeps
/// trying every server in the background, so ingest starts while NATS is down, as it does while
/// the MQTT broker is.
pub(crate) async fn connect(config: &NatsConfig) -> Result<async_nats::Client, String> {
    let servers = config
        .servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("ingest.nats.servers: {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = async_nats::ConnectOptions::new()
        .name("tidemark-ingest")
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                other => tracing::warn!(event = %other, "nats connection"),
            }
        });
    if let Some(username) = &config.username {
        let password = config.password.as_ref().map(|p| p.expose()).unwrap_or("");
        options = options.user_and_password(username.clone(), password.to_owned());
    }
    options
        .connect(servers)
        .await
        .map_err(|e| format!("connecting to NATS: {e}"))
}

/// The stream (made if missing) and the shared durable pull consumer on it.
async fn consumer(
    client: &async_nats::Client,
    config: &NatsConfig,
    subjects: &[String],
) -> Result<consumer::PullConsumer, String> {
    let context = jetstream::new(client.clone());
    let mut stream = context
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: subjects.to_vec(),
            // Acknowledged messages leave the stream: it holds what ingest has not committed.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", config.stream))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream {}: {e}", config.stream))?;
    let missing: Vec<&String> = subjects
        .iter()
        .filter(|s| !info.config.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "stream {} exists without the subjects {missing:?}; it keeps {:?}",
            config.stream, info.config.subjects
        ));
    }
    stream
        .get_or_create_consumer(
            &config.consumer,
            consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending as i64,
                deliver_policy: consumer::DeliverPolicy::All,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", config.consumer))
}

/// The JetStream messages ingest holds and has not acknowledged, by the subject their
/// acknowledgement goes to. While a database outage holds up commits, [`keep_in_progress`] tells
/// JetStream that each is still being worked on, so that none is delivered again after the ack
/// wait while it waits in ingest's own buffer.
#[derive(Default)]
pub(crate) struct InHand(Mutex<HashSet<String>>);

impl InHand {
    pub(crate) fn insert(&self, reply: &async_nats::Subject) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reply.to_string());
    }

    pub(crate) fn remove(&self, reply: &async_nats::Subject) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(reply.as_str());
    }

    fn all(&self) -> Vec<async_nats::Subject> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|reply| async_nats::Subject::from(reply.as_str()))
            .collect()
    }
}

/// Every third of the ack wait, marks every message in hand as in progress (`+WPI`), which starts
/// its ack wait again; until `stop`. A message held longer than that is one whose commit waits for
/// the database, and JetStream would otherwise give it to another ingest process meanwhile.
pub(crate) async fn keep_in_progress(
    client: async_nats::Client,
    in_hand: Arc<InHand>,
    ack_wait: Duration,
    stop: CancellationToken,
) {
    let every = ack_wait / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for reply in in_hand.all() {
            if let Err(error) = client
                .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                .await
            {
                tracing::warn!(%error, "cannot mark a jetstream message in progress");
                break;
            }
        }
    }
}

/// Pulls messages and hands them on, each with its share of the buffer taken before the next is
/// pulled, until `stop`. Any failure (NATS unreachable, the stream or consumer gone) is retried
/// with backoff, making the stream and consumer again if need be.
pub(crate) async fn session_loop(
    client: async_nats::Client,
    config: IngestConfig,
    subjects: Vec<String>,
    intake: Intake,
    in_hand: Arc<InHand>,
    stop: CancellationToken,
) {
    let metrics = intake.metrics.clone();
    let max_buffered = intake.max_buffered;
    let mut backoff = Duration::from_millis(100);
    loop {
        let pulled = async {
            let consumer = consumer(&client, &config.nats, &subjects).await?;
            consumer
                .stream()
                .max_messages_per_batch(config.batch_max_messages)
                // What one pull may bring is held outside the buffer's bound, so it is a share
                // of it.
                .max_bytes_per_batch((max_buffered / 4).max(config.max_payload_bytes))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| format!("pulling from {}: {e}", config.nats.consumer))
        };
        let mut messages = tokio::select! {
            _ = stop.cancelled() => return,
            pulled = pulled => match pulled {
                Ok(messages) => messages,
                Err(error) => {
                    metrics.mqtt_errors.inc();
                    metrics.subscribed.set(0);
                    tracing::warn!(%error, retry_in = ?backoff, "jetstream consumer unavailable");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        metrics.subscribed.set(1);
        tracing::info!(
            stream = %config.nats.stream,
            consumer = %config.nats.consumer,
            "pulling from jetstream"
        );
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    // Missed heartbeats, a pull the server ended: the stream goes on pulling.
                    metrics.mqtt_errors.inc();
                    tracing::warn!(%error, "jetstream pull");
                    continue;
                }
                None => break,
            };
            backoff = Duration::from_millis(100);
            metrics.subscribed.set(1);
            metrics.messages_received.inc();
            if message.info().map(|i| i.delivered > 1).unwrap_or(false) {
                metrics.messages_redelivered.inc();
            }
            // The acknowledgement's subject; `split` would move it into an acker, which the
            // committer does not need: it publishes to the subject itself.
            let reply = message.reply.clone();
            let (message, _) = message.split();
            let Some(reply) = reply else {
                tracing::warn!(subject = %message.subject, "a jetstream message without a reply subject");
                continue;
            };
            let topic = subject_to_topic(&message.subject);
            in_hand.insert(&reply);
            if !intake
                .take(topic, message.payload, Ack::Nats { reply }, &stop)
                .await
            {
                return;
            }
        }
        metrics.subscribed.set(0);
        tracing::warn!("the jetstream pull ended; pulling again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_subjects_map_as_nats_maps_them() {
        // As nats-server's MQTT listener names them.
        let cases = [
            ("tidemark/v1/readings/dev-1", "tidemark.v1.readings.dev-1"),
            ("tidemark/v1/readings/a.b", "tidemark.v1.readings.a//b"),
            ("/a", "/.a"),
            ("a/", "a./"),
            ("a//b", "a./.b"),
            ("a/./b", "a.//.b"),
            ("x", "x"),
        ];
        for (topic, subject) in cases {
            assert_eq!(topic_to_subject(topic), subject, "{topic:?}");
            assert_eq!(subject_to_topic(subject), topic, "{subject:?}");
        }
    }

    #[test]
    fn every_topic_comes_back_from_its_subject() {
        let alphabet = ['a', '/', '.', '-'];
        // Every topic of up to six characters over the alphabet.
        let mut topics = vec![String::new()];
        for _ in 0..6 {
            let longer: Vec<String> = topics
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            for topic in &longer {
                assert_eq!(
                    subject_to_topic(&topic_to_subject(topic)),
                    *topic,
                    "{topic:?} -> {:?}",
                    topic_to_subject(topic)
                );
            }
            topics = longer;
        }
    }

    #[test]
    fn the_stream_keeps_readings_and_forecasts() {
        let topics = ReadingsTopics::new("tidemark/v1").unwrap();
        assert_eq!(
            stream_subjects(&topics).unwrap(),
            vec![
                "tidemark.v1.readings.*".to_owned(),
                "tidemark.v1.forecasts.*".to_owned()
            ]
        );
    }
}
