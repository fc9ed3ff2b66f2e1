//! API-key authentication, compatible with the replaced system: HTTP basic auth whose *username* is the key
//! (the password is ignored). For the clients of InfluxDB's write APIs (issue 20) a key is also accepted as
//! `Authorization: Token KEY` (v2), `Authorization: Bearer KEY` (v3), as basic auth's password (v1 clients given
//! a username and the key as password), and on `/write` alone as the `p` or `u` query parameter (v1's own way).

pub mod file;
pub mod limits;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};

use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
pub use file::Scope;
pub use limits::{KeyLimiter, KeyLimits, LimitExceeded};
use tokio::sync::OwnedSemaphorePermit;

/// Who a request is: the key's name, what it may do, and which devices it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key1`, `key2`, … for `--api-key` keys; the key file's name otherwise.
    pub name: Arc<str>,
    scopes: [bool; 4],
    /// For a write key of the key file: the devices it may write (exact or `prefix*`); `None`: any.
    pub devices: Option<Arc<[String]>>,
    /// The key's rate and concurrency limits; `None`: unlimited.
    pub limiter: Option<Arc<KeyLimiter>>,
}

impl Principal {
    /// A key with every scope and no device limit (`--api-key`).
    fn all(name: &str) -> Principal {
        Principal { name: name.into(), scopes: [true; 4], devices: None, limiter: None }
    }

    /// Takes `readings` from the key's rate (Ok when it has none).
    pub fn take(&self, readings: u64) -> Result<(), LimitExceeded> {
        self.limiter.as_ref().map_or(Ok(()), |l| l.take(readings))
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
    /// Limits of keys that have none of their own.
    defaults: KeyLimits,
}

/// Why a request's credentials are refused; each transport turns it into its own answer (401/403/429,
/// UNAUTHENTICATED/PERMISSION_DENIED/RESOURCE_EXHAUSTED, SQLSTATE 28P01/28000).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credentials provided")]
    NoCredentials,
    #[error("invalid api key")]
    UnknownKey,
    #[error("the key {key} may {has}; this needs the {scope} scope", scope = .needs.as_str())]
    MissingScope { key: Arc<str>, has: String, needs: Scope },
    #[error("key {key}: {limit}")]
    Limited { key: Arc<str>, limit: LimitExceeded },
}

impl Refusal {
    /// The key's name for logs and metrics (`none` without credentials, `unknown` for a secret of no key).
    pub fn key(&self) -> &str {
        match self {
            Refusal::NoCredentials => "none",
            Refusal::UnknownKey => "unknown",
            Refusal::MissingScope { key, .. } | Refusal::Limited { key, .. } => key,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::UnknownKey => "unknown_key",
            Refusal::MissingScope { .. } => "missing_scope",
            Refusal::Limited { limit: LimitExceeded::Rate { .. }, .. } => "rate",
            Refusal::Limited { limit: LimitExceeded::Concurrency { .. }, .. } => "concurrency",
        }
    }

    /// The HTTP answer: 401 (with a basic-auth challenge unless `challenge` is false), 403, or 429 with
    /// `Retry-After`.
    pub fn into_response(self, challenge: bool) -> Response {
        match &self {
            Refusal::NoCredentials | Refusal::UnknownKey => {
                let mut response = (StatusCode::UNAUTHORIZED, self.to_string()).into_response();
                if challenge {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"weir\""));
                }
                response
            }
            Refusal::MissingScope { .. } => (StatusCode::FORBIDDEN, self.to_string()).into_response(),
            Refusal::Limited { limit, .. } => {
                let seconds = retry_after_seconds(limit);
                let mut response = (StatusCode::TOO_MANY_REQUESTS, self.to_string()).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
                response
            }
        }
    }

    /// The gRPC answer.
    pub fn into_status(self) -> tonic::Status {
        match &self {
            Refusal::NoCredentials => tonic::Status::unauthenticated(format!(
                "{self}: send `authorization: Bearer KEY`, basic auth with the key, or `x-api-key: KEY`"
            )),
            Refusal::UnknownKey => tonic::Status::unauthenticated(self.to_string()),
            Refusal::MissingScope { .. } => tonic::Status::permission_denied(self.to_string()),
            Refusal::Limited { limit, .. } => {
                let mut status = tonic::Status::resource_exhausted(self.to_string());
                let seconds = retry_after_seconds(limit);
                if let Ok(value) = seconds.to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                status
            }
        }
    }
}

