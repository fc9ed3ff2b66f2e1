//! The key file (`--api-keys-file`): named API keys with scopes, kept as hashes of their secrets.
//!
//! ```toml
//! [[key]]
//! name = "truck-7"
//! sha256 = "5f2b…"                 # of the secret; `weir keys add` shows the secret once and keeps only this
//! scopes = ["write"]               # write, read, sql, admin
//! devices = ["truck-7", "van-*"]   # optional, for write keys: the devices it may write (`prefix*` patterns)
//! readings_per_second = 1000       # optional: beyond it, 429 with Retry-After (default --key-readings-per-second)
//! concurrent_requests = 4          # optional: requests at once (default --key-concurrent-requests)
//! ```
//!
//! **Why SHA-256 and not a password hash.** The secrets are not passwords: `weir keys add` makes each one from 32
//! random bytes (256 bits, `weir_` + base64url). Nobody can guess or look one up from its hash, so a slow hash
//! (argon2, bcrypt) would protect nothing more and would cost every request — every ingest request is
//! authenticated — milliseconds of CPU. A secret is compared by its hash, in constant time.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Ingest: every write endpoint, gRPC Write/Ingest.
    Write,
    /// Live statistics: series, latest values, devices, subscriptions, the dashboard's data.
    Read,
    /// SQL over the archive: `/api/v1/sql`, gRPC Query, PostgreSQL, Flight SQL.
    Sql,
    /// Operations: `/metrics`.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Write, Scope::Read, Scope::Sql, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Sql => "sql",
            Scope::Admin => "admin",
        }
    }
}

/// The file's contents.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFile {
    #[serde(default, rename = "key")]
    pub keys: Vec<FileKey>,
}

/// One named key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    pub scopes: BTreeSet<Scope>,
    /// For a write key: the devices it may write (exact names, or `prefix*`); absent: any device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// The most readings a second the key may write; absent: the server's `--key-readings-per-second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings_per_second: Option<u64>,
    /// The most requests of the key at once; absent: the server's `--key-concurrent-requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u32>,
}

impl FileKey {
    /// The key's own limits (unset ones come from the server's defaults).
    pub fn limits(&self) -> super::limits::KeyLimits {
        super::limits::KeyLimits {
            readings_per_second: self.readings_per_second,
            concurrent_requests: self.concurrent_requests,
        }
    }
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the key file {path} is not valid: {reason}; fix it (`weir keys list --file {path}` shows what it holds)")]
    Invalid { path: String, reason: String },
}

impl KeyFile {
    /// Reads and checks the file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<KeyFile, KeyFileError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
            Err(source) => return Err(KeyFileError::Read { path: shown, source }),
        };
        let file: KeyFile =
            toml::from_str(&text).map_err(|e| KeyFileError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        file.check().map_err(|reason| KeyFileError::Invalid { path: shown, reason })?;
        Ok(file)
    }

    /// Replaces the file (written beside, then renamed; readable by its owner only).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let shown = path.display().to_string();
        let text =
            toml::to_string(self).map_err(|e| KeyFileError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        let beside = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut out =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&beside)?;
            out.write_all(
                b"# Weir API keys: `weir keys add|list|revoke` manage this file; secrets are kept as SHA-256.\n",
            )?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&beside, path)
        };
        write().map_err(|source| KeyFileError::Write { path: shown, source })
    }

    /// Names are unique and plain, hashes are SHA-256 in hex, every key has a scope, device lists only on write keys.
    fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for key in &self.keys {
            check_name(&key.name)?;
            if !names.insert(key.name.as_str()) {
                return Err(format!("the name {:?} is given to two keys", key.name));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(format!("key {:?}: sha256 must be 64 lowercase hex digits", key.name));
            }
            if key.scopes.is_empty() {
                return Err(format!("key {:?} has no scope: give it some of write, read, sql, admin", key.name));
            }
            if key.devices.is_some() && !key.scopes.contains(&Scope::Write) {
                return Err(format!("key {:?} lists devices but has no write scope", key.name));
            }
            if key.readings_per_second == Some(0) || key.concurrent_requests == Some(0) {
                return Err(format!(
                    "key {:?}: a limit of 0 would refuse everything; revoke the key instead",
                    key.name
                ));
            }
        }
        Ok(())
    }

    /// Adds a key named `name`; returns its secret (shown once: only its hash is kept).
    pub fn add(&mut self, name: &str, scopes: BTreeSet<Scope>, devices: Option<Vec<String>>) -> Result<String, String> {
        if self.keys.iter().any(|k| k.name == name) {
            return Err(format!("a key named {name:?} exists: revoke it first, or choose another name"));
        }
        let secret = new_secret().map_err(|e| format!("cannot read random bytes: {e}"))?;
        let sha256 = sha256_hex(&secret);
        self.keys.push(FileKey {
            name: name.into(),
            sha256,
            scopes,
            devices,
            readings_per_second: None,
            concurrent_requests: None,
        });
        self.check()?;
        Ok(secret)
    }

    /// Removes the key named `name`; `false` when there is none.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.name != name);
        self.keys.len() != before
    }
}

/// A key's name: 1–64 letters, digits, `-`, `_`, `.` (it appears in logs and metric labels).
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(plain) {
        return Err(format!("the key name {name:?} must be 1–64 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// A new secret: `weir_` and 32 random bytes in base64url.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("weir_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// SHA-256 of a secret.
pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn sha256_hex(secret: &str) -> String {
    sha256(secret).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two byte strings are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_added_once_kept_as_hashes_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let mut file = KeyFile::load(&path).unwrap();
        let secret = file.add("truck-7", [Scope::Write].into(), Some(vec!["truck-7".into()])).unwrap();
        assert!(secret.starts_with("weir_") && secret.len() == 5 + 43, "{secret}");
        assert!(file.add("truck-7", [Scope::Read].into(), None).unwrap_err().contains("exists"));
        assert!(file.add("dash", [Scope::Read].into(), Some(vec!["x".into()])).unwrap_err().contains("no write scope"));
        file.keys.retain(|k| k.name != "dash");
        file.add("dash", [Scope::Read, Scope::Sql].into(), None).unwrap();
        file.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret) && text.contains(&sha256_hex(&secret)), "{text}");
        assert_eq!(KeyFile::load(&path).unwrap(), file);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(file.revoke("truck-7") && !file.revoke("truck-7"));
        std::fs::write(&path, "[[key]]\nname = \"a b\"\nsha256 = \"00\"\nscopes = []\n").unwrap();
        assert!(KeyFile::load(&path).unwrap_err().to_string().contains("must be 1–64 letters"));
    }

    #[test]
    fn devices_match_exactly_or_by_prefix_and_secrets_compare_in_constant_time() {
        let limit = weir_pipeline::decode::DeviceLimit {
            key: "k".into(),
            patterns: vec!["truck-7".to_string(), "van-*".to_string()].into(),
        };
        assert!(limit.allows("truck-7") && !limit.allows("truck-70"));
        assert!(limit.allows("van-12") && !limit.allows("truck-1"));
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }
}
