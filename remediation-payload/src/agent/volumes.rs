//! Disks and volumes: which block devices to look at, what each one is (NTFS, BitLocker,
//! neither), and one volume's run (mount, hibernation and dirty checks, remediate or restore).
use super::report::VolumeRun;
use super::Ctx;
use crate::cmdline::DirtyPolicy;
use crate::remediate;
use fleet::agent::VolumeReport;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the block-device list must stay the same before the disks are taken.
pub(super) const SETTLED: Duration = Duration::from_millis(150);

/// The block-device list settling (storage drivers probe asynchronously, and a disk's
/// partitions appear after it): watched from the start of driver loading, so the time the
/// drivers take counts towards [`SETTLED`].
#[derive(Debug)]
pub(super) struct Settle {
    seen: Vec<String>,
    since: Instant,
}

impl Settle {
    pub(super) fn new(devices: Vec<String>, at: Instant) -> Self {
        Self {
            seen: devices,
            since: at,
        }
    }

    /// The list as it is at `at`.
    pub(super) fn observe(&mut self, devices: Vec<String>, at: Instant) {
        if devices != self.seen {
            self.seen = devices;
            self.since = at;
        }
    }

    /// Some devices have appeared and the list has not changed for [`SETTLED`].
    pub(super) fn settled(&self, at: Instant) -> bool {
        !self.seen.is_empty() && at.saturating_duration_since(self.since) >= SETTLED
    }
}

/// Block devices and partitions worth reading: (device name, is whole disk).
pub(super) fn block_devices() -> Vec<String> {
    block_devices_in(Path::new("/sys/block"))
}

/// [`block_devices`] under a given `/sys/block` (a test builds one in a temporary folder).
fn block_devices_in(sys_block: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return out;
    };
    let mut disks: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    for d in disks {
        if ["loop", "ram", "sr", "fd", "zram", "dm-", "md"]
            .iter()
            .any(|p| d.starts_with(p))
        {
            continue;
        }
        let mut parts: Vec<String> = std::fs::read_dir(sys_block.join(&d))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        if parts.is_empty() {
            out.push(d);
        } else {
            out.extend(parts);
        }
    }
    out
}

pub(super) fn signature(dev: &str) -> Option<&'static str> {
    let mut b = [0u8; 512];
    std::fs::File::open(format!("/dev/{dev}"))
        .ok()?
        .read_exact(&mut b)
        .ok()?;
    kind_of(&b)
}

/// What a volume is, from its boot sector's OEM ID (bytes 3..11): NTFS, BitLocker (whose
/// boot sector says `-FVE-FS-`), or neither.
pub(super) fn kind_of(boot_sector: &[u8]) -> Option<&'static str> {
    match boot_sector.get(3..11)? {
        b"NTFS    " => Some("ntfs"),
        b"-FVE-FS-" => Some("bitlocker"),
        _ => None,
    }
}

pub(super) fn find_ci(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

pub(super) fn is_hibernated(root: &Path) -> bool {
    let Some(h) = find_ci(root, "hiberfil.sys") else {
        return false;
    };
    let mut b = [0u8; 4];
    std::fs::File::open(h)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && b.eq_ignore_ascii_case(b"hibr")
}

/// The Windows computer name from the volume's SYSTEM hive, on the read-only mount at `root`
/// ("name on disk"); a step says why there is none.
fn computer_name(ctx: &Ctx, dev: &str, root: &Path) -> Option<String> {
    let no = |why: String| {
        ctx.step("volume", &format!("{dev}: no computer name on disk: {why}"));
        None
    };
    let Some(path) = ["Windows", "System32", "config", "SYSTEM"]
        .iter()
        .try_fold(root.to_path_buf(), |d, n| find_ci(&d, n))
    else {
        return no("Windows\\System32\\config\\SYSTEM not found".into());
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > crate::hive::MAX_HIVE_BYTES => {
            return no(format!("the SYSTEM hive has {} bytes; not read", m.len()))
        }
        Ok(_) => {}
        Err(e) => return no(format!("SYSTEM hive: {e}")),
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return no(format!("SYSTEM hive: {e}")),
    };
    match crate::hive::computer_name(&bytes) {
        Ok(n) => {
            ctx.step("volume", &format!("{dev}: computer name on disk: {n}"));
            Some(n)
        }
        Err(e) => no(format!("SYSTEM hive: {e}")),
    }
}

/// The Windows version from the volume's SOFTWARE hive, on the read-only mount at `root`; a
/// step says why there is none.
fn windows_version(ctx: &Ctx, dev: &str, root: &Path) -> Option<fleet::agent::WindowsVersion> {
    let no = |why: String| {
        ctx.step("volume", &format!("{dev}: no Windows version: {why}"));
        None
    };
    let Some(path) = ["Windows", "System32", "config", "SOFTWARE"]
        .iter()
        .try_fold(root.to_path_buf(), |d, n| find_ci(&d, n))
    else {
        return no("Windows\\System32\\config\\SOFTWARE not found".into());
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > crate::hive::MAX_HIVE_BYTES => {
            return no(format!("the SOFTWARE hive has {} bytes; not read", m.len()))
        }
        Ok(_) => {}
        Err(e) => return no(format!("SOFTWARE hive: {e}")),
    }
    match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::hive::windows_version(&b))
    {
        Ok(v) => {
            ctx.step(
                "volume",
                &format!(
                    "{dev}: Windows {} {} build {}.{}",
                    v.product.as_deref().unwrap_or("?"),
                    v.display_version.as_deref().unwrap_or(""),
                    v.build.map_or("?".into(), |b| b.to_string()),
                    v.ubr.map_or("?".into(), |b| b.to_string())
                ),
            );
            Some(v)
        }
        Err(e) => no(format!("SOFTWARE hive: {e}")),
    }
}

