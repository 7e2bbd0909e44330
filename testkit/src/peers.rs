//! The receiving ends of warning delivery, real enough for tests and benchmarks: a webhook
//! receiver (an HTTP server whose answers are scripted), a Server-Sent Events client and an MQTT
//! subscriber. Each records what arrived and when.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// One webhook delivery as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub arrived: Instant,
    /// Arrival by the wall clock, whole seconds since 1970 (what `webhook-timestamp` is checked
    /// against).
    pub arrived_unix: i64,
    /// When the answer went back; `None` while the request is still being answered.
    pub answered: Option<Instant>,
}

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct ReceiverState {
    deliveries: Mutex<Vec<Delivery>>,
    /// Status codes to answer, in order; 200 once they run out.
    script: Mutex<VecDeque<u16>>,
    /// While set, each request waits for `release` before it is answered.
    hold: Mutex<bool>,
    /// How long each answer takes.
    delay: Mutex<Duration>,
    /// While set, every answer is `307 Temporary Redirect` to this URL.
    redirect: Mutex<Option<String>>,
    release: Notify,
    arrived: Notify,
}

/// An HTTP server on loopback that records webhook deliveries to `POST /hook`.
pub struct WebhookReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
    shutdown: CancellationToken,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        arrived: Instant::now(),
        arrived_unix: chrono::Utc::now().timestamp(),
        answered: None,
    };
    let status = state.script.lock().expect("not poisoned").pop_front();
    let held = *state.hold.lock().expect("not poisoned");
    let delay = *state.delay.lock().expect("not poisoned");
    let index = {
        let mut deliveries = state.deliveries.lock().expect("not poisoned");
        deliveries.push(delivery);
        deliveries.len() - 1
    };
    state.arrived.notify_waiters();
    if held {
        state.release.notified().await;
    }
    tokio::time::sleep(delay).await;
    state.deliveries.lock().expect("not poisoned")[index].answered = Some(Instant::now());
    if let Some(location) = state.redirect.lock().expect("not poisoned").clone() {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response();
    }
    StatusCode::from_u16(status.unwrap_or(200))
        .unwrap_or(StatusCode::OK)
        .into_response()
}

impl WebhookReceiver {
    pub async fn start() -> std::io::Result<WebhookReceiver> {
        WebhookReceiver::start_on(0).await
    }

    /// A receiver on this loopback port (0: any free one), for one that comes back where it was.
    pub async fn start_on(port: u16) -> std::io::Result<WebhookReceiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let state = Arc::new(ReceiverState::default());
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(WebhookReceiver {
            url,
            state,
            shutdown,
        })
    }

    /// Answers the next requests with these statuses, then 200.
    pub fn script(&self, statuses: &[u16]) {
        self.state
            .script
            .lock()
            .expect("not poisoned")
            .extend(statuses);
    }

    /// Holds every answer until [`WebhookReceiver::release`].
    pub fn hold(&self, hold: bool) {
        *self.state.hold.lock().expect("not poisoned") = hold;
    }

    /// Answers every request with a redirect to `url`.
    pub fn redirect_to(&self, url: &str) {
        *self.state.redirect.lock().expect("not poisoned") = Some(url.to_owned());
    }

    /// Takes this long over every answer.
    pub fn slow(&self, delay: Duration) {
        *self.state.delay.lock().expect("not poisoned") = delay;
    }

    /// Answers the requests being held.
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("not poisoned").clone()
    }

    /// Waits until at least `n` deliveries have arrived; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            if self.deliveries().len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.deliveries().len() >= n;
            }
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Parses complete events off the front of `buffer` (the text/event-stream format), leaving an
/// incomplete one in place. Comment lines (heartbeats) are skipped.
pub fn parse_sse(buffer: &mut String) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = SseEvent {
            id: None,
            event: None,
            data: String::new(),
        };
        let mut any = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = Some(value.to_owned()),
                "data" => {
                    if any {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    any = true;
                }
                _ => {}
            }
        }
        if any {
            events.push(event);
        }
    }
    events
}

/// A connected Server-Sent Events client; events arrive on `events` with their arrival time.
pub struct SseClient {
    pub events: mpsc::UnboundedReceiver<(SseEvent, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl SseClient {
    /// Connects to `url`, resuming after `last_event_id` if given, and returns once the server
    /// has answered 200.
    pub async fn connect(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, String> {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let mut response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the stream answered {}", response.status()));
        }
        let (sender, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let arrived = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                for event in parse_sse(&mut buffer) {
                    if sender.send((event, arrived)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(SseClient { events, task })
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
            .map(|(event, _)| event)
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT subscriber to `filter`; messages arrive on `messages` as (topic, payload, retained).
pub struct MqttSubscriber {
    pub messages: mpsc::UnboundedReceiver<(String, Vec<u8>, bool, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttSubscriber {
    /// Connects, subscribes at QoS 1, and returns once the broker has confirmed the subscription.
    pub async fn start(
        broker: &tidemark_model::broker::BrokerConfig,
        client_id: &str,
        filter: &str,
    ) -> Result<MqttSubscriber, String> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let message = (
                            p.topic.clone(),
                            p.payload.to_vec(),
                            p.retain,
                            Instant::now(),
                        );
                        if sender.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .map_err(|_| "the broker did not confirm the subscription".to_owned())?
            .map_err(|_| "the subscriber stopped".to_owned())?;
        Ok(MqttSubscriber { messages, task })
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, serde_json::Value, bool)> {
        tokio::time::timeout(timeout, self.messages.recv())
            .await
            .ok()
            .flatten()
            .map(|(topic, payload, retained, _)| {
                (
                    topic,
                    serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null),
                    retained,
                )
            })
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parsing_keeps_incomplete_events_and_skips_comments() {
        let mut buffer =
            ": heartbeat\n\nid: 4\nevent: warning.raised\ndata: {\"a\":1}\n\nid: 5\nda".to_owned();
        let events = parse_sse(&mut buffer);
        assert_eq!(
            events,
            [SseEvent {
                id: Some("4".into()),
                event: Some("warning.raised".into()),
                data: "{\"a\":1}".into()
            }]
        );
        assert_eq!(buffer, "id: 5\nda");
    }
}
