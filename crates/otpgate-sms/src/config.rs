//! The delivery part of `otpgate.toml`: `[channels.NAME]` tables (each with a
//! `type` of `inbox`, `smpp`, `http`, `whatsapp`, `voice` or `email`) and an
//! ordered `[[routes]]` list (each optionally with a `fallback` workflow), and
//! [`build`], which checks them and turns them into a [`Router`].
//!
//! The newer channel types own their configuration and constructor in their
//! modules ([`crate::whatsapp`], [`crate::voice`], [`crate::email`]), which
//! depend on [`crate::setup`] only; this module adds one enum arm each.
//!
//! Complete examples live in `crates/otpgate-sms/examples/` (`smpp.toml`,
//! `http.toml`, `channels.toml`, `fallback.toml`); a short one:
//!
//! ```toml
//! [channels.smsc-a]
//! type = "smpp"
//! host = "smsc.example.net"
//! system_id = "otpgate"
//! password_env = "SMSC_A_PASSWORD"
//! source_addr = "OTPGATE"
//!
//! [channels.twilio]
//! type = "http"
//! preset = "twilio"
//! account_sid = "AC0123456789abcdef0123456789abcdef"
//! auth_token_env = "TWILIO_AUTH_TOKEN"
//! from = "+15005550006"
//! receipt_url = "https://otp.example.com"
//! receipt_token_env = "TWILIO_RECEIPT_TOKEN"
//!
//! [[routes]]
//! country_codes = [91]
//! channels = ["smsc-a", "twilio"]
//!
//! [[routes]]
//! channels = ["twilio"]
//! ```
//!
//! Secrets (`password`, `auth_token`, `receipt_token`, header values) may
//! come from the environment: `password_env = "VAR"`, or `${VAR}` inside
//! header, query, field and URL values. They are resolved once, in [`build`],
//! and held as [`SecretString`]s or sensitive header values; logs carry names
//! and lengths only.
//!
//! An HTTP channel's `receipt_token` authenticates its gateway's delivery
//! callbacks; the server learns how to check them from [`receipt_auth`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use otpgate_core::fraud::NumberKind;
use otpgate_core::{Clock, SecretString};
use otpgate_store::DeliveryStore;
use serde::Deserialize;

use crate::channel::Channel;
use crate::email::{EmailChannel, EmailConfig};
use crate::http::HttpChannel;
use crate::inbox::InboxChannel;
use crate::receipt::StoreReceipts;
use crate::router::{Route, RouteTable};
pub use crate::setup::{ConfigError, EnvLookup};
pub(crate) use crate::setup::{expand_env, secret};
use crate::smpp::SmppChannel;
use crate::voice::{VoiceChannel, VoiceConfig};
use crate::whatsapp::{WhatsappChannel, WhatsappConfig};
use crate::worker::Router;

