//! The WhatsApp channel: the WhatsApp Business Cloud API's authentication
//! templates (`type = "whatsapp"`), and the checks for its status webhook.
//!
//! One message is one request:
//!
//! ```text
//! POST {url}/{api_version}/{phone_number_id}/messages
//! Authorization: Bearer {access_token}
//! Content-Type: application/json
//!
//! {"messaging_product":"whatsapp","recipient_type":"individual",
//!  "to":"{E.164 digits}","type":"template",
//!  "template":{"name":"{template}","language":{"code":"{language}"},
//!   "components":[
//!    {"type":"body","parameters":[{"type":"text","text":"{code}"}]},
//!    {"type":"button","sub_type":"url","index":"0",
//!     "parameters":[{"type":"text","text":"{code}"}]}]}}
//! ```
//!
//! Meta fixes an authentication template's words ("*{{1}}* is your
//! verification code."); otpgate fills the code into the body and into the
//! copy-code button (created as `otp`, sent as `url`). The language is the
//! request's `langId` looked up in `languages`, else `language`. The answer's
//! `messages[0].id` (a `wamid`) is kept for the status webhook.
//!
//! Statuses come back to `POST /webhooks/whatsapp/{channel}`, signed by Meta
//! with the app secret: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
//! raw body>`. [`verify_signature`] checks that before anything is parsed,
//! and [`parse_webhook`] reads `entry[].changes[].value.statuses[]`.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::{DeliveryStatus, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use crate::channel::{Accepted, ChannelError, Outgoing};
use crate::gateway::{Health, Liveness, http_client, per_request_channel, refused, request_failed};
use crate::receipt::Receipt;
use crate::setup::{
    ChannelSetup, ConfigError, EnvLookup, Starter, channel_config, expand_env, start_with,
};

channel_config! {
    /// `type = "whatsapp"`: the WhatsApp Business Cloud API.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct WhatsappConfig {
        /// The Graph API base URL; default `https://graph.facebook.com`.
        #[serde(default)]
        pub url: Option<String>,
        /// Graph API version in the path; default `v21.0`.
        #[serde(default = "default_version")]
        pub api_version: String,
        /// The sending number's id (WhatsApp Manager → API setup).
        pub phone_number_id: String,
        /// The approved authentication template's name.
        pub template: String,
        /// The template language used when `languages` has none for the
        /// request's `langId`; default `en_US`.
        #[serde(default = "default_language")]
        pub language: String,
        /// `langId` → template language (`fr = "fr"`, `pt = "pt_BR"`).
        #[serde(default)]
        pub languages: BTreeMap<String, String>,
        /// Whole-request timeout; default 10000.
        #[serde(default = "crate::setup::default_timeout_ms")]
        pub timeout_ms: u64,
    }
    secrets {
        /// A system user's access token.
        access_token / access_token_env,
        /// The Meta app's secret, which signs the status webhook. Without it the
        /// webhook refuses every call (statuses can then not mark messages
        /// delivered, so a fallback always goes after its delay).
        app_secret / app_secret_env,
        /// The token Meta echoes when the webhook is registered
        /// (`GET …?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`).
        verify_token / verify_token_env,
    }
}

fn default_version() -> String {
    "v21.0".into()
}
fn default_language() -> String {
    "en_US".into()
}

impl ChannelSetup for WhatsappConfig {
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        let settings = prepare(name, self, env)?;
        Ok(start_with(settings, |name, s| {
            WhatsappChannel::new(name, s)
        }))
    }

    // Statuses come to `/webhooks/whatsapp/{channel}`, signed with the app
    // secret, not to `/receipts`.
    fn warn(&self, name: &str) {
        if !self.app_secret().is_given() {
            tracing::warn!(
                channel = %name,
                "this WhatsApp channel has no app_secret: its webhook refuses every status, \
                 so its messages are never marked delivered"
            );
        }
    }
}

/// A checked WhatsApp configuration, secrets resolved.
#[derive(Clone)]
pub struct WhatsappSettings {
    client: reqwest::Client,
    endpoint: String,
    token: SecretString,
    template: String,
    language: String,
    languages: BTreeMap<String, String>,
}

