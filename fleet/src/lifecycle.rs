//! Every change to a host's state, in one place: what the server observed (DHCP, boot-config
//! fetches, the agent's messages), what a policy decided (campaign timeouts, the escrow's
//! waiting room) and what an admin asked. [`apply`] is the one transition function; the
//! store's writer (`fleet-service`) calls it inside its read-modify-write and records the note
//! it returns on the host's timeline.
//!
//! The guard is [`HostState::allows`]; an admin's retry and mark-done and a rollback run
//! override it on purpose (an admin outranks the state machine).
use crate::agent::{Report, RunResult};
use crate::{ClientKind, EventSource, HostRecord, HostState};
use std::net::Ipv4Addr;

/// Network-boot DISCOVERs further apart than this are separate boots (firmware and iPXE
/// retransmit within seconds during one boot; Windows crashing and rebooting takes longer).
pub const NEW_BOOT_GAP_MS: u64 = 20_000;

/// An admin's action on one host (forgetting a host removes it and is not a state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Allow the payload (when the site requires approval).
    Approve,
    /// Run the payload again on the next network boot, whatever happened before.
    Retry,
    /// Leave the machine alone: it boots locally and never gets the payload.
    Skip,
    /// An admin fixed it by other means: recovered.
    MarkDone,
}

/// A DHCP packet from the host (retransmissions within a boot are collapsed before this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpSeen<'a> {
    /// What the client said it is (options 60/77/93/97/175).
    pub kind: ClientKind,
    /// A DISCOVER (a boot starts with one; a REQUEST may renew a lease).
    pub discover: bool,
    /// SMBIOS UUID from option 97, when sent.
    pub uuid: Option<&'a str>,
    /// The address the client has or was given.
    pub ip: Option<Ipv4Addr>,
    /// What the frame's Ethernet source says, where the server sees layer 2.
    pub l2: Layer2,
}

/// A DHCP packet's frame, as the server's layer-2 witness saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layer2 {
    /// The Ethernet source is the MAC the packet names (chaddr).
    Match,
    /// The Ethernet source is another MAC: the packet speaks for a machine it is not.
    Mismatch(crate::Mac),
    /// No layer-2 view (behind a relay, no packet socket, or not looked at).
    #[default]
    Unseen,
}

/// Something that happened to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// A DHCP packet.
    Dhcp(DhcpSeen<'a>),
    /// The host fetched its boot script or grub configuration (the address it came from is
    /// not taken as the host's: a request does not prove who sent it).
    ConfigFetched,
    /// The boot policy sent the host to the waiting room.
    WaitingRoom,
    /// The recovery payload was handed out with a fresh per-boot token.
    PayloadIssued {
        /// How it went out ("iPXE script", "grub config").
        via: &'a str,
        /// SHA-256 (hex) of the per-boot token put on the kernel command line.
        token_sha256: &'a str,
        /// A rollback run, which an admin asked for whatever the host's state.
        restore: bool,
        /// The machine it went to and what bound it to the MAC.
        peer: &'a crate::host::BootPeer,
    },
    /// Two machines claimed the host's MAC for one grant: the host needs attention and gets
    /// no key automatically until an admin retries it.
    ClaimConflict {
        /// "two machines claimed MAC X: IP a, IP b".
        why: &'a str,
    },
    /// The agent said hello (authenticated by its token).
    AgentHello {
        /// SMBIOS UUID the agent read.
        uuid: Option<&'a str>,
        /// SMBIOS serial number the agent read.
        serial: Option<&'a str>,
    },
    /// The agent reported a step (`scanning`, `unlocked`; other steps change no state).
    AgentStep {
        /// The step's name.
        step: &'a str,
    },
    /// The agent's final report (its token already cleared).
    AgentReport(&'a Report),
    /// A released BitLocker key: the key should be rotated, the agent waits no more.
    KeyReleased,
    /// The agent waits for keys no one escrowed.
    KeyWaiting {
        /// The protector IDs nothing is escrowed for.
        missing: &'a [String],
        /// What the admin is told.
        reason: &'a str,
    },
    /// A state decided by a policy (a campaign's host timeout or verification window).
    Decided {
        /// The state to move to.
        to: HostState,
        /// Why, for the timeline.
        why: &'a str,
    },
    /// An admin approved the release of the host's BitLocker key in a campaign scope.
    KeyApproved {
        /// The campaign (and phase) the approval holds for.
        scope: &'a str,
        /// Who approved it.
        actor: &'a str,
    },
    /// An admin's action.
    Admin {
        /// Which.
        action: AdminAction,
        /// Who asked, for the timeline.
        actor: &'a str,
    },
}

/// What [`apply`] did, for the host's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Who the event is attributed to.
    pub source: EventSource,
    /// The event kind (`state`, `payload`, `admin`).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
    /// The admin who asked, for an admin's action.
    pub by: Option<String>,
}

