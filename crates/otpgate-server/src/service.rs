//! The three operations of the contract, free of HTTP: issue a token (§1),
//! send a code (§2, §5) and validate one (§3, §4). Handlers parse the wire
//! into the typed requests here and map the results back.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use otpgate_api::{PendingData, ResponseCode, VERIFICATION_COMPLETED, WireId, WireSeconds};
use otpgate_core::fraud::{self, NumberKind};
use otpgate_core::{
    CustomerId, Decision, OtpCode, OtpLength, PhoneError, PhoneNumber, VerificationId,
    VerificationView, decide,
};
use otpgate_store::{
    Account, CreateOutcome, NewFallback, NewVerification, SendKind, SendLimits, StoreError,
    ValidationAction, Verification,
};

use crate::client::Client;
use crate::error::ApiError;
use crate::limits::{self, Key};
use crate::params::Params;
use crate::state::AppState;

/// Flows the hosted service knows, and otpgate's extensions (`VOICE`,
/// `EMAIL`); only those with a route are enabled.
const KNOWN_FLOWS: &[&str] = &["SMS", "WHATSAPP", "RCS", "SAUTH", "VOICE", "EMAIL"];

// ---- §1 token -----------------------------------------------------------

/// Issues a token for `customerId` + `key`. Each attempt is reserved in
/// the throttle before its key is checked (see [`crate::limits`]): per
/// client address and per (customerId, address) with `token.max_failures`,
/// and per customerId alone with `token.max_failures_per_customer` unless
/// this address got a token for it lately. Every refusal is logged as an
/// audit line with the address and a digest of the customerId, never the
/// key.
///
/// # Errors
/// 400 for missing parameters or bad base64, 401 for any wrong credential
/// (one message for all), 429 when throttled, 503 when the password hasher
/// is full.
pub async fn issue_token(
    state: &AppState,
    params: &Params,
    client: &Client,
) -> Result<String, ApiError> {
    let customer = params.required("customerId")?;
    let key_b64 = params.required("key")?;
    let name = limits::name_key(&customer.to_ascii_uppercase());
    let Some(key) = decode_key(key_b64) else {
        limits::audit("token", client, &name, "key is not base64");
        return Err(ApiError::bad_request(
            "key must be the base64 of the password",
        ));
    };

    let now = state.clock.now_ms();
    let t = &state.settings.token;
    let mut keys = vec![
        (Key::Client(client.key), t.max_failures),
        (Key::CustomerFrom(name.clone(), client.key), t.max_failures),
    ];
    if !state.token_known.knows(&name, client.key, now) {
        keys.push((Key::Customer(name.clone()), t.max_failures_per_customer));
    }
    let attempt = match state.token_throttle.reserve(&keys, now) {
        Ok(a) => a,
        Err(r) => {
            state.metrics.token_failure("throttled");
            limits::audit("token", client, &name, "throttled");
            return Err(ApiError::rate_limited(
                "too many failed token requests; try again later",
                r.retry_after,
            ));
        }
    };
    let refuse = |attempt: limits::Attempt<'_>, reason: &str| {
        state.metrics.token_failure("bad_credentials");
        attempt.record();
        limits::audit("token", client, &name, reason);
        ApiError::unauthorized("invalid customerId or key, or the account is disabled")
    };
    let busy = |_| {
        limits::audit("token", client, &name, "password hasher busy");
        ApiError::busy()
    };

    let account = match CustomerId::parse(customer) {
        Ok(id) => state.store.account_get(&id).await?,
        Err(_) => None,
    };
    let Some(account) = account else {
        // Spend the same time as a wrong key, so timing does not tell which
        // customerIds exist.
        let _ = state
            .hasher
            .verify(&state.dummy_hash, &key)
            .await
            .map_err(busy)?;
        return Err(refuse(attempt, "unknown customerId"));
    };
    let ok = state.key_cache.hit(&account, &key)
        || (state
            .hasher
            .verify(&account.password_hash, &key)
            .await
            .map_err(busy)?
            && {
                state.key_cache.remember(&account, &key);
                true
            });
    if !ok {
        return Err(refuse(attempt, "wrong key"));
    }
    if account.disabled {
        return Err(refuse(attempt, "account disabled"));
    }
    // The right key: this attempt frees its place, and this address is now
    // one of the account's own.
    drop(attempt);
    state.token_known.remember(&name, client.key, now);
    Ok(state.signer.issue(
        &account.customer_id,
        account.token_epoch,
        state.clock.now_ms(),
    ))
}