/// `Retry-After`'s seconds for a limit, as every service error says them.
fn retry_after_seconds(limit: &LimitExceeded) -> u64 {
    crate::node::error::ServiceError::from(limit.clone()).retry_after_seconds().unwrap_or(1)
}

/// A request let in: who it is, and its place among the key's concurrent requests (given back when dropped).
#[derive(Debug)]
pub struct Admitted {
    pub principal: Principal,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Counts a refusal in `weir_auth_failures_total{key, reason}` — the key's name, never its secret — and logs it,
/// at most once a second (a client hammering with a wrong key cannot flood the log).
pub fn failed(refusal: &Refusal) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOGGED_SECOND: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("weir_auth_failures_total", "key" => refusal.key().to_owned(), "reason" => refusal.reason())
        .increment(1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_LOGGED_SECOND.load(Ordering::Relaxed);
    if now > last && LAST_LOGGED_SECOND.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(key = refusal.key(), reason = refusal.reason(), unlogged, "request refused: {refusal}");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

impl ApiKeys {
    /// `--api-key` keys: each may do everything.
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut seen = HashSet::new();
        let plain: Vec<String> =
            keys.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty() && seen.insert(k.clone())).collect();
        let plain = plain.into_iter().enumerate().map(|(i, k)| (k, Principal::all(&format!("key{}", i + 1)))).collect();
        let set = KeySet { plain, hashed: Vec::new() };
        ApiKeys { set: Arc::new(std::sync::RwLock::new(Arc::new(set))), file: None, defaults: KeyLimits::default() }
    }

