//! The one decision point per host: what does this machine get when it network-boots now?
use crate::{ClientKind, HostRecord, Mac};

/// What the network-boot server knows when it asks.
#[derive(Debug, Clone)]
pub struct BootQuery {
    /// The machine.
    pub mac: Mac,
    /// What kind of client asks.
    pub kind: ClientKind,
    /// The time of the question.
    pub now_ms: u64,
    /// The answer will be handed out now (a boot script), not only looked at (a DHCP offer that
    /// leads to the script): a campaign then counts a payload answer against its concurrency.
    pub issue: bool,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Boot the signed recovery payload.
    Payload,
    /// Boot the payload in restore mode: move quarantined files back (a campaign's rollback).
    Restore,
    /// Show the waiting-room screen and poll again later.
    WaitingRoom {
        /// What the screen says.
        reason: String,
    },
    /// Boot from the local disk (iPXE `exit`, grub `exit`); in proxy mode the server stays silent.
    LocalBoot,
    /// Do not answer at all.
    Ignore,
}

impl BootDecision {
    /// The decision's name, for timelines (`payload`, `local-boot`, `waiting-room`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Payload => "payload",
            Self::Restore => "restore",
            Self::WaitingRoom { .. } => "waiting-room",
            Self::LocalBoot => "local-boot",
            Self::Ignore => "ignore",
        }
    }
}

/// Decides per host. Pure: the host view and the time come in as arguments.
pub trait BootPolicy: Send + Sync {
    /// What `query`'s machine gets now, given its record (None: never seen).
    fn decide(&self, query: &BootQuery, host: Option<&HostRecord>) -> BootDecision;

    /// Called with every host record after it changed (and once per host at start), so a
    /// policy can follow hosts without reading the store.
    fn observe(&self, _host: &HostRecord) {}

    /// A payload decided with `issue` was not handed out after all (its record could not be
    /// written): whatever the decision reserved for the host goes back.
    fn not_issued(&self, _mac: Mac) {}

    /// The active campaign (and phase) a host is in, for the BitLocker key release policy:
    /// `Some("<campaign id>")` while it runs or is paused, `Some("<id>:rollback")` while it rolls
    /// back; `None` outside any (no key is released then).
    fn key_scope(&self, _mac: Mac) -> Option<String> {
        None
    }

    /// Whether the host's active campaign releases keys only on an admin's approval.
    fn key_release_confirm(&self, _mac: Mac) -> bool {
        false
    }
}

/// Whether the host's last run was a read-only scan and nothing has happened since.
pub fn scanned(h: &HostRecord) -> bool {
    matches!(h.state, crate::HostState::NeedsAttention(_))
        && h.last_report
            .as_ref()
            .is_some_and(|r| r.result == crate::agent::RunResult::Inspected)
}

/// Every network-booting machine gets the payload, except hosts whose run already finished
/// (remediated, clean, rebooted, recovered) and hosts an admin skipped: those boot locally, so a
/// fixed machine never loops back into recovery. With `require_approval`, a host gets the payload
/// only after an admin approved it (imported lists, bulk approve); the others wait on screen.
#[derive(Debug, Default, Clone)]
pub struct DefaultPolicy {
    /// Only hosts an admin approved get the payload.
    pub require_approval: bool,
}

impl BootPolicy for DefaultPolicy {
    fn decide(&self, q: &BootQuery, host: Option<&HostRecord>) -> BootDecision {
        match q.kind {
            ClientKind::Windows | ClientKind::Agent | ClientKind::Other => BootDecision::Ignore,
            _ if host.is_some_and(|h| h.skipped) => BootDecision::LocalBoot,
            _ if host.is_some_and(|h| h.state.is_done()) => BootDecision::LocalBoot,
            // A host a read-only scan looked at is not rescanned at every boot loop: it waits
            // for the campaign of the rule drafted from the scan (an admin's retry also lets it).
            _ if host.is_some_and(scanned) => BootDecision::WaitingRoom {
                reason: "scanned (read-only); waiting for a campaign with a signed rule".into(),
            },
            _ if self.require_approval && !host.is_some_and(|h| h.approved) => {
                BootDecision::WaitingRoom {
                    reason: "waiting for an administrator to approve this machine".into(),
                }
            }
            _ => BootDecision::Payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, HostState};

    #[test]
    fn default_policy_table() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let q = |kind| BootQuery {
            mac,
            kind,
            now_ms: 0,
            issue: false,
        };
        let mut h = HostRecord::new(mac, 0);
        let p = DefaultPolicy::default();
        assert_eq!(
            p.decide(&q(ClientKind::Pxe(Arch::Bios)), None),
            BootDecision::Payload
        );
        assert_eq!(
            p.decide(&q(ClientKind::Windows), None),
            BootDecision::Ignore
        );
        assert_eq!(p.decide(&q(ClientKind::Other), None), BootDecision::Ignore);
        h.state = HostState::Remediated;
        assert_eq!(
            p.decide(&q(ClientKind::Ipxe(Arch::UefiX64)), Some(&h)),
            BootDecision::LocalBoot
        );
        h.state = HostState::Failed("x".into());
        assert_eq!(
            p.decide(&q(ClientKind::Ipxe(Arch::UefiX64)), Some(&h)),
            BootDecision::Payload
        );
        h.skipped = true;
        assert_eq!(
            p.decide(&q(ClientKind::Ipxe(Arch::UefiX64)), Some(&h)),
            BootDecision::LocalBoot,
            "a skipped host is left alone"
        );
        h.skipped = false;
        let strict = DefaultPolicy {
            require_approval: true,
        };
        assert!(matches!(
            strict.decide(&q(ClientKind::Pxe(Arch::Bios)), Some(&h)),
            BootDecision::WaitingRoom { .. }
        ));
        assert!(matches!(
            strict.decide(&q(ClientKind::Pxe(Arch::Bios)), None),
            BootDecision::WaitingRoom { .. }
        ));
        h.approved = true;
        assert_eq!(
            strict.decide(&q(ClientKind::Pxe(Arch::Bios)), Some(&h)),
            BootDecision::Payload
        );
    }
}