/// Standard base64 with or without padding (contract §1).
fn decode_key(s: &str) -> Option<Vec<u8>> {
    if s.len() > 1024 {
        return None;
    }
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
        .filter(|k| !k.is_empty())
}

// ---- customerId -----------------------------------------------------------

/// `customerId`, when given, must be the token's account (contract §2, 501).
///
/// # Errors
/// 501 otherwise.
pub fn check_customer_param(params: &Params, account: &Account) -> Result<(), ApiError> {
    match params.get("customerId") {
        Some(c) if c != account.customer_id.as_str() => Err(ApiError::new(
            ResponseCode::InvalidCustomerId,
            "customerId is not the account of authToken",
        )),
        _ => Ok(()),
    }
}

// ---- §2 send ---------------------------------------------------------------

/// A send request after parsing.
#[derive(Debug)]
pub struct SendRequest {
    pub destination: PhoneNumber,
    pub flow: String,
    pub otp_length: OtpLength,
    pub timeout_secs: u32,
    pub lang: Option<String>,
    /// The `email` parameter, checked; required for the `EMAIL` flow. An
    /// invalid one on another flow is ignored (the contract accepts it
    /// unchecked), and a fallback step to `EMAIL` is then left out.
    pub email: Option<String>,
    /// What the send is for: set to [`SendKind::TestNumber`] for a
    /// configured test number here, to [`SendKind::OwnNumber`] by the
    /// console's own-number page.
    pub kind: SendKind,
    /// A test number's fixed code.
    pub test_code: Option<String>,
}

