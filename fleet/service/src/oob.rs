//! Out-of-band actions on a host's machine, behind a trait the server implements (this crate
//! does no network I/O): Wake-on-LAN today. The admin's `wake` action runs through it, so the
//! API, the console and the CLI record the same event and audit entry.
use fleet::Mac;

/// What can reach a machine that is not running unbrick's agent.
pub trait OutOfBand: Send + Sync {
    /// Sends a Wake-on-LAN magic packet for `mac` on the served interface only; says what was
    /// sent, or why not.
    fn wake(&self, mac: Mac) -> Result<String, String>;
}
