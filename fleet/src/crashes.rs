//! What is crashing the fleet: the kernel crash dumps the agents reported (their headers),
//! grouped across hosts by bugcheck code. Pure.
use serde::Serialize;

use crate::bootdiag::{GroupHost, GROUP_LIST};
use crate::HostRecord;

/// Hosts whose dumps name one bugcheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CrashGroup {
    /// The bugcheck code (`0x00000050`).
    pub bugcheck: String,
    /// Its name where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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

/// Groups the crash dumps of every host's last report by bugcheck, most hosts first.
pub fn group<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Vec<CrashGroup> {
    let mut groups: Vec<CrashGroup> = Vec::new();
    for h in hosts {
        let Some(r) = &h.last_report else { continue };
        let mut seen_here: Vec<String> = Vec::new();
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
            let idx = match groups.iter().position(|g| g.bugcheck == d.bugcheck) {
                Some(i) => i,
                None => {
                    groups.push(CrashGroup {
                        bugcheck: d.bugcheck.clone(),
                        name: d.bugcheck_name.clone(),
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
            if !seen_here.contains(&d.bugcheck) {
                seen_here.push(d.bugcheck.clone());
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
    groups.sort_by(|a, b| b.hosts.cmp(&a.hosts).then(a.bugcheck.cmp(&b.bugcheck)));
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
}
