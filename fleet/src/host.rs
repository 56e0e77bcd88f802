//! Host records and the guarded host state machine of the design.
use crate::Mac;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// CPU architecture a network-boot client announces (DHCP option 93, RFC 4578 and IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// 0: x86 BIOS.
    Bios,
    /// 6: x86 UEFI (32-bit).
    UefiIa32,
    /// 7 and 9: x64 UEFI (both are used for x64 in the field).
    UefiX64,
    /// 10: ARM 32-bit UEFI.
    UefiArm32,
    /// 11: ARM 64-bit UEFI.
    UefiArm64,
    /// 16: x64 UEFI HTTP boot.
    UefiHttpX64,
    /// Any other value; kept for the record.
    Other(u16),
}

impl Arch {
    /// The architecture from DHCP option 93 (RFC 4578 processor architecture type).
    pub fn from_option93(v: u16) -> Self {
        match v {
            0 => Self::Bios,
            6 => Self::UefiIa32,
            7 | 9 => Self::UefiX64,
            10 => Self::UefiArm32,
            11 => Self::UefiArm64,
            16 => Self::UefiHttpX64,
            n => Self::Other(n),
        }
    }
}

/// What kind of DHCP client sent a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "arch")]
pub enum ClientKind {
    /// Firmware PXE (option 60 `PXEClient`), not iPXE.
    Pxe(Arch),
    /// iPXE (option 77 `iPXE` or option 175 present), from ROM or chainloaded.
    Ipxe(Arch),
    /// UEFI HTTP boot (option 60 `HTTPClient`).
    HttpBoot(Arch),
    /// Windows DHCP client (vendor class `MSFT 5.0`): the host is back in Windows.
    Windows,
    /// Our own recovery agent.
    Agent,
    /// Anything else (an ordinary DHCP client).
    Other,
}

impl ClientKind {
    /// The kind in words, for timelines and the console ("PXE UefiX64", "Windows").
    pub fn label(self) -> String {
        match self {
            Self::Pxe(a) => format!("PXE {a:?}"),
            Self::Ipxe(a) => format!("iPXE {a:?}"),
            Self::HttpBoot(a) => format!("HTTP boot {a:?}"),
            Self::Windows => "Windows".into(),
            Self::Agent => "unbrick agent".into(),
            Self::Other => "other DHCP client".into(),
        }
    }
}

/// The states of the design's host state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum HostState {
    /// Never seen on the network (a host imported from the inventory).
    Unknown,
    /// Seen asking for an address or a boot file.
    Seen,
    /// Held in the waiting room (not approved, or its campaign wave is not open).
    Waiting,
    /// The recovery payload was handed out; the machine is loading it.
    Booting,
    /// The agent said hello.
    AgentUp,
    /// The agent is looking for Windows volumes.
    Scanning,
    /// A BitLocker volume was unlocked with a released key.
    Unlocked,
    /// The bad file was quarantined.
    Remediated,
    /// The agent found nothing to quarantine.
    Clean,
    /// A person must look (the reason says why).
    NeedsAttention(String),
    /// The run failed (the reason says why).
    Failed(String),
    /// The machine network-booted again after its run (its first reboot).
    Rebooted,
    /// Windows asked for an address after the run: the machine is back.
    Recovered,
    /// Remediated, but not seen back in Windows within the campaign's verification window.
    Unverified,
}

impl HostState {
    /// The state's name as the API, the console and the timeline show it (`needs-attention`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Seen => "seen",
            Self::Waiting => "waiting",
            Self::Booting => "booting",
            Self::AgentUp => "agent-up",
            Self::Scanning => "scanning",
            Self::Unlocked => "unlocked",
            Self::Remediated => "remediated",
            Self::Clean => "clean",
            Self::NeedsAttention(_) => "needs-attention",
            Self::Failed(_) => "failed",
            Self::Rebooted => "rebooted",
            Self::Recovered => "recovered",
            Self::Unverified => "unverified",
        }
    }

    /// The reason of `needs-attention` and `failed`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::NeedsAttention(r) | Self::Failed(r) => Some(r),
            _ => None,
        }
    }

    /// The agent finished its work on this host successfully: it must not get the payload again.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Self::Remediated | Self::Clean | Self::Rebooted | Self::Recovered | Self::Unverified
        )
    }

    /// Whether the state machine allows `self -> to` without an admin's explicit retry.
    pub fn allows(&self, to: &Self) -> bool {
        use HostState::*;
        if std::mem::discriminant(self) == std::mem::discriminant(to) && self.reason().is_none() {
            return true;
        }
        match (self, to) {
            (Unknown, _) => true,
            (Seen, Waiting | Booting | AgentUp) => true,
            (Waiting, Seen | Booting) => true,
            // A machine that rebooted mid-run (power cut, agent crash) PXE-boots again.
            (Booting | AgentUp | Scanning | Unlocked, Booting | Seen) => true,
            (Booting, AgentUp | Failed(_)) => true,
            (AgentUp, Scanning | NeedsAttention(_) | Failed(_) | Remediated | Clean) => true,
            (Scanning, Unlocked | Remediated | Clean | NeedsAttention(_) | Failed(_)) => true,
            (Unlocked, Remediated | Clean | NeedsAttention(_) | Failed(_)) => true,
            (Remediated | Clean, Rebooted | Recovered | Failed(_) | Unverified) => true,
            (Rebooted, Recovered | Failed(_) | Unverified) => true,
            // Seen in Windows after the window closed, or looping after all.
            (Unverified, Recovered | Failed(_)) => true,
            // needs-attention may resolve itself (a key pasted by an admin, the agent waiting).
            (NeedsAttention(_), Unlocked | Remediated | Clean | Failed(_) | NeedsAttention(_)) => {
                true
            }
            _ => false,
        }
    }
}

