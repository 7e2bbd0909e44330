//! A fresh database per test.

use crate::admin;
use crate::Error;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use tidemark_store::DatabaseConfig;

/// The server tests create their databases on: `TIDEMARK_TEST_DATABASE_URL`, by default the local
/// PostgreSQL as user postgres.
pub fn test_server() -> DatabaseConfig {
    let url = std::env::var("TIDEMARK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    DatabaseConfig {
        url,
        pool_size: 4,
        ..DatabaseConfig::default()
    }
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, dropped by [`TestDatabase::drop_database`]. Databases left
/// by test processes that have since exited are dropped when the next one is created.
pub struct TestDatabase {
    pub config: DatabaseConfig,
    pub name: String,
    server: DatabaseConfig,
}

const PREFIX: &str = "tidemark_test_";

impl TestDatabase {
    pub async fn create(server: &DatabaseConfig) -> Result<TestDatabase, Error> {
        let n = DATABASES.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        if n == 0 {
            drop_orphans(server).await?;
        }
        let name = format!("{PREFIX}{pid}_{n}");
        admin::create_database(server, &name).await?;
        Ok(TestDatabase {
            config: server.with_database(&name),
            name,
            server: server.clone(),
        })
    }

    pub async fn drop_database(self) -> Result<(), Error> {
        admin::drop_database(&self.server, &self.name).await
    }
}

async fn drop_orphans(server: &DatabaseConfig) -> Result<(), Error> {
    for name in admin::list_databases(server, PREFIX).await? {
        let pid = name
            .trim_start_matches(PREFIX)
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            admin::drop_database(server, &name).await?;
        }
    }
    Ok(())
}
