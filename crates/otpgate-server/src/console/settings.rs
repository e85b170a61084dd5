//! The account's settings (`AccountSettings`): brand name in the message,
//! default validity and code length, the countries it may send to (others
//! get 511) and the per-number send limit. The API's send path reads them
//! on every send, so a change here applies to the next one. The page also
//! shows the account's webhook (its forms are handled in `webhooks.rs`).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_core::{OtpLength, TimeoutRange, is_known_country_code};
use otpgate_store::AccountSettings;
use serde::Deserialize;

use super::error::{render, render_status};
use super::extract::{AccountCtx, Lenient, Posted};
use super::{Console, PageError};

/// Longest brand name: it goes into every SMS, where length is money.
pub const MAX_BRAND_CHARS: usize = 80;
/// Largest per-number send limit accepted.
const MAX_SEND_LIMIT: u32 = 10_000;

#[derive(Template)]
#[template(path = "console/settings.html")]
pub(super) struct SettingsPage {
    chrome: super::views::Chrome,
    form: SettingsForm,
    errors: Vec<String>,
    saved: bool,
    defaults: Defaults,
    webhook: WebhookView,
}

/// The page with the account's settings as stored and `webhook` as given
/// (a rejected webhook form shown back).
pub(super) fn page_with_webhook(
    console: &Console,
    ctx: &AccountCtx,
    webhook: WebhookView,
) -> SettingsPage {
    SettingsPage {
        chrome: ctx.chrome(console, "Settings", "settings"),
        form: SettingsForm::from_settings(&ctx.account.settings),
        errors: Vec::new(),
        saved: false,
        defaults: defaults(console),
        webhook,
    }
}

/// The webhook part of the Settings page.
#[derive(Debug, Clone, Default)]
pub struct WebhookView {
    pub url: String,
    /// The full `whsec_` secret, shown to the account that owns it.
    pub secret: String,
    pub errors: Vec<String>,
}

/// The webhook of `ctx`'s account, as the Settings page shows it.
///
/// # Errors
/// The store's.
pub async fn webhook_view(console: &Console, ctx: &AccountCtx) -> Result<WebhookView, PageError> {
    let hook = console
        .app
        .store
        .webhook_get(&ctx.account.customer_id)
        .await?;
    Ok(hook.map_or_else(WebhookView::default, |h| WebhookView {
        url: h.url,
        secret: h.secret.expose().to_owned(),
        errors: Vec::new(),
    }))
}

/// Server-wide values that apply where the account sets none.
struct Defaults {
    brand: String,
    timeout: u32,
    min_timeout: u32,
    max_timeout: u32,
    length: u8,
    send_limit: u32,
    window_minutes: u32,
}

/// The form, as text, so a rejected value is shown back as typed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SettingsForm {
    pub brand_name: String,
    pub default_timeout_secs: String,
    pub default_otp_length: String,
    pub allowed_country_codes: String,
    pub per_number_send_limit: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Flags {
    saved: Option<String>,
}

impl SettingsForm {
    fn from_settings(s: &AccountSettings) -> Self {
        let text = |v: Option<String>| v.unwrap_or_default();
        Self {
            brand_name: text(s.brand_name.clone()),
            default_timeout_secs: text(s.default_timeout_secs.map(|v| v.to_string())),
            default_otp_length: text(s.default_otp_length.map(|v| v.to_string())),
            allowed_country_codes: text(s.allowed_country_codes.as_ref().map(|codes| {
                codes
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })),
            per_number_send_limit: text(s.per_number_send_limit.map(|v| v.to_string())),
        }
    }

