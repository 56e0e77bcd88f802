//! `unbrick image build`, on the admin's machine: the recovery image's initramfs (the agent as
//! /init, the kernel modules it needs, cryptsetup and its libraries, the agent configuration)
//! as a deterministic cpio archive, compressed with zstd, beside the Debian-signed kernel.
#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;

/// Why an image build failed: the text names the file or program and what to install or pass.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program the build runs is missing or failed (dpkg-deb, ldd, depmod, zstd, xz).
    #[error("{0}")]
    Tool(String),
    /// The kernel package is unusable (no kernel, no modules, modules the payload needs missing).
    #[error("{0}")]
    Kernel(String),
    /// An input is missing or wrong (the agent binary, cryptsetup, a module file).
    #[error("{0}")]
    Input(String),
}
