//! Staged campaigns with real firmware: four guests in waves of 1 and 3. First run: the canary
//! is repaired, the gate holds, the other three leave the waiting room and are repaired. Second
//! run: the canary's Windows volume cannot be mounted, the campaign halts, and the other three
//! stay in the waiting room, untouched. Plus: a Windows DHCP request (vendor class `MSFT 5.0`)
//! from a remediated MAC marks it recovered.
use crate::disks::*;
use crate::firmware::{start_guest, Bus, Firmware, Guest};
use crate::lab::*;
use std::time::{Duration, Instant};

const CS: &str = "Windows/System32/drivers/CrowdStrike";

pub(crate) fn token(lab: &Lab) -> String {
    must(&format!(
        "{} tokens create --name campaign-test --data-dir {}",
        unbrick(),
        lab.data().display()
    ))
    .trim()
    .to_string()
}

pub(crate) fn api_json(lab: &Lab, tok: &str, path: &str) -> serde_json::Value {
    let o = lab.exec(&format!(
        "curl -s -m 5 -H 'Authorization: Bearer {tok}' http://{SERVER_IP}:8080{path}"
    ));
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

pub(crate) fn cli(lab: &Lab, tok: &str, args: &str) -> String {
    let o = lab.exec(&format!(
        "{} {args} --server http://{SERVER_IP}:8080 --token {tok}",
        unbrick()
    ));
    assert!(
        o.status.success(),
        "unbrick {args}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// What a Windows user who can create folders on C: plants: a quarantine record (hash right)
/// that would put a DLL into System32 on a rollback that trusted the volume.
const PLANTED: &str = "unbrick-quarantine/planted/version.dll";

fn planted_record() -> Vec<u8> {
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"MZ planted"));
    format!(
        r#"{{"volume":"vda2","path":"Windows\\System32\\version.dll","size":10,"sha256":"{sha}","mtime":0,"rule_id":"cs","action":"quarantine","quarantined_to":"unbrick-quarantine\\planted\\version.dll"}}"#
    )
    .into_bytes()
}

/// A SYSTEM hive whose computer name is `computer`, written by the Python regf writer
/// (tests/blackbox/helpers/make_system_hive.py), which shares nothing with the agent's reader.
pub(crate) fn system_hive(lab: &Lab, computer: &str) -> Vec<u8> {
    let out = lab.dir.join(format!("SYSTEM-{computer}"));
    must(&format!(
        "python3 {}/tests/blackbox/helpers/make_system_hive.py {} {computer} --control-set 2 --dirty",
        env!("CARGO_MANIFEST_DIR"),
        out.display()
    ));
    std::fs::read(&out).unwrap()
}

/// The first 64 KiB of a kernel minidump of the CrowdStrike crash (bugcheck 0x50 at an address
/// inside csagent.sys, which its driver list holds), written by
/// tests/blackbox/helpers/make_kernel_dump.py (Python; shares nothing with the agent).
pub(crate) fn kernel_dump(lab: &Lab) -> Vec<u8> {
    let out = lab.dir.join("071924-8765-01.dmp");
    must(&format!(
        "python3 {}/tests/blackbox/helpers/make_kernel_dump.py {} --bugcheck 0x50 --param 0xffff840e12340000 --param 0 --param 0xfffff8076a2b1c3d --param 2 --build 19045 --time 2024-07-19T04:10:00Z \
         --driver '\\SystemRoot\\system32\\ntoskrnl.exe:0xfffff80479000000:0x1046000' \
         --driver '\\SystemRoot\\System32\\drivers\\CrowdStrike\\csagent.sys:0xfffff8076a200000:0x200000'",
        env!("CARGO_MANIFEST_DIR"),
        out.display()
    ));
    std::fs::read(&out).unwrap()
}

/// The disk of a boot-looping Windows whose SYSTEM hive names it `WKS-<NAME>`.
fn windows_disk(lab: &Lab, name: &str) -> Disk {
    make_disk(
        &lab.dir,
        name,
        Table::Gpt,
        &[Volume {
            label: "WINDOWS".into(),
            files: vec![
                File {
                    path: format!("{CS}/C-00000291-00000000-00000032.sys"),
                    data: channel_file(3, 30_000),
                    mtime: "2024-07-19 04:09:00 UTC".into(),
                },
                File {
                    path: "Windows/System32/ntoskrnl.exe".into(),
                    data: b"MZ".to_vec(),
                    mtime: "2024-07-01 10:00:00 UTC".into(),
                },
                File {
                    path: "Windows/System32/config/SYSTEM".into(),
                    data: system_hive(lab, &format!("WKS-{}", name.to_uppercase())),
                    mtime: "2024-07-19 04:09:00 UTC".into(),
                },
                File {
                    path: "Windows/Minidump/071924-8765-01.dmp".into(),
                    data: kernel_dump(lab),
                    mtime: "2024-07-19 04:10:00 UTC".into(),
                },
                File {
                    path: PLANTED.into(),
                    data: b"MZ planted".to_vec(),
                    mtime: "2024-07-01 10:00:00 UTC".into(),
                },
                File {
                    path: format!("{PLANTED}.unbrick.json"),
                    data: planted_record(),
                    mtime: "2024-07-01 10:00:00 UTC".into(),
                },
            ],
            dirty: false,
        }],
    )
}

pub(crate) fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool, lab: &Lab) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("{what} within {secs} s:\n{}", lab.server_log());
}

