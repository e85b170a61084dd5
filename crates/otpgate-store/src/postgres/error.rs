//! How PostgreSQL's failures become [`StoreError`]s: the ones that mean "the
//! database is not there right now" (connection lost, pool exhausted,
//! statement timeout, server shutting down) are `Unavailable`, so the API
//! answers 503 and a retry may succeed; a unique violation is `Conflict`;
//! anything else is a bug and `Internal`.
//!
//! Messages carry PostgreSQL's primary text only, never its `detail`, which
//! can quote row values.

use crate::StoreError;

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "23505" {
                return StoreError::Conflict(d.message().to_owned());
            }
            if is_transient_sqlstate(&code) {
                return StoreError::Unavailable(format!("{} ({code})", d.message()));
            }
            StoreError::Internal(format!("{} ({code})", d.message()))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => StoreError::Unavailable(e.to_string()),
        // A protocol error is what a connection cut mid-message looks like.
        sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

/// SQLSTATEs after which nothing was written and a later retry may succeed.
fn is_transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (e.g. too many
    // connections); 57: operator intervention (statement timeout 57014,
    // shutdown 57P01..57P03); 40001/40P01: serialization failure, deadlock;
    // 55P03: lock not available; 25P03: idle-in-transaction timeout.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || matches!(code, "40001" | "40P01" | "55P03" | "25P03")
}

/// A timeout of the whole operation, imposed by us rather than the server.
pub(crate) fn timed_out(ms: u64) -> StoreError {
    StoreError::Unavailable(format!("database did not answer within {ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_are_recognised() {
        for c in [
            "08006", "08001", "57014", "57P01", "57P03", "53300", "40001",
        ] {
            assert!(is_transient_sqlstate(c), "{c}");
        }
        for c in ["23505", "23514", "42P01", "22003", ""] {
            assert!(!is_transient_sqlstate(c), "{c}");
        }
    }

    #[test]
    fn pool_timeout_is_unavailable() {
        assert!(matches!(
            db_err(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
    }
}
