//! otpgate's domain: the values a Verify Now request is made of, parsed once at
//! the edge from the wire types of `otpgate_api` into commands, and the rules
//! that decide a send and a verification's outcome. No I/O lives
//! here: storage, HTTP and SMS sit in their own crates and speak these types.
#![forbid(unsafe_code)]

pub mod clock;
pub mod code;
pub mod command;
pub mod customer;
pub mod fraud;
mod number_type;
pub mod phone;
pub mod secret;
pub mod send;
pub mod token;
pub mod verification;

pub use clock::{Clock, ManualClock, SystemClock};
pub use code::{CodeError, CodeHash, CodeKey, OtpCode, OtpLength};
pub use command::{
    FlowType, RequestError, RouteFacts, SendCommand, SendPlan, SendRefusal, SendRules,
    StatusCommand, TimeoutOutOfRange, TimeoutRange, TokenCommand, ValidateCommand,
};
pub use customer::{CustomerId, CustomerIdError};
pub use phone::{PhoneError, PhoneNumber, dialing_code_of, is_known_country_code, warm_up};
pub use secret::SecretString;
pub use token::{Claims, TokenError, TokenSigner};
pub use verification::{
    Decision, DeliveryStatus, VerificationId, VerificationIdError, VerificationState,
    VerificationView, decide,
};