/// The kernel crash dumps under `root` (read-only mount): `Windows\Minidump\*.dmp`, newest
/// first, and `Windows\MEMORY.DMP`, at most [`fleet::agent::MAX_DUMPS`]; of MEMORY.DMP only the
/// header ([`crate::crashdump::HEADER_BYTES`]) is read, of a minidump at most
/// [`crate::crashdump::TRIAGE_MAX_BYTES`] (its driver list names the faulting driver).
pub(super) fn crash_dumps(root: &Path) -> Vec<fleet::agent::CrashDump> {
    use crate::crashdump;
    let Some(win) = find_ci(root, "Windows") else {
        return Vec::new();
    };
    let mtime = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        m.mtime()
    };
    // A folder's or file's name as it is on the disk (the path reported is the disk's own).
    let name_of = |p: &Path, or: &str| {
        p.file_name()
            .map_or(or.to_string(), |n| n.to_string_lossy().into_owned())
    };
    let wname = name_of(&win, "Windows");
    let mut found: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
    if let Some(dir) = find_ci(&win, "Minidump") {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() && name.to_ascii_lowercase().ends_with(".dmp") {
                let dname = name_of(&dir, "Minidump");
                found.push((format!("{wname}\\{dname}\\{name}"), e.path(), m));
            }
        }
    }
    found.sort_by_key(|(p, _, m)| (std::cmp::Reverse(mtime(m)), p.clone()));
    found.truncate(fleet::agent::MAX_DUMPS - 1);
    if let Some(p) = find_ci(&win, "MEMORY.DMP") {
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                let fname = name_of(&p, "MEMORY.DMP");
                found.push((format!("{wname}\\{fname}"), p, m));
            }
        }
    }
    found
        .into_iter()
        .map(|(rel, path, m)| {
            // A minidump is read whole (bounded) for its driver list; MEMORY.DMP only its header.
            let want = if rel.to_ascii_lowercase().ends_with("memory.dmp") {
                crashdump::HEADER_BYTES
            } else {
                crashdump::TRIAGE_MAX_BYTES
            };
            let mut head = Vec::with_capacity(crashdump::HEADER_BYTES);
            let read =
                std::fs::File::open(&path).and_then(|f| f.take(want as u64).read_to_end(&mut head));
            let parsed = read
                .map_err(|e| e.to_string())
                .and_then(|_| crashdump::parse(&head));
            let mut d = fleet::agent::CrashDump {
                path: rel,
                size: m.len(),
                written_unix: mtime(&m),
                bugcheck: String::new(),
                bugcheck_name: None,
                parameters: Vec::new(),
                dump_time_unix: None,
                build: 0,
                kind: String::new(),
                driver: None,
                error: None,
            };
            match parsed {
                Ok(h) => {
                    d.bugcheck = format!("0x{:08X}", h.bugcheck);
                    d.bugcheck_name = crashdump::bugcheck_name(h.bugcheck).map(String::from);
                    d.parameters = h.parameters.iter().map(|p| format!("0x{p:X}")).collect();
                    d.dump_time_unix = h.time_unix;
                    d.build = h.build;
                    d.driver = crashdump::faulting_driver(&head, &h);
                    d.kind = h.kind;
                }
                Err(e) => d.error = Some(e),
            }
            d
        })
        .collect()
}

