//! The HTTP gateway channel: one HTTP request per message, shaped by the
//! channel's configuration (or a `preset` for Kannel and Twilio), and the
//! answer classified for the worker:
//!
//! - a listed success status (default any 2xx), and the `success_field`
//!   check if configured → accepted, with the gateway's id from `id_field`
//!   (else otpgate's `{reference}`);
//! - 408, 429, 5xx, timeouts → transient (retried later, next channel now);
//! - connection refused / DNS / TLS failures, 401 and 403 → unavailable:
//!   the channel itself is down or misconfigured, so this message should not
//!   be failed for it;
//! - other 4xx, a failed `success_field` → permanent.
//!
//! Neither the text nor the credentials are logged, and gateway response
//! bodies are not copied into errors (some echo the request, code included).
//! The same goes for the `receipt_token` the presets put into the callback
//! URL they hand the gateway: it travels in query and form values, which
//! `Debug` shows by name only and which errors leave out, as they leave out
//! the URL.

use std::collections::BTreeMap;

use async_trait::async_trait;
use otpgate_core::SecretString;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tracing::debug;

use crate::channel::{Accepted, Channel, ChannelError, ChannelHealth, Outgoing};
use crate::gateway::{Health, Liveness, http_client, refused, request_failed};
use crate::setup::{
    CallbackAuth, ChannelSetup, ConfigError, EnvLookup, Starter, channel_config, expand_env,
    secret, start_with,
};
use crate::smpp::coding;

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

channel_config! {
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
        #[serde(default = "crate::setup::default_timeout_ms")]
        pub timeout_ms: u64,
        /// Kannel: `username` of the sendsms user.
        #[serde(default)]
        pub username: Option<String>,
        /// Kannel: `dlr-mask`; default 19 (delivered, undelivered, SMSC reject).
        #[serde(default)]
        pub dlr_mask: Option<u8>,
        /// Twilio: the account SID (`AC…`).
        #[serde(default)]
        pub account_sid: Option<String>,
    }
    secrets {
        /// Kannel: the sendsms user's password.
        password / password_env,
        /// Twilio: the auth token.
        auth_token / auth_token_env,
    }
    with receipts
}

impl ChannelSetup for HttpConfig {
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        let settings = prepare(name, self, env)?;
        Ok(start_with(settings, |name, s| HttpChannel::new(name, s)))
    }

    fn callbacks(&self) -> Option<CallbackAuth<'_>> {
        Some(self.callback_auth())
    }
}

