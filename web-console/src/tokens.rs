//! Admin API tokens: `unbrick tokens create --name N [--read-only]` shows a token once; only its
//! SHA-256 is kept, in `tokens.json` (0600) beside the store. The file is separate from sled so
//! tokens can be created and revoked while the server runs: the server re-reads the file when it
//! changes.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its name (audit log: `token:NAME`).
    pub name: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// When it was made.
    pub created_unix: u64,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenInfo>,
}

/// The file's (modification time, size) when it was read, and what it held.
type Cached = (Option<(SystemTime, u64)>, Vec<TokenInfo>);

/// The token file, cached and re-read when its modification time or size changes.
pub struct TokenBook {
    path: PathBuf,
    cache: Mutex<Cached>,
}

/// Tokens look like `ubk_` + 32 hex digits (128 random bits).
pub const PREFIX: &str = "ubk_";

/// SHA-256 of a token (only hashes are stored).
pub fn hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    hex::encode(b)
}

/// A fresh random identifier (sessions, CSRF tokens).
pub fn random_id() -> String {
    random_hex(16)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Why the token file could not be read or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The name is not 1-64 letters, digits, '-', '_', '.', '@'.
    #[error("{0}")]
    Name(String),
    /// A token of that name exists.
    #[error("{0}")]
    Exists(String),
    /// tokens.json could not be read or written.
    #[error("{0}")]
    Io(String),
    /// tokens.json does not parse.
    #[error("{0}")]
    Corrupt(String),
}

impl TokenBook {
    /// The tokens of `path` (re-read when the file changes).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            cache: Mutex::new((None, Vec::new())),
        }
    }

    fn read(&self) -> Result<Vec<TokenInfo>, TokenError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice::<TokenFile>(&b)
                .map(|f| f.tokens)
                .map_err(|e| TokenError::Corrupt(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(TokenError::Io(format!("{}: {e}", self.path.display()))),
        }
    }

    fn write(&self, tokens: Vec<TokenInfo>) -> Result<(), TokenError> {
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let data = serde_json::to_vec_pretty(&TokenFile { tokens }).expect("tokens serialize");
        signing::keys::create_exclusive(&tmp, &data, 0o600)
            .map_err(|e| TokenError::Io(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| TokenError::Io(format!("{}: {e}", self.path.display())))
    }

    /// Creates a token; returns the secret, which is not stored and cannot be shown again.
    pub fn create(&self, name: &str, read_only: bool, now_unix: u64) -> Result<String, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::Name(format!(
                "token name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@'"
            )));
        }
        let mut all = self.read()?;
        if all.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(format!(
                "a token named {name:?} exists; revoke it first or pick another name"
            )));
        }
        let secret = format!("{PREFIX}{}", random_hex(16));
        all.push(TokenInfo {
            name: name.to_string(),
            read_only,
            created_unix: now_unix,
            sha256: hash(&secret),
        });
        self.write(all)?;
        Ok(secret)
    }

    /// Removes a token by name; returns whether it existed.
    pub fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let mut all = self.read()?;
        let before = all.len();
        all.retain(|t| t.name != name);
        if all.len() == before {
            return Ok(false);
        }
        self.write(all)?;
        Ok(true)
    }

    /// Every token (names and flags, never a secret).
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        self.read()
    }

    /// The token a secret belongs to, if any. Re-reads the file when it changed on disk.
    pub fn check(&self, secret: &str) -> Option<TokenInfo> {
        if !secret.starts_with(PREFIX) || secret.len() != PREFIX.len() + 32 {
            return None;
        }
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut cache = self.cache.lock().unwrap();
        if cache.0 != stamp || stamp.is_none() {
            match self.read() {
                Ok(t) => *cache = (stamp, t),
                Err(e) => {
                    tracing::error!("admin tokens: {e}");
                    *cache = (stamp, Vec::new());
                }
            }
        }
        let h = hash(secret);
        cache.1.iter().find(|t| t.sha256 == h).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_revoke() {
        let d = std::env::temp_dir().join(format!("unbrick-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let book = TokenBook::new(&d.join("tokens.json"));
        let s = book.create("ops", false, 1).unwrap();
        assert!(s.starts_with(PREFIX) && s.len() == 36);
        let r = book.create("viewer", true, 2).unwrap();
        assert_eq!(book.check(&s).unwrap().name, "ops");
        assert!(book.check(&r).unwrap().read_only);
        assert!(book.check("ubk_00000000000000000000000000000000").is_none());
        assert!(book.check("").is_none());
        assert!(book
            .create("ops", true, 3)
            .unwrap_err()
            .to_string()
            .contains("exists"));
        assert!(book.create("bad name", true, 3).is_err());
        let text = std::fs::read_to_string(d.join("tokens.json")).unwrap();
        assert!(!text.contains(&s[4..]), "the secret is never stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another process (the CLI) revokes: the running server notices.
        TokenBook::new(&d.join("tokens.json"))
            .revoke("ops")
            .unwrap();
        assert!(book.check(&s).is_none());
        assert!(book.check(&r).is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