impl SendRequest {
    /// # Errors
    /// 400 / 501 / 511 with the reason, as the contract's table says.
    pub fn parse(state: &AppState, account: &Account, params: &Params) -> Result<Self, ApiError> {
        check_customer_param(params, account)?;
        let cfg = &state.settings.otp;
        let country_code = params.required("countryCode")?;
        let mobile = params.required("mobileNumber")?;
        let flow = params.required("flowType")?.to_ascii_uppercase();
        if !KNOWN_FLOWS.contains(&flow.as_str()) {
            return Err(ApiError::bad_request(format!(
                "flowType must be one of {}",
                KNOWN_FLOWS.join(", ")
            )));
        }
        let email = match params.get("email").filter(|e| !e.trim().is_empty()) {
            Some(e) => match otpgate_sms::email::parse_address(e) {
                Ok(a) => Some(a),
                Err(reason) if flow == "EMAIL" => return Err(ApiError::bad_request(reason)),
                Err(_) => None,
            },
            None if flow == "EMAIL" => {
                return Err(ApiError::bad_request(
                    "flowType EMAIL needs the email parameter",
                ));
            }
            None => None,
        };
        let destination = PhoneNumber::parse(country_code, mobile).map_err(|e| match e {
            PhoneError::UnknownCountryCode => {
                ApiError::new(ResponseCode::InvalidCountryCode, e.to_string())
            }
            _ => ApiError::bad_request(e.to_string()),
        })?;
        let fraud = &state.settings.fraud;
        let e164 = destination.e164_digits();
        // A test number never leaves the server, so nothing below (routes,
        // number types, geo) concerns it; its code is fixed.
        if let Some(code) = fraud.test_code(&e164) {
            let otp_length = OtpLength::new(u8::try_from(code.len()).unwrap_or(0))
                .map_err(|e| ApiError::internal(&e))?;
            return Ok(Self {
                destination,
                flow,
                otp_length,
                timeout_secs: account
                    .settings
                    .default_timeout_secs
                    .unwrap_or(cfg.default_timeout_secs),
                lang: None,
                email: None,
                kind: SendKind::TestNumber,
                test_code: Some(code.to_owned()),
            });
        }
        if fraud
            .blocked_country_codes
            .contains(&destination.country_code())
        {
            return Err(ApiError::new(
                ResponseCode::InvalidCountryCode,
                "this server does not send to that country",
            ));
        }
        if let Some(p) = fraud
            .blocked_prefixes
            .iter()
            .map(|p| p.trim_start_matches('+'))
            .find(|p| e164.starts_with(p))
        {
            return Err(ApiError::bad_request(format!(
                "this server does not send to numbers starting +{p}"
            )));
        }
        // A flow is enabled where a configured route serves it; with no
        // channels configured, only SMS is, through the development inbox.
        let unconfigured = state.settings.channels.is_empty();
        if (unconfigured && flow != "SMS")
            || !state
                .delivery
                .router()
                .accepts(destination.country_code(), &flow)
        {
            return Err(if flow == "SMS" {
                ApiError::new(
                    ResponseCode::InvalidCountryCode,
                    "no SMS route serves this country",
                )
            } else {
                ApiError::bad_request(format!("flowType {flow} is not enabled on this server"))
            });
        }
        // Only mobile numbers (and those the plan cannot tell from mobile,
        // such as all of +1), unless the route opts in: premium-rate,
        // fixed-line, toll-free, shared-cost and VoIP ranges are where
        // pumped traffic terminates.
        let kind = destination.kind();
        // (An EMAIL flow's code goes to an address; the number only keys it.)
        if flow != "EMAIL"
            && !state
                .delivery
                .router()
                .allows_number_type(destination.country_code(), &flow, kind)
        {
            crate::metrics::number_type_refused();
            return Err(ApiError::bad_request(format!(
                "mobileNumber is a {kind} number{}; this server sends codes to mobile numbers only",
                if kind == NumberKind::Unknown {
                    " (its type is unknown)"
                } else {
                    ""
                }
            )));
        }
        if let Some(allowed) = &account.settings.allowed_country_codes
            && !allowed.contains(&destination.country_code())
        {
            return Err(ApiError::new(
                ResponseCode::InvalidCountryCode,
                "this account may not send to that country",
            ));
        }
        let otp_length = match params.get("otpLength") {
            Some(s) => OtpLength::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => account
                .settings
                .default_otp_length
                .and_then(|n| OtpLength::new(n).ok())
                .unwrap_or(OtpLength::new(cfg.default_length).unwrap_or(OtpLength::DEFAULT)),
        };
        let range = cfg.min_timeout_secs..=cfg.max_timeout_secs;
        let timeout_secs = match params.get("timeout") {
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|t| range.contains(t))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "timeout must be a whole number of seconds from {} to {}",
                        cfg.min_timeout_secs, cfg.max_timeout_secs
                    ))
                })?,
            None => account
                .settings
                .default_timeout_secs
                .filter(|t| range.contains(t))
                .unwrap_or(cfg.default_timeout_secs),
        };
        Ok(Self {
            destination,
            flow,
            otp_length,
            timeout_secs,
            // Bounded: it is stored with each outbox row.
            lang: params
                .get("langId")
                .map(|l| l.chars().take(35).collect::<String>()),
            email,
            kind: SendKind::Normal,
            test_code: None,
        })
    }
}

/// What a send produced.
pub enum SendResult {
    Created(Verification),
    /// 506: the pending verification and the seconds it has left.
    Pending(Verification, u64),
}

/// Creates a verification, charges for it and queues its message, in one
/// store transaction.
///
/// # Errors
/// 402, 800 (with Retry-After), 401 for a disabled account, 503/500.
pub async fn send(
    state: &AppState,
    account: &Account,
    req: SendRequest,
) -> Result<SendResult, ApiError> {
    let country = req.destination.country_code();
    let result = create(state, account, req).await;
    let outcome = match &result {
        Ok(SendResult::Created(_)) => "created",
        Ok(SendResult::Pending(..)) => "pending",
        Err(e) => match e.code {
            ResponseCode::MaximumLimitReached => "rate_limited",
            ResponseCode::InsufficientBalance => "insufficient_balance",
            ResponseCode::Unauthorized => "refused",
            _ => "error",
        },
    };
    state.metrics.send(outcome, country);
    if matches!(result, Ok(SendResult::Created(_))) {
        state.events.notify();
    }
    result
}

