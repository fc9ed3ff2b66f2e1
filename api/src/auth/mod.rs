//! API-key authentication, compatible with the replaced system: HTTP basic auth whose *username* is the key
//! (the password is ignored). For the clients of InfluxDB's write APIs (issue 20) a key is also accepted as
//! `Authorization: Token KEY` (v2), `Authorization: Bearer KEY` (v3), as basic auth's password (v1 clients given
//! a username and the key as password), and on `/write` alone as the `p` or `u` query parameter (v1's own way).

pub mod file;

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};

use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
pub use file::Scope;

/// Who a request is: the key's name, what it may do, and which devices it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key1`, `key2`, … for `--api-key` keys; the key file's name otherwise.
    pub name: Arc<str>,
    scopes: [bool; 4],
    /// For a write key of the key file: the devices it may write (exact or `prefix*`); `None`: any.
    pub devices: Option<Arc<[String]>>,
}

impl Principal {
    /// A key with every scope and no device limit (`--api-key`).
    fn all(name: &str) -> Principal {
        Principal { name: name.into(), scopes: [true; 4], devices: None }
    }

    /// Whether the key may do what `scope` allows (`admin` may do everything).
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes[scope as usize] || self.scopes[Scope::Admin as usize]
    }

    /// The scopes, as written in the key file.
    pub fn scopes(&self) -> Vec<&'static str> {
        Scope::ALL.iter().filter(|s| self.scopes[**s as usize]).map(|s| s.as_str()).collect()
    }
}

/// The keys in force: `--api-key` keys (every scope) and the key file's (by the SHA-256 of their secrets).
#[derive(Debug, Default)]
struct KeySet {
    plain: Vec<(String, Principal)>,
    hashed: Vec<([u8; 32], Principal)>,
}

/// The configured API keys; none means authentication is off. Clones share the keys; the key file's part is
/// replaced whole when the file is reloaded ([`ApiKeys::reload`]).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    set: Arc<std::sync::RwLock<Arc<KeySet>>>,
    file: Option<Arc<std::path::Path>>,
}

