//! The namespace and QEMU lab, shared by `unbrick demo` and the black-box tests: a server
//! namespace with a bridge and no uplink, client namespaces on veth pairs, tap devices for QEMU
//! guests, `unbrick serve` inside, every process stopped by PID on drop; and test disks (GPT or
//! MBR, NTFS made by mkntfs, files written through ntfs-3g).
//!
//! Nothing here touches the machine's own interfaces: every address lives in a namespace the lab
//! made.
#![forbid(unsafe_code)]

pub mod disks;
pub mod error;
pub mod lab;
pub mod qemu;

pub use error::Error;
