//! Remediation of one mounted Windows volume: resolve each rule's path case-insensitively (NTFS
//! names are case-insensitive, ntfs3 lookups are not), judge each candidate by the signed rules,
//! and quarantine exactly what they name, with a JSON record per file and a log of the run.
//! Works on any directory, so it is tested on the host with ordinary files.
use fleet::agent::FileRecord;
use signing::{Action, FileFacts, Rule, RuleSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
}
