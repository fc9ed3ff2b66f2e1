//! The built-in dashboard: one page, one script, one style sheet, embedded in the binary (no CDN, no separate web
//! server; works offline). It reads the same public API a user would (`/api/v1/…`, `/metrics`, the SSE feed), so
//! it needs no routes of its own beyond these three files; they are served without an API key so that the page can
//! ask for one.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../dashboard/index.html");
const SCRIPT: &str = include_str!("../../dashboard/app.js");
const STYLE: &str = include_str!("../../dashboard/style.css");

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX)
}

/// `GET /dashboard/app.js`.
pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SCRIPT)
}

/// `GET /dashboard/style.css`.
pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLE)
}
