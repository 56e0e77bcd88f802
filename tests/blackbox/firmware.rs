//! Real firmware in QEMU (TCG) network-boots through `unbrick serve`: SeaBIOS with the iPXE ROM,
//! OVMF with the iPXE EFI ROM, OVMF's own PXE (EDK2) through shim and grub, and OVMF with Secure
//! Boot on through Microsoft-signed shim and Debian-signed grub. Each must fetch its boot script
//! or grub configuration, download the recovery kernel and initrd, and start the kernel.
use crate::lab::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub(crate) use unbrick_lab::qemu::{Bus, Firmware};

pub(crate) struct Guest {
    pub name: String,
    pub mac: String,
    pub fw: Firmware,
    pub serial: PathBuf,
    child: Child,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The payload kernel installed by scripts/install-deps.sh.
pub(crate) fn payload_kernel() -> PathBuf {
    let boot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kernel/root/boot");
    let entry = std::fs::read_dir(&boot)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/install-deps.sh (the README's test command does)",
                boot.display()
            )
        })
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .expect("vmlinuz-* in target/kernel/root/boot");
    entry.path()
}

pub(crate) fn accel() -> String {
    std::env::var("ACCEL").unwrap_or_else(|_| "tcg".into())
}

pub(crate) fn start_guest(
    lab: &Lab,
    name: &str,
    fw: Firmware,
    mac: &str,
    disk: Option<(&Path, Bus)>,
) -> Guest {
    lab.add_tap(&format!("t{name}"));
    spawn_guest(lab, name, fw, mac, disk)
}

/// Starts a guest on its existing tap: the machine boots again (power cycled).
pub(crate) fn spawn_guest(
    lab: &Lab,
    name: &str,
    fw: Firmware,
    mac: &str,
    disk: Option<(&Path, Bus)>,
) -> Guest {
    let spec = unbrick_lab::qemu::GuestSpec {
        name: name.into(),
        mac: mac.into(),
        fw,
        disk: disk.map(|(d, b)| (d.to_path_buf(), b)),
        accel: accel(),
        smbios_serial: format!("UB-{name}"),
        dir: lab.dir.clone(),
    };
    let child = spec
        .spawn(&lab.ns, &lab.dir.join(format!("{name}.qemu.log")))
        .unwrap_or_else(|e| panic!("{e}"));
    Guest {
        name: name.into(),
        mac: mac.into(),
        fw,
        serial: spec.serial(),
        child,
    }
}

