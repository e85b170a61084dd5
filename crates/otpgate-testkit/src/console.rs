//! A console user without a browser, for the server's console tests and the
//! binary's: a [`Visitor`] keeps its cookies by hand (as a browser would for
//! `Path=/console`), follows no redirect, and reads each answer as a
//! [`Page`], whose forms it can post with their CSRF token.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// A console page as a test sees it.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The first hidden `csrf` field's value.
    ///
    /// # Panics
    /// When the page has none.
    pub fn csrf(&self) -> String {
        let (_, rest) = self
            .body
            .split_once("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        rest.split('"').next().unwrap_or_default().to_owned()
    }

    /// The text of the element with this id (`id="…">TEXT<`).
    pub fn text_of(&self, id: &str) -> Option<String> {
        let (_, rest) = self.body.split_once(&format!("id=\"{id}\""))?;
        let (_, rest) = rest.split_once('>')?;
        rest.split_once('<').map(|(t, _)| t.trim().to_owned())
    }
}

/// A console user of the server at `base`; see the module documentation.
pub struct Visitor {
    http: reqwest::Client,
    base: String,
    pub cookies: BTreeMap<String, String>,
}

impl Visitor {
    /// A visitor without cookies. Each request gives up after 30 s, so a
    /// server that hangs fails the test rather than stalling it.
    ///
    /// # Panics
    /// When the HTTP client cannot be built.
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, r: reqwest::Response) -> Page {
        let status = r.status();
        let headers = r.headers().clone();
        for c in headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let body = r.text().await.expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    /// A GET of `path` with these extra headers.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("get");
        self.finish(r).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(fields)
            .send()
            .await
            .expect("post");
        self.finish(r).await
    }

    /// Posts the sign-up form (country IN, the password confirmed) with
    /// `csrf` as its token, whatever page that came from; the answer as it
    /// is.
    pub async fn post_sign_up(&mut self, csrf: &str, email: &str, password: &str) -> Page {
        let fields = [
            ("csrf", csrf),
            ("email", email),
            ("password", password),
            ("confirm", password),
            ("country", "IN"),
        ];
        self.post("/console/signup", &fields).await
    }

    /// Signs up through the form, with the token the form carries; the
    /// answer as it is.
    pub async fn try_sign_up(&mut self, email: &str, password: &str) -> Page {
        let csrf = self.get("/console/signup").await.csrf();
        self.post_sign_up(&csrf, email, password).await
    }

    /// Signs up through the form, which must be offered and must succeed;
    /// returns the welcome page and the new customerId.
    pub async fn sign_up(&mut self, email: &str, password: &str) -> (Page, String) {
        let form = self.get("/console/signup").await;
        assert_eq!(form.status, StatusCode::OK);
        let page = self.post_sign_up(&form.csrf(), email, password).await;
        assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
        let id = page
            .text_of("customer-id")
            .expect("customer-id on the welcome page");
        (page, id)
    }

    /// Logs in through the form; returns the answer (303 on success).
    pub async fn log_in(&mut self, login: &str, password: &str) -> Page {
        let csrf = self.get("/console/login").await.csrf();
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("login", login), ("password", password)],
        )
        .await
    }

    /// GETs a page and posts one of its forms with this session's token.
    pub async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page).await.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }
}
