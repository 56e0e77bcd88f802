//! The fleet domain's error: what was refused and why. Callers map it to their own answer
//! (`fleet_service::Error` gives each kind its HTTP status).

/// Why a domain operation refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value does not parse or is out of range (a campaign spec, a recovery password, a
    /// protector ID, a key export).
    #[error("{0}")]
    Invalid(String),
    /// The operation is not allowed in the current state (pausing a draft campaign, starting
    /// one whose hosts are in another).
    #[error("{0}")]
    State(String),
    /// The escrow key file or a sealed record could not be used.
    #[error("{0}")]
    Vault(String),
}

/// The result of a domain operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