impl std::fmt::Debug for WhatsappSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsappSettings")
            .field("template", &self.template)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a `[channels.NAME]` WhatsApp table and resolves its secrets.
///
/// # Errors
/// [`ConfigError`] for a missing token, a malformed id, version or URL.
pub fn prepare(
    name: &str,
    c: &WhatsappConfig,
    env: EnvLookup<'_>,
) -> Result<WhatsappSettings, ConfigError> {
    let bad = |r: &str| ConfigError::invalid(name, r);
    let id = expand_env(name, &c.phone_number_id, env)?;
    if !is_id(&id) {
        return Err(bad("phone_number_id must be letters and digits"));
    }
    if !is_id(&c.api_version) {
        return Err(bad("api_version must look like v21.0"));
    }
    if c.template.trim().is_empty() || !is_id(&c.template) {
        return Err(bad(
            "template must be the approved template's name (letters, digits, _)",
        ));
    }
    for l in std::iter::once(&c.language).chain(c.languages.values()) {
        if !is_id(l) {
            return Err(bad("template languages look like en_US or fr"));
        }
    }
    let token = c.access_token().required(name, env)?;
    // The webhook's secrets are resolved per call by the server; resolving
    // them here too refuses a missing variable at start.
    webhook_secrets(name, c, env)?;
    let base = c.url.as_deref().unwrap_or("https://graph.facebook.com");
    let base = expand_env(name, base, env)?;
    let endpoint = format!(
        "{}/{}/{id}/messages",
        base.trim_end_matches('/'),
        c.api_version
    );
    reqwest::Url::parse(&endpoint).map_err(|e| bad(&format!("url: {e}")))?;
    let client = http_client(name, c.timeout_ms)?;
    Ok(WhatsappSettings {
        client,
        endpoint,
        token,
        template: c.template.clone(),
        language: c.language.clone(),
        languages: c.languages.clone(),
    })
}

/// The webhook's secrets: the app secret that signs statuses, and the
/// registration handshake's verify token.
#[derive(Clone)]
pub struct WebhookSecrets {
    pub app_secret: Option<SecretString>,
    pub verify_token: Option<SecretString>,
}

/// Resolves a WhatsApp channel's webhook secrets.
///
/// # Errors
/// [`ConfigError::MissingEnv`] for an unset variable, [`ConfigError::Invalid`]
/// for an empty secret.
pub fn webhook_secrets(
    name: &str,
    c: &WhatsappConfig,
    env: EnvLookup<'_>,
) -> Result<WebhookSecrets, ConfigError> {
    let app_secret = c.app_secret().resolve(name, env)?;
    let verify_token = c.verify_token().resolve(name, env)?;
    if app_secret.as_ref().is_some_and(SecretString::is_empty)
        || verify_token.as_ref().is_some_and(SecretString::is_empty)
    {
        return Err(ConfigError::invalid(
            name,
            "app_secret and verify_token must not be empty",
        ));
    }
    Ok(WebhookSecrets {
        app_secret,
        verify_token,
    })
}

/// Whether `header` (the `X-Hub-Signature-256` value) is `sha256=` and the
/// hex HMAC-SHA256 of `body` under `app_secret`. Compared in constant time.
pub fn verify_signature(app_secret: &SecretString, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The statuses in a webhook body; messages and other events are skipped.
///
/// # Errors
/// A description when the body is not the Cloud API's webhook JSON.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Receipt>, &'static str> {
    #[derive(Deserialize)]
    struct Hook {
        #[serde(default)]
        entry: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        changes: Vec<Change>,
    }
    #[derive(Deserialize)]
    struct Change {
        #[serde(default)]
        value: Value,
    }
    #[derive(Deserialize, Default)]
    struct Value {
        #[serde(default)]
        statuses: Vec<Status>,
    }
    #[derive(Deserialize)]
    struct Status {
        id: String,
        status: String,
        #[serde(default)]
        errors: Vec<ErrorInfo>,
    }
    #[derive(Deserialize)]
    struct ErrorInfo {
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    let hook: Hook = serde_json::from_slice(body).map_err(|_| "not a WhatsApp webhook body")?;
    let mut out = Vec::new();
    for s in hook
        .entry
        .into_iter()
        .flat_map(|e| e.changes)
        .flat_map(|c| c.value.statuses)
    {
        let status = match s.status.as_str() {
            "delivered" | "read" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Undeliverable),
            _ => None,
        };
        let word: String = s
            .status
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect();
        let err = s
            .errors
            .first()
            .and_then(|e| e.code.as_ref())
            .map(|c| c.to_string().chars().take(20).collect::<String>());
        out.push(Receipt {
            gateway_id: s.id.chars().take(200).collect(),
            status,
            detail: match err {
                Some(e) => format!("whatsapp:{word} err:{e}"),
                None => format!("whatsapp:{word}"),
            },
        });
    }
    Ok(out)
}

