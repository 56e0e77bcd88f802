//! The recovery payload end to end: `unbrick image build` makes the image, four real-firmware
//! guests network-boot it in parallel (one per boot chain), the agent remediates their NTFS
//! disks and reports, the guests power off, and the disks are checked from the host with
//! ntfsprogs.
use crate::disks::*;
use crate::firmware::{start_guest, Bus, Firmware};
use crate::lab::*;
use std::time::{Duration, Instant};

/// Builds the static musl agent (a no-op when it is up to date) so the test never runs a stale one.
pub(crate) fn agent_binary() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = env!("CARGO_MANIFEST_DIR");
    must(&format!("cd {dir} && {cargo} build -q --profile agent --target x86_64-unknown-linux-musl -p remediation-payload --bin unbrick-agent"));
    let p = format!("{dir}/target/x86_64-unknown-linux-musl/agent/unbrick-agent");
    let file = must(&format!("file -L {p}"));
    assert!(
        file.contains("statically linked") || file.contains("static-pie"),
        "the agent must be static to run as /init: {file}"
    );
    p
}

/// A just-initialised data directory with a built image, made once per test run: the
/// QEMU tests that need nothing else start from a copy of it (same keys and certificate in
/// every lab, which is fine: each lab is its own namespace) instead of building an image each.
fn template() -> &'static (std::path::PathBuf, String) {
    static T: std::sync::OnceLock<(std::path::PathBuf, String)> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-template");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        must(&format!("{} init --data-dir {}", unbrick(), data.display()));
        // No kernel named: the build finds the newest signed 6.12+ package in the data
        // directory's kernel cache (install-deps fetched it into target/kernel), beside an
        // older and an unsigned flavour that must not be taken.
        let cache = data.join("kernel-cache");
        std::fs::create_dir_all(&cache).unwrap();
        must(&format!(
            "cp {}/target/kernel/linux-image-*.deb {}/",
            env!("CARGO_MANIFEST_DIR"),
            cache.display()
        ));
        for decoy in [
            "linux-image-6.1.0-40-amd64_6.1.153-1_amd64.deb",
            "linux-image-6.99.1+deb12-amd64-unsigned_6.99.1-1_amd64.deb",
        ] {
            std::fs::write(cache.join(decoy), b"not a package").unwrap();
        }
        let out = must(&format!(
            "{} image build --data-dir {} --agent {}",
            unbrick(),
            data.display(),
            agent_binary()
        ));
        assert!(
            out.lines().any(|l| l.starts_with("kernel 6.")
                && l.contains("signed by Debian, has ntfs3")
                && l.contains("kernel-cache/linux-image-6.")),
            "the build says which kernel it used: {out}"
        );
        // Each lab copies this directory: the 100 MB package stays out of it.
        std::fs::remove_dir_all(&cache).unwrap();
        (data, out)
    })
}

/// The lab's data dir replaced by a copy of the run's template (initialised, image built
/// once); returns the build's output. The lab must have been only initialised so far.
pub(crate) fn build_image(lab: &Lab) -> String {
    let (data, out) = template();
    let _ = std::fs::remove_dir_all(lab.data());
    must(&format!(
        "cp -a {} {}",
        data.display(),
        lab.data().display()
    ));
    out.clone()
}

/// The same with extra `image build` flags.
pub(crate) fn build_image_with(lab: &Lab, flags: &str) -> String {
    let kernel_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kernel/root");
    must(&format!(
        "{} image build --data-dir {} --kernel-dir {} --agent {} {flags}",
        unbrick(),
        lab.data().display(),
        kernel_root.display(),
        agent_binary()
    ))
}

fn sha(d: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, d).as_ref())
}

const CS: &str = "Windows/System32/drivers/CrowdStrike";

