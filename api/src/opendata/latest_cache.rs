//! The answer to an unfiltered `GET /api/v1/latest` in JSON, kept ready: a map that refreshes
//! every few seconds asks for it far more often than new readings arrive.
//!
//! A listener on `readings_committed` marks the answer out of date; the next request rebuilds it,
//! at most once per [`MAX_AGE`] while readings keep arriving, and concurrent requests share one
//! rebuild. Filtered or CSV requests go to the database as before.
//!
//! When the answer comes from a standby (`database.read_url`), a notification from the primary
//! may arrive before the standby holds the batch, and a rebuild then would keep an old answer
//! until the next one. The cache then counts as out of date always, and is rebuilt at most once
//! per [`MAX_AGE`].

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::DatabaseConfig;
use tokio::sync::Mutex;
use tokio::time::Instant;
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
    /// The answers come from a standby: out of date always (see the module documentation).
    from_standby: bool,
}

impl LatestCache {
    /// Starts marking the cache stale on every committed batch, until `shutdown`.
    pub fn start(database: DatabaseConfig, shutdown: CancellationToken) -> Arc<LatestCache> {
        if database.read_url.is_some() {
            return Arc::new(LatestCache::from_standby());
        }
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

    /// A cache for answers read from a standby, rebuilt once per [`MAX_AGE`] whatever the
    /// primary announces.
    pub fn from_standby() -> LatestCache {
        LatestCache {
            from_standby: true,
            ..LatestCache::default()
        }
    }

    /// The cached body, rebuilt with `build` first when it is missing, or out of date and older
    /// than [`MAX_AGE`].
    pub async fn get<F, Fut, E>(&self, build: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, E>>,
    {
        let mut entry = self.entry.lock().await;
        let fresh = entry.as_ref().is_some_and(|e| {
            let stale = self.from_standby || self.stale.load(Ordering::Acquire);
            !stale || e.built.elapsed() < MAX_AGE
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(cache: &LatestCache, value: &str) -> Bytes {
        let value = value.to_owned();
        cache
            .get(|| async move { Ok::<_, ()>(value.into_bytes()) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_from_a_standby_is_rebuilt_once_it_is_older_than_max_age() {
        let cache = LatestCache::from_standby();
        assert_eq!(answer(&cache, "first").await, "first");
        // Nothing was announced, but the standby may have caught up since: a younger answer
        // stays, an older one is rebuilt.
        assert_eq!(answer(&cache, "second").await, "first");
        tokio::time::sleep(MAX_AGE + Duration::from_millis(50)).await;
        assert_eq!(answer(&cache, "third").await, "third");
        // Following the primary, an answer stays until a batch is announced.
        let primary = LatestCache::default();
        assert_eq!(answer(&primary, "first").await, "first");
        tokio::time::sleep(MAX_AGE + Duration::from_millis(50)).await;
        assert_eq!(answer(&primary, "second").await, "first");
    }
}
