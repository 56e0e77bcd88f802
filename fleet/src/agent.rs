//! The agent API's messages, shared by the recovery agent and the server.
use serde::{Deserialize, Serialize};

/// The step an agent sends when it starts looking for Windows volumes (host -> scanning).
pub const STEP_SCANNING: &str = "scanning";
/// The step an agent sends after it unlocked a BitLocker volume (host -> unlocked).
pub const STEP_UNLOCKED: &str = "unlocked";

/// `POST /agent/v1/hello`: the agent is up and says who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The per-boot token from the kernel command line.
    pub token: String,
    /// The MAC of the NIC the agent booted from.
    pub mac: String,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// SMBIOS serial number.
    pub serial: Option<String>,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// Whether Secure Boot is on (None: not a UEFI machine, or unknown).
    pub secure_boot: Option<bool>,
    /// Kernel lockdown mode (`none`, `integrity`, `confidentiality`), if known.
    pub lockdown: Option<String>,
    /// The agent's version.
    pub agent_version: String,
    /// The recovery kernel's release.
    pub kernel: String,
}

/// The server's answer to hello (over the pinned HTTPS channel: what it says, the agent may
/// act on; the kernel command line is not signed and decides nothing of this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The server's clock (seconds since the epoch), for machines whose RTC is wrong.
    pub server_time: u64,
    /// `remediate` or `restore` (a campaign's rollback).
    #[serde(default)]
    pub mode: Mode,
    /// In restore mode: exactly the files the server recorded as quarantined on this host,
    /// with their paths and hashes. Nothing else is moved, whatever the volume holds.
    #[serde(default)]
    pub restore: Vec<FileRecord>,
    /// SHA-256 (hex) of the rules document the server serves: the agent takes no other.
    #[serde(default)]
    pub rules_sha256: Option<String>,
    /// That document's version.
    #[serde(default)]
    pub rules_version: Option<u64>,
}

/// What the agent's run does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Find and quarantine what the rules name.
    #[default]
    Remediate,
    /// Put back what an earlier run quarantined (the list in the reply).
    Restore,
}

/// `POST /agent/v1/step`: one step of the run, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The per-boot token.
    pub token: String,
    /// The agent's MAC.
    pub mac: String,
    /// `modules`, `network`, `rules`, `scanning`, `volume`, `file`, `unmount`, ...
    pub step: String,
    /// What the step did, in words.
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
    /// The run failed.
    Failed,
    /// Restore mode (a campaign's rollback): quarantined files were put back.
    Restored,
    /// A read-only scan (rules of `inspect` entries only): the volumes were read, nothing
    /// was changed; the findings are for the Diagnosis.
    Inspected,
}

/// One file the rules matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileRecord {
    /// The volume's device (`sda2`, `dm-0`).
    pub volume: String,
    /// Path relative to the volume root, as found on disk.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Last-write time, seconds since the epoch.
    pub mtime: i64,
    /// The rule that matched.
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
    /// More about the status, in words.
    pub detail: String,
    /// BitLocker key protectors found in the volume's metadata, as `GUID kind`.
    #[serde(default)]
    pub protectors: Vec<String>,
    /// The Windows computer name in the volume's SYSTEM hive ("name on disk"). Whoever can
    /// write the disk chooses it: it is shown and searchable, never used to decide anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_name: Option<String>,
    /// Kernel crash dumps on the volume (`Windows\Minidump\*.dmp`, newest first, and
    /// `Windows\MEMORY.DMP`): their headers, read on the read-only mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crash_dumps: Vec<CrashDump>,
    /// The Windows version in the volume's SOFTWARE hive (read when the rules inspect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_version: Option<WindowsVersion>,
    /// Files the rules' `inspect` entries matched: their facts, read on the read-only mount;
    /// nothing on the volume changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inspected: Vec<InspectedFile>,
    /// What the System event log says about crashes and unexpected shutdowns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<EventLogScan>,
}

/// Most events of each kind a volume's report lists (the newest).
pub const MAX_EVENTS: usize = 8;

