//! Diagnose, then fix, with real firmware: a read-only scan of two Windows disks (one crashing,
//! with the bad channel file, a kernel minidump and a real System event log; one healthy, with
//! the vendor's fixed file at the same path) changes nothing on them; the Diagnosis names the
//! bad file as the suspect; the rule drafted from it, signed with `unbrick rules sign` and
//! installed, quarantines exactly that file in the second run, through the canary-first
//! campaign the draft proposes, and leaves the healthy machine's file alone.
use crate::campaign::{api_json, cli, kernel_dump, state, system_hive, token, wait_for};
use crate::disks::*;
use crate::firmware::{spawn_guest, start_guest, Bus, Firmware};
use crate::lab::*;
use std::time::{Duration, Instant};

const CS: &str = "Windows/System32/drivers/CrowdStrike";
const BAD: &str = "C-00000291-00000000-00000032.sys";

fn disk(lab: &Lab, name: &str, crashing: bool) -> Disk {
    let mut files = vec![
        File {
            path: format!("{CS}/{BAD}"),
            // The bad file on the crashing machine; the vendor's fixed one (other content,
            // the same first bytes, written later) on the healthy one.
            data: channel_file(if crashing { 3 } else { 9 }, 30_000),
            mtime: if crashing {
                "2024-07-19 04:09:00 UTC"
            } else {
                "2024-07-19 05:27:00 UTC"
            }
            .into(),
        },
        File {
            path: "Windows/System32/drivers/disk.sys".into(),
            data: b"MZ the same driver everywhere".to_vec(),
            mtime: "2024-07-01 10:00:00 UTC".into(),
        },
        File {
            path: "Windows/System32/config/SYSTEM".into(),
            data: system_hive(lab, &format!("WKS-{}", name.to_uppercase())),
            mtime: "2024-07-19 04:09:00 UTC".into(),
        },
    ];
    if crashing {
        files.push(File {
            path: "Windows/Minidump/071924-8765-01.dmp".into(),
            data: kernel_dump(lab),
            mtime: "2024-07-19 04:10:00 UTC".into(),
        });
        files.push(File {
            path: "Windows/System32/winevt/Logs/System.evtx".into(),
            data: std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/remediation-payload/testdata/evtx/plaso-System.evtx"
            ))
            .unwrap(),
            mtime: "2024-07-19 04:10:00 UTC".into(),
        });
    }
    make_disk(
        &lab.dir,
        name,
        Table::Gpt,
        &[Volume {
            label: "WINDOWS".into(),
            files,
            dirty: false,
        }],
    )
}

/// Installs `doc` as the active rules, signed with the lab's key.
fn install_rules(lab: &Lab, doc: &str) {
    let rules = lab.data().join("rules/active.json");
    std::fs::write(&rules, doc).unwrap();
    must(&format!(
        "{} rules sign {} --key {}",
        unbrick(),
        rules.display(),
        lab.data().join("keys/signing.key").display()
    ));
}

/// Boots the machines `which` (first boot: their taps are made) and waits until each powered
/// off (`unbrick.poweroff`).
fn boot(lab: &Lab, disks: &[Disk], macs: &[&str], which: &[usize], first: bool) {
    let mut gs: Vec<_> = which
        .iter()
        .map(|&i| {
            let name = format!("sc{i}");
            let d = Some((disks[i].path.as_path(), Bus::Virtio));
            if first {
                start_guest(lab, &name, Firmware::Bios, macs[i], d)
            } else {
                spawn_guest(lab, &name, Firmware::Bios, macs[i], d)
            }
        })
        .collect();
    for g in &mut gs {
        assert!(
            g.wait_exit(Instant::now() + Duration::from_secs(300)),
            "guest did not finish:\n{}\n{}",
            g.serial_text(),
            lab.server_log()
        );
    }
}

