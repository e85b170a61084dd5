//! The channel registry's contract: what every channel module implements
//! for its own config type ([`ChannelSetup`]: check, start, receipts,
//! warnings) and what it needs from the configuration layer (the error
//! type, the environment lookup, secret and receipt-token resolution).
//! Channel modules depend on this module, and only `config` depends on the
//! channel modules (one enum arm each), so a new channel is one file and
//! one arm, and adds no import cycle.

use std::sync::Arc;

use otpgate_core::{Clock, SecretString};
use otpgate_store::DeliveryStore;

use crate::channel::Channel;
use crate::receipt::ReceiptSink;

/// What a channel's configuration type does for the registry
/// (`config::ChannelConfig`), each in the channel's own module.
pub trait ChannelSetup {
    /// Checks the `[channels.NAME]` table and resolves its secrets,
    /// starting nothing, and returns what starts the channel. [`build`]
    /// prepares every channel before it starts any.
    ///
    /// [`build`]: crate::config::build
    ///
    /// # Errors
    /// [`ConfigError`] naming the channel.
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError>;

    /// The receipt settings of a channel whose gateway calls
    /// `/receipts/{channel}` back (declared `with receipts` by `channel_config!`);
    /// `None`, the default, for one whose receipts never arrive over HTTP.
    /// [`ChannelSetup::receipt_auth`] and [`ChannelSetup::warn`] follow them.
    fn callbacks(&self) -> Option<CallbackAuth<'_>> {
        None
    }

    /// How `/receipts/{channel}` must treat a callback for this channel: as
    /// its [`ChannelSetup::callbacks`] say, or, without them, there is none
    /// to accept ([`ReceiptAuth::NotHttp`]).
    ///
    /// # Errors
    /// [`ConfigError`] when the receipt token cannot be resolved.
    fn receipt_auth(&self, name: &str, env: EnvLookup<'_>) -> Result<ReceiptAuth, ConfigError> {
        match self.callbacks() {
            Some(c) => c.receipt_auth(name, env),
            None => Ok(ReceiptAuth::NotHttp),
        }
    }

    /// Logs, at start, what about this configuration an operator should
    /// know (a channel whose receipts anyone could forge, or none can pass);
    /// by default what its [`ChannelSetup::callbacks`] call for.
    fn warn(&self, name: &str) {
        if let Some(c) = self.callbacks() {
            c.warn(name);
        }
    }

    /// Whether starting it needs a tokio runtime (background sessions).
    fn needs_runtime(&self) -> bool {
        false
    }
}

/// Starts one prepared channel under its name.
pub type Starter = Box<dyn FnOnce(&str, &StartContext) -> Arc<dyn Channel>>;

