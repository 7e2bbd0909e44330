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
