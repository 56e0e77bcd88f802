//! unbrick's network-boot server: the drivers for proxyDHCP and full DHCP (with the PXE :4011
//! exchange), TFTP and HTTP boot, the agent API, and the TLS and idle-limit listeners. Every
//! decision is made by the pure cores of `netboot-proto` and the [`fleet::BootPolicy`]; every
//! record goes through `fleet_service::FleetIo`. The server is composed by the `unbrick`
//! binary (`src/serve.rs`).
// Only the layer-2 witness (`l2`, a packet socket with a BPF filter) and the sealed image
// mapping (`sealed`) have unsafe code.
#![deny(unsafe_code)]

pub mod agent_api;
pub mod booter;
pub mod dhcp;
pub mod error;
pub mod http;
pub mod idle;
pub mod image;
pub mod l2;
pub mod net;
pub mod oob;
pub mod reply;
pub mod sealed;
pub mod tftp;
pub mod tls;
pub mod wol;

pub use booter::{BootConfigKind, Booter, TftpFiles};
pub use error::Error;
pub use netboot_proto as proto;
