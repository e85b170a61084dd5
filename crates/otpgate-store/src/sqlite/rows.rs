//! The columns SQLite rows of accounts are read with, and how a rusqlite
//! row reads a column; the records are decoded by `crate::records`, as on
//! PostgreSQL.

use rusqlite::Row;
use rusqlite::types::FromSql;

use super::writer::sq;
use crate::records::{self, StoredRow};
use crate::{Account, InboxEntry, OutboxMessage, StoreResult, Verification};

/// The columns [`account`] reads, for `select` and `returning`.
macro_rules! account_columns {
    () => {
        "customer_id, password_hash, email, country, credits, test_credits, \
         token_epoch, disabled, settings, created_at"
    };
}
pub(crate) use account_columns;
// The other column lists are one for both backends, beside their decoders.
pub(crate) use crate::records::{outbox_columns, verification_columns};

/// One column of a row, by name.
pub(super) fn get<T: FromSql>(row: &Row<'_>, col: &str) -> StoreResult<T> {
    row.get(col).map_err(sq)
}

// The decoders are the store's (`crate::records`); this says how a row of
// this backend reads its columns.
impl StoredRow for Row<'_> {
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        get(self, col)
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        get(self, col)
    }
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>> {
        get(self, col)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        get(self, col)
    }
}

// As plain functions of a rusqlite row, to hand to `writer::opt` and `all`.
pub(super) fn account(row: &Row<'_>) -> StoreResult<Account> {
    records::account(row)
}
pub(super) fn verification(row: &Row<'_>) -> StoreResult<Verification> {
    records::verification(row)
}
pub(super) fn outbox_message(row: &Row<'_>) -> StoreResult<OutboxMessage> {
    records::outbox_message(row)
}
pub(super) fn inbox_entry(row: &Row<'_>) -> StoreResult<InboxEntry> {
    records::inbox_entry(row)
}
