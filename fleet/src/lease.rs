//! DHCP leases of full mode (the pool decides them, the store keeps them).
use crate::Mac;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A DHCP lease handed out in full mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased address.
    pub ip: Ipv4Addr,
    /// The client.
    pub mac: Mac,
    /// When the lease ends (milliseconds since the Unix epoch).
    pub expires_ms: u64,
    /// Offered but not yet requested: reclaimed quickly if the client goes away.
    pub offered_only: bool,
}
