//! The run's outcome, pure: what the volumes came to, the result and reason of the report, the
//! report's identity, and which clock to trust.
use fleet::agent::{FileRecord, RunResult, VolumeReport};

/// What the volumes of one run came to.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) volumes: Vec<VolumeReport>,
    pub(super) files: Vec<FileRecord>,
    pub(super) failures: Vec<String>,
    pub(super) attention: Vec<String>,
    pub(super) windows: usize,
}

impl Tally {
    pub(super) fn add(&mut self, dev: &str, v: VolumeRun) {
        if v.windows {
            self.windows += 1;
        }
        if let Some(f) = v.failed {
            self.failures.push(f);
        }
        if ["hibernated", "dirty-skipped", "mount-failed"].contains(&v.report.status.as_str()) {
            self.attention.push(format!("{dev}: {}", v.report.detail));
        }
        self.files.extend(v.files);
        self.volumes.push(v.report);
    }
}

/// What one volume's run came to.
pub(super) struct VolumeRun {
    pub(super) report: VolumeReport,
    pub(super) files: Vec<FileRecord>,
    pub(super) failed: Option<String>,
    pub(super) windows: bool,
}

/// The report's result and reason from the tally: a failure outranks a volume that needs a
/// person, which outranks a rollback, a remediation, a clean volume and finding nothing.
pub(super) fn outcome(t: &Tally, restore: bool, looked_at: usize) -> (RunResult, Option<String>) {
    if !t.failures.is_empty() {
        (RunResult::Failed, Some(t.failures.join("; ")))
    } else if !t.attention.is_empty() {
        (RunResult::NeedsAttention, Some(t.attention.join("; ")))
    } else if restore {
        (
            RunResult::Restored,
            Some(format!(
                "rollback: {} quarantined file(s) put back",
                t.files.len()
            )),
        )
    } else if !t.files.is_empty() {
        (RunResult::Remediated, None)
    } else if t.windows > 0 {
        (RunResult::Clean, None)
    } else {
        (
            RunResult::NothingFound,
            Some(format!(
                "no Windows volume on this machine ({looked_at} block device(s) looked at)"
            )),
        )
    }
}

/// The time to judge the rules' expiry by: the later of the machine's clock and the server's
/// (a machine whose battery-backed clock lags, or was set back, must not make expired rules
/// valid again).
pub(super) fn trusted_now(local_unix: u64, server_unix: u64) -> u64 {
    local_unix.max(server_unix)
}

/// Whether the signed rules `rules` (document `doc`) are the ones to run: the document the
/// server named in the hello reply (SHA-256 and version), and not older than the image's
/// minimum (an older signed, unexpired rules file substituted on the way is refused).
pub(super) fn check_rules(
    doc: &[u8],
    rules: &signing::RuleSet,
    reply: &fleet::agent::HelloReply,
    min_version: u64,
) -> Result<(), String> {
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, doc));
    match &reply.rules_sha256 {
        Some(want) if *want == sha => {}
        Some(want) => {
            return Err(format!(
                "the rules document (sha256 {sha}) is not the one the server named ({want})"
            ))
        }
        None => return Err("the server named no rules document in its hello reply".into()),
    }
    if reply.rules_version.is_some_and(|v| v != rules.version) {
        return Err(format!(
            "the rules are v{}, the server named v{}",
            rules.version,
            reply.rules_version.unwrap_or_default()
        ));
    }
    if rules.version < min_version {
        return Err(format!(
            "rules {} v{} are older than this image's minimum v{min_version}; sign a newer set (unbrick rules sign) or rebuild the image",
            rules.id, rules.version
        ));
    }
    Ok(())
}

/// The token's first 8 characters: enough to tell runs apart, too little to replay.
fn token_prefix(token: &str) -> &str {
    token.get(..token.len().min(8)).unwrap_or("")
}

/// The report's idempotency key: the same run retried sends the same one.
pub(super) fn report_id(token: &str, now_unix: u64) -> String {
    format!("{}-{now_unix}", token_prefix(token))
}

