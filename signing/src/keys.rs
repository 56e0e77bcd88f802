//! Ed25519 key pairs (PKCS#8 v2 private keys from ring) and public-key fingerprints.
use crate::Error;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::path::Path;

/// An Ed25519 public key, the trust anchor embedded in the recovery agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// A public key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Accepts the raw 32 bytes or 64 hex digits (surrounding white space ignored).
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        if let Ok(raw) = <[u8; 32]>::try_from(data) {
            return Ok(Self(raw));
        }
        let text = std::str::from_utf8(data)
            .map_err(|_| Error::BadPublicKey(format!("{} bytes of binary data", data.len())))?
            .trim();
        let raw = hex::decode(text).map_err(|e| Error::BadPublicKey(e.to_string()))?;
        <[u8; 32]>::try_from(raw.as_slice())
            .map(PublicKey)
            .map_err(|_| Error::BadPublicKey(format!("{} bytes after hex decoding", raw.len())))
    }

    /// Reads a public key file (32 raw bytes or 64 hex digits).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&data)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `ed25519:` followed by the first 16 bytes of the key's SHA-256, in hex. Short enough to
    /// read aloud over the phone, long enough that no other key will share it.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("ed25519:{}", hex::encode(&d.as_ref()[..16]))
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| Error::BadSignature)
    }
}

/// A signing key pair, held as its PKCS#8 document.
pub struct KeyPair {
    pkcs8: Vec<u8>,
    inner: Ed25519KeyPair,
}

impl KeyPair {
    /// A new random key pair.
    pub fn generate() -> Result<Self, Error> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| Error::BadPrivateKey("the system random source failed".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key pair from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, Error> {
        let inner = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| Error::BadPrivateKey(e.to_string()))?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            inner,
        })
    }

    /// Reads a private key file (PKCS#8).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_pkcs8(&data)
            .map_err(|e| Error::BadPrivateKey(format!("{}: {e}", path.display())))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.inner.public_key().as_ref());
        PublicKey(raw)
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.inner.sign(message).as_ref());
        out
    }

    /// The PKCS#8 document (for writing the key file).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Writes `DIR/signing.key` (PKCS#8, mode 0600) and `DIR/signing.pub` (raw 32 bytes).
    /// Refuses to overwrite either file.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let key = dir.join("signing.key");
        let public = dir.join("signing.pub");
        for p in [&key, &public] {
            if p.exists() {
                return Err(Error::WouldOverwrite { path: p.clone() });
            }
        }
        write_new(&key, &self.pkcs8, 0o600)?;
        write_new(&public, self.public_key().as_bytes(), 0o644)
    }
}

/// Creates `path` exclusively (never truncating an existing file) with the given mode.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    create_exclusive(path, data, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::WouldOverwrite { path: path.into() }
        } else {
            Error::io(path, e)
        }
    })
}

/// The one "create a private file" writer of unbrick (signing keys, the TLS key, the escrow
/// key, tokens.json): creates `path` exclusively with `mode` from the start (no window where
/// it is readable by others), writes `data` and syncs it to disk before returning.
pub fn create_exclusive(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_parses_raw_and_hex() {
        let kp = KeyPair::generate().unwrap();
        let pk = kp.public_key();
        assert_eq!(PublicKey::parse(pk.as_bytes()).unwrap(), pk);
        let hexed = format!("{}\n", hex::encode(pk.as_bytes()));
        assert_eq!(PublicKey::parse(hexed.as_bytes()).unwrap(), pk);
        assert!(PublicKey::parse(b"abcd").is_err());
        assert!(pk.fingerprint().starts_with("ed25519:"));
        assert_eq!(pk.fingerprint().len(), 8 + 32);
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("unbrick-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kp = KeyPair::generate().unwrap();
        kp.write_to_dir(&dir).unwrap();
        let mode = std::fs::metadata(dir.join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyPair::generate().unwrap();
        assert!(matches!(
            again.write_to_dir(&dir),
            Err(Error::WouldOverwrite { .. })
        ));
        let loaded = KeyPair::load(&dir.join("signing.key")).unwrap();
        assert_eq!(loaded.public_key(), kp.public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
