//! The fleet's single writer, shared by the network-boot server, the console, the admin API and
//! the CLI's offline commands: the host cache over the [`fleet::Store`], the change stream the
//! console follows, the group commit behind every acknowledgement, the admin actions, and the
//! BitLocker escrow's import, reveal, paste and release.
//!
//! State changes are decided by [`fleet::lifecycle::apply`]; this crate only applies them to the
//! cache and the store, records the note and tells subscribers.
#![forbid(unsafe_code)]

pub mod actions;
pub mod clock;
pub mod controllers;
pub mod error;
pub mod escrow;
pub mod fleetio;
pub mod metrics;
pub mod oob;

pub use actions::{Action, ActionOutcome, ActionResult, ImportCount};
pub use clock::now_ms;
pub use error::{Error, Result};
pub use fleetio::{Change, FleetIo};
