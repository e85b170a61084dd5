//! The store these settings name: the opener is the store crate's
//! ([`otpgate_store::open`]); this only hands it the `[postgres]` settings.

use std::sync::Arc;

use otpgate_store::Store;
use otpgate_store::postgres::PgOptions;

use crate::config::Settings;

/// # Errors
/// An unknown scheme, or the backend failing to open or migrate.
pub async fn open(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let p = &settings.postgres;
    let opts = PgOptions {
        pool_size: p.pool_size,
        statement_timeout_ms: p.statement_timeout_ms,
        connect_timeout_ms: p.connect_timeout_ms,
    };
    Ok(otpgate_store::open(&settings.database_url, opts).await?)
}
