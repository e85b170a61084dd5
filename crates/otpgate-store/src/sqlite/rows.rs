//! The columns SQLite rows are read with, and how such a row reads an
//! integer; the records are decoded by `crate::records`, as on PostgreSQL.

/// The columns [`account`] reads, for `select` and `returning`.
macro_rules! account_columns {
    () => {
        "customer_id, password_hash, email, country, credits, test_credits, \
         token_epoch, disabled, settings, created_at"
    };
}

/// The columns [`verification`] reads, unqualified.
macro_rules! verification_columns {
    () => {
        "id, customer_id, country_code, national, flow_type, code_hash, otp_length, \
         state, wrong_attempts, max_attempts, created_at, expires_at, completed_at, \
         transaction_id, cost, cost_test, delivery, channel, gateway_id, delivery_detail"
    };
}

/// The columns [`outbox_message`] reads, from `outbox o join verifications v`.
macro_rules! outbox_columns {
    () => {
        "o.id, o.verification_id, v.customer_id, v.country_code, v.national, \
         coalesce(o.flow_type, v.flow_type) as flow_type, o.step, o.address, o.lang, \
         o.text, o.status, o.attempts, o.next_attempt_at, v.expires_at, o.channel, \
         o.gateway_id, o.last_error, o.created_at"
    };
}

pub(crate) use {account_columns, outbox_columns, verification_columns};

// The decoders are the store's (`crate::records`); this says how a row of
// this backend reads an integer.
crate::records::stored_row!(sqlx::sqlite::SqliteRow, |row, col| {
    sqlx::Row::try_get(row, col).map_err(|e| crate::records::unreadable(col, &e))
});

pub(crate) use crate::records::{account, inbox_entry, outbox_message, verification};
