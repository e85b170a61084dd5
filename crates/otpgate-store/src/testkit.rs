//! The throwaway PostgreSQL server for tests (feature `testkit`). It lives
//! in `otpgate-testkit`, the support every test crate shares; this
//! re-export keeps it at hand for this crate's own unit tests.

pub use otpgate_testkit::postgres::{TempPostgres, TestkitError};
pub use otpgate_testkit::require_services;