/// The System event log (`Windows\System32\winevt\Logs\System.evtx`), read on the read-only
/// mount: its newest bugcheck and unexpected-shutdown events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventLogScan {
    /// Relative to the volume root.
    pub path: String,
    /// How many records were read.
    pub records: u64,
    /// How many records could not be parsed (skipped).
    #[serde(default)]
    pub unreadable: u64,
    /// The newest events of the kinds looked for, newest first, at most [`MAX_EVENTS`] each.
    #[serde(default)]
    pub events: Vec<LogEvent>,
    /// Why the log could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event of the System log that bears on a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEvent {
    /// `bugcheck` (WER-SystemErrorReporting 1001: rebooted from a bugcheck),
    /// `kernel-power` (Kernel-Power 41: rebooted without a clean shutdown) or
    /// `unexpected-shutdown` (EventLog 6008).
    pub kind: String,
    /// The provider and the event ID, as the log names them.
    pub provider: String,
    /// See `provider`.
    pub event_id: u32,
    /// When it was logged, Unix seconds.
    pub time_unix: i64,
    /// The bugcheck code the event names (`0x00000050`), where it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bugcheck: Option<String>,
    /// Its parameters, hex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// The rest of what the event says (the dump file WER saved, ...), short.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Most crash dumps a volume's report lists.
pub const MAX_DUMPS: usize = 16;

/// Most inspected files a volume's report lists.
pub const MAX_INSPECTED: usize = 256;

/// What a volume's SOFTWARE hive says of its Windows (`Microsoft\Windows NT\CurrentVersion`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowsVersion {
    /// `ProductName` (Windows 11 still says "Windows 10" here: the build tells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// `DisplayVersion` (`23H2`), or `ReleaseId` on older Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_version: Option<String>,
    /// `CurrentBuild` (`22631`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<u32>,
    /// `UBR`, the update build revision (`3880`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubr: Option<u32>,
    /// `EditionID` (`Professional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
}

/// A file an `inspect` rule matched, as the agent found it (left in place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InspectedFile {
    /// Relative to the volume root, as on the disk.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its last-write time, Unix seconds.
    pub written_unix: i64,
    /// SHA-256 of its content, hex (empty when it was too large to hash: see `error`).
    pub sha256: String,
    /// Its first 16 bytes, hex.
    pub head: String,
    /// The rule that matched it.
    pub rule_id: String,
    /// The PE version resource, where the file has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<FileVersion>,
    /// Why a fact is missing (unreadable, too large to hash, damaged version resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A PE file's version resource (what the file says about itself).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileVersion {
    /// `CompanyName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// `ProductName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// `FileVersion` (the string), else the fixed file version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_version: Option<String>,
    /// `FileDescription`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A kernel crash dump's header, as the agent read it (nothing else of the dump leaves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CrashDump {
    /// Relative to the volume root (`Windows\Minidump\071924-8765-01.dmp`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its last-write time, Unix seconds.
    pub written_unix: i64,
    /// The bugcheck (stop) code, `0x00000050`.
    pub bugcheck: String,
    /// Its name where known (`PAGE_FAULT_IN_NONPAGED_AREA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bugcheck_name: Option<String>,
    /// Its four parameters, hex.
    #[serde(default)]
    pub parameters: Vec<String>,
    /// When Windows wrote the dump (its header's time; 64-bit dumps), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_time_unix: Option<i64>,
    /// The Windows build the dump names.
    #[serde(default)]
    pub build: u32,
    /// The kind of dump (`small (minidump)`, `full`, ...).
    #[serde(default)]
    pub kind: String,
    /// The driver the crash happened in, where a small (triage) dump names it: the module
    /// whose image holds the bugcheck's faulting address (`csagent.sys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Why the header could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /agent/v1/report`: the final result. `report_id` makes retries idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The per-boot token.
    pub token: String,
    /// The agent's MAC.
    pub mac: String,
    /// Idempotency key: a retried report with the same ID is recorded once.
    pub report_id: String,
    /// The outcome.
    pub result: RunResult,
    /// Why, for needs-attention, failed and restored.
    pub reason: Option<String>,
    /// Every volume looked at.
    pub volumes: Vec<VolumeReport>,
    /// Every file quarantined or restored.
    pub files: Vec<FileRecord>,
    /// The rules the run used.
    pub rules_id: Option<String>,
    /// Their version.
    pub rules_version: Option<u64>,
    /// Milliseconds from agent start to this report.
    pub agent_ms: u64,
}

