//! The database each test gets, on either backend, and `both_backends!`,
//! which runs one test function on both.
//!
//! A [`TestDb`] is a fresh, empty database — a file in a directory of its
//! own for SQLite, a new database on the binary's throwaway server for
//! PostgreSQL — that a test opens as many times as it needs nodes: each
//! [`TestDb::open`] is another handle (another `SqliteStore` on the file,
//! another `PostgresStore` with a pool of its own), as another process or
//! another node would open it.

use std::ops::Deref;
use std::path::Path;

use otpgate_core::CustomerId;
use otpgate_store::postgres::{self, PgOptions, PostgresStore};
use otpgate_store::sqlite::{self, SqliteStore};
use otpgate_store::{Store, StoreResult};
use otpgate_testkit::{TempPostgres, TestkitError};

use crate::helpers::{account, cid};

/// Turns each listed `async fn name(db: TestDb)` of the calling module into
/// two tests, `sqlite::name` and `postgres::name`, each with a fresh
/// database. Multi-threaded runtimes, so the races between nodes are real.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    $crate::fixture::run($crate::fixture::Backend::Sqlite, test, super::$name).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    $crate::fixture::run($crate::fixture::Backend::Postgres, test, super::$name).await;
                }
            )+
        }
    };
}

/// Runs `body` on a fresh database on `backend`, unless the test is skipped
/// (see [`TestDb::fresh`]).
pub async fn run<F: Future<Output = ()>>(
    backend: Backend,
    test: &str,
    body: impl FnOnce(TestDb) -> F,
) {
    if let Some(db) = TestDb::fresh(backend, test).await {
        body(db).await;
    }
}

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// What [`Store::backend`] answers.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The schema version this build migrates to.
    pub fn schema_version(self) -> i64 {
        match self {
            Backend::Sqlite => sqlite::SCHEMA_VERSION,
            Backend::Postgres => postgres::SCHEMA_VERSION,
        }
    }
}

/// A fresh database for one test. See the module documentation.
pub struct TestDb {
    pub backend: Backend,
    location: Location,
}

enum Location {
    Sqlite(TempDir),
    Postgres(String),
}

impl TestDb {
    /// A fresh database on `backend` for the test `test` (its module path).
    /// `None` after printing `SKIPPED <test>: <why>` when PostgreSQL is not
    /// installed and `OTPGATE_REQUIRE_SERVICES` is unset; a panic when it
    /// is set, or when an installed PostgreSQL fails.
    pub async fn fresh(backend: Backend, test: &str) -> Option<Self> {
        let location = match backend {
            Backend::Sqlite => Location::Sqlite(TempDir::new("store")),
            Backend::Postgres => Location::Postgres(fresh_postgres_database(test).await?),
        };
        Some(Self { backend, location })
    }

    /// A fresh PostgreSQL database, or `None` as [`TestDb::fresh`] says.
    pub async fn postgres(test: &str) -> Option<Self> {
        Self::fresh(Backend::Postgres, test).await
    }

    /// Opens another handle on this database (migrating it, the first time).
    ///
    /// # Panics
    /// When it cannot be opened; [`TestDb::try_open`] returns the error.
    pub async fn open(&self) -> Node {
        self.try_open().await.expect("open the test database")
    }

    /// Opens a handle, as [`TestDb::open`], holding account `cid(1)` with
    /// these balances (see [`account`](crate::helpers::account)).
    pub async fn open_with_account(&self, credits: i64, test_credits: i64) -> (Node, CustomerId) {
        let store = self.open().await;
        let c = cid(1);
        account(&store, &c, credits, test_credits).await;
        (store, c)
    }

    /// `n` nodes, as [`TestDb::nodes`], and account `cid(1)` with these
    /// balances, made through the first.
    pub async fn nodes_with_account(
        &self,
        n: usize,
        credits: i64,
        test_credits: i64,
    ) -> (Vec<Node>, CustomerId) {
        let nodes = self.nodes(n).await;
        let c = cid(1);
        account(&nodes[0], &c, credits, test_credits).await;
        (nodes, c)
    }

