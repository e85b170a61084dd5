//! The PostgreSQL schema's migrations and the runner that applies them.
//!
//! Several nodes may start at once against one database, so the runner takes
//! a transaction-scoped advisory lock first: one node migrates, the others
//! wait, then find nothing left to do. PostgreSQL's DDL is transactional, so
//! a migration that fails leaves the schema as it was. `schema_version`
//! holds one row per applied migration; a database that has a version this
//! build does not know was migrated by a newer build, and is refused rather
//! than misread.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

use super::error::db_err;
use crate::{StoreError, StoreResult};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Builds the list from (version, name, file under `migrations/postgres`).
macro_rules! migrations {
    ($(($version:literal, $name:literal, $file:literal)),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/postgres/", $file)),
        }),*]
    };
}

/// In order; a new migration gets the next version and is never edited
/// once released.
const MIGRATIONS: &[Migration] = migrations![
    (1, "init", "0001_init.sql"),
    (2, "outbox steps", "0002_outbox_steps.sql"),
    (3, "fraud defence", "0003_fraud_defence.sql"),
    (
        4,
        "daily stats and retention",
        "0004_daily_stats_retention.sql"
    ),
    (5, "events", "0005_events.sql"),
    (6, "schema parity", "0006_schema_parity.sql"),
    (7, "destination index", "0007_destination_index.sql"),
    (8, "daily completions", "0008_daily_completions.sql"),
];

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = 8;

/// The migrations as (version, name, SQL), in order: for tests that make a
/// database as an earlier build did.
pub fn migrations() -> impl Iterator<Item = (i64, &'static str, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.name, m.sql))
}

/// Key of the advisory lock that serialises migrations across nodes
/// ("otpgate" in ASCII, then a 1).
const MIGRATION_LOCK: i64 = 0x6f74_7067_6174_6501;

/// Brings the schema up to [`SCHEMA_VERSION`]; returns the version found
/// before (0 for an empty database).
///
/// # Errors
/// [`StoreError::SchemaTooNew`] when the database is ahead of this build;
/// the database's own errors otherwise.
pub(crate) async fn run(conn: &mut PgConnection) -> StoreResult<i64> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // Waiting for another node's migration is legitimate, and a migration
    // may take longer than a request should: a wider bound than the
    // connection's statement_timeout, but still a bound.
    sqlx::query("set local statement_timeout = '300s'")
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "create table if not exists schema_version (
            version bigint primary key,
            name text not null,
            created_at bigint not null
        )",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let found: i64 = sqlx::query_scalar("select coalesce(max(version), 0) from schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| match db_err(e) {
                StoreError::Internal(msg) => {
                    StoreError::Internal(format!("migration {} ({}): {msg}", m.version, m.name))
                }
                other => other,
            })?;
        sqlx::query("insert into schema_version (version, name, created_at) values ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    tx.commit().await.map_err(db_err)?;
    Ok(found)
}

/// The schema version the database is at (0 before any migration).
pub(crate) async fn current(conn: &mut PgConnection) -> StoreResult<i64> {
    let exists: bool = sqlx::query_scalar("select to_regclass('schema_version') is not null")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("select coalesce(max(version), 0) from schema_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_end_at_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i).unwrap() + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
