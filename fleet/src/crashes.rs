//! What is crashing the fleet: the kernel crash dumps the agents reported (their headers, and
//! the faulting driver where a small dump names it), grouped across hosts by bugcheck code and
//! driver. Pure.
use serde::Serialize;

use crate::bootdiag::{GroupHost, GROUP_LIST};
use crate::HostRecord;

/// Hosts whose dumps name one bugcheck (in one driver, where the dumps name it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CrashGroup {
    /// The bugcheck code (`0x00000050`).
    pub bugcheck: String,
    /// Its name where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The driver the crashes happened in (`csagent.sys`), where the dumps name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// How many hosts have at least one dump with it.
    pub hosts: usize,
    /// How many dumps in all.
    pub dumps: usize,
    /// The earliest and the latest dump time (Unix seconds).
    pub first_unix: i64,
    /// See `first_unix`.
    pub last_unix: i64,
    /// Windows builds seen in these dumps.
    pub builds: Vec<u32>,
    /// The hosts (MAC and the newest dump's path and parameters), at most [`GROUP_LIST`].
    pub examples: Vec<GroupHost>,
}

/// Groups the crash dumps of every host's last report by bugcheck and driver, most hosts first.
pub fn group<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Vec<CrashGroup> {
    let mut groups: Vec<CrashGroup> = Vec::new();
    for h in hosts {
        let Some(r) = &h.last_report else { continue };
        let mut seen_here: Vec<(&str, Option<&str>)> = Vec::new();
        let mut dumps: Vec<_> = r
            .volumes
            .iter()
            .flat_map(|v| v.crash_dumps.iter())
            .filter(|d| d.error.is_none() && !d.bugcheck.is_empty())
            .collect();
        // Newest first, so a host's example is its latest crash.
        dumps.sort_by_key(|d| std::cmp::Reverse(d.dump_time_unix.unwrap_or(d.written_unix)));
        for d in dumps {
            let t = d.dump_time_unix.unwrap_or(d.written_unix);
            let key = (d.bugcheck.as_str(), d.driver.as_deref());
            let idx = match groups
                .iter()
                .position(|g| (g.bugcheck.as_str(), g.driver.as_deref()) == key)
            {
                Some(i) => i,
                None => {
                    groups.push(CrashGroup {
                        bugcheck: d.bugcheck.clone(),
                        name: d.bugcheck_name.clone(),
                        driver: d.driver.clone(),
                        hosts: 0,
                        dumps: 0,
                        first_unix: t,
                        last_unix: t,
                        builds: Vec::new(),
                        examples: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[idx];
            g.dumps += 1;
            g.first_unix = g.first_unix.min(t);
            g.last_unix = g.last_unix.max(t);
            if d.build > 0 && !g.builds.contains(&d.build) {
                g.builds.push(d.build);
                g.builds.sort_unstable();
            }
            if !seen_here.contains(&key) {
                seen_here.push(key);
                g.hosts += 1;
                if g.examples.len() < GROUP_LIST {
                    g.examples.push(GroupHost {
                        mac: h.mac.to_string(),
                        detail: format!("{} ({})", d.path, d.parameters.join(", ")),
                    });
                }
            }
        }
    }
    groups.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then(a.bugcheck.cmp(&b.bugcheck))
            .then(a.driver.cmp(&b.driver))
    });
    groups
}

/// Hosts whose System event logs hold one kind of crash event (with one bugcheck code, where
/// the events name one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventGroup {
    /// `bugcheck`, `kernel-power` or `unexpected-shutdown` (see [`crate::agent::LogEvent`]).
    pub kind: String,
    /// The bugcheck code the events name, if they name one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bugcheck: Option<String>,
    /// How many hosts have at least one such event.
    pub hosts: usize,
    /// How many events in all.
    pub events: usize,
    /// The earliest and the latest event (Unix seconds).
    pub first_unix: i64,
    /// See `first_unix`.
    pub last_unix: i64,
    /// The hosts (MAC and the newest event's detail), at most [`GROUP_LIST`].
    pub examples: Vec<GroupHost>,
}

/// Groups the crash events of every host's last report by kind and bugcheck, most hosts first.
pub fn group_events<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Vec<EventGroup> {
    let mut groups: Vec<EventGroup> = Vec::new();
    for h in hosts {
        let Some(r) = &h.last_report else { continue };
        let mut events: Vec<_> = r
            .volumes
            .iter()
            .filter_map(|v| v.event_log.as_ref())
            .flat_map(|l| l.events.iter())
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.time_unix));
        let mut seen_here: Vec<(&str, Option<&str>)> = Vec::new();
        for e in events {
            let key = (e.kind.as_str(), e.bugcheck.as_deref());
            let idx = match groups
                .iter()
                .position(|g| (g.kind.as_str(), g.bugcheck.as_deref()) == key)
            {
                Some(i) => i,
                None => {
                    groups.push(EventGroup {
                        kind: e.kind.clone(),
                        bugcheck: e.bugcheck.clone(),
                        hosts: 0,
                        events: 0,
                        first_unix: e.time_unix,
                        last_unix: e.time_unix,
                        examples: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[idx];
            g.events += 1;
            g.first_unix = g.first_unix.min(e.time_unix);
            g.last_unix = g.last_unix.max(e.time_unix);
            if !seen_here.contains(&key) {
                seen_here.push(key);
                g.hosts += 1;
                if g.examples.len() < GROUP_LIST {
                    let mut detail = format!("{} {}", e.provider, e.event_id);
                    if !e.parameters.is_empty() {
                        detail += &format!(" ({})", e.parameters.join(", "));
                    }
                    if !e.detail.is_empty() {
                        detail += &format!(": {}", e.detail);
                    }
                    g.examples.push(GroupHost {
                        mac: h.mac.to_string(),
                        detail,
                    });
                }
            }
        }
    }
    groups.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then(a.kind.cmp(&b.kind))
            .then(a.bugcheck.cmp(&b.bugcheck))
    });
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CrashDump, Report, RunResult, VolumeReport};
    use crate::Mac;

    fn dump(code: &str, t: i64) -> CrashDump {
        CrashDump {
            path: format!("Windows\\Minidump\\{t}.dmp"),
            size: 1,
            written_unix: t,
            bugcheck: code.into(),
            bugcheck_name: (code == "0x00000050").then(|| "PAGE_FAULT_IN_NONPAGED_AREA".into()),
            parameters: vec!["0x1".into(); 4],
            dump_time_unix: Some(t),
            build: 19045,
            kind: "small (minidump)".into(),
            driver: None,
            error: None,
        }
    }

    fn host(i: u8, dumps: Vec<CrashDump>) -> HostRecord {
        let mut h = HostRecord::new(Mac([2, 0, 0, 0, 0, i]), 0);
        h.last_report = Some(Report {
            token: String::new(),
            mac: h.mac.to_string(),
            report_id: "r".into(),
            result: RunResult::Remediated,
            reason: None,
            volumes: vec![VolumeReport {
                device: "vda2".into(),
                kind: "ntfs".into(),
                status: "remediated".into(),
                detail: String::new(),
                protectors: vec![],
                computer_name: None,
                crash_dumps: dumps,
                windows_version: None,
                inspected: vec![],
                event_log: None,
            }],
            files: vec![],
            rules_id: None,
            rules_version: None,
            agent_ms: 1,
        });
        h
    }

    #[test]
    fn hosts_by_bugcheck_most_hosts_first_each_host_once() {
        let mut unreadable = dump("", 5);
        unreadable.error = Some("no PAGE signature".into());
        let hosts = [
            host(1, vec![dump("0x00000050", 100), dump("0x00000050", 300)]),
            host(2, vec![dump("0x00000050", 200), dump("0x0000007E", 50)]),
            host(3, vec![unreadable]),
            HostRecord::new(Mac([2, 0, 0, 0, 0, 4]), 0),
        ];
        let g = group(&hosts);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].bugcheck.as_str(), g[0].hosts, g[0].dumps),
            ("0x00000050", 2, 3)
        );
        assert_eq!((g[0].first_unix, g[0].last_unix), (100, 300));
        assert_eq!(g[0].name.as_deref(), Some("PAGE_FAULT_IN_NONPAGED_AREA"));
        assert!(g[0].examples[0].detail.contains("300.dmp"), "newest first");
        assert_eq!((g[1].bugcheck.as_str(), g[1].hosts), ("0x0000007E", 1));
        assert_eq!(g[0].builds, [19045]);
    }

    #[test]
    fn one_bugcheck_in_two_drivers_is_two_groups() {
        let d = |t: i64, drv: Option<&str>| CrashDump {
            driver: drv.map(String::from),
            ..dump("0x00000050", t)
        };
        let hosts = [
            host(1, vec![d(100, Some("csagent.sys"))]),
            host(
                2,
                vec![d(110, Some("csagent.sys")), d(120, Some("csagent.sys"))],
            ),
            host(3, vec![d(130, Some("amdppm.sys"))]),
            host(4, vec![d(140, None)]),
        ];
        let g = group(&hosts);
        let got: Vec<_> = g
            .iter()
            .map(|g| (g.driver.as_deref(), g.hosts, g.dumps))
            .collect();
        assert_eq!(
            got,
            [
                (Some("csagent.sys"), 2, 3),
                (None, 1, 1),
                (Some("amdppm.sys"), 1, 1)
            ]
        );
    }

    #[test]
    fn event_log_crashes_by_kind_and_code() {
        use crate::agent::{EventLogScan, LogEvent};
        let ev = |kind: &str, code: Option<&str>, t: i64| LogEvent {
            kind: kind.into(),
            provider: "p".into(),
            event_id: 1,
            time_unix: t,
            bugcheck: code.map(String::from),
            parameters: vec![],
            detail: String::new(),
        };
        let with = |i: u8, events: Vec<LogEvent>| {
            let mut h = host(i, vec![]);
            h.last_report.as_mut().unwrap().volumes[0].event_log = Some(EventLogScan {
                path: "Windows\\System32\\winevt\\Logs\\System.evtx".into(),
                records: 10,
                unreadable: 0,
                events,
                error: None,
            });
            h
        };
        let hosts = [
            with(
                1,
                vec![
                    ev("bugcheck", Some("0x00000050"), 10),
                    ev("bugcheck", Some("0x00000050"), 20),
                    ev("kernel-power", Some("0x00000050"), 21),
                ],
            ),
            with(2, vec![ev("bugcheck", Some("0x00000050"), 30)]),
            with(3, vec![ev("unexpected-shutdown", None, 5)]),
            host(4, vec![]),
        ];
        let g = group_events(&hosts);
        let got: Vec<_> = g
            .iter()
            .map(|g| (g.kind.as_str(), g.bugcheck.as_deref(), g.hosts, g.events))
            .collect();
        assert_eq!(
            got,
            [
                ("bugcheck", Some("0x00000050"), 2, 3),
                ("kernel-power", Some("0x00000050"), 1, 1),
                ("unexpected-shutdown", None, 1, 1)
            ]
        );
        assert_eq!((g[0].first_unix, g[0].last_unix), (10, 30));
    }
}