/// Most characters of a short agent-supplied field (IDs, names, devices) kept.
pub const MAX_SHORT: usize = 128;
/// Most characters of a computer name kept (a DNS label; NetBIOS names have 15).
pub const MAX_NAME: usize = 63;
/// Most characters of a long agent-supplied field (paths, reasons, details) kept.
pub const MAX_TEXT: usize = 2048;
/// Most volumes and files of one report kept (each is on the host's timeline).
pub const MAX_ITEMS: usize = 256;

/// `s` cut to `max` characters, with `…` when cut.
fn cut(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push('…');
    }
}

impl Hello {
    /// Every agent-supplied string cut to its bound: what is stored is bounded, whatever the
    /// sender holds the token for.
    pub fn bound(&mut self) {
        for f in [
            &mut self.firmware,
            &mut self.agent_version,
            &mut self.kernel,
        ] {
            cut(f, MAX_SHORT);
        }
        for f in [&mut self.uuid, &mut self.serial, &mut self.lockdown]
            .into_iter()
            .flatten()
        {
            cut(f, MAX_SHORT);
        }
    }
}

impl Report {
    /// Every agent-supplied string cut to its bound and the lists to [`MAX_ITEMS`].
    pub fn bound(&mut self) {
        cut(&mut self.report_id, MAX_SHORT);
        if let Some(r) = &mut self.reason {
            cut(r, MAX_TEXT);
        }
        if let Some(r) = &mut self.rules_id {
            cut(r, MAX_SHORT);
        }
        self.volumes.truncate(MAX_ITEMS);
        for v in &mut self.volumes {
            for f in [&mut v.device, &mut v.kind, &mut v.status] {
                cut(f, MAX_SHORT);
            }
            cut(&mut v.detail, MAX_TEXT);
            v.protectors.truncate(16);
            if let Some(n) = &mut v.computer_name {
                *n = n.chars().filter(|c| !c.is_control()).collect();
                cut(n, MAX_NAME);
            }
            for p in &mut v.protectors {
                cut(p, MAX_SHORT);
            }
            v.crash_dumps.truncate(MAX_DUMPS);
            for d in &mut v.crash_dumps {
                cut(&mut d.path, MAX_TEXT);
                for f in [&mut d.bugcheck, &mut d.kind] {
                    cut(f, MAX_SHORT);
                }
                for n in [&mut d.bugcheck_name, &mut d.driver].into_iter().flatten() {
                    cut(n, MAX_SHORT);
                }
                d.parameters.truncate(4);
                for p in &mut d.parameters {
                    cut(p, MAX_SHORT);
                }
                if let Some(e) = &mut d.error {
                    cut(e, MAX_TEXT);
                }
            }
            if let Some(l) = &mut v.event_log {
                cut(&mut l.path, MAX_TEXT);
                if let Some(e) = &mut l.error {
                    cut(e, MAX_TEXT);
                }
                l.events.truncate(3 * MAX_EVENTS);
                for e in &mut l.events {
                    for f in [&mut e.kind, &mut e.provider] {
                        cut(f, MAX_SHORT);
                    }
                    if let Some(b) = &mut e.bugcheck {
                        cut(b, MAX_SHORT);
                    }
                    e.parameters.truncate(4);
                    for p in &mut e.parameters {
                        cut(p, MAX_SHORT);
                    }
                    cut(&mut e.detail, MAX_SHORT * 2);
                }
            }
            if let Some(w) = &mut v.windows_version {
                for f in [&mut w.product, &mut w.display_version, &mut w.edition]
                    .into_iter()
                    .flatten()
                {
                    cut(f, MAX_SHORT);
                }
            }
            v.inspected.truncate(MAX_INSPECTED);
            for f in &mut v.inspected {
                cut(&mut f.path, MAX_TEXT);
                for s in [&mut f.sha256, &mut f.head, &mut f.rule_id] {
                    cut(s, MAX_SHORT);
                }
                if let Some(e) = &mut f.error {
                    cut(e, MAX_TEXT);
                }
                if let Some(ver) = &mut f.version {
                    for s in [
                        &mut ver.company,
                        &mut ver.product,
                        &mut ver.file_version,
                        &mut ver.description,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        cut(s, MAX_SHORT);
                    }
                }
            }
        }
        self.files.truncate(MAX_ITEMS);
        for f in &mut self.files {
            for s in [&mut f.volume, &mut f.sha256, &mut f.rule_id, &mut f.action] {
                cut(s, MAX_SHORT);
            }
            cut(&mut f.path, MAX_TEXT);
            if let Some(q) = &mut f.quarantined_to {
                cut(q, MAX_TEXT);
            }
        }
    }
}

