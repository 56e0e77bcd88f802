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

/// The outage began on 2024-07-19 (00:00 UTC): a machine whose clock says earlier cannot judge
/// the rules' expiry, so the server's time is used.
pub(super) const CLOCK_FLOOR_UNIX: u64 = 1_721_347_200;

/// The time to judge the rules by: the machine's, unless it is before [`CLOCK_FLOOR_UNIX`].
pub(super) fn trusted_now(local_unix: u64, server_unix: u64) -> u64 {
    if local_unix < CLOCK_FLOOR_UNIX {
        server_unix
    } else {
        local_unix
    }
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
    fn clock_before_the_outage_is_not_trusted() {
        assert_eq!(trusted_now(0, 1_800_000_000), 1_800_000_000);
        assert_eq!(
            trusted_now(CLOCK_FLOOR_UNIX - 1, 1_800_000_000),
            1_800_000_000
        );
        assert_eq!(trusted_now(1_750_000_000, 1_800_000_000), 1_750_000_000);
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
