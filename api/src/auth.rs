//! API-key authentication, compatible with the replaced system: HTTP basic auth whose *username* is the key
//! (the password is ignored). For the clients of InfluxDB's write APIs (issue 20) a key is also accepted as
//! `Authorization: Token KEY` (v2), `Authorization: Bearer KEY` (v3), as basic auth's password (v1 clients given
//! a username and the key as password), and on `/write` alone as the `p` or `u` query parameter (v1's own way).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// The configured API keys; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Arc<Vec<String>>);

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut seen = HashSet::new();
        ApiKeys(Arc::new(
            keys.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty() && seen.insert(k.clone())).collect(),
        ))
    }

    /// The keys, in the order given (the PostgreSQL protocol names them `key1`, `key2`, …).
    pub fn list(&self) -> Vec<String> {
        self.0.to_vec()
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `key` is accepted (any key when authentication is off).
    pub fn accepts(&self, key: &str) -> bool {
        !self.enabled() || self.0.iter().any(|k| k == key.trim())
    }

    /// Whether headers (or gRPC metadata as headers) carry an accepted key: `authorization: Bearer KEY` / `Token
    /// KEY`, basic auth with the key as user name or password, or `x-api-key: KEY` (always, without keys).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut keys = header_keys(headers);
        keys.extend(headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
        keys.iter().any(|k| self.accepts(k))
    }

    /// Checks the request's credentials; `Err` is the response to send.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        if !self.enabled() {
            return Ok(());
        }
        // A script (the dashboard) that says so gets no `WWW-Authenticate`: browsers would open their login dialog.
        let challenge = !headers.contains_key("x-requested-with");
        self.check_candidates(&header_keys(headers), challenge)
    }

    /// [`Self::check`], plus InfluxDB 1.x's `u`/`p` query parameters on `/write`.
    pub fn check_request(&self, request: &Request) -> Result<(), Response> {
        if !self.enabled() {
            return Ok(());
        }
        let headers = request.headers();
        let challenge = !headers.contains_key("x-requested-with");
        let mut keys = header_keys(headers);
        if request.uri().path() == "/write" {
            keys.extend(query_keys(request.uri().query().unwrap_or("")));
        }
        self.check_candidates(&keys, challenge)
    }

    fn check_candidates(&self, keys: &[String], challenge: bool) -> Result<(), Response> {
        if keys.is_empty() {
            Err(unauthorized("no credentials provided", challenge))
        } else if keys.iter().any(|k| self.0.contains(k)) {
            Ok(())
        } else {
            Err(unauthorized("invalid api key", challenge))
        }
    }
}

/// The keys a request's `Authorization` header offers: basic auth's username and password, or a `Token`/`Bearer`.
fn header_keys(headers: &HeaderMap) -> Vec<String> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return Vec::new() };
    let Some((scheme, credential)) = value.split_once(' ') else { return Vec::new() };
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        return vec![credential.trim().to_owned()];
    }
    match basic_auth(headers) {
        Some((user, password)) => vec![user, password],
        None => Vec::new(),
    }
}

/// InfluxDB 1.x's `p` (password) and `u` (user) query parameters.
fn query_keys(query: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "p" || k == "u")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The username of an `Authorization: Basic` header, as Go's `Request.BasicAuth` reads it: base64 of
/// `user:password`, with the colon required.
pub(crate) fn basic_auth_username(headers: &HeaderMap) -> Option<String> {
    basic_auth(headers).map(|(user, _)| user)
}

/// The username and password of an `Authorization: Basic` header.
pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized(message: &'static str, challenge: bool) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, message).into_response();
    if challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"weir\""));
    }
    response
}

/// Middleware that refuses requests without a valid API key.
pub async fn require_api_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    match keys.check_request(&request) {
        Ok(()) => next.run(request).await,
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    fn basic(s: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s))
    }

    #[test]
    fn the_username_is_the_key() {
        let keys = ApiKeys::new(["k1".to_string()]);
        assert!(keys.check(&headers(Some(&basic("k1:anything")))).is_ok());
        assert!(keys.check(&headers(Some(&basic("k1:")))).is_ok());
        assert!(keys.check(&headers(Some(&basic("k2:x")))).is_err());
        assert!(keys.check(&headers(Some(&basic("k1")))).is_err(), "no colon: not basic auth");
        assert!(keys.check(&headers(Some("Bearer k2"))).is_err());
        assert!(keys.check(&headers(None)).is_err());
    }

    #[test]
    fn influxdb_clients_give_the_key_as_a_token_a_password_or_on_write_a_query_parameter() {
        let keys = ApiKeys::new(["k1".to_string()]);
        assert!(keys.check(&headers(Some("Token k1"))).is_ok());
        assert!(keys.check(&headers(Some("Bearer k1"))).is_ok());
        assert!(keys.check(&headers(Some(&basic("someone:k1")))).is_ok());
        assert!(keys.check(&headers(Some("Token k2"))).is_err());
        let request = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        assert!(keys.check_request(&request("/write?db=x&u=me&p=k1")).is_ok());
        assert!(keys.check_request(&request("/write?u=k1")).is_ok());
        assert!(keys.check_request(&request("/write?p=k2")).is_err());
        assert!(keys.check_request(&request("/api/v1/sql?p=k1")).is_err(), "only /write reads keys from the query");
    }

    #[test]
    fn no_keys_means_no_auth() {
        assert!(ApiKeys::new([]).check(&headers(None)).is_ok());
    }
}
