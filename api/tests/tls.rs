//! TLS against the real binary (issue 23, 1): every port serves the certificate and nothing in plain text; `weir
//! sql --cacert` trusts a private CA; a certificate rotated by SIGHUP under load fails no request, new connections
//! get the new certificate and open ones keep theirs; `--tls-client-ca` requires a client certificate of that CA;
//! unusable files stop the start with the flag named.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::*;

/// A certificate authority that signs server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A certificate for `localhost`/127.0.0.1 (server) or a client, and its key, as PEM.
    fn issue(&self, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    // Beside, then renamed: a reload never reads half a file.
    let beside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&beside, text).unwrap();
    std::fs::rename(&beside, &path).unwrap();
    path
}

fn https_client(cas: &[&Ca]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    for ca in cas {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    builder
}

async fn ingest(client: &reqwest::Client, url: &str, n: u64) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{url}/ingest"))
        .bearer_auth("k")
        .header("content-type", "application/x-ndjson")
        .body(reading("speed", n, None))
        .send()
        .await
}

#[tokio::test]
async fn every_port_serves_tls_and_a_rotated_certificate_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = old_ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let cert_path = write(dir.path(), "cert.pem", &cert);
    let key_path = write(dir.path(), "key.pem", &key);
    let old_ca_path = write(dir.path(), "old-ca.pem", &old_ca.pem());
    let s = Server::start(
        &dir.path().join("data"),
        &["--api-key", "k", "--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    );
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let url = s.url.clone();

    // HTTP: the CA's clients are served; a client that does not trust it, or speaks plain HTTP, is not.
    let trusting = https_client(&[&old_ca]).build().unwrap();
    assert_eq!(ingest(&trusting, &url, 1).await.unwrap().status(), 200);
    assert!(ingest(&https_client(&[]).build().unwrap(), &url, 2).await.is_err(), "an unknown issuer");
    let plain = url.replace("https://", "http://");
    assert!(ingest(&client(), &plain, 3).await.is_err(), "no plain HTTP on a TLS port");

    // gRPC (and Flight SQL on its port): TLS with h2.
    let grpc_url = s.grpc_url.clone().unwrap();
    assert!(grpc_url.starts_with("https://"), "{grpc_url}");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(old_ca.pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(grpc_url.clone()).unwrap().tls_config(tls).unwrap();
    let mut weir = weir_api::grpc::proto::weir_client::WeirClient::new(channel.connect().await.unwrap());
    let mut latest = tonic::Request::new(weir_api::grpc::proto::LatestRequest::default());
    latest.metadata_mut().insert("x-api-key", "k".parse().unwrap());
    weir.latest(latest).await.unwrap();
    let plain_grpc = grpc_url.replace("https://", "http://");
    let plain = tonic::transport::Channel::from_shared(plain_grpc).unwrap().connect().await;
    if let Ok(channel) = plain {
        let mut weir = weir_api::grpc::proto::weir_client::WeirClient::new(channel);
        assert!(weir.latest(weir_api::grpc::proto::LatestRequest::default()).await.is_err(), "plain gRPC");
    }

    // The CLI: `weir sql --cacert`.
    let sql = |cacert: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["sql", "--url", &url, "--api-key", "k", "--format", "csv", "SELECT 42 AS answer"]);
        if let Some(ca) = cacert {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.output().unwrap()
    };
    let out = sql(Some(&old_ca_path));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
    assert!(!sql(None).status.success(), "without --cacert the private CA is not trusted");

    // Rotation under load: clients that trust both CAs, a new connection per request, never stop; the files are
    // replaced with a certificate of the new CA and the server gets SIGHUP.
    let both = https_client(&[&old_ca, &new_ca]).pool_max_idle_per_host(0).build().unwrap();
    let kept = https_client(&[&old_ca]).pool_idle_timeout(Duration::from_secs(60)).build().unwrap();
    assert_eq!(ingest(&kept, &url, 10).await.unwrap().status(), 200, "a connection opened before the rotation");
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4u64 {
        let (client, url, ok, failed, stop) = (both.clone(), url.clone(), ok.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 1_000 + worker * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match ingest(&client, &url, n).await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => panic!("{}", r.status()),
                    Err(e) => {
                        eprintln!("request failed during the rotation: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (cert, key) = new_ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    write(dir.path(), "key.pem", &key);
    write(dir.path(), "cert.pem", &cert);
    let before = ok.load(Ordering::Relaxed);
    s.sighup();
    let only_new = https_client(&[&new_ca]).build().unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if ingest(&only_new, &url, 20).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "new connections never got the new certificate: {}", s.log_text());
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the rotation");
    assert!(ok.load(Ordering::Relaxed) > before, "the load went on through the rotation");
    let only_old = https_client(&[&old_ca]).build().unwrap();
    assert!(ingest(&only_old, &url, 30).await.is_err(), "a new connection now gets the new certificate");
    assert_eq!(ingest(&kept, &url, 31).await.unwrap().status(), 200, "the connection opened before keeps its session");

    // A broken file on SIGHUP: an error in the log, the certificate in force stays.
    write(dir.path(), "cert.pem", "not a certificate");
    s.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ingest(&only_new, &url, 40).await.unwrap().status(), 200);
    assert!(s.log_text().contains("the TLS certificate was not reloaded"), "{}", s.log_text());
}

#[tokio::test]
async fn client_certificates_of_the_ca_are_required_with_tls_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("server and clients CA"), Ca::new("another CA"));
    let (cert, key) = ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let cert_path = write(dir.path(), "cert.pem", &cert);
    let key_path = write(dir.path(), "key.pem", &key);
    let ca_path = write(dir.path(), "ca.pem", &ca.pem());
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--api-key",
            "k",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--tls-client-ca",
            ca_path.to_str().unwrap(),
        ],
    );
    let with_identity = |issuer: &Ca| {
        let (cert, key) = issuer.issue(ExtendedKeyUsagePurpose::ClientAuth);
        let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
        https_client(&[&ca]).identity(identity).build().unwrap()
    };
    assert_eq!(ingest(&with_identity(&ca), &s.url, 1).await.unwrap().status(), 200);
    assert!(ingest(&https_client(&[&ca]).build().unwrap(), &s.url, 2).await.is_err(), "no client certificate");
    assert!(ingest(&with_identity(&other), &s.url, 3).await.is_err(), "a client certificate of another CA");
    // The key is still needed on top of the certificate.
    let no_key = with_identity(&ca)
        .post(format!("{}/ingest", s.url))
        .header("content-type", "application/x-ndjson")
        .body(reading("speed", 4, None))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
}

#[test]
fn unusable_tls_files_stop_the_start_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let (cert, _) = ca.issue(ExtendedKeyUsagePurpose::ServerAuth);
    let cert_path = write(dir.path(), "cert.pem", &cert);
    let start = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off", "--pg-listen", "off"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.pem");
    let cert = cert_path.to_str().unwrap();
    assert!(start(&["--tls-cert", cert]).contains("--tls-key"), "a certificate without its key");
    let e = start(&["--tls-cert", cert, "--tls-key", missing.to_str().unwrap()]);
    assert!(e.contains("cannot read --tls-key"), "{e}");
    let e = start(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(e.contains("--tls-key") && e.contains("no PEM private key"), "{e}");
}
