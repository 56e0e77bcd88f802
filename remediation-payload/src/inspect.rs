//! The read-only scan: the files the rules' `inspect` entries match on a mounted volume, with
//! the facts an admin needs to tell a bad file from a good one (size, last write, SHA-256,
//! first bytes, the PE version resource). Nothing is written; links, junctions and reparse
//! points are not followed (the candidates are real files under real directories). Works on
//! any directory, so it is tested on the host with ordinary files.
use fleet::agent::{FileVersion, InspectedFile, MAX_INSPECTED};
use signing::{Action, FileFacts, RuleSet};
use std::io::Read;
use std::path::Path;

/// The largest file hashed and read for its version resource; a larger one is reported with
/// its size, time and first bytes, and says why it has no hash.
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// The files under `root` that an `inspect` rule matches (first match per file), at most
/// [`MAX_INSPECTED`], and the errors met on the way (a directory that cannot be read).
pub fn inspect(root: &Path, rules: &RuleSet, now_unix: u64) -> (Vec<InspectedFile>, Vec<String>) {
    let mut out: Vec<InspectedFile> = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for rule in rules.rules.iter().filter(|r| r.action == Action::Inspect) {
        let found = match crate::remediate::candidates(root, rule) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("cannot search for {}: {e}", rule.path));
                continue;
            }
        };
        for (comps, path) in found {
            if out.len() >= MAX_INSPECTED {
                errors.push(format!(
                    "more than {MAX_INSPECTED} files matched; the rest are not listed"
                ));
                return (out, errors);
            }
            let rel = comps.join("\\");
            if !seen.insert(rel.to_lowercase()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = crate::remediate::mtime_of(&meta);
            let mut head = Vec::new();
            let read_head = std::fs::File::open(&path).and_then(|f| {
                f.take(rules.header_len().max(16) as u64)
                    .read_to_end(&mut head)
            });
            let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
            let facts = FileFacts {
                components: &refs,
                header: &head,
                last_write_unix: mtime,
                now_unix: now_unix as i64,
            };
            let Some(r) = rules.inspects(&facts) else {
                continue;
            };
            let mut f = InspectedFile {
                path: rel,
                size: meta.len(),
                written_unix: mtime,
                sha256: String::new(),
                head: hex::encode(&head[..head.len().min(16)]),
                rule_id: r.id.clone(),
                version: None,
                error: None,
            };
            if let Err(e) = read_head {
                f.error = Some(format!("cannot read: {e}"));
            } else if meta.len() > MAX_READ_BYTES {
                f.error = Some(format!(
                    "{} bytes: larger than the {MAX_READ_BYTES} read for a hash",
                    meta.len()
                ));
            } else {
                match read_bounded(&path) {
                    Ok(bytes) => {
                        f.sha256 = hex::encode(
                            ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
                        );
                        match crate::pe::version_info(&bytes) {
                            Ok(Some(v)) => {
                                f.version = Some(FileVersion {
                                    company: v.company,
                                    product: v.product,
                                    file_version: v.file_version.or(v.fixed_version),
                                    description: v.description,
                                })
                            }
                            Ok(None) => {}
                            Err(e) => f.error = Some(e),
                        }
                    }
                    Err(e) => f.error = Some(format!("cannot read: {e}")),
                }
            }
            out.push(f);
        }
    }
    (out, errors)
}

/// The file's bytes, at most [`MAX_READ_BYTES`] (it may have grown since it was looked at).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_READ_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signing::Rule;

    fn scan_rules() -> RuleSet {
        let mut r = RuleSet::default_crowdstrike(2_000_000_000);
        let rule = |id: &str, path: &str| Rule {
            id: id.into(),
            description: "drivers changed in the last 30 days".into(),
            path: path.into(),
            magic: None,
            last_write_before: None,
            last_write_after: None,
            changed_within_days: Some(30),
            action: Action::Inspect,
        };
        r.rules = vec![
            rule("drivers", r"Windows\System32\drivers\*"),
            rule("drivers-sub", r"Windows\System32\drivers\*\*"),
        ];
        r
    }

    fn touch(path: &Path, bytes: &[u8], unix: i64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix as u64))
            .unwrap();
    }

    #[test]
    fn recent_drivers_are_listed_with_their_facts_and_nothing_changes() {
        let root = std::env::temp_dir().join(format!("unbrick-inspect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let d = root.join("Windows/System32/drivers");
        let now = 1_721_400_000; // 2024-07-19T14:40Z
        let bad = [
            0xAAu8, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01, 9, 9, 9, 9, 9, 9, 9, 9, 7,
        ];
        touch(
            &d.join("CrowdStrike/C-00000291-00000000-00000032.sys"),
            &bad,
            1_721_362_140, // 04:09 UTC
        );
        touch(&d.join("old.sys"), b"MZ old", now - 400 * 86_400);
        touch(&d.join("fresh.sys"), b"not a PE file", now - 3_600);
        // A link planted among the drivers is not followed.
        std::os::unix::fs::symlink("/etc/hostname", d.join("link.sys")).unwrap();
        let before = snapshot(&root);
        let (files, errors) = inspect(&root, &scan_rules(), now as u64);
        assert!(errors.is_empty(), "{errors:?}");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                r"Windows\System32\drivers\fresh.sys",
                r"Windows\System32\drivers\CrowdStrike\C-00000291-00000000-00000032.sys"
            ]
        );
        let cs = &files[1];
        assert_eq!(cs.size, 17);
        assert_eq!(cs.written_unix, 1_721_362_140);
        assert_eq!(cs.head, "aaaaaaaa010023010909090909090909");
        assert_eq!(
            cs.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &bad).as_ref())
        );
        assert_eq!(cs.rule_id, "drivers-sub");
        assert!(cs.version.is_none() && cs.error.is_none());
        assert_eq!(snapshot(&root), before, "the scan wrote nothing");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Every path under `root` with its size and modification time.
    fn snapshot(root: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), m.len(), m.modified().unwrap()));
            if m.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }
}