/// The System event log under `root` (read-only mount), read and scanned; `None` when the
/// volume has none. At most [`crate::eventlog::MAX_LOG_BYTES`] of it are read.
pub(super) fn event_log(root: &Path) -> Option<fleet::agent::EventLogScan> {
    let mut at = root.to_path_buf();
    let mut rel = Vec::new();
    for part in ["Windows", "System32", "winevt", "Logs", "System.evtx"] {
        at = find_ci(&at, part)?;
        rel.push(
            at.file_name()
                .map_or(part.to_string(), |n| n.to_string_lossy().into_owned()),
        );
    }
    let rel = rel.join("\\");
    let mut bytes = Vec::new();
    match std::fs::File::open(&at).and_then(|f| {
        f.take(crate::eventlog::MAX_LOG_BYTES as u64)
            .read_to_end(&mut bytes)
    }) {
        Ok(_) => Some(crate::eventlog::scan(rel, bytes)),
        Err(e) => Some(fleet::agent::EventLogScan {
            path: rel,
            records: 0,
            unreadable: 0,
            events: Vec::new(),
            error: Some(format!("cannot read it: {e}")),
        }),
    }
}

/// Mounts `src` (the volume `dev` itself, or its unlocked BitLocker mapping) and remediates
/// (or restores) it.
pub(super) fn do_volume(
    ctx: &Ctx,
    dev: &str,
    src: &str,
    rules: &signing::RuleSet,
    run_id: &str,
    now: u64,
) -> VolumeRun {
    let dir = PathBuf::from(format!("/mnt/{dev}"));
    let _ = std::fs::create_dir_all(&dir);
    let mut vr = VolumeRun {
        report: VolumeReport {
            device: dev.into(),
            kind: "ntfs".into(),
            status: String::new(),
            detail: String::new(),
            protectors: vec![],
            computer_name: None,
            crash_dumps: vec![],
            windows_version: None,
            inspected: vec![],
            event_log: None,
        },
        files: Vec::new(),
        failed: None,
        windows: false,
    };
    // A read-only look first: a hibernated Windows must never be written to.
    if mount(
        Some(src),
        &dir,
        Some("ntfs3"),
        MsFlags::MS_RDONLY,
        Some("iocharset=utf8"),
    )
    .is_ok()
    {
        let hib = is_hibernated(&dir);
        vr.windows = find_ci(&dir, "Windows").is_some();
        if vr.windows {
            vr.report.computer_name = computer_name(ctx, dev, &dir);
            vr.report.crash_dumps = crash_dumps(&dir);
            if ctx.restore.is_none()
                && rules
                    .rules
                    .iter()
                    .any(|r| r.action == signing::Action::Inspect)
            {
                vr.report.windows_version = windows_version(ctx, dev, &dir);
                let (files, errors) = crate::inspect::inspect(&dir, rules, now);
                for e in &errors {
                    ctx.step("volume", &format!("{dev}: inspect: {e}"));
                }
                for f in &files {
                    ctx.step(
                        "file",
                        &format!(
                            "{dev}: inspected {} ({} bytes, sha256 {}{})",
                            f.path,
                            f.size,
                            f.sha256,
                            f.version
                                .as_ref()
                                .and_then(|v| v.file_version.as_deref())
                                .map(|v| format!(", version {v}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                vr.report.inspected = files;
                vr.report.event_log = event_log(&dir);
                if let Some(l) = &vr.report.event_log {
                    ctx.step(
                        "volume",
                        &format!(
                            "{dev}: {}: {} records, {} about crashes{}",
                            l.path,
                            l.records,
                            l.events.len(),
                            l.error
                                .as_ref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        ),
                    );
                }
            }
            for d in &vr.report.crash_dumps {
                ctx.step(
                    "volume",
                    &format!(
                        "{dev}: crash dump {}: {}",
                        d.path,
                        d.error.clone().unwrap_or_else(|| format!(
                            "bugcheck {} {} ({}, build {})",
                            d.bugcheck,
                            d.bugcheck_name.as_deref().unwrap_or(""),
                            d.kind,
                            d.build
                        ))
                    ),
                );
            }
        }
        let _ = umount2(&dir, MntFlags::empty());
        if ctx.restore.is_none() && !rules.writes() {
            // A scan: nothing more to do, and no read-write mount at all.
            vr.report.status = if vr.windows {
                "inspected"
            } else {
                "not-windows"
            }
            .into();
            vr.report.detail = format!(
                "{} file(s) inspected; read-only scan, nothing written{}",
                vr.report.inspected.len(),
                if hib {
                    " (Windows is hibernated on this volume)"
                } else {
                    ""
                }
            );
            ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
            return vr;
        }
        if hib {
            vr.report.status = "hibernated".into();
            vr.report.detail = "Windows is hibernated on this volume (hiberfil.sys); it was not touched. Resume or shut Windows down fully, then retry".into();
            ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
            return vr;
        }
    }
    let mut forced = false;
    if let Err(e) = mount(
        Some(src),
        &dir,
        Some("ntfs3"),
        MsFlags::empty(),
        Some("iocharset=utf8"),
    ) {
        match ctx.cmd.dirty {
            DirtyPolicy::Force => {
                if let Err(e2) = mount(
                    Some(src),
                    &dir,
                    Some("ntfs3"),
                    MsFlags::empty(),
                    Some("iocharset=utf8,force"),
                ) {
                    vr.report.status = "mount-failed".into();
                    vr.report.detail = format!("ntfs3 refused the volume ({e}; with force: {e2})");
                    ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
                    return vr;
                }
                forced = true;
            }
            DirtyPolicy::Skip => {
                vr.report.status = "dirty-skipped".into();
                vr.report.detail =
                    format!("volume is marked dirty ({e}); not mounted because unbrick.dirty=skip");
                ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
                return vr;
            }
        }
    }
    ctx.step(
        "volume",
        &format!(
            "{dev}: NTFS mounted read-write{}{}",
            if forced {
                " with force (the volume was marked dirty; it stays marked for chkdsk)"
            } else {
                ""
            },
            if vr.windows { ", Windows found" } else { "" }
        ),
    );
    let result = if let Some(plan) = &ctx.restore {
        remediate::restore(&dir, dev, plan, run_id, now)
    } else {
        remediate::remediate(&dir, dev, rules, run_id, now)
    };
    let (outcome, err) = match result {
        Ok(o) => (o, None),
        Err((o, e)) => (o, Some(e)),
    };
    for f in &outcome.files {
        ctx.step(
            "file",
            &format!("{dev}: {} {} (sha256 {})", f.action, f.path, f.sha256),
        );
    }
    nix::unistd::sync();
    let mut unmounted = false;
    for _ in 0..10 {
        if umount2(&dir, MntFlags::empty()).is_ok() {
            unmounted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if !unmounted {
        vr.failed
            .get_or_insert(format!("{dev}: could not unmount cleanly"));
    }
    vr.files = outcome.files;
    if let Some(e) = err {
        vr.failed = Some(format!("{dev}: {e}"));
        vr.report.status = "failed".into();
        vr.report.detail = e;
    } else {
        vr.report.status = if !vr.files.is_empty() && ctx.restore.is_some() {
            "restored"
        } else if !vr.files.is_empty() {
            "remediated"
        } else if vr.windows {
            "clean"
        } else {
            "not-windows"
        }
        .into();
        vr.report.detail = format!(
            "{} file(s) matched the rules{}",
            vr.files.len(),
            if forced {
                "; dirty volume mounted with force"
            } else {
                ""
            }
        );
        if forced {
            vr.report.status = format!("{}-dirty-forced", vr.report.status);
        }
    }
    vr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_list_settles_after_150_ms_without_change() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let v = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut s = Settle::new(Vec::new(), t0);
        // Nothing yet: never settled, however long.
        assert!(!s.settled(at(5_000)));
        s.observe(v(&["sda"]), at(100));
        assert!(!s.settled(at(200)));
        // A partition appears: the clock starts again.
        s.observe(v(&["sda", "sda1"]), at(200));
        assert!(!s.settled(at(340)));
        s.observe(v(&["sda", "sda1"]), at(340));
        assert!(s.settled(at(350)));
        // Devices present from the start (watched while drivers loaded) count from then.
        let s = Settle::new(v(&["vda"]), t0);
        assert!(s.settled(at(150)));
    }

    #[test]
    fn crash_dumps_are_read_newest_first() {
        let root = std::env::temp_dir().join(format!("unbrick-dumps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let md = root.join("WINDOWS").join("Minidump");
        std::fs::create_dir_all(&md).unwrap();
        let mut h = vec![0u8; crate::crashdump::HEADER_BYTES];
        h[..8].copy_from_slice(b"PAGEDU64");
        h[0x0c..0x10].copy_from_slice(&19045u32.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(&0x50u32.to_le_bytes());
        h[0xf98..0xf9c].copy_from_slice(&4u32.to_le_bytes());
        let mut big = h.clone();
        big.extend(vec![0xeeu8; 1 << 20]);
        std::fs::write(md.join("071924-1-01.dmp"), &big).unwrap();
        std::fs::write(md.join("junk.DMP"), b"MDMP").unwrap();
        std::fs::write(md.join("notes.txt"), b"x").unwrap();
        std::fs::write(root.join("WINDOWS").join("memory.dmp"), &h).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_721_362_140);
        std::fs::File::options()
            .write(true)
            .open(md.join("071924-1-01.dmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let d = crash_dumps(&root);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "WINDOWS\\Minidump\\junk.DMP",
                "WINDOWS\\Minidump\\071924-1-01.dmp",
                "WINDOWS\\memory.dmp"
            ]
        );
        assert!(
            d[0].error.as_deref().unwrap().contains("no PAGE"),
            "{:?}",
            d[0]
        );
        assert_eq!(d[1].bugcheck, "0x00000050");
        assert_eq!(
            d[1].bugcheck_name.as_deref(),
            Some("PAGE_FAULT_IN_NONPAGED_AREA")
        );
        assert_eq!(
            (d[1].build, d[1].kind.as_str()),
            (19045, "small (minidump)")
        );
        assert_eq!(
            (d[1].size, d[1].written_unix),
            (big.len() as u64, 1_721_362_140)
        );
        assert_eq!(d[1].parameters.len(), 4);
        assert_eq!(
            d[1].driver, None,
            "filler where a driver list would be names none"
        );
        assert!(
            crash_dumps(&root.join("WINDOWS")).is_empty(),
            "no Windows folder"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_system_event_log_is_found_whatever_its_case_and_read() {
        let root = std::env::temp_dir().join(format!("unbrick-evtx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert!(event_log(&root).is_none(), "no volume");
        let logs = root.join("WINDOWS/system32/WINEVT/Logs");
        std::fs::create_dir_all(&logs).unwrap();
        assert!(event_log(&root).is_none(), "no System log");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/evtx/system.evtx"),
            logs.join("SYSTEM.EVTX"),
        )
        .unwrap();
        let l = event_log(&root).unwrap();
        assert_eq!(l.path, r"WINDOWS\system32\WINEVT\Logs\SYSTEM.EVTX");
        assert_eq!((l.records, l.error), (1881, None));
        std::fs::write(logs.join("SYSTEM.EVTX"), b"ElfFile\0 but cut").unwrap();
        let l = event_log(&root).unwrap();
        assert!(l.error.is_some(), "{l:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn volume_classification() {
        let mut b = [0u8; 512];
        b[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(kind_of(&b), Some("ntfs"));
        b[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(kind_of(&b), Some("bitlocker"));
        b[3..11].copy_from_slice(b"MSDOS5.0");
        assert_eq!(
            kind_of(&b),
            None,
            "FAT (the EFI system partition) is not looked at"
        );
        assert_eq!(kind_of(&b[..8]), None, "a short read is nothing");
    }

    #[test]
    fn block_devices_are_partitions_or_whole_disks_never_loop_or_optical() {
        let root = std::env::temp_dir().join(format!("unbrick-sysblock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "sda/sda1",
            "sda/sda2",
            "vdb",
            "loop0",
            "sr0",
            "dm-0",
            "nvme0n1/nvme0n1p3",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for p in ["sda/sda1", "sda/sda2", "nvme0n1/nvme0n1p3"] {
            std::fs::write(root.join(p).join("partition"), "1").unwrap();
        }
        assert_eq!(
            block_devices_in(&root),
            ["nvme0n1p3", "sda1", "sda2", "vdb"]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
