//! The answer to an unfiltered `GET /api/v1/latest` in JSON, kept ready: a map that refreshes
//! every few seconds asks for it far more often than new readings arrive.
//!
//! A listener on `readings_committed` marks the answer out of date; the next request rebuilds it,
//! at most once per [`MAX_AGE`] while readings keep arriving, and concurrent requests share one
//! rebuild. Filtered or CSV requests go to the database as before.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_store::DatabaseConfig;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How old a cached answer may be while new readings are arriving.
pub const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    body: Bytes,
    built: Instant,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LatestCache {
    entry: Mutex<Option<Entry>>,
    stale: AtomicBool,
}

impl LatestCache {
    /// Starts marking the cache stale on every committed batch, until `shutdown`.
    pub fn start(database: DatabaseConfig, shutdown: CancellationToken) -> Arc<LatestCache> {
        let cache = Arc::new(LatestCache::default());
        let marker = cache.clone();
        tokio::spawn(async move {
            let mut wakeups = tidemark_store::notify::Wakeups::new(
                &database,
                &[tidemark_store::coordination::Channel::ReadingsCommitted],
            );
            while !shutdown.is_cancelled() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wakeups.wait(Duration::from_secs(5)) => {}
                }
                // A notification, a timeout or a lost connection: any of them may mean news.
                marker.stale.store(true, Ordering::Release);
            }
        });
        cache
    }

    /// The cached body, rebuilt with `build` first when it is missing, or out of date and older
    /// than [`MAX_AGE`].
    pub async fn get<F, Fut, E>(&self, build: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, E>>,
    {
        let mut entry = self.entry.lock().await;
        let fresh = entry
            .as_ref()
            .is_some_and(|e| !self.stale.load(Ordering::Acquire) || e.built.elapsed() < MAX_AGE);
        if let (true, Some(e)) = (fresh, entry.as_ref()) {
            return Ok(e.body.clone());
        }
        // Cleared before reading, so a batch committed during the rebuild marks it stale again.
        self.stale.store(false, Ordering::Release);
        let body = Bytes::from(build().await?);
        *entry = Some(Entry {
            body: body.clone(),
            built: Instant::now(),
        });
        Ok(body)
    }
}
