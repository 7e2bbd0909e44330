//! LISTEN on a dedicated connection: how stages learn what other stages committed.

use crate::config::{connect_raw, DatabaseConfig};
use crate::{Context, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// One notification: its channel and payload.
#[derive(Debug, Clone)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// A connection listening on some channels. Dropping it closes the connection.
pub struct Listener {
    _client: tokio_postgres::Client,
    receiver: mpsc::UnboundedReceiver<Notification>,
}

impl Listener {
    /// The next notification; `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<Notification> {
        self.receiver.recv().await
    }
}

/// Opens a connection and LISTENs on `channels`.
pub async fn listen(config: &DatabaseConfig, channels: &[&str]) -> Result<Listener> {
    let (client, mut connection) = connect_raw(config).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let notification = Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    if sender.send(notification).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "listening connection failed");
                    return;
                }
            }
        }
    });
    for channel in channels {
        client
            .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
            .await
            .context("LISTEN")?;
    }
    Ok(Listener {
        _client: client,
        receiver,
    })
}

/// A LISTEN that comes back after its connection is lost: a service's wake-up source.
/// [`Wakeups::wait`] returns on a notification or after a timeout, whichever comes first; a
/// service that also polls on that timeout misses nothing while the connection is down.
pub struct Wakeups {
    database: DatabaseConfig,
    channels: Vec<String>,
    listener: Option<Listener>,
}

impl Wakeups {
    /// Nothing connects until [`Wakeups::ensure`] or [`Wakeups::wait`].
    pub fn new(database: &DatabaseConfig, channels: &[&str]) -> Wakeups {
        Wakeups {
            database: database.clone(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            listener: None,
        }
    }

    /// True while a listening connection is up.
    pub fn listening(&self) -> bool {
        self.listener.is_some()
    }

    /// Listens, if not already; a failure is logged and leaves the caller to poll.
    pub async fn ensure(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let channels: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        match listen(&self.database, &channels).await {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(%error, channels = ?self.channels, "cannot listen; polling")
            }
        }
    }

    /// Waits for a notification on any of the channels, or `timeout`.
    pub async fn wait(&mut self, timeout: std::time::Duration) {
        self.ensure().await;
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(timeout).await;
            return;
        };
        if let Ok(None) = tokio::time::timeout(timeout, listener.recv()).await {
            self.listener = None;
        }
    }
}
