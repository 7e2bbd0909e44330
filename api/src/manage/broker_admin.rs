//! Tidemark as administrator of the broker's dynamic-security plugin: one MQTT connection, owned
//! by one task, that publishes commands on the plugin's control topic and matches each answer to
//! its request by correlation data (other API processes' answers arrive too, and are ignored).
//! The commands themselves are [`tidemark_model::dynsec`]'s.

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::dynsec::{self, Answer};
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::DeviceId;
use tidemark_store::credentials::CredentialKind;
use tidemark_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long a command may take before it counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("the broker administration task has stopped")]
    Stopped,
    #[error("the broker connection was lost before the broker answered")]
    ConnectionLost,
    #[error("the broker did not answer in time (is its dynamic-security plugin loaded, and may Tidemark's login use its control topic?)")]
    Timeout,
    #[error("the broker refused {command}: {error}")]
    Refused { command: String, error: String },
}

struct Request {
    message: Vec<u8>,
    tag: String,
    done: oneshot::Sender<Result<Vec<Answer>, AdminError>>,
}

/// A handle to the administration task; cheap to clone.
#[derive(Clone)]
pub struct BrokerAdmin {
    requests: mpsc::Sender<Request>,
    topics: ReadingsTopics,
}

impl BrokerAdmin {
    /// Starts the task, which logs in as `broker` says and runs until `shutdown`, and the
    /// reconciliation of the broker's logins with `store`'s record, now and every
    /// [`RECONCILE_EVERY`]. `topics` are the readings topics devices publish to.
    pub fn start(
        store: Store,
        broker: &BrokerConfig,
        topics: ReadingsTopics,
        shutdown: CancellationToken,
    ) -> Self {
        let client_id = format!("tidemark-admin-{}", random_tag());
        let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes);
        if let Some(user) = &broker.username {
            let password = broker
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(user, password);
        }
        let (requests, receiver) = mpsc::channel(64);
        tokio::spawn(administer(options, receiver, shutdown.clone()));
        let admin = BrokerAdmin { requests, topics };
        tokio::spawn(reconciling(admin.clone(), store, shutdown));
        admin
    }

    async fn send(
        &self,
        commands: impl FnOnce(&str) -> Vec<Value>,
    ) -> Result<Vec<Answer>, AdminError> {
        let tag = random_tag();
        let message = dynsec::message(&commands(&tag));
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request { message, tag, done })
            .await
            .map_err(|_| AdminError::Stopped)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AdminError::ConnectionLost),
            Err(_) => Err(AdminError::Timeout),
        }
    }

    /// Gives `device` a fresh login (with `password`, or none for a certificate), removing any
    /// earlier one; the broker disconnects a device still connected with it.
    pub async fn replace(
        &self,
        device: &DeviceId,
        password: Option<&str>,
    ) -> Result<(), AdminError> {
        let topic = self.topics.for_device(device);
        let answers = self
            .send(|tag| {
                let mut commands = dynsec::remove_device(device, tag);
                commands.extend(dynsec::add_device(device, &topic, password, tag));
                commands
            })
            .await?;
        // The first two answers are the removal, where "not found" is fine.
        check(answers.iter().take(2).filter(|a| !absent(a)))?;
        check(answers.iter().skip(2))
    }

    /// Removes `device`'s login and disconnects it, if it had one.
    pub async fn remove(&self, device: &DeviceId) -> Result<(), AdminError> {
        let answers = self.send(|tag| dynsec::remove_device(device, tag)).await?;
        check(answers.iter().filter(|a| !absent(a)))
    }

    /// The devices that have a login Tidemark made.
    pub async fn managed_devices(&self) -> Result<Vec<String>, AdminError> {
        let answers = self.send(|tag| vec![dynsec::list_clients(tag)]).await?;
        check(answers.iter())?;
        Ok(answers
            .first()
            .and_then(|a| a.data.as_ref())
            .map(dynsec::managed_clients)
            .unwrap_or_default())
    }
}

/// How often the broker's logins are compared with the record.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// What one reconciliation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Logins the broker had without a credential in force (revoked, or never recorded): removed.
    pub removed: Vec<String>,
    /// Certificate logins the broker had lost: made again.
    pub restored: Vec<String>,
    /// Passwords in force the broker has lost, which only a new password can mend.
    pub lost_passwords: Vec<String>,
}

