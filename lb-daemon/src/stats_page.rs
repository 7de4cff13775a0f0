//! The live stats page (`/stats` on the metrics listener): one self-contained HTML
//! document, in the spirit of HAProxy's stats page, that polls `/stats.json` every
//! second and computes rates from successive samples. No external assets: the content
//! security policy allows nothing but the page itself and requests to its own origin.

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Redirect},
    routing::get,
};

/// The page (HTML, CSS and JavaScript in one file).
pub const PAGE: &str = include_str!("../assets/stats.html");

const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src data:";

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
}

/// `/stats` and `/` (a redirect to it).
pub fn router() -> Router {
    Router::new()
        .route("/stats", get(page))
        .route("/", get(|| async { Redirect::to("/stats") }))
}
