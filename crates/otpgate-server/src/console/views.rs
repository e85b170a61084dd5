//! What every page shares: the frame (title, navigation, who is logged in,
//! the log-out form) and the error page.

use askama::Template;

/// The frame around every page (`templates/console/base.html`).
pub struct Chrome {
    pub title: String,
    /// Which navigation entry is the current page.
    pub active: &'static str,
    /// Who is logged in (e-mail, else customerId); empty when nobody is.
    pub who: String,
    /// This session's CSRF token, for the log-out form.
    pub csrf: String,
    pub account_nav: bool,
    pub operator_nav: bool,
    /// Whether to show the sandbox inbox in the navigation.
    pub inbox: bool,
    /// Asset version for cache-busting URLs.
    pub v: &'static str,
}

impl Chrome {
    /// A frame without navigation: log-in, sign-up, errors.
    pub fn bare(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            active: "",
            who: String::new(),
            csrf: String::new(),
            account_nav: false,
            operator_nav: false,
            inbox: false,
            v: super::assets::version(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub text: &'static str,
}