async fn create(
    state: &AppState,
    account: &Account,
    req: SendRequest,
) -> Result<SendResult, ApiError> {
    let settings = &state.settings;
    let now = state.clock.now_ms();
    let (code, text) = match &req.test_code {
        // Nothing is queued for a test number, so no text holds its code.
        Some(fixed) => (
            OtpCode::parse(fixed).map_err(|e| ApiError::internal(&e))?,
            String::new(),
        ),
        None => {
            let code = OtpCode::generate(req.otp_length, &mut rand::rng());
            let text = message_text(state, account, &req, &req.flow, &code);
            (code, text)
        }
    };
    let expires_at = now + i64::from(req.timeout_secs) * 1000;
    let fallbacks = if req.kind == SendKind::TestNumber {
        Vec::new()
    } else {
        fallback_steps(state, account, &req, &code, now, expires_at)
    };
    let prefix = fraud::prefix_of(
        &req.destination.e164_digits(),
        req.destination.country_code(),
        settings.fraud.prefix_strip_digits,
    );
    let policy = settings.fraud.policy();
    let limits = SendLimits {
        per_number_max: account
            .settings
            .per_number_send_limit
            .unwrap_or(settings.limits.per_number_max),
        per_number_window_ms: i64::from(settings.limits.per_number_window_secs) * 1000,
        wrong_code_max: settings.limits.wrong_code_max,
        wrong_code_window_ms: i64::from(settings.limits.wrong_code_window_secs) * 1000,
        per_account_per_second: Some(settings.limits.per_account_per_second).filter(|n| *n > 0),
    };
    // Ids are random in 1..2^id_bits; the store stores the first of eight
    // candidates not yet taken, in the send's own transaction. With a 31-bit
    // space a quarter full (about 500 million stored verifications, far
    // past what retention keeps), all eight are taken once in 65,000 sends;
    // a fresh set is then drawn.
    let bits = settings.otp.id_bits;
    for _ in 0..3 {
        let (id, code_hash, spare_ids) = {
            // The thread's RNG is not `Send`: dropped before the await.
            let mut rng = rand::rng();
            let mut draw = || {
                let id = VerificationId::generate_bits(&mut rng, bits);
                (id, code.hash(&state.code_key, id.get()))
            };
            let (id, hash) = draw();
            let spares: Vec<_> = (0..SPARE_IDS).map(|_| draw()).collect();
            (id, hash, spares)
        };
        let new = NewVerification {
            id,
            customer_id: account.customer_id.clone(),
            destination: req.destination.clone(),
            flow_type: req.flow.clone(),
            code_hash,
            spare_ids,
            otp_length: req.otp_length.get(),
            max_attempts: settings.otp.max_attempts,
            created_at: now,
            expires_at,
            transaction_id: uuid::Uuid::new_v4().to_string(),
            price: settings.price_for(req.destination.country_code()),
            message_text: text.clone(),
            address: (req.flow == "EMAIL").then(|| req.email.clone()).flatten(),
            lang: req.lang.clone(),
            fallbacks: fallbacks.clone(),
            limits,
            prefix: prefix.clone(),
            fraud: policy,
            kind: req.kind,
        };
        return match state.store.verification_create(new).await {
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => Err(e.into()),
            Ok(CreateOutcome::Created(v)) => {
                if req.kind != SendKind::TestNumber {
                    state.delivery.notify();
                }
                tracing::info!(
                    verification = v.id.get(),
                    customer = %v.customer_id,
                    to = %v.destination.masked(),
                    "verification created"
                );
                Ok(SendResult::Created(v))
            }
            Ok(CreateOutcome::AlreadyPending(v)) => {
                let left_ms = (v.expires_at - now).max(0);
                let left = u64::try_from((left_ms + 999) / 1000).unwrap_or(0);
                Ok(SendResult::Pending(v, left))
            }
            Ok(CreateOutcome::RateLimited { retry_after_secs }) => Err(ApiError::rate_limited(
                "send limit for this number reached; try again later",
                retry_after_secs,
            )),
            Ok(CreateOutcome::InsufficientBalance) => Err(ApiError::new(
                ResponseCode::InsufficientBalance,
                "the account's credits do not cover this message",
            )),
            Ok(CreateOutcome::AccountUnavailable) => {
                Err(ApiError::unauthorized("the account is disabled"))
            }
            Ok(CreateOutcome::TestCreditsRestricted) => Err(ApiError::new(
                ResponseCode::InsufficientBalance,
                "test credits pay only for this account's own verified numbers (add yours in \
                 the console) and the server's test numbers; this send needs paid credits",
            )),
            Ok(CreateOutcome::Blocked {
                kind,
                retry_after_secs,
                reason,
                new_block,
            }) => {
                crate::metrics::fraud_refused(kind);
                if let Some(scope) = new_block {
                    crate::metrics::fraud_block(scope);
                    tracing::warn!(
                        customer = %account.customer_id,
                        to = %req.destination.masked(),
                        scope = scope.as_str(),
                        key = %if scope == fraud::BlockScope::Prefix {
                            prefix.clone()
                        } else {
                            fraud::country_key(account.customer_id.as_str(), req.destination.country_code())
                        },
                        retry_after_secs,
                        %reason,
                        "fraud guard: block started"
                    );
                } else {
                    tracing::info!(
                        customer = %account.customer_id,
                        to = %req.destination.masked(),
                        kind = kind.as_str(),
                        retry_after_secs,
                        "fraud defence refused a send"
                    );
                }
                Err(ApiError::rate_limited(reason, retry_after_secs))
            }
        };
    }
    Err(ApiError::internal(
        &"three sets of candidate verification ids all taken",
    ))
}