pub(crate) fn state(lab: &Lab, tok: &str, mac: &str) -> String {
    api_json(lab, tok, &format!("/api/v1/hosts/{mac}"))["host"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn campaign_waves_open_on_a_holding_gate_and_halt_on_a_failed_canary() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("cp");
    lab.init();
    crate::payload::build_image(&lab);
    // Waiting machines poll every 5 s (the default 30 s would make most of this test's time
    // the wait for a wave's next poll); the scripts' text is what is tested, in both loaders.
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff --waiting-room-poll-secs 5");
    let tok = token(&lab);
    let a: Vec<String> = (1..=4).map(|i| format!("52:54:00:ca:00:0{i}")).collect();
    let b: Vec<String> = (1..=4).map(|i| format!("52:54:00:cb:00:0{i}")).collect();
    let csv = lab.dir.join("fleet.csv");
    let mut text = String::from("mac,hostname,site,tags\n");
    for (i, m) in a.iter().enumerate() {
        text += &format!("{m},pc-a{i},hq,group-a\n");
    }
    for (i, m) in b.iter().enumerate() {
        text += &format!("{m},pc-b{i},hq,group-b\n");
    }
    std::fs::write(&csv, text).unwrap();
    cli(&lab, &tok, &format!("hosts import {}", csv.display()));

    // ---- Run 1: waves of 1 and 3, the gate holds.
    let id = cli(
        &lab,
        &tok,
        "campaign create --name run-a --tag group-a --waves 1,100% --concurrency 4 --min-success 1 --max-failure-rate 0",
    );
    assert!(id.starts_with("c-"), "{id}");
    cli(&lab, &tok, &format!("campaign start {id}"));
    let show = cli(&lab, &tok, &format!("campaign show {id}"));
    assert!(
        show.contains("wave 1: 1 hosts") && show.contains("wave 2: 3 hosts"),
        "{show}"
    );
    let disks: Vec<Disk> = (0..4)
        .map(|i| windows_disk(&lab, &format!("a{i}")))
        .collect();
    let mut guests: Vec<Guest> = Vec::new();
    for (i, m) in a.iter().enumerate() {
        // The last one is UEFI with Secure Boot: its waiting room is grub's.
        let fw = if i == 3 {
            Firmware::UefiSb
        } else {
            Firmware::Bios
        };
        guests.push(start_guest(
            &lab,
            &format!("a{i}"),
            fw,
            m,
            Some((&disks[i].path, Bus::Virtio)),
        ));
    }
    let t0 = Instant::now();
    wait_for(
        "the canary is remediated",
        240,
        || state(&lab, &tok, &a[0]) == "remediated",
        &lab,
    );
    let canary_done = t0.elapsed();
    wait_for(
        "wave 2 is repaired",
        420,
        || a[1..].iter().all(|m| state(&lab, &tok, m) == "remediated"),
        &lab,
    );
    // The campaign's ticker closes the last wave within a second or two.
    wait_for(
        "the campaign completes",
        15,
        || api_json(&lab, &tok, &format!("/api/v1/campaigns/{id}"))["state"] == "completed",
        &lab,
    );
    let c = api_json(&lab, &tok, &format!("/api/v1/campaigns/{id}"));
    assert!(
        c["waves"][0]["gate_note"]
            .as_str()
            .unwrap()
            .contains("gate holds"),
        "{c}"
    );
    // Wave 2 opens when the canary's result is in (the gate holds at once here), and its
    // machines leave the waiting room at their next poll: none got the payload before that.
    let when = |m: &str, needle: &str| {
        api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"))["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["message"].as_str().unwrap().contains(needle))
            .filter_map(|e| e["time_ms"].as_u64())
            .min()
    };
    let canary_ms = when(&a[0], "-> remediated").expect("the canary's remediated event");
    for m in &a[1..] {
        let got = when(m, "recovery payload issued").expect("a payload event");
        assert!(
            got >= canary_ms,
            "{m} got the payload {} ms before the canary's wave closed",
            canary_ms - got
        );
    }
    for m in &a[1..] {
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        let ev: Vec<String> = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        let w = ev
            .iter()
            .position(|e| e.contains("waiting-room (waiting for wave 2 of 2"));
        let p = ev
            .iter()
            .position(|e| e.contains("recovery payload issued"));
        assert!(
            matches!((w, p), (Some(w), Some(p)) if w < p),
            "{m} waited for wave 2 before it got the payload: {ev:#?}"
        );
    }
    // Name on disk: each agent read its disk's SYSTEM hive (a hive left open, control set 2);
    // the name is kept beside the imported one and found by a search.
    for (i, m) in a.iter().enumerate() {
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        assert_eq!(
            h["host"]["name_on_disk"].as_str(),
            Some(format!("WKS-A{i}").as_str()),
            "{m}: {h}"
        );
        assert_eq!(
            h["host"]["hostname"].as_str(),
            Some(format!("pc-a{i}").as_str())
        );
        // The crash dump's header, read on the read-only mount and reported.
        let d = &h["host"]["last_report"]["volumes"][0]["crash_dumps"][0];
        assert_eq!(
            d["path"], "Windows\\Minidump\\071924-8765-01.dmp",
            "{m}: {h}"
        );
        assert_eq!(d["bugcheck"], "0x00000050", "{d}");
        assert_eq!(d["bugcheck_name"], "PAGE_FAULT_IN_NONPAGED_AREA", "{d}");
        assert_eq!(d["parameters"][2], "0xFFFFF8076A2B1C3D", "{d}");
        assert_eq!(d["dump_time_unix"], 1_721_362_200, "{d}");
        assert_eq!(d["build"], 19045, "{d}");
        assert_eq!(d["driver"], "csagent.sys", "the faulting driver: {d}");
    }
    let found = api_json(&lab, &tok, "/api/v1/hosts?q=wks-a2");
    let macs: Vec<&str> = found["hosts"]
        .as_array()
        .or(found.as_array())
        .map(|v| v.iter().filter_map(|h| h["mac"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(macs, [a[2].as_str()], "search by name on disk: {found}");
    println!(
        "run 1: canary remediated after {:.0} s, all four after {:.0} s",
        canary_done.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    drop(guests);

    // ---- Rollback of run 1: the canary network-boots again and gets the payload in restore
    // mode; the quarantined file goes back to its place, checked by hash.
    let out = cli(&lab, &tok, &format!("campaign rollback {id}"));
    assert!(out.contains("rolling-back"), "{out}");
    let mut g = start_guest(
        &lab,
        "a0r",
        Firmware::Bios,
        &a[0],
        Some((&disks[0].path, Bus::Virtio)),
    );
    wait_for(
        "the canary is restored",
        240,
        || state(&lab, &tok, &a[0]) == "needs-attention",
        &lab,
    );
    assert!(
        g.wait_exit(Instant::now() + Duration::from_secs(60)),
        "{}",
        g.serial_text()
    );
    drop(g);
    let part = disks[0].extract(0);
    assert_eq!(
        ntfs_read(&part, &format!("{CS}/C-00000291-00000000-00000032.sys")),
        Some(channel_file(3, 30_000)),
        "the quarantined file is back, byte for byte"
    );
    // The record planted on the volume moved nothing: only what the server recorded did.
    assert_eq!(
        ntfs_read(&part, "Windows/System32/version.dll"),
        None,
        "a planted quarantine record is never followed"
    );
    assert_eq!(
        ntfs_read(&part, PLANTED).as_deref(),
        Some(&b"MZ planted"[..])
    );
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{}", a[0]));
    assert!(
        h["host"]["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{h}"
    );
    assert_eq!(
        h["host"]["last_report"]["files"][0]["action"], "restored",
        "{h}"
    );
    let c = api_json(&lab, &tok, &format!("/api/v1/campaigns/{id}"));
    assert_eq!(c["state"], "rolling-back");
    assert!(
        c["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l[1].as_str().unwrap().contains("restored")),
        "{c}"
    );

    // ---- Run 2: the canary's volume cannot be mounted: the campaign halts.
    let id2 = cli(
        &lab,
        &tok,
        "campaign create --name run-b --tag group-b --waves 1,100% --concurrency 4 --min-success 1 --max-failure-rate 0",
    );
    cli(&lab, &tok, &format!("campaign start {id2}"));
    let disks: Vec<Disk> = (0..4)
        .map(|i| windows_disk(&lab, &format!("b{i}")))
        .collect();
    disks[0].break_mft(0);
    let mut guests: Vec<Guest> = Vec::new();
    for (i, m) in b.iter().enumerate() {
        guests.push(start_guest(
            &lab,
            &format!("b{i}"),
            Firmware::Bios,
            m,
            Some((&disks[i].path, Bus::Virtio)),
        ));
    }
    wait_for(
        "the campaign halts",
        240,
        || api_json(&lab, &tok, &format!("/api/v1/campaigns/{id2}"))["state"] == "halted",
        &lab,
    );
    let c = api_json(&lab, &tok, &format!("/api/v1/campaigns/{id2}"));
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("wave 1: 0 of 1 hosts succeeded"),
        "{c}"
    );
    assert_eq!(state(&lab, &tok, &b[0]), "needs-attention");
    // Each waiting machine polls again and is told why it waits; nobody else is touched.
    let told = |m: &str| {
        api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"))["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("is halted"))
    };
    wait_for(
        "every waiting machine's poll says the campaign is halted",
        60,
        || b[1..].iter().all(|m| told(m)),
        &lab,
    );
    // And one poll more (5 s) changes nothing.
    std::thread::sleep(Duration::from_secs(6));
    for (i, m) in b.iter().enumerate().skip(1) {
        assert_eq!(state(&lab, &tok, m), "waiting", "{m}");
        assert!(
            !guests[i].serial_text().contains("unbrick-agent"),
            "{m} never ran the agent"
        );
    }
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{}", b[1]));
    assert!(
        !h["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "payload"),
        "a waiting host never got the payload: {h}"
    );
    // The hosts outside every campaign get nothing: here, a DHCP test of the Windows return.
    drop(guests);
}

#[test]
fn windows_dhcp_from_a_remediated_host_marks_it_recovered() {
    let mut lab = Lab::new("rc");
    lab.init();
    lab.stand_in_image(1024);
    lab.serve("--dhcp proxy");
    let t_admin = token(&lab);
    let mac = "52:54:00:cc:0d:01";
    // The machine network-boots and its agent reports a remediation (over HTTPS, as the agent).
    let (ns, ifc) = lab.add_client(mac);
    must(&format!("ip -n {ns} addr add 10.99.0.61/24 dev {ifc}"));
    let script = String::from_utf8_lossy(
        &lab.exec_in(
            &ns,
            &format!("curl -s http://{SERVER_IP}:8080/boot/{mac}.ipxe"),
        )
        .stdout,
    )
    .to_string();
    let t = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("unbrick.token="))
        .unwrap_or_else(|| panic!("no token: {script}"))
        .to_string();
    let post = |path: &str, body: String| {
        let o = lab.exec_in(&ns, &format!(
            "curl -sk -w ' %{{http_code}}' -H 'content-type: application/json' -d '{body}' https://{SERVER_IP}:8443{path}"
        ));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let hello = format!(
        r#"{{"token":"{t}","mac":"{mac}","uuid":null,"serial":null,"firmware":"bios","secure_boot":null,"lockdown":null,"agent_version":"test","kernel":"6.12"}}"#
    );
    assert!(post("/agent/v1/hello", hello).ends_with(" 200"));
    let report = format!(
        r#"{{"token":"{t}","mac":"{mac}","report_id":"r1","result":"remediated","reason":null,"volumes":[],"files":[],"rules_id":null,"rules_version":null,"agent_ms":1}}"#
    );
    assert!(post("/agent/v1/report", report).ends_with(" 200"));
    // Another machine sends a Windows DHCP request naming this MAC: its frame's Ethernet source
    // is not the MAC, so it is not taken as the host's return.
    let (fns, _) = lab.add_client("52:54:00:cc:0d:99");
    let o = lab.exec_in(
        &fns,
        &format!("python3 {} windows {mac}", crate::dhcp_tftp::PROBE),
    );
    assert!(o.status.success(), "{o:?}");
    std::thread::sleep(Duration::from_millis(500));
    let h = api_json(&lab, &t_admin, &format!("/api/v1/hosts/{mac}"));
    assert_eq!(h["host"]["state"], "remediated", "{h}");
    assert!(
        h["events"].as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("came from Ethernet source 52:54:00:cc:0d:99")),
        "{h}"
    );
    // Windows comes back: its DHCP client (vendor class MSFT 5.0) asks for an address. unbrick
    // answers nothing in proxy mode, but records it.
    must(&format!("ip -n {ns} addr flush dev {ifc}"));
    let conf = lab.dir.join("win.conf");
    std::fs::write(&conf, "send vendor-class-identifier \"MSFT 5.0\";\n").unwrap();
    let _ = lab.exec_in(
        &ns,
        &format!(
            "timeout 6 dhclient -1 -d -v -cf {} -lf {}/win.leases -pf {}/win.pid {ifc} 2>&1",
            conf.display(),
            lab.dir.display(),
            lab.dir.display()
        ),
    );
    lab.stop_server();
    let h = lab.host_json(mac);
    assert_eq!(h["host"]["state"], "recovered", "{h}");
    assert!(
        h["events"].as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("remediated -> recovered (Windows DHCP seen; Ethernet source = chaddr)")),
        "{h}"
    );
}
