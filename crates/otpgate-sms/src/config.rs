//! The delivery part of `otpgate.toml`: `[channels.NAME]` tables (each with a
//! `type` of `inbox`, `smpp`, `http`, `whatsapp`, `voice` or `email`) and an
//! ordered `[[routes]]` list (each optionally with a `fallback` workflow), and
//! [`build`], which checks them and turns them into a [`Router`].
//!
//! This module is the channel registry: every channel type owns its
//! configuration type and constructor in its module (implementing
//! [`ChannelSetup`] from [`crate::setup`], the only part of the
//! configuration layer a channel depends on); [`ChannelConfig`] adds one
//! arm each.
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
//! and held as [`SecretString`](otpgate_core::SecretString)s or sensitive header values; logs carry names
//! and lengths only.
//!
//! An HTTP channel's `receipt_token` authenticates its gateway's delivery
//! callbacks; the server learns how to check them from [`receipt_auth`].

use std::collections::BTreeMap;
use std::sync::Arc;

use otpgate_core::Clock;
use otpgate_core::fraud::NumberKind;
use otpgate_store::DeliveryStore;
use serde::Deserialize;

use crate::channel::Channel;
pub use crate::email::EmailConfig;
pub use crate::http::{BodyKind, HttpConfig, HttpMethod, HttpPreset};
use crate::inbox::InboxChannel;
pub use crate::inbox::InboxConfig;
use crate::receipt::StoreReceipts;
use crate::router::{Route, RouteTable};
#[cfg(test)]
use crate::setup::expand_env;
pub use crate::setup::{ChannelSetup, ConfigError, EnvLookup, ReceiptAuth};
use crate::setup::{StartContext, Starter};
pub use crate::smpp::{BindMode, SmppConfig};
pub use crate::voice::VoiceConfig;
pub use crate::whatsapp::WhatsappConfig;
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
            // Prepared only to be checked: nothing starts.
            drop(ch.setup().prepare(name, env)?);
        }
        Ok(())
    }
}

/// The channel registry: declares [`ChannelConfig`] (one variant per
/// channel type, its config type owned by the channel's module) and
/// dispatches each to that type's [`ChannelSetup`]. A new channel is its
/// module plus one line here.
macro_rules! channel_registry {
    ($($(#[$doc:meta])* $variant:ident($config:ty),)*) => {
        /// One channel, tagged by `type`.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        pub enum ChannelConfig {
            $($(#[$doc])* $variant(Box<$config>),)*
        }

        impl ChannelConfig {
            /// What the channel's own module does with its table.
            pub fn setup(&self) -> &dyn ChannelSetup {
                match self {
                    $(Self::$variant(c) => c.as_ref(),)*
                }
            }
        }
    };
}

channel_registry! {
    /// Stores messages for `otpgate inbox` and the console sandbox instead of
    /// sending them: development and tests.
    Inbox(crate::inbox::InboxConfig),
    /// An SMSC over SMPP 3.4.
    Smpp(crate::smpp::SmppConfig),
    /// An HTTP SMS API (generic, or a `preset`).
    Http(crate::http::HttpConfig),
    /// The WhatsApp Business Cloud API's authentication templates.
    Whatsapp(crate::whatsapp::WhatsappConfig),
    /// A programmable-voice API that calls and reads the code out.
    Voice(crate::voice::VoiceConfig),
    /// SMTP, for the `EMAIL` flow.
    Email(crate::email::EmailConfig),
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
    channel.setup().receipt_auth(name, env)
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
    let needs_runtime = config.channels.values().any(|c| c.setup().needs_runtime());
    if needs_runtime && tokio::runtime::Handle::try_current().is_err() {
        return Err(ConfigError::NoRuntime);
    }
    let mut prepared: Vec<(String, Starter)> = Vec::new();
    for (name, ch) in &config.channels {
        prepared.push((name.clone(), ch.setup().prepare(name, env)?));
    }
    for (name, ch) in &config.channels {
        ch.setup().warn(name);
    }
    let ctx = StartContext {
        receipts: Arc::new(StoreReceipts::new(store.clone(), clock.clone())),
        store,
        clock,
    };
    let by_name: BTreeMap<String, Arc<dyn Channel>> = prepared
        .into_iter()
        .map(|(name, start)| {
            let ch = start(&name, &ctx);
            (name, ch)
        })
        .collect();
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