/// The [`Starter`] of a channel that needs nothing but its prepared
/// `settings` (every per-request channel).
pub(crate) fn start_with<S, C>(settings: S, new: impl FnOnce(&str, S) -> C + 'static) -> Starter
where
    S: 'static,
    C: Channel + 'static,
{
    Box::new(move |name: &str, _: &StartContext| Arc::new(new(name, settings)) as Arc<dyn Channel>)
}

/// The default `timeout_ms` of the per-request channels (HTTP, WhatsApp,
/// voice, e-mail).
pub(crate) fn default_timeout_ms() -> u64 {
    10_000
}

/// What starting a channel may use beyond its own settings.
pub struct StartContext {
    pub store: Arc<dyn DeliveryStore>,
    pub clock: Arc<dyn Clock>,
    /// Where channels that bring receipts in themselves (SMPP's
    /// `deliver_sm`) record them.
    pub receipts: Arc<dyn ReceiptSink>,
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
    /// (`build` warns).
    Open,
    /// An HTTP or voice channel without `receipt_token` that did not opt
    /// out: callbacks are refused.
    NoToken,
    /// Callbacks must carry a `token` parameter equal to this.
    Token(SecretString),
}

/// Declares a channel's config struct: its attributes and own fields as
/// written, then each of its `secrets { name / name_env, }` as the two
/// settings every secret has (given inline, or by the name of an
/// environment variable, which wins; both resolved by [`secret`]), and,
/// after `with receipts`, the receipt settings HTTP and voice channels share
/// (`receipt_url`, `receipt_token`/`receipt_token_env`,
/// `receipts_unauthenticated`) with `callback_auth()`, their
/// [`CallbackAuth`]. A macro because every channel table keeps
/// `deny_unknown_fields`, which `serde(flatten)` does not work with.
macro_rules! channel_config {
    (
        $(#[$attr:meta])*
        pub struct $name:ident { $($fields:tt)* }
        secrets { $($(#[$doc:meta])* $secret:ident / $secret_env:ident,)* }
        with receipts
    ) => {
        $crate::setup::channel_config! {
            $(#[$attr])*
            pub struct $name {
                $($fields)*
                /// Public base URL of this otpgate (e.g. `https://otp.example.com`);
                /// when set, the channel asks its gateway to report delivery to
                /// `{receipt_url}/receipts/{channel}` (Kannel `dlr-url`, Twilio
                /// `StatusCallback`), with `token=…` when `receipt_token` is set.
                #[serde(default)]
                pub receipt_url: Option<String>,
                /// Accept this channel's delivery callbacks without a token. Off by
                /// default: a channel without `receipt_token` then has its callbacks
                /// refused (401), since anyone who can reach `/receipts/{channel}` could
                /// otherwise mark its messages undeliverable. For gateways that cannot
                /// carry a token, behind a firewall that only lets the gateway through.
                #[serde(default)]
                pub receipts_unauthenticated: bool,
            }
            secrets {
                $($(#[$doc])* $secret / $secret_env,)*
                /// A shared secret every delivery callback for this channel must carry
                /// as its `token` parameter; `/receipts/{channel}` answers 401 to one
                /// without it. The presets and the voice channel put it into the
                /// callback URL they hand the gateway; for a generic HTTP channel, put
                /// `token=…` into the callback URL you give your gateway. Without a
                /// token the channel's callbacks are refused, unless
                /// `receipts_unauthenticated` opts out (then anyone who can reach the
                /// endpoint can mark this channel's messages undeliverable, failing and
                /// refunding them, and otpgate warns about it at start). A URL-safe
                /// value (`openssl rand -hex 32`) is easiest to paste into gateway
                /// consoles; any other is percent-encoded where otpgate builds the URL.
                receipt_token / receipt_token_env,
            }
        }

        impl $name {
            fn callback_auth(&self) -> $crate::setup::CallbackAuth<'_> {
                $crate::setup::CallbackAuth {
                    token: self.receipt_token(),
                    unauthenticated: self.receipts_unauthenticated,
                    asks_for_callbacks: self.receipt_url.is_some(),
                }
            }
        }
    };
    (
        $(#[$attr:meta])*
        pub struct $name:ident { $($fields:tt)* }
        secrets { $($(#[$doc:meta])* $secret:ident / $secret_env:ident,)* }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($fields)*
            $(
                $(#[$doc])*
                #[doc = concat!("Prefer `", stringify!($secret_env), "`.")]
                #[serde(default)]
                pub $secret: Option<::otpgate_core::SecretString>,
                #[doc = concat!(
                    "The name of the environment variable holding `",
                    stringify!($secret),
                    "` (it wins when both are set).",
                )]
                #[serde(default)]
                pub $secret_env: Option<String>,
            )*
        }

        impl $name {
            $(
                #[doc = concat!(
                    "`", stringify!($secret), "`, given inline or by `",
                    stringify!($secret_env), "`.",
                )]
                pub(crate) fn $secret(&self) -> $crate::setup::SecretSetting<'_> {
                    $crate::setup::SecretSetting {
                        setting: stringify!($secret),
                        inline: self.$secret.as_ref(),
                        env_name: self.$secret_env.as_deref(),
                    }
                }
            )*
        }
    };
}
pub(crate) use channel_config;

/// The receipt settings HTTP and voice channels share (`receipt_token`,
/// `receipt_token_env`, `receipts_unauthenticated`, `receipt_url`).
#[derive(Debug, Clone, Copy)]
pub struct CallbackAuth<'a> {
    pub token: SecretSetting<'a>,
    pub unauthenticated: bool,
    /// Whether the channel asks its gateway for callbacks.
    pub asks_for_callbacks: bool,
}

impl CallbackAuth<'_> {
    /// The resolved receipt token, if the channel has one.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when `receipt_token_env` names an unset
    /// variable, [`ConfigError::Invalid`] when the token is empty.
    pub fn token(
        &self,
        name: &str,
        env: EnvLookup<'_>,
    ) -> Result<Option<SecretString>, ConfigError> {
        let token = self.token.resolve(name, env)?;
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

    /// # Errors
    /// As [`CallbackAuth::token`].
    pub fn receipt_auth(&self, name: &str, env: EnvLookup<'_>) -> Result<ReceiptAuth, ConfigError> {
        Ok(match self.token(name, env)? {
            Some(t) => ReceiptAuth::Token(t),
            None if self.unauthenticated => ReceiptAuth::Open,
            None => ReceiptAuth::NoToken,
        })
    }

    pub fn warn(&self, name: &str) {
        if self.token.is_given() {
            return;
        }
        if self.unauthenticated {
            tracing::warn!(
                channel = %name,
                "delivery receipts for this channel are unauthenticated \
                 (receipts_unauthenticated): anyone who can reach /receipts/{name} \
                 can mark its messages undeliverable"
            );
        } else if self.asks_for_callbacks {
            tracing::warn!(
                channel = %name,
                "this channel has no receipt_token: its delivery callbacks are \
                 refused; set receipt_token_env (or receipt_token)"
            );
        }
    }
}

/// What is wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid SMS configuration: {0}")]
    Toml(String),
    #[error("channel {channel:?}: {reason}")]
    Invalid { channel: String, reason: String },
    #[error("channel {channel:?}: environment variable {var} is not set")]
    MissingEnv { channel: String, var: String },
    #[error("route {route}: unknown channel {channel:?}")]
    UnknownChannel { route: usize, channel: String },
    #[error("route {0}: no channels listed")]
    EmptyRoute(usize),
    #[error("channel names must not be empty")]
    EmptyName,
    #[error("route {route}: unknown number type {name:?}")]
    UnknownNumberType { route: usize, name: String },
    #[error(
        "{0} channels are configured but no [[routes]]: add routes to say which to use, in which order"
    )]
    NoRoutes(usize),
    #[error("route {route}: fallback: {reason}")]
    Fallback { route: usize, reason: String },
    #[error("SMPP channels start background sessions: call build() inside a tokio runtime")]
    NoRuntime,
}

impl ConfigError {
    pub(crate) fn invalid(channel: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            channel: channel.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Resolves `${VAR}` and `*_env` settings.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replaces each `${VAR}` in `s` by the variable's value.
///
/// # Errors
/// [`ConfigError::MissingEnv`] for an unset variable,
/// [`ConfigError::Invalid`] for an unterminated `${`.
pub(crate) fn expand_env(
    channel: &str,
    s: &str,
    env: EnvLookup<'_>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::invalid(channel, "unterminated ${ in a value"));
        };
        let var = &after[..end];
        let value = env(var).ok_or_else(|| ConfigError::MissingEnv {
            channel: channel.to_owned(),
            var: var.to_owned(),
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One secret setting of a channel's table (declared in `secrets` by
/// `channel_config!`): given inline, or by the name of an environment
/// variable.
#[derive(Debug, Clone, Copy)]
pub struct SecretSetting<'a> {
    /// The setting's name (`password`), for errors.
    pub setting: &'static str,
    pub inline: Option<&'a SecretString>,
    pub env_name: Option<&'a str>,
}

impl SecretSetting<'_> {
    /// Whether either form is set.
    pub fn is_given(&self) -> bool {
        self.inline.is_some() || self.env_name.is_some()
    }

    /// Its value, if given ([`secret`]).
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when the variable is unset.
    pub(crate) fn resolve(
        &self,
        channel: &str,
        env: EnvLookup<'_>,
    ) -> Result<Option<SecretString>, ConfigError> {
        secret(channel, self.inline, self.env_name, env)
    }

    /// Its value, which the channel cannot do without.
    ///
    /// # Errors
    /// As [`SecretSetting::resolve`], and [`ConfigError::Invalid`] ("needs
    /// `setting` or `setting_env`") when it is absent or empty.
    pub(crate) fn required(
        &self,
        channel: &str,
        env: EnvLookup<'_>,
    ) -> Result<SecretString, ConfigError> {
        self.resolve(channel, env)?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(channel, format!("needs {0} or {0}_env", self.setting))
            })
    }
}

/// A secret given inline or by environment variable name (the latter wins
/// when both are set, so a file can keep a placeholder).
///
/// # Errors
/// [`ConfigError::MissingEnv`] when the variable is unset.
pub(crate) fn secret(
    channel: &str,
    inline: Option<&SecretString>,
    env_name: Option<&str>,
    env: EnvLookup<'_>,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(var) = env_name {
        return env(var).map(|v| Some(SecretString::new(v))).ok_or_else(|| {
            ConfigError::MissingEnv {
                channel: channel.to_owned(),
                var: var.to_owned(),
            }
        });
    }
    match inline {
        Some(s) => Ok(Some(SecretString::new(expand_env(
            channel,
            s.expose(),
            env,
        )?))),
        None => Ok(None),
    }
}
