//! Black-box tests of the `unbrick` binary against real peers. Every server runs inside a
//! network namespace created by the test, on a bridge with no uplink.
// missing_docs is for library crates: a binary exports nothing.
#![allow(missing_docs)]
// The lab harness (namespaces, bridge, taps, QEMU, test disks) is the `unbrick-lab` crate,
// shared with `unbrick demo`.
use unbrick_lab::{disks, lab};

mod bitlocker;
mod campaign;
mod console;
mod dhcp_tftp;
mod diskfull;
mod doctor;
mod firmware;
mod fleetsim;
mod oob;
mod payload;
mod scan;
mod signing_cli;
mod trust;
