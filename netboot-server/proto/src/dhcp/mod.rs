//! DHCP: client classification, the pure decision core and the full-mode pool.
pub mod classify;
pub mod decide;
pub mod pool;

#[cfg(test)]
mod tests;

pub use decide::{decide, parse, Dest, DhcpConfig, Inbound, LeaseChange, Mode, Outcome, Reply};
