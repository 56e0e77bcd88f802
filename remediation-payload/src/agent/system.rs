//! The machine under the agent: pseudo file systems, the console, kernel modules for the
//! devices present, the NIC, firmware facts (Secure Boot, lockdown), and the final reboot.
use super::say;
use nix::mount::{mount, MsFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unbrick_http as http;

pub(super) fn setup_console() {
    let _ = std::fs::create_dir_all("/dev");
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        None::<&str>,
    );
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = nix::unistd::dup2(f.as_raw_fd(), fd);
        }
    }
}

pub(super) fn finish(poweroff: bool) -> ! {
    http::close_idle();
    nix::unistd::sync();
    let mode = if poweroff {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    say(if poweroff {
        "powering off"
    } else {
        "rebooting in 5 seconds"
    });
    if !poweroff {
        std::thread::sleep(Duration::from_secs(5));
    }
    let e = nix::sys::reboot::reboot(mode);
    say(&format!(
        "could not reboot ({e:?}); switch this machine off and on"
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

pub(super) fn mount_pseudo() {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(dir);
        if let Err(e) = mount(
            Some(src),
            dir,
            Some(fs),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        ) {
            say(&format!("mount {dir}: {e}"));
        }
    }
    let _ = mount(
        Some("securityfs"),
        "/sys/kernel/security",
        Some("securityfs"),
        MsFlags::empty(),
        None::<&str>,
    );
}

pub(super) fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Every device's modalias under /sys/bus (what udev would match drivers against).
pub(super) fn modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for d in devs.flatten() {
            if let Ok(m) = std::fs::read_to_string(d.path().join("modalias")) {
                out.push(m.trim().to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Loads the drivers for the devices present: a newly loaded bus driver (AHCI, xHCI) makes new
/// devices appear, whose drivers are loaded as soon as their modalias shows up (looked for every
/// 50 ms). Loading ends once no new driver was wanted for a quiet spell: 100 ms, or 1 s after a
/// USB host controller's driver or the last USB hub that appeared (a USB bus takes a while to
/// enumerate), and at the latest 8 s after the start. The modules wanted at one moment load side by side (one thread each), each
/// once the modules it depends on (`modules.dep`) have been tried: a driver's init can take a
/// while (probing its device), and independent ones need not wait for each other.
///
/// Where the kernel is not locked down and does not enforce signatures (no Secure Boot), each
/// module's appended signature is dropped before it is loaded: the kernel would check it anyway
/// (ECDSA P-384 in plain C, about half of a module's load under emulation) and proves nothing
/// there, since whoever could change a module in this initramfs could change the agent beside
/// it. Under Secure Boot (lockdown) the signatures are what counts, and they are kept.
///
/// `cmdline` is the kernel command line (module options, `modprobe.blacklist=`). `tick` is
/// called on every round of the loop (about every 50 ms while it waits), for the
/// caller to watch what the drivers bring meanwhile.
pub(super) fn load_modules(
    cfg: &crate::AgentConfig,
    cmdline: &str,
    notes: &mut Vec<String>,
    tick: &mut dyn FnMut(),
) {
    let base = PathBuf::from("/lib/modules").join(&cfg.kernel_version);
    let lockdown = lockdown();
    let strip = crate::modules::signatures_optional(
        lockdown.as_deref(),
        read_trim("/sys/module/module/parameters/sig_enforce").as_deref(),
    );
    // Module options from the kernel command line (`usb_storage.delay_use=0`,
    // `modprobe.blacklist=...`), which the admin sets with `serve --kernel-cmdline`.
    let opts = crate::modules::CmdlineOptions::parse(cmdline);
    let order: Vec<String> = cfg.modules.iter().map(|(n, _)| n.clone()).collect();
    let paths: std::collections::BTreeMap<&str, &str> = cfg
        .modules
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let mut done = std::collections::BTreeSet::new();
    let mut loaded = Vec::new();
    let start = Instant::now();
    let mut last_change = start;
    let mut slowest = Vec::new();
    let mut seen_aliases: Vec<String> = Vec::new();
    loop {
        tick();
        let aliases = modaliases();
        // A USB hub that appeared (built into usbcore: no module load marks it) has its own
        // ports still to enumerate: the quiet spell starts again from it.
        if crate::modules::new_usb_hub(&seen_aliases, &aliases) {
            last_change = Instant::now();
        }
        let want = crate::modules::select(&aliases, &cfg.aliases, &cfg.always, &cfg.deps, &order);
        seen_aliases = aliases;
        let todo: Vec<String> = want.into_iter().filter(|m| !done.contains(m)).collect();
        if !todo.is_empty() {
            done.extend(todo.iter().cloned());
            for (m, (r, took)) in crate::modules::in_parallel(&todo, &cfg.deps, |m| {
                let t = Instant::now();
                if opts.blacklist.contains(m) {
                    return (Load::Blacklisted, t.elapsed());
                }
                let params = opts.params.get(m).map(String::as_str).unwrap_or("");
                (
                    load_one(&base, paths.get(m).copied(), params, strip),
                    t.elapsed(),
                )
            }) {
                match r {
                    Load::Loaded => {
                        slowest.push((took, m.clone()));
                        loaded.push(m);
                    }
                    Load::Skipped => {}
                    Load::Blacklisted => {
                        notes.push(format!("{m}: not loaded (modprobe.blacklist)"))
                    }
                    Load::Failed(e) => notes.push(format!("{m}: {e}")),
                }
            }
            last_change = Instant::now();
            continue;
        }
        let usb = loaded
            .iter()
            .any(|m| m.starts_with("xhci") || m.starts_with("ehci") || m == "usbcore");
        let quiet = Duration::from_millis(if usb { 1000 } else { 100 });
        if last_change.elapsed() >= quiet || start.elapsed() >= Duration::from_secs(8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    slowest.sort_by(|a, b| b.cmp(a));
    let slow: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(t, m)| format!("{m} {} ms", t.as_millis()))
        .collect();
    let given: Vec<String> = opts
        .params
        .iter()
        .filter(|(m, _)| loaded.contains(*m))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    if !given.is_empty() {
        notes.insert(
            0,
            format!("options from the command line: {}", given.join(", ")),
        );
    }
    notes.insert(
        0,
        format!(
            "{} of {} modules in the image loaded for this hardware in {} ms: {} (longest: {}; {})",
            loaded.len(),
            cfg.modules.len(),
            start.elapsed().as_millis(),
            loaded.join(" "),
            slow.join(", "),
            if strip {
                "no lockdown: loaded without their signatures".to_string()
            } else {
                format!(
                    "signatures checked by the kernel, lockdown {}",
                    lockdown.as_deref().unwrap_or("unknown")
                )
            }
        ),
    );
}

/// What loading one module came to.
enum Load {
    Loaded,
    /// Not in the image's list (built in), or already loaded.
    Skipped,
    /// Named in `modprobe.blacklist=` on the command line.
    Blacklisted,
    Failed(String),
}

fn load_one(base: &Path, rel: Option<&str>, params: &str, strip: bool) -> Load {
    let Some(rel) = rel else {
        return Load::Skipped;
    };
    let Ok(params) = std::ffi::CString::new(params) else {
        return Load::Failed("a NUL in its options".into());
    };
    let compressed = rel.ends_with(".xz") || rel.ends_with(".zst") || rel.ends_with(".gz");
    if strip && !compressed {
        let Ok(mut image) = std::fs::read(base.join(rel)) else {
            return Load::Failed("missing from the image".into());
        };
        crate::modules::strip_signature(&mut image);
        match nix::kmod::init_module(&image, &params) {
            Ok(()) => return Load::Loaded,
            Err(nix::errno::Errno::EEXIST) => return Load::Skipped,
            Err(e) if refused_unsigned(e) => {} // loaded as it is, below, signature and all
            Err(e) => return Load::Failed(e.to_string()),
        }
    }
    let Ok(f) = std::fs::File::open(base.join(rel)) else {
        return Load::Failed("missing from the image".into());
    };
    // MODULE_INIT_COMPRESSED_FILE (4): the kernel decompresses .ko.xz itself, and the
    // module's signature stays valid under Secure Boot lockdown.
    let flags = if compressed {
        nix::kmod::ModuleInitFlags::from_bits_retain(4)
    } else {
        nix::kmod::ModuleInitFlags::empty()
    };
    match nix::kmod::finit_module(&f, &params, flags) {
        Ok(()) => Load::Loaded,
        Err(nix::errno::Errno::EEXIST) => Load::Skipped,
        Err(e) => Load::Failed(e.to_string()),
    }
}

/// Whether `init_module` refused an unsigned image for want of a signature or of a file to
/// appraise (a policy the lockdown file does not show: IMA appraisal, LoadPin), so that the
/// module is worth loading signed from its file instead.
fn refused_unsigned(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(
        e,
        Errno::EPERM | Errno::EACCES | Errno::EKEYREJECTED | Errno::ENOKEY | Errno::EBADMSG
    )
}

/// The machine's network controllers (PCI class 02) under `pci_devices` (`/sys/bus/pci/devices`)
/// as `vendor:device (driver)`: what an admin needs when no interface appeared (the agent cannot
/// report it over a network it does not have, so it goes to the screen).
pub(super) fn network_controllers(pci_devices: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(pci_devices) else {
        return out;
    };
    for e in rd.flatten() {
        let d = e.path();
        let class = read_trim(&d.join("class").to_string_lossy()).unwrap_or_default();
        if !class.starts_with("0x02") {
            continue;
        }
        let id = |f: &str| {
            read_trim(&d.join(f).to_string_lossy())
                .unwrap_or_default()
                .trim_start_matches("0x")
                .to_string()
        };
        let driver = std::fs::read_link(d.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "no driver".into());
        out.push(format!(
            "{}:{} at {} ({driver})",
            id("vendor"),
            id("device"),
            e.file_name().to_string_lossy()
        ));
    }
    out.sort();
    out
}

pub(super) fn find_nic(mac: Option<&str>, wait: Duration) -> Option<(String, String)> {
    let t = Instant::now();
    loop {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "lo" {
                    continue;
                }
                let addr = read_trim(&format!("/sys/class/net/{name}/address")).unwrap_or_default();
                found.push((name, addr));
            }
        }
        found.sort();
        if let Some(m) = mac {
            if let Some(f) = found.iter().find(|(_, a)| a == m) {
                return Some(f.clone());
            }
        } else if let Some(f) = found.into_iter().next() {
            return Some(f);
        }
        if t.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn secure_boot_state() -> Option<bool> {
    let dir = Path::new("/sys/firmware/efi/efivars");
    let _ = mount(
        Some("efivarfs"),
        dir,
        Some("efivarfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    );
    let v = std::fs::read(dir.join("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")).ok()?;
    // 4 bytes of attributes, then the value.
    v.get(4).map(|b| *b == 1)
}

pub(super) fn lockdown() -> Option<String> {
    let s = read_trim("/sys/kernel/security/lockdown")?;
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_unsigned_module_is_retried_signed_and_nothing_else() {
        use nix::errno::Errno;
        for e in [
            Errno::EPERM,
            Errno::EACCES,
            Errno::EKEYREJECTED,
            Errno::ENOKEY,
            Errno::EBADMSG,
        ] {
            assert!(refused_unsigned(e), "{e}");
        }
        // A module that does not fit the kernel, or a device it cannot drive, fails as it is.
        for e in [
            Errno::ENOEXEC,
            Errno::ENOENT,
            Errno::EINVAL,
            Errno::ENODEV,
            Errno::ENOMEM,
        ] {
            assert!(!refused_unsigned(e), "{e}");
        }
    }

    #[test]
    fn network_controllers_name_pci_ids_and_driver() {
        let root = std::env::temp_dir().join(format!("unbrick-pci-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dev = |slot: &str, class: &str, vendor: &str, device: &str| {
            let d = root.join(slot);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
            d
        };
        dev("0000:00:1f.6", "0x020000", "0x8086", "0x15bc");
        let bound = dev("0000:03:00.0", "0x028000", "0x8086", "0x2723");
        std::os::unix::fs::symlink(root.join("drivers/iwlwifi"), bound.join("driver")).unwrap();
        dev("0000:00:02.0", "0x030000", "0x8086", "0x9a49");
        assert_eq!(
            network_controllers(&root),
            [
                "8086:15bc at 0000:00:1f.6 (no driver)",
                "8086:2723 at 0000:03:00.0 (iwlwifi)"
            ]
        );
        assert!(network_controllers(&root.join("missing")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
