//! The three operations of the contract, free of HTTP: issue a token (§1),
//! send a code (§2, §5) and validate one (§3, §4). They take the core's
//! commands (parsed from the wire in `routes/`) and answer with their own
//! error enums, which `routes/` maps to the contract's envelope.

use otpgate_core::{
    CustomerId, Decision, OtpCode, RouteFacts, SendCommand, SendPlan, SendRefusal, SendRules,
    StatusCommand, TimeoutRange, TokenCommand, ValidateCommand, VerificationId, VerificationView,
    command::customer_matches, decide,
};
use otpgate_core::{FlowType, fraud};
use otpgate_store::{
    Account, CreateOutcome, NewFallback, NewVerification, SendKind, SendLimits, StoreError,
    ValidationAction, Verification,
};

use crate::client::Client;
use crate::limits::{self, Key};
use crate::state::AppState;

// ---- §1 token -----------------------------------------------------------

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    #[error("too many failed token requests; try again later")]
    Throttled { retry_after_secs: u64 },
    /// One answer for an unknown customerId, a wrong key and a disabled
    /// account, so the endpoint does not tell which accounts exist.
    #[error("invalid customerId or key, or the account is disabled")]
    BadCredentials,
    /// The password hasher is full (see `password::Hasher`): nothing was checked.
    #[error("the server is busy checking passwords")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A customerId as the token throttles and audit lines keep it.
pub fn token_name(customer_id: &str) -> String {
    limits::name_key(&customer_id.to_ascii_uppercase())
}

/// Issues a token for `customerId` + `key`. Each attempt is reserved in
/// the throttle before its key is checked (see [`crate::limits`]): per
/// client address and per (customerId, address) with `token.max_failures`,
/// and per customerId alone with `token.max_failures_per_customer` unless
/// this address got a token for it lately. Every refusal is logged as an
/// audit line with the address and a digest of the customerId, never the
/// key (a key that is not base64 is audited where the request is parsed).
///
/// # Errors
/// [`TokenRefusal`].
pub async fn issue_token(
    state: &AppState,
    cmd: TokenCommand,
    client: &Client,
) -> Result<String, TokenRefusal> {
    let name = token_name(&cmd.customer_id);
    let key = cmd.key;
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
            limits::audit("token", client.ip, &name, "throttled");
            return Err(TokenRefusal::Throttled {
                retry_after_secs: r.retry_after,
            });
        }
    };
    let refuse = |attempt: limits::Attempt<'_>, reason: &str| {
        state.metrics.token_failure("bad_credentials");
        attempt.record();
        limits::audit("token", client.ip, &name, reason);
        TokenRefusal::BadCredentials
    };
    let busy = |_| {
        limits::audit("token", client.ip, &name, "password hasher busy");
        TokenRefusal::Busy
    };

    let account = match CustomerId::parse(&cmd.customer_id) {
        Ok(id) => state.accounts.get(state.store.as_ref(), &id).await?,
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

// ---- §2 send ---------------------------------------------------------------

/// Why a send did not go.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("customerId is not the account of authToken")]
    WrongCustomer,
    /// The `email` parameter of an `EMAIL` send is not an address.
    #[error("{0}")]
    BadEmail(&'static str),
    #[error(transparent)]
    Refused(#[from] SendRefusal),
    /// A send limit or the fraud defence; retry after the seconds given.
    #[error("{reason}")]
    RateLimited {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("the account's credits do not cover this message")]
    InsufficientBalance,
    #[error(
        "test credits pay only for this account's own verified numbers (add yours in \
         the console) and the server's test numbers; this send needs paid credits"
    )]
    TestCreditsRestricted,
    #[error("the account is disabled")]
    AccountDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of the server's own (logged where it is answered).
    #[error("{0}")]
    Internal(String),
}

/// The validity range of the server's settings.
pub fn timeout_range(state: &AppState) -> TimeoutRange {
    state.settings.otp.timeout_range()
}

