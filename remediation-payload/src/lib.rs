//! The recovery agent: PID 1 of the initramfs. It brings the network up, finds the Windows
//! volumes (unlocking BitLocker with a released key), quarantines what the signed rules name,
//! reports and reboots. The host-side image builder is the `payload-builder` crate beside this
//! one, the HTTP client the `unbrick-http` crate.
//!
//! Pure parts (module resolution, command line, volume classification, rule walking, report
//! building) are unit tested here; the agent's Linux runtime is tested end to end in QEMU
//! (tests/blackbox).
#![deny(unsafe_code)]

pub mod agent;
pub mod bitlk;
pub mod cmdline;
pub mod crashdump;
pub mod eventlog;
pub mod hive;
pub mod inspect;
pub mod modules;
pub mod pe;
pub mod remediate;
mod sys;

/// Why the agent cannot go on with a step: the text says what and what the admin can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel command line lacks what the boot script puts there.
    #[error("{0}")]
    Cmdline(String),
    /// A BitLocker volume's FVE metadata is missing or damaged.
    #[error("{0}")]
    Metadata(String),
}

/// The agent's configuration, embedded in the initramfs at build time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentConfig {
    /// Hex of the Ed25519 public key that must have signed the rules.
    pub signing_public_key: String,
    /// The image's version.
    pub image_version: String,
    /// The kernel's release.
    pub kernel_version: String,
    /// Every module in the image, in load order (dependencies first): name and path relative
    /// to /lib/modules/<kernel>/.
    pub modules: Vec<(String, String)>,
    /// Direct dependencies per module name.
    pub deps: std::collections::BTreeMap<String, Vec<String>>,
    /// `modules.alias` patterns of the modules in the image: (pattern, module name).
    pub aliases: Vec<(String, String)>,
    /// Loaded whatever the hardware.
    pub always: Vec<String>,
    /// `sha256:<hex>` of the server's TLS certificate: the agent API is only spoken over
    /// HTTPS to the server holding it.
    #[serde(default)]
    pub server_cert_sha256: Option<String>,
    /// The oldest rules version this image runs (the active rules' version when it was
    /// built): an older signed set, still unexpired, is refused.
    #[serde(default)]
    pub min_rules_version: u64,
}

/// Where the image puts cryptsetup (the agent runs it from there).
pub const IMAGE_CRYPTSETUP: &str = "usr/sbin/cryptsetup";

/// Where the image keeps the agent's configuration.
pub const AGENT_CONFIG_PATH: &str = "etc/unbrick/agent.json";
/// The agent's version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