/// A state change the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {mac}: {from} -> {to} is not an allowed transition")]
pub struct TransitionError {
    /// The host.
    pub mac: Mac,
    /// The state it is in.
    pub from: &'static str,
    /// The state it was asked to move to.
    pub to: &'static str,
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum EventSource {
    /// The DHCP server.
    Dhcp,
    /// The TFTP server.
    Tftp,
    /// The HTTP server (boot scripts, artefacts).
    Http,
    /// The recovery agent.
    Agent,
    /// An admin (console, API, CLI).
    Admin,
    /// A policy (campaign, escrow, timeouts).
    Policy,
}

impl std::fmt::Display for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dhcp => "dhcp",
            Self::Tftp => "tftp",
            Self::Http => "http",
            Self::Agent => "agent",
            Self::Admin => "admin",
            Self::Policy => "policy",
        })
    }
}

/// One entry of a host's append-only history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Who caused it.
    pub source: EventSource,
    /// Short machine-readable kind, e.g. `dhcp-discover`, `tftp-done`, `state`.
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
}

/// Everything unbrick knows about one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's MAC address (the record's key).
    pub mac: Mac,
    /// SMBIOS UUID (DHCP option 97 or the agent).
    #[serde(default)]
    pub uuid: Option<String>,
    /// SMBIOS serial number (the agent).
    #[serde(default)]
    pub serial: Option<String>,
    /// Host name, from the inventory.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The Windows computer name the agent read from the disk's SYSTEM hive ("name on disk"),
    /// from the last undisputed report that had one. Whoever can write the disk chooses it:
    /// shown and searchable, never used to decide a boot or a key release.
    #[serde(default)]
    pub name_on_disk: Option<String>,
    /// Site, from the inventory.
    #[serde(default)]
    pub site: Option<String>,
    /// Tags, from the inventory (`canary` puts a host in the first wave).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Recovery-password protector IDs of the host's BitLocker volumes, from an admin's import
    /// (never from the agent).
    #[serde(default)]
    pub protector_ids: Vec<String>,
    /// Free text an admin keeps on the host.
    #[serde(default)]
    pub notes: String,
    /// Where the host is in the recovery.
    pub state: HostState,
    /// Since when it is in that state.
    pub state_since_ms: u64,
    /// When it was first seen or imported.
    pub first_seen_ms: u64,
    /// When it was last seen on the network.
    pub last_seen_ms: u64,
    /// What kind of client it last was (PXE, iPXE, Windows, ...).
    #[serde(default)]
    pub last_kind: Option<ClientKind>,
    /// The IPv4 address it last used.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// How many times the payload was handed out.
    #[serde(default)]
    pub payload_boots: u32,
    /// SHA-256 (hex) of the last per-boot token issued; the agent proves itself with the token,
    /// which is never stored.
    #[serde(default)]
    pub boot_token_sha256: Option<String>,
    /// The machine the outstanding per-boot token was issued to (its address and the layer-2
    /// evidence for it).
    #[serde(default)]
    pub boot_peer: Option<BootPeer>,
    /// The per-boot token was spent: the agent's final report came with it.
    #[serde(default)]
    pub token_spent: bool,
    /// The outstanding token is for a rollback run (the agent learns it in the hello reply).
    #[serde(default)]
    pub restore_run: bool,
    /// Two machines claimed this MAC for one grant: why. Nothing is released to the host
    /// automatically until an admin retries it.
    #[serde(default)]
    pub claim_conflict: Option<String>,
    /// An admin approved the release of this host's BitLocker key in this campaign scope
    /// (campaigns with `key_release = confirm`, or a disputed claim).
    #[serde(default)]
    pub key_release_approved: Option<String>,
    /// Recovery-password protector IDs the agent reported on the disk (shown to admins; never
    /// used to decide a release, which only the imported `protector_ids` inform).
    #[serde(default)]
    pub reported_protectors: Vec<String>,
    /// Its management controller (AMT, Redfish, IPMI, Wake-on-LAN), from an admin's import;
    /// the secret only sealed.
    #[serde(default)]
    pub controller: Option<crate::bmc::Controller>,
    /// When the per-boot token was issued (tokens expire).
    #[serde(default)]
    pub boot_token_issued_ms: u64,
    /// The agent's last final report (its token removed).
    #[serde(default)]
    pub last_report: Option<crate::agent::Report>,
    /// An admin approved this host for the payload (matters when the site requires approval).
    #[serde(default)]
    pub approved: bool,
    /// An admin said: leave this machine alone (it boots locally, never gets the payload).
    #[serde(default)]
    pub skipped: bool,
    /// How many final reports the agent sent (retries of one report count once).
    #[serde(default)]
    pub reports: u32,
    /// When this host last started a network boot (a DHCP DISCOVER from PXE or iPXE).
    #[serde(default)]
    pub netboot_ms: u64,
    /// Recovery-password protector IDs the agent is waiting for a key for (none escrowed): the
    /// console shows them and lets an admin paste the key.
    #[serde(default)]
    pub bitlocker_waiting: Vec<String>,
    /// A BitLocker recovery password left escrow for this host: rotate it in Windows.
    #[serde(default)]
    pub rotate_bitlocker_key: bool,
}

