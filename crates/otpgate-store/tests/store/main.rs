//! The store's tests, in one binary. The contract every backend owes the
//! server (contract §2–§5 as the store enforces them) is written once, against
//! `dyn Store`, and `both_backends!` runs each of those tests on SQLite (a
//! file in a fresh directory) and on PostgreSQL (a fresh database on a
//! throwaway server, see `otpgate_testkit::postgres`): `accounts::sqlite::…` and
//! `accounts::postgres::…`. "Several nodes" are several handles on one
//! database: `SqliteStore`s on one file, or pools on one PostgreSQL database.
//! What only one backend has lives in `sqlite_only` and `postgres_only`.
//!
//! Without PostgreSQL installed, its tests print `SKIPPED <name>: <why>` and
//! pass, unless `OTPGATE_REQUIRE_SERVICES` is set (CI), when they fail.

#[macro_use]
mod fixture;
mod helpers;

mod accounts;
mod console;
mod events;
mod fraud;
mod handoff;
mod opening;
mod outbox;
mod postgres_only;
mod retention;
mod schema;
mod sends;
mod sqlite_only;
mod validation;
