use std::path::PathBuf;

/// Every way signing or verification can fail. Messages name the file and the mismatch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    WouldOverwrite { path: PathBuf },
    #[error("private key is not a valid Ed25519 PKCS#8 document: {0}")]
    BadPrivateKey(String),
    #[error("public key is not a 32-byte Ed25519 key (raw or 64 hex digits): {0}")]
    BadPublicKey(String),
    #[error("signature file is malformed: {0}")]
    MalformedSignature(String),
    #[error("signature is for a {found} document, expected a {expected} document")]
    WrongPurpose { expected: String, found: String },
    #[error("signed by key {found}, but the trusted key is {expected}")]
    WrongKey { expected: String, found: String },
    #[error("signature does not match the content (the document was changed after signing, or signed by another key)")]
    BadSignature,
    #[error("manifest is malformed: {0}")]
    MalformedManifest(String),
    #[error("artefact {name} is listed in the manifest but missing")]
    MissingFile { name: String },
    #[error("artefact {name}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("artefact {name}: SHA-256 is {actual}, the manifest says {expected}")]
    HashMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("file {name} is not listed in the signed manifest")]
    ExtraFile { name: String },
    #[error("rules are malformed: {0}")]
    MalformedRules(String),
    #[error("rules {id} version {version} expired at {expires}")]
    Expired {
        id: String,
        version: u64,
        expires: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
