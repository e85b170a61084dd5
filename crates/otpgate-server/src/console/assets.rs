//! The console's static files, compiled into the binary: the vendored htmx
//! (see `tools/console-assets`), the stylesheet and the small script for
//! copy buttons. URLs carry a hash of the contents, so browsers may cache
//! them for long and still see a new build at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::PageError;

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for part in [HTMX, CSS, JS] {
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..6])
});

/// The `?v=` every asset URL carries.
pub fn version() -> &'static str {
    VERSION.as_str()
}

pub async fn serve(Path(name): Path<String>) -> Result<Response, PageError> {
    let (body, kind) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return Err(PageError::NotFound),
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response())
}