/// The later steps of the route's fallback workflow, their messages
/// rendered now (the code exists in plaintext only here and in the outbox
/// rows). A step is left out when no route serves its flow to this
/// destination, when it is `EMAIL` and the send has no valid address, or
/// when its delay is not shorter than the validity (it could never go).
fn fallback_steps(
    state: &AppState,
    account: &Account,
    req: &SendRequest,
    code: &OtpCode,
    now: i64,
    expires_at: i64,
) -> Vec<NewFallback> {
    let router = state.delivery.router();
    let cc = req.destination.country_code();
    router
        .fallback(cc, &req.flow)
        .into_iter()
        .filter(|f| f.flow_type != req.flow && router.accepts(cc, &f.flow_type))
        .filter(|f| f.flow_type != "EMAIL" || req.email.is_some())
        .map(|f| NewFallback {
            text: message_text(state, account, req, &f.flow_type, code),
            address: (f.flow_type == "EMAIL")
                .then(|| req.email.clone())
                .flatten(),
            due_at: now + i64::from(f.after_secs) * 1000,
            flow_type: f.flow_type,
        })
        .filter(|f| f.due_at < expires_at)
        .collect()
}

/// Built-in words for the flows whose templates are optional.
const VOICE_TEXT: &str = "Your {brand} verification code is {code}.";
const EMAIL_SUBJECT: &str = "Your {brand} verification code";
const EMAIL_TEXT: &str = "{code} is your {brand} verification code. It expires in {minutes} min.\n\nIf you did not ask for it, you can ignore this message.";
const EMAIL_HTML: &str = "<p><strong>{code}</strong> is your {brand} verification code. It expires in {minutes} min.</p><p>If you did not ask for it, you can ignore this message.</p>";

/// What the channel of `flow` is handed: the rendered text (SMS-like flows,
/// voice with the code spelled digit by digit), the bare code (WhatsApp:
/// Meta's approved template holds the words), or an e-mail's subject, text
/// and HTML as one JSON document.
fn message_text(
    state: &AppState,
    account: &Account,
    req: &SendRequest,
    flow: &str,
    code: &OtpCode,
) -> String {
    let msg = &state.settings.message;
    let lang = req.lang.as_deref();
    let flow_templates = msg.flows.get(flow);
    let pick = |map: Option<&std::collections::BTreeMap<String, String>>| -> Option<String> {
        let map = map?;
        lang.and_then(|l| map.get(l))
            .or_else(|| map.get("default"))
            .cloned()
    };
    let brand = account
        .settings
        .brand_name
        .as_deref()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or(&msg.brand_name);
    let minutes = req.timeout_secs.div_ceil(60).to_string();
    let vars = |code: &str| Vars {
        code: code.to_owned(),
        brand: brand.to_owned(),
        minutes: minutes.clone(),
    };
    match flow {
        "WHATSAPP" => code.expose().to_owned(),
        "VOICE" => {
            let t = pick(flow_templates.map(|f| &f.templates)).unwrap_or_else(|| VOICE_TEXT.into());
            // Digit by digit, with pauses: "1, 2, 3, 4".
            let spoken = code
                .expose()
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(", ");
            fill(&t, &vars(&spoken), |s| s.to_owned())
        }
        "EMAIL" => {
            let v = vars(code.expose());
            let subject =
                pick(flow_templates.map(|f| &f.subject)).unwrap_or_else(|| EMAIL_SUBJECT.into());
            let text =
                pick(flow_templates.map(|f| &f.templates)).unwrap_or_else(|| EMAIL_TEXT.into());
            let html = match flow_templates {
                // Configured templates without HTML send plain text only.
                Some(f) if !f.templates.is_empty() => pick(Some(&f.html)),
                _ => pick(flow_templates.map(|f| &f.html)).or_else(|| Some(EMAIL_HTML.into())),
            };
            let body = otpgate_sms::email::EmailBody {
                subject: fill(&subject, &v, |s| s.replace(['\r', '\n'], " ")),
                text: fill(&text, &v, |s| s.to_owned()),
                html: html.map(|h| fill(&h, &v, html_escape)),
            };
            serde_json::to_string(&body).unwrap_or_default()
        }
        _ => {
            let t = pick(flow_templates.map(|f| &f.templates))
                .or_else(|| pick(Some(&msg.templates)))
                .unwrap_or_else(|| "{code}".into());
            fill(&t, &vars(code.expose()), |s| s.to_owned())
        }
    }
}