    /// Limits every key has that sets none of its own (`--key-readings-per-second`, `--key-concurrent-requests`).
    pub fn with_default_limits(self, defaults: KeyLimits) -> Self {
        {
            let mut set = self.set.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut plain = set.plain.clone();
            for (_, principal) in &mut plain {
                principal.limiter = KeyLimiter::new(defaults);
            }
            *set = Arc::new(KeySet { plain, hashed: set.hashed.clone() });
        }
        ApiKeys { defaults, ..self }
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
        let mut set = self.set.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A key whose limits did not change keeps its limiter (its requests in flight, its rate's debt).
        let kept: HashMap<Arc<str>, Arc<KeyLimiter>> =
            set.hashed.iter().filter_map(|(_, p)| Some((p.name.clone(), p.limiter.clone()?))).collect();
        let hashed = loaded
            .keys
            .iter()
            .filter_map(|k| {
                let hash = hex32(&k.sha256)?;
                let mut scopes = [false; 4];
                k.scopes.iter().for_each(|s| scopes[*s as usize] = true);
                let devices = k.devices.as_ref().map(|d| d.clone().into());
                let name: Arc<str> = k.name.as_str().into();
                let limits = k.limits().or(self.defaults);
                let limiter = match kept.get(&name) {
                    Some(l) if l.limits() == limits => Some(l.clone()),
                    _ => KeyLimiter::new(limits),
                };
                Some((hash, Principal { name, scopes, devices, limiter }))
            })
            .collect();
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

    /// The one rule of every port: the first offered secret that is a key, if it has `scope` and a free place
    /// among its concurrent requests, is let in; otherwise the refusal, counted and logged ([`failed`]). `Ok(None)`
    /// when authentication is off.
    pub fn admit(&self, offered: &[String], scope: Scope) -> Result<Option<Admitted>, Refusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let result = self.admit_checked(offered, scope);
        if let Err(refusal) = &result {
            failed(refusal);
        }
        result.map(Some)
    }

    fn admit_checked(&self, offered: &[String], scope: Scope) -> Result<Admitted, Refusal> {
        if offered.is_empty() {
            return Err(Refusal::NoCredentials);
        }
        let principal = offered.iter().find_map(|k| self.authenticate(k)).ok_or(Refusal::UnknownKey)?;
        if !principal.may(scope) {
            return Err(Refusal::MissingScope {
                key: principal.name.clone(),
                has: principal.scopes().join(", "),
                needs: scope,
            });
        }
        let slot = match &principal.limiter {
            None => None,
            Some(limiter) => {
                limiter.enter().map_err(|limit| Refusal::Limited { key: principal.name.clone(), limit })?
            }
        };
        Ok(Admitted { principal, _slot: slot })
    }

    /// [`Self::admit`] for HTTP headers or gRPC metadata (as headers).
    pub fn admit_headers(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<Admitted>, Refusal> {
        self.admit(&offered_keys(headers), scope)
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

/// The keys a request offers, on every port: `authorization: Bearer KEY` / `Token KEY`, basic auth's user name and
/// password, and `x-api-key: KEY`.
pub fn offered_keys(headers: &HeaderMap) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, credential)) = value.split_once(' ')
    {
        if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
            keys.push(credential.trim().to_owned());
        } else if let Some((user, password)) = basic_auth(headers) {
            keys.extend([user, password]);
        }
    }
    keys.extend(headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
    keys
}

/// The keys an HTTP request offers: [`offered_keys`], plus InfluxDB 1.x's `u`/`p` query parameters on `/write`.
fn offered_by(request: &Request) -> Vec<String> {
    let mut offered = offered_keys(request.headers());
    if request.uri().path() == "/write" {
        offered.extend(query_keys(request.uri().query().unwrap_or("")));
    }
    offered
}

/// InfluxDB 1.x's `p` (password) and `u` (user) query parameters.
fn query_keys(query: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "p" || k == "u")
        .map(|(_, v)| v.into_owned())
        .collect()
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

/// Middleware that refuses requests without a valid API key for their route's scope ([`scope_of_path`]) or over
/// their key's concurrency; the request carries its [`Principal`] on (an extension) for the handlers that look
/// further (device limits, rate), and holds its place among the key's requests until its answer is made.
pub async fn require_api_key(State(keys): State<ApiKeys>, mut request: Request, next: Next) -> Response {
    let scope = scope_of_path(request.uri().path());
    let offered = offered_by(&request);
    // A script (the dashboard) that says so gets no `WWW-Authenticate`: browsers would open their login dialog.
    let challenge = !request.headers().contains_key("x-requested-with");
    match keys.admit(&offered, scope) {
        Ok(admitted) => {
            if let Some(a) = &admitted {
                request.extensions_mut().insert(a.principal.clone());
            }
            let response = next.run(request).await;
            drop(admitted);
            response
        }
        Err(refusal) => refusal.into_response(challenge),
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

    fn check(keys: &ApiKeys, headers: &HeaderMap, scope: Scope) -> Result<Option<Principal>, Response> {
        keys.admit_headers(headers, scope).map(|a| a.map(|a| a.principal)).map_err(|r| r.into_response(true))
    }

    fn basic(s: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s))
    }

    #[test]
    fn the_username_is_the_key() {
        let keys = ApiKeys::new(["k1".to_string()]);
        assert!(check(&keys, &headers(Some(&basic("k1:anything"))), Scope::Write).is_ok());
        assert!(check(&keys, &headers(Some(&basic("k1:"))), Scope::Write).is_ok());
        assert!(check(&keys, &headers(Some(&basic("k2:x"))), Scope::Write).is_err());
        assert!(check(&keys, &headers(Some(&basic("k1"))), Scope::Write).is_err(), "no colon: not basic auth");
        assert!(check(&keys, &headers(Some("Bearer k2")), Scope::Write).is_err());
        assert!(check(&keys, &headers(None), Scope::Write).is_err());
    }

