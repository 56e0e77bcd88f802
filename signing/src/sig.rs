//! Detached signature files.
//!
//! ```text
//! unbrick-signature v1
//! purpose: manifest
//! key: ed25519:0123456789abcdef0123456789abcdef
//! signature: <base64 of the 64-byte Ed25519 signature>
//! ```
//! The signed message is `"unbrick-signature v1\npurpose: <purpose>\n"` followed by the document's
//! exact bytes, so a rules signature can never be passed off as a manifest signature.
use crate::{Error, KeyPair, PublicKey};
use base64::Engine as _;

const MAGIC: &str = "unbrick-signature v1";

/// What a signed document is; part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An image manifest.
    Manifest,
    /// A remediation rules document.
    Rules,
}

impl Purpose {
    /// The purpose's name in the signature file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Rules => "rules",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "manifest" => Some(Self::Manifest),
            "rules" => Some(Self::Rules),
            _ => None,
        }
    }
}

/// A parsed detached signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    /// What the signed document is.
    pub purpose: Purpose,
    /// The signing key's fingerprint.
    pub key_fingerprint: String,
    /// The Ed25519 signature over the purpose and the document.
    pub signature: [u8; 64],
}

fn message(purpose: Purpose, document: &[u8]) -> Vec<u8> {
    let mut m = format!("{MAGIC}\npurpose: {}\n", purpose.as_str()).into_bytes();
    m.extend_from_slice(document);
    m
}

impl SignatureFile {
    /// Signs `document` for `purpose` with `key`.
    pub fn sign(key: &KeyPair, purpose: Purpose, document: &[u8]) -> Self {
        Self {
            purpose,
            key_fingerprint: key.public_key().fingerprint(),
            signature: key.sign(&message(purpose, document)),
        }
    }

    /// The signature file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{MAGIC}\npurpose: {}\nkey: {}\nsignature: {}\n",
            self.purpose.as_str(),
            self.key_fingerprint,
            base64::engine::general_purpose::STANDARD.encode(self.signature)
        )
    }

    /// Parses a signature file.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::MalformedSignature(why.to_string());
        let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8 text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("first line is not \"unbrick-signature v1\""));
        }
        let mut field = |name: &str| -> Result<String, Error> {
            let line = lines
                .next()
                .ok_or_else(|| bad(&format!("missing \"{name}:\" line (file truncated?)")))?;
            line.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| bad(&format!("expected \"{name}: ...\", found {line:?}")))
        };
        let purpose = field("purpose")?;
        let purpose =
            Purpose::parse(&purpose).ok_or_else(|| bad(&format!("unknown purpose {purpose:?}")))?;
        let key_fingerprint = field("key")?;
        let sig = field("signature")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sig.as_bytes())
            .map_err(|e| bad(&format!("signature is not base64: {e}")))?;
        let signature = <[u8; 64]>::try_from(raw.as_slice()).map_err(|_| {
            bad(&format!(
                "signature is {} bytes, expected 64 (truncated?)",
                raw.len()
            ))
        })?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(bad("unexpected text after the signature line"));
        }
        let parsed = Self {
            purpose,
            key_fingerprint,
            signature,
        };
        // Only the canonical form is accepted: no stray white space, line endings or padding
        // variants, so every byte of a signature file is significant.
        if parsed.to_text().as_bytes() != data {
            return Err(bad(
                "not in canonical form (extra white space or line endings?)",
            ));
        }
        Ok(parsed)
    }

    /// Verifies `document` against this signature and the trusted key.
    pub fn verify(
        &self,
        trusted: &PublicKey,
        purpose: Purpose,
        document: &[u8],
    ) -> Result<(), Error> {
        if self.purpose != purpose {
            return Err(Error::WrongPurpose {
                expected: purpose.as_str().into(),
                found: self.purpose.as_str().into(),
            });
        }
        if self.key_fingerprint != trusted.fingerprint() {
            return Err(Error::WrongKey {
                expected: trusted.fingerprint(),
                found: self.key_fingerprint.clone(),
            });
        }
        trusted.verify(&message(purpose, document), &self.signature)
    }
}

/// Parses `signature` and verifies `document` with it in one step.
pub fn verify_detached(
    trusted: &PublicKey,
    purpose: Purpose,
    document: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    SignatureFile::parse(signature)?.verify(trusted, purpose, document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_purpose_separation() {
        let kp = KeyPair::generate().unwrap();
        let s = SignatureFile::sign(&kp, Purpose::Rules, b"doc");
        let text = s.to_text();
        verify_detached(&kp.public_key(), Purpose::Rules, b"doc", text.as_bytes()).unwrap();
        assert!(matches!(
            verify_detached(&kp.public_key(), Purpose::Manifest, b"doc", text.as_bytes()),
            Err(Error::WrongPurpose { .. })
        ));
        assert!(matches!(
            verify_detached(&kp.public_key(), Purpose::Rules, b"dob", text.as_bytes()),
            Err(Error::BadSignature)
        ));
        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            verify_detached(&other.public_key(), Purpose::Rules, b"doc", text.as_bytes()),
            Err(Error::WrongKey { .. })
        ));
    }

    #[test]
    fn only_the_canonical_form_is_accepted() {
        let kp = KeyPair::generate().unwrap();
        let text = SignatureFile::sign(&kp, Purpose::Rules, b"doc").to_text();
        // Found by the bit-flip property test: a final newline turned into a vertical tab.
        let mut vt = text.clone().into_bytes();
        *vt.last_mut().unwrap() = 0x0b;
        for variant in [
            vt,
            text.replace('\n', "\r\n").into_bytes(),
            format!("{text}\n").into_bytes(),
            text.replace("signature: ", "signature:  ").into_bytes(),
        ] {
            assert!(
                SignatureFile::parse(&variant).is_err(),
                "{:?}",
                String::from_utf8_lossy(&variant)
            );
        }
    }

    #[test]
    fn truncated_signature_is_malformed() {
        let kp = KeyPair::generate().unwrap();
        let text = SignatureFile::sign(&kp, Purpose::Manifest, b"x").to_text();
        for cut in [0, 10, 30, text.len() - 20] {
            let r = SignatureFile::parse(&text.as_bytes()[..cut]);
            assert!(
                matches!(r, Err(Error::MalformedSignature(_))),
                "cut at {cut}: {r:?}"
            );
        }
    }
}
