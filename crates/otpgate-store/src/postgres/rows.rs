//! The columns PostgreSQL rows are read with, and how such a row reads an
//! integer (of three widths); the records are decoded by `crate::records`,
//! as on SQLite.

/// The columns [`verification`] reads, in `select` order.
macro_rules! verification_columns {
    () => {
        "id, customer_id, country_code, national, flow_type, code_hash, otp_length, state, \
         wrong_attempts, max_attempts, created_at, expires_at, completed_at, transaction_id, \
         cost, cost_test, delivery, channel, gateway_id, delivery_detail"
    };
}
pub(crate) use verification_columns;

/// The columns [`account`] reads.
macro_rules! account_columns {
    () => {
        "customer_id, password_hash, email, country, credits, test_credits, token_epoch, \
         disabled, settings::text as settings, created_at"
    };
}
pub(crate) use account_columns;

/// The columns [`outbox_message`] reads, from `outbox o` joined with
/// `verifications v`.
macro_rules! outbox_columns {
    () => {
        "o.id, o.verification_id, o.customer_id, v.country_code, v.national, \
         coalesce(o.flow_type, v.flow_type) as flow_type, o.step, o.address, o.lang, \
         o.text, o.status, o.attempts, o.next_attempt_at, v.expires_at, o.channel, \
         o.gateway_id, o.last_error, o.created_at"
    };
}
pub(crate) use outbox_columns;

// The decoders are the store's (`crate::records`); this says how a row of
// this backend reads an integer.
crate::records::stored_row!(sqlx::postgres::PgRow, |row, col| {
    use sqlx::{Column as _, Row as _, TypeInfo as _};
    let unreadable = |e: sqlx::Error| crate::records::unreadable(col, &e);
    let column = row.try_column(col).map_err(unreadable)?;
    // PostgreSQL keeps counters narrower than the i64 the records hold.
    Ok(match column.type_info().name() {
        "INT2" => row
            .try_get::<Option<i16>, _>(col)
            .map_err(unreadable)?
            .map(i64::from),
        "INT4" => row
            .try_get::<Option<i32>, _>(col)
            .map_err(unreadable)?
            .map(i64::from),
        _ => row.try_get::<Option<i64>, _>(col).map_err(unreadable)?,
    })
});

pub(crate) use crate::records::{account, inbox_entry, outbox_message, verification};