    /// The settings this form asks for, or every reason it cannot be
    /// taken. An empty field means "the server default".
    pub fn parse(&self, range: TimeoutRange) -> Result<AccountSettings, Vec<String>> {
        let mut errors = Vec::new();
        let brand = self.brand_name.trim();
        if brand.chars().count() > MAX_BRAND_CHARS {
            errors.push(format!(
                "The brand name may be at most {MAX_BRAND_CHARS} characters."
            ));
        }
        if brand.chars().any(char::is_control) {
            errors.push("The brand name may not hold line breaks or control characters.".into());
        }
        let timeout = match self.default_timeout_secs.trim() {
            "" => None,
            t => match range.parse(t) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(format!(
                        "Validity must be a whole number of seconds from {} to {}.",
                        range.min, range.max
                    ));
                    None
                }
            },
        };
        let length = match self.default_otp_length.trim() {
            "" => None,
            t => match OtpLength::parse(t) {
                Ok(v) => Some(v.get()),
                Err(_) => {
                    errors.push(format!(
                        "Code length must be {} to {} digits.",
                        OtpLength::MIN,
                        OtpLength::MAX
                    ));
                    None
                }
            },
        };
        let mut countries = Vec::new();
        for part in self
            .allowed_country_codes
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|p| p.trim().trim_start_matches('+'))
            .filter(|p| !p.is_empty())
        {
            match part.parse::<u16>() {
                Ok(cc) if part.len() <= 3 && is_known_country_code(cc) => countries.push(cc),
                _ => errors.push(format!(
                    "“{part}” is not a dialing code (write 91 for India, 44 for the UK)."
                )),
            }
        }
        countries.sort_unstable();
        countries.dedup();
        let limit = match self.per_number_send_limit.trim() {
            "" => None,
            t => match t.parse::<u32>() {
                Ok(v) if (1..=MAX_SEND_LIMIT).contains(&v) => Some(v),
                _ => {
                    errors.push(format!(
                        "The send limit must be a whole number from 1 to {MAX_SEND_LIMIT}."
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(AccountSettings {
            brand_name: Some(brand.to_owned()).filter(|b| !b.is_empty()),
            default_timeout_secs: timeout,
            default_otp_length: length,
            allowed_country_codes: Some(countries).filter(|c| !c.is_empty()),
            per_number_send_limit: limit,
        })
    }
}

fn defaults(console: &Console) -> Defaults {
    let s = &console.app.settings;
    Defaults {
        brand: s.message.brand_name.clone(),
        timeout: s.otp.default_timeout_secs,
        min_timeout: s.otp.min_timeout_secs,
        max_timeout: s.otp.max_timeout_secs,
        length: s.otp.default_length,
        send_limit: s.limits.per_number_max,
        window_minutes: s.limits.per_number_window_secs.div_ceil(60),
    }
}

pub async fn page(
    State(console): State<Console>,
    ctx: AccountCtx,
    Lenient(flags): Lenient<Flags>,
) -> Result<Response, PageError> {
    let webhook = webhook_view(&console, &ctx).await?;
    Ok(render(&SettingsPage {
        chrome: ctx.chrome(&console, "Settings", "settings"),
        form: SettingsForm::from_settings(&ctx.account.settings),
        errors: Vec::new(),
        saved: flags.saved.is_some(),
        defaults: defaults(&console),
        webhook,
    }))
}

pub async fn save(
    State(console): State<Console>,
    ctx: AccountCtx,
    Posted(form): Posted<SettingsForm>,
) -> Result<Response, PageError> {
    match form.parse(crate::service::timeout_range(&console.app)) {
        Ok(settings) => {
            console
                .app
                .store
                .account_set_settings(&ctx.account.customer_id, &settings)
                .await?;
            tracing::info!(customer = %ctx.account.customer_id, "console: account settings changed");
            Ok(Redirect::to("/console/settings?saved=1").into_response())
        }
        Err(errors) => Ok(render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            &SettingsPage {
                chrome: ctx.chrome(&console, "Settings", "settings"),
                form,
                errors,
                saved: false,
                defaults: defaults(&console),
                webhook: webhook_view(&console, &ctx).await?,
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: TimeoutRange = TimeoutRange { min: 20, max: 300 };

    fn form(
        brand: &str,
        timeout: &str,
        length: &str,
        countries: &str,
        limit: &str,
    ) -> SettingsForm {
        SettingsForm {
            brand_name: brand.into(),
            default_timeout_secs: timeout.into(),
            default_otp_length: length.into(),
            allowed_country_codes: countries.into(),
            per_number_send_limit: limit.into(),
        }
    }

    #[test]
    fn empty_fields_mean_server_defaults() {
        let s = form(" ", "", "", " , ", "").parse(RANGE).expect("valid");
        assert_eq!(s, AccountSettings::default());
    }

    #[test]
    fn values_are_parsed_sorted_and_deduplicated() {
        let s = form(" Acme ", "120", "6", "+91, 44 91", "3")
            .parse(RANGE)
            .expect("valid");
        assert_eq!(s.brand_name.as_deref(), Some("Acme"));
        assert_eq!(s.default_timeout_secs, Some(120));
        assert_eq!(s.default_otp_length, Some(6));
        assert_eq!(s.allowed_country_codes, Some(vec![44, 91]));
        assert_eq!(s.per_number_send_limit, Some(3));
        // And back to the form as it would be shown.
        assert_eq!(
            SettingsForm::from_settings(&s).allowed_country_codes,
            "44, 91"
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        let errors = form(&"x".repeat(81), "10", "9", "91, 999, abc", "0")
            .parse(RANGE)
            .expect_err("invalid");
        assert_eq!(errors.len(), 6, "{errors:?}");
        let errors = form("a\nb", "", "", "", "").parse(RANGE).expect_err("x");
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn markup_in_the_brand_is_kept_as_text() {
        // Escaping is the template's job; the value itself is allowed.
        let s = form("<b>Acme</b>", "", "", "", "")
            .parse(RANGE)
            .expect("ok");
        assert_eq!(s.brand_name.as_deref(), Some("<b>Acme</b>"));
    }
}
