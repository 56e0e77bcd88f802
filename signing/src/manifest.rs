//! The signed manifest of a recovery image: every artefact the server may serve, with its size and
//! SHA-256. Serialization is canonical (fixed field order, artefacts sorted by name, fixed
//! indentation) so the same content always produces, and signs, the same bytes.
use crate::sig::{Purpose, SignatureFile};
use crate::{Error, KeyPair, PublicKey};
use serde::{Deserialize, Serialize};

/// File names inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The detached signature of the manifest.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";

/// One file of the image, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artefact {
    /// Its name in the image directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its content, hex.
    pub sha256: String,
}

/// The signed list of an image's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format (1).
    pub format: u32,
    /// The image's version (`2026.1201.215414`).
    pub image_version: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// The kernel release inside vmlinuz, or `none`.
    pub kernel_version: String,
    /// The fingerprint of the key that signs it.
    pub key_fingerprint: String,
    /// Every artefact, by name.
    pub artefacts: Vec<Artefact>,
}

/// SHA-256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

impl Manifest {
    /// Builds a manifest over `files` (name, content); names must be plain file names.
    pub fn new(
        image_version: &str,
        created_unix: u64,
        kernel_version: &str,
        key: &PublicKey,
        files: &[(&str, &[u8])],
    ) -> Result<Self, Error> {
        let mut artefacts = Vec::with_capacity(files.len());
        for (name, data) in files {
            check_name(name)?;
            artefacts.push(Artefact {
                name: name.to_string(),
                size: data.len() as u64,
                sha256: sha256_hex(data),
            });
        }
        artefacts.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = artefacts.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::MalformedManifest(format!(
                "artefact {} listed twice",
                w[0].name
            )));
        }
        Ok(Self {
            format: 1,
            image_version: image_version.into(),
            created: crate::time::format_utc(created_unix),
            kernel_version: kernel_version.into(),
            key_fingerprint: key.fingerprint(),
            artefacts,
        })
    }

    /// Canonical bytes: what is written to `manifest.json` and signed.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses a canonical manifest.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let m: Self =
            serde_json::from_slice(data).map_err(|e| Error::MalformedManifest(e.to_string()))?;
        if m.format != 1 {
            return Err(Error::MalformedManifest(format!(
                "unsupported format {}",
                m.format
            )));
        }
        for a in &m.artefacts {
            check_name(&a.name)?;
            if a.sha256.len() != 64 || hex::decode(&a.sha256).is_err() {
                return Err(Error::MalformedManifest(format!(
                    "artefact {}: sha256 is not 64 hex digits",
                    a.name
                )));
            }
        }
        Ok(m)
    }

    /// Signs the canonical form with `key` (purpose: manifest).
    pub fn sign(&self, key: &KeyPair) -> SignatureFile {
        SignatureFile::sign(key, Purpose::Manifest, &self.to_canonical())
    }

    /// Verifies manifest bytes and their signature against the trusted key, then parses them.
    pub fn verify_signed(
        trusted: &PublicKey,
        manifest: &[u8],
        signature: &[u8],
    ) -> Result<Self, Error> {
        crate::sig::verify_detached(trusted, Purpose::Manifest, manifest, signature)?;
        let m = Self::parse(manifest)?;
        if m.key_fingerprint != trusted.fingerprint() {
            return Err(Error::WrongKey {
                expected: trusted.fingerprint(),
                found: m.key_fingerprint,
            });
        }
        Ok(m)
    }

    /// The artefact named `name`.
    pub fn artefact(&self, name: &str) -> Option<&Artefact> {
        self.artefacts.iter().find(|a| a.name == name)
    }

    /// Checks one artefact's content against the manifest.
    pub fn check_artefact(&self, name: &str, data: &[u8]) -> Result<(), Error> {
        let a = self
            .artefact(name)
            .ok_or_else(|| Error::ExtraFile { name: name.into() })?;
        if a.size != data.len() as u64 {
            return Err(Error::SizeMismatch {
                name: name.into(),
                expected: a.size,
                actual: data.len() as u64,
            });
        }
        let actual = sha256_hex(data);
        if actual != a.sha256 {
            return Err(Error::HashMismatch {
                name: name.into(),
                expected: a.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Checks a complete set of files (name, content): each listed artefact present and intact,
    /// nothing unlisted. Returns every problem, not only the first.
    pub fn check_all<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<Error> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, data) in files {
            seen.insert(name.to_string());
            if let Err(e) = self.check_artefact(name, data) {
                problems.push(e);
            }
        }
        for a in &self.artefacts {
            if !seen.contains(&a.name) {
                problems.push(Error::MissingFile {
                    name: a.name.clone(),
                });
            }
        }
        problems
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name != MANIFEST_FILE
        && name != SIGNATURE_FILE;
    if ok {
        Ok(())
    } else {
        Err(Error::MalformedManifest(format!(
            "{name:?} is not a valid artefact file name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kp: &KeyPair) -> Manifest {
        Manifest::new(
            "2026.11.1",
            1_790_000_000,
            "6.12.95+deb12-amd64",
            &kp.public_key(),
            &[("vmlinuz", b"kernel"), ("initrd.img", b"initrd")],
        )
        .unwrap()
    }

    #[test]
    fn canonical_and_sorted() {
        let kp = KeyPair::generate().unwrap();
        let m = sample(&kp);
        assert_eq!(m.artefacts[0].name, "initrd.img");
        let bytes = m.to_canonical();
        assert_eq!(Manifest::parse(&bytes).unwrap().to_canonical(), bytes);
    }

    #[test]
    fn every_file_problem_is_reported() {
        let kp = KeyPair::generate().unwrap();
        let m = sample(&kp);
        let problems = m.check_all([("vmlinuz", &b"kerneL"[..]), ("extra.bin", &b"x"[..])]);
        let text: Vec<String> = problems.iter().map(|e| e.to_string()).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert!(matches!(problems[0], Error::HashMismatch { .. }));
        assert!(matches!(problems[1], Error::ExtraFile { .. }));
        assert!(matches!(problems[2], Error::MissingFile { .. }));
        assert!(m
            .check_all([("vmlinuz", &b"kernel"[..]), ("initrd.img", &b"initrd"[..])])
            .is_empty());
        assert!(matches!(
            m.check_artefact("vmlinuz", b"kern"),
            Err(Error::SizeMismatch { .. })
        ));
    }

    #[test]
    fn malformed_and_hostile_names_refused() {
        let kp = KeyPair::generate().unwrap();
        assert!(Manifest::new("1", 0, "k", &kp.public_key(), &[("../x", b"")]).is_err());
        assert!(Manifest::parse(b"{").is_err());
        assert!(Manifest::parse(br#"{"format":1}"#).is_err());
    }
}