impl Guest {
    pub(crate) fn serial_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }
    pub(crate) fn wait_exit(&mut self, until: Instant) -> bool {
        while Instant::now() < until {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }
    pub(crate) fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// Puts the payload kernel and an empty initramfs into the image and re-signs it.
fn stage_kernel(lab: &Lab) {
    let img = lab.data().join("image");
    std::fs::copy(payload_kernel(), img.join("vmlinuz")).unwrap();
    must(&format!(
        "cd {} && printf '' | cpio --quiet -o -H newc | gzip -9n > initrd.img",
        img.display()
    ));
    must(&format!("{} image sign {}", unbrick(), img.display()));
}

const SECURED: &str = "52:54:00:f0:00:05";
#[test]
fn real_firmware_boots_through_unbrick() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("fw");
    lab.init();
    stage_kernel(&lab);
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150");
    let specs = [
        ("bios", Firmware::Bios, "52:54:00:f0:00:01"),
        ("uefi", Firmware::Uefi, "52:54:00:f0:00:02"),
        ("uefifw", Firmware::UefiFw, "52:54:00:f0:00:03"),
        ("uefisb", Firmware::UefiSb, "52:54:00:f0:00:04"),
    ];
    let start = Instant::now();
    let mut guests: Vec<Guest> = specs
        .iter()
        .map(|(n, fw, mac)| start_guest(&lab, n, *fw, mac, None))
        .collect();
    // A Secured-core PC, for the diagnosis: its db trusts only Microsoft's Windows CAs, so its
    // firmware refuses shim. (A path that drops large TFTP blocks is tested with curl in
    // dhcp_tftp.rs: a QEMU guest for it cost a minute of the test command.)
    let mut secured = start_guest(&lab, "secured", Firmware::UefiSbWindowsOnly, SECURED, None);
    let mut shim_seen: Option<Instant> = None;
    let mut secured_done = false;
    let mut done: Vec<Option<Duration>> = vec![None; guests.len()];
    let mut gone = vec![false; guests.len()];
    while start.elapsed() < Duration::from_secs(420)
        && (done.iter().zip(&gone).any(|(d, g)| d.is_none() && !g) || !secured_done)
    {
        std::thread::sleep(Duration::from_secs(1));
        let log = lab.server_log();
        let lines = |mac: &str, file: &str| {
            log.lines()
                .filter(|l| l.contains(&format!("{mac} tftp: {file} ")))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        if !secured_done {
            if shim_seen.is_none()
                && lines(SECURED, "shimx64.efi")
                    .iter()
                    .any(|l| l.ends_with("complete"))
            {
                shim_seen = Some(Instant::now());
            }
            // The diagnosis waits 30 s for grub after shim; the firmware never asks for it.
            if shim_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(35)) {
                secured_done = true;
                let _ = secured.child.kill();
            }
        }
        for (i, g) in guests.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let fetched = match g.fw {
                Firmware::Bios | Firmware::Uefi => {
                    log.contains(&format!("{} http-download: vmlinuz", g.mac))
                        && log.contains(&format!("{} http-download: initrd.img", g.mac))
                }
                _ => {
                    // The initrd here is one 50-byte block: grub may take it and leave before
                    // the server sees its one final ACK (seen under load: the server then
                    // records the transfer "unconfirmed", all blocks sent and the last not
                    // acknowledged, while the kernel reports the initrd it was given). The
                    // kernel's word counts then.
                    let initrd = log.lines().any(|l| {
                        l.contains(&format!("{} tftp: initrd.img", g.mac))
                            && l.ends_with("complete")
                    }) || (log.contains(&format!("{} tftp: initrd.img", g.mac))
                        && g.serial_text().contains("Freeing initrd memory"));
                    log.lines().any(|l| {
                        l.contains(&format!("{} tftp: vmlinuz", g.mac)) && l.ends_with("complete")
                    }) && initrd
                }
            };
            if fetched && g.serial_text().contains("Linux version 6.") {
                done[i] = Some(start.elapsed());
                let _ = g.child.kill();
            } else if g.exited() {
                // Gone without booting: no point waiting out the deadline for it.
                gone[i] = true;
            }
        }
    }
    let mut report = String::new();
    for (g, d) in guests.iter().zip(&done) {
        report += &format!(
            "{:<7} {:?}: {}\n",
            g.name,
            g.fw,
            d.map(|d| format!("kernel started after {:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "DID NOT BOOT".into())
        );
    }
    eprintln!("firmware boot times (QEMU start to kernel running, {} guests in parallel, accel {}):\n{report}", guests.len() + 1, accel());
    for (g, d) in guests.iter().zip(&done) {
        assert!(
            d.is_some(),
            "{} did not boot through unbrick.\n{report}\nserial:\n{}\nserver log:\n{}",
            g.name,
            g.serial_text(),
            lab.server_log()
        );
    }
    assert!(
        secured_done,
        "the Secured-core guest never fetched shim:\n{}\nserver log:\n{}",
        secured.serial_text(),
        lab.server_log()
    );
    // The firmware itself refused shim (edk2's boot manager says so on the console).
    assert!(
        secured.serial_text().contains("Access Denied"),
        "the Secured-core guest's firmware did not refuse shim:\n{}",
        secured.serial_text()
    );
    // Secure Boot really was on for the shim guest.
    let sb = guests
        .iter()
        .find(|g| g.fw == Firmware::UefiSb)
        .unwrap()
        .serial_text();
    assert!(
        sb.contains("Secure boot enabled"),
        "Secure Boot guest did not run with Secure Boot on:\n{sb}"
    );
    drop(guests);
    drop(secured);
    assert!(lab.stop_server().success());
    // `unbrick diagnose` on the data directory: the Secured-core machine is "firmware refused
    // shim", with the advice; the machines that booted are not listed.
    let out = sh(&format!(
        "{} diagnose --json --data-dir {}",
        unbrick(),
        lab.data().display()
    ));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "unbrick diagnose --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(out.status.code(), Some(1), "a problem found exits 1");
    let of = |mac: &str| {
        d["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["mac"] == mac)
            .map(|h| h["finding"]["problem"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(of(SECURED).as_deref(), Some("shim-refused"), "{d}");
    let text = String::from_utf8_lossy(
        &sh(&format!(
            "{} diagnose --data-dir {}",
            unbrick(),
            lab.data().display()
        ))
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("firmware refused shim")
            && text.contains(SECURED)
            && text.contains("third-party CA"),
        "{text}"
    );
    eprintln!("unbrick diagnose after the run:\n{text}");
    for (name, fw, mac) in specs {
        let v = lab.host_json(mac);
        let ev = lab.events(mac);
        let want = match fw {
            Firmware::Bios | Firmware::Uefi => ".ipxe",
            _ => "shimx64.efi",
        };
        assert!(
            ev.iter()
                .any(|e| e.starts_with("dhcp-") && e.contains(want)),
            "{name}: {ev:?}"
        );
        assert!(
            ev.iter().any(|e| e.starts_with("payload")),
            "{name}: payload issued: {ev:?}"
        );
        assert_eq!(v["host"]["state"], "booting", "{name}");
        if matches!(fw, Firmware::UefiFw | Firmware::UefiSb) {
            assert!(
                ev.iter()
                    .any(|e| e.contains("grubx64.efi") && e.ends_with("complete")),
                "{name}: shim fetched grub: {ev:?}"
            );
        }
    }
}

/// proxyDHCP beside an office DHCP server (dnsmasq on the same segment hands out the addresses):
/// OVMF's own PXE takes the office address and our boot file (and does the :4011 exchange if it
/// wants one); SeaBIOS's iPXE does the same. Both must reach the recovery kernel.
#[test]
fn proxy_mode_beside_an_office_dhcp_server() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("po");
    lab.init();
    stage_kernel(&lab);
    must(&format!("ip -n {} addr add 10.99.0.2/24 dev br0", lab.ns));
    let office_log = lab.dir.join("office-dhcp.log");
    let ns = lab.ns.clone();
    let office = format!(
        "dnsmasq --keep-in-foreground --port=0 --interface=br0 --bind-interfaces --listen-address=10.99.0.2 --dhcp-range=10.99.0.160,10.99.0.200,255.255.255.0,1h --dhcp-leasefile={} --pid-file={} --log-dhcp --log-facility=-",
        lab.dir.join("office.leases").display(),
        lab.dir.join("office.pid").display()
    );
    lab.spawn(&ns, &office, &office_log);
    lab.serve("--dhcp proxy");
    let specs = [
        ("pbios", Firmware::Bios, "52:54:00:f1:00:01"),
        ("pfw", Firmware::UefiFw, "52:54:00:f1:00:03"),
    ];
    let start = Instant::now();
    let mut guests: Vec<Guest> = specs
        .iter()
        .map(|(n, fw, mac)| start_guest(&lab, n, *fw, mac, None))
        .collect();
    let mut done = vec![None; guests.len()];
    while start.elapsed() < Duration::from_secs(300) && done.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, g) in guests.iter_mut().enumerate() {
            if done[i].is_none() && g.serial_text().contains("Linux version 6.") {
                done[i] = Some(start.elapsed());
                let _ = g.child.kill();
            }
        }
    }
    let office = std::fs::read_to_string(&office_log).unwrap_or_default();
    for ((name, _, mac), d) in specs.iter().zip(&done) {
        assert!(
            d.is_some(),
            "{name} did not boot in proxy mode.\nserver log:\n{}\noffice DHCP log:\n{office}",
            lab.server_log()
        );
        assert!(
            office
                .lines()
                .any(|l| l.contains("DHCPACK(br0) 10.99.0.") && l.contains(mac)),
            "{name}: the address must come from the office server:\n{office}"
        );
        eprintln!(
            "proxy mode: {name} kernel started after {:.1} s",
            d.unwrap().as_secs_f64()
        );
    }
    drop(guests);
    assert!(lab.stop_server().success());
    // unbrick handed out boot files but never an address.
    for (name, _, mac) in specs {
        let ev = lab.events(mac);
        assert!(
            ev.iter().any(|e| e.contains("proxy Offer")),
            "{name}: {ev:?}"
        );
        assert!(
            !ev.iter()
                .any(|e| e.contains("offered 10.") || e.contains("leased 10.")),
            "{name}: proxy mode must not lease: {ev:?}"
        );
    }
}
