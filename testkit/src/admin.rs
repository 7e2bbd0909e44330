//! Server administration for tests and benchmarks: creating and dropping whole databases.

use crate::Error;
use tidemark_store::config::connect_one;
use tidemark_store::DatabaseConfig;

type Result<T> = std::result::Result<T, Error>;

fn failed(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |cause| Error::Admin { context, cause }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates database `name` on `server`'s server.
pub async fn create_database(server: &DatabaseConfig, name: &str) -> Result<()> {
    let admin = connect_one(&server.with_database("postgres")).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote(name)))
        .await
        .map_err(failed("creating a database"))
}

/// Whether `server`'s database accepts a connection now.
pub async fn can_connect(server: &DatabaseConfig) -> bool {
    connect_one(server).await.is_ok()
}

/// Drops database `name`, disconnecting its sessions.
pub async fn drop_database(server: &DatabaseConfig, name: &str) -> Result<()> {
    let admin = connect_one(&server.with_database("postgres")).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ))
        .await
        .map_err(failed("dropping a database"))
}

/// Names of the databases whose name starts with `prefix`.
pub async fn list_databases(server: &DatabaseConfig, prefix: &str) -> Result<Vec<String>> {
    let admin = connect_one(&server.with_database("postgres")).await?;
    let rows = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )
        .await
        .map_err(failed("listing databases"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs `sql` (statements without results) against `server`'s database.
pub async fn execute(server: &DatabaseConfig, sql: &str) -> Result<()> {
    let client = connect_one(server).await?;
    client
        .batch_execute(sql)
        .await
        .map_err(failed("running a statement"))
}