/// The quarantine folder's run name: UTC time and the token prefix.
pub(super) fn run_id(token: &str, now_unix: u64) -> String {
    format!(
        "{}-{}",
        signing::time::format_utc(now_unix).replace([':', '-'], ""),
        token_prefix(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(status: &str, detail: &str) -> VolumeReport {
        VolumeReport {
            device: "sda2".into(),
            kind: "ntfs".into(),
            status: status.into(),
            detail: detail.into(),
            protectors: vec![],
            computer_name: None,
            crash_dumps: vec![],
            windows_version: None,
            inspected: vec![],
            event_log: None,
        }
    }

    fn run(status: &str, files: usize, failed: Option<&str>, windows: bool) -> VolumeRun {
        VolumeRun {
            report: vol(status, "why"),
            files: (0..files)
                .map(|i| FileRecord {
                    volume: "sda2".into(),
                    path: format!("Windows/System32/drivers/CrowdStrike/C-00000291-{i}.sys"),
                    size: 1,
                    sha256: String::new(),
                    mtime: 0,
                    rule_id: "cs".into(),
                    action: "quarantine".into(),
                    quarantined_to: None,
                })
                .collect(),
            failed: failed.map(str::to_string),
            windows,
        }
    }

    /// (volumes, restore) -> result, in order of precedence.
    #[test]
    fn outcome_table() {
        let cases: Vec<(Vec<VolumeRun>, bool, RunResult, Option<&str>)> = vec![
            (
                vec![],
                false,
                RunResult::NothingFound,
                Some("no Windows volume on this machine (3 block device(s) looked at)"),
            ),
            (
                vec![run("clean", 0, None, true)],
                false,
                RunResult::Clean,
                None,
            ),
            (
                vec![run("remediated", 1, None, true)],
                false,
                RunResult::Remediated,
                None,
            ),
            (
                vec![run("restored", 2, None, true)],
                true,
                RunResult::Restored,
                Some("rollback: 2 quarantined file(s) put back"),
            ),
            (
                vec![
                    run("remediated", 1, None, true),
                    run("hibernated", 0, None, true),
                ],
                false,
                RunResult::NeedsAttention,
                Some("sdb1: why"),
            ),
            (
                vec![
                    run("dirty-skipped", 0, None, true),
                    run("mount-failed", 0, None, false),
                ],
                false,
                RunResult::NeedsAttention,
                Some("sdb1: why; sdb1: why"),
            ),
            (
                vec![
                    run("hibernated", 0, None, true),
                    run("remediated", 1, Some("sdb1: write failed"), true),
                ],
                false,
                RunResult::Failed,
                Some("sdb1: write failed"),
            ),
        ];
        for (i, (runs, restore, want, reason)) in cases.into_iter().enumerate() {
            let mut t = Tally::default();
            for r in runs {
                t.add("sdb1", r);
            }
            let (got, why) = outcome(&t, restore, 3);
            assert_eq!(got, want, "case {i}");
            assert_eq!(why.as_deref(), reason, "case {i}");
        }
    }

    #[test]
    fn tally_counts_windows_volumes_and_keeps_every_report() {
        let mut t = Tally::default();
        t.add("sda2", run("remediated", 2, None, true));
        t.add("sdb1", run("clean", 0, None, false));
        assert_eq!(t.windows, 1);
        assert_eq!(t.volumes.len(), 2);
        assert_eq!(t.files.len(), 2);
    }

    #[test]
    fn rules_must_be_the_named_document_and_not_older_than_the_minimum() {
        let rules = signing::RuleSet::default_crowdstrike(1_900_000_000);
        let doc = rules.to_json();
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &doc));
        let reply = |sha: Option<&str>, v: Option<u64>| fleet::agent::HelloReply {
            server_time: 1,
            mode: Default::default(),
            restore: vec![],
            rules_sha256: sha.map(str::to_string),
            rules_version: v,
        };
        let v = rules.version;
        assert_eq!(
            check_rules(&doc, &rules, &reply(Some(&sha), Some(v)), v),
            Ok(())
        );
        let e = check_rules(&doc, &rules, &reply(Some(&sha), Some(v)), v + 1).unwrap_err();
        assert!(e.contains("older than this image's minimum"), "{e}");
        let e = check_rules(&doc, &rules, &reply(Some("00"), Some(v)), 0).unwrap_err();
        assert!(e.contains("not the one the server named"), "{e}");
        assert!(check_rules(&doc, &rules, &reply(None, None), 0).is_err());
        assert!(check_rules(&doc, &rules, &reply(Some(&sha), Some(v + 1)), 0).is_err());
    }

    #[test]
    fn the_later_clock_judges_expiry() {
        assert_eq!(trusted_now(0, 1_800_000_000), 1_800_000_000);
        assert_eq!(trusted_now(1_750_000_000, 1_800_000_000), 1_800_000_000);
        assert_eq!(trusted_now(1_850_000_000, 1_800_000_000), 1_850_000_000);
    }

    #[test]
    fn report_and_run_ids() {
        assert_eq!(
            report_id("0123456789abcdef", 1_750_000_000),
            "01234567-1750000000"
        );
        assert_eq!(report_id("ab", 5), "ab-5");
        assert_eq!(report_id("", 5), "-5");
        assert_eq!(
            run_id("0123456789abcdef", 1_750_000_000),
            "20250615T150640Z-01234567"
        );
    }
}
