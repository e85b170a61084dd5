//! The PostgreSQL backend against a real, throwaway PostgreSQL (see
//! `otpgate_store::testkit`): the shared conformance suite, plus what only
//! several nodes on one database can show — races between pools, outbox
//! leases, outages and schema versions.

use std::sync::Arc;

use otpgate_store::Store;
use otpgate_store::postgres::{PgOptions, PostgresStore};
use otpgate_store::testkit::{TempPostgres, require_services};

/// The shared server, or `None` after printing why the test is skipped
/// (PostgreSQL not installed and `OTPGATE_REQUIRE_SERVICES` unset).
fn server(test: &str) -> Option<&'static TempPostgres> {
    match TempPostgres::shared() {
        Ok(pg) => Some(pg),
        Err(e) if e.is_missing() && !require_services() => {
            println!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

async fn fresh_store(pg: &TempPostgres) -> Arc<PostgresStore> {
    let url = pg.fresh_database();
    Arc::new(
        PostgresStore::connect(&url, PgOptions::default())
            .await
            .expect("connect to a fresh database"),
    )
}

#[tokio::test]
async fn a_fresh_database_is_migrated_and_answers() {
    let Some(pg) = server("a_fresh_database_is_migrated_and_answers") else {
        return;
    };
    let store = fresh_store(pg).await;
    store.ping().await.unwrap();
    assert_eq!(store.backend(), "postgres");
    assert_eq!(
        store.schema_version().await.unwrap(),
        otpgate_store::postgres::SCHEMA_VERSION
    );
}