struct Vars {
    code: String,
    brand: String,
    minutes: String,
}

/// Replaces `{code}`, `{brand}` and `{minutes}` in one pass, so a brand name
/// that itself contains "{code}" cannot pull the code into an unexpected
/// place twice. Each value goes through `escape` (HTML for e-mail).
fn fill(template: &str, vars: &Vars, escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, len) = if after.starts_with("{code}") {
            (escape(&vars.code), 6)
        } else if after.starts_with("{brand}") {
            (escape(&vars.brand), 7)
        } else if after.starts_with("{minutes}") {
            (escape(&vars.minutes), 9)
        } else {
            ("{".to_owned(), 1)
        };
        out.push_str(&value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The 506 body (contract §4, "506 in detail").
pub fn pending_data(v: &Verification, seconds_left: u64) -> PendingData {
    PendingData {
        verification_id: WireId::string(v.id.get()),
        mobile_number: Some(v.destination.national().to_owned()),
        response_code: Some(ResponseCode::RequestAlreadyExists),
        error_message: Some(ResponseCode::RequestAlreadyExists.message().to_owned()),
        timeout: Some(WireSeconds(seconds_left)),
    }
}

// ---- §3 validate -------------------------------------------------------------

/// Validates `code` for one of `account`'s verifications; `Ok` only for
/// the one validation that completed it.
///
/// # Errors
/// The contract's failure codes, by its precedence: 505, 703, 800, 705, 700,
/// 702; and 400 for malformed parameters.
pub async fn validate(
    state: &AppState,
    account: &Account,
    params: &Params,
) -> Result<Verification, ApiError> {
    let result = check(state, account, params).await;
    let outcome = match &result {
        Ok(v) => {
            state.metrics.completed(v.destination.country_code());
            state.events.notify();
            "completed"
        }
        Err(e) => match e.code {
            ResponseCode::WrongOtpProvided => {
                // The last wrong code queues `verification.failed`.
                state.events.notify();
                "wrong_code"
            }
            ResponseCode::AlreadyVerified => "already_verified",
            ResponseCode::MaximumLimitReached => "too_many_attempts",
            ResponseCode::VerificationExpired => "expired",
            ResponseCode::VerificationFailed => "failed",
            ResponseCode::InvalidVerificationId => "not_found",
            ResponseCode::BadRequest | ResponseCode::InvalidCustomerId => "invalid",
            _ => "error",
        },
    };
    state.metrics.validation(outcome);
    result
}

async fn check(
    state: &AppState,
    account: &Account,
    params: &Params,
) -> Result<Verification, ApiError> {
    check_customer_param(params, account)?;
    let id = VerificationId::parse(params.required("verificationId")?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let code = OtpCode::parse(params.required("code")?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    validate_code(state, account, id, &code).await
}

/// [`validate`] after parsing: also the console's own-number check.
///
/// # Errors
/// As [`validate`].
pub async fn validate_code(
    state: &AppState,
    account: &Account,
    id: VerificationId,
    code: &OtpCode,
) -> Result<Verification, ApiError> {
    let limits = &state.settings.limits;
    // Each pass reads the verification, decides, and writes only if nobody
    // else wrote in between; a lost race re-reads. Bounded: every lost race
    // means another validation made progress.
    for _ in 0..16 {
        let now = state.clock.now_ms();
        let v = state
            .store
            .verification_get(&account.customer_id, id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ResponseCode::InvalidVerificationId,
                    "no such verification for this account",
                )
            })?;
        let budget_spent = v.state == otpgate_core::VerificationState::Pending
            && state
                .store
                .wrong_codes_since(
                    &account.customer_id,
                    &v.destination.e164_digits(),
                    now - i64::from(limits.wrong_code_window_secs) * 1000,
                )
                .await?
                >= limits.wrong_code_max;
        let view = VerificationView {
            state: v.state,
            expires_at_ms: v.expires_at,
            wrong_attempts: v.wrong_attempts,
            max_attempts: v.max_attempts,
            wrong_code_budget_spent: budget_spent,
        };
        let decision = decide(&view, now, || {
            code.matches(&state.code_key, id.get(), &v.code_hash)
        });
        let action = match decision {
            Decision::Complete => ValidationAction::Complete,
            Decision::Wrong { .. } => ValidationAction::Wrong,
            Decision::AlreadyVerified => {
                return Err(ApiError::new(
                    ResponseCode::AlreadyVerified,
                    "this verification was already completed",
                ));
            }
            Decision::TooManyAttempts => {
                let wait = u64::try_from((v.expires_at - now).max(1000) / 1000).unwrap_or(1);
                return Err(ApiError::rate_limited(
                    "too many wrong codes; request a new code",
                    wait,
                ));
            }
            Decision::Expired => {
                return Err(ApiError::new(
                    ResponseCode::VerificationExpired,
                    "the code has expired; request a new one",
                ));
            }
            Decision::Failed => {
                return Err(ApiError::new(
                    ResponseCode::VerificationFailed,
                    "the code could not be delivered; request a new one",
                ));
            }
        };
        let applied = state
            .store
            .verification_apply(&account.customer_id, id, v.wrong_attempts, action, now)
            .await?;
        if !applied {
            continue;
        }
        return match decision {
            Decision::Wrong { attempts_left } => Err(ApiError::new(
                ResponseCode::WrongOtpProvided,
                format!(
                    "wrong code; {attempts_left} attempt{} left",
                    if attempts_left == 1 { "" } else { "s" }
                ),
            )),
            _ => {
                tracing::info!(verification = id.get(), customer = %account.customer_id, "verification completed");
                Ok(v)
            }
        };
    }
    Err(ApiError::new(
        ResponseCode::ServiceUnavailable,
        "too much contention on this verification; try again",
    ))
}

/// Candidate ids a send offers the store beyond its first.
const SPARE_IDS: usize = 7;

// ---- status (extension) ------------------------------------------------------

/// One of `account`'s verifications, for the status endpoint.
///
/// # Errors
/// 400 for a malformed id, 501 for another customerId, 505 for an unknown
/// id or another account's (indistinguishable, as on validate).
pub async fn status(
    state: &AppState,
    account: &Account,
    params: &Params,
) -> Result<Verification, ApiError> {
    check_customer_param(params, account)?;
    let id = VerificationId::parse(params.required("verificationId")?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    state
        .store
        .verification_get(&account.customer_id, id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ResponseCode::InvalidVerificationId,
                "no such verification for this account",
            )
        })
}

/// The `verificationStatus` a verification has at `now`, by validate's
/// precedence (703 → 800 → 705 → 700): what a validation now would answer.
pub fn status_name(v: &Verification, now: i64) -> &'static str {
    use otpgate_core::VerificationState as S;
    match v.state {
        S::Completed => VERIFICATION_COMPLETED,
        _ if v.wrong_attempts >= v.max_attempts => "VERIFICATION_BLOCKED",
        _ if now >= v.expires_at => "VERIFICATION_EXPIRED",
        S::Failed => "VERIFICATION_FAILED",
        S::Cancelled => "VERIFICATION_CANCELLED",
        S::Pending => "VERIFICATION_PENDING",
    }
}