/// The policy step of a send: the token's account must be the request's
/// `customerId`; an `EMAIL` send needs a valid address (any other flow
/// drops an invalid one, which the contract accepts unchecked, and its
/// fallback step to `EMAIL` is left out); then routing is asked about the
/// destination and flow, and the core's rules ([`SendCommand::plan`]) apply
/// the server's and the account's defaults.
///
/// # Errors
/// [`SendError::WrongCustomer`], [`SendError::BadEmail`],
/// [`SendError::Refused`].
pub fn plan_send(
    state: &AppState,
    account: &Account,
    mut cmd: SendCommand,
) -> Result<SendPlan, SendError> {
    if !customer_matches(cmd.customer_id.as_deref(), &account.customer_id) {
        return Err(SendError::WrongCustomer);
    }
    let is_email = cmd.flow == otpgate_core::FlowType::Email;
    cmd.email = match cmd
        .email
        .take()
        .map(|e| otpgate_sms::email::parse_address(&e))
    {
        Some(Ok(a)) => Some(a),
        Some(Err(reason)) if is_email => return Err(SendError::BadEmail(reason)),
        _ => None,
    };
    let settings = &state.settings;
    let cc = cmd.destination.country_code();
    let flow = cmd.flow.as_str();
    // A flow is enabled where a configured route serves it; with no
    // channels configured, only SMS is, through the development inbox.
    // Only mobile numbers (and those the plan cannot tell from mobile, such
    // as all of +1) pass unless the route opts in: premium-rate,
    // fixed-line, toll-free, shared-cost and VoIP ranges are where pumped
    // traffic terminates.
    let router = state.delivery.router();
    let route = RouteFacts {
        flow_served: (!settings.channels.is_empty() || cmd.flow == otpgate_core::FlowType::Sms)
            && router.accepts(cc, flow),
        number_type_allowed: router.allows_number_type(cc, flow, cmd.destination.kind()),
    };
    let e164 = cmd.destination.e164_digits();
    let rules = SendRules {
        server_length: otpgate_core::OtpLength::new(settings.otp.default_length)
            .unwrap_or(otpgate_core::OtpLength::DEFAULT),
        server_timeout_secs: settings.otp.default_timeout_secs,
        timeout_range: timeout_range(state),
        account_length: account.settings.default_otp_length,
        account_timeout_secs: account.settings.default_timeout_secs,
        allowed_country_codes: account.settings.allowed_country_codes.as_deref(),
        blocked_country_codes: &settings.fraud.blocked_country_codes,
        blocked_prefixes: &settings.fraud.blocked_prefixes,
        test_code: settings.fraud.test_code(&e164),
    };
    cmd.plan(&rules, route).map_err(|e| {
        if matches!(e, SendRefusal::NumberType(_)) {
            crate::metrics::number_type_refused();
        }
        SendError::Refused(e)
    })
}

/// What a send produced.
pub enum SendResult {
    Created(Verification),
    /// 506: the pending verification and the milliseconds it has left.
    Pending(Verification, i64),
}