/// Channels and routes. Empty (no `[channels]` at all) means one `inbox`
/// channel named `inbox` for every message: the development setup.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// `[channels.NAME]`: the name is what routes refer to and what the
    /// store records on each message (and receipts are matched by).
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// `[[routes]]`, tried in order; the first that matches a message gives
    /// its channels. A message no route matches fails at once (refunded).
    /// May be omitted when exactly one channel is configured.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl SmsConfig {
    /// Parses the tables from TOML text (the server passes its own parsed
    /// tables through serde instead).
    ///
    /// # Errors
    /// [`ConfigError::Toml`] naming the offending key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Parses the tables as the server keeps them (raw TOML values of
    /// `[channels.NAME]` and `[[routes]]`).
    ///
    /// # Errors
    /// [`ConfigError::Toml`] naming the channel or route at fault.
    pub fn from_values(
        channels: &BTreeMap<String, toml::Value>,
        routes: &[toml::Value],
    ) -> Result<Self, ConfigError> {
        let mut out = SmsConfig::default();
        for (name, v) in channels {
            let c = v
                .clone()
                .try_into()
                .map_err(|e| ConfigError::Toml(format!("[channels.{name}]: {e}")))?;
            out.channels.insert(name.clone(), c);
        }
        for (i, v) in routes.iter().enumerate() {
            let r = v
                .clone()
                .try_into()
                .map_err(|e| ConfigError::Toml(format!("[[routes]] #{}: {e}", i + 1)))?;
            out.routes.push(r);
        }
        Ok(out)
    }

    /// Everything [`build`] checks, without starting any channel: routes,
    /// secrets, URLs, templates, SMPP field sizes. For a `config check`
    /// command and for tests of example files.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        check_routes(self)?;
        for (name, ch) in &self.channels {
            match ch {
                ChannelConfig::Inbox(_) => {}
                ChannelConfig::Smpp(c) => {
                    crate::smpp::prepare(name, c, env)?;
                }
                ChannelConfig::Http(c) => {
                    crate::http::prepare(name, c, env)?;
                }
                ChannelConfig::Whatsapp(c) => {
                    crate::whatsapp::prepare(name, c, env)?;
                }
                ChannelConfig::Voice(c) => {
                    crate::voice::prepare(name, c, env)?;
                }
                ChannelConfig::Email(c) => {
                    crate::email::prepare(name, c, env)?;
                }
            }
        }
        Ok(())
    }
}

/// One channel, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelConfig {
    /// Stores messages for `otpgate inbox` and the console sandbox instead of
    /// sending them: development and tests.
    Inbox(InboxConfig),
    /// An SMSC over SMPP 3.4.
    Smpp(Box<SmppConfig>),
    /// An HTTP SMS API (generic, or a `preset`).
    Http(Box<HttpConfig>),
    /// The WhatsApp Business Cloud API's authentication templates.
    Whatsapp(Box<WhatsappConfig>),
    /// A programmable-voice API that calls and reads the code out.
    Voice(Box<VoiceConfig>),
    /// SMTP, for the `EMAIL` flow.
    Email(Box<EmailConfig>),
}

/// `type = "inbox"` takes no settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {}

/// How to bind (SMPP 3.4 §2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// One `bind_transceiver` carries submits and receipts.
    #[default]
    Transceiver,
    /// A `bind_transmitter` for submits plus a `bind_receiver` for receipts,
    /// for SMSCs that do not offer transceiver binds.
    #[serde(alias = "transmitter+receiver", alias = "tx+rx")]
    TransmitterReceiver,
}

/// `type = "smpp"`: an SMSC reached over SMPP 3.4.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppConfig {
    /// SMSC host name or address.
    pub host: String,
    /// SMSC port; default 2775 (the IANA port for SMPP).
    #[serde(default = "defaults::smpp_port")]
    pub port: u16,
    /// Connect over TLS; the certificate is checked against the system's
    /// roots (plus `tls_ca_file`) and `tls_server_name` (default `host`).
    #[serde(default)]
    pub tls: bool,
    /// A PEM file with extra CA certificates to trust (a private SMSC CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the SMSC's certificate must carry, when not `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// `system_id` of the bind, at most 15 characters.
    pub system_id: String,
    /// Bind password, at most 8 characters. Prefer `password_env`.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Name of the environment variable holding the bind password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `system_type` of the bind (often empty; some SMSCs want e.g. "OTP").
    #[serde(default)]
    pub system_type: String,
    /// `transceiver` (default) or `transmitter_receiver`.
    #[serde(default)]
    pub bind: BindMode,
    /// Sender: an alphanumeric name (at most 11 characters), a short code or
    /// a number (`+4477…` or digits).
    pub source_addr: String,
    /// Sender TON; default detected from `source_addr`: alphanumeric → 5,
    /// `+` or 10+ digits → 1 (international), shorter digits → 0 (unknown).
    #[serde(default)]
    pub source_ton: Option<u8>,
    /// Sender NPI; default detected: alphanumeric → 0, digits → 1 (E.164).
    #[serde(default)]
    pub source_npi: Option<u8>,
    /// `service_type` of each `submit_sm` (usually empty).
    #[serde(default)]
    pub service_type: String,
    /// Outstanding `submit_sm` per bind before a send waits; default 10.
    #[serde(default = "defaults::window")]
    pub window: u32,
    /// Cap on `submit_sm` per second per bind (the SMSC's contracted TPS);
    /// none by default.
    #[serde(default)]
    pub max_per_second: Option<u32>,
    /// Send `enquire_link` after this long without traffic; default 30000.
    #[serde(default = "defaults::enquire_link_ms")]
    pub enquire_link_ms: u64,
    /// TCP connect + TLS + bind must finish within this; default 10000.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a `submit_sm` waits for its `submit_sm_resp` (and for a
    /// window slot); past it the send is retried later. Default 10000.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Reconnect delay after a failure, doubling up to `reconnect_max_ms`
    /// (with jitter); defaults 1000 and 30000.
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Ask for delivery receipts (`registered_delivery` = 1); default true.
    #[serde(default = "defaults::yes")]
    pub registered_delivery: bool,
}

