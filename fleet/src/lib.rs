//! The fleet domain shared by the network-boot server and the console: host records, the host
//! state machine, the boot policy, and the store trait (sled behind it).
//!
//! Everything but [`store::SledStore`] is pure: times come in as arguments (milliseconds since the
//! Unix epoch).
#![forbid(unsafe_code)]

pub mod admission;
pub mod agent;
pub mod bmc;
pub mod bootdiag;
pub mod campaign;
pub mod claim;
pub mod crashes;
pub mod error;
pub mod escrow;
pub mod filegroups;
pub mod host;
pub mod inventory;
pub mod lease;
pub mod lifecycle;
pub mod mac;
pub mod policy;
pub mod progress;
pub mod stages;
#[cfg(feature = "sled-store")]
pub mod store;

pub use campaign::{Campaign, CampaignPolicy, CampaignSpec, CampaignState, KeyRelease, Trigger};
pub use error::Error;
pub use host::{
    Arch, BootPeer, ClientKind, Event, EventSource, HostRecord, HostState, TransitionError,
};
pub use lease::Lease;
pub use mac::Mac;
pub use policy::{BootDecision, BootPolicy, BootQuery, DefaultPolicy};
#[cfg(feature = "sled-store")]
pub use store::{SledStore, Space, Store, StoreError};
