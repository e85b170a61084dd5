//! Server settings: defaults, overridden by the TOML file, then by `OTPGATE_`
//! environment variables, then by command-line flags (the binary applies the
//! last layer). Every field is documented in the README's settings table.

use std::collections::BTreeMap;

use otpgate_core::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub listen: String,
    /// `sqlite://otpgate.db` or `postgres://…`.
    pub database_url: String,
    /// The URL clients reach this server at (console examples, `--dev`
    /// output); derived from `listen` when empty.
    pub public_url: String,
    /// Development mode: demo account, inbox channel.
    pub dev: bool,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    pub token: TokenSettings,
    pub otp: OtpSettings,
    pub limits: LimitSettings,
    /// Fraud defence: number types, geo, caps, the conversion guard, test
    /// credits and test numbers (README "Fraud defence").
    pub fraud: FraudSettings,
    pub accounts: AccountDefaults,
    pub pricing: Pricing,
    pub message: MessageSettings,
    pub http: HttpSettings,
    /// Password hashing and the throttles on failed credentials.
    pub auth: AuthSettings,
    /// `/readyz` detail for the operator.
    pub health: HealthSettings,
    /// The development inbox channel's messages.
    pub inbox: InboxSettings,
    pub delivery: DeliverySettings,
    pub postgres: PostgresSettings,
    /// `/metrics` (Prometheus).
    pub metrics: MetricsSettings,
    /// Webhook events.
    pub events: EventSettings,
    pub retention: RetentionSettings,
    /// The web console under `/console`.
    pub console: ConsoleSettings,
    /// SMS channels (`[channels.NAME]`); none configured means the
    /// development inbox channel. Their meaning is the delivery crate's.
    pub channels: BTreeMap<String, otpgate_sms::config::ChannelConfig>,
    /// Routes (`[[routes]]`), tried in order.
    pub routes: Vec<otpgate_sms::config::RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Signing secret for tokens. Several nodes must share it; when empty a
    /// random one is generated and kept in the database, so restarts (and
    /// nodes on one database) keep tokens valid.
    pub secret: Option<SecretString>,
    /// Token lifetime in seconds (default 7 days).
    pub lifetime_secs: i64,
    /// Failed token requests allowed per client address, and per
    /// (customerId, client address), within `failure_window_secs` before
    /// 429.
    pub max_failures: u32,
    pub failure_window_secs: u64,
    /// Failed token requests for one customerId from all addresses together
    /// within the window before that customerId is refused (429) to
    /// addresses that have not used its right key lately; 0 is no limit.
    pub max_failures_per_customer: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Argon2 password checks running at once (each thread keeps about
    /// 19 MiB); 0 means one per CPU core but one, at least one.
    pub max_concurrent_hashes: usize,
    /// Password checks that may wait for a place; beyond them, requests are
    /// answered 503 with `Retry-After: 1` at once.
    pub hash_queue: usize,
    /// Longest wait for a place before answering 503.
    pub hash_wait_ms: u64,
    /// How long a client address that used an account's right credential
    /// stays exempt from blocks on that account's name alone.
    pub known_client_secs: u64,
    /// How long an account read for a token check is used again before it
    /// is read anew (see `account_cache`): the longest a change made by the
    /// CLI or another node takes to reach this one. 0: read every time.
    pub account_cache_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Bearer token that makes `/readyz` show its detail (store error,
    /// outbox depth, channel health); without it, callers see only ready
    /// or unavailable. At least 32 bytes.
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxSettings {
    /// Messages of the development inbox channel are deleted this many
    /// seconds after they were "delivered"; 0 keeps them forever.
    pub retention_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            max_concurrent_hashes: 0,
            hash_queue: 64,
            hash_wait_ms: 2_000,
            known_client_secs: 30 * 24 * 3600,
            account_cache_ms: 1000,
        }
    }
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            retention_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtpSettings {
    pub default_length: u8,
    pub default_timeout_secs: u32,
    pub min_timeout_secs: u32,
    pub max_timeout_secs: u32,
    /// Wrong codes a verification takes before it is dead (800).
    pub max_attempts: u32,
    /// HMAC key for stored codes (hex or text). Generated and kept in the
    /// database when empty, like the token secret.
    pub code_key: Option<SecretString>,
    /// New verification ids are drawn from 1..2^`id_bits`: 31 (the
    /// default) fits a signed 32-bit integer, 53 a JavaScript number. Ids
    /// issued under another setting stay valid.
    pub id_bits: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Sends per (account, destination) per `per_number_window_secs`.
    pub per_number_max: u32,
    pub per_number_window_secs: u32,
    /// Wrong codes per (account, destination) per `wrong_code_window_secs`,
    /// across verifications.
    pub wrong_code_max: u32,
    pub wrong_code_window_secs: u32,
    /// Sends per account per second; 0 is no limit.
    pub per_account_per_second: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FraudSettings {
    /// The conversion guard (and its blocks); caps apply either way.
    pub guard: bool,
    /// The guard's prefix is the number without this many last digits.
    pub prefix_strip_digits: u32,
    /// A prefix is blocked once this many of its sends in the window are
    /// unconverted while conversion is below `max_conversion_percent`…
    pub prefix_min_unconverted: u32,
    /// …and an account's sends to one country once this many are.
    pub country_min_unconverted: u32,
    pub max_conversion_percent: u32,
    /// The sliding window sends are counted over.
    pub window_secs: u32,
    /// The first block's length; it doubles on every repeat, up to
    /// `max_block_secs`.
    pub block_secs: u32,
    pub max_block_secs: u32,
    /// Caps per account (0: none).
    pub account_hour_messages: u32,
    pub account_day_messages: u32,
    pub account_hour_credits: i64,
    pub account_day_credits: i64,
    /// Codes one number receives per day across all accounts (0: no cap).
    pub destination_day_messages: u32,
    /// Dialing codes no account may send to (511).
    pub blocked_country_codes: Vec<u16>,
    /// E.164 digit prefixes no account may send to (400), e.g. `"44909"`.
    pub blocked_prefixes: Vec<String>,
    /// Test credits pay only for an account's own verified numbers.
    pub test_credits_verified_only: bool,
    /// Verified own numbers an account may keep…
    pub own_numbers_max: u32,
    /// …and own-number verification codes it may have sent per day.
    pub own_number_sends_per_day: u32,
    /// A console sign-up may send only to its own country until widened.
    pub signup_own_country_only: bool,
    /// Test numbers (E.164 digits, `+` optional) and their fixed codes: a
    /// send to one stores the fixed code, sends nothing, charges nothing.
    pub test_numbers: BTreeMap<String, String>,
}

impl Default for FraudSettings {
    fn default() -> Self {
        Self {
            guard: true,
            prefix_strip_digits: 4,
            prefix_min_unconverted: 20,
            country_min_unconverted: 300,
            max_conversion_percent: 35,
            window_secs: 3600,
            block_secs: 3600,
            max_block_secs: 7 * 24 * 3600,
            account_hour_messages: 1000,
            account_day_messages: 10_000,
            account_hour_credits: 2000,
            account_day_credits: 20_000,
            destination_day_messages: 25,
            blocked_country_codes: Vec::new(),
            blocked_prefixes: Vec::new(),
            test_credits_verified_only: true,
            own_numbers_max: 5,
            own_number_sends_per_day: 3,
            signup_own_country_only: true,
            test_numbers: BTreeMap::new(),
        }
    }
}

impl FraudSettings {
    /// The thresholds the store's send transaction applies.
    pub fn policy(&self) -> otpgate_core::fraud::FraudPolicy {
        use otpgate_core::fraud::{Caps, FraudPolicy, GuardPolicy};
        let ms = |s: u32| i64::from(s) * 1000;
        let guard = |min| GuardPolicy {
            min_unconverted: min,
            max_conversion_percent: self.max_conversion_percent,
            window_ms: ms(self.window_secs),
            block_ms: ms(self.block_secs),
            max_block_ms: ms(self.max_block_secs),
        };
        FraudPolicy {
            guard: self.guard,
            test_credits_verified_only: self.test_credits_verified_only,
            prefix: guard(self.prefix_min_unconverted),
            country: guard(self.country_min_unconverted),
            caps: Caps {
                account_hour_messages: self.account_hour_messages,
                account_day_messages: self.account_day_messages,
                account_hour_credits: self.account_hour_credits,
                account_day_credits: self.account_day_credits,
                destination_day_messages: self.destination_day_messages,
            },
        }
    }

    /// The fixed code of a test number, if `e164_digits` is one.
    pub fn test_code(&self, e164_digits: &str) -> Option<&str> {
        self.test_numbers
            .iter()
            .find(|(n, _)| n.trim_start_matches('+') == e164_digits)
            .map(|(_, c)| c.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountDefaults {
    /// Test credits a new account receives.
    pub test_credits: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// Credits per message when the destination's dialing code has no entry.
    pub default_price: i64,
    /// Credits per message by dialing code, e.g. `"91" = 1`, `"44" = 3`.
    pub by_country_code: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageSettings {
    /// Brand name used when the account sets none.
    pub brand_name: String,
    /// Message templates by `langId`; `default` is used otherwise.
    /// Placeholders: `{code}`, `{brand}`, `{minutes}`.
    pub templates: BTreeMap<String, String>,
    /// Templates of one flow by `flowType` (`[message.flows.VOICE]`,
    /// `[message.flows.EMAIL]`), each by `langId` with a `default`; a flow
    /// without them uses built-in words (voice, e-mail) or `templates`.
    pub flows: BTreeMap<String, FlowTemplates>,
}

/// `[message.flows.FLOW]`: one flow's templates, each map by `langId`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowTemplates {
    /// The text (SMS-like flows, the words a voice call says, an e-mail's
    /// plain-text part).
    pub templates: BTreeMap<String, String>,
    /// E-mail only: the subject.
    pub subject: BTreeMap<String, String>,
    /// E-mail only: the HTML part (placeholder values are HTML-escaped).
    pub html: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 503.
    pub request_timeout_ms: u64,
    /// A connection must send a request's complete headers within this many
    /// seconds of connecting or of its previous response, or it is closed
    /// (also the keep-alive idle timeout).
    pub header_timeout_secs: u64,
    /// A connection on which no byte moves either way for this long (a
    /// client that stopped reading its response, a stalled body) is closed.
    pub idle_timeout_secs: u64,
    /// Connections open at once; beyond, new ones are answered 503 and
    /// closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; larger
    /// ones are answered 431.
    pub max_header_bytes: usize,
    /// Most parameters one request may carry (query and form together).
    pub max_params: usize,
    /// Peers (addresses or CIDR blocks) whose `client_ip_header` is believed;
    /// empty believes no one, and the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// `x-forwarded-for` or `forwarded` (RFC 7239).
    pub client_ip_header: String,
    /// Origins (`https://app.example.com`) whose browser pages may call the
    /// API; their CORS preflights are answered. Empty (the default): no
    /// CORS headers at all. A TOML list, or one comma-separated string (for
    /// `OTPGATE_HTTP__CORS_ORIGINS`).
    #[serde(deserialize_with = "list_or_csv")]
    pub cors_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    pub cors_max_age_secs: u64,
}

/// How long personal data is kept, and the sweep that deletes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Verifications (with their phone numbers), their outbox rows and inbox
    /// rows older than this many days are deleted; the daily counts stay.
    pub days: u32,
    /// How often each node sweeps.
    pub sweep_interval_secs: u64,
    /// Rows deleted per statement: a sweep of a large backlog runs as many
    /// short transactions, not one long one.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            days: 90,
            sweep_interval_secs: 3600,
            batch: 1000,
        }
    }
}

/// A list from TOML, or from one comma-separated string (an environment
/// variable cannot hold a list).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    pub batch: u32,
    pub lease_ms: i64,
    pub poll_ms: u64,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    /// This node's name in outbox leases; defaults to host name + pid.
    pub worker_id: String,
    /// Every this many seconds, what delivered messages' texts left in the
    /// store's files is scrubbed (SQLite: a `TRUNCATE` checkpoint of the
    /// WAL); 0 never.
    pub scrub_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Serve it on this address of its own (e.g. `127.0.0.1:9464`) instead
    /// of the API's listener; empty uses the API's.
    pub listen: String,
    /// When set, a scrape must send `Authorization: Bearer <token>`.
    pub bearer_token: Option<SecretString>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: String::new(),
            bearer_token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Run the webhook worker on this node (events are queued either way).
    pub enabled: bool,
    /// Deliveries in flight at once, per node.
    pub concurrency: u32,
    /// How long one delivery waits for the receiver's answer.
    pub timeout_ms: u64,
    /// How long a claim on an event lasts (above `timeout_ms`): a node that
    /// dies mid-delivery loses its events to another after this.
    pub lease_ms: i64,
    /// Poll interval when nothing wakes the worker.
    pub poll_ms: u64,
    /// First retry delay; doubles per attempt up to `retry_max_ms`.
    pub retry_base_ms: i64,
    /// The cap on one retry delay.
    pub retry_max_ms: i64,
    /// Give up on an event this long after it happened.
    pub max_age_secs: u64,
    /// How often to look for verifications that expired pending.
    pub sweep_interval_ms: u64,
    /// Allow webhook URLs on loopback, private and link-local addresses
    /// (off: an account could otherwise make the server call internal
    /// services).
    pub allow_private_addresses: bool,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 16,
            timeout_ms: 10_000,
            lease_ms: 60_000,
            poll_ms: 1_000,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            max_age_secs: 3 * 24 * 3600,
            sweep_interval_ms: 5_000,
            allow_private_addresses: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    pub pool_size: u32,
    pub statement_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://otpgate.db".into(),
            public_url: String::new(),
            dev: false,
            log_json: false,
            token: TokenSettings::default(),
            otp: OtpSettings::default(),
            limits: LimitSettings::default(),
            fraud: FraudSettings::default(),
            accounts: AccountDefaults::default(),
            pricing: Pricing::default(),
            message: MessageSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            health: HealthSettings::default(),
            inbox: InboxSettings::default(),
            delivery: DeliverySettings::default(),
            postgres: PostgresSettings::default(),
            metrics: MetricsSettings::default(),
            events: EventSettings::default(),
            retention: RetentionSettings::default(),
            channels: BTreeMap::new(),
            routes: Vec::new(),
            console: ConsoleSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the web console under `/console`.
    pub enabled: bool,
    /// Let visitors create accounts from the console's sign-up page.
    pub signup: bool,
    /// The operator's log-in e-mail; with `admin_password`, enables the
    /// operators' pages (list accounts, add credits, disable).
    pub admin_email: String,
    /// The operator's password, or an Argon2 PHC string (`$argon2id$…`) of it.
    pub admin_password: Option<SecretString>,
    /// A console session ends after this many seconds without a request…
    pub session_idle_secs: u64,
    /// …and at the latest this many seconds after log-in.
    pub session_max_secs: u64,
    /// Mark cookies `Secure`: set this whenever the console is reached over
    /// TLS (directly or through a proxy that terminates it).
    pub secure_cookies: bool,
    /// Failed log-ins allowed per client address, and per (login name,
    /// client address), within `login_failure_window_secs`.
    pub max_login_failures: u32,
    pub login_failure_window_secs: u64,
    /// Failed log-ins for one name from all addresses together before that
    /// name is refused to addresses that have not logged in with it lately;
    /// 0 is no limit.
    pub max_login_failures_per_name: u32,
    /// Sign-ups allowed per client address per hour.
    pub signups_per_hour: u32,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            signup: true,
            admin_email: String::new(),
            admin_password: None,
            session_idle_secs: 30 * 60,
            session_max_secs: 12 * 3600,
            secure_cookies: false,
            max_login_failures: 10,
            login_failure_window_secs: 300,
            max_login_failures_per_name: 100,
            signups_per_hour: 10,
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            secret: None,
            lifetime_secs: 7 * 24 * 3600,
            max_failures: 10,
            failure_window_secs: 300,
            max_failures_per_customer: 100,
        }
    }
}

