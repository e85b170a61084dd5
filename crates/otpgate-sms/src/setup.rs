//! What every channel's constructor needs from the configuration layer,
//! apart from the channel table itself: the error type, the environment
//! lookup and secret resolution. Channel modules depend on this module, and
//! only `config` depends on the channel modules (one enum arm each), so a
//! new channel adds no import cycle.

use otpgate_core::SecretString;

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
