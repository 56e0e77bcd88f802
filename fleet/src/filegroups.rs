//! Which file is crashing the fleet: the files the agents' read-only scans listed (`inspect`
//! rules), grouped across hosts by path and content (SHA-256), each counted on the hosts that
//! crash (a kernel crash dump in their last report) and on those that do not. A file on many
//! crashing hosts and on none of the others is the suspect. Pure.
use serde::Serialize;

use crate::agent::{FileVersion, Report};
use crate::bootdiag::{GroupHost, GROUP_LIST};
use crate::HostRecord;

/// One file (path and content) across the scanned hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileGroup {
    /// Relative to the volume root, as the first host reported it.
    pub path: String,
    /// SHA-256 of its content, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its first 16 bytes, hex.
    pub head: String,
    /// Its PE version resource, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<FileVersion>,
    /// The earliest and latest last-write time seen (Unix seconds).
    pub first_written_unix: i64,
    /// See `first_written_unix`.
    pub last_written_unix: i64,
    /// Scanned hosts that have it.
    pub hosts: usize,
    /// Of those, hosts that crash.
    pub crashing_hosts: usize,
    /// Of those, hosts that do not crash.
    pub hosts_without_crashes: usize,
    /// On at least half of the scanned crashing hosts and on none of the others.
    pub suspect: bool,
    /// Hosts that have it, crashing ones first, at most [`GROUP_LIST`].
    pub examples: Vec<GroupHost>,
}

/// The scan's grouping: how many hosts were scanned, how many of them crash, and the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileScan {
    /// Hosts whose last report carries a read-only scan.
    pub scanned_hosts: usize,
    /// Of those, hosts with a kernel crash dump in that report.
    pub crashing_hosts: usize,
    /// The files, suspects first, then by how many crashing hosts have them (at most
    /// [`MAX_GROUPS`]).
    pub files: Vec<FileGroup>,
}

/// Most file groups listed.
pub const MAX_GROUPS: usize = 200;

/// Whether a report says the host crashes: a readable kernel crash dump on one of its volumes.
pub fn crashes(r: &Report) -> bool {
    r.volumes
        .iter()
        .flat_map(|v| &v.crash_dumps)
        .any(|d| d.error.is_none() && !d.bugcheck.is_empty())
}

/// Whether a report carries a read-only scan (an `inspect` rule ran).
fn scanned(r: &Report) -> bool {
    r.volumes
        .iter()
        .any(|v| !v.inspected.is_empty() || v.windows_version.is_some())
}