impl OtpSettings {
    /// The validity a send may ask for.
    pub fn timeout_range(&self) -> otpgate_core::TimeoutRange {
        otpgate_core::TimeoutRange {
            min: self.min_timeout_secs,
            max: self.max_timeout_secs,
        }
    }
}

impl Default for OtpSettings {
    fn default() -> Self {
        Self {
            default_length: 4,
            default_timeout_secs: 60,
            min_timeout_secs: 20,
            max_timeout_secs: 300,
            max_attempts: 5,
            code_key: None,
            id_bits: otpgate_core::VerificationId::DEFAULT_BITS,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_number_max: 5,
            per_number_window_secs: 600,
            wrong_code_max: 100,
            wrong_code_window_secs: 24 * 3600,
            per_account_per_second: 0,
        }
    }
}

impl Default for AccountDefaults {
    fn default() -> Self {
        Self { test_credits: 100 }
    }
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            default_price: 1,
            by_country_code: BTreeMap::new(),
        }
    }
}

impl Default for MessageSettings {
    fn default() -> Self {
        let mut templates = BTreeMap::new();
        templates.insert(
            "default".into(),
            "{code} is your {brand} verification code. It expires in {minutes} min. Do not share it."
                .into(),
        );
        Self {
            brand_name: "otpgate".into(),
            templates,
            flows: BTreeMap::new(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            request_timeout_ms: 15_000,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            max_params: 256,
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
        }
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            batch: 64,
            lease_ms: 30_000,
            poll_ms: 250,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
            worker_id: String::new(),
            scrub_secs: 10,
        }
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            pool_size: 10,
            statement_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
        }
    }
}