/// Brings the broker's logins in line with the credentials in force, while none changes: a
/// revocation the broker missed, or a broker whose plugin file was restored from an older copy,
/// is put right. A password cannot be restored (only the broker ever held it); those are named.
pub async fn reconcile(admin: &BrokerAdmin, store: &Store) -> Result<Reconciled, String> {
    store
        .with_credentials_in_force(|in_force| async move {
            let managed = admin.managed_devices().await.map_err(|e| e.to_string())?;
            let mut done = Reconciled::default();
            for device in &managed {
                if in_force.iter().all(|c| &c.device != device) {
                    let id = DeviceId::parse(device).map_err(|e| e.to_string())?;
                    admin.remove(&id).await.map_err(|e| e.to_string())?;
                    done.removed.push(device.clone());
                }
            }
            for credential in in_force.iter().filter(|c| !managed.contains(&c.device)) {
                match credential.kind {
                    CredentialKind::Certificate => {
                        let id = DeviceId::parse(&credential.device).map_err(|e| e.to_string())?;
                        admin.replace(&id, None).await.map_err(|e| e.to_string())?;
                        done.restored.push(credential.device.clone());
                    }
                    CredentialKind::Password => done.lost_passwords.push(credential.device.clone()),
                }
            }
            Ok(done)
        })
        .await
        .map_err(|e| e.to_string())?
}

async fn reconciling(admin: BrokerAdmin, store: Store, shutdown: CancellationToken) {
    loop {
        match reconcile(&admin, &store).await {
            Ok(done) => {
                if !done.removed.is_empty() || !done.restored.is_empty() {
                    tracing::warn!(removed = ?done.removed, restored = ?done.restored,
                        "the broker's device logins differed from the record; put right");
                }
                if !done.lost_passwords.is_empty() {
                    tracing::error!(devices = ?done.lost_passwords,
                        "the broker has lost these devices' passwords; issue them new ones");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot reconcile the broker's device logins"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

fn absent(answer: &Answer) -> bool {
    answer.error.as_deref().is_some_and(dynsec::is_absent)
}

fn check<'a>(mut answers: impl Iterator<Item = &'a Answer>) -> Result<(), AdminError> {
    match answers.find(|a| a.error.is_some()) {
        Some(a) => Err(AdminError::Refused {
            command: a.command.clone(),
            error: a.error.clone().unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

fn random_tag() -> String {
    crate::auth::hex(&crate::auth::random_bytes::<8>())
}

async fn administer(
    options: MqttOptions,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (client, eventloop) = AsyncClient::new(options.clone(), 64);
        if connection(&client, eventloop, &mut requests, &shutdown).await {
            let _ = client.disconnect().await;
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves one connection; true when the task should stop, false to reconnect. Requests wait in
/// the channel until the subscription to the answers is acknowledged; a lost connection fails
/// the requests awaiting answers.
async fn connection(
    client: &AsyncClient,
    mut eventloop: EventLoop,
    requests: &mut mpsc::Receiver<Request>,
    shutdown: &CancellationToken,
) -> bool {
    let mut waiting: HashMap<String, oneshot::Sender<Result<Vec<Answer>, AdminError>>> =
        HashMap::new();
    let mut ready = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return true,
            request = requests.recv(), if ready && waiting.len() < 32 => {
                let Some(request) = request else { return true };
                if client
                    .publish(dynsec::CONTROL_TOPIC, QoS::AtLeastOnce, false, request.message)
                    .await
                    .is_err()
                {
                    let _ = request.done.send(Err(AdminError::ConnectionLost));
                    return false;
                }
                waiting.insert(request.tag, request.done);
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if client.subscribe(dynsec::RESPONSE_TOPIC, QoS::AtLeastOnce).await.is_err() {
                        return false;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    ready = ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                    if !ready {
                        tracing::error!("the broker refused Tidemark's subscription to the dynamic-security answers");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == dynsec::RESPONSE_TOPIC => {
                    let Some(answers) = dynsec::answers(&publish.payload) else { continue };
                    let Some(tag) = answers.first().and_then(|a| a.tag.clone()) else { continue };
                    if let Some(done) = waiting.remove(&tag) {
                        let _ = done.send(Ok(answers));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "broker administration connection lost");
                    for (_, done) in waiting.drain() {
                        let _ = done.send(Err(AdminError::ConnectionLost));
                    }
                    return false;
                }
            }
        }
    }
}