impl Note {
    /// The text for the host's timeline: the message, and who asked when an admin did.
    pub fn text(&self) -> String {
        match &self.by {
            Some(actor) => format!("{} (by {actor})", self.message),
            None => self.message.clone(),
        }
    }
}

impl Input<'_> {
    fn source(&self) -> EventSource {
        match self {
            Input::Dhcp(_) => EventSource::Dhcp,
            Input::ConfigFetched
            | Input::ClaimConflict { .. }
            | Input::WaitingRoom
            | Input::PayloadIssued { .. }
            | Input::Decided { .. }
            | Input::KeyWaiting { .. } => EventSource::Policy,
            Input::AgentHello { .. }
            | Input::AgentStep { .. }
            | Input::AgentReport(_)
            | Input::KeyReleased => EventSource::Agent,
            Input::Admin { .. } | Input::KeyApproved { .. } => EventSource::Admin,
        }
    }
}

/// The reason a host whose last run was a read-only scan shows.
pub const SCANNED: &str =
    "scanned read-only, nothing changed: see the Diagnosis page, sign a rule, start its campaign";

/// The state an agent's final report moves the host to.
pub fn report_state(rep: &Report) -> HostState {
    let reason = rep.reason.clone().unwrap_or_default();
    match rep.result {
        RunResult::Remediated => HostState::Remediated,
        // Rolled back: the machine is as it was before the campaign, so a person must look.
        RunResult::Restored => HostState::NeedsAttention(format!(
            "rolled back: {}",
            if reason.is_empty() {
                "quarantined files restored"
            } else {
                &reason
            }
        )),
        RunResult::Clean | RunResult::NothingFound => HostState::Clean,
        // Still broken: a scan only looked. Not done, so the campaign of the rule drafted from
        // it takes the host; until then it waits (the default policy's waiting room).
        RunResult::Inspected => HostState::NeedsAttention(SCANNED.into()),
        RunResult::NeedsAttention => HostState::NeedsAttention(reason),
        RunResult::Failed => HostState::Failed(reason),
    }
}

/// Sets the state without the guard (an admin's override, a rollback run, and the observations
/// that the guard allows anyway).
fn force(h: &mut HostRecord, to: HostState, now_ms: u64) {
    h.state = to;
    h.state_since_ms = now_ms;
}

/// A guarded move: `"from -> to"` (`": why"` after it when given), nothing when already there,
/// or why the state was kept.
fn guarded(h: &mut HostRecord, to: HostState, why: Option<&str>, now_ms: u64) -> Option<String> {
    let from = h.state.name();
    match (h.transition(to.clone(), now_ms), why) {
        (Ok(true), None) => Some(format!("{from} -> {}", to.name())),
        (Ok(true), Some(why)) => Some(format!("{from} -> {}: {why}", to.name())),
        (Ok(false), _) => None,
        // Late or repeated messages must not fail the sender; the refusal is recorded.
        (Err(e), None) => Some(format!("kept {from}: {e}")),
        (Err(e), Some(why)) => Some(format!("kept {from}: {e} ({why})")),
    }
}