impl HostRecord {
    /// A new record for `mac`, first seen at `now_ms`, in state `unknown`.
    pub fn new(mac: Mac, now_ms: u64) -> Self {
        Self {
            mac,
            uuid: None,
            serial: None,
            hostname: None,
            name_on_disk: None,
            site: None,
            tags: Vec::new(),
            protector_ids: Vec::new(),
            notes: String::new(),
            state: HostState::Unknown,
            state_since_ms: now_ms,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            last_kind: None,
            ip: None,
            payload_boots: 0,
            boot_token_sha256: None,
            boot_peer: None,
            token_spent: false,
            restore_run: false,
            claim_conflict: None,
            key_release_approved: None,
            reported_protectors: Vec::new(),
            controller: None,
            boot_token_issued_ms: 0,
            last_report: None,
            approved: false,
            skipped: false,
            reports: 0,
            netboot_ms: 0,
            bitlocker_waiting: Vec::new(),
            rotate_bitlocker_key: false,
        }
    }

    /// Moves to `to` if the state machine allows it; returns whether the state changed.
    pub fn transition(&mut self, to: HostState, now_ms: u64) -> Result<bool, TransitionError> {
        if self.state == to {
            return Ok(false);
        }
        if !self.state.allows(&to) {
            return Err(TransitionError {
                mac: self.mac,
                from: self.state.name(),
                to: to.name(),
            });
        }
        self.state = to;
        self.state_since_ms = now_ms;
        Ok(true)
    }

    /// An admin's retry: back to `seen`, whatever the state; an earlier skip is lifted and the
    /// host counts as approved (the admin asked for the payload).
    pub fn reset_for_retry(&mut self, now_ms: u64) {
        self.state = HostState::Seen;
        self.state_since_ms = now_ms;
        self.skipped = false;
        self.approved = true;
        self.claim_conflict = None;
    }
}

/// Who a per-boot token was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPeer {
    /// The address the boot configuration was fetched from.
    pub ip: std::net::IpAddr,
    /// The hardware address the server's neighbour table gave for it, when it has a layer-2
    /// view of the requester.
    #[serde(default)]
    pub l2: Option<Mac>,
    /// What bound the request to the MAC (`layer 2`, `lease`, `first claim`).
    pub evidence: String,
}

impl std::fmt::Display for BootPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.l2 {
            Some(m) => write!(f, "IP {} (MAC {m})", self.ip),
            None => write!(f, "IP {} (MAC not seen)", self.ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostState::*;

    #[test]
    fn arch_table() {
        for (v, a) in [
            (0, Arch::Bios),
            (6, Arch::UefiIa32),
            (7, Arch::UefiX64),
            (9, Arch::UefiX64),
            (10, Arch::UefiArm32),
            (11, Arch::UefiArm64),
            (16, Arch::UefiHttpX64),
            (99, Arch::Other(99)),
        ] {
            assert_eq!(Arch::from_option93(v), a);
        }
    }

    #[test]
    fn happy_path_and_guards() {
        let mut h = HostRecord::new("52:54:00:00:00:01".parse().unwrap(), 0);
        for (i, s) in [
            Seen, Booting, AgentUp, Scanning, Remediated, Rebooted, Recovered,
        ]
        .into_iter()
        .enumerate()
        {
            assert!(h.transition(s, i as u64 + 1).unwrap());
        }
        assert_eq!(h.state_since_ms, 7);
        assert!(!h.transition(Recovered, 9).unwrap());
        assert!(
            h.transition(Booting, 10).is_err(),
            "a recovered host never goes back to the payload by itself"
        );
        h.reset_for_retry(11);
        assert_eq!(h.state, Seen);
        let mut h = HostRecord::new("52:54:00:00:00:02".parse().unwrap(), 0);
        h.transition(Seen, 1).unwrap();
        assert!(
            h.transition(Remediated, 2).is_err(),
            "cannot be remediated without an agent"
        );
        h.transition(Booting, 2).unwrap();
        h.transition(Failed("no disk".into()), 3).unwrap();
        assert!(
            h.transition(Failed("other".into()), 4).is_err(),
            "a failure is final until retried"
        );
    }
}
