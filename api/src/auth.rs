//! API-key authentication, compatible with the replaced system: HTTP basic auth whose *username* is the key
//! (the password is ignored).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// The configured API keys; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Arc<HashSet<String>>);

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        ApiKeys(Arc::new(keys.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect()))
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `key` is accepted (any key when authentication is off).
    pub fn accepts(&self, key: &str) -> bool {
        !self.enabled() || self.0.contains(key.trim())
    }

    /// Checks the request's credentials; `Err` is the response to send.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        if !self.enabled() {
            return Ok(());
        }
        // A script (the dashboard) that says so gets no `WWW-Authenticate`: browsers would open their login dialog.
        let challenge = !headers.contains_key("x-requested-with");
        match basic_auth_username(headers) {
            None => Err(unauthorized("no credentials provided", challenge)),
            Some(key) if self.0.contains(&key) => Ok(()),
            Some(_) => Err(unauthorized("invalid api key", challenge)),
        }
    }
}

/// The username of an `Authorization: Basic` header, as Go's `Request.BasicAuth` reads it: base64 of
/// `user:password`, with the colon required.
pub(crate) fn basic_auth_username(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _password) = text.split_once(':')?;
    Some(user.to_owned())
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
    match keys.check(request.headers()) {
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
        assert!(keys.check(&headers(Some("Bearer k1"))).is_err());
        assert!(keys.check(&headers(None)).is_err());
    }

    #[test]
    fn no_keys_means_no_auth() {
        assert!(ApiKeys::new([]).check(&headers(None)).is_ok());
    }
}
