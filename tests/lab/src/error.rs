//! Why a lab step failed.

/// A lab step's failure: a command that failed (with its output) or a file that could not be
/// read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command exited non-zero or could not start.
    #[error("command failed: {cmd}\nstdout: {stdout}\nstderr: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed.
        stdout: String,
        /// Its errors.
        stderr: String,
    },
    /// A file or folder could not be used.
    #[error("{0}")]
    Io(String),
}
