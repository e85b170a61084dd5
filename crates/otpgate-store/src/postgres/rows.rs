//! The columns PostgreSQL rows of accounts are read with, and how such a
//! row reads an integer (of three widths); the records are decoded by
//! `crate::records`, as on SQLite.

/// The columns [`account`] reads: `settings` is `jsonb` here, read as text.
macro_rules! account_columns {
    () => {
        "customer_id, password_hash, email, country, credits, test_credits, token_epoch, \
         disabled, settings::text as settings, created_at"
    };
}
pub(crate) use account_columns;

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

// The other column lists are one for both backends, beside their decoders.
pub(crate) use crate::records::{
    account, inbox_entry, outbox_columns, outbox_message, verification, verification_columns,
};