#[test]
fn a_scan_names_the_bad_file_and_its_drafted_rule_quarantines_only_it() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("sc");
    lab.init();
    crate::payload::build_image(&lab);
    install_rules(
        &lab,
        r#"{"format": 1, "id": "scan-drivers", "version": 2, "expires": "2099-01-01T00:00:00Z",
 "description": "what changed in the drivers folder",
 "rules": [
  {"id": "drivers", "description": "drivers", "path": "Windows\\System32\\drivers\\*",
   "changed_within_days": 3650, "action": "inspect"},
  {"id": "drivers-sub", "description": "one level down", "path": "Windows\\System32\\drivers\\*\\*",
   "changed_within_days": 3650, "action": "inspect"}]}"#,
    );
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff");
    let tok = token(&lab);
    let macs = ["52:54:00:5a:00:01", "52:54:00:5a:00:02"];
    let disks = [disk(&lab, "sc0", true), disk(&lab, "sc1", false)];
    let before: Vec<Vec<u8>> = disks
        .iter()
        .map(|d| std::fs::read(d.extract(0)).unwrap())
        .collect();

    // ---- The scan: both machines at once.
    boot(&lab, &disks, &macs, &[0, 1], true);
    for (i, m) in macs.iter().enumerate() {
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        let r = &h["host"]["last_report"];
        assert_eq!(r["result"], "inspected", "{m}: {h}");
        assert_eq!(r["volumes"][0]["status"], "inspected", "{m}: {h}");
        let inspected: Vec<&str> = r["volumes"][0]["inspected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert!(
            inspected.contains(
                &"Windows\\System32\\drivers\\CrowdStrike\\C-00000291-00000000-00000032.sys"
            ) && inspected.contains(&"Windows\\System32\\drivers\\disk.sys"),
            "{m}: {inspected:?}"
        );
        // Still broken after a scan: not done, and it waits instead of being scanned again.
        assert_eq!(h["host"]["state"], "needs-attention", "{m}: {h}");
        let log = &r["volumes"][0]["event_log"];
        if i == 0 {
            // The real System.evtx of a machine that lost power (plaso's test data).
            assert_eq!(log["records"], 5009, "the real System.evtx: {h}");
            let kinds: Vec<(&str, i64)> = log["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap(),
                        e["time_unix"].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    ("kernel-power", 1_440_517_240),
                    ("unexpected-shutdown", 1_440_510_079),
                    ("kernel-power", 1_439_057_310)
                ],
                "{h}"
            );
            assert_eq!(r["volumes"][0]["crash_dumps"][0]["driver"], "csagent.sys");
        } else {
            assert!(log.is_null(), "{h}");
        }
    }
    // Nothing on either volume changed (the whole partition, byte for byte).
    for (d, b) in disks.iter().zip(&before) {
        assert!(
            std::fs::read(d.extract(0)).unwrap() == *b,
            "a scan wrote to {}",
            d.path.display()
        );
    }

    // ---- The Diagnosis: the bad file is the suspect; draft its rule.
    let v = api_json(&lab, &tok, "/api/v1/diagnosis");
    let bad_sha = sha256_file(&{
        let p = lab.dir.join("bad.sys");
        std::fs::write(&p, channel_file(3, 30_000)).unwrap();
        p
    });
    let suspect: Vec<&serde_json::Value> = v["files"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["suspect"] == true)
        .collect();
    assert_eq!(suspect.len(), 1, "{v}");
    assert_eq!(suspect[0]["sha256"], bad_sha.as_str(), "{v}");
    assert_eq!(v["crashes"][0]["driver"], "csagent.sys", "{v}");
    // The event log's groups: two power losses and one unexpected shutdown, on one host.
    let groups: Vec<(&str, u64, u64)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["kind"].as_str().unwrap(),
                g["hosts"].as_u64().unwrap(),
                g["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        groups.contains(&("kernel-power", 1, 2)) && groups.contains(&("unexpected-shutdown", 1, 1)),
        "{v}"
    );
    assert!(
        v["events"]
            .to_string()
            .contains("previous shutdown at 1:34:44 PM on 8/25/2015"),
        "{v}"
    );
    let draft = lab.dir.join("draft.json");
    let hosts_txt = lab.dir.join("hosts.txt");
    cli(
        &lab,
        &tok,
        &format!(
            "diagnose --draft-rule {bad_sha} --out {} --hosts-out {}",
            draft.display(),
            hosts_txt.display()
        ),
    );
    // The hosts that have the file, one per line: only the crashing machine.
    assert_eq!(
        std::fs::read_to_string(&hosts_txt).unwrap(),
        format!("{}\n", macs[0])
    );
    let doc = std::fs::read_to_string(&draft).unwrap();
    assert!(doc.contains("\"quarantine\""), "{doc}");
    install_rules(&lab, &doc);
    assert!(lab.stop_server().success());
    lab.restart_server();

    // ---- The campaign the draft proposes (canary first), then the second run.
    let steps = api_json(
        &lab,
        &tok,
        &format!("/api/v1/diagnosis/draft-rule?sha256={bad_sha}"),
    );
    let create = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .find(|s| s.starts_with("unbrick campaign create"))
        .unwrap()
        .trim_start_matches("unbrick ")
        .to_string();
    assert!(
        create.contains(macs[0]) && !create.contains(macs[1]),
        "{create}"
    );
    // The same campaign through the host list the draft wrote (how a list of thousands goes).
    let create = create
        .replace("--soak-minutes 10", "--soak-minutes 0")
        .replace(
            &format!("--hosts {}", macs[0]),
            &format!("--hosts-file {}", hosts_txt.display()),
        );
    assert!(create.contains("--hosts-file"), "{create}");
    let id = cli(&lab, &tok, &create);
    cli(&lab, &tok, &format!("campaign start {id}"));
    // Only the crashing machine is in the campaign; the healthy one would wait on screen.
    boot(&lab, &disks, &macs, &[0], false);
    wait_for(
        "the crashing machine is remediated",
        30,
        || state(&lab, &tok, macs[0]) == "remediated",
        &lab,
    );
    // The healthy machine is in no campaign: it still waits, untouched.
    assert_eq!(state(&lab, &tok, macs[1]), "needs-attention");
    let crashed = disks[0].extract(0);
    assert!(
        ntfs_read(&crashed, &format!("{CS}/{BAD}")).is_none(),
        "bad file quarantined"
    );
    assert_eq!(
        ntfs_read(&crashed, "Windows/System32/drivers/disk.sys").as_deref(),
        Some(&b"MZ the same driver everywhere"[..])
    );
    let healthy = disks[1].extract(0);
    assert_eq!(
        ntfs_read(&healthy, &format!("{CS}/{BAD}")),
        Some(channel_file(9, 30_000)),
        "the fixed file on the healthy machine is left alone"
    );
}
