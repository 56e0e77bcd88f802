//! A host's latest attempt as a strip of stages (DHCP, boot loader, kernel, agent, scan, fix,
//! report, back in Windows), each with when it started and how long it took, read from the
//! host's timeline. Pure.

use serde::Serialize;

use crate::{Event, EventSource};

/// The stages, in order.
pub const STAGES: [&str; 8] = [
    "DHCP",
    "boot loader",
    "kernel",
    "agent",
    "scan",
    "fix",
    "report",
    "back in Windows",
];

const DHCP: usize = 0;
const LOADER: usize = 1;
const REPORT: usize = 6;
const WINDOWS: usize = 7;

/// Boot loaders the server hands out (TFTP or HTTP).
const LOADERS: [&str; 6] = [
    "undionly.kpxe",
    "snponly.efi",
    "ipxe.efi",
    "shimx64.efi",
    "grubx64.efi",
    "grub.cfg",
];

/// Which stage an event marks the start of, if any.
fn stage_of(e: &Event) -> Option<usize> {
    let first_word = e.message.split_whitespace().next().unwrap_or("");
    let file = first_word.rsplit('/').next().unwrap_or("");
    match (e.source, e.kind.as_str()) {
        (EventSource::Dhcp, k) if k.starts_with("dhcp-") => Some(DHCP),
        (EventSource::Tftp, "tftp") | (EventSource::Http, "http-download") => {
            if LOADERS.contains(&file) {
                Some(LOADER)
            } else if file == "vmlinuz" || file == "initrd" {
                Some(2)
            } else {
                None
            }
        }
        // The boot script (iPXE) or configuration (grub) for the machine: its loader runs.
        (_, "script") => Some(LOADER),
        (EventSource::Agent, "agent-hello") => Some(3),
        (EventSource::Agent, "agent-scanning") => Some(4),
        (EventSource::Agent, "agent-file") | (EventSource::Agent, "agent-unlocked") => Some(5),
        (EventSource::Agent, "agent-report") => Some(REPORT),
        (_, "state") if e.message.ends_with("-> recovered") => Some(WINDOWS),
        _ => None,
    }
}

/// One stage of the strip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Its name ([`STAGES`]).
    pub name: &'static str,
    /// When it started (milliseconds since the Unix epoch); `None`: not reached (or skipped,
    /// as fix is on a clean host).
    pub started_ms: Option<u64>,
    /// How long it took: until the next stage that was reached started. `None` for the stage
    /// the host is in (or the last).
    pub took_ms: Option<u64>,
}

