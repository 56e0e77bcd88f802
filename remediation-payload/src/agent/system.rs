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

/// Loads the drivers for the devices present, in rounds: a newly loaded bus driver (AHCI, xHCI)
/// makes new devices appear, whose drivers the next round loads.
pub(super) fn load_modules(cfg: &crate::AgentConfig, notes: &mut Vec<String>) {
    let base = PathBuf::from("/lib/modules").join(&cfg.kernel_version);
    let order: Vec<String> = cfg.modules.iter().map(|(n, _)| n.clone()).collect();
    let paths: std::collections::BTreeMap<&str, &str> = cfg
        .modules
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let mut done = std::collections::BTreeSet::new();
    let mut loaded = Vec::new();
    for round in 0..3 {
        let want =
            crate::modules::select(&modaliases(), &cfg.aliases, &cfg.always, &cfg.deps, &order);
        let todo: Vec<&String> = want.iter().filter(|m| !done.contains(*m)).collect();
        if todo.is_empty() {
            break;
        }
        for m in todo {
            done.insert(m.clone());
            let Some(rel) = paths.get(m.as_str()) else {
                continue;
            };
            let Ok(f) = std::fs::File::open(base.join(rel)) else {
                notes.push(format!("{m}: missing from the image"));
                continue;
            };
            // MODULE_INIT_COMPRESSED_FILE (4): the kernel decompresses .ko.xz itself, and the
            // module's signature stays valid under Secure Boot lockdown.
            let flags = if rel.ends_with(".xz") || rel.ends_with(".zst") || rel.ends_with(".gz") {
                nix::kmod::ModuleInitFlags::from_bits_retain(4)
            } else {
                nix::kmod::ModuleInitFlags::empty()
            };
            match nix::kmod::finit_module(&f, c"", flags) {
                Ok(()) => loaded.push(m.clone()),
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => notes.push(format!("{m}: {e}")),
            }
        }
        if round < 2 {
            // Let buses that just got a driver enumerate their devices: USB needs longer.
            let usb = loaded
                .iter()
                .any(|m| m.starts_with("xhci") || m.starts_with("ehci") || m == "usbcore");
            std::thread::sleep(Duration::from_millis(if usb { 1500 } else { 100 }));
        }
    }
    notes.insert(
        0,
        format!(
            "{} of {} modules in the image loaded for this hardware: {}",
            loaded.len(),
            cfg.modules.len(),
            loaded.join(" ")
        ),
    );
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
        std::thread::sleep(Duration::from_millis(200));
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