/// HTTP method of a gateway request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
}

/// How `fields` travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// No body (`fields` must be empty; use `query`).
    None,
    /// `fields` as a flat JSON object of strings, or `json_template`.
    Json,
    /// `fields` as `application/x-www-form-urlencoded`.
    Form,
}

/// Gateways whose request shape otpgate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpPreset {
    /// Kannel's `sendsms` interface: `GET {url}/cgi-bin/sendsms?username=…
    /// &password=…&from=…&to=…&text=…&dlr-mask=…&dlr-url=…`; success 202
    /// or 200. Needs `url` (Kannel's sendsms base, e.g.
    /// `http://kannel:13013`), `username`, `password`/`password_env`. The
    /// `dlr-url` (with `receipt_url`) is `{receipt_url}/receipts/{channel}
    /// ?ref=…&status=%d&answer=%A`, plus `&token=…` with `receipt_token`.
    Kannel,
    /// Twilio's Messages API: `POST {url}/2010-04-01/Accounts/{account_sid}/
    /// Messages.json`, form `To`, `From`, `Body` (+ `StatusCallback`
    /// `{receipt_url}/receipts/{channel}`, with `?token=…` when
    /// `receipt_token` is set), basic auth `account_sid:auth_token`, id from
    /// `sid`, success 201 or 200. `url` defaults to `https://api.twilio.com`.
    Twilio,
}