    #[test]
    fn influxdb_clients_give_the_key_as_a_token_a_password_or_on_write_a_query_parameter() {
        let keys = ApiKeys::new(["k1".to_string()]);
        assert!(check(&keys, &headers(Some("Token k1")), Scope::Write).is_ok());
        assert!(check(&keys, &headers(Some("Bearer k1")), Scope::Write).is_ok());
        assert!(check(&keys, &headers(Some(&basic("someone:k1"))), Scope::Write).is_ok());
        assert!(check(&keys, &headers(Some("Token k2")), Scope::Write).is_err());
        let request = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        assert!(keys.admit(&offered_by(&request("/write?db=x&u=me&p=k1")), Scope::Write).is_ok());
        assert!(keys.admit(&offered_by(&request("/write?u=k1")), Scope::Write).is_ok());
        assert!(keys.admit(&offered_by(&request("/write?p=k2")), Scope::Write).is_err());
        assert!(
            keys.admit(&offered_by(&request("/api/v1/sql?p=k1")), Scope::Write).is_err(),
            "only /write reads keys from the query"
        );
    }

    #[test]
    fn no_keys_means_no_auth() {
        assert!(check(&ApiKeys::new([]), &headers(None), Scope::Sql).is_ok());
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
                let result = check(&keys, &headers(Some(&format!("Bearer {secret}"))), wanted);
                match result {
                    Ok(p) => assert!(allowed && p.unwrap().name.starts_with("only-")),
                    Err(r) => assert!(!allowed && r.status() == StatusCode::FORBIDDEN, "{scope:?} {wanted:?}"),
                }
            }
            assert!(check(&keys, &headers(Some(&format!("Bearer {secret}x"))), *scope).unwrap_err().status() == 401);
        }
        assert_eq!(check(&keys, &headers(Some("Bearer plain")), Scope::Admin).unwrap().unwrap().name.as_ref(), "key1");
        f.revoke("only-write");
        f.save(&path).unwrap();
        keys.reload().unwrap();
        let write = &secrets[0].1;
        assert_eq!(check(&keys, &headers(Some(&format!("Bearer {write}"))), Scope::Write).unwrap_err().status(), 401);
        // A broken file leaves the keys in force.
        std::fs::write(&path, "not toml [").unwrap();
        assert!(keys.reload().is_err());
        assert!(check(&keys, &headers(Some(&format!("Bearer {}", secrets[1].1))), Scope::Read).is_ok());
    }

    /// A key's limits come from the file or the defaults; over its concurrency a request is 429 with Retry-After,
    /// and a reload that keeps the limits keeps the requests in flight counted.
    #[test]
    fn limits_come_from_the_file_or_the_defaults_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let mut f = file::KeyFile::default();
        let own = f.add("own", [Scope::Write].into(), None).unwrap();
        f.keys[0].concurrent_requests = Some(1);
        let defaulted = f.add("defaulted", [Scope::Write].into(), None).unwrap();
        f.save(&path).unwrap();
        let defaults = KeyLimits { readings_per_second: Some(10), concurrent_requests: Some(2) };
        let keys = ApiKeys::new(["plain".to_string()]).with_default_limits(defaults).with_file(&path).unwrap();
        let admit = |secret: &str| keys.admit(&[secret.to_owned()], Scope::Write);
        let first = admit(&own).unwrap().unwrap();
        let refusal = admit(&own).unwrap_err();
        assert!(matches!(refusal, Refusal::Limited { limit: LimitExceeded::Concurrency { limit: 1 }, .. }));
        let response = refusal.into_response(true);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        keys.reload().unwrap();
        assert!(admit(&own).is_err(), "the reload kept the request in flight counted");
        drop(first);
        assert!(admit(&own).is_ok());
        let (_a, _b) = (admit(&defaulted).unwrap(), admit(&defaulted).unwrap());
        assert!(admit(&defaulted).is_err(), "the default concurrency, 2");
        let plain = admit("plain").unwrap().unwrap().principal;
        assert!(plain.take(10).is_ok() && plain.take(1).is_ok(), "one second's burst, then one into debt");
        assert!(matches!(plain.take(1), Err(LimitExceeded::Rate { limit: 10, .. })));
    }
}