/// Shortest configured secret accepted: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

impl Settings {
    /// The channel and route tables as the delivery crate takes them.
    pub fn sms(&self) -> otpgate_sms::SmsConfig {
        otpgate_sms::SmsConfig {
            channels: self.channels.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Price in credits of one message to `country_code`.
    pub fn price_for(&self, country_code: u16) -> i64 {
        self.pricing
            .by_country_code
            .get(&country_code.to_string())
            .copied()
            .unwrap_or(self.pricing.default_price)
    }

    /// Checks values that would otherwise fail later and less clearly.
    ///
    /// # Errors
    /// A sentence naming the setting and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if otpgate_core::OtpLength::new(self.otp.default_length).is_err() {
            return Err("otp.default_length must be 4 to 8".into());
        }
        if self.otp.min_timeout_secs > self.otp.max_timeout_secs
            || !self
                .otp
                .timeout_range()
                .contains(self.otp.default_timeout_secs)
        {
            return Err(
                "otp.default_timeout_secs must lie within otp.min_timeout_secs..=otp.max_timeout_secs"
                    .into(),
            );
        }
        if self.otp.max_attempts == 0 {
            return Err("otp.max_attempts must be at least 1".into());
        }
        if self.token.lifetime_secs <= 0 {
            return Err("token.lifetime_secs must be positive".into());
        }
        if !self.message.templates.contains_key("default") {
            return Err("message.templates must have a \"default\" entry".into());
        }
        if self.console.session_idle_secs == 0 || self.console.session_max_secs == 0 {
            return Err(
                "console.session_idle_secs and console.session_max_secs must be positive".into(),
            );
        }
        let f = &self.fraud;
        for (number, code) in &f.test_numbers {
            if otpgate_core::PhoneNumber::parse_e164(&format!(
                "+{}",
                number.trim_start_matches('+')
            ))
            .is_err()
            {
                return Err(format!(
                    "fraud.test_numbers: {number:?} is not a valid number in E.164 digits"
                ));
            }
            let length = u8::try_from(code.len()).unwrap_or(0);
            if otpgate_core::OtpLength::new(length).is_err()
                || !code.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "fraud.test_numbers: the code of {number:?} must be 4 to 8 digits"
                ));
            }
        }
        if f.blocked_prefixes.iter().any(|p| {
            p.is_empty()
                || !p
                    .trim_start_matches('+')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        }) {
            return Err("fraud.blocked_prefixes must be E.164 digits, e.g. \"44909\"".into());
        }
        if f.window_secs == 0 || f.block_secs == 0 || f.max_block_secs < f.block_secs {
            return Err(
                "fraud.window_secs and fraud.block_secs must be positive, and fraud.max_block_secs at least fraud.block_secs"
                    .into(),
            );
        }
        if f.max_conversion_percent > 100 {
            return Err("fraud.max_conversion_percent must be 0 to 100".into());
        }
        if !(31..=53).contains(&self.otp.id_bits) {
            return Err("otp.id_bits must be 31 to 53".into());
        }
        if self.retention.days == 0
            || self.retention.sweep_interval_secs == 0
            || self.retention.batch == 0
        {
            return Err(
                "retention.days, retention.sweep_interval_secs and retention.batch must be positive"
                    .into(),
            );
        }
        // The send limits count the verifications in their windows: were
        // those deleted sooner, a window would forget sends and wrong codes
        // and let a guesser past the limit.
        let kept_secs = u64::from(self.retention.days) * 86_400;
        if kept_secs < u64::from(self.limits.wrong_code_window_secs)
            || kept_secs < u64::from(self.limits.per_number_window_secs)
        {
            return Err(
                "retention.days must cover limits.wrong_code_window_secs and \
                 limits.per_number_window_secs"
                    .into(),
            );
        }
        for o in &self.http.cors_origins {
            // An origin is scheme://host[:port], compared byte for byte
            // with the browser's `Origin`: no path, no trailing slash.
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/'))
                || axum::http::HeaderValue::from_str(o).is_err()
            {
                return Err(format!(
                    "http.cors_origins: {o:?} is not an origin like https://app.example.com"
                ));
            }
        }
        if self.pricing.default_price < 0 || self.pricing.by_country_code.values().any(|p| *p < 0) {
            return Err("prices must not be negative".into());
        }
        for (name, secret) in [
            ("token.secret", &self.token.secret),
            ("otp.code_key", &self.otp.code_key),
            ("health.token", &self.health.token),
        ] {
            if let Some(s) = secret.as_ref().filter(|s| !s.is_empty())
                && s.expose().len() < MIN_SECRET_BYTES
            {
                return Err(format!(
                    "{name} is {} bytes; a secret must be at least {MIN_SECRET_BYTES} bytes \
                     (e.g. `openssl rand -hex 32`)",
                    s.expose().len()
                ));
            }
        }
        if self.http.header_timeout_secs == 0 || self.http.idle_timeout_secs == 0 {
            return Err(
                "http.header_timeout_secs and http.idle_timeout_secs must be positive".into(),
            );
        }
        if self.http.max_connections == 0 || self.http.max_params == 0 {
            return Err("http.max_connections and http.max_params must be positive".into());
        }
        if self.http.max_header_bytes < 8192 {
            return Err("http.max_header_bytes must be at least 8192".into());
        }
        self.proxies()?;
        let e = &self.events;
        if e.concurrency == 0 || e.timeout_ms == 0 || e.poll_ms == 0 || e.sweep_interval_ms == 0 {
            return Err(
                "events.concurrency, timeout_ms, poll_ms and sweep_interval_ms must be positive"
                    .into(),
            );
        }
        if e.retry_base_ms <= 0 || e.retry_max_ms < e.retry_base_ms {
            return Err(
                "events.retry_base_ms must be positive and at most events.retry_max_ms".into(),
            );
        }
        if u64::try_from(e.lease_ms).unwrap_or(0) <= e.timeout_ms {
            return Err("events.lease_ms must be longer than events.timeout_ms".into());
        }
        Ok(())
    }

    /// The trusted proxies, parsed.
    ///
    /// # Errors
    /// A sentence naming the setting.
    pub fn proxies(&self) -> Result<crate::client::ProxyConfig, String> {
        crate::client::ProxyConfig::parse(&self.http.trusted_proxies, &self.http.client_ip_header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Settings {
        toml::from_str(toml_text).expect("settings")
    }

    #[test]
    fn cors_origins_are_a_list_or_one_comma_separated_string() {
        let list =
            parse("[http]\ncors_origins = [\"https://a.example\", \"http://b.example:3000\"]");
        assert_eq!(
            list.http.cors_origins,
            ["https://a.example", "http://b.example:3000"]
        );
        let csv = parse("[http]\ncors_origins = \"https://a.example, http://b.example:3000\"");
        assert_eq!(csv.http.cors_origins, list.http.cors_origins);
        assert!(list.validate().is_ok());
        assert!(Settings::default().http.cors_origins.is_empty());
        for bad in ["https://a.example/", "a.example", "https://", "*"] {
            let mut s = Settings::default();
            s.http.cors_origins = vec![bad.into()];
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn id_bits_and_retention_are_checked() {
        let mut s = Settings::default();
        assert_eq!((s.otp.id_bits, s.retention.days), (31, 90));
        s.otp.id_bits = 30;
        assert!(s.validate().is_err());
        s.otp.id_bits = 53;
        assert!(s.validate().is_ok());
        s.retention.days = 0;
        assert!(s.validate().is_err());
        // One day covers the default one-day wrong-code window; a longer
        // window needs a longer retention.
        s.retention.days = 1;
        assert!(s.validate().is_ok());
        s.limits.wrong_code_window_secs = 2 * 86_400;
        assert!(s.validate().is_err());
    }
}
