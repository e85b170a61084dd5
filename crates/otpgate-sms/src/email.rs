//! The e-mail channel (`type = "email"`): the `EMAIL` flow's message over
//! SMTP, through `lettre`, with STARTTLS (default, port 587), implicit TLS
//! (port 465) or, for a relay on the same host or a test server, neither.
//!
//! The server renders the message at send time from the `EMAIL` templates
//! of the request's `langId` (subject, plain text and optional HTML) and
//! queues it as one [`EmailBody`] JSON document; the address comes from the
//! send's `email` parameter, checked with [`parse_address`]. SMTP has no
//! delivery receipts: a message the server accepted counts as sent, and a
//! fallback step after it goes when its delay is up.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::channel::{Accepted, ChannelError, Outgoing};
use crate::gateway::{Health, Liveness, per_request_channel};
use crate::setup::{
    ChannelSetup, ConfigError, EnvLookup, Starter, channel_config, expand_env, start_with,
};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connect, then `STARTTLS`, required (default port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (default port 465).
    Tls,
    /// No TLS at all (default port 25): a relay on localhost or a test
    /// server only; credentials are refused with it.
    None,
}

channel_config! {
    /// `type = "email"`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EmailConfig {
        /// SMTP server host name.
        pub host: String,
        /// Default by `security`: 587, 465 or 25.
        #[serde(default)]
        pub port: Option<u16>,
        #[serde(default)]
        pub security: SmtpSecurity,
        /// A PEM file with an extra CA certificate to trust.
        #[serde(default)]
        pub tls_ca_file: Option<PathBuf>,
        /// SMTP AUTH user; none means no authentication.
        #[serde(default)]
        pub username: Option<String>,
        /// The sender, `otp@example.com` or `Example <otp@example.com>`.
        pub from: String,
        /// Connect-and-send timeout; default 10000.
        #[serde(default = "crate::setup::default_timeout_ms")]
        pub timeout_ms: u64,
    }
    secrets {
        /// The SMTP AUTH password.
        password / password_env,
    }
}

// SMTP has no receipts.
impl ChannelSetup for EmailConfig {
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        let settings = prepare(name, self, env)?;
        Ok(start_with(settings, |name, s| EmailChannel::new(name, s)))
    }
}

/// What the server queues for one e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailBody {
    pub subject: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// Longest address accepted (RFC 5321's path limit).
pub const MAX_ADDRESS_LEN: usize = 254;

/// A recipient address as the `email` parameter gives it: a bare
/// `local@domain` (no display name, no spaces), at most 254 bytes, with a
/// dotted domain.
///
/// # Errors
/// A reason fit for a 400.
pub fn parse_address(s: &str) -> Result<String, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Err("email is empty");
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err("email is longer than 254 characters");
    }
    let a: Address = s
        .parse()
        .map_err(|_| "email is not an address like name@example.com")?;
    if !a.domain().contains('.') || a.domain().starts_with('[') {
        return Err("email must have a domain name like example.com");
    }
    Ok(a.to_string())
}

/// A checked e-mail configuration, secrets resolved.
#[derive(Clone)]
pub struct EmailSettings {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("from", &self.from.email.to_string())
            .finish_non_exhaustive()
    }
}

/// Checks a `[channels.NAME]` e-mail table and builds its transport (no
/// connection is made until the first message).
///
/// # Errors
/// [`ConfigError`] for a bad sender, CA file or credentials.
pub fn prepare(
    name: &str,
    c: &EmailConfig,
    env: EnvLookup<'_>,
) -> Result<EmailSettings, ConfigError> {
    let bad = |r: String| ConfigError::invalid(name, r);
    let host = expand_env(name, &c.host, env)?;
    if host.trim().is_empty() {
        return Err(bad("host is required".into()));
    }
    let from: Mailbox = expand_env(name, &c.from, env)?
        .parse()
        .map_err(|e| bad(format!("from is not a mailbox: {e}")))?;
    let port = c.port.unwrap_or(match c.security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
    });
    let password = c.password().resolve(name, env)?;
    if c.security == SmtpSecurity::None && c.username.is_some() {
        return Err(bad(
            "security = \"none\" would send the SMTP password in the clear".into(),
        ));
    }
    let mut tls = TlsParameters::builder(host.clone());
    if let Some(path) = &c.tls_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| bad(format!("tls_ca_file {}: {e}", path.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| bad(format!("tls_ca_file {}: {e}", path.display())))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = || {
        tls.clone()
            .build_rustls()
            .map_err(|e| bad(format!("TLS: {e}")))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(port)
        .timeout(Some(Duration::from_millis(c.timeout_ms.max(1))));
    b = match c.security {
        SmtpSecurity::Starttls => b.tls(Tls::Required(tls()?)),
        SmtpSecurity::Tls => b.tls(Tls::Wrapper(tls()?)),
        SmtpSecurity::None => b.tls(Tls::None),
    };
    if let Some(user) = &c.username {
        let pass = password.ok_or_else(|| bad("username needs password or password_env".into()))?;
        b = b.credentials(Credentials::new(
            expand_env(name, user, env)?,
            pass.expose().to_owned(),
        ));
    }
    Ok(EmailSettings {
        transport: b.build(),
        from,
    })
}

/// See the module docs.
pub struct EmailChannel {
    name: String,
    s: EmailSettings,
    health: Health,
}

impl EmailChannel {
    pub fn new(name: impl Into<String>, settings: EmailSettings) -> Self {
        Self {
            name: name.into(),
            s: settings,
            health: Health::new("email", Liveness::Always),
        }
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let perm = |r: &str| ChannelError::Permanent(r.to_owned());
        let to = msg
            .address
            .as_deref()
            .ok_or_else(|| perm("no e-mail address for this message"))?;
        let to: Address = parse_address(to)
            .map_err(perm)?
            .parse()
            .map_err(|_| perm("bad address"))?;
        let body: EmailBody =
            serde_json::from_str(&msg.text).map_err(|_| perm("not an e-mail message"))?;
        let builder = Message::builder()
            .from(self.s.from.clone())
            .to(Mailbox::new(None, to))
            .subject(body.subject);
        let email = match body.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(body.text, html)),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(body.text),
            ),
        }
        .map_err(|e| ChannelError::Permanent(format!("cannot build the e-mail: {e}")))?;
        match self.s.transport.send(email).await {
            Ok(_) => Ok(Accepted {
                gateway_id: Some(format!("email-{}", msg.message_id)),
            }),
            // The error's text is the server's reply or an I/O error; it
            // never holds the message.
            Err(e) if e.is_permanent() => {
                Err(ChannelError::Permanent(format!("SMTP refused: {e}")))
            }
            Err(e) if e.is_transient() || e.is_timeout() => {
                Err(ChannelError::Transient(format!("SMTP: {e}")))
            }
            Err(e) => Err(ChannelError::Unavailable(format!("SMTP: {e}"))),
        }
    }
}

per_request_channel!(EmailChannel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address(" a.b@example.com ").unwrap(),
            "a.b@example.com"
        );
        for bad in [
            "",
            "no-at",
            "a@b",
            "A <a@example.com>",
            "a b@example.com",
            "a@[127.0.0.1]",
            &format!("{}@example.com", "x".repeat(250)),
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }
}
