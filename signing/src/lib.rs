//! Ed25519 keys, signed recovery-image manifests and signed remediation rules.
//!
//! Everything here is pure apart from [`keys`]' key-file helpers and [`image_dir`]: documents come in as bytes,
//! time comes in as an argument, and every failure has its own [`Error`] variant so that the
//! server, the CLI and the recovery agent can each say exactly what was wrong.
#![forbid(unsafe_code)]

mod error;
pub mod image_dir;
pub mod keys;
pub mod manifest;
pub mod rules;
pub mod sig;
pub mod time;

pub use error::Error;
pub use keys::{KeyPair, PublicKey};
pub use manifest::{Artefact, Manifest};
pub use rules::{Action, FileFacts, Rule, RuleSet, Verdict};
pub use sig::{Purpose, SignatureFile};
