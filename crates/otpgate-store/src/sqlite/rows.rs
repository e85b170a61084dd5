//! The columns SQLite rows of accounts are read with, and how a rusqlite
//! row reads a column; the records are decoded by `crate::records`, as on
//! PostgreSQL.

use std::cell::Cell;

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

/// A row whose columns the store's decoders read by name, found cheaply.
///
/// Why: rusqlite finds a column by name by comparing it with every column
/// before it, so a decoder reading its twenty columns made about two
/// hundred name comparisons a row (3% of the server's time validating
/// codes, measured). The decoders read their columns in the order the
/// column lists give them, so looking first where the previous column was
/// found finds each at once; a column read out of order is still found,
/// by the rest of the search.
struct Named<'r, 's> {
    row: &'r Row<'s>,
    /// Where the search for the next column starts: after the last found.
    next: Cell<usize>,
}

impl<'r, 's> Named<'r, 's> {
    fn new(row: &'r Row<'s>) -> Self {
        Self {
            row,
            next: Cell::new(0),
        }
    }

    fn get<T: FromSql>(&self, col: &str) -> StoreResult<T> {
        let stmt = self.row.as_ref();
        let n = stmt.column_count();
        let start = self.next.get();
        for i in (start..n).chain(0..start.min(n)) {
            // As rusqlite's own search: names compare ignoring ASCII case.
            if stmt
                .column_name(i)
                .is_ok_and(|name| name.eq_ignore_ascii_case(col))
            {
                self.next.set(i + 1);
                return self.row.get(i).map_err(sq);
            }
        }
        Err(sq(rusqlite::Error::InvalidColumnName(col.to_owned())))
    }
}

// The decoders are the store's (`crate::records`); this says how a row of
// this backend reads its columns.
impl StoredRow for Named<'_, '_> {
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        self.get(col)
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        self.get(col)
    }
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>> {
        self.get(col)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        self.get(col)
    }
}

// As plain functions of a rusqlite row, to hand to `writer::opt` and `all`.
pub(super) fn account(row: &Row<'_>) -> StoreResult<Account> {
    records::account(&Named::new(row))
}
pub(super) fn verification(row: &Row<'_>) -> StoreResult<Verification> {
    records::verification(&Named::new(row))
}
pub(super) fn outbox_message(row: &Row<'_>) -> StoreResult<OutboxMessage> {
    records::outbox_message(&Named::new(row))
}
pub(super) fn inbox_entry(row: &Row<'_>) -> StoreResult<InboxEntry> {
    records::inbox_entry(&Named::new(row))
}
