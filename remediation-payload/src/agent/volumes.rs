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
use std::time::Duration;

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
        }
        let _ = umount2(&dir, MntFlags::empty());
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
