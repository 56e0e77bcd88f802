//! Out-of-band triggers (`trigger = oob`): when a wave opens, its hosts that have a management
//! controller are made to network-boot, no more at once than the campaign's concurrency (hosts
//! already in the payload count), more as slots free. A host that asks for no address within
//! the wait is tried once more, then needs attention ("network boot triggered through AMT at
//! 10.1.2.3 at 03:12 UTC; the machine never asked for an address"). With `power_cycles = K`
//! (the reboot race) each host is first power-cycled up to K times; one that comes back as
//! Windows was healed by the reboot and is not network-booted at all. Pure: the caller runs the
//! orders on the controllers and reports back with [`Campaign::trigger_done`].
use super::{Campaign, CampaignState, HostChange, Trigger};
use crate::bmc::Op;
use crate::{ClientKind, HostRecord, HostState, Mac};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Network boots tried per host before it needs attention.
pub const NETBOOT_ATTEMPTS: u32 = 2;
/// After a controller failed to carry out an order, the next try comes this much later.
pub const FAILED_RETRY_MS: u64 = 30_000;

/// One host's triggers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggered {
    /// Power cycles ordered (the reboot race).
    pub cycles: u32,
    /// Network boots ordered.
    pub netboots: u32,
    /// Orders the controller could not carry out.
    pub failed: u32,
    /// When the last order was carried out (the wait for its DHCP runs from here); 0: none was.
    pub last_ms: u64,
    /// After a failed order: when to try again (0: not waiting to retry).
    #[serde(default)]
    pub retry_at: u64,
    /// An order is out and its answer not back.
    pub pending: bool,
    /// Nothing more to do (it asked for an address, healed, or gave up).
    pub done: bool,
    /// When it asked for an address after an order (it holds its slot from then until it is
    /// in the payload, for at most the wait).
    #[serde(default)]
    pub answered_ms: u64,
    /// The controller, for messages ("AMT at 10.1.2.3").
    pub via: String,
}

/// One operation for the caller to run on a host's controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerOrder {
    /// The host.
    pub mac: Mac,
    /// What to do.
    pub op: Op,
    /// The how-manyth order of its kind for this host (1, 2, ...).
    pub attempt: u32,
}

/// `hh:mm UTC` of a time in milliseconds since the epoch.
pub fn clock(ms: u64) -> String {
    let mins = (ms / 60_000) % 1440;
    format!("{:02}:{:02} UTC", mins / 60, mins % 60)
}

fn via(h: &HostRecord) -> String {
    match &h.controller {
        Some(c) => match c.address {
            Some(a) => format!(
                "{} at {a}",
                match c.kind {
                    crate::bmc::ControllerKind::Amt => "AMT",
                    crate::bmc::ControllerKind::Redfish => "Redfish",
                    crate::bmc::ControllerKind::Ipmi => "IPMI",
                    crate::bmc::ControllerKind::Wol => "Wake-on-LAN",
                }
            ),
            None => "Wake-on-LAN".into(),
        },
        None => "no controller".into(),
    }
}

