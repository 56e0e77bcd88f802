//! Black-box tests of the `unbrick` binary against real peers. Every server runs inside a
//! network namespace created by the test, on a bridge with no uplink.
mod bitlocker;
mod campaign;
mod console;
mod dhcp_tftp;
mod disks;
mod firmware;
mod fleetsim;
mod lab;
mod payload;
mod signing_cli;
