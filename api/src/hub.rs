//! The event hub behind the Server-Sent Events stream: one per process LISTENs on
//! `warnings_changed`, reads the new events from the database in id order and broadcasts them;
//! and the caps on the streams open, in all and per client address.

use crate::http::problem::{ApiError, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::events::WarningEvent;
use tidemark_store::{DatabaseConfig, Store};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Events read from the database per catch-up query.
pub(crate) const CATCH_UP_PAGE: i64 = 500;

/// Live events buffered for slow clients before they fall back to catching up.
const BROADCAST_CAPACITY: usize = 1024;

/// The streams open, in all and per client address, within their caps.
#[derive(Debug)]
pub struct Streams {
    max: usize,
    per_client: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<IpAddr, usize>)>,
}

/// One open stream's place; given back when dropped.
pub struct StreamPlace {
    streams: Arc<Streams>,
    client: Option<IpAddr>,
}

impl Streams {
    pub fn new(max: usize, per_client: usize) -> Streams {
        Streams {
            max,
            per_client,
            open: std::sync::Mutex::default(),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().map(|o| o.0).unwrap_or(0)
    }

    /// A place for a stream of `client`, or why there is none.
    pub fn take(self: &Arc<Self>, client: Option<IpAddr>) -> Result<StreamPlace> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max {
            return Err(ApiError::Unavailable(
                "the server has all the event streams it can hold",
            ));
        }
        if let Some(client) = client {
            let mine = open.1.entry(client).or_default();
            if *mine >= self.per_client {
                return Err(ApiError::TooManyStreams(self.per_client));
            }
            *mine += 1;
        }
        open.0 += 1;
        Ok(StreamPlace {
            streams: self.clone(),
            client,
        })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(client) = self.client {
            if let Some(mine) = open.1.get_mut(&client) {
                *mine -= 1;
                if *mine == 0 {
                    open.1.remove(&client);
                }
            }
        }
    }
}

/// The process-wide feed of committed warning events.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<WarningEvent>>,
    /// The id of the last event broadcast; `None` until the feed has read where to start.
    position: watch::Receiver<Option<i64>>,
}

impl Hub {
    /// Starts feeding from the database until `shutdown`.
    pub fn start(store: Store, database: DatabaseConfig, shutdown: CancellationToken) -> Hub {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (position_tx, position) = watch::channel(None);
        tokio::spawn(feed(store, database, sender.clone(), position_tx, shutdown));
        Hub { sender, position }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WarningEvent>> {
        self.sender.subscribe()
    }

    /// The id of the last event broadcast, once the feed has started. Every later event will
    /// be broadcast to the receivers subscribed now, so "live from here" starts at this id.
    pub async fn position(&self, timeout: Duration) -> Option<i64> {
        let mut position = self.position.clone();
        let started = tokio::time::timeout(timeout, position.wait_for(Option::is_some)).await;
        match started {
            Ok(Ok(value)) => *value,
            _ => None,
        }
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.sender.receiver_count()
    }
}

async fn feed(
    store: Store,
    database: DatabaseConfig,
    sender: broadcast::Sender<Arc<WarningEvent>>,
    position: watch::Sender<Option<i64>>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    let mut wakeups = tidemark_store::notify::Wakeups::new(
        &database,
        &[tidemark_store::coordination::Channel::WarningsChanged],
    );
    while !shutdown.is_cancelled() {
        // Listening before reading, so an event committed meanwhile wakes the next read.
        wakeups.ensure().await;
        match last {
            None => match store.last_warning_event_id().await {
                Ok(id) => last = Some(id),
                Err(error) => tracing::warn!(%error, "event stream cannot read the database"),
            },
            Some(ref mut last) => broadcast_after(&store, &sender, last).await,
        }
        position.send_replace(last);
        // Without a listener, poll; with one, a slow poll still covers a lost notification.
        let poll = if wakeups.listening() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wakeups.wait(poll) => {}
        }
    }
}

/// Broadcasts every event after `last`, advancing it.
async fn broadcast_after(
    store: &Store,
    sender: &broadcast::Sender<Arc<WarningEvent>>,
    last: &mut i64,
) {
    loop {
        match store.warning_events_after(*last, CATCH_UP_PAGE).await {
            Ok(events) => {
                let full = events.len() as i64 == CATCH_UP_PAGE;
                for event in events {
                    *last = event.id;
                    // No receivers is fine: nobody is connected.
                    let _ = sender.send(Arc::new(event));
                }
                if !full {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "event stream cannot read the database");
                return;
            }
        }
    }
}
