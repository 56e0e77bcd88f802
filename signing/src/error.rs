use std::path::PathBuf;

/// Every way signing or verification can fail. Messages name the file and the mismatch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file exists already.
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    WouldOverwrite {
        /// The file.
        path: PathBuf,
    },
    /// The private key file is not Ed25519 PKCS#8.
    #[error("private key is not a valid Ed25519 PKCS#8 document: {0}")]
    BadPrivateKey(String),
    /// The public key is not 32 bytes (raw or hex).
    #[error("public key is not a 32-byte Ed25519 key (raw or 64 hex digits): {0}")]
    BadPublicKey(String),
    /// The signature file does not parse.
    #[error("signature file is malformed: {0}")]
    MalformedSignature(String),
    /// The signature is for another kind of document (a manifest's used on rules).
    #[error("signature is for a {found} document, expected a {expected} document")]
    WrongPurpose {
        /// The purpose wanted.
        expected: String,
        /// The purpose signed.
        found: String,
    },
    /// Signed by a key other than the trusted one.
    #[error("signed by key {found}, but the trusted key is {expected}")]
    WrongKey {
        /// The trusted key's fingerprint.
        expected: String,
        /// The signing key's fingerprint.
        found: String,
    },
    /// The content changed after signing.
    #[error("signature does not match the content (the document was changed after signing, or signed by another key)")]
    BadSignature,
    /// The manifest does not parse.
    #[error("manifest is malformed: {0}")]
    MalformedManifest(String),
    /// An artefact the manifest lists is absent.
    #[error("artefact {name} is listed in the manifest but missing")]
    MissingFile {
        /// The artefact.
        name: String,
    },
    /// An artefact has another size than signed.
    #[error("artefact {name}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The artefact.
        name: String,
        /// The signed size.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// An artefact has another hash than signed.
    #[error("artefact {name}: SHA-256 is {actual}, the manifest says {expected}")]
    HashMismatch {
        /// The artefact.
        name: String,
        /// The signed hash.
        expected: String,
        /// The hash on disk.
        actual: String,
    },
    /// A file in the image directory is not in the manifest.
    #[error("file {name} is not listed in the signed manifest")]
    ExtraFile {
        /// The file.
        name: String,
    },
    /// The rules document does not parse or is invalid.
    #[error("rules are malformed: {0}")]
    MalformedRules(String),
    /// The rules are past their expiry.
    #[error("rules {id} version {version} expired at {expires}")]
    Expired {
        /// The rules' id.
        id: String,
        /// Their version.
        version: u64,
        /// When they expired (RFC 3339).
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
