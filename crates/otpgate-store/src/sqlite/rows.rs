//! Reading records back from SQLite rows. Every value was checked before it
//! was written, so a value that no longer parses means corruption or a bug:
//! it becomes [`StoreError::Internal`], never a panic.

use crate::shared::{corrupt, count, customer_id, delivery, phone, verification_id};
use otpgate_core::{CodeHash, PhoneNumber, VerificationState};
use rusqlite::Row;
use rusqlite::types::FromSql;

use super::writer::sq;
use crate::{Account, AccountSettings, InboxEntry, OutboxMessage, StoreResult};

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

pub(super) fn get<T: FromSql>(row: &Row<'_>, col: &str) -> StoreResult<T> {
    row.get(col).map_err(sq)
}

fn destination(row: &Row<'_>) -> StoreResult<PhoneNumber> {
    let cc: i64 = get(row, "country_code")?;
    phone(cc, get(row, "national")?)
}

pub(super) fn account(row: &Row<'_>) -> StoreResult<Account> {
    let settings: String = get(row, "settings")?;
    let settings: AccountSettings =
        serde_json::from_str(&settings).map_err(|_| corrupt("account settings"))?;
    Ok(Account {
        customer_id: customer_id(&get::<String>(row, "customer_id")?)?,
        password_hash: get(row, "password_hash")?,
        email: get(row, "email")?,
        country: get(row, "country")?,
        credits: get(row, "credits")?,
        test_credits: get(row, "test_credits")?,
        token_epoch: get(row, "token_epoch")?,
        disabled: get(row, "disabled")?,
        settings,
        created_at: get(row, "created_at")?,
    })
}

pub(super) fn verification(row: &Row<'_>) -> StoreResult<crate::Verification> {
    let code_hash: Vec<u8> = get(row, "code_hash")?;
    let otp_length: i64 = get(row, "otp_length")?;
    let state: String = get(row, "state")?;
    Ok(crate::Verification {
        id: verification_id(get(row, "id")?)?,
        customer_id: customer_id(&get::<String>(row, "customer_id")?)?,
        destination: destination(row)?,
        flow_type: get(row, "flow_type")?,
        code_hash: CodeHash::from_slice(&code_hash).map_err(|_| corrupt("code hash"))?,
        otp_length: u8::try_from(otp_length).map_err(|_| corrupt("otp length"))?,
        state: VerificationState::parse(&state).ok_or_else(|| corrupt("state"))?,
        wrong_attempts: count(get(row, "wrong_attempts")?, "wrong attempts")?,
        max_attempts: count(get(row, "max_attempts")?, "max attempts")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        completed_at: get(row, "completed_at")?,
        transaction_id: get(row, "transaction_id")?,
        cost: get(row, "cost")?,
        cost_test: get(row, "cost_test")?,
        delivery: delivery(&get::<String>(row, "delivery")?)?,
        channel: get(row, "channel")?,
        gateway_id: get(row, "gateway_id")?,
        delivery_detail: get(row, "delivery_detail")?,
    })
}

pub(super) fn outbox_message(row: &Row<'_>) -> StoreResult<OutboxMessage> {
    Ok(OutboxMessage {
        id: get(row, "id")?,
        verification_id: verification_id(get(row, "verification_id")?)?,
        customer_id: customer_id(&get::<String>(row, "customer_id")?)?,
        destination: destination(row)?,
        flow_type: get(row, "flow_type")?,
        step: count(get::<i64>(row, "step")?, "step")?,
        address: get(row, "address")?,
        lang: get(row, "lang")?,
        text: get(row, "text")?,
        status: delivery(&get::<String>(row, "status")?)?,
        attempts: count(get(row, "attempts")?, "attempts")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        expires_at: get(row, "expires_at")?,
        channel: get(row, "channel")?,
        gateway_id: get(row, "gateway_id")?,
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
    })
}

pub(super) fn inbox_entry(row: &Row<'_>) -> StoreResult<InboxEntry> {
    let customer: Option<String> = get(row, "customer_id")?;
    let vid: Option<i64> = get(row, "verification_id")?;
    Ok(InboxEntry {
        customer_id: customer.as_deref().map(customer_id).transpose()?,
        destination: get(row, "destination")?,
        text: get(row, "text")?,
        verification_id: vid.map(verification_id).transpose()?,
        created_at: get(row, "created_at")?,
    })
}
