//! Encryption at rest of escrowed recovery passwords: AES-256-GCM (ring) under a 256-bit key
//! kept in its own file (mode 0600), apart from the store. A record's protector ID is the
//! associated data, so a sealed password moved to another record does not open.
use super::RecoveryPassword;
use crate::Error;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// The AES-256-GCM key that seals escrowed recovery passwords, from its 0600 key file.
pub struct Vault {
    key: LessSafeKey,
    rng: SystemRandom,
    path: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.path.display())
    }
}

impl Vault {
    /// Opens the key file, or creates it (32 random bytes, 0600) when `create` and it is absent.
    /// A key file readable by others is refused.
    pub fn open(path: &Path, create: bool) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => {
                let mode = std::fs::metadata(path)
                    .map_err(|e| Error::Vault(format!("{}: {e}", path.display())))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(Error::Vault(format!(
                        "{}: the BitLocker escrow key is readable by others (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut k = [0u8; 32];
                rng.fill(&mut k)
                    .map_err(|_| Error::Vault("no randomness for the escrow key".into()))?;
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d)
                        .map_err(|e| Error::Vault(format!("{}: {e}", d.display())))?;
                }
                signing::keys::create_exclusive(path, &k, 0o600)
                    .map_err(|e| Error::Vault(format!("{}: {e}", path.display())))?;
                k.to_vec()
            }
            Err(e) => {
                return Err(Error::Vault(format!(
                    "{}: {e} (the BitLocker escrow key; without it escrowed keys cannot be read)",
                    path.display()
                )))
            }
        };
        if bytes.len() != 32 {
            return Err(Error::Vault(format!(
                "{}: an escrow key is 32 bytes, this file has {}",
                path.display(),
                bytes.len()
            )));
        }
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| Error::Vault("bad escrow key".into()))?,
        );
        Ok(Self {
            key,
            rng,
            path: path.to_path_buf(),
        })
    }

    /// Seals `pw` for the record of `protector_id`: hex of nonce ++ ciphertext ++ tag.
    pub fn seal(&self, protector_id: &str, pw: &RecoveryPassword) -> Result<String, Error> {
        self.seal_bytes(protector_id, pw.expose().as_bytes())
    }

    /// Seals any secret for the record named `aad` (the associated data: a sealed secret moved
    /// to another record does not open).
    pub fn seal_bytes(&self, aad: &str, plain: &[u8]) -> Result<String, Error> {
        let mut n = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut n)
            .map_err(|_| Error::Vault("no randomness for a nonce".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::Vault("sealing failed".into()))?;
        let mut out = n.to_vec();
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(hex::encode(out))
    }

    /// Opens a secret sealed with [`Self::seal_bytes`] for `aad`; wiped when dropped.
    pub fn open_bytes(
        &self,
        aad: &str,
        sealed: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let fail = || {
            Error::Vault(format!(
                "the secret of {aad} does not decrypt with {} (another key file, or the record was altered)",
                self.path.display()
            ))
        };
        let raw = hex::decode(sealed).map_err(|_| fail())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(fail());
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let mut buf = zeroize::Zeroizing::new(ct.to_vec());
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| fail())?;
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| fail())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a sealed password; an error when the key file is not the one it was sealed with or
    /// the record was altered.
    pub fn open_sealed(&self, protector_id: &str, sealed: &str) -> Result<RecoveryPassword, Error> {
        let fail = || {
            Error::Vault(format!(
                "the escrowed key for protector {protector_id} does not decrypt with {} (another key file, or the record was altered)",
                self.path.display()
            ))
        };
        let raw = hex::decode(sealed).map_err(|_| fail())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(fail());
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let mut buf = ct.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| fail())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(protector_id.as_bytes()), &mut buf)
            .map_err(|_| fail())?;
        let parsed = std::str::from_utf8(plain)
            .map_err(|_| fail())
            .and_then(|s| RecoveryPassword::parse(s).map_err(|_| fail()));
        zeroize::Zeroize::zeroize(&mut buf);
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const RP: &str = "235818-357951-253979-013365-241120-245575-342914-591910";
    const ID: &str = "64311dea-4587-4029-924a-ba299647998e";

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("unbrick-vault-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn seal_open_and_tamper() {
        let d = dir("seal");
        let p = d.join("bitlocker.key");
        assert!(Vault::open(&p, false).is_err(), "absent and not created");
        let v = Vault::open(&p, true).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let pw = RecoveryPassword::parse(RP).unwrap();
        let s = v.seal(ID, &pw).unwrap();
        assert!(
            !s.contains("235818") && !hex::decode(&s).unwrap().windows(6).any(|w| w == b"235818")
        );
        assert_ne!(s, v.seal(ID, &pw).unwrap(), "a fresh nonce each time");
        assert_eq!(v.open_sealed(ID, &s).unwrap(), pw);
        // Reopened from the file: same key.
        let v2 = Vault::open(&p, true).unwrap();
        assert_eq!(v2.open_sealed(ID, &s).unwrap(), pw);
        // Moved to another protector's record, a flipped bit, truncation: refused.
        assert!(v
            .open_sealed("83abdb8f-3218-4bfd-aced-215e1e189bdf", &s)
            .is_err());
        let mut b = hex::decode(&s).unwrap();
        b[20] ^= 1;
        assert!(v.open_sealed(ID, &hex::encode(&b)).is_err());
        assert!(v.open_sealed(ID, &s[..30]).is_err());
        assert!(v.open_sealed(ID, "zz").is_err());
        // Another key file does not open it.
        let other = Vault::open(&d.join("other.key"), true).unwrap();
        let e = other.open_sealed(ID, &s).unwrap_err();
        assert!(
            e.to_string().contains("does not decrypt") && !e.to_string().contains("235818"),
            "{e}"
        );
        // A key file others can read is refused; a short one too.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Vault::open(&p, false)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::write(d.join("short.key"), b"abc").unwrap();
        std::fs::set_permissions(d.join("short.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(Vault::open(&d.join("short.key"), false).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
