//! Test support (feature `testkit`): a plain send to build on, and the
//! throwaway PostgreSQL server for tests. The server lives
//! in `otpgate-testkit`, the support every test crate shares; this
//! re-export keeps it at hand for this crate's own unit tests.

pub use otpgate_testkit::postgres::{TempPostgres, TestkitError};
pub use otpgate_testkit::require_services;

use otpgate_core::{CodeHash, CustomerId, PhoneNumber, VerificationId};

use crate::{NewVerification, SendKind, SendLimits};

/// Limits no test reaches unless it lowers one.
pub fn roomy_limits() -> SendLimits {
    SendLimits {
        per_number_max: 1000,
        per_number_window_ms: 3_600_000,
        wrong_code_max: 1000,
        wrong_code_window_ms: 3_600_000,
        per_account_per_second: None,
    }
}

/// A plain send `id` from `customer` to `to` at `now` with `text`: price 1,
/// valid 60 s, four digits, five attempts, no fallbacks, [`roomy_limits`]
/// and the fraud defences off. A test changes what it weighs with struct
/// update syntax.
pub fn plain_send(
    id: VerificationId,
    customer: &CustomerId,
    to: &PhoneNumber,
    text: &str,
    now: i64,
) -> NewVerification {
    NewVerification {
        id,
        customer_id: customer.clone(),
        destination: to.clone(),
        flow_type: "SMS".into(),
        code_hash: CodeHash([7; 32]),
        spare_ids: Vec::new(),
        otp_length: 4,
        max_attempts: 5,
        created_at: now,
        expires_at: now + 60_000,
        transaction_id: format!("tx-{}", id.get()),
        price: 1,
        message_text: text.to_owned(),
        address: None,
        lang: None,
        fallbacks: Vec::new(),
        limits: roomy_limits(),
        prefix: String::new(),
        fraud: otpgate_core::fraud::FraudPolicy::off(),
        kind: SendKind::Normal,
    }
}