/// See the module docs.
pub struct WhatsappChannel {
    name: String,
    s: WhatsappSettings,
    health: Health,
}

impl WhatsappChannel {
    pub fn new(name: impl Into<String>, settings: WhatsappSettings) -> Self {
        Self {
            name: name.into(),
            s: settings,
            health: Health::new("whatsapp", Liveness::LastSuccess),
        }
    }

    /// The request body for one message (public for the preset's tests).
    pub fn body(&self, msg: &Outgoing) -> serde_json::Value {
        let language = msg
            .lang
            .as_deref()
            .and_then(|l| self.s.languages.get(l))
            .unwrap_or(&self.s.language);
        let code = msg.text.as_str();
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": msg.destination.e164_digits(),
            "type": "template",
            "template": {
                "name": self.s.template,
                "language": {"code": language},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": code}]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": code}]}
                ]
            }
        })
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        // The server queues the bare code for this flow; anything else
        // would be refused by Meta (a parameter of at most 15 characters).
        if msg.text.is_empty()
            || msg.text.len() > 15
            || !msg.text.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ChannelError::Permanent(
                "a WhatsApp authentication template takes the bare code".into(),
            ));
        }
        let resp = self
            .s
            .client
            .post(&self.s.endpoint)
            .bearer_auth(self.s.token.expose())
            .json(&self.body(msg))
            .send()
            .await
            .map_err(|e| request_failed(e, "Cloud API"))?;
        if !resp.status().is_success() {
            return Err(refused(resp.status().as_u16(), "Cloud API", "access token"));
        }
        let json: serde_json::Value = resp
            .json()
            .await
            .map_err(|_| ChannelError::Transient("Cloud API answer is not JSON".into()))?;
        let id = json
            .pointer("/messages/0/id")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ChannelError::Transient("Cloud API answer has no messages[0].id".into())
            })?;
        Ok(Accepted {
            gateway_id: Some(id.to_owned()),
        })
    }
}

per_request_channel!(WhatsappChannel);

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let s = SecretString::new("app-secret");
        let body = br#"{"entry":[]}"#;
        let good = sign("app-secret", body);
        assert!(verify_signature(&s, body, Some(&good)));
        assert!(!verify_signature(&s, b"{\"entry\":[] }", Some(&good)));
        assert!(!verify_signature(&s, body, Some(&sign("other", body))));
        assert!(!verify_signature(
            &s,
            body,
            Some(good.trim_start_matches("sha256="))
        ));
        assert!(!verify_signature(&s, body, Some("sha256=zz")));
        assert!(!verify_signature(&s, body, None));
    }

    #[test]
    fn statuses_are_read_from_the_webhook() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.A","status":"delivered","timestamp":"1","recipient_id":"91"},{"id":"wamid.B","status":"sent"},{"id":"wamid.C","status":"failed","errors":[{"code":131026,"title":"x"}]}]}}]}]}"#;
        let r = parse_webhook(body).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].gateway_id, "wamid.A");
        assert_eq!(r[0].status, Some(DeliveryStatus::Delivered));
        assert_eq!(r[1].status, None);
        assert_eq!(r[2].status, Some(DeliveryStatus::Undeliverable));
        assert_eq!(r[2].detail, "whatsapp:failed err:131026");
        assert!(parse_webhook(b"not json").is_err());
        assert!(
            parse_webhook(br#"{"entry":[{"changes":[{"value":{"messages":[]}}]}]}"#)
                .unwrap()
                .is_empty()
        );
    }
}
