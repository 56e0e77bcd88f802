//! DHCP: client classification, the pure decision core, the full-mode pool, and the driver.
pub mod classify;
pub mod decide;
pub mod pool;
pub mod server;

#[cfg(test)]
mod tests;

pub use decide::{decide, parse, Dest, DhcpConfig, Inbound, LeaseChange, Mode, Outcome, Reply};