/// Creates a verification, charges for it and queues its message, in one
/// store transaction.
///
/// store transaction. `kind` is what the send is for ([`SendKind::Normal`]
/// from the API, [`SendKind::OwnNumber`] from the console's own-number
/// page); a plan for a test number is always [`SendKind::TestNumber`].
///
/// # Errors
/// [`SendError`]: a limit, credits, a disabled account, the store.
pub async fn send(
    state: &AppState,
    account: &Account,
    plan: SendPlan,
    kind: SendKind,
) -> Result<SendResult, SendError> {
    let kind = if plan.test_code.is_some() {
        SendKind::TestNumber
    } else {
        kind
    };
    let country = plan.destination.country_code();
    let result = create(state, account, &plan, kind).await;
    let outcome = match &result {
        Ok(SendResult::Created(_)) => "created",
        Ok(SendResult::Pending(..)) => "pending",
        Err(SendError::RateLimited { .. }) => "rate_limited",
        Err(SendError::InsufficientBalance | SendError::TestCreditsRestricted) => {
            "insufficient_balance"
        }
        Err(SendError::AccountDisabled) => "refused",
        Err(_) => "error",
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
    req: &SendPlan,
    kind: SendKind,
) -> Result<SendResult, SendError> {
    let settings = &state.settings;
    let now = state.clock.now_ms();
    let (code, text) = match &req.test_code {
        // Nothing is queued for a test number, so no text holds its code.
        Some(fixed) => (
            OtpCode::parse(fixed).map_err(|e| SendError::Internal(e.to_string()))?,
            String::new(),
        ),
        None => {
            let code = OtpCode::generate(req.otp_length, &mut rand::rng());
            let text = message_text(state, account, req, req.flow.as_str(), &code);
            (code, text)
        }
    };
    let expires_at = now + i64::from(req.timeout_secs) * 1000;
    let fallbacks = if kind == SendKind::TestNumber {
        Vec::new()
    } else {
        fallback_steps(state, account, req, &code, now, expires_at)
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
            flow_type: req.flow.as_str().to_owned(),
            code_hash,
            spare_ids,
            otp_length: req.otp_length.get(),
            max_attempts: settings.otp.max_attempts,
            created_at: now,
            expires_at,
            transaction_id: uuid::Uuid::new_v4().to_string(),
            price: settings.price_for(req.destination.country_code()),
            message_text: text.clone(),
            address: (req.flow == FlowType::Email)
                .then(|| req.email.clone())
                .flatten(),
            lang: req.lang.clone(),
            fallbacks: fallbacks.clone(),
            limits,
            prefix: prefix.clone(),
            fraud: policy,
            kind,
        };
        // A place with this node's worker, if one is free: the message is
        // then stored leased to it and handed over at once, with no claim.
        let reservation = if kind == SendKind::TestNumber {
            None
        } else {
            state.delivery.reserve(now)
        };
        let created = match &reservation {
            Some(r) => state.store.verification_create_leased(new, r.lease()).await,
            None => state
                .store
                .verification_create(new)
                .await
                .map(|o| (o, None)),
        };
        let (outcome, handed) = match created {
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(SendError::Store(e)),
            Ok(created) => created,
        };
        return match outcome {
            CreateOutcome::Created(v) => {
                match (reservation, handed) {
                    (Some(r), Some(msg)) => r.hand(msg),
                    // Queued unleased, for the worker to claim (a test
                    // number has no message at all).
                    _ if kind != SendKind::TestNumber => state.delivery.notify(),
                    _ => {}
                }
                tracing::info!(
                    verification = v.id.get(),
                    customer = %v.customer_id,
                    to = %v.destination.masked(),
                    "verification created"
                );
                Ok(SendResult::Created(v))
            }
            CreateOutcome::AlreadyPending(v) => {
                let left_ms = (v.expires_at - now).max(0);
                Ok(SendResult::Pending(v, left_ms))
            }
            CreateOutcome::RateLimited { retry_after_secs } => Err(SendError::RateLimited {
                reason: "send limit for this number reached; try again later".into(),
                retry_after_secs,
            }),
            CreateOutcome::InsufficientBalance => Err(SendError::InsufficientBalance),
            CreateOutcome::AccountUnavailable => Err(SendError::AccountDisabled),
            CreateOutcome::TestCreditsRestricted => Err(SendError::TestCreditsRestricted),
            CreateOutcome::Blocked {
                kind,
                retry_after_secs,
                reason,
                new_block,
            } => {
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
                Err(SendError::RateLimited {
                    reason,
                    retry_after_secs,
                })
            }
        };
    }
    Err(SendError::Internal(
        "three sets of candidate verification ids all taken".into(),
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
    req: &SendPlan,
    code: &OtpCode,
    now: i64,
    expires_at: i64,
) -> Vec<NewFallback> {
    let router = state.delivery.router();
    let cc = req.destination.country_code();
    router
        .fallback(cc, req.flow.as_str())
        .into_iter()
        .filter(|f| f.flow_type != req.flow.as_str() && router.accepts(cc, &f.flow_type))
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
    req: &SendPlan,
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

// ---- §3 validate -------------------------------------------------------------

/// Why a validation (or a status poll) did not succeed, by the contract's
/// precedence.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("customerId is not the account of authToken")]
    WrongCustomer,
    /// An unknown id and another account's are one answer.
    #[error("no such verification for this account")]
    NotFound,
    #[error("this verification was already completed")]
    AlreadyVerified,
    #[error("too many wrong codes; request a new code")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("the code has expired; request a new one")]
    Expired,
    #[error("the code could not be delivered; request a new one")]
    Failed,
    #[error("wrong code; {attempts_left} attempt{} left", if *attempts_left == 1 { "" } else { "s" })]
    Wrong { attempts_left: u32 },
    #[error("too much contention on this verification; try again")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates `code` for one of `account`'s verifications; `Ok` only for
/// the one validation that completed it.
///
/// # Errors
/// [`ValidateError`], by the contract's precedence: 501, 505, 703, 800, 705,
/// 700, 702.
pub async fn validate(
    state: &AppState,
    account: &Account,
    cmd: &ValidateCommand,
) -> Result<Verification, ValidateError> {
    let result = if customer_matches(cmd.customer_id.as_deref(), &account.customer_id) {
        validate_code(state, account, cmd.id, &cmd.code).await
    } else {
        Err(ValidateError::WrongCustomer)
    };
    let outcome = match &result {
        Ok(v) => {
            state.metrics.completed(v.destination.country_code());
            state.events.notify();
            "completed"
        }
        Err(e) => {
            if matches!(e, ValidateError::Wrong { .. }) {
                // The last wrong code queues `verification.failed`.
                state.events.notify();
            }
            validation_outcome(e)
        }
    };
    state.metrics.validation(outcome);
    result
}

/// The metrics label of a failed validation.
fn validation_outcome(e: &ValidateError) -> &'static str {
    match e {
        ValidateError::Wrong { .. } => "wrong_code",
        ValidateError::AlreadyVerified => "already_verified",
        ValidateError::TooManyAttempts { .. } => "too_many_attempts",
        ValidateError::Expired => "expired",
        ValidateError::Failed => "failed",
        ValidateError::NotFound => "not_found",
        ValidateError::WrongCustomer => "invalid",
        ValidateError::Contention | ValidateError::Store(_) => "error",
    }
}

/// A validation the edge could not parse, counted as the others are.
pub fn validation_unparsed(state: &AppState) {
    state.metrics.validation("invalid");
}

/// [`validate`] after the customerId check: also the console's own-number
/// check.
///
/// # Errors
/// As [`validate`].
pub async fn validate_code(
    state: &AppState,
    account: &Account,
    id: VerificationId,
    code: &OtpCode,
) -> Result<Verification, ValidateError> {
    let rules = &state.settings.limits;
    // Each pass reads the verification, decides, and writes only if nobody
    // else wrote in between; a lost race re-reads. Bounded: every lost race
    // means another validation made progress.
    for _ in 0..16 {
        let now = state.clock.now_ms();
        // One read for both (a validation's cost is mostly its round trips).
        let (v, wrong_codes) = state
            .store
            .verification_to_validate(
                &account.customer_id,
                id,
                now - i64::from(rules.wrong_code_window_secs) * 1000,
            )
            .await?
            .ok_or(ValidateError::NotFound)?;
        let budget_spent = v.state == otpgate_core::VerificationState::Pending
            && wrong_codes >= rules.wrong_code_max;
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
            Decision::AlreadyVerified => return Err(ValidateError::AlreadyVerified),
            Decision::TooManyAttempts => {
                return Err(ValidateError::TooManyAttempts {
                    retry_after_secs: limits::retry_after_secs(v.expires_at - now),
                });
            }
            Decision::Expired => return Err(ValidateError::Expired),
            Decision::Failed => return Err(ValidateError::Failed),
        };
        let applied = state
            .store
            .verification_apply(&account.customer_id, id, v.wrong_attempts, action, now)
            .await?;
        if !applied {
            continue;
        }
        return match decision {
            Decision::Wrong { attempts_left } => Err(ValidateError::Wrong { attempts_left }),
            _ => {
                tracing::info!(verification = id.get(), customer = %account.customer_id, "verification completed");
                Ok(v)
            }
        };
    }
    Err(ValidateError::Contention)
}

/// Candidate ids a send offers the store beyond its first.
const SPARE_IDS: usize = 7;

// ---- status (extension) ------------------------------------------------------

/// One of `account`'s verifications, for the status endpoint.
///
/// # Errors
/// [`ValidateError::WrongCustomer`] for another customerId,
/// [`ValidateError::NotFound`] for an unknown id or another account's
/// (indistinguishable, as on validate).
pub async fn status(
    state: &AppState,
    account: &Account,
    cmd: &StatusCommand,
) -> Result<Verification, ValidateError> {
    if !customer_matches(cmd.customer_id.as_deref(), &account.customer_id) {
        return Err(ValidateError::WrongCustomer);
    }
    state
        .store
        .verification_get(&account.customer_id, cmd.id)
        .await?
        .ok_or(ValidateError::NotFound)
}