#[test]
fn payload_remediates_real_disks_on_every_boot_chain() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("pl");
    lab.init();
    // The payload issue's size target is for the image without BitLocker tools (the BitLocker
    // test checks the full image against its own 10 MB target); these disks are not encrypted.
    let out = build_image_with(&lab, "--no-bitlocker");
    assert!(out.contains("initrd") && out.contains("signed"), "{out}");
    assert!(out.contains("without BitLocker unlocking"), "{out}");
    let initrd = std::fs::metadata(lab.data().join("image/initrd.img"))
        .unwrap()
        .len();
    eprintln!(
        "initramfs without BitLocker tools: {:.2} MB",
        initrd as f64 / 1e6
    );
    assert!(
        initrd <= 8 * 1024 * 1024,
        "initramfs is {initrd} bytes compressed; the target is 8 MB"
    );
    // usb_storage.delay_use=0: the agent hands module options on the command line to the
    // module (as modprobe does); the USB stick is then used at once instead of after the
    // kernel's default 1 s.
    lab.serve_as(
        &[
            "env",
            "UNBRICK_KERNEL_CMDLINE=unbrick.poweroff usb_storage.delay_use=0",
        ],
        "--dhcp full --pool 10.99.0.100-10.99.0.150",
    );

    let bad = channel_file(3, 40_000);
    let bad2 = channel_file(5, 30_000);
    let good = channel_file(7, 40_000);
    let other = b"unrelated driver".to_vec();
    let f = |p: &str, d: &Vec<u8>, t: &str| File {
        path: p.into(),
        data: d.clone(),
        mtime: t.into(),
    };
    // bios: MBR on SATA, mixed-case path, bad 04:09 and good 05:27 file side by side.
    let d_bios = make_disk(
        &lab.dir,
        "bios",
        Table::Mbr,
        &[Volume {
            label: "WINDOWS".into(),
            dirty: false,
            files: vec![
                f(
                    "windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000032.sys",
                    &bad,
                    "2024-07-19 04:09:00 UTC",
                ),
                f(
                    "windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000033.sys",
                    &good,
                    "2024-07-19 05:27:00 UTC",
                ),
                f(
                    "windows/system32/Drivers/crowdstrike/C-00000290-00000000-00000001.sys",
                    &bad,
                    "2024-07-19 04:09:00 UTC",
                ),
                f(
                    "windows/system32/kernel32.dll",
                    &other,
                    "2024-07-01 10:00:00 UTC",
                ),
            ],
        }],
    );
    // uefi: GPT on NVMe, two Windows volumes, each with a bad file.
    let d_uefi = make_disk(
        &lab.dir,
        "uefi",
        Table::Gpt,
        &[
            Volume {
                label: "WIN1".into(),
                dirty: false,
                files: vec![
                    f(
                        &format!("{CS}/C-00000291-00000000-00000032.sys"),
                        &bad,
                        "2024-07-19 04:09:00 UTC",
                    ),
                    f("Windows/notepad.exe", &other, "2024-07-01 10:00:00 UTC"),
                ],
            },
            Volume {
                label: "WIN2".into(),
                dirty: false,
                files: vec![f(
                    &format!("{CS}/C-00000291-00000000-00000031.sys"),
                    &bad2,
                    "2024-07-19 04:09:00 UTC",
                )],
            },
            // Hibernated Windows: never written, even though it holds a bad file.
            Volume {
                label: "WIN3".into(),
                dirty: false,
                files: vec![
                    f(
                        &format!("{CS}/C-00000291-00000000-00000032.sys"),
                        &bad,
                        "2024-07-19 04:09:00 UTC",
                    ),
                    f(
                        "hiberfil.sys",
                        &b"HIBR hibernation image".to_vec(),
                        "2024-07-19 04:00:00 UTC",
                    ),
                ],
            },
        ],
    );
    // uefi-fw: GPT on virtio, a dirty volume (Windows crashed mid-boot, as these machines do).
    let d_fw = make_disk(
        &lab.dir,
        "uefifw",
        Table::Gpt,
        &[Volume {
            label: "WINDOWS".into(),
            dirty: true,
            files: vec![
                f(
                    &format!("{CS}/C-00000291-00000000-00000032.sys"),
                    &bad,
                    "2024-07-19 04:09:00 UTC",
                ),
                f(
                    &format!("{CS}/C-00000291-00000000-00000034.sys"),
                    &good,
                    "2024-07-19 06:00:00 UTC",
                ),
            ],
        }],
    );
    // uefi-sb: GPT on a USB stick behind a USB hub (xHCI + usb-hub + usb-storage), no Windows at
    // all (a data volume).
    let d_sb = make_disk(
        &lab.dir,
        "uefisb",
        Table::Gpt,
        &[Volume {
            label: "DATA".into(),
            dirty: false,
            files: vec![f("Projects/readme.txt", &other, "2024-07-01 10:00:00 UTC")],
        }],
    );

    let specs = [
        (
            "bios",
            Firmware::Bios,
            "52:54:00:e0:00:01",
            &d_bios,
            Bus::Sata,
        ),
        (
            "uefi",
            Firmware::Uefi,
            "52:54:00:e0:00:02",
            &d_uefi,
            Bus::Nvme,
        ),
        (
            "uefifw",
            Firmware::UefiFw,
            "52:54:00:e0:00:03",
            &d_fw,
            Bus::Virtio,
        ),
        (
            "uefisb",
            Firmware::UefiSb,
            "52:54:00:e0:00:04",
            &d_sb,
            // Behind a hub, as in a dock: the agent waits for the hub's own ports too.
            Bus::UsbHub,
        ),
    ];
    let start = Instant::now();
    let mut guests: Vec<_> = specs
        .iter()
        .map(|(n, fw, mac, d, bus)| start_guest(&lab, n, *fw, mac, Some((&d.path, *bus))))
        .collect();
    let deadline = start + Duration::from_secs(480);
    let mut report_at = vec![None; guests.len()];
    while Instant::now() < deadline && guests.iter_mut().any(|g| !g.exited()) {
        std::thread::sleep(Duration::from_millis(500));
        let log = lab.server_log();
        for (i, (_, _, mac, _, _)) in specs.iter().enumerate() {
            if report_at[i].is_none() && log.contains(&format!("{mac} agent-report:")) {
                report_at[i] = Some(start.elapsed());
            }
        }
    }
    let exited: Vec<bool> = guests
        .iter_mut()
        .map(|g| g.wait_exit(Instant::now() + Duration::from_secs(1)))
        .collect();
    let serials: Vec<String> = guests.iter().map(|g| g.serial_text()).collect();
    drop(guests);
    assert!(lab.stop_server().success());

    let mut table = String::new();
    for (i, (name, fw, mac, _, _)) in specs.iter().enumerate() {
        let h = lab.host_json(mac);
        let agent_ms = h["host"]["last_report"]["agent_ms"].as_u64().unwrap_or(0);
        table += &format!(
            "{name:<7} {fw:?}: report after {}, agent {} ms, powered off: {}\n",
            report_at[i]
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or("-".into()),
            agent_ms,
            exited[i]
        );
    }
    eprintln!("payload runs (QEMU start to report; agent start to report):\n{table}");
    // Where each agent's time went (its console lines carry the time since it started).
    for (i, (name, ..)) in specs.iter().enumerate() {
        let lines: Vec<&str> = serials[i]
            .lines()
            .filter(|l| l.contains("unbrick-agent ["))
            .collect();
        eprintln!("{name}:\n  {}", lines.join("\n  "));
    }
    for (i, (name, ..)) in specs.iter().enumerate() {
        assert!(
            report_at[i].is_some(),
            "{name} never reported.\n{table}\nserial:\n{}\nserver log:\n{}",
            serials[i],
            lab.server_log()
        );
    }

    // Module signatures: dropped where the kernel is not locked down (it would check them for
    // nothing), checked by the kernel under Secure Boot; either way every module loaded.
    for (i, (name, fw, ..)) in specs.iter().enumerate() {
        let line = serials[i]
            .lines()
            .find(|l| l.contains("modules in the image loaded"))
            .unwrap_or_else(|| panic!("{name}: no modules line:\n{}", serials[i]));
        let want = if matches!(fw, Firmware::UefiSb) {
            "signatures checked by the kernel, lockdown integrity"
        } else {
            "no lockdown: loaded without their signatures"
        };
        assert!(line.contains(want), "{name}: {line}");
        assert!(!line.contains("EKEYREJECTED"), "{name}: {line}");
        // The option reached the module where it is loaded (only the USB guest has it), and the
        // module took it: the stick's disk follows its detection without the default 1 s wait.
        assert_eq!(
            line.contains("options from the command line: usb_storage delay_use=0"),
            matches!(fw, Firmware::UefiSb),
            "{name}: {line}"
        );
        if matches!(fw, Firmware::UefiSb) {
            let at = |what: &str| {
                serials[i]
                    .lines()
                    .find(|l| l.contains(what))
                    .and_then(|l| l.strip_prefix('['))
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{name}: no kernel line {what:?}:\n{}", serials[i]))
            };
            let waited = at("[sda] Attached SCSI disk") - at("USB Mass Storage device detected");
            assert!(
                waited < 0.9,
                "{name}: the USB disk came {waited:.2} s after its detection (delay_use not taken?)"
            );
            eprintln!("{name}: USB disk attached {waited:.2} s after its detection");
        }
    }

    // grub (shim's chain) first tries kernel and initrd over HTTP. Debian 12's signed
    // grubnetx64 has no `http` module (its strings hold none of http.mod's: no "HTTP/1.1", no
    // "Content-Length"), so it says "disk not found" at once and the configuration falls back to
    // TFTP, which must then bring both.
    for (i, (name, fw, mac, _, _)) in specs.iter().enumerate() {
        if matches!(fw, Firmware::UefiFw | Firmware::UefiSb) {
            let ev = lab.events(mac);
            let serial = &serials[i];
            let over_http = ["vmlinuz", "initrd.img"].map(|f| {
                ev.iter()
                    .any(|e| e.starts_with("http-download") && e.contains(f))
            });
            let fell_back = serial.contains(
                "unbrick: HTTP from (http,10.99.0.1:8080) failed; loading the payload over TFTP",
            );
            let over_tftp = ["vmlinuz", "initrd.img"].map(|f| {
                ev.iter().any(|e| {
                    e.starts_with("tftp ")
                        && e.contains(&format!("{f} "))
                        && e.ends_with("complete")
                })
            });
            assert!(
                over_http == [true, true] || (fell_back && over_tftp == [true, true]),
                "{name}: grub neither loaded the payload over HTTP nor fell back to TFTP: {ev:?}\nserial:\n{serial}"
            );
        }
    }

    // What the store says.
    let state = |mac: &str| {
        lab.host_json(mac)["host"]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let report = |mac: &str| lab.host_json(mac)["host"]["last_report"].clone();
    assert_eq!(state("52:54:00:e0:00:01"), "remediated");
    assert_eq!(
        state("52:54:00:e0:00:02"),
        "needs-attention",
        "two volumes remediated, one hibernated: {}",
        report("52:54:00:e0:00:02")
    );
    assert!(lab.host_json("52:54:00:e0:00:02")["host"]["reason"]
        .as_str()
        .unwrap()
        .contains("hibernated"));
    assert_eq!(state("52:54:00:e0:00:03"), "remediated");
    assert_eq!(
        state("52:54:00:e0:00:04"),
        "clean",
        "{}",
        report("52:54:00:e0:00:04")
    );
    assert_eq!(report("52:54:00:e0:00:04")["result"], "nothing-found");
    // ...because the USB disk's NTFS volume was found and has no Windows, not because no disk was seen.
    let sb_vols = report("52:54:00:e0:00:04")["volumes"].clone();
    assert!(
        sb_vols.as_array().unwrap().iter().any(
            |v| v["status"] == "not-windows" && v["device"].as_str().unwrap().starts_with("sd")
        ),
        "{sb_vols}"
    );
    let fw_vol = &report("52:54:00:e0:00:03")["volumes"][0];
    assert!(
        fw_vol["status"].as_str().unwrap().contains("dirty-forced"),
        "{fw_vol}"
    );

    // What the disks say, read from the host with ntfsprogs.
    let check_quarantined =
        |disk: &Disk, vol: usize, mac: &str, folder: &str, name: &str, content: &[u8]| {
            let part = disk.extract(vol);
            assert!(
                ntfs_read(&part, &format!("{folder}/{name}")).is_none(),
                "{name} still in {folder}: {:?}",
                ntfs_ls(&part, folder)
            );
            let rep = report(mac);
            let rec = rep["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"].as_str().unwrap().ends_with(name))
                .unwrap_or_else(|| panic!("{name} not in the report: {rep}"))
                .clone();
            assert_eq!(rec["sha256"], sha(content));
            let q = rec["quarantined_to"].as_str().unwrap().replace('\\', "/");
            let moved = ntfs_read(&part, &q).unwrap_or_else(|| panic!("{q} not on the volume"));
            assert_eq!(sha(&moved), sha(content), "quarantined copy differs");
            let record = ntfs_read(&part, &format!("{q}.unbrick.json"))
                .expect("JSON record next to the quarantined file");
            assert!(String::from_utf8_lossy(&record).contains(&sha(content)));
            part
        };
    let p = check_quarantined(
        &d_bios,
        0,
        "52:54:00:e0:00:01",
        "windows/system32/Drivers/crowdstrike",
        "C-00000291-00000000-00000032.sys",
        &bad,
    );
    assert_eq!(
        ntfs_read(
            &p,
            "windows/system32/Drivers/crowdstrike/C-00000291-00000000-00000033.sys"
        )
        .as_deref(),
        Some(&good[..]),
        "the 05:27 file must stay, unchanged"
    );
    assert_eq!(
        ntfs_read(
            &p,
            "windows/system32/Drivers/crowdstrike/C-00000290-00000000-00000001.sys"
        )
        .as_deref(),
        Some(&bad[..]),
        "other channel files stay"
    );
    assert_eq!(
        ntfs_read(&p, "windows/system32/kernel32.dll").as_deref(),
        Some(&other[..])
    );
    let p = check_quarantined(
        &d_uefi,
        0,
        "52:54:00:e0:00:02",
        CS,
        "C-00000291-00000000-00000032.sys",
        &bad,
    );
    assert_eq!(
        ntfs_read(&p, "Windows/notepad.exe").as_deref(),
        Some(&other[..])
    );
    check_quarantined(
        &d_uefi,
        1,
        "52:54:00:e0:00:02",
        CS,
        "C-00000291-00000000-00000031.sys",
        &bad2,
    );
    let p = d_uefi.extract(2);
    assert_eq!(
        ntfs_read(&p, &format!("{CS}/C-00000291-00000000-00000032.sys")).as_deref(),
        Some(&bad[..]),
        "a hibernated volume is never written"
    );
    assert!(!ntfs_ls(&p, "/")
        .iter()
        .any(|l| l.contains("unbrick-quarantine")));
    assert!(report("52:54:00:e0:00:02")["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["status"] == "hibernated"));
    let p = check_quarantined(
        &d_fw,
        0,
        "52:54:00:e0:00:03",
        CS,
        "C-00000291-00000000-00000032.sys",
        &bad,
    );
    assert_eq!(
        ntfs_read(&p, &format!("{CS}/C-00000291-00000000-00000034.sys")).as_deref(),
        Some(&good[..])
    );
    let p = d_sb.extract(0);
    assert_eq!(
        ntfs_read(&p, "Projects/readme.txt").as_deref(),
        Some(&other[..])
    );
    assert!(
        !ntfs_ls(&p, "/")
            .iter()
            .any(|l| l.contains("unbrick-quarantine")),
        "nothing written to a volume without matches"
    );
    // The Secure Boot guest ran the agent under lockdown with Debian-signed modules.
    assert!(lab.host_json("52:54:00:e0:00:04")["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("Secure Boot on")));
}

/// The server goes away right after the agent's hello and comes back a few seconds later (an
/// admin restarting it, a flapping link): the agent retries with backoff, finishes the run and
/// its report is recorded.
#[test]
fn agent_rides_out_a_server_restart() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("rs");
    lab.init();
    build_image(&lab);
    let args = "--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff";
    lab.serve(args);
    let bad = channel_file(3, 20_000);
    let disk = make_disk(
        &lab.dir,
        "rs",
        Table::Mbr,
        &[Volume {
            label: "WINDOWS".into(),
            dirty: false,
            files: vec![File {
                path: format!("{CS}/C-00000291-00000000-00000032.sys"),
                data: bad.clone(),
                mtime: "2024-07-19 04:09:00 UTC".into(),
            }],
        }],
    );
    let mac = "52:54:00:e1:00:01";
    let mut g = start_guest(
        &lab,
        "rs",
        Firmware::Bios,
        mac,
        Some((&disk.path, Bus::Virtio)),
    );
    assert!(
        lab.wait_log(&format!("{mac} agent-hello"), Duration::from_secs(180)),
        "agent never said hello:\n{}\n{}",
        g.serial_text(),
        lab.server_log()
    );
    assert!(lab.stop_server().success());
    std::thread::sleep(Duration::from_secs(3));
    lab.serve(args);
    assert!(
        g.wait_exit(Instant::now() + Duration::from_secs(180)),
        "guest did not finish:\n{}\n{}",
        g.serial_text(),
        lab.server_log()
    );
    let serial = g.serial_text();
    assert!(
        serial.contains("retrying in"),
        "the agent should have retried while the server was away:\n{serial}"
    );
    drop(g);
    assert!(lab.stop_server().success());
    let h = lab.host_json(mac);
    assert_eq!(h["host"]["state"], "remediated", "{h}");
    let part = disk.extract(0);
    assert!(ntfs_read(&part, &format!("{CS}/C-00000291-00000000-00000032.sys")).is_none());
}

/// An older signed rules file, still unexpired, served in place of the active set (as anyone
/// who kept a copy could serve it): the agent refuses it, because the image was built when v2
/// was active, and reports why.
#[test]
fn agent_refuses_rules_older_than_its_image() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("or");
    lab.init();
    let rules = lab.data().join("rules/active.json");
    let key = lab.data().join("keys/signing.key");
    let v1 = std::fs::read(&rules).unwrap();
    let v1_sig = std::fs::read(rules.with_extension("json.sig")).unwrap();
    // v2 is signed and active when the image is built.
    let mut doc: serde_json::Value = serde_json::from_slice(&v1).unwrap();
    doc["version"] = 2.into();
    std::fs::write(&rules, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    must(&format!(
        "{} rules sign {} --key {}",
        unbrick(),
        rules.display(),
        key.display()
    ));
    let out = build_image_with(&lab, "");
    assert!(out.contains("refuse rules older than"), "{out}");
    // The old v1 file (signed, unexpired) is put back and served.
    std::fs::write(&rules, &v1).unwrap();
    std::fs::write(rules.with_extension("json.sig"), &v1_sig).unwrap();
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff");
    let mac = "52:54:00:e1:00:09";
    let mut g = start_guest(&lab, "or", Firmware::Bios, mac, None);
    assert!(
        g.wait_exit(Instant::now() + Duration::from_secs(240)),
        "guest did not finish:\n{}\n{}",
        g.serial_text(),
        lab.server_log()
    );
    let serial = g.serial_text();
    drop(g);
    assert!(lab.stop_server().success());
    let h = lab.host_json(mac);
    assert_eq!(h["host"]["state"], "failed", "{h}\n{serial}");
    let reason = h["host"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("older than this image's minimum v2"),
        "{reason}\n{serial}"
    );
}