    /// Opens another handle on this database.
    pub async fn try_open(&self) -> StoreResult<Node> {
        match &self.location {
            Location::Sqlite(dir) => SqliteStore::open_path(dir.db()).await.map(Node::Sqlite),
            Location::Postgres(url) => PostgresStore::connect(url, PgOptions::default())
                .await
                .map(Node::Postgres),
        }
    }

    /// `n` handles on this database, as `n` nodes of one service. On
    /// PostgreSQL each has a pool of two connections, so that many nodes
    /// stay well inside the server's `max_connections`.
    pub async fn nodes(&self, n: usize) -> Vec<Node> {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(match &self.location {
                Location::Sqlite(_) => self.open().await,
                Location::Postgres(url) => {
                    let opts = PgOptions {
                        pool_size: 2,
                        ..PgOptions::default()
                    };
                    Node::Postgres(PostgresStore::connect(url, opts).await.expect("connect"))
                }
            });
        }
        nodes
    }

    /// The PostgreSQL URL of this database.
    ///
    /// # Panics
    /// On SQLite.
    pub fn url(&self) -> &str {
        match &self.location {
            Location::Postgres(url) => url,
            Location::Sqlite(_) => panic!("a SQLite test database has no URL"),
        }
    }

    /// The migration history: (rows, distinct versions, distinct times of
    /// application). On PostgreSQL one opener applies every missing
    /// migration in one transaction, stamping each row with the same time.
    pub async fn migration_history(&self) -> (i64, i64, i64) {
        use sqlx::Connection;
        match &self.location {
            Location::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.db().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let (rows, versions): (i64, i64) = sqlx::query_as(
                    "select count(*), count(distinct version) from _sqlx_migrations where success",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
                (rows, versions, 1)
            }
            Location::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let counts: (i64, i64, i64) = sqlx::query_as(
                    "select count(*), count(distinct version), count(distinct created_at)
                     from schema_version",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
                counts
            }
        }
    }

    /// Leaves the database as a later otpgate would, with a migration this
    /// build does not have, and returns the version it recorded. Every
    /// handle should be closed first.
    pub async fn pretend_a_newer_build_migrated(&self) -> i64 {
        use sqlx::Connection;
        match &self.location {
            Location::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.db().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(
                    "insert into _sqlx_migrations
                         (version, description, success, checksum, execution_time)
                     values (99, 'future', true, x'00', 0)",
                )
                .execute(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
                99
            }
            Location::Postgres(url) => {
                let future = postgres::SCHEMA_VERSION + 1;
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(
                    "insert into schema_version (version, name, created_at)
                     values ($1, 'future', 0)",
                )
                .bind(future)
                .execute(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
                future
            }
        }
    }
}

impl TestDb {
    /// The database's URL for a plain SQL connection (`sqlite://…` or
    /// `postgres://…`), for tests that read the schema itself.
    pub fn sql_url(&self) -> String {
        match &self.location {
            Location::Sqlite(dir) => format!("sqlite://{}?mode=rwc", dir.db().display()),
            Location::Postgres(url) => url.clone(),
        }
    }

    /// Leaves the database as the build that stopped at schema `version`
    /// made it: its migrations, applied as that build applied them. Nothing
    /// may have opened it yet.
    pub async fn make_at_schema(&self, version: i64) {
        use sqlx::Connection;
        match &self.location {
            Location::Sqlite(dir) => sqlite_at_schema(&dir.db(), version).await.close().await,
            Location::Postgres(url) => pg_at_schema(url, version).await.close().await.unwrap(),
        }
    }

    /// Runs `sql` (statements in the dialect both backends share) on the
    /// database directly, as an earlier build's own writes would.
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match &self.location {
            Location::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&self.sql_url())
                    .await
                    .unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            }
            Location::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