/// A checked HTTP channel configuration, secrets resolved.
#[derive(Clone)]
pub struct HttpSettings {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: Vec<(HeaderName, String)>,
    query: Vec<(String, String)>,
    body: BodyKind,
    fields: Vec<(String, String)>,
    json_template: Option<String>,
    from: String,
    basic_auth: Option<(String, SecretString)>,
    success_status: Vec<u16>,
    id_field: Option<String>,
    success_field: Option<String>,
    success_value: Option<String>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header, query and field values may hold credentials: names only.
        f.debug_struct("HttpSettings")
            .field("method", &self.method)
            .field("headers", &names(&self.headers))
            .field("query", &names(&self.query))
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The names of `pairs`, for debug output that must not show their values.
fn names<K: AsRef<str>, V>(pairs: &[(K, V)]) -> Vec<&str> {
    pairs.iter().map(|(k, _)| k.as_ref()).collect()
}

const PLACEHOLDERS: [&str; 6] = ["to", "to_digits", "text", "from", "reference", "coding"];

/// Checks an `[channels.NAME]` HTTP table, applies its preset and resolves
/// its secrets.
///
/// # Errors
/// [`ConfigError`] for a missing URL or credential, unknown placeholders,
/// malformed header names.
pub fn prepare(
    name: &str,
    c: &HttpConfig,
    env: EnvLookup<'_>,
) -> Result<HttpSettings, ConfigError> {
    let bad = |r: String| ConfigError::invalid(name, r);
    let expand = |s: &str| expand_env(name, s, env);

    let mut query: Vec<(String, String)> = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut basic_auth = None;
    let mut success_status = c.success_status.clone();
    let mut id_field = c.id_field.clone();
    let receipt_base = c
        .receipt_url
        .as_deref()
        .map(|u| format!("{}/receipts/{}", u.trim_end_matches('/'), name));
    // Percent-encoded once, for the callback URL's own query string; each
    // preset adds what its gateway's handling of that URL needs.
    let receipt_token = c
        .callback_auth()
        .token(name, env)?
        .map(|t| SecretString::new(url_escape(t.expose())));
    if receipt_base.is_some()
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            "with receipt_url, the channel name must be letters, digits, - and _ (it goes into the URL)"
                .into(),
        ));
    }

    let (url, method, body) = match c.preset {
        Some(HttpPreset::Kannel) => {
            let base = c.url.as_deref().ok_or_else(|| {
                bad("the kannel preset needs url (e.g. http://kannel:13013)".into())
            })?;
            let url = if base.contains("/cgi-bin/") {
                base.to_owned()
            } else {
                format!("{}/cgi-bin/sendsms", base.trim_end_matches('/'))
            };
            let user = c
                .username
                .as_deref()
                .ok_or_else(|| bad("the kannel preset needs username".into()))?;
            let pass = c
                .password()
                .resolve(name, env)?
                .ok_or_else(|| bad("the kannel preset needs password or password_env".into()))?;
            query.push(("username".into(), expand(user)?));
            query.push(("password".into(), pass.expose().to_owned()));
            if c.from.is_some() {
                query.push(("from".into(), "{from}".into()));
            }
            query.push(("to".into(), "{to}".into()));
            query.push(("text".into(), "{text}".into()));
            // Kannel takes UTF-8 text and sends it as GSM 7-bit (coding=0)
            // or UCS-2 (coding=2) as told.
            query.push(("charset".into(), "UTF-8".into()));
            query.push(("coding".into(), "{coding}".into()));
            if let Some(base) = &receipt_base {
                query.push(("dlr-mask".into(), c.dlr_mask.unwrap_or(19).to_string()));
                // %d (report type) and %A (SMSC answer) are Kannel's own
                // escapes, filled when it calls back.
                let mut dlr = format!("{base}?ref={{reference}}&status=%d&answer=%A");
                if let Some(t) = &receipt_token {
                    // Kannel fills its `%X` escapes in a dlr-url (`%A` to
                    // `%F` among them) and turns `%%` into `%`: a bare
                    // percent-encoded byte like `%C3` would become the
                    // charset (`%C`) and "3". Doubled, Kannel calls back
                    // with the token encoded exactly once. (The whole
                    // dlr-url is encoded once more as the value of the
                    // sendsms query parameter.)
                    dlr.push_str("&token=");
                    dlr.push_str(&t.expose().replace('%', "%%"));
                }
                query.push(("dlr-url".into(), dlr));
            }
            if success_status.is_empty() {
                success_status = vec![200, 202];
            }
            (
                url,
                c.method.unwrap_or(HttpMethod::Get),
                c.body.unwrap_or(BodyKind::None),
            )
        }
        Some(HttpPreset::Twilio) => {
            let sid = c
                .account_sid
                .as_deref()
                .map(expand)
                .transpose()?
                .ok_or_else(|| bad("the twilio preset needs account_sid".into()))?;
            if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("account_sid must be letters and digits".into()));
            }
            let token = c.auth_token().resolve(name, env)?.ok_or_else(|| {
                bad("the twilio preset needs auth_token or auth_token_env".into())
            })?;
            if c.from.is_none() {
                return Err(bad(
                    "the twilio preset needs from (a number or a Messaging Service SID)".into(),
                ));
            }
            let base = c.url.as_deref().unwrap_or("https://api.twilio.com");
            let url = format!(
                "{}/2010-04-01/Accounts/{sid}/Messages.json",
                base.trim_end_matches('/')
            );
            fields.push(("To".into(), "{to}".into()));
            fields.push(("From".into(), "{from}".into()));
            fields.push(("Body".into(), "{text}".into()));
            if let Some(base) = &receipt_base {
                // Twilio calls the URL back as given (query included).
                let url = match &receipt_token {
                    Some(t) => format!("{base}?token={}", t.expose()),
                    None => base.clone(),
                };
                fields.push(("StatusCallback".into(), url));
            }
            basic_auth = Some((sid, token));
            if success_status.is_empty() {
                success_status = vec![200, 201];
            }
            if id_field.is_none() {
                id_field = Some("sid".into());
            }
            (
                url,
                c.method.unwrap_or(HttpMethod::Post),
                c.body.unwrap_or(BodyKind::Form),
            )
        }
        None => {
            let url = c.url.clone().ok_or_else(|| bad("url is required".into()))?;
            let method = c.method.unwrap_or(HttpMethod::Post);
            let body = c.body.unwrap_or(if method == HttpMethod::Get {
                BodyKind::None
            } else {
                BodyKind::Json
            });
            (url, method, body)
        }
    };

    // Explicit settings win over the preset's, key by key.
    for (k, v) in &c.query {
        query.retain(|(q, _)| q != k);
        query.push((k.clone(), expand(v)?));
    }
    for (k, v) in &c.fields {
        fields.retain(|(q, _)| q != k);
        fields.push((k.clone(), expand(v)?));
    }
    let url = expand(&url)?;
    let mut headers = Vec::new();
    for (k, v) in &c.headers {
        let name_ok = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| bad(format!("header name {k:?} is not valid")))?;
        headers.push((name_ok, expand(v)?));
    }
    if basic_auth.is_none()
        && let Some(user) = &c.basic_auth_user
    {
        let pass = secret(name, c.basic_auth_password.as_ref(), None, env)?.unwrap_or_default();
        basic_auth = Some((expand(user)?, pass));
    }
    let json_template = c.json_template.as_deref().map(expand).transpose()?;
    if json_template.is_some() && body != BodyKind::Json {
        return Err(bad("json_template needs body = \"json\"".into()));
    }
    if body == BodyKind::None && !fields.is_empty() {
        return Err(bad("fields need body = \"json\" or \"form\"".into()));
    }

    // Every template must use known placeholders only: a typo would send
    // "{txet}" to real phones.
    let mut templates: Vec<&str> = vec![&url];
    templates.extend(headers.iter().map(|(_, v)| v.as_str()));
    templates.extend(query.iter().map(|(_, v)| v.as_str()));
    templates.extend(fields.iter().map(|(_, v)| v.as_str()));
    templates.extend(json_template.as_deref());
    for t in templates {
        check_placeholders(t).map_err(|p| bad(format!("unknown placeholder {{{p}}}")))?;
    }
    if let Some(t) = &json_template {
        // Fill with harmless values and check the result parses.
        let probe = Vars {
            to: "+10000000000".into(),
            to_digits: "10000000000".into(),
            text: "t\"e\\x".into(),
            from: "f".into(),
            reference: "1".into(),
            coding: "0",
        };
        serde_json::from_str::<serde_json::Value>(&fill(t, &probe, json_escape))
            .map_err(|e| bad(format!("json_template is not JSON once filled: {e}")))?;
    }
    let probe_url = fill(&url, &Vars::default(), |s| s.to_owned());
    reqwest::Url::parse(&probe_url).map_err(|e| bad(format!("url: {e}")))?;

    let client = http_client(name, c.timeout_ms)?;
    Ok(HttpSettings {
        client,
        url,
        method: match method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        },
        headers,
        query,
        body,
        fields,
        json_template,
        from: c
            .from
            .as_deref()
            .map(expand)
            .transpose()?
            .unwrap_or_default(),
        basic_auth,
        success_status,
        id_field,
        success_field: c.success_field.clone(),
        success_value: c.success_value.clone(),
    })
}