/// `type = "http"`: an HTTP SMS API.
///
/// Values of `url`, `headers`, `query`, `fields` and `json_template` may hold
/// placeholders, filled per message: `{to}` (E.164 with `+`), `{to_digits}`
/// (E.164 digits), `{text}`, `{from}` (this channel's `from`), `{reference}`
/// (otpgate's message id, unique per message: use it as the client
/// reference). They may also hold `${ENV_VAR}`, filled once at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Fills the request shape and defaults of a known gateway; explicit
    /// settings below still win where given.
    #[serde(default)]
    pub preset: Option<HttpPreset>,
    /// The request URL (with a preset: the gateway's base URL).
    #[serde(default)]
    pub url: Option<String>,
    /// Default POST (Kannel: GET).
    #[serde(default)]
    pub method: Option<HttpMethod>,
    /// Extra request headers; values are secret-masked in logs.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query-string parameters added to `url`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Body encoding: `json` (default for POST/PUT), `form`, or `none`
    /// (default for GET).
    #[serde(default)]
    pub body: Option<BodyKind>,
    /// Body fields (JSON object of strings, or form pairs).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A whole JSON body instead of `fields`, for nested shapes; placeholder
    /// values are JSON-escaped, so write them inside quotes:
    /// `{"messages":[{"to":"{to}","body":"{text}"}]}`.
    #[serde(default)]
    pub json_template: Option<String>,
    /// The sender, for `{from}` (Kannel's `from`, Twilio's `From`).
    #[serde(default)]
    pub from: Option<String>,
    /// HTTP basic auth user (Twilio preset: `account_sid`).
    #[serde(default)]
    pub basic_auth_user: Option<String>,
    /// HTTP basic auth password; may be `${ENV_VAR}`.
    #[serde(default)]
    pub basic_auth_password: Option<SecretString>,
    /// Status codes meaning "accepted"; empty = any 2xx (Kannel: 200, 202;
    /// Twilio: 200, 201).
    #[serde(default)]
    pub success_status: Vec<u16>,
    /// Dotted path to the gateway's message id in a JSON response
    /// (`sid`, `messages.0.id`); without it the `{reference}` is the id.
    #[serde(default)]
    pub id_field: Option<String>,
    /// Dotted path to a JSON field that must be `true` (or equal
    /// `success_value`) for the message to count as accepted; a response
    /// that fails it is a permanent refusal.
    #[serde(default)]
    pub success_field: Option<String>,
    #[serde(default)]
    pub success_value: Option<String>,
    /// Whole-request timeout; default 10000. A timeout is retried later.
    #[serde(default = "defaults::http_timeout_ms")]
    pub timeout_ms: u64,
    /// Kannel: `username` of the sendsms user.
    #[serde(default)]
    pub username: Option<String>,
    /// Kannel: the sendsms user's password (prefer `password_env`).
    #[serde(default)]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// Kannel: `dlr-mask`; default 19 (delivered, undelivered, SMSC reject).
    #[serde(default)]
    pub dlr_mask: Option<u8>,
    /// Twilio: the account SID (`AC…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Twilio: the auth token (prefer `auth_token_env`).
    #[serde(default)]
    pub auth_token: Option<SecretString>,
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// Public base URL of this otpgate (e.g. `https://otp.example.com`);
    /// when set, presets ask the gateway to report delivery to
    /// `{receipt_url}/receipts/{channel}` (Kannel `dlr-url`, Twilio
    /// `StatusCallback`), with `token=…` when `receipt_token` is set.
    #[serde(default)]
    pub receipt_url: Option<String>,
    /// A shared secret every delivery callback for this channel must carry
    /// as its `token` parameter; `/receipts/{channel}` answers 401 to one
    /// without it. Prefer `receipt_token_env`. The presets put it into the
    /// callback URL they hand the gateway; for a generic channel, put
    /// `token=…` into the callback URL you give your gateway. Without a
    /// token the channel's callbacks are refused, unless
    /// `receipts_unauthenticated` opts out (then anyone who can reach the
    /// endpoint can mark this channel's messages undeliverable, failing and
    /// refunding them, and otpgate warns about it at start). A URL-safe value (`openssl rand -hex 32`)
    /// is easiest to paste into gateway consoles; any other is
    /// percent-encoded where otpgate builds the URL.
    #[serde(default)]
    pub receipt_token: Option<SecretString>,
    /// Name of the environment variable holding `receipt_token`.
    #[serde(default)]
    pub receipt_token_env: Option<String>,
    /// Accept this channel's delivery callbacks without a token. Off by
    /// default: a channel without `receipt_token` then has its callbacks
    /// refused (401), since anyone who can reach `/receipts/{channel}` could
    /// otherwise mark its messages undeliverable. For gateways that cannot
    /// carry a token, behind a firewall that only lets the gateway through.
    #[serde(default)]
    pub receipts_unauthenticated: bool,
}