impl TestDb {
    /// Leaves the database as the build before events made it (SQLite
    /// schema 5, PostgreSQL schema 4: main's daily stats and retention
    /// included), holding account `C-…1` (5 credits)
    /// and its pending verification 42 created at `T0`, written by that
    /// schema's own SQL. Nothing may have opened it yet.
    pub async fn make_as_before_events(&self) {
        use sqlx::Connection;
        let account = "insert into accounts (customer_id, password_hash, credits, test_credits,
                                              created_at)
                       values ('C-000000000000001', 'x', 5, 0, 1764100000000)";
        let verification = "insert into verifications
                 (id, customer_id, country_code, national, destination, flow_type, code_hash,
                  otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
                  transaction_id, cost, cost_test, delivery)
             values (42, 'C-000000000000001', 91, '9876500001', '919876500001', 'SMS', $1, 4,
                     'pending', 0, 5, 1764100000000, 1764100060000, 'tx-42', 1, 0, 'queued')";
        match &self.location {
            Location::Sqlite(dir) => {
                let pool = sqlite_at_schema(&dir.db(), 5).await;
                sqlx::query(account).execute(&pool).await.unwrap();
                sqlx::query(verification)
                    .bind(vec![7u8; 32])
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Location::Postgres(url) => {
                let mut conn = pg_at_schema(url, 4).await;
                sqlx::query(account).execute(&mut conn).await.unwrap();
                sqlx::query(verification)
                    .bind(vec![7u8; 32])
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

/// A pool on the SQLite file at `path` (created if missing), migrated
/// through this build's migrations up to `version` by sqlx's migrator, as
/// the build that stopped at `version` migrated it.
pub async fn sqlite_at_schema(path: &Path, version: i64) -> sqlx::SqlitePool {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let old = sqlite::MIGRATIONS
        .iter()
        .filter(|m| m.0 <= version)
        .map(|&(v, d, sql)| {
            Migration::new(
                v,
                d.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(old).run(&pool).await.unwrap();
    pool
}

/// A connection to the empty PostgreSQL database at `url`, now migrated
/// through this build's migrations up to `version` and recording them in
/// `schema_version` as the build that stopped at `version` did.
pub async fn pg_at_schema(url: &str, version: i64) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "create table schema_version (version bigint primary key, name text not null,
                                      created_at bigint not null)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (v, name, sql) in postgres::migrations().filter(|m| m.0 <= version) {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        sqlx::query("insert into schema_version values ($1, $2, 0)")
            .bind(v)
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn
}

/// One handle on a test database; a [`Store`] through `Deref`, plus what a
/// test needs of the concrete store. Cheap to clone (a pool handle).
#[derive(Clone)]
pub enum Node {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Deref for Node {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        match self {
            Node::Sqlite(s) => s,
            Node::Postgres(p) => p,
        }
    }
}

impl crate::helpers::AsStore for Node {
    fn as_store(&self) -> &dyn Store {
        &**self
    }
}

impl Node {
    /// The schema version the database is at.
    pub async fn schema_version(&self) -> i64 {
        match self {
            Node::Sqlite(s) => s.schema_version().await,
            Node::Postgres(p) => p.schema_version().await,
        }
        .unwrap()
    }

    /// Closes the handle's connections, waiting for those in use.
    pub async fn close(&self) {
        match self {
            Node::Sqlite(s) => s.close().await,
            Node::Postgres(p) => p.close().await,
        }
    }
}

/// The binary's shared throwaway server and a new database on it, or
/// `None` after printing why the test is skipped.
async fn fresh_postgres_database(test: &str) -> Option<String> {
    // Starting the server and `createdb` run programs and wait for them.
    let pg = tokio::task::spawn_blocking(TempPostgres::shared)
        .await
        .unwrap();
    let pg = match pg {
        Ok(pg) => pg,
        Err(e) => return skip_or_fail(test, &e),
    };
    let url = tokio::task::spawn_blocking(|| pg.try_fresh_database())
        .await
        .unwrap();
    Some(url.unwrap_or_else(|e| panic!("{}: {e}", short(test))))
}

/// `None` after printing `SKIPPED <test>: <why>` when PostgreSQL is only
/// missing and services are not required; otherwise a panic.
pub fn skip_or_fail<T>(test: &str, e: &TestkitError) -> Option<T> {
    if e.is_missing() {
        otpgate_testkit::skip_or_fail(short(test), e)
    } else {
        panic!("{}: {e}", short(test))
    }
}

/// A test's name as the harness prints it (without the binary's name).
fn short(test: &str) -> &str {
    test.strip_prefix("store::").unwrap_or(test)
}

pub use otpgate_testkit::TempDir;
