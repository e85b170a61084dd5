//! Opens the store a database URL names: `sqlite:…` (one machine) or
//! `postgres:…` / `postgresql:…` (several nodes sharing a database). The one
//! place that knows which backend a URL means, for the server, the CLI and
//! the tools alike.

use std::sync::Arc;

use crate::postgres::{PgOptions, PostgresStore};
use crate::sqlite::SqliteStore;
use crate::{Store, StoreError};

/// Why [`open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names no backend this build has.
    #[error("database URL must start with sqlite: or postgres:")]
    UnknownScheme,
    /// The SQLite file could not be opened or migrated. Its URL is a path
    /// and holds no secret, so it is named.
    #[error("failed to open {url}")]
    Sqlite {
        url: String,
        #[source]
        source: StoreError,
    },
    /// PostgreSQL could not be reached or migrated. Its URL is not named:
    /// it may hold a password.
    #[error("failed to connect to PostgreSQL")]
    Postgres {
        #[source]
        source: StoreError,
    },
}

impl OpenError {
    /// The store's own error, where there is one.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::UnknownScheme => None,
            Self::Sqlite { source, .. } | Self::Postgres { source } => Some(source),
        }
    }
}

/// Opens (creating a SQLite file if needed) and migrates the database `url`
/// names; `postgres` sets PostgreSQL's pool and timeouts (SQLite has none).
///
/// # Errors
/// [`OpenError`]: an unknown scheme, or the backend failing to open or
/// migrate (a newer schema included: [`StoreError::SchemaTooNew`]).
pub async fn open(url: &str, postgres: PgOptions) -> Result<Arc<dyn Store>, OpenError> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(url)
            .await
            .map_err(|source| OpenError::Sqlite {
                url: url.to_owned(),
                source,
            })?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect(url, postgres)
            .await
            .map_err(|source| OpenError::Postgres { source })?;
        Ok(Arc::new(store))
    } else {
        Err(OpenError::UnknownScheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_of_no_backend_is_refused_by_name() {
        for url in ["mysql://x", "otpgate.db", "", "SQLITE:otpgate.db"] {
            let err = open(url, PgOptions::default()).await.err();
            assert!(
                matches!(err, Some(OpenError::UnknownScheme)),
                "{url}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_sqlite_url_opens_that_backend() {
        let store = open("sqlite::memory:", PgOptions::default()).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        store.ping().await.unwrap();
    }
}
