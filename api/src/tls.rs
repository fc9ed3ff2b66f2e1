//! TLS on every port (`--tls-cert`, `--tls-key`, optionally `--tls-client-ca`): HTTP, gRPC (with Flight SQL) and
//! the PostgreSQL protocol are served by one certificate, with rustls and its modern defaults only — TLS 1.3 and
//! 1.2, forward-secret AEAD suites, no renegotiation, no compression.
//!
//! Why one [`Tls`] for all ports: a certificate is rotated once (SIGHUP reads the files again, [`Tls::reload`]) and
//! every port serves the new one from its next handshake, while connections already open keep the session they
//! have — nothing is dropped. A bad file on reload is an error in the log and the certificate in force stays.
//!
//! With `--tls-client-ca`, every port asks for a client certificate signed by one of those CAs and refuses a
//! connection without one (mTLS); the API key is still needed on top (the certificate says which machine, the
//! key what it may do).
//!
//! The ports' streams are [`MaybeTls`]: one type whether TLS is on or off, so each accept loop has one path.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

/// Where the certificate, its key and the client CAs are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key of that certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA certificates that sign the clients' certificates; `Some` makes client certificates required.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used; each says which flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read { flag: &'static str, path: PathBuf, source: io::Error },
    #[error("{flag} {} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block){hint}", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf, hint: &'static str },
    #[error(
        "--tls-key {} holds no PEM private key (PKCS#8 `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC \
         PRIVATE KEY`): {reason}",
        path.display()
    )]
    NoKey { path: PathBuf, reason: String },
    #[error("{flag} {}: a PEM block cannot be decoded: {reason}", path.display())]
    Pem { flag: &'static str, path: PathBuf, reason: String },
    #[error("--tls-client-ca {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error(
        "--tls-cert and --tls-key cannot be served together: {0} (is the key the certificate's, and the certificate \
         first in the chain?)"
    )]
    Config(rustls::Error),
}

/// Which protocol a port speaks inside TLS: what ALPN offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The HTTP port (HTTP/1.1 only).
    Http,
    /// The gRPC port (HTTP/2, which gRPC clients require ALPN to agree).
    Grpc,
    /// The PostgreSQL port (`postgresql`, what PostgreSQL 17's direct TLS negotiation asks for).
    Postgres,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Http, Protocol::Grpc, Protocol::Postgres];

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Http => vec![b"http/1.1".to_vec()],
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Postgres => vec![b"postgresql".to_vec()],
        }
    }
}

/// The certificate in force for every port; clones share it.
#[derive(Debug, Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    configs: Arc<RwLock<[Arc<ServerConfig>; 3]>>,
}

impl Tls {
    /// Reads the files now; an error names the flag and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let configs = build(&files)?;
        Ok(Tls { files: Arc::new(files), configs: Arc::new(RwLock::new(configs)) })
    }

    /// Reads the files again: new handshakes get the new certificate, open connections keep theirs. On an error
    /// the certificate in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.files)?;
        *self.configs.write().unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
        Ok(())
    }

    /// The files (for logs).
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the certificate in force for `protocol`.
    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let configs = self.configs.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        TlsAcceptor::from(configs[protocol as usize].clone())
    }

    /// Completes the handshake of an accepted connection within `timeout` (a client that opens a connection and
    /// never finishes its handshake holds nothing for longer).
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        protocol: Protocol,
        stream: S,
        timeout: Duration,
    ) -> io::Result<MaybeTls<S>> {
        let handshake = self.acceptor(protocol).accept(stream);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => Ok(MaybeTls::Tls(Box::new(tls))),
            Ok(Err(e)) => {
                metrics::counter!("weir_tls_handshake_failures_total").increment(1);
                Err(e)
            }
            Err(_) => {
                metrics::counter!("weir_tls_handshake_failures_total").increment(1);
                Err(io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake did not complete in time"))
            }
        }
    }
}

/// Wraps an accepted stream: with `tls`, after its handshake; without, as it is.
pub async fn wrap<S: AsyncRead + AsyncWrite + Unpin>(
    tls: Option<&Tls>,
    protocol: Protocol,
    stream: S,
    timeout: Duration,
) -> io::Result<MaybeTls<S>> {
    match tls {
        None => Ok(MaybeTls::Plain(stream)),
        Some(tls) => tls.accept(protocol, stream, timeout).await,
    }
}

fn build(files: &TlsFiles) -> Result<[Arc<ServerConfig>; 3], TlsError> {
    let chain = certificates("--tls-cert", &files.cert, "; --tls-cert takes the server's chain, its own first")?;
    let key_pem = read("--tls-key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::NoKey { path: files.key.clone(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match &files.client_ca {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("--tls-client-ca", path, "")? {
                roots.add(ca).map_err(|e| TlsError::ClientCa { path: path.clone(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::ClientCa { path: path.clone(), reason: e.to_string() })?;
            Some(verifier)
        }
    };
    let one = |protocol: Protocol| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match &verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v.clone()),
        };
        let mut config = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(TlsError::Config)?;
        config.alpn_protocols = protocol.alpn();
        Ok(Arc::new(config))
    };
    let [http, grpc, pg] = Protocol::ALL;
    Ok([one(http)?, one(grpc)?, one(pg)?])
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_path_buf(), source })
}

fn certificates(flag: &'static str, path: &Path, hint: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { flag, path: path.to_path_buf(), hint });
    }
    Ok(certs)
}

/// A connection with or without TLS: one type for every accept loop.
#[derive(Debug)]
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S> MaybeTls<S> {
    /// The stream under TLS.
    pub fn inner(&self) -> &S {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(t) => t.get_ref().0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, data),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(t) => t.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A file that is not what its flag needs is refused with the flag's name and the reason, never a panic.
    #[test]
    fn unusable_files_are_named_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::tests::self_signed(dir.path());
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let err = |files: TlsFiles| Tls::load(files).unwrap_err().to_string();
        let files = |cert: &Path, key: &Path| TlsFiles { cert: cert.into(), key: key.into(), client_ca: None };
        assert!(err(files(&missing, &key)).starts_with("cannot read --tls-cert"));
        assert!(err(files(&empty, &key)).contains("--tls-cert") && err(files(&empty, &key)).contains("no PEM"));
        assert!(err(files(&cert, &empty)).starts_with("--tls-key"));
        assert!(err(files(&cert, &cert)).starts_with("--tls-key"), "a certificate is not a key");
        let other_key = {
            let other = tempfile::tempdir().unwrap();
            let (_, k) = self_signed(other.path());
            std::fs::copy(&k, dir.path().join("other.key")).unwrap();
            dir.path().join("other.key")
        };
        assert!(err(files(&cert, &other_key)).contains("cannot be served together"));
        let ca = TlsFiles { client_ca: Some(empty), ..files(&cert, &key) };
        assert!(err(ca).contains("--tls-client-ca"));
        assert!(Tls::load(files(&cert, &key)).is_ok());
    }

    /// A self-signed certificate for `localhost` and `127.0.0.1` and its key, as PEM files in `dir`.
    pub(crate) fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (write(dir, "cert.pem", &cert.pem()), write(dir, "key.pem", &key.serialize_pem()))
    }
}
