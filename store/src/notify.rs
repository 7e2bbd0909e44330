//! LISTEN on a dedicated connection: how stages learn what other stages committed.

use crate::config::{connect_raw, DatabaseConfig};
use crate::coordination::{Channel, Notice};
use crate::{Context, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// A connection listening on some channels. Dropping it closes the connection.
pub struct Listener {
    _client: tokio_postgres::Client,
    receiver: mpsc::UnboundedReceiver<Notice>,
}

impl Listener {
    /// The next notification; `None` once the connection has closed. A notification whose payload
    /// does not have its channel's shape is logged and skipped.
    pub async fn recv(&mut self) -> Option<Notice> {
        self.receiver.recv().await
    }

    /// The notifications already received, without waiting; empty when there are none (or the
    /// connection has closed, which the next [`Listener::recv`] reports).
    pub fn ready(&mut self) -> Vec<Notice> {
        std::iter::from_fn(|| self.receiver.try_recv().ok()).collect()
    }
}

/// Opens a connection and LISTENs on `channels`.
pub async fn listen(config: &DatabaseConfig, channels: &[Channel]) -> Result<Listener> {
    let (client, mut connection) = connect_raw(config).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    match Notice::parse(n.channel(), n.payload()) {
                        Ok(notice) => {
                            if sender.send(notice).is_err() {
                                return;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "skipping a notification"),
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
            .batch_execute(&format!("LISTEN {}", channel.name()))
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
    channels: Vec<Channel>,
    listener: Option<Listener>,
}

impl Wakeups {
    /// Nothing connects until [`Wakeups::ensure`] or [`Wakeups::wait`].
    pub fn new(database: &DatabaseConfig, channels: &[Channel]) -> Wakeups {
        Wakeups {
            database: database.clone(),
            channels: channels.to_vec(),
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
        match listen(&self.database, &self.channels).await {
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
