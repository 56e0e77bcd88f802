//! Remediation of one mounted Windows volume: resolve each rule's path case-insensitively (NTFS
//! names are case-insensitive, ntfs3 lookups are not), judge each candidate by the signed rules,
//! and quarantine exactly what they name, with a JSON record per file and a log of the run.
//! Works on any directory, so it is tested on the host with ordinary files.
use fleet::agent::FileRecord;
use signing::{Action, FileFacts, Rule, RuleSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The folder on the volume where quarantined files and their records go.
pub const QUARANTINE_DIR: &str = "unbrick-quarantine";

/// Directory entries of `dir` whose names match `pattern` case-insensitively (glob per component).
fn matching_entries(dir: &Path, pattern: &str) -> std::io::Result<Vec<(String, PathBuf)>> {
    let pat: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if signing::rules::glob_match(&pat, &name) {
            out.push((name, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every regular file under `root` whose path matches the rule's pattern, as (components, path).
pub fn candidates(root: &Path, rule: &Rule) -> std::io::Result<Vec<(Vec<String>, PathBuf)>> {
    let parts = signing::rules::split_path(&rule.path);
    let mut level: Vec<(Vec<String>, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for (comps, dir) in &level {
            if !dir.is_dir() {
                continue;
            }
            for (name, path) in matching_entries(dir, part)? {
                let meta = std::fs::symlink_metadata(&path)?;
                if (last && meta.is_file()) || (!last && meta.is_dir()) {
                    let mut c = comps.clone();
                    c.push(name);
                    next.push((c, path));
                }
            }
        }
        level = next;
    }
    // Never act inside our own quarantine.
    level.retain(|(c, _)| {
        !c.first()
            .is_some_and(|f| f.eq_ignore_ascii_case(QUARANTINE_DIR))
    });
    Ok(level)
}

fn mtime_of(meta: &std::fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        },
        Err(_) => 0,
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

fn fsync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// What happened on one volume.
#[derive(Debug, Default)]
pub struct VolumeOutcome {
    /// The files quarantined or restored.
    pub files: Vec<FileRecord>,
    /// Lines of the run log (also written to the volume).
    pub log: Vec<String>,
}

/// Applies `rules` to the volume mounted at `root`. `run_id` names this run's quarantine folder.
/// Errors are about the volume as a whole; a file that cannot be handled is an error too (the
/// run must not claim success), after everything already done has been recorded.
pub fn remediate(
    root: &Path,
    volume: &str,
    rules: &RuleSet,
    run_id: &str,
    now_unix: u64,
) -> Result<VolumeOutcome, (VolumeOutcome, String)> {
    let mut out = VolumeOutcome::default();
    let qdir = root.join(QUARANTINE_DIR).join(run_id);
    let header_len = rules.header_len().max(1);
    let mut failure = None;
    out.log.push(format!(
        "unbrick {} run {run_id} on {volume} at {}; rules {} v{}",
        crate::AGENT_VERSION,
        signing::time::format_utc(now_unix),
        rules.id,
        rules.version
    ));
    for rule in &rules.rules {
        let found = match candidates(root, rule) {
            Ok(f) => f,
            Err(e) => {
                failure = Some(format!("cannot search for {}: {e}", rule.path));
                break;
            }
        };
        for (comps, path) in found {
            let rel = comps.join("\\");
            let r = (|| -> std::io::Result<Option<FileRecord>> {
                let meta = std::fs::metadata(&path)?;
                let mut header = vec![0u8; header_len];
                let n = std::fs::File::open(&path)?.read(&mut header)?;
                header.truncate(n);
                let mtime = mtime_of(&meta);
                let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
                let Some(verdict) = rules.judge(&FileFacts {
                    components: &refs,
                    header: &header,
                    last_write_unix: mtime,
                }) else {
                    out.log.push(format!("kept {rel}: matches the path of {} but not its other conditions (last write {})", rule.id, signing::time::format_utc(mtime.max(0) as u64)));
                    return Ok(None);
                };
                let sha = sha256_file(&path)?;
                let mut rec = FileRecord {
                    volume: volume.to_string(),
                    path: rel.clone(),
                    size: meta.len(),
                    sha256: sha,
                    mtime,
                    rule_id: verdict.rule_id.clone(),
                    action: match verdict.action {
                        Action::Quarantine => "quarantine",
                        Action::Delete => "delete",
                        Action::ReportOnly => "report-only",
                    }
                    .into(),
                    quarantined_to: None,
                };
                match verdict.action {
                    Action::Quarantine => {
                        let dest_dir = comps[..comps.len() - 1]
                            .iter()
                            .fold(qdir.clone(), |p, c| p.join(c));
                        std::fs::create_dir_all(&dest_dir)?;
                        let dest = dest_dir.join(&comps[comps.len() - 1]);
                        // Same volume: a rename, atomic, nothing copied.
                        std::fs::rename(&path, &dest)?;
                        fsync_dir(&dest_dir);
                        if let Some(parent) = path.parent() {
                            fsync_dir(parent);
                        }
                        let rel_dest = dest
                            .strip_prefix(root)
                            .unwrap_or(&dest)
                            .to_string_lossy()
                            .replace('/', "\\");
                        rec.quarantined_to = Some(rel_dest.clone());
                        let json = serde_json::to_vec_pretty(&rec).expect("record serializes");
                        let mut f = std::fs::File::create(
                            dest.with_file_name(format!("{}.unbrick.json", comps[comps.len() - 1])),
                        )?;
                        f.write_all(&json)?;
                        f.sync_all()?;
                        out.log.push(format!(
                            "quarantined {rel} -> {rel_dest} (sha256 {}, {} bytes, rule {})",
                            rec.sha256, rec.size, rec.rule_id
                        ));
                    }
                    Action::Delete => {
                        std::fs::create_dir_all(&qdir)?;
                        std::fs::remove_file(&path)?;
                        if let Some(parent) = path.parent() {
                            fsync_dir(parent);
                        }
                        out.log.push(format!(
                            "deleted {rel} (sha256 {}, {} bytes, rule {})",
                            rec.sha256, rec.size, rec.rule_id
                        ));
                    }
                    Action::ReportOnly => out.log.push(format!(
                        "reported {rel} (sha256 {}, rule {}); left in place",
                        rec.sha256, rec.rule_id
                    )),
                }
                Ok(Some(rec))
            })();
            match r {
                Ok(Some(rec)) => out.files.push(rec),
                Ok(None) => {}
                Err(e) => {
                    out.log.push(format!("FAILED on {rel}: {e}"));
                    failure.get_or_insert(format!("{rel}: {e}"));
                }
            }
        }
    }
    if !out.files.is_empty() || failure.is_some() {
        // The run's own record on the volume, next to what it moved.
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&qdir)?;
            let mut f = std::fs::File::create(qdir.join("unbrick.log"))?;
            for l in &out.log {
                writeln!(f, "{l}")?;
            }
            f.sync_all()?;
            let mut f = std::fs::File::create(qdir.join("records.json"))?;
            f.write_all(&serde_json::to_vec_pretty(&out.files).expect("records serialize"))?;
            f.sync_all()?;
            fsync_dir(&qdir);
            Ok(())
        };
        if let Err(e) = write() {
            failure.get_or_insert(format!("cannot write the run log: {e}"));
        }
    }
    match failure {
        None => Ok(out),
        Some(f) => Err((out, f)),
    }
}

/// A rollback on the volume mounted at `root`: every file an earlier run quarantined (found by
/// its `.unbrick.json` record under `unbrick-quarantine/`) goes back to its original path, if
/// its SHA-256 still matches the record and nothing else is at that path now. A restored
/// record is renamed `*.unbrick.json.restored`, so a second rollback does not move it again.
/// Each file is reported (action `restored`, or `restore-refused` with the reason in the log).
pub fn restore(
    root: &Path,
    volume: &str,
    run_id: &str,
    now_unix: u64,
) -> Result<VolumeOutcome, (VolumeOutcome, String)> {
    let mut out = VolumeOutcome::default();
    let mut failure: Option<String> = None;
    let qroot = root.join(QUARANTINE_DIR);
    out.log.push(format!(
        "unbrick {} restore run {run_id} on {volume} at {}",
        crate::AGENT_VERSION,
        signing::time::format_utc(now_unix)
    ));
    let mut records = Vec::new();
    let mut stack = vec![qroot.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".unbrick.json") {
                records.push(p);
            }
        }
    }
    records.sort();
    for recfile in records {
        let r = (|| -> Result<FileRecord, String> {
            let mut rec: FileRecord = serde_json::from_slice(
                &std::fs::read(&recfile).map_err(|e| format!("{}: {e}", recfile.display()))?,
            )
            .map_err(|e| format!("{}: not a quarantine record: {e}", recfile.display()))?;
            let q = rec
                .quarantined_to
                .clone()
                .ok_or_else(|| format!("{}: no quarantine path", recfile.display()))?;
            let from = q.split('\\').fold(root.to_path_buf(), |p, c| p.join(c));
            let to = rec
                .path
                .split('\\')
                .fold(root.to_path_buf(), |p, c| p.join(c));
            if !from.starts_with(&qroot) || rec.path.split('\\').any(|c| c == ".." || c.is_empty())
            {
                return Err(format!(
                    "{}: record points outside its place",
                    recfile.display()
                ));
            }
            let sha = sha256_file(&from).map_err(|e| format!("{q}: {e}"))?;
            if sha != rec.sha256 {
                return Err(format!(
                    "{q}: sha256 {sha} is not the recorded {}; left in quarantine",
                    rec.sha256
                ));
            }
            if to.exists() {
                return Err(format!(
                    "{}: a file is there now; {q} left in quarantine",
                    rec.path
                ));
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::rename(&from, &to).map_err(|e| format!("{q} -> {}: {e}", rec.path))?;
            if let Some(parent) = to.parent() {
                fsync_dir(parent);
            }
            let mut done = recfile.clone().into_os_string();
            done.push(".restored");
            std::fs::rename(&recfile, &done).map_err(|e| format!("{}: {e}", recfile.display()))?;
            rec.volume = volume.to_string();
            rec.action = "restored".into();
            Ok(rec)
        })();
        match r {
            Ok(rec) => {
                out.log.push(format!(
                    "restored {} from {} (sha256 {} checked)",
                    rec.path,
                    rec.quarantined_to.as_deref().unwrap_or(""),
                    rec.sha256
                ));
                out.files.push(rec);
            }
            Err(e) => {
                out.log.push(format!("REFUSED: {e}"));
                failure.get_or_insert(e);
            }
        }
    }
    if !out.files.is_empty() || failure.is_some() {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&qroot)?;
            let mut f = std::fs::File::create(qroot.join(format!("restore-{run_id}.log")))?;
            for l in &out.log {
                writeln!(f, "{l}")?;
            }
            f.sync_all()?;
            fsync_dir(&qroot);
            Ok(())
        };
        if let Err(e) = write() {
            failure.get_or_insert(format!("cannot write the restore log: {e}"));
        }
    }
    match failure {
        None => Ok(out),
        Some(f) => Err((out, f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const MAGIC: [u8; 8] = [0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01];

    fn put(root: &Path, rel: &str, data: &[u8], mtime_utc: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(signing::time::parse_utc(mtime_utc).unwrap());
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn quarantines_exactly_the_bad_file() {
        let root = std::env::temp_dir().join(format!("unbrick-rem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bad: Vec<u8> = MAGIC
            .iter()
            .copied()
            .chain(std::iter::repeat_n(7u8, 5000))
            .collect();
        let good: Vec<u8> = MAGIC
            .iter()
            .copied()
            .chain(std::iter::repeat_n(9u8, 5000))
            .collect();
        put(
            &root,
            "windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000032.sys",
            &bad,
            "2024-07-19T04:09:00Z",
        );
        put(
            &root,
            "windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000033.sys",
            &good,
            "2024-07-19T05:27:00Z",
        );
        put(
            &root,
            "windows/system32/Drivers/crowdstrike/C-00000290-00000000-00000032.sys",
            &bad,
            "2024-07-19T04:09:00Z",
        );
        put(
            &root,
            "windows/system32/Drivers/crowdstrike/C-00000291-notachannel.sys",
            b"MZ not a channel file",
            "2024-07-19T04:09:00Z",
        );
        put(
            &root,
            "Users/x/C-00000291-00000000-00000032.sys",
            &bad,
            "2024-07-19T04:09:00Z",
        );
        let rules = RuleSet::default_crowdstrike(4_000_000_000);
        let out = remediate(&root, "vda2", &rules, "run1", 1_800_000_000).unwrap();
        assert_eq!(out.files.len(), 1, "{:?}", out.log);
        let rec = &out.files[0];
        assert_eq!(
            rec.path,
            r"windows\system32\Drivers\crowdstrike\C-00000291-00000000-00000032.sys"
        );
        assert_eq!(
            rec.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &bad).as_ref())
        );
        let dir = root.join("windows/system32/Drivers/crowdstrike");
        assert!(!dir.join("C-00000291-00000000-00000032.sys").exists());
        for kept in [
            "C-00000291-00000000-00000033.sys",
            "C-00000290-00000000-00000032.sys",
            "C-00000291-notachannel.sys",
        ] {
            assert!(dir.join(kept).exists(), "{kept} must stay");
        }
        assert!(root
            .join("Users/x/C-00000291-00000000-00000032.sys")
            .exists());
        let q = root.join("unbrick-quarantine/run1/windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000032.sys");
        assert_eq!(std::fs::read(&q).unwrap(), bad);
        let j: FileRecord = serde_json::from_slice(
            &std::fs::read(q.with_file_name("C-00000291-00000000-00000032.sys.unbrick.json"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(&j, rec);
        let log =
            std::fs::read_to_string(root.join("unbrick-quarantine/run1/unbrick.log")).unwrap();
        assert!(log.contains("quarantined") && log.contains("kept"), "{log}");
        // A second run finds nothing: the quarantine is never searched.
        let again = remediate(&root, "vda2", &rules, "run2", 1_800_000_100).unwrap();
        assert!(again.files.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn restore_puts_back_what_was_quarantined_and_refuses_the_rest() {
        let root = std::env::temp_dir().join(format!("unbrick-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cs = "Windows/System32/drivers/CrowdStrike";
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(b"bad channel file");
        put(
            &root,
            &format!("{cs}/C-00000291-00000000-00000032.sys"),
            &bad,
            "2024-07-19T04:09:00Z",
        );
        put(
            &root,
            &format!("{cs}/C-00000291-00000000-00000031.sys"),
            &bad,
            "2024-07-19T04:09:00Z",
        );
        let rules = RuleSet::default_crowdstrike(4_000_000_000);
        let q = remediate(&root, "sda2", &rules, "run1", 1_800_000_000).unwrap();
        assert_eq!(q.files.len(), 2);
        // One quarantined file was changed since; the other's place is taken by a new file.
        let q31 = root
            .join(QUARANTINE_DIR)
            .join("run1")
            .join(cs)
            .join("C-00000291-00000000-00000031.sys");
        std::fs::write(&q31, b"tampered").unwrap();
        let r = restore(&root, "sda2", "undo1", 1_800_000_100);
        let (out, err) = r.unwrap_err();
        assert!(err.contains("is not the recorded"), "{err}");
        assert_eq!(out.files.len(), 1);
        assert_eq!(out.files[0].action, "restored");
        assert_eq!(
            std::fs::read(root.join(cs).join("C-00000291-00000000-00000032.sys")).unwrap(),
            bad,
            "the file is back, byte for byte"
        );
        assert!(
            !root
                .join(cs)
                .join("C-00000291-00000000-00000031.sys")
                .exists(),
            "a changed file is not put back"
        );
        let log =
            std::fs::read_to_string(root.join(QUARANTINE_DIR).join("restore-undo1.log")).unwrap();
        assert!(log.contains("restored") && log.contains("REFUSED"), "{log}");
        // A second rollback finds nothing more to move.
        let (again, _) = restore(&root, "sda2", "undo2", 1_800_000_200).unwrap_err();
        assert!(again.files.is_empty());
        // A file that appeared at the original path since is never overwritten.
        std::fs::write(&q31, &bad).unwrap();
        put(
            &root,
            &format!("{cs}/C-00000291-00000000-00000031.sys"),
            b"new",
            "2024-07-20T00:00:00Z",
        );
        let (_, err) = restore(&root, "sda2", "undo3", 1_800_000_300).unwrap_err();
        assert!(err.contains("a file is there now"), "{err}");
        assert_eq!(
            std::fs::read(root.join(cs).join("C-00000291-00000000-00000031.sys")).unwrap(),
            b"new"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
