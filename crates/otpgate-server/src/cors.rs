//! CORS for browser clients (contract "Conventions"): off unless
//! `http.cors_origins` names origins. Then tower-http's layer answers
//! preflights (`OPTIONS` with `Access-Control-Request-Method`) from those
//! origins and marks their responses readable. A preflight from any other
//! origin gets 403 in the envelope with no `Access-Control-*` header at all,
//! so the browser refuses the call; tower-http alone would still list the
//! allowed methods and headers to a stranger.
//!
//! Credentials are never allowed: the API authenticates by the `authToken`
//! header, not by cookies, so a page can call it only with a token it holds.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::HttpSettings;
use crate::error::ApiError;

/// Wraps `router` in the CORS layers `http` asks for (none by default).
pub fn layer(router: Router, http: &HttpSettings) -> Router {
    let origins: Vec<HeaderValue> = http
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return router;
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.clone()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            HeaderName::from_static("authtoken"),
            header::CONTENT_TYPE,
            header::ACCEPT,
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(http.cors_max_age_secs));
    let allowed = Arc::new(origins);
    // Layers run outside in: the gate sees a preflight before `cors` does.
    router
        .layer(cors)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let allowed = allowed.clone();
            async move { gate(&allowed, req, next).await }
        }))
}

/// Refuses preflights from origins not on the list.
async fn gate(allowed: &[HeaderValue], req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let known = req
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|o| allowed.contains(o));
        if !known {
            return ApiError::http(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "this origin may not call the API from a browser",
            )
            .into_response();
        }
    }
    next.run(req).await
}