/// Applies `input` to `h` at `now_ms`: the one place a host's state changes. Returns what to
/// record on the host's timeline, if anything.
pub fn apply(h: &mut HostRecord, input: &Input<'_>, now_ms: u64) -> Option<Note> {
    let note = |kind: &'static str, message: String| Note {
        source: input.source(),
        kind,
        message,
        by: None,
    };
    match input {
        Input::Dhcp(d) => dhcp(h, d, now_ms).map(|m| note("state", m)),
        Input::ConfigFetched => {
            h.last_seen_ms = now_ms;
            if h.state == HostState::Unknown {
                force(h, HostState::Seen, now_ms);
            }
            None
        }
        Input::WaitingRoom => {
            if h.state != HostState::Waiting && h.state.allows(&HostState::Waiting) {
                let from = h.state.name();
                force(h, HostState::Waiting, now_ms);
                return Some(note("state", format!("{from} -> waiting")));
            }
            None
        }
        Input::PayloadIssued {
            via,
            token_sha256,
            restore,
            peer,
        } => {
            h.boot_token_sha256 = Some((*token_sha256).to_string());
            h.boot_token_issued_ms = now_ms;
            h.token_spent = false;
            h.restore_run = *restore;
            h.boot_peer = Some((*peer).clone());
            h.payload_boots += 1;
            let moved = if *restore && h.state != HostState::Booting {
                let from = h.state.name();
                force(h, HostState::Booting, now_ms);
                format!("{from} -> booting (restore mode)")
            } else {
                match h.transition(HostState::Booting, now_ms) {
                    Ok(true) => "-> booting".into(),
                    Ok(false) => String::new(),
                    Err(e) => format!("(state kept: {e})"),
                }
            };
            Some(note(
                "payload",
                format!(
                    "recovery payload issued via {via} to {peer}, bound by {} {moved}",
                    peer.evidence
                ),
            ))
        }
        Input::ClaimConflict { why } => {
            h.claim_conflict = Some((*why).to_string());
            let from = h.state.name();
            force(h, HostState::NeedsAttention((*why).to_string()), now_ms);
            Some(note(
                "claim-conflict",
                format!("{from} -> needs-attention: {why}; no key is released automatically to this host until an admin retries it"),
            ))
        }
        Input::AgentHello { uuid, serial } => {
            if let Some(u) = uuid {
                h.uuid = Some((*u).to_string());
            }
            if let Some(s) = serial {
                h.serial = Some((*s).to_string());
            }
            guarded(h, HostState::AgentUp, None, now_ms).map(|m| note("state", m))
        }
        Input::AgentStep { step } => {
            let to = match *step {
                crate::agent::STEP_SCANNING => HostState::Scanning,
                // A BitLocker volume was unlocked with a released key.
                crate::agent::STEP_UNLOCKED => HostState::Unlocked,
                _ => return None,
            };
            guarded(h, to, None, now_ms).map(|m| note("state", m))
        }
        Input::AgentReport(rep) => {
            h.last_report = Some((*rep).clone());
            h.reports += 1;
            // The token ends with the final report.
            h.token_spent = true;
            // The run is over: the agent no longer waits for a key.
            h.bitlocker_waiting.clear();
            // The recovery-password protectors the disk carries, for an admin to look the key
            // up by; never what a release is decided on (the agent's word is not inventory).
            for v in &rep.volumes {
                for p in &v.protectors {
                    if let Some(id) = p
                        .strip_suffix(" recovery password")
                        .and_then(|p| p.split_whitespace().next())
                    {
                        if !h.reported_protectors.iter().any(|x| x == id)
                            && h.reported_protectors.len() < 16
                        {
                            h.reported_protectors.push(id.chars().take(64).collect());
                        }
                    }
                }
            }
            if let Some(why) = &h.claim_conflict {
                // Whose report this is cannot be told: it changes nothing.
                return Some(note(
                    "state",
                    format!(
                        "kept {}: report of a disputed claim ({why}) recorded, not acted on",
                        h.state.name()
                    ),
                ));
            }
            if let Some(n) = rep.volumes.iter().find_map(|v| v.computer_name.as_ref()) {
                h.name_on_disk = Some(n.clone());
            }
            guarded(h, report_state(rep), None, now_ms).map(|m| note("state", m))
        }
        Input::KeyReleased => {
            h.rotate_bitlocker_key = true;
            h.bitlocker_waiting.clear();
            None
        }
        Input::KeyWaiting { missing, reason } => {
            h.bitlocker_waiting = missing.to_vec();
            guarded(
                h,
                HostState::NeedsAttention((*reason).to_string()),
                Some("agent waits for a key"),
                now_ms,
            )
            .map(|m| note("state", m))
        }
        Input::Decided { to, why } => {
            guarded(h, to.clone(), Some(why), now_ms).map(|m| note("state", m))
        }
        Input::KeyApproved { scope, actor } => {
            let message = if h.key_release_approved.as_deref() == Some(*scope) {
                format!("key release already approved in campaign {scope}")
            } else {
                h.key_release_approved = Some((*scope).to_string());
                format!("BitLocker key release approved in campaign {scope}")
            };
            Some(Note {
                by: Some((*actor).to_string()),
                ..note("admin", message)
            })
        }
        Input::Admin { action, actor } => {
            let (kind, message) = admin(h, *action, now_ms);
            Some(Note {
                by: Some((*actor).to_string()),
                ..note(kind, message)
            })
        }
    }
}

