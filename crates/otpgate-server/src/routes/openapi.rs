//! `/openapi.json`: the OpenAPI 3.1 description of every public endpoint.
//! It is a file in the repository (`crates/otpgate-server/openapi.json`),
//! embedded at build time, rather than built in code: a reviewer reads and
//! diffs it as the document clients get, tools can use it without running
//! the server, and the API tests hold it to the truth — every real response
//! they make is validated against its schemas, and schemathesis fuzzes the
//! live server from it.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use otpgate_api::paths;

use crate::state::AppState;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub fn router() -> Router<AppState> {
    Router::new().route(paths::OPENAPI, get(openapi))
}

async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT,
    )
        .into_response()
}