/// The per-message values of the placeholders.
#[derive(Default)]
struct Vars {
    to: String,
    to_digits: String,
    text: String,
    from: String,
    reference: String,
    coding: &'static str,
}

impl Vars {
    fn get(&self, key: &str) -> Option<&str> {
        Some(match key {
            "to" => &self.to,
            "to_digits" => &self.to_digits,
            "text" => &self.text,
            "from" => &self.from,
            "reference" => &self.reference,
            "coding" => self.coding,
            _ => return None,
        })
    }
}

/// `{name}` occurrences where `name` is a lower-case identifier; other braces
/// (JSON) are left alone.
fn placeholders(t: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let bytes = t.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == b'{' {
                let start = i;
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_lowercase() || bytes[j] == b'_') {
                    j += 1;
                }
                if j > start + 1 && j < bytes.len() && bytes[j] == b'}' {
                    i = j + 1;
                    return Some((start, j + 1, &t[start + 1..j]));
                }
            }
            i += 1;
        }
        None
    })
}

fn check_placeholders(t: &str) -> Result<(), String> {
    for (_, _, name) in placeholders(t) {
        if !PLACEHOLDERS.contains(&name) {
            return Err(name.to_owned());
        }
    }
    Ok(())
}

fn fill(t: &str, vars: &Vars, escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(t.len() + 32);
    let mut last = 0;
    for (s, e, name) in placeholders(t) {
        if let Some(v) = vars.get(name) {
            out.push_str(&t[last..s]);
            out.push_str(&escape(v));
            last = e;
        }
    }
    out.push_str(&t[last..]);
    out
}

/// A JSON string's content without its quotes.
fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1).max(1)].to_owned()
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value at a dotted path (`messages.0.id`) of a JSON document.
fn json_path<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |v, key| match v {
        serde_json::Value::Array(a) => a.get(key.parse::<usize>().ok()?),
        serde_json::Value::Object(o) => o.get(key),
        _ => None,
    })
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An HTTP SMS API; see the module docs.
pub struct HttpChannel {
    name: String,
    s: HttpSettings,
    health: Health,
}

impl HttpChannel {
    pub fn new(name: impl Into<String>, settings: HttpSettings) -> Self {
        Self {
            name: name.into(),
            s: settings,
            health: Health::new("http", Liveness::LastResult),
        }
    }

