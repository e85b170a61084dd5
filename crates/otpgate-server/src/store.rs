//! Opens the store a database URL names: `sqlite://…` or `postgres://…`.

use std::sync::Arc;

use anyhow::Context;
use otpgate_store::Store;

use crate::config::Settings;

/// # Errors
/// An unknown scheme, or the backend failing to open or migrate.
pub async fn open(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = settings.database_url.as_str();
    if url.starts_with("sqlite:") {
        let s = otpgate_store::sqlite::SqliteStore::open(url)
            .await
            .with_context(|| format!("failed to open {url}"))?;
        Ok(Arc::new(s))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let p = &settings.postgres;
        let opts = otpgate_store::postgres::PgOptions {
            pool_size: p.pool_size,
            statement_timeout_ms: p.statement_timeout_ms,
            connect_timeout_ms: p.connect_timeout_ms,
        };
        let s = otpgate_store::postgres::PostgresStore::connect(url, opts)
            .await
            .context("failed to connect to PostgreSQL")?;
        Ok(Arc::new(s))
    } else {
        anyhow::bail!("database URL must start with sqlite: or postgres:")
    }
}
