//! Running one statement on PostgreSQL, on the pool or in a transaction,
//! with its failure mapped by `db_err` and its rows decoded by the caller's
//! decoder: the counterpart of the SQLite writer's `exec`, `opt`, `all` and
//! `one`, so each operation is its SQL, its binds and its decoder. Also the
//! lease of a claim, which the outbox and the event queue share.

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

/// The `due` CTE of a claim: the due rows of `$table` (in status `$status`,
/// due at `$1`, not leased or leased past its expiry), oldest due first, at
/// most `$2`, locked with `skip locked`, so rows another node is claiming
/// right now are passed over instead of waited for. The claim's update sets
/// `lease_owner = $3, lease_until = $4` ([`lease_binds`]).
macro_rules! lease_due {
    ($table:literal, $status:literal) => {
        concat!(
            "with due as (
                 select id from ",
            $table,
            " where status = '",
            $status,
            "' and next_attempt_at <= $1
                    and (lease_until is null or lease_until <= $1)
                  order by next_attempt_at, id
                  limit $2
                  for update skip locked
             )"
        )
    };
}
pub(super) use lease_due;

/// Binds a claim's parameters: now, at most `max` rows, for `worker` until
/// `now + lease_ms`.
pub(super) fn lease_binds<'q>(
    query: PgQuery<'q>,
    worker: &'q str,
    max: u32,
    lease_ms: i64,
    now: i64,
) -> PgQuery<'q> {
    query
        .bind(now)
        .bind(i64::from(max))
        .bind(worker)
        .bind(now.saturating_add(lease_ms.max(0)))
}
