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

pub(crate) fn mtime_of(meta: &std::fs::Metadata) -> i64 {
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
    // `inspect` rules are the read-only scan's (the inspect module), done before this pass.
    for rule in rules.rules.iter().filter(|r| r.action != Action::Inspect) {
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
                    now_unix: now_unix as i64,
                }) else {
                    out.log.push(format!("kept {rel}: matches the path of {} but not its other conditions (last write {})", rule.id, signing::time::format_utc(mtime.max(0) as u64)));
                    return Ok(None);
                };
                if verdict.action == Action::Inspect {
                    // Listed by the read-only scan before this pass; left alone here.
                    return Ok(None);
                }
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
                        Action::Inspect => "inspect",
                    }
                    .into(),
                    quarantined_to: None,
                };
                match verdict.action {
                    Action::Quarantine => {
                        let dest_dir = comps[..comps.len() - 1]
                            .iter()
                            .fold(qdir.clone(), |p, c| p.join(c));
                        // A planted link or junction under the quarantine must not carry
                        // the file elsewhere.
                        let qpath: Vec<&str> = [QUARANTINE_DIR, run_id]
                            .into_iter()
                            .chain(comps.iter().map(String::as_str))
                            .collect();
                        no_links(root, &qpath).map_err(std::io::Error::other)?;
                        std::fs::create_dir_all(&dest_dir)?;
                        no_links(root, &qpath).map_err(std::io::Error::other)?;
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
                    Action::ReportOnly | Action::Inspect => out.log.push(format!(
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
            no_links(root, &[QUARANTINE_DIR, run_id]).map_err(std::io::Error::other)?;
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

/// Refuses a path under `root` that passes through a symbolic link, an NTFS junction or another
/// reparse point (ntfs3 and ntfs-3g show those as symbolic links): every component of `rel`
/// that exists must be a real directory (or, the last, a regular file).
pub fn no_links(root: &Path, rel: &[&str]) -> Result<(), String> {
    let mut p = root.to_path_buf();
    for (i, c) in rel.iter().enumerate() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", p.display())),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{}: a symbolic link, junction or reparse point; refused",
                    rel[..=i].join("\\")
                ))
            }
            Ok(m) if i + 1 < rel.len() && !m.is_dir() => {
                return Err(format!("{}: not a directory", rel[..=i].join("\\")))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// A path as the agent reports it (`\\`-separated, relative to the volume root), split and
/// checked: no empty, `.` or `..` component.
fn components(path: &str) -> Result<Vec<&str>, String> {
    let comps: Vec<&str> = path.split(['\\', '/']).collect();
    if comps.is_empty()
        || comps
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(format!("{path}: not a plain relative path"));
    }
    Ok(comps)
}

/// A rollback on the volume mounted at `root`: exactly the files of `plan` (what the server
/// recorded as quarantined on this host, sent over the pinned channel) whose volume is
/// `volume` go back from their quarantine path to their original path, if the quarantined
/// file's SHA-256 is the recorded one, nothing is at the original path now, and neither path
/// passes through a link, junction or reparse point. Records on the volume are not read: a
/// user who can write to the volume cannot choose what moves where. Each file is reported
/// (action `restored`), or refused with the reason in the log.
pub fn restore(
    root: &Path,
    volume: &str,
    plan: &[FileRecord],
    run_id: &str,
    now_unix: u64,
) -> Result<VolumeOutcome, (VolumeOutcome, String)> {
    let mut out = VolumeOutcome::default();
    let mut failure: Option<String> = None;
    let qroot = root.join(QUARANTINE_DIR);
    out.log.push(format!(
        "unbrick {} restore run {run_id} on {volume} at {}: {} file(s) recorded by the server",
        crate::AGENT_VERSION,
        signing::time::format_utc(now_unix),
        plan.iter().filter(|r| r.volume == volume).count()
    ));
    for planned in plan.iter().filter(|r| r.volume == volume) {
        let r = (|| -> Result<FileRecord, String> {
            let q = planned
                .quarantined_to
                .clone()
                .ok_or_else(|| format!("{}: no quarantine path recorded", planned.path))?;
            let qc = components(&q)?;
            if qc.len() < 2 || qc[0] != QUARANTINE_DIR {
                return Err(format!("{q}: not under {QUARANTINE_DIR}"));
            }
            let pc = components(&planned.path)?;
            if pc[0].eq_ignore_ascii_case(QUARANTINE_DIR) {
                return Err(format!("{}: inside the quarantine", planned.path));
            }
            no_links(root, &qc)?;
            no_links(root, &pc)?;
            let from = qc.iter().fold(root.to_path_buf(), |p, c| p.join(c));
            let to = pc.iter().fold(root.to_path_buf(), |p, c| p.join(c));
            let meta = std::fs::symlink_metadata(&from).map_err(|e| format!("{q}: {e}"))?;
            if !meta.is_file() {
                return Err(format!("{q}: not a regular file"));
            }
            let sha = sha256_file(&from).map_err(|e| format!("{q}: {e}"))?;
            if sha != planned.sha256 {
                return Err(format!(
                    "{q}: sha256 {sha} is not the recorded {}; left in quarantine",
                    planned.sha256
                ));
            }
            if std::fs::symlink_metadata(&to).is_ok() {
                return Err(format!(
                    "{}: something is there now; {q} left in quarantine",
                    planned.path
                ));
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            // Checked again after the directories were made.
            no_links(root, &pc)?;
            std::fs::rename(&from, &to).map_err(|e| format!("{q} -> {}: {e}", planned.path))?;
            if let Some(parent) = to.parent() {
                fsync_dir(parent);
            }
            // The volume's own record, if any, is marked (informational only).
            let recfile = from.with_file_name(format!("{}.unbrick.json", qc[qc.len() - 1]));
            if std::fs::symlink_metadata(&recfile).is_ok_and(|m| m.is_file()) {
                let mut done = recfile.clone().into_os_string();
                done.push(".restored");
                let _ = std::fs::rename(&recfile, &done);
            }
            let mut rec = planned.clone();
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
            no_links(root, &[QUARANTINE_DIR]).map_err(std::io::Error::other)?;
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

    const CS_DIR: &str = "Windows/System32/drivers/CrowdStrike";

    /// A fresh volume root `unbrick-<tag>-PID` holding bad channel files
    /// `C-00000291-00000000-000000<n>.sys` (written 04:09 UTC), and their content.
    fn bad_channel_files(tag: &str, numbers: &[&str]) -> (PathBuf, Vec<u8>) {
        let root = std::env::temp_dir().join(format!("unbrick-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(b"bad channel file");
        for n in numbers {
            put(
                &root,
                &format!("{CS_DIR}/C-00000291-00000000-000000{n}.sys"),
                &bad,
                "2024-07-19T04:09:00Z",
            );
        }
        (root, bad)
    }

    #[test]
    fn restore_puts_back_what_was_quarantined_and_refuses_the_rest() {
        let cs = CS_DIR;
        let (root, bad) = bad_channel_files("restore", &["32", "31"]);
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
        let plan = q.files.clone();
        let r = restore(&root, "sda2", &plan, "undo1", 1_800_000_100);
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
        // A second rollback of the same plan moves nothing more (the first file is back, its
        // quarantine copy gone).
        let (again, _) = restore(&root, "sda2", &plan, "undo2", 1_800_000_200).unwrap_err();
        assert!(again.files.is_empty());
        // A file that appeared at the original path since is never overwritten.
        std::fs::write(&q31, &bad).unwrap();
        put(
            &root,
            &format!("{cs}/C-00000291-00000000-00000031.sys"),
            b"new",
            "2024-07-20T00:00:00Z",
        );
        let (_, err) = restore(&root, "sda2", &plan, "undo3", 1_800_000_300).unwrap_err();
        assert!(err.contains("something is there now"), "{err}");
        assert_eq!(
            std::fs::read(root.join(cs).join("C-00000291-00000000-00000031.sys")).unwrap(),
            b"new"
        );
        // Another volume's records are not this volume's.
        let out = restore(&root, "sdb1", &plan, "undo4", 1_800_000_400).unwrap();
        assert!(out.files.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A user of the volume plants a quarantine record that would put a DLL into System32: the
    /// rollback, which moves only what the server recorded, leaves it alone.
    #[test]
    fn a_planted_record_on_the_volume_moves_nothing() {
        let root = std::env::temp_dir().join(format!("unbrick-planted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let q = root.join(QUARANTINE_DIR).join("evil");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("payload.dll"), b"MZ evil").unwrap();
        let rec = FileRecord {
            volume: "sda2".into(),
            path: r"Windows\System32\version.dll".into(),
            size: 7,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, b"MZ evil")),
            mtime: 0,
            rule_id: "x".into(),
            action: "quarantine".into(),
            quarantined_to: Some(format!(r"{QUARANTINE_DIR}\evil\payload.dll")),
        };
        std::fs::write(
            q.join("payload.dll.unbrick.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        let out = restore(&root, "sda2", &[], "undo", 1_800_000_000).unwrap();
        assert!(out.files.is_empty());
        assert!(!root.join("Windows/System32/version.dll").exists());
        assert!(q.join("payload.dll").exists());
        // Even a plan naming a path outside the quarantine, or with `..`, is refused.
        let mut bad = rec.clone();
        bad.quarantined_to = Some(r"Users\x\payload.dll".into());
        let (_, e) = restore(&root, "sda2", &[bad], "undo", 1_800_000_000).unwrap_err();
        assert!(e.contains("not under"), "{e}");
        let mut bad = rec.clone();
        bad.path = r"..\etc\x".into();
        let (_, e) = restore(&root, "sda2", &[bad], "undo", 1_800_000_000).unwrap_err();
        assert!(e.contains("not a plain relative path"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Links (ntfs3 and ntfs-3g show junctions and reparse points as symbolic links) are refused
    /// on both paths: a junction at the original place, and one inside the quarantine.
    #[test]
    fn links_are_refused_on_both_paths() {
        let cs = CS_DIR;
        let (root, bad) = bad_channel_files("links", &["32"]);
        let rules = RuleSet::default_crowdstrike(4_000_000_000);
        let plan = remediate(&root, "sda2", &rules, "run1", 1_800_000_000)
            .unwrap()
            .files;
        // The driver folder is replaced by a junction to elsewhere.
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::remove_dir_all(root.join(cs)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join(cs)).unwrap();
        let (out, e) = restore(&root, "sda2", &plan, "undo", 1_800_000_100).unwrap_err();
        assert!(out.files.is_empty());
        assert!(e.contains("junction"), "{e}");
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        // A link planted where the next quarantine would go is refused too.
        std::fs::remove_file(root.join(cs)).unwrap();
        put(
            &root,
            &format!("{cs}/C-00000291-00000000-00000032.sys"),
            &bad,
            "2024-07-19T04:09:00Z",
        );
        std::fs::create_dir_all(root.join(QUARANTINE_DIR)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join(QUARANTINE_DIR).join("run2")).unwrap();
        let (_, e) = remediate(&root, "sda2", &rules, "run2", 1_800_000_200).unwrap_err();
        assert!(e.contains("junction"), "{e}");
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
