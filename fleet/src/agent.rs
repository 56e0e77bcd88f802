//! The agent API's messages, shared by the recovery agent and the server.
use serde::{Deserialize, Serialize};

/// `POST /agent/v1/hello`: the agent is up and says who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub token: String,
    pub mac: String,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// `bios` or `uefi`.
    pub firmware: String,
    pub secure_boot: Option<bool>,
    /// Kernel lockdown mode (`none`, `integrity`, `confidentiality`), if known.
    pub lockdown: Option<String>,
    pub agent_version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The server's clock (seconds since the epoch), for machines whose RTC is wrong.
    pub server_time: u64,
}

/// `POST /agent/v1/step`: one step of the run, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub token: String,
    pub mac: String,
    /// `modules`, `network`, `rules`, `scanning`, `volume`, `file`, `unmount`, ...
    pub step: String,
    pub message: String,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RunResult {
    /// At least one file was quarantined or deleted, nothing failed.
    Remediated,
    /// Windows volumes were checked; nothing matched the rules.
    Clean,
    /// No Windows volume on this machine.
    NothingFound,
    /// A person must look (dirty or hibernated volume, locked BitLocker, ...).
    NeedsAttention,
    Failed,
    /// Restore mode (a campaign's rollback): quarantined files were put back.
    Restored,
}

/// One file the rules matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileRecord {
    pub volume: String,
    /// Path relative to the volume root, as found on disk.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Last-write time, seconds since the epoch.
    pub mtime: i64,
    pub rule_id: String,
    /// `quarantine`, `delete` or `report-only`.
    pub action: String,
    /// Where it went (relative to the volume root), for quarantine.
    pub quarantined_to: Option<String>,
}

/// One volume the agent looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeReport {
    /// Block device, e.g. `vda2`, `nvme0n1p3`.
    pub device: String,
    /// `ntfs`, `bitlocker`.
    pub kind: String,
    /// `remediated`, `clean`, `dirty-forced`, `dirty-skipped`, `hibernated`, `bitlocker-locked`,
    /// `mount-failed`, `not-windows`.
    pub status: String,
    pub detail: String,
    /// BitLocker key protectors found in the volume's metadata, as `GUID kind`.
    #[serde(default)]
    pub protectors: Vec<String>,
}

/// `POST /agent/v1/report`: the final result. `report_id` makes retries idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub token: String,
    pub mac: String,
    pub report_id: String,
    pub result: RunResult,
    pub reason: Option<String>,
    pub volumes: Vec<VolumeReport>,
    pub files: Vec<FileRecord>,
    pub rules_id: Option<String>,
    pub rules_version: Option<u64>,
    /// Milliseconds from agent start to this report.
    pub agent_ms: u64,
}

/// `POST /agent/v1/bitlocker-key`: the agent asks for the recovery password of a BitLocker
/// volume, naming the recovery-password protectors it read from the volume's own metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    pub token: String,
    pub mac: String,
    /// Block device, e.g. `vda3`.
    pub volume: String,
    /// The recovery-password protector GUIDs on that volume.
    pub protectors: Vec<String>,
}

/// The answer: 200 with the key, 202 with `waiting` (nothing escrowed yet: poll again), 403
/// or 409 with the reason (refused for this boot).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReply {
    pub protector_id: Option<String>,
    pub recovery_password: Option<String>,
    pub waiting: Option<String>,
    pub refused: Option<String>,
}

impl std::fmt::Debug for KeyReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReply")
            .field("protector_id", &self.protector_id)
            .field(
                "recovery_password",
                &self.recovery_password.as_ref().map(|_| "<hidden>"),
            )
            .field("waiting", &self.waiting)
            .field("refused", &self.refused)
            .finish()
    }
}
