//! unbrick's protocol cores, sans I/O: every decision the network-boot server makes on a packet
//! is a function of the packet, the host's record, the policy and the time passed in.
//!
//! - [`dhcp`]: client classification, the DHCP/proxyDHCP decision, the full-mode lease pool.
//! - [`tftp`]: the RFC 1350/2347/2348/7440 codec and one read transfer as a state machine.
//! - [`boot`]: the per-host iPXE script and grub configuration.
//! - [`range`]: HTTP byte ranges for artefact downloads.
//!
//! The drivers in `netboot-server` only move bytes and timers. This crate's dependency graph has
//! no tokio; the test command checks it.
#![forbid(unsafe_code)]

pub mod boot;
pub mod dhcp;
pub mod range;
pub mod tftp;