/// `POST /agent/v1/bitlocker-key`: the agent asks for the recovery password of a BitLocker
/// volume, naming the recovery-password protectors it read from the volume's own metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// The per-boot token.
    pub token: String,
    /// The agent's MAC.
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
    /// The protector whose key is released.
    pub protector_id: Option<String>,
    /// The recovery password (only on 200).
    pub recovery_password: Option<String>,
    /// Why the agent should poll again (202).
    pub waiting: Option<String>,
    /// Why the key is refused (403, 409).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_strings_are_bounded_before_they_are_stored() {
        let long = "x".repeat(100_000);
        let mut h = Hello {
            token: String::new(),
            mac: String::new(),
            uuid: Some(long.clone()),
            serial: None,
            firmware: long.clone(),
            secure_boot: None,
            lockdown: Some("é".repeat(500)),
            agent_version: "1".into(),
            kernel: long.clone(),
        };
        h.bound();
        assert_eq!(h.uuid.as_ref().unwrap().chars().count(), MAX_SHORT + 1);
        assert_eq!(h.firmware.chars().count(), MAX_SHORT + 1);
        assert_eq!(h.lockdown.as_ref().unwrap().chars().count(), MAX_SHORT + 1);
        assert_eq!(h.agent_version, "1");
        let file = FileRecord {
            volume: "sda2".into(),
            path: long.clone(),
            size: 1,
            sha256: "ab".into(),
            mtime: 0,
            rule_id: "r".into(),
            action: "quarantine".into(),
            quarantined_to: Some(long.clone()),
        };
        let mut r = Report {
            token: String::new(),
            mac: String::new(),
            report_id: long.clone(),
            result: RunResult::Failed,
            reason: Some(long.clone()),
            volumes: vec![VolumeReport {
                device: "sda3".into(),
                kind: "ntfs".into(),
                status: "clean".into(),
                detail: String::new(),
                protectors: vec![],
                computer_name: Some(format!("WKS\u{1b}[2J\n{long}")),
                crash_dumps: vec![],
                windows_version: None,
                inspected: vec![],
                event_log: None,
            }],
            files: vec![file; 10_000],
            rules_id: None,
            rules_version: None,
            agent_ms: 0,
        };
        r.bound();
        assert_eq!(r.files.len(), MAX_ITEMS);
        assert_eq!(r.files[0].path.chars().count(), MAX_TEXT + 1);
        assert_eq!(r.reason.unwrap().chars().count(), MAX_TEXT + 1);
        assert_eq!(r.report_id.chars().count(), MAX_SHORT + 1);
        // The disk's name: no control characters (a terminal escape, a newline), bounded.
        let n = r.volumes[0].computer_name.as_ref().unwrap();
        assert!(
            n.starts_with("WKS[2Jxxx") && n.chars().count() == MAX_NAME + 1,
            "{n}"
        );
    }
}
