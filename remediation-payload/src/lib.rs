//! The recovery payload: the agent that runs as PID 1 of the initramfs, and the builder that
//! makes the image (kernel + initramfs) it runs in.
//!
//! Pure parts (cpio, module resolution, command line, volume and rule walking logic) are unit
//! tested here; the agent's Linux runtime is tested end to end in QEMU (tests/blackbox).
#![deny(unsafe_code)]

pub mod agent;
pub mod bitlk;
pub mod build;
pub mod cmdline;
pub mod cpio;
pub mod http;
pub mod modules;
pub mod remediate;
mod sys;

/// The agent's configuration, embedded in the initramfs at build time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentConfig {
    /// Hex of the Ed25519 public key that must have signed the rules.
    pub signing_public_key: String,
    pub image_version: String,
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
}

pub const AGENT_CONFIG_PATH: &str = "etc/unbrick/agent.json";
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
