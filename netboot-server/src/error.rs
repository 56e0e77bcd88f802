//! Why the network-boot server cannot start or serve: each error names what failed and what the
//! admin can do about it, in one line (the image's problems one per line).

/// A start-up or serving failure of the boot edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration does not fit this machine (a pool outside the interface's subnet).
    #[error("{0}")]
    Config(String),
    /// The network interface is missing or has no IPv4 address.
    #[error("{0}")]
    Interface(String),
    /// A socket could not be bound or set up (port in use, permission).
    #[error("{0}")]
    Bind(String),
    /// The TLS certificate or key cannot be read, parsed or made.
    #[error("{0}")]
    Tls(String),
    /// The signed remediation rules are missing, tampered with or expired.
    #[error("{0}")]
    Rules(String),
    /// The recovery image fails verification; every problem, one per line.
    #[error("refusing to serve a recovery image that fails verification:\n  {}", .0.join("\n  "))]
    Image(Vec<String>),
    /// The store cannot be read at start.
    #[error(transparent)]
    Store(#[from] fleet::StoreError),
}

/// The result of a boot-edge operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
