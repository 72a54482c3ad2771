//! A database of its own on the Postgres server `DATABASE_URL` names (default: the local
//! one, user `postgres`): created empty (dropped first if it exists), for the
//! integration tests (a random name each), the benchmarks and the examples (a fixed
//! name, so that a run left behind is replaced). Shared by `#[path]` from `benches/`
//! and `examples/`, so it uses nothing but sqlx and anyhow.

use sqlx::{Connection, PgConnection};

/// The server's URL (`DATABASE_URL`, else the local server).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The URL of database `name` on the server `server` names.
pub fn database_url(server: &str, name: &str) -> String {
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    format!("{base}/{name}")
}

/// Creates database `name`, empty (dropping one of that name first); returns its URL.
pub async fn create_empty(server: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(server).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(database_url(server, name))
}

/// Drops database `name` (its connections are ended).
pub async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(server).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