impl Campaign {
    /// The orders due now for the open wave, and the hosts that need attention or healed.
    pub fn triggers_due(
        &mut self,
        hosts: &HashMap<Mac, HostRecord>,
        now: u64,
    ) -> (Vec<TriggerOrder>, Vec<HostChange>) {
        let (mut orders, mut changes) = (Vec::new(), Vec::new());
        if self.spec.trigger != Trigger::Oob || self.state != CampaignState::Running {
            return (orders, changes);
        }
        let Some(wave) = self.waves.get(self.current) else {
            return (orders, changes);
        };
        let wave = wave.hosts.clone();
        let wait = self.spec.trigger_wait_ms;
        // In flight: in the payload, or triggered and not finished (an answered host keeps its
        // slot until the payload takes it, for at most the wait).
        let mut in_flight = self.in_payload.len()
            + wave
                .iter()
                .filter(|m| !self.in_payload.contains_key(m) && !self.finished.contains(m))
                .filter(|m| {
                    self.triggers.get(m).is_some_and(|t| {
                        t.cycles + t.netboots > 0
                            && (!t.done || now.saturating_sub(t.answered_ms) < wait)
                    })
                })
                .count();
        for mac in wave {
            if self.finished.contains(&mac) || self.in_payload.contains_key(&mac) {
                if let Some(t) = self.triggers.get_mut(&mac) {
                    t.done = true;
                }
                continue;
            }
            let Some(h) = hosts.get(&mac) else { continue };
            if h.controller.is_none() || h.skipped || h.state.is_done() {
                continue;
            }
            let t = self.triggers.entry(mac).or_default();
            if t.done || t.pending {
                continue;
            }
            let op = if t.netboots == 0 && t.cycles == 0 {
                // First order: takes a slot.
                if in_flight as u32 >= self.spec.concurrency {
                    continue;
                }
                in_flight += 1;
                t.via = via(h);
                if self.spec.power_cycles > 0 {
                    Op::PowerCycle
                } else {
                    Op::NetbootOnce
                }
            } else {
                if t.last_ms > 0 && h.last_seen_ms > t.last_ms {
                    // It asked for an address after the last order.
                    t.done = true;
                    t.answered_ms = now;
                    if t.netboots == 0 && h.last_kind == Some(ClientKind::Windows) {
                        let why = format!(
                            "came back as Windows after power cycle {} through {}: healed by the reboot, not network-booted",
                            t.cycles, t.via
                        );
                        self.finished.insert(mac);
                        changes.push(HostChange {
                            mac,
                            to: HostState::Recovered,
                            why: format!("campaign {}: {why}", self.spec.name),
                        });
                    }
                    continue;
                }
                let due = if t.retry_at > 0 {
                    now >= t.retry_at
                } else {
                    t.last_ms > 0 && now.saturating_sub(t.last_ms) >= wait
                };
                if !due {
                    continue;
                }
                if t.netboots == 0 && t.cycles < self.spec.power_cycles {
                    Op::PowerCycle
                } else if t.netboots < NETBOOT_ATTEMPTS {
                    Op::NetbootOnce
                } else {
                    t.done = true;
                    let why = if t.last_ms == 0 {
                        format!(
                            "network boot through {} failed {} times (see the timeline)",
                            t.via, t.failed
                        )
                    } else {
                        format!(
                            "network boot triggered through {} at {}; the machine never asked for an address",
                            t.via,
                            clock(t.last_ms)
                        )
                    };
                    self.finished.insert(mac);
                    changes.push(HostChange {
                        mac,
                        to: HostState::NeedsAttention(why.clone()),
                        why: format!("campaign {}: {why}", self.spec.name),
                    });
                    continue;
                }
            };
            let attempt = match op {
                Op::PowerCycle => {
                    t.cycles += 1;
                    t.cycles
                }
                _ => {
                    t.netboots += 1;
                    t.netboots
                }
            };
            t.pending = true;
            t.retry_at = 0;
            orders.push(TriggerOrder { mac, op, attempt });
        }
        for o in &orders {
            let what = match o.op {
                Op::PowerCycle => {
                    format!("power cycle {} of {}", o.attempt, self.spec.power_cycles)
                }
                _ => format!("network boot {} of {NETBOOT_ATTEMPTS}", o.attempt),
            };
            self.log.push((now, format!("{}: {what} ordered", o.mac)));
        }
        (orders, changes)
    }

    /// The controller carried out an order for `mac` (`ok`) or could not: the wait for its DHCP
    /// starts now; a failed order is tried again sooner, and after [`NETBOOT_ATTEMPTS`] failed
    /// ones the host needs attention.
    pub fn trigger_done(
        &mut self,
        mac: Mac,
        ok: bool,
        summary: &str,
        now: u64,
    ) -> Option<HostChange> {
        let wait = self.spec.trigger_wait_ms;
        let name = self.spec.name.clone();
        let t = self.triggers.get_mut(&mac)?;
        if !t.pending {
            return None;
        }
        t.pending = false;
        if ok {
            t.last_ms = now;
            return None;
        }
        t.failed += 1;
        if t.failed >= NETBOOT_ATTEMPTS {
            t.done = true;
            self.finished.insert(mac);
            let why = format!("could not network-boot it out of band: {summary}");
            return Some(HostChange {
                mac,
                to: HostState::NeedsAttention(why.clone()),
                why: format!("campaign {name}: {why}"),
            });
        }
        // Due again soon (the order counters already moved on).
        t.retry_at = now + FAILED_RETRY_MS.min(wait);
        None
    }
}