/// `[[routes]]`: which channels, in failover order, take which messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination dialing codes (`91`, `44`); empty matches any.
    #[serde(default)]
    pub country_codes: Vec<u16>,
    /// `flowType`s (`SMS`, `WHATSAPP`; case-insensitive); empty matches any.
    #[serde(default)]
    pub flow_types: Vec<String>,
    /// Channel names, tried in order: a channel that is unavailable or
    /// fails transiently passes the message to the next at once.
    pub channels: Vec<String>,
    /// Number types this route sends to beyond mobile numbers (which every
    /// route takes): `fixed_line`, `voip`, `toll_free`, `premium_rate`,
    /// `shared_cost`, `personal_number`, `pager`, `uan`, `voicemail`,
    /// `unknown`. Empty: mobile only (the fraud defence's default).
    #[serde(default)]
    pub number_types: Vec<String>,
    /// A fallback workflow (extension): up to two more flows for a message
    /// this route takes. Each step's message is queued with the first and
    /// goes `after_secs` after the send (or at once when the steps before
    /// it failed) unless an earlier step was delivered or the code was
    /// validated first. Each step is routed by its own flow.
    #[serde(default)]
    pub fallback: Vec<FallbackConfig>,
}

/// One `[[routes.fallback]]` step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// The step's `flowType` (`WHATSAPP`, `VOICE`, `EMAIL`, `SMS`).
    pub flow: String,
    /// Seconds after the send request at which this step goes unless an
    /// earlier one reported delivery; 1 to 600, and more than the step
    /// before.
    pub after_secs: u32,
}

/// Most fallback steps per route (three flows in all).
pub const MAX_FALLBACK_STEPS: usize = 2;

