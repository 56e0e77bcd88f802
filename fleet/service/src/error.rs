//! The one error type of the fleet's operations, and its HTTP status: the API, the console and
//! the agent API map errors here and nowhere else.

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not read or write: the server's fault, never the caller's (5xx; the
    /// reason is logged).
    #[error("store: {0}")]
    Store(#[from] fleet::StoreError),
    /// The request is malformed (an empty or oversized list).
    #[error("{0}")]
    Invalid(String),
    /// The request was understood but its content is refused (a bad recovery password, a
    /// protector ID that is not a GUID, a host that waits for no key).
    #[error("{0}")]
    Refused(String),
    /// The request names a host, key or campaign that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (a campaign that cannot pause now).
    #[error("{0}")]
    Conflict(String),
    /// This server lacks a setting the operation needs (no escrow key file).
    #[error("{0}")]
    NotConfigured(String),
    /// Sealing or opening an escrowed key failed (a damaged record or the wrong key file).
    #[error("{0}")]
    Sealing(String),
    /// A blocking task did not finish (the runtime is shutting down).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<fleet::Error> for Error {
    fn from(e: fleet::Error) -> Self {
        match e {
            fleet::Error::Invalid(m) => Self::Refused(m),
            fleet::Error::State(m) => Self::Conflict(m),
            fleet::Error::Vault(m) => Self::Sealing(m),
            // fleet::Error is non_exhaustive: a new kind is the server's to explain.
            e => Self::Internal(e.to_string()),
        }
    }
}

impl Error {
    /// The HTTP status for this error: 4xx only for what the caller can fix.
    pub fn http_status(&self) -> u16 {
        match self {
            // An update closure refused the change: the caller's input.
            Self::Store(fleet::StoreError::Rejected(_)) | Self::Refused(_) => 422,
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Store(_) | Self::NotConfigured(_) => 503,
            Self::Sealing(_) | Self::Internal(_) => 500,
        }
    }

    /// True when the server, not the caller, is at fault: logged at error level.
    pub fn is_server_fault(&self) -> bool {
        self.http_status() >= 500
    }

    /// The status to answer with; a server fault is logged here, with its reason. Every HTTP
    /// layer (agent API, admin API, console) answers a fleet error through this.
    pub fn answer_status(&self) -> u16 {
        if self.is_server_fault() {
            tracing::error!("{self}");
        }
        self.http_status()
    }
}

/// The result of a fleet operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_never_a_4xx() {
        let e = Error::Store(fleet::StoreError::TooNew { found: 9 });
        assert_eq!(e.http_status(), 503);
        assert!(e.is_server_fault());
        assert_eq!(Error::Refused("x".into()).http_status(), 422);
        assert_eq!(Error::Invalid("x".into()).http_status(), 400);
        assert_eq!(Error::NotFound("x".into()).http_status(), 404);
        assert_eq!(Error::Conflict("x".into()).http_status(), 409);
        assert_eq!(Error::Sealing("x".into()).http_status(), 500);
    }
}