    fn request(&self, msg: &Outgoing) -> reqwest::RequestBuilder {
        let s = &self.s;
        let digits = msg.destination.e164_digits();
        let vars = Vars {
            to: format!("+{digits}"),
            to_digits: digits,
            text: msg.text.clone(),
            from: s.from.clone(),
            reference: msg.message_id.to_string(),
            coding: if coding::to_gsm7(&msg.text).is_some() {
                "0"
            } else {
                "2"
            },
        };
        let url = fill(&s.url, &vars, url_escape);
        let mut rb = s.client.request(s.method.clone(), url);
        let mut headers = HeaderMap::new();
        for (k, v) in &s.headers {
            if let Ok(mut hv) = HeaderValue::from_str(&fill(v, &vars, |x| x.to_owned())) {
                hv.set_sensitive(true);
                headers.insert(k.clone(), hv);
            }
        }
        rb = rb.headers(headers);
        if !s.query.is_empty() {
            let q: Vec<(&str, String)> = s
                .query
                .iter()
                .map(|(k, v)| (k.as_str(), fill(v, &vars, |x| x.to_owned())))
                .collect();
            rb = rb.query(&q);
        }
        if let Some((user, pass)) = &s.basic_auth {
            rb = rb.basic_auth(user, Some(pass.expose()));
        }
        let fields = || -> Vec<(String, String)> {
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), fill(v, &vars, |x| x.to_owned())))
                .collect()
        };
        match s.body {
            BodyKind::None => rb,
            BodyKind::Form => rb.form(&fields()),
            BodyKind::Json => match &s.json_template {
                Some(t) => rb
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(fill(t, &vars, json_escape)),
                None => {
                    let obj: serde_json::Map<String, serde_json::Value> = fields()
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect();
                    rb.json(&obj)
                }
            },
        }
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        // Without the URL: it may carry credentials (Kannel's password).
        let resp = self
            .request(msg)
            .send()
            .await
            .map_err(|e| request_failed(e, "gateway"))?;
        let code = resp.status().as_u16();
        let listed = if self.s.success_status.is_empty() {
            resp.status().is_success()
        } else {
            self.s.success_status.contains(&code)
        };
        if !listed {
            return Err(match code {
                // A 2xx the channel does not list: retried, as the gateway
                // may mean "later".
                200..=299 => ChannelError::Transient(format!("gateway answered HTTP {code}")),
                _ => refused(code, "gateway", "credentials"),
            });
        }
        let reference = msg.message_id.to_string();
        if self.s.id_field.is_none() && self.s.success_field.is_none() {
            return Ok(Accepted {
                gateway_id: Some(reference),
            });
        }
        let json: Option<serde_json::Value> = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(field) = &self.s.success_field {
            let v = json.as_ref().and_then(|j| json_path(j, field));
            let ok = match (&self.s.success_value, v) {
                (Some(want), Some(v)) => json_scalar(v).as_deref() == Some(want.as_str()),
                (None, Some(serde_json::Value::Bool(b))) => *b,
                _ => false,
            };
            if !ok {
                return Err(ChannelError::Permanent(format!(
                    "gateway answered HTTP {code} but {field} does not say success"
                )));
            }
        }
        let id = self
            .s
            .id_field
            .as_deref()
            .and_then(|f| json.as_ref().and_then(|j| json_path(j, f)))
            .and_then(json_scalar)
            .filter(|s| !s.is_empty());
        Ok(Accepted {
            gateway_id: Some(id.unwrap_or(reference)),
        })
    }
}

#[async_trait]
impl Channel for HttpChannel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let r = self.deliver(msg).await;
        debug!(
            channel = %self.name,
            message = msg.message_id,
            ok = r.is_ok(),
            "HTTP gateway answered"
        );
        self.health.note(r)
    }

    fn health(&self) -> ChannelHealth {
        self.health.of(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_leave_json_braces_alone() {
        let t = r#"{"to":"{to}","n":{"x":1},"t":"{text}"}"#;
        let names: Vec<_> = placeholders(t).map(|(_, _, n)| n).collect();
        assert_eq!(names, ["to", "text"]);
        let v = Vars {
            to: "+1".into(),
            text: "a\"b".into(),
            ..Vars::default()
        };
        assert_eq!(
            fill(t, &v, json_escape),
            r#"{"to":"+1","n":{"x":1},"t":"a\"b"}"#
        );
        assert_eq!(check_placeholders("{txet}"), Err("txet".into()));
    }

    #[test]
    fn json_paths() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"sid":"SM1","messages":[{"id":7}]}"#).unwrap();
        assert_eq!(json_scalar(json_path(&j, "sid").unwrap()).unwrap(), "SM1");
        assert_eq!(
            json_scalar(json_path(&j, "messages.0.id").unwrap()).unwrap(),
            "7"
        );
        assert!(json_path(&j, "messages.9.id").is_none());
    }

    #[test]
    fn url_escaping() {
        assert_eq!(url_escape("+91 x/y"), "%2B91%20x%2Fy");
    }
}
