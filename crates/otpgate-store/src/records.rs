//! Reading the store's records back from either backend's rows, written
//! once: a backend says only how its columns decode ([`StoredRow`]; its
//! integer widths differ: SQLite has one, PostgreSQL three). Every value was
//! checked on its way in, so a value that does not parse on the way out is
//! corruption (or a bug) and becomes [`StoreError::Internal`], never a panic.

use otpgate_core::{CodeHash, PhoneNumber, VerificationState};

use crate::shared::{corrupt, count, customer_id, delivery, phone, verification_id};
use crate::{Account, AccountSettings, InboxEntry, OutboxMessage, StoreError, StoreResult};
use crate::{Verification, VerificationId};

/// A row's columns by name, as the decoders below read them.
pub(crate) trait StoredRow {
    /// An integer column of any width; `None` for null.
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>>;
    fn flag(&self, col: &str) -> StoreResult<bool>;

    fn int(&self, col: &str) -> StoreResult<i64> {
        self.opt_int(col)?.ok_or_else(|| null(col))
    }

    fn text(&self, col: &str) -> StoreResult<String> {
        self.opt_text(col)?.ok_or_else(|| null(col))
    }
}

fn null(col: &str) -> StoreError {
    StoreError::Internal(format!("stored {col} is null"))
}

/// A column that cannot be read as the decoder expects (missing, or of
/// another type): a bug or a schema this build does not know.
pub(crate) fn unreadable(col: &str, e: &sqlx::Error) -> StoreError {
    StoreError::Internal(format!("column {col}: {e}"))
}

/// Implements [`StoredRow`] for a backend's row type, given how it reads an
/// integer column.
macro_rules! stored_row {
    ($row:ty, |$r:ident, $col:ident| $opt_int:expr) => {
        impl $crate::records::StoredRow for $row {
            fn opt_int(&self, $col: &str) -> $crate::StoreResult<Option<i64>> {
                let $r = self;
                $opt_int
            }
            fn opt_text(&self, col: &str) -> $crate::StoreResult<Option<String>> {
                sqlx::Row::try_get(self, col).map_err(|e| $crate::records::unreadable(col, &e))
            }
            fn bytes(&self, col: &str) -> $crate::StoreResult<Vec<u8>> {
                sqlx::Row::try_get(self, col).map_err(|e| $crate::records::unreadable(col, &e))
            }
            fn flag(&self, col: &str) -> $crate::StoreResult<bool> {
                sqlx::Row::try_get(self, col).map_err(|e| $crate::records::unreadable(col, &e))
            }
        }
    };
}
pub(crate) use stored_row;

fn destination(row: &impl StoredRow) -> StoreResult<PhoneNumber> {
    phone(row.int("country_code")?, row.text("national")?)
}

fn id(row: &impl StoredRow, col: &str) -> StoreResult<VerificationId> {
    verification_id(row.int(col)?)
}

fn number(row: &impl StoredRow, col: &str) -> StoreResult<u32> {
    count(row.int(col)?, col)
}

/// The columns of the backend's `account_columns!`.
pub(crate) fn account(row: &impl StoredRow) -> StoreResult<Account> {
    let settings: AccountSettings =
        serde_json::from_str(&row.text("settings")?).map_err(|_| corrupt("account settings"))?;
    Ok(Account {
        customer_id: customer_id(&row.text("customer_id")?)?,
        password_hash: row.text("password_hash")?,
        email: row.opt_text("email")?,
        country: row.opt_text("country")?,
        credits: row.int("credits")?,
        test_credits: row.int("test_credits")?,
        token_epoch: row.int("token_epoch")?,
        disabled: row.flag("disabled")?,
        settings,
        created_at: row.int("created_at")?,
    })
}

/// The columns [`verification`] reads, unqualified, in `select` order: the
/// same on both backends.
macro_rules! verification_columns {
    () => {
        "id, customer_id, country_code, national, flow_type, code_hash, otp_length, state, \
         wrong_attempts, max_attempts, created_at, expires_at, completed_at, transaction_id, \
         cost, cost_test, delivery, channel, gateway_id, delivery_detail"
    };
}
pub(crate) use verification_columns;

/// The columns of [`verification_columns!`].
pub(crate) fn verification(row: &impl StoredRow) -> StoreResult<Verification> {
    Ok(Verification {
        id: id(row, "id")?,
        customer_id: customer_id(&row.text("customer_id")?)?,
        destination: destination(row)?,
        flow_type: row.text("flow_type")?,
        code_hash: CodeHash::from_slice(&row.bytes("code_hash")?)
            .map_err(|_| corrupt("code hash"))?,
        otp_length: u8::try_from(row.int("otp_length")?).map_err(|_| corrupt("otp length"))?,
        state: VerificationState::parse(&row.text("state")?).ok_or_else(|| corrupt("state"))?,
        wrong_attempts: number(row, "wrong_attempts")?,
        max_attempts: number(row, "max_attempts")?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        completed_at: row.opt_int("completed_at")?,
        transaction_id: row.text("transaction_id")?,
        cost: row.int("cost")?,
        cost_test: row.int("cost_test")?,
        delivery: delivery(&row.text("delivery")?)?,
        channel: row.opt_text("channel")?,
        gateway_id: row.opt_text("gateway_id")?,
        delivery_detail: row.opt_text("delivery_detail")?,
    })
}

/// The columns [`outbox_message`] reads, from `outbox o` joined with
/// `verifications v`: the same on both backends.
macro_rules! outbox_columns {
    () => {
        "o.id, o.verification_id, v.customer_id, v.country_code, v.national, \
         coalesce(o.flow_type, v.flow_type) as flow_type, o.step, o.address, o.lang, \
         o.text, o.status, o.attempts, o.next_attempt_at, v.expires_at, o.channel, \
         o.gateway_id, o.last_error, o.created_at"
    };
}
pub(crate) use outbox_columns;

/// The columns of [`outbox_columns!`].
pub(crate) fn outbox_message(row: &impl StoredRow) -> StoreResult<OutboxMessage> {
    Ok(OutboxMessage {
        id: row.int("id")?,
        verification_id: id(row, "verification_id")?,
        customer_id: customer_id(&row.text("customer_id")?)?,
        destination: destination(row)?,
        flow_type: row.text("flow_type")?,
        step: number(row, "step")?,
        address: row.opt_text("address")?,
        lang: row.opt_text("lang")?,
        text: row.opt_text("text")?,
        status: delivery(&row.text("status")?)?,
        attempts: number(row, "attempts")?,
        next_attempt_at: row.int("next_attempt_at")?,
        expires_at: row.int("expires_at")?,
        channel: row.opt_text("channel")?,
        gateway_id: row.opt_text("gateway_id")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.int("created_at")?,
    })
}

/// `customer_id, destination, text, verification_id, created_at` of `inbox`.
pub(crate) fn inbox_entry(row: &impl StoredRow) -> StoreResult<InboxEntry> {
    Ok(InboxEntry {
        customer_id: row
            .opt_text("customer_id")?
            .as_deref()
            .map(customer_id)
            .transpose()?,
        destination: row.text("destination")?,
        text: row.text("text")?,
        verification_id: row
            .opt_int("verification_id")?
            .map(verification_id)
            .transpose()?,
        created_at: row.int("created_at")?,
    })
}
