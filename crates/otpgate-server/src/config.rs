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
            accounts: AccountDefaults::default(),
            pricing: Pricing::default(),
            message: MessageSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            health: HealthSettings::default(),
            inbox: InboxSettings::default(),
            delivery: DeliverySettings::default(),
            postgres: PostgresSettings::default(),
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

impl Default for OtpSettings {
    fn default() -> Self {
        Self {
            default_length: 4,
            default_timeout_secs: 60,
            min_timeout_secs: 20,
            max_timeout_secs: 300,
            max_attempts: 5,
            code_key: None,
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
        if !(4..=8).contains(&self.otp.default_length) {
            return Err("otp.default_length must be 4 to 8".into());
        }
        if self.otp.min_timeout_secs > self.otp.max_timeout_secs
            || !(self.otp.min_timeout_secs..=self.otp.max_timeout_secs)
                .contains(&self.otp.default_timeout_secs)
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