/// The stages of the latest attempt in `events` (any order; sorted here by time). An attempt
/// begins at a DHCP exchange; a new one begins when a boot loader is fetched again after a
/// report, or at a DHCP exchange after Windows was seen.
pub fn strip(events: &[Event]) -> Vec<Stage> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.time_ms);
    let mut at: [Option<u64>; 8] = [None; 8];
    // A DHCP exchange after the report: Windows asking for its address, or the start of a new
    // attempt (known only when a boot loader follows).
    let mut dhcp_after_report: Option<u64> = None;
    for e in sorted {
        let Some(s) = stage_of(e) else { continue };
        let t = e.time_ms;
        if s == DHCP {
            if at[WINDOWS].is_some() {
                at = [None; 8];
                at[DHCP] = Some(t);
            } else if at[REPORT].is_some() {
                dhcp_after_report.get_or_insert(t);
            } else if at[DHCP].is_none() {
                at[DHCP] = Some(t);
            }
            continue;
        }
        if s == LOADER && at[REPORT].is_some() {
            // Network-booting again after a report: a new attempt.
            let start = dhcp_after_report.take();
            at = [None; 8];
            at[DHCP] = start;
        }
        if at[s].is_none() {
            at[s] = Some(t);
        }
    }
    let mut out: Vec<Stage> = STAGES
        .iter()
        .zip(at)
        .map(|(name, started_ms)| Stage {
            name,
            started_ms,
            took_ms: None,
        })
        .collect();
    for i in 0..out.len() {
        let Some(a) = out[i].started_ms else { continue };
        if let Some(b) = out[i + 1..].iter().find_map(|s| s.started_ms) {
            out[i].took_ms = Some(b.saturating_sub(a));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, source: EventSource, kind: &str, message: &str) -> Event {
        Event {
            time_ms: t,
            source,
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn run(t0: u64) -> Vec<Event> {
        vec![
            ev(t0, EventSource::Dhcp, "dhcp-discover", "discover from PXE"),
            ev(t0 + 100, EventSource::Dhcp, "dhcp-request", "request"),
            ev(
                t0 + 900,
                EventSource::Tftp,
                "tftp",
                "undionly.kpxe 70000/70000 bytes to 10.0.0.5:2070 in 700 ms",
            ),
            ev(t0 + 1_500, EventSource::Http, "script", "ipxe: payload"),
            ev(
                t0 + 4_000,
                EventSource::Http,
                "http-download",
                "vmlinuz (12000000 bytes) to 10.0.0.5",
            ),
            ev(
                t0 + 6_000,
                EventSource::Http,
                "http-download",
                "initrd (9000000 bytes) to 10.0.0.5",
            ),
            ev(
                t0 + 9_000,
                EventSource::Agent,
                "agent-hello",
                "agent 0.1 up",
            ),
            ev(
                t0 + 9_500,
                EventSource::Agent,
                "agent-scanning",
                "looking for Windows volumes",
            ),
            ev(
                t0 + 11_000,
                EventSource::Agent,
                "agent-file",
                "quarantine C-00000291.sys",
            ),
            ev(
                t0 + 11_200,
                EventSource::Agent,
                "agent-report",
                "remediated",
            ),
            ev(
                t0 + 11_200,
                EventSource::Policy,
                "state",
                "scanning -> remediated",
            ),
        ]
    }

    fn times(s: &[Stage]) -> Vec<(Option<u64>, Option<u64>)> {
        s.iter().map(|x| (x.started_ms, x.took_ms)).collect()
    }

    #[test]
    fn a_run_through_the_payload() {
        let s = strip(&run(1_000));
        assert_eq!(
            times(&s),
            vec![
                (Some(1_000), Some(900)),
                (Some(1_900), Some(3_100)),
                (Some(5_000), Some(5_000)),
                (Some(10_000), Some(500)),
                (Some(10_500), Some(1_500)),
                (Some(12_000), Some(200)),
                (Some(12_200), None),
                (None, None),
            ]
        );
    }

    #[test]
    fn back_in_windows_then_a_new_attempt() {
        let mut e = run(0);
        e.push(ev(
            40_000,
            EventSource::Dhcp,
            "dhcp-discover",
            "discover from Windows",
        ));
        e.push(ev(
            40_050,
            EventSource::Policy,
            "state",
            "rebooted -> recovered",
        ));
        let s = strip(&e);
        assert_eq!(s[6].took_ms, Some(40_050 - 11_200));
        assert_eq!(s[7].started_ms, Some(40_050));
        // A later run (an admin's retry) starts a new strip.
        let mut again = e.clone();
        again.extend(run(100_000));
        let s = strip(&again);
        assert_eq!(s[0].started_ms, Some(100_000));
        assert_eq!(s[7].started_ms, None);
    }

    #[test]
    fn network_booting_again_after_a_report_is_a_new_attempt() {
        let mut e = run(0);
        // Still boot-looping: DHCP and the loader again.
        e.push(ev(
            50_000,
            EventSource::Dhcp,
            "dhcp-discover",
            "discover from PXE",
        ));
        e.push(ev(
            50_800,
            EventSource::Tftp,
            "tftp",
            "undionly.kpxe 1/1 bytes",
        ));
        let s = strip(&e);
        assert_eq!(s[0].started_ms, Some(50_000));
        assert_eq!(s[0].took_ms, Some(800));
        assert_eq!(s[1].started_ms, Some(50_800));
        assert!(s[2..].iter().all(|x| x.started_ms.is_none()));
    }

    #[test]
    fn a_clean_host_skips_fix_and_order_of_input_does_not_matter() {
        let mut e: Vec<Event> = run(0)
            .into_iter()
            .filter(|x| x.kind != "agent-file")
            .collect();
        e.reverse();
        let s = strip(&e);
        assert_eq!(s[5].started_ms, None);
        assert_eq!(
            s[4].took_ms,
            Some(11_200 - 9_500),
            "scan runs until the report"
        );
        assert_eq!(
            strip(&[]).iter().filter(|x| x.started_ms.is_some()).count(),
            0
        );
    }
}