/// Groups the scanned files of every host's last report.
pub fn group<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> FileScan {
    let mut scan = FileScan::default();
    // (lower-cased path, sha256) -> index in files.
    let mut index: std::collections::HashMap<(String, String), usize> = Default::default();
    let mut files: Vec<FileGroup> = Vec::new();
    let mut crashing_examples: Vec<Vec<GroupHost>> = Vec::new();
    for h in hosts {
        let Some(r) = &h.last_report else { continue };
        if !scanned(r) {
            continue;
        }
        scan.scanned_hosts += 1;
        let crashing = crashes(r);
        if crashing {
            scan.crashing_hosts += 1;
        }
        let mut here = std::collections::HashSet::new();
        for f in r
            .volumes
            .iter()
            .flat_map(|v| &v.inspected)
            .filter(|f| !f.sha256.is_empty())
        {
            let key = (f.path.to_lowercase(), f.sha256.clone());
            if !here.insert(key.clone()) {
                continue;
            }
            let i = *index.entry(key).or_insert_with(|| {
                files.push(FileGroup {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                    size: f.size,
                    head: f.head.clone(),
                    version: f.version.clone(),
                    first_written_unix: f.written_unix,
                    last_written_unix: f.written_unix,
                    hosts: 0,
                    crashing_hosts: 0,
                    hosts_without_crashes: 0,
                    suspect: false,
                    examples: Vec::new(),
                });
                crashing_examples.push(Vec::new());
                files.len() - 1
            });
            let g = &mut files[i];
            g.first_written_unix = g.first_written_unix.min(f.written_unix);
            g.last_written_unix = g.last_written_unix.max(f.written_unix);
            g.hosts += 1;
            let ex = GroupHost {
                mac: h.mac.to_string(),
                detail: if crashing {
                    "crashes"
                } else {
                    "does not crash"
                }
                .into(),
            };
            if crashing {
                g.crashing_hosts += 1;
                if crashing_examples[i].len() < GROUP_LIST {
                    crashing_examples[i].push(ex);
                }
            } else {
                g.hosts_without_crashes += 1;
                if g.examples.len() < GROUP_LIST {
                    g.examples.push(ex);
                }
            }
        }
    }
    for (g, mut c) in files.iter_mut().zip(crashing_examples) {
        c.append(&mut g.examples);
        c.truncate(GROUP_LIST);
        g.examples = c;
        g.suspect = g.crashing_hosts > 0
            && g.hosts_without_crashes == 0
            && g.crashing_hosts * 2 >= scan.crashing_hosts;
    }
    files.sort_by(|a, b| {
        b.suspect
            .cmp(&a.suspect)
            .then(b.crashing_hosts.cmp(&a.crashing_hosts))
            .then(a.hosts_without_crashes.cmp(&b.hosts_without_crashes))
            .then(a.path.cmp(&b.path))
    });
    files.truncate(MAX_GROUPS);
    scan.files = files;
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CrashDump, InspectedFile, RunResult, VolumeReport};
    use crate::Mac;

    fn file(path: &str, sha: &str, t: i64) -> InspectedFile {
        InspectedFile {
            path: path.into(),
            size: 40_000,
            written_unix: t,
            sha256: sha.into(),
            head: "aaaaaaaa01002301".into(),
            rule_id: "drivers".into(),
            version: None,
            error: None,
        }
    }

    fn host(i: u8, crashing: bool, files: Vec<InspectedFile>) -> HostRecord {
        let mut h = HostRecord::new(Mac([2, 0, 0, 0, 1, i]), 0);
        h.last_report = Some(Report {
            token: String::new(),
            mac: h.mac.to_string(),
            report_id: "r".into(),
            result: RunResult::Clean,
            reason: None,
            volumes: vec![VolumeReport {
                device: "vda2".into(),
                kind: "ntfs".into(),
                status: "inspected".into(),
                detail: String::new(),
                protectors: vec![],
                computer_name: None,
                crash_dumps: crashing
                    .then(|| CrashDump {
                        path: "Windows\\Minidump\\1.dmp".into(),
                        size: 1,
                        written_unix: 1,
                        bugcheck: "0x00000050".into(),
                        bugcheck_name: None,
                        parameters: vec![],
                        dump_time_unix: Some(1),
                        build: 19045,
                        kind: "small (minidump)".into(),
                        driver: None,
                        error: None,
                    })
                    .into_iter()
                    .collect(),
                windows_version: None,
                inspected: files,
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
    fn the_file_on_every_crashing_host_and_on_no_other_is_the_suspect() {
        let bad = r"Windows\System32\drivers\CrowdStrike\C-00000291-00000000-00000032.sys";
        let good_sha = "11".repeat(32);
        let bad_sha = "22".repeat(32);
        let common = r"Windows\System32\drivers\ntfs.sys";
        let mut hosts = Vec::new();
        for i in 0..6u8 {
            let mut files = vec![file(common, &"33".repeat(32), 1_700_000_000)];
            if i < 4 {
                // Crashing hosts: the 04:09 file (two write times a minute apart).
                files.push(file(bad, &bad_sha, 1_721_362_140 + i64::from(i % 2) * 60));
            } else {
                files.push(file(bad, &good_sha, 1_721_367_000));
            }
            hosts.push(host(i, i < 4, files));
        }
        // A host without a scan is not counted.
        let mut unscanned = host(9, true, vec![]);
        unscanned.last_report.as_mut().unwrap().volumes.clear();
        hosts.push(unscanned);
        let scan = group(&hosts);
        assert_eq!((scan.scanned_hosts, scan.crashing_hosts), (6, 4));
        let s = &scan.files[0];
        assert!(s.suspect, "{scan:?}");
        assert_eq!(
            (
                s.sha256.as_str(),
                s.hosts,
                s.crashing_hosts,
                s.hosts_without_crashes
            ),
            (bad_sha.as_str(), 4, 4, 0)
        );
        assert_eq!(
            (s.first_written_unix, s.last_written_unix),
            (1_721_362_140, 1_721_362_200)
        );
        // The same path with other content, and the file every host has, are not suspects.
        assert!(scan.files[1..].iter().all(|g| !g.suspect));
        let everywhere = scan.files.iter().find(|g| g.path == common).unwrap();
        assert_eq!(
            (everywhere.crashing_hosts, everywhere.hosts_without_crashes),
            (4, 2)
        );
        let fixed = scan.files.iter().find(|g| g.sha256 == good_sha).unwrap();
        assert_eq!((fixed.crashing_hosts, fixed.hosts_without_crashes), (0, 2));
        assert_eq!(s.examples[0].detail, "crashes");
    }
}
