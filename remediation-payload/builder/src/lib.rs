//! `unbrick image build`, on the admin's machine: the recovery image's initramfs (the agent as
//! /init, the kernel modules it needs, cryptsetup and its libraries, the agent configuration)
//! as a deterministic cpio archive, compressed with zstd, beside the Debian-signed kernel.
#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;
