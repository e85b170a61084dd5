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
    pub delivery: DeliverySettings,
    pub postgres: PostgresSettings,
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
    /// Failed token requests allowed per customerId and per client address
    /// within `failure_window_secs` before 429.
    pub max_failures: u32,
    pub failure_window_secs: u64,
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
            delivery: DeliverySettings::default(),
            postgres: PostgresSettings::default(),
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
    /// Failed log-ins allowed per e-mail/customerId and per client address
    /// within `login_failure_window_secs`.
    pub max_login_failures: u32,
    pub login_failure_window_secs: u64,
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
        Ok(())
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
