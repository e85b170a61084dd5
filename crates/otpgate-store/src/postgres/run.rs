//! Running one statement on PostgreSQL, on the pool or in a transaction,
//! with its failure mapped by `db_err` and its rows decoded by the caller's
//! decoder: the counterpart of the SQLite writer's `exec`, `opt`, `all` and
//! `one`, so each operation is its SQL, its binds and its decoder.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{FromRow, PgExecutor, Postgres, Row as _};

use super::error::db_err;
use crate::StoreResult;

/// A statement with its binds.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Runs `query`; the number of rows it changed.
pub(super) async fn exec<'c>(on: impl PgExecutor<'c>, query: PgQuery<'_>) -> StoreResult<u64> {
    Ok(query.execute(on).await.map_err(db_err)?.rows_affected())
}

/// The first row of `query`, decoded, if it returned one.
pub(super) async fn opt<'c, T>(
    on: impl PgExecutor<'c>,
    query: PgQuery<'_>,
    decode: impl Fn(&PgRow) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let row = query.fetch_optional(on).await.map_err(db_err)?;
    row.as_ref().map(decode).transpose()
}

/// The one row `query` returns, decoded (none is an error).
pub(super) async fn one<'c, T>(
    on: impl PgExecutor<'c>,
    query: PgQuery<'_>,
    decode: impl Fn(&PgRow) -> StoreResult<T>,
) -> StoreResult<T> {
    decode(&query.fetch_one(on).await.map_err(db_err)?)
}

/// Every row of `query`, decoded.
pub(super) async fn all<'c, T>(
    on: impl PgExecutor<'c>,
    query: PgQuery<'_>,
    decode: impl Fn(&PgRow) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let rows = query.fetch_all(on).await.map_err(db_err)?;
    rows.iter().map(decode).collect()
}

/// A decoder reading a row's columns in order into a tuple.
pub(super) fn tuple<T: for<'r> FromRow<'r, PgRow>>(row: &PgRow) -> StoreResult<T> {
    T::from_row(row).map_err(db_err)
}

/// A decoder reading a row's first column.
pub(super) fn scalar<T>(row: &PgRow) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(0).map_err(db_err)
}