mod defaults {
    pub fn smpp_port() -> u16 {
        2775
    }
    pub fn window() -> u32 {
        10
    }
    pub fn enquire_link_ms() -> u64 {
        30_000
    }
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    pub fn reconnect_min_ms() -> u64 {
        1_000
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn http_timeout_ms() -> u64 {
        10_000
    }
    pub fn yes() -> bool {
        true
    }
}

/// How `/receipts/{channel}` must treat a callback for one channel: what the
/// server needs to know about a channel's receipts, without reading the
/// channel's configuration itself.
#[derive(Debug, Clone)]
pub enum ReceiptAuth {
    /// Not an HTTP channel. Its receipts never arrive over HTTP (SMPP brings
    /// them in `deliver_sm`, the inbox has none), so the endpoint has
    /// nothing to accept for it: a callback naming it can only be forged.
    NotHttp,
    /// An HTTP or voice channel without `receipt_token` that set
    /// `receipts_unauthenticated`: callbacks are accepted unauthenticated
    /// ([`build`] warns).
    Open,
    /// An HTTP or voice channel without `receipt_token` that did not opt
    /// out: callbacks are refused.
    NoToken,
    /// Callbacks must carry a `token` parameter equal to this.
    Token(SecretString),
}

/// The receipt authentication of channel `name`, its token resolved from
/// `receipt_token` or `receipt_token_env`. Cheap (one environment lookup at
/// most), so a caller may resolve it per callback; [`build`] has already
/// refused, at start, a configuration where this would fail.
///
/// # Errors
/// [`ConfigError::MissingEnv`] when `receipt_token_env` names an unset
/// variable, [`ConfigError::Invalid`] when the token is empty.
pub fn receipt_auth(
    name: &str,
    channel: &ChannelConfig,
    env: EnvLookup<'_>,
) -> Result<ReceiptAuth, ConfigError> {
    Ok(match channel {
        ChannelConfig::Http(c) => match receipt_token(name, c, env)? {
            Some(t) => ReceiptAuth::Token(t),
            None if c.receipts_unauthenticated => ReceiptAuth::Open,
            None => ReceiptAuth::NoToken,
        },
        ChannelConfig::Voice(c) => match crate::voice::receipt_token(name, c, env)? {
            Some(t) => ReceiptAuth::Token(t),
            None if c.receipts_unauthenticated => ReceiptAuth::Open,
            None => ReceiptAuth::NoToken,
        },
        // WhatsApp statuses come to `/webhooks/whatsapp/{channel}`, signed;
        // SMTP has no receipts.
        ChannelConfig::Inbox(_)
        | ChannelConfig::Smpp(_)
        | ChannelConfig::Whatsapp(_)
        | ChannelConfig::Email(_) => ReceiptAuth::NotHttp,
    })
}

/// An HTTP channel's resolved receipt token, if it has one.
///
/// # Errors
/// As [`receipt_auth`].
pub(crate) fn receipt_token(
    name: &str,
    c: &HttpConfig,
    env: EnvLookup<'_>,
) -> Result<Option<SecretString>, ConfigError> {
    let token = secret(
        name,
        c.receipt_token.as_ref(),
        c.receipt_token_env.as_deref(),
        env,
    )?;
    // An empty token would let `token=` through: refuse it rather than
    // guess whether "no authentication" was meant.
    if token.as_ref().is_some_and(SecretString::is_empty) {
        return Err(ConfigError::invalid(
            name,
            "receipt_token must not be empty",
        ));
    }
    Ok(token)
}

/// Checks `config`, starts its channels (SMPP sessions begin binding in the
/// background) and returns the router for [`crate::Delivery::new`].
///
/// # Errors
/// [`ConfigError`] for unknown channel names in routes, missing secrets,
/// malformed URLs or templates, impossible SMPP settings.
pub fn build(
    config: &SmsConfig,
    store: Arc<dyn DeliveryStore>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Router>, ConfigError> {
    build_with_env(config, store, clock, &|k| std::env::var(k).ok())
}

/// [`build`] with an explicit environment, for tests and embedding.
///
/// # Errors
/// As [`build`].
pub fn build_with_env(
    config: &SmsConfig,
    store: Arc<dyn DeliveryStore>,
    clock: Arc<dyn Clock>,
    env: EnvLookup<'_>,
) -> Result<Arc<dyn Router>, ConfigError> {
    Ok(Arc::new(build_table(config, store, clock, env)?))
}

/// [`build_with_env`] returning the concrete table.
///
/// # Errors
/// As [`build`].
pub fn build_table(
    config: &SmsConfig,
    store: Arc<dyn DeliveryStore>,
    clock: Arc<dyn Clock>,
    env: EnvLookup<'_>,
) -> Result<RouteTable, ConfigError> {
    if config.channels.is_empty() {
        if !config.routes.is_empty() {
            let first = config.routes[0]
                .channels
                .first()
                .cloned()
                .unwrap_or_default();
            return Err(ConfigError::UnknownChannel {
                route: 0,
                channel: first,
            });
        }
        let inbox: Arc<dyn Channel> = Arc::new(InboxChannel::new("inbox", store, clock));
        return Ok(RouteTable::new(
            vec![Route::any(vec![inbox.clone()])],
            vec![inbox],
        ));
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(name) = r
            .number_types
            .iter()
            .find(|n| NumberKind::parse(n).is_none())
        {
            return Err(ConfigError::UnknownNumberType {
                route: i,
                name: name.clone(),
            });
        }
    }
    // Check everything that needs no I/O before starting any session.
    check_routes(config)?;
    let needs_runtime = config
        .channels
        .values()
        .any(|c| matches!(c, ChannelConfig::Smpp(_)));
    if needs_runtime && tokio::runtime::Handle::try_current().is_err() {
        return Err(ConfigError::NoRuntime);
    }
    let mut prepared: Vec<(String, Prepared)> = Vec::new();
    for (name, ch) in &config.channels {
        let p = match ch {
            ChannelConfig::Inbox(_) => Prepared::Inbox,
            ChannelConfig::Smpp(c) => Prepared::Smpp(crate::smpp::prepare(name, c, env)?),
            ChannelConfig::Http(c) => Prepared::Http(crate::http::prepare(name, c, env)?),
            ChannelConfig::Whatsapp(c) => {
                Prepared::Whatsapp(crate::whatsapp::prepare(name, c, env)?)
            }
            ChannelConfig::Voice(c) => Prepared::Voice(crate::voice::prepare(name, c, env)?),
            ChannelConfig::Email(c) => Prepared::Email(crate::email::prepare(name, c, env)?),
        };
        prepared.push((name.clone(), p));
    }
    for (name, ch) in &config.channels {
        if let ChannelConfig::Whatsapp(c) = ch
            && c.app_secret.is_none()
            && c.app_secret_env.is_none()
        {
            tracing::warn!(
                channel = %name,
                "this WhatsApp channel has no app_secret: its webhook refuses every status, \
                 so its messages are never marked delivered"
            );
        }
        // A receipt-taking channel as (has no token, opted out of needing
        // one, asks its gateway for callbacks).
        let tokenless = match ch {
            ChannelConfig::Http(c) => Some((
                c.receipt_token.is_none() && c.receipt_token_env.is_none(),
                c.receipts_unauthenticated,
                c.receipt_url.is_some(),
            )),
            ChannelConfig::Voice(c) => Some((
                c.receipt_token.is_none() && c.receipt_token_env.is_none(),
                c.receipts_unauthenticated,
                c.receipt_url.is_some(),
            )),
            _ => None,
        };
        match tokenless {
            Some((true, true, _)) => tracing::warn!(
                channel = %name,
                "delivery receipts for this channel are unauthenticated \
                 (receipts_unauthenticated): anyone who can reach /receipts/{name} \
                 can mark its messages undeliverable"
            ),
            Some((true, false, true)) => tracing::warn!(
                channel = %name,
                "this channel has no receipt_token: its delivery callbacks are \
                 refused; set receipt_token_env (or receipt_token)"
            ),
            _ => {}
        }
    }
    let receipts = Arc::new(StoreReceipts::new(store.clone(), clock.clone()));
    let mut by_name: BTreeMap<String, Arc<dyn Channel>> = BTreeMap::new();
    for (name, p) in prepared {
        let ch: Arc<dyn Channel> = match p {
            Prepared::Inbox => Arc::new(InboxChannel::new(
                name.clone(),
                store.clone(),
                clock.clone(),
            )),
            Prepared::Smpp(s) => Arc::new(SmppChannel::start(name.clone(), s, receipts.clone())),
            Prepared::Http(h) => Arc::new(HttpChannel::new(name.clone(), h)),
            Prepared::Whatsapp(w) => Arc::new(WhatsappChannel::new(name.clone(), w)),
            Prepared::Voice(v) => Arc::new(VoiceChannel::new(name.clone(), v)),
            Prepared::Email(e) => Arc::new(EmailChannel::new(name.clone(), e)),
        };
        by_name.insert(name, ch);
    }
    let routes = if config.routes.is_empty() {
        vec![Route::any(by_name.values().cloned().collect())]
    } else {
        config
            .routes
            .iter()
            .map(|r| Route {
                country_codes: r.country_codes.clone(),
                flow_types: r
                    .flow_types
                    .iter()
                    .map(|f| f.to_ascii_uppercase())
                    .collect(),
                channels: r.channels.iter().map(|n| by_name[n].clone()).collect(),
                number_types: r
                    .number_types
                    .iter()
                    .filter_map(|n| NumberKind::parse(n))
                    .collect(),
                fallback: r
                    .fallback
                    .iter()
                    .map(|f| crate::router::FallbackStep {
                        flow_type: f.flow.to_ascii_uppercase(),
                        after_secs: f.after_secs,
                    })
                    .collect(),
            })
            .collect()
    };
    Ok(RouteTable::new(routes, by_name.into_values().collect()))
}

enum Prepared {
    Inbox,
    Smpp(crate::smpp::SmppSettings),
    Http(crate::http::HttpSettings),
    Whatsapp(crate::whatsapp::WhatsappSettings),
    Voice(crate::voice::VoiceSettings),
    Email(crate::email::EmailSettings),
}

fn check_routes(config: &SmsConfig) -> Result<(), ConfigError> {
    if config.channels.keys().any(|k| k.trim().is_empty()) {
        return Err(ConfigError::EmptyName);
    }
    if config.routes.is_empty() && config.channels.len() > 1 {
        return Err(ConfigError::NoRoutes(config.channels.len()));
    }
    for (i, r) in config.routes.iter().enumerate() {
        if r.channels.is_empty() {
            return Err(ConfigError::EmptyRoute(i));
        }
        for c in &r.channels {
            if !config.channels.contains_key(c) {
                return Err(ConfigError::UnknownChannel {
                    route: i,
                    channel: c.clone(),
                });
            }
        }
        check_fallback(config, i, r)?;
    }
    Ok(())
}

/// A route's fallback workflow must be short, increasing, and name flows
/// some route serves (else its steps could never go).
fn check_fallback(config: &SmsConfig, i: usize, r: &RouteConfig) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::Fallback { route: i, reason };
    if r.fallback.len() > MAX_FALLBACK_STEPS {
        return Err(bad(format!(
            "at most {MAX_FALLBACK_STEPS} fallback steps (three flows in all)"
        )));
    }
    let mut last = 0;
    for f in &r.fallback {
        if !(1..=600).contains(&f.after_secs) || f.after_secs <= last {
            return Err(bad(
                "after_secs must be 1 to 600 and grow from step to step".into(),
            ));
        }
        last = f.after_secs;
        let served = config.routes.iter().any(|o| {
            o.flow_types.is_empty() || o.flow_types.iter().any(|t| t.eq_ignore_ascii_case(&f.flow))
        });
        if f.flow.trim().is_empty() || !served {
            return Err(bad(format!(
                "no route serves the fallback flow {:?}",
                f.flow
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "TOKEN").then(|| "abc".to_owned());
        assert_eq!(
            expand_env("c", "Bearer ${TOKEN}!", &env).unwrap(),
            "Bearer abc!"
        );
        assert_eq!(expand_env("c", "{to}", &env).unwrap(), "{to}");
        assert!(matches!(
            expand_env("c", "${NOPE}", &env),
            Err(ConfigError::MissingEnv { .. })
        ));
        assert!(expand_env("c", "${OPEN", &env).is_err());
    }

    #[test]
    fn route_checks() {
        let cfg = SmsConfig::from_toml(
            r#"
            [channels.a]
            type = "inbox"
            [channels.b]
            type = "inbox"
            [[routes]]
            channels = ["a", "c"]
            "#,
        )
        .unwrap();
        assert_eq!(
            check_routes(&cfg),
            Err(ConfigError::UnknownChannel {
                route: 0,
                channel: "c".into()
            })
        );
        let cfg = SmsConfig::from_toml(
            "[channels.a]\ntype = \"inbox\"\n[channels.b]\ntype = \"inbox\"\n",
        )
        .unwrap();
        assert_eq!(check_routes(&cfg), Err(ConfigError::NoRoutes(2)));
    }

    #[test]
    fn the_servers_raw_tables_parse() {
        let doc: toml::Table = toml::from_str(
            "[channels.a]\ntype = \"inbox\"\n[[routes]]\ncountry_codes = [91]\nchannels = [\"a\"]\n",
        )
        .unwrap();
        let channels: BTreeMap<String, toml::Value> = doc["channels"]
            .as_table()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let routes = doc["routes"].as_array().unwrap().clone();
        let cfg = SmsConfig::from_values(&channels, &routes).unwrap();
        assert_eq!(cfg.routes[0].country_codes, [91]);
        let bad = toml::Value::Table(toml::from_str("type = \"smtp\"").unwrap());
        let e = SmsConfig::from_values(&BTreeMap::from([("x".to_owned(), bad)]), &[]).unwrap_err();
        assert!(e.to_string().contains("[channels.x]"), "{e}");
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        assert!(SmsConfig::from_toml("[channels.a]\ntype = \"carrier-pigeon\"\n").is_err());
        assert!(
            SmsConfig::from_toml("[channels.a]\ntype = \"inbox\"\nfoo = 1\n").is_err(),
            "a typo in a key must not pass silently"
        );
    }
}
