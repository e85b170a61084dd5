//! The voice channel (`type = "voice"`): a phone call that reads the code
//! out, through Twilio's programmable-voice Calls API.
//!
//! One message is one request:
//!
//! ```text
//! POST {url}/2010-04-01/Accounts/{account_sid}/Calls.json
//! Authorization: Basic base64(account_sid:auth_token)
//! Content-Type: application/x-www-form-urlencoded
//!
//! To=+919876543210&From={from}&Twiml=<Response><Say …>…</Say>…</Response>
//!   [&StatusCallback={receipt_url}/receipts/{channel}?token=…]
//! ```
//!
//! The TwiML says the `VOICE` template's text (the server renders `{code}`
//! digit by digit for this flow: "1, 2, 3, 4") `repeat` times with a pause
//! between, in the `language` for the request's `langId`. The call's `sid`
//! is kept; Twilio's status callback (`CallSid`, `CallStatus`) comes back to
//! `/receipts/{channel}` like an SMS receipt: `completed` counts as
//! delivered, `busy`, `no-answer`, `failed` and `canceled` as undelivered.
//!
//! Any other voice API is a generic `type = "http"` channel on a route with
//! `flow_types = ["VOICE"]`: its `{text}` is the same rendered text.

use std::collections::BTreeMap;

use otpgate_core::SecretString;
use serde::Deserialize;

use crate::channel::{Accepted, ChannelError, Outgoing};
use crate::gateway::{Health, Liveness, http_client, per_request_channel, refused, request_failed};
use crate::setup::{
    CallbackAuth, ChannelSetup, ConfigError, EnvLookup, Starter, channel_config, expand_env,
    start_with,
};

/// The voice APIs otpgate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoicePreset {
    /// Twilio's Calls API with inline TwiML.
    Twilio,
}

channel_config! {
    /// `type = "voice"`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct VoiceConfig {
        pub preset: VoicePreset,
        /// API base URL; default `https://api.twilio.com`.
        #[serde(default)]
        pub url: Option<String>,
        pub account_sid: String,
        /// The calling number (E.164).
        pub from: String,
        /// How many times the text is said; default 3 (1 to 5).
        #[serde(default = "default_repeat")]
        pub repeat: u8,
        /// `<Say language>` when `languages` has none for the `langId`;
        /// default `en-US`.
        #[serde(default = "default_language")]
        pub language: String,
        /// `langId` → `<Say language>` (`fr = "fr-FR"`).
        #[serde(default)]
        pub languages: BTreeMap<String, String>,
        /// `<Say voice>` (`alice`, `Polly.Joanna`); Twilio's default if unset.
        #[serde(default)]
        pub voice: Option<String>,
        /// Whole-request timeout; default 10000.
        #[serde(default = "crate::setup::default_timeout_ms")]
        pub timeout_ms: u64,
    }
    secrets {
        /// The account's auth token.
        auth_token / auth_token_env,
    }
    with receipts
}

fn default_repeat() -> u8 {
    3
}
fn default_language() -> String {
    "en-US".into()
}

/// A checked voice configuration, secrets resolved.
#[derive(Clone)]
pub struct VoiceSettings {
    client: reqwest::Client,
    endpoint: String,
    sid: String,
    token: SecretString,
    from: String,
    repeat: u8,
    language: String,
    languages: BTreeMap<String, String>,
    voice: Option<String>,
    callback: Option<String>,
}

impl std::fmt::Debug for VoiceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceSettings")
            .field("repeat", &self.repeat)
            .finish_non_exhaustive()
    }
}

impl ChannelSetup for VoiceConfig {
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        let settings = prepare(name, self, env)?;
        Ok(start_with(settings, |name, s| VoiceChannel::new(name, s)))
    }

    fn callbacks(&self) -> Option<CallbackAuth<'_>> {
        Some(self.callback_auth())
    }
}

