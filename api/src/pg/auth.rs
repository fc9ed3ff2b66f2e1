//! Who may connect: with API keys configured, the password is a key, checked by SCRAM-SHA-256 (the key never
//! crosses the wire); without keys, anyone (as over HTTP).
//!
//! With TLS on (`--tls-cert`), a connection must be TLS (`sslmode=require` or stricter; a plain one is refused
//! with SQLSTATE 28000) and the password is sent as it is, inside TLS (PostgreSQL's `password` method): every key
//! can log in then, the key file's too (its hashes cannot answer SCRAM, which needs the secret), whatever the user
//! name, and the key needs the `sql` scope.
//!
//! SCRAM proves knowledge of one password, so the server must know which key a login claims. With one key that is
//! the key, whatever the user name. With several (`--api-key a --api-key b`), the user name says which: `key1`,
//! `key2`, … in the order given (named keys come with the key file of issue 23). An unknown user name or a wrong
//! key is refused with SQLSTATE 28P01.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::{ClientInfo, ConnectionManager};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::auth::{ApiKeys, Refusal, Scope};

/// SCRAM's iteration count: PostgreSQL's default.
const ITERATIONS: usize = 4096;

/// The startup phase: SCRAM when keys are configured, none otherwise; over TLS, the key as a password.
pub enum Startup {
    Open(OpenStartup),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
    Tls(Box<TlsStartup>),
}

impl Startup {
    pub fn new(keys: &ApiKeys, manager: Arc<ConnectionManager>, tls: bool) -> Startup {
        if tls {
            let accepted = AcceptedKey::default();
            let inner = CleartextPasswordAuthStartupHandler::new(accepted.clone(), server_parameters())
                .with_connection_manager(manager.clone());
            let open = (!keys.enabled()).then_some(OpenStartup { manager });
            return Startup::Tls(Box::new(TlsStartup { keys: keys.clone(), accepted, inner, open }));
        }
        let enabled = keys.enabled();
        let keys = keys.list();
        if !enabled {
            return Startup::Open(OpenStartup { manager });
        }
        // Keys of the key file cannot log in here (SCRAM needs the secret, the file keeps its hash): with only a key
        // file, SCRAM knows no key and refuses everyone — never open.
        let mut scram = ScramAuth::new(Arc::new(KeySource { keys }));
        scram.set_iterations(ITERATIONS);
        Startup::Scram(Box::new(
            SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                .with_scram(scram)
                .with_connection_manager(manager),
        ))
    }
}

/// What the server reports at startup: a read-only PostgreSQL 16.
fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = weir_sinks::sql::SERVER_VERSION.to_owned();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p.time_zone = "UTC".to_owned();
    p
}

/// No authentication (no keys configured).
pub struct OpenStartup {
    manager: Arc<ConnectionManager>,
}

impl NoopStartupHandler for OpenStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.manager.clone())
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(open) => open.on_startup(client, message).await,
            Startup::Scram(scram) => scram.on_startup(client, message).await,
            Startup::Tls(tls) => tls.on_startup(client, message).await,
        }
    }
}

/// The startup of a port with TLS: TLS required, then the key as a cleartext password (inside TLS), checked
/// against every key ([`ApiKeys::authenticate`]: constant time, the key file's hashes included) and its `sql`
/// scope. pgwire's cleartext handler finishes the login (cancel keys, parameters) once the key is known good.
pub struct TlsStartup {
    keys: ApiKeys,
    accepted: AcceptedKey,
    inner: CleartextPasswordAuthStartupHandler<AcceptedKey, DefaultServerParameterProvider>,
    /// No keys configured: TLS still required, no password asked.
    open: Option<OpenStartup>,
}

impl TlsStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !client.is_secure() {
            return Err(fatal(
                "28000",
                "this server takes only TLS connections (--tls-cert is set): connect with sslmode=require, verify-ca \
                 or verify-full"
                    .to_owned(),
            ));
        }
        if let Some(open) = &self.open {
            return open.on_startup(client, message).await;
        }
        if let PgWireFrontendMessage::PasswordMessageFamily(password) = message {
            let password = password.into_password()?;
            let user = LoginInfo::from_client_info(client).user().unwrap_or("").to_owned();
            // The rule of every port; the place among the key's concurrent requests is not held for a session.
            match self.keys.admit(std::slice::from_ref(&password.password), Scope::Sql) {
                Ok(_) => {}
                Err(Refusal::UnknownKey) => {
                    return Err(fatal(
                        "28P01",
                        format!("password authentication failed for user {user:?}: not an API key"),
                    ));
                }
                Err(refusal) => return Err(fatal("28000", refusal.to_string())),
            }
            *self.accepted.password.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(password.password.clone());
            let message = PgWireFrontendMessage::PasswordMessageFamily(
                pgwire::messages::startup::PasswordMessageFamily::Password(password),
            );
            return self.inner.on_startup(client, message).await;
        }
        self.inner.on_startup(client, message).await
    }
}

/// The password already checked against the keys, for pgwire's cleartext handler to compare with (equal by
/// construction): the check itself is [`TlsStartup`]'s.
#[derive(Debug, Default, Clone)]
struct AcceptedKey {
    password: Arc<std::sync::Mutex<Option<String>>>,
}

#[async_trait]
impl AuthSource for AcceptedKey {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        let password = self.password.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(Password::new(None, password.unwrap_or_default().into_bytes()))
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), code.to_owned(), message)))
}

/// The keys, as SCRAM passwords.
#[derive(Debug)]
struct KeySource {
    keys: Vec<String>,
}

impl KeySource {
    /// The key a login claims: the only one, or `keyN` among several.
    fn key_for(&self, user: Option<&str>) -> Option<&str> {
        if let [only] = self.keys.as_slice() {
            return Some(only);
        }
        let n: usize = user?.strip_prefix("key")?.parse().ok()?;
        self.keys.get(n.checked_sub(1)?).map(String::as_str)
    }
}

#[async_trait]
impl AuthSource for KeySource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let Some(key) = self.key_for(login.user()) else {
            crate::auth::failed(&Refusal::UnknownKey);
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                "28P01".to_owned(),
                format!(
                    "no API key for user {:?}: with several --api-key, connect as key1, key2, … (their order) and give \
                     that key as the password",
                    login.user().unwrap_or("")
                ),
            ))));
        };
        let salt: [u8; 16] = std::array::from_fn(|_| rand_byte());
        Ok(Password::new(Some(salt.to_vec()), gen_salted_password(key, &salt, ITERATIONS)))
    }
}

/// A random byte for salts (from the OS's hasher seeds: no extra dependency for 16 bytes a login).
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_whatever_the_user_several_by_position() {
        let one = KeySource { keys: vec!["k".into()] };
        assert_eq!(one.key_for(Some("grafana")), Some("k"));
        assert_eq!(one.key_for(None), Some("k"));
        let two = KeySource { keys: vec!["a".into(), "b".into()] };
        assert_eq!(two.key_for(Some("key1")), Some("a"));
        assert_eq!(two.key_for(Some("key2")), Some("b"));
        assert_eq!(two.key_for(Some("key3")), None);
        assert_eq!(two.key_for(Some("key0")), None);
        assert_eq!(two.key_for(Some("weir")), None);
    }
}