fn admin(h: &mut HostRecord, action: AdminAction, now_ms: u64) -> (&'static str, String) {
    match action {
        AdminAction::Approve => (
            "admin",
            if h.approved {
                "already approved".into()
            } else {
                h.approved = true;
                "approved for the recovery payload".into()
            },
        ),
        AdminAction::Retry => {
            let from = h.state.name();
            h.reset_for_retry(now_ms);
            (
                "state",
                format!("{from} -> seen: the payload runs again on the next network boot"),
            )
        }
        AdminAction::Skip => {
            h.skipped = true;
            (
                "admin",
                "skipped: boots locally, never gets the payload".into(),
            )
        }
        AdminAction::MarkDone => {
            let from = h.state.name();
            force(h, HostState::Recovered, now_ms);
            (
                "state",
                format!("{from} -> recovered (marked done by hand)"),
            )
        }
    }
}

/// A DHCP packet: the host is seen; Windows asking for an address after a run means the fix
/// worked; network-booting again after a run means it did not.
fn dhcp(h: &mut HostRecord, d: &DhcpSeen<'_>, now_ms: u64) -> Option<String> {
    h.last_seen_ms = now_ms;
    h.last_kind = Some(d.kind);
    if let Some(u) = d.uuid {
        h.uuid = Some(u.to_string());
    }
    if let Some(ip) = d.ip {
        h.ip = Some(ip);
    }
    let mut changed = None;
    if h.state == HostState::Unknown {
        force(h, HostState::Seen, now_ms);
        changed = Some("unknown -> seen".to_string());
    }
    // A remediated host that asks for an address as Windows is back: recovered, unless the
    // frame came from another machine.
    if d.kind == ClientKind::Windows
        && matches!(
            h.state,
            HostState::Remediated | HostState::Clean | HostState::Rebooted | HostState::Unverified
        )
    {
        let from = h.state.name();
        match d.l2 {
            Layer2::Mismatch(src) => {
                changed = Some(format!(
                    "kept {from}: a Windows DHCP request for {} came from Ethernet source {src}; not taken as the host's return",
                    h.mac
                ));
            }
            l2 => {
                force(h, HostState::Recovered, now_ms);
                changed = Some(format!(
                    "{from} -> recovered (Windows DHCP seen; {})",
                    if l2 == Layer2::Match {
                        "Ethernet source = chaddr"
                    } else {
                        "no layer-2 view"
                    }
                ));
            }
        }
    }
    // A host whose run finished and that network-boots again: the first time it is the reboot
    // after the run; a later boot (not a retransmission within the same boot) without Windows in
    // between means it still loops.
    let netboot = matches!(
        d.kind,
        ClientKind::Pxe(_) | ClientKind::Ipxe(_) | ClientKind::HttpBoot(_)
    ) && d.discover;
    if netboot {
        let new_boot = now_ms.saturating_sub(h.netboot_ms) >= NEW_BOOT_GAP_MS;
        match h.state {
            HostState::Remediated | HostState::Clean => {
                let from = h.state.name();
                force(h, HostState::Rebooted, now_ms);
                changed = Some(format!("{from} -> rebooted (network boot after the run)"));
            }
            HostState::Rebooted | HostState::Unverified if new_boot => {
                let from = h.state.name();
                force(
                    h,
                    HostState::Failed("still boot-looping after remediation".into()),
                    now_ms,
                );
                changed = Some(format!(
                    "{from} -> failed: still boot-looping after remediation (network boot again, no Windows seen)"
                ));
            }
            _ => {}
        }
        h.netboot_ms = now_ms;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::VolumeReport;
    use crate::{Arch, Mac};

    const T: u64 = 1_000_000;

    static PEER: std::sync::LazyLock<crate::host::BootPeer> =
        std::sync::LazyLock::new(|| crate::host::BootPeer {
            ip: std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            l2: Some(Mac([2, 0, 0, 0, 0, 1])),
            evidence: "layer 2".into(),
        });

    fn host(state: HostState) -> HostRecord {
        let mut h = HostRecord::new(Mac([2, 0, 0, 0, 0, 1]), 0);
        h.state = state;
        h
    }

    fn pxe(discover: bool) -> Input<'static> {
        Input::Dhcp(DhcpSeen {
            kind: ClientKind::Pxe(Arch::UefiX64),
            discover,
            uuid: None,
            ip: None,
            l2: Layer2::Unseen,
        })
    }

    fn windows() -> Input<'static> {
        windows_from(Layer2::Match)
    }

    fn windows_from(l2: Layer2) -> Input<'static> {
        Input::Dhcp(DhcpSeen {
            kind: ClientKind::Windows,
            discover: true,
            uuid: None,
            ip: Some(Ipv4Addr::new(10, 0, 0, 9)),
            l2,
        })
    }

    fn report(result: RunResult, reason: Option<&str>) -> Report {
        Report {
            mac: "02:00:00:00:00:01".into(),
            token: String::new(),
            report_id: "r1".into(),
            result,
            reason: reason.map(str::to_string),
            volumes: vec![VolumeReport {
                device: "sda2".into(),
                kind: "ntfs".into(),
                status: "remediated".into(),
                detail: String::new(),
                protectors: vec![
                    "{AAAAAAAA-0000-0000-0000-000000000001} recovery password".into(),
                    "{AAAAAAAA-0000-0000-0000-000000000002} TPM".into(),
                ],
                computer_name: Some("WKS-0042".into()),
                crash_dumps: vec![],
                windows_version: None,
                inspected: vec![],
                event_log: None,
            }],
            files: vec![],
            rules_id: None,
            rules_version: None,
            agent_ms: 10,
        }
    }

    /// A read-only scan leaves the host not done: it waits instead of being scanned at every
    /// boot loop, and a campaign of the drafted rule takes it (its gate waits for that run:
    /// neither a success nor a failure yet).
    #[test]
    fn a_scanned_host_is_still_broken_and_waits() {
        use crate::policy::{BootDecision, BootPolicy, BootQuery, DefaultPolicy};
        let rep = report(RunResult::Inspected, None);
        let mut h = HostRecord::new("02:00:00:00:00:01".parse().unwrap(), 0);
        h.state = report_state(&rep);
        h.last_report = Some(rep);
        assert_eq!(h.state, HostState::NeedsAttention(SCANNED.into()));
        assert!(!h.state.is_done());
        let q = BootQuery {
            mac: h.mac,
            kind: ClientKind::Pxe(Arch::Bios),
            now_ms: 0,
            issue: false,
        };
        assert!(matches!(
            DefaultPolicy::default().decide(&q, Some(&h)),
            BootDecision::WaitingRoom { reason } if reason.contains("scanned")
        ));
        assert_eq!(
            crate::campaign::outcome(&h, false),
            crate::campaign::Outcome::Pending
        );
        // Once a later run remediates it, it is an ordinary host again.
        let rep = report(RunResult::Remediated, None);
        h.state = report_state(&rep);
        h.last_report = Some(rep);
        assert!(!crate::policy::scanned(&h));
    }

    /// The observations' table: (state before, input, state after, note).
    #[test]
    fn observation_table() {
        use HostState::*;
        let rep_ok = report(RunResult::Remediated, None);
        let rep_restored = report(RunResult::Restored, None);
        let rep_failed = report(RunResult::Failed, Some("disk"));
        let failed_loop = Failed("still boot-looping after remediation".into());
        let cases: Vec<(HostState, Input<'_>, HostState, Option<&str>)> = vec![
            (Unknown, pxe(true), Seen, Some("unknown -> seen")),
            (Seen, pxe(true), Seen, None),
            (
                Remediated,
                windows(),
                Recovered,
                Some("remediated -> recovered (Windows DHCP seen; Ethernet source = chaddr)"),
            ),
            (
                Clean,
                windows(),
                Recovered,
                Some("clean -> recovered (Windows DHCP seen; Ethernet source = chaddr)"),
            ),
            (
                Unverified,
                windows_from(Layer2::Unseen),
                Recovered,
                Some("unverified -> recovered (Windows DHCP seen; no layer-2 view)"),
            ),
            (
                Remediated,
                windows_from(Layer2::Mismatch(Mac([2, 0, 0, 0, 0, 0x99]))),
                Remediated,
                Some("kept remediated: a Windows DHCP request for 02:00:00:00:00:01 came from Ethernet source 02:00:00:00:00:99; not taken as the host's return"),
            ),
            (Booting, windows(), Booting, None),
            (
                Remediated,
                pxe(true),
                Rebooted,
                Some("remediated -> rebooted (network boot after the run)"),
            ),
            (Remediated, pxe(false), Remediated, None),
            (
                Rebooted,
                pxe(true),
                failed_loop.clone(),
                Some("rebooted -> failed: still boot-looping after remediation (network boot again, no Windows seen)"),
            ),
            (Unknown, Input::ConfigFetched, Seen, None),
            (Seen, Input::WaitingRoom, Waiting, Some("seen -> waiting")),
            (Waiting, Input::WaitingRoom, Waiting, None),
            (Remediated, Input::WaitingRoom, Remediated, None),
            (
                Seen,
                Input::PayloadIssued { via: "iPXE script", token_sha256: "t", restore: false, peer: &PEER },
                Booting,
                Some("recovery payload issued via iPXE script to IP 10.0.0.5 (MAC 02:00:00:00:00:01), bound by layer 2 -> booting"),
            ),
            (
                Recovered,
                Input::PayloadIssued { via: "grub config", token_sha256: "t", restore: true, peer: &PEER },
                Booting,
                Some("recovery payload issued via grub config to IP 10.0.0.5 (MAC 02:00:00:00:00:01), bound by layer 2 recovered -> booting (restore mode)"),
            ),
            (
                Recovered,
                Input::PayloadIssued { via: "grub config", token_sha256: "t", restore: false, peer: &PEER },
                Recovered,
                Some("recovery payload issued via grub config to IP 10.0.0.5 (MAC 02:00:00:00:00:01), bound by layer 2 (state kept: host 02:00:00:00:00:01: recovered -> booting is not an allowed transition)"),
            ),
            (
                Booting,
                Input::AgentHello { uuid: Some("u"), serial: None },
                AgentUp,
                Some("booting -> agent-up"),
            ),
            (AgentUp, Input::AgentStep { step: "scanning" }, Scanning, Some("agent-up -> scanning")),
            (Scanning, Input::AgentStep { step: "unlocked" }, Unlocked, Some("scanning -> unlocked")),
            (Scanning, Input::AgentStep { step: "mounting" }, Scanning, None),
            (Scanning, Input::AgentReport(&rep_ok), Remediated, Some("scanning -> remediated")),
            (
                Scanning,
                Input::AgentReport(&rep_restored),
                NeedsAttention("rolled back: quarantined files restored".into()),
                Some("scanning -> needs-attention"),
            ),
            (Scanning, Input::AgentReport(&rep_failed), Failed("disk".into()), Some("scanning -> failed")),
            (
                Seen,
                Input::AgentReport(&rep_ok),
                Seen,
                Some("kept seen: host 02:00:00:00:00:01: seen -> remediated is not an allowed transition"),
            ),
            (
                Booting,
                Input::Decided { to: Failed("timed out".into()), why: "host timeout" },
                Failed("timed out".into()),
                Some("booting -> failed: host timeout"),
            ),
            (
                AgentUp,
                Input::KeyWaiting { missing: &[], reason: "no key" },
                NeedsAttention("no key".into()),
                Some("agent-up -> needs-attention: agent waits for a key"),
            ),
            (
                Failed("x".into()),
                Input::Admin { action: AdminAction::Retry, actor: "admin" },
                Seen,
                Some("failed -> seen: the payload runs again on the next network boot (by admin)"),
            ),
            (
                Booting,
                Input::Admin { action: AdminAction::MarkDone, actor: "admin" },
                Recovered,
                Some("booting -> recovered (marked done by hand) (by admin)"),
            ),
            (
                Seen,
                Input::Admin { action: AdminAction::Skip, actor: "a" },
                Seen,
                Some("skipped: boots locally, never gets the payload (by a)"),
            ),
        ];
        for (i, (before, input, after, note)) in cases.into_iter().enumerate() {
            let mut h = host(before.clone());
            h.netboot_ms = 0;
            let got = apply(&mut h, &input, T);
            assert_eq!(h.state, after, "case {i}: {before:?} + {input:?}");
            assert_eq!(
                got.as_ref().map(Note::text).as_deref(),
                note,
                "case {i}: {before:?} + {input:?}"
            );
        }
    }

    /// A whole run in the agent's order (payload, hello, its steps, the report, the reboot,
    /// Windows back), with and without a BitLocker volume: every step is a move the state
    /// machine allows, none is refused, and the host ends recovered.
    #[test]
    fn the_agents_step_order_is_the_state_machines() {
        use crate::agent::{STEP_SCANNING, STEP_UNLOCKED};
        let rep = report(RunResult::Remediated, None);
        for bitlocker in [false, true] {
            let mut h = host(HostState::Seen);
            let mut inputs = vec![
                Input::PayloadIssued {
                    via: "iPXE script",
                    token_sha256: "t",
                    restore: false,
                    peer: &PEER,
                },
                Input::AgentHello {
                    uuid: None,
                    serial: None,
                },
                Input::AgentStep { step: "modules" },
                Input::AgentStep { step: "rules" },
                Input::AgentStep {
                    step: STEP_SCANNING,
                },
                Input::AgentStep { step: "volume" },
            ];
            if bitlocker {
                inputs.push(Input::KeyReleased);
                inputs.push(Input::AgentStep {
                    step: STEP_UNLOCKED,
                });
            }
            inputs.push(Input::AgentReport(&rep));
            inputs.push(pxe(true));
            inputs.push(windows());
            let mut states = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                let note = apply(&mut h, input, T + i as u64 * 1000);
                if let Some(n) = &note {
                    assert!(!n.message.contains("kept"), "{input:?}: {}", n.message);
                }
                states.push(h.state.name());
            }
            let mut want = vec![
                "booting", "agent-up", "agent-up", "agent-up", "scanning", "scanning",
            ];
            if bitlocker {
                want.extend(["scanning", "unlocked"]);
            }
            want.extend(["remediated", "rebooted", "recovered"]);
            assert_eq!(states, want, "bitlocker: {bitlocker}");
        }
    }

    #[test]
    fn retransmission_within_a_boot_is_not_a_second_boot() {
        let mut h = host(HostState::Remediated);
        apply(&mut h, &pxe(true), T);
        assert_eq!(h.state, HostState::Rebooted);
        // The same boot's DISCOVER retransmitted 3 s later.
        apply(&mut h, &pxe(true), T + 3_000);
        assert_eq!(h.state, HostState::Rebooted);
        // A new boot 30 s later without Windows in between: still looping.
        apply(&mut h, &pxe(true), T + 33_000);
        assert!(matches!(h.state, HostState::Failed(_)));
    }

    #[test]
    fn report_records_protectors_once_and_clears_waiting() {
        let mut h = host(HostState::Scanning);
        h.bitlocker_waiting = vec!["x".into()];
        let rep = report(RunResult::Remediated, None);
        apply(&mut h, &Input::AgentReport(&rep), T);
        apply(&mut h, &Input::AgentReport(&rep), T);
        assert_eq!(
            h.reported_protectors,
            vec!["{AAAAAAAA-0000-0000-0000-000000000001}".to_string()]
        );
        assert!(
            h.protector_ids.is_empty(),
            "the agent's word never becomes the inventory a release is decided on"
        );
        assert!(h.token_spent, "the final report spends the token");
        assert!(h.bitlocker_waiting.is_empty());
        assert_eq!(h.reports, 2);
        assert_eq!(h.name_on_disk.as_deref(), Some("WKS-0042"));
        assert_eq!(
            h.hostname, None,
            "the disk's word never becomes the inventory's name"
        );
        // A later report without a name keeps the one read before.
        let mut rep = report(RunResult::Remediated, None);
        rep.volumes[0].computer_name = None;
        apply(&mut h, &Input::AgentReport(&rep), T);
        assert_eq!(h.name_on_disk.as_deref(), Some("WKS-0042"));
    }

    #[test]
    fn a_claim_conflict_needs_attention_and_a_later_report_changes_nothing() {
        let mut h = host(HostState::Booting);
        let n = apply(
            &mut h,
            &Input::ClaimConflict {
                why: "two machines claimed MAC x: IP a, IP b",
            },
            T,
        )
        .unwrap();
        assert_eq!(n.kind, "claim-conflict");
        assert!(matches!(&h.state, HostState::NeedsAttention(r) if r.contains("two machines")));
        let rep = report(RunResult::Remediated, None);
        let n = apply(&mut h, &Input::AgentReport(&rep), T + 1).unwrap();
        assert!(n.message.contains("not acted on"), "{}", n.message);
        assert_eq!(h.name_on_disk, None, "a disputed report names nothing");
        assert!(matches!(h.state, HostState::NeedsAttention(_)));
        apply(
            &mut h,
            &Input::Admin {
                action: AdminAction::Retry,
                actor: "a",
            },
            T + 2,
        );
        assert_eq!(
            h.claim_conflict, None,
            "an admin's retry clears the dispute"
        );
    }

    #[test]
    fn approve_twice_says_so_and_payload_counts_boots() {
        let mut h = host(HostState::Seen);
        let approve = Input::Admin {
            action: AdminAction::Approve,
            actor: "a",
        };
        assert_eq!(
            apply(&mut h, &approve, T).unwrap().text(),
            "approved for the recovery payload (by a)"
        );
        assert_eq!(
            apply(&mut h, &approve, T).unwrap().text(),
            "already approved (by a)"
        );
        let issue = Input::PayloadIssued {
            via: "iPXE script",
            token_sha256: "tok",
            restore: false,
            peer: &PEER,
        };
        apply(&mut h, &issue, T);
        assert_eq!(h.payload_boots, 1);
        assert_eq!(h.boot_token_sha256.as_deref(), Some("tok"));
        assert_eq!(h.boot_peer.as_ref(), Some(&*PEER));
        assert_eq!(h.boot_token_issued_ms, T);
    }
}