impl ApiKeys {
    /// `--api-key` keys: each may do everything.
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut seen = HashSet::new();
        let plain: Vec<String> =
            keys.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty() && seen.insert(k.clone())).collect();
        let plain = plain.into_iter().enumerate().map(|(i, k)| (k, Principal::all(&format!("key{}", i + 1)))).collect();
        ApiKeys { set: Arc::new(std::sync::RwLock::new(Arc::new(KeySet { plain, hashed: Vec::new() }))), file: None }
    }

    /// The same, with the named keys of the key file at `path` (`--api-keys-file`), read now.
    pub fn with_file(self, path: &std::path::Path) -> Result<Self, file::KeyFileError> {
        let keys = ApiKeys { file: Some(path.into()), ..self };
        keys.reload()?;
        Ok(keys)
    }

    /// Reads the key file again; its keys replace the file's earlier ones at once (a revoked key is refused from
    /// the next request on). On an error the keys in force stay.
    pub fn reload(&self) -> Result<(), file::KeyFileError> {
        let Some(path) = &self.file else { return Ok(()) };
        let loaded = file::KeyFile::load(path)?;
        let hashed = loaded
            .keys
            .iter()
            .filter_map(|k| {
                let hash = hex32(&k.sha256)?;
                let mut scopes = [false; 4];
                k.scopes.iter().for_each(|s| scopes[*s as usize] = true);
                let devices = k.devices.as_ref().map(|d| d.clone().into());
                Some((hash, Principal { name: k.name.as_str().into(), scopes, devices }))
            })
            .collect();
        let mut set = self.set.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *set = Arc::new(KeySet { plain: set.plain.clone(), hashed });
        Ok(())
    }

    /// The key file, when there is one.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The `--api-key` keys, in the order given (the PostgreSQL protocol names them `key1`, `key2`, …).
    pub fn list(&self) -> Vec<String> {
        self.current().plain.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Whether any key is configured (a key file counts, even an empty one: it may get keys later).
    pub fn enabled(&self) -> bool {
        self.file.is_some() || !self.current().plain.is_empty()
    }

    /// Who `secret` is, compared in constant time with every key; `None` for no key.
    pub fn authenticate(&self, secret: &str) -> Option<Principal> {
        let secret = secret.trim();
        let set = self.current();
        let mut found = None;
        for (key, principal) in &set.plain {
            if file::constant_time_eq(key.as_bytes(), secret.as_bytes()) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        if !set.hashed.is_empty() {
            let hash = file::sha256(secret);
            for (key, principal) in &set.hashed {
                if file::constant_time_eq(key, &hash) && found.is_none() {
                    found = Some(principal.clone());
                }
            }
        }
        found
    }

    /// Whether `key` is accepted for `scope` (anything when authentication is off).
    pub fn accepts(&self, key: &str, scope: Scope) -> bool {
        !self.enabled() || self.authenticate(key).is_some_and(|p| p.may(scope))
    }

    /// Whether headers (or gRPC metadata as headers) carry a key accepted for `scope`: `authorization: Bearer KEY`
    /// / `Token KEY`, basic auth with the key as user name or password, or `x-api-key: KEY`.
    pub fn authorizes(&self, headers: &HeaderMap, scope: Scope) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut keys = header_keys(headers);
        keys.extend(headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
        keys.iter().any(|k| self.accepts(k, scope))
    }

    /// Checks the request's credentials for `scope`; `Err` is the response to send (401 without a valid key, 403
    /// for a key without the scope).
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<Principal>, Response> {
        if !self.enabled() {
            return Ok(None);
        }
        // A script (the dashboard) that says so gets no `WWW-Authenticate`: browsers would open their login dialog.
        let challenge = !headers.contains_key("x-requested-with");
        self.check_candidates(&header_keys(headers), scope, challenge)
    }

    /// [`Self::check`], plus InfluxDB 1.x's `u`/`p` query parameters on `/write`.
    pub fn check_request(&self, request: &Request, scope: Scope) -> Result<Option<Principal>, Response> {
        if !self.enabled() {
            return Ok(None);
        }
        let headers = request.headers();
        let challenge = !headers.contains_key("x-requested-with");
        let mut keys = header_keys(headers);
        if request.uri().path() == "/write" {
            keys.extend(query_keys(request.uri().query().unwrap_or("")));
        }
        self.check_candidates(&keys, scope, challenge)
    }

    fn check_candidates(&self, keys: &[String], scope: Scope, challenge: bool) -> Result<Option<Principal>, Response> {
        if keys.is_empty() {
            return Err(unauthorized("no credentials provided", challenge));
        }
        let Some(principal) = keys.iter().find_map(|k| self.authenticate(k)) else {
            return Err(unauthorized("invalid api key", challenge));
        };
        if !principal.may(scope) {
            let message = format!(
                "the key {} may {}; this needs the {} scope",
                principal.name,
                principal.scopes().join(", "),
                scope.as_str()
            );
            return Err((StatusCode::FORBIDDEN, message).into_response());
        }
        Ok(Some(principal))
    }
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The scope a route needs: writing for the ingest endpoints, SQL for `/api/v1/sql`, reading for the rest.
pub fn scope_of_path(path: &str) -> Scope {
    match path {
        "/ingest" | "/write" | "/api/v2/write" | "/api/v3/write_lp" | "/api/v1/prom/write" | "/v1/metrics" => {
            Scope::Write
        }
        "/api/v1/sql" => Scope::Sql,
        _ => Scope::Read,
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
/// Middleware that refuses requests without a valid API key for their route's scope ([`scope_of_path`]); the
/// request carries its [`Principal`] on (an extension) for the handlers that look further (device limits).
pub async fn require_api_key(State(keys): State<ApiKeys>, mut request: Request, next: Next) -> Response {
    let scope = scope_of_path(request.uri().path());
    match keys.check_request(&request, scope) {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
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
        assert!(keys.check(&headers(Some(&basic("k1:anything"))), Scope::Write).is_ok());
        assert!(keys.check(&headers(Some(&basic("k1:"))), Scope::Write).is_ok());
        assert!(keys.check(&headers(Some(&basic("k2:x"))), Scope::Write).is_err());
        assert!(keys.check(&headers(Some(&basic("k1"))), Scope::Write).is_err(), "no colon: not basic auth");
        assert!(keys.check(&headers(Some("Bearer k2")), Scope::Write).is_err());
        assert!(keys.check(&headers(None), Scope::Write).is_err());
    }

    #[test]
    fn influxdb_clients_give_the_key_as_a_token_a_password_or_on_write_a_query_parameter() {
        let keys = ApiKeys::new(["k1".to_string()]);
        assert!(keys.check(&headers(Some("Token k1")), Scope::Write).is_ok());
        assert!(keys.check(&headers(Some("Bearer k1")), Scope::Write).is_ok());
        assert!(keys.check(&headers(Some(&basic("someone:k1"))), Scope::Write).is_ok());
        assert!(keys.check(&headers(Some("Token k2")), Scope::Write).is_err());
        let request = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        assert!(keys.check_request(&request("/write?db=x&u=me&p=k1"), Scope::Write).is_ok());
        assert!(keys.check_request(&request("/write?u=k1"), Scope::Write).is_ok());
        assert!(keys.check_request(&request("/write?p=k2"), Scope::Write).is_err());
        assert!(
            keys.check_request(&request("/api/v1/sql?p=k1"), Scope::Write).is_err(),
            "only /write reads keys from the query"
        );
    }

    #[test]
    fn no_keys_means_no_auth() {
        assert!(ApiKeys::new([]).check(&headers(None), Scope::Sql).is_ok());
    }

    /// Every scope against every key: a key may do what its scopes say (admin everything), a revoked key nothing
    /// from the next request on, and a wrong secret is 401 while a right one without the scope is 403.
    #[test]
    fn scopes_decide_and_a_revoked_key_is_refused_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let mut f = file::KeyFile::default();
        let secrets: Vec<(Scope, String)> = Scope::ALL
            .iter()
            .map(|&s| (s, f.add(&format!("only-{}", s.as_str()), [s].into(), None).unwrap()))
            .collect();
        f.save(&path).unwrap();
        let keys = ApiKeys::new(["plain".to_string()]).with_file(&path).unwrap();
        for (scope, secret) in &secrets {
            for wanted in Scope::ALL {
                let allowed = *scope == wanted || *scope == Scope::Admin;
                let result = keys.check(&headers(Some(&format!("Bearer {secret}"))), wanted);
                match result {
                    Ok(p) => assert!(allowed && p.unwrap().name.starts_with("only-")),
                    Err(r) => assert!(!allowed && r.status() == StatusCode::FORBIDDEN, "{scope:?} {wanted:?}"),
                }
            }
            assert!(keys.check(&headers(Some(&format!("Bearer {secret}x"))), *scope).unwrap_err().status() == 401);
        }
        assert_eq!(keys.check(&headers(Some("Bearer plain")), Scope::Admin).unwrap().unwrap().name.as_ref(), "key1");
        f.revoke("only-write");
        f.save(&path).unwrap();
        keys.reload().unwrap();
        let write = &secrets[0].1;
        assert_eq!(keys.check(&headers(Some(&format!("Bearer {write}"))), Scope::Write).unwrap_err().status(), 401);
        // A broken file leaves the keys in force.
        std::fs::write(&path, "not toml [").unwrap();
        assert!(keys.reload().is_err());
        assert!(keys.check(&headers(Some(&format!("Bearer {}", secrets[1].1))), Scope::Read).is_ok());
    }
}