/// Checks a `[channels.NAME]` voice table and resolves its secrets.
///
/// # Errors
/// [`ConfigError`] for a missing credential, a malformed SID or URL.
pub fn prepare(
    name: &str,
    c: &VoiceConfig,
    env: EnvLookup<'_>,
) -> Result<VoiceSettings, ConfigError> {
    let bad = |r: &str| ConfigError::invalid(name, r);
    let VoicePreset::Twilio = c.preset;
    let sid = expand_env(name, &c.account_sid, env)?;
    if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad("account_sid must be letters and digits"));
    }
    let token = c.auth_token().required(name, env)?;
    if c.from.trim().is_empty() {
        return Err(bad("needs from (the calling number)"));
    }
    if !(1..=5).contains(&c.repeat) {
        return Err(bad("repeat must be 1 to 5"));
    }
    let base = expand_env(
        name,
        c.url.as_deref().unwrap_or("https://api.twilio.com"),
        env,
    )?;
    let endpoint = format!(
        "{}/2010-04-01/Accounts/{sid}/Calls.json",
        base.trim_end_matches('/')
    );
    reqwest::Url::parse(&endpoint).map_err(|e| bad(&format!("url: {e}")))?;
    let token_q = c.callback_auth().token(name, env)?;
    let callback = match &c.receipt_url {
        Some(u) => {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "with receipt_url, the channel name must be letters, digits, - and _",
                ));
            }
            let mut url =
                reqwest::Url::parse(&format!("{}/receipts/{name}", u.trim_end_matches('/')))
                    .map_err(|e| bad(&format!("receipt_url: {e}")))?;
            if let Some(t) = &token_q {
                url.query_pairs_mut().append_pair("token", t.expose());
            }
            Some(url.to_string())
        }
        None => None,
    };
    let client = http_client(name, c.timeout_ms)?;
    Ok(VoiceSettings {
        client,
        endpoint,
        sid,
        token,
        from: expand_env(name, &c.from, env)?,
        repeat: c.repeat,
        language: c.language.clone(),
        languages: c.languages.clone(),
        voice: c.voice.clone(),
        callback,
    })
}

/// Text safe inside an XML element or a double-quoted attribute.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// See the module docs.
pub struct VoiceChannel {
    name: String,
    s: VoiceSettings,
    health: Health,
}

impl VoiceChannel {
    pub fn new(name: impl Into<String>, settings: VoiceSettings) -> Self {
        Self {
            name: name.into(),
            s: settings,
            health: Health::new("voice", Liveness::Always),
        }
    }

    /// The TwiML that one call plays.
    pub fn twiml(&self, msg: &Outgoing) -> String {
        let lang = msg
            .lang
            .as_deref()
            .and_then(|l| self.s.languages.get(l))
            .unwrap_or(&self.s.language);
        let mut attrs = format!(" language=\"{}\"", xml_escape(lang));
        if let Some(v) = &self.s.voice {
            attrs.push_str(&format!(" voice=\"{}\"", xml_escape(v)));
        }
        let say = format!("<Say{attrs}>{}</Say>", xml_escape(&msg.text));
        let mut out = String::from("<Response>");
        for i in 0..self.s.repeat {
            if i > 0 {
                out.push_str("<Pause length=\"1\"/>");
            }
            out.push_str(&say);
        }
        out.push_str("</Response>");
        out
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let mut form = vec![
            ("To", format!("+{}", msg.destination.e164_digits())),
            ("From", self.s.from.clone()),
            ("Twiml", self.twiml(msg)),
        ];
        if let Some(cb) = &self.s.callback {
            form.push(("StatusCallback", cb.clone()));
        }
        let resp = self
            .s
            .client
            .post(&self.s.endpoint)
            .basic_auth(&self.s.sid, Some(self.s.token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| request_failed(e, "voice API"))?;
        let code = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(refused(code, "voice API", "credentials"));
        }
        let json: Option<serde_json::Value> = resp.json().await.ok();
        let sid = json
            .as_ref()
            .and_then(|j| j.get("sid"))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| msg.message_id.to_string());
        Ok(Accepted {
            gateway_id: Some(sid),
        })
    }
}

per_request_channel!(VoiceChannel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'\n"), "a&lt;b&gt;&amp;&quot;c&apos; ");
    }
}
