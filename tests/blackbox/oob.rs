//! Out-of-band actions: Wake-on-LAN from the running server, on the served interface only.
use crate::campaign::{api_json, cli, token};
use crate::lab::*;
use std::time::Duration;

/// Waits for one UDP datagram on port 9 and prints its length and hex.
const LISTEN: &str = "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", 9)); s.settimeout(15); print(\"listening\", flush=True); d, a = s.recvfrom(2048); print(len(d), d.hex(), flush=True)'";

#[test]
fn wake_on_lan_goes_out_of_the_served_interface_only() {
    let mut lab = Lab::new("wl");
    lab.init();
    lab.serve("--dhcp off");
    let tok = token(&lab);
    let mac = "52:54:00:3a:00:01";
    let inv = lab.dir.join("hosts.csv");
    std::fs::write(&inv, format!("mac,hostname\n{mac},pc-wake\n")).unwrap();
    cli(&lab, &tok, &format!("hosts import {}", inv.display()));
    // A listener on the served segment, and one behind another interface of the server.
    let (c, ifc) = lab.add_client("52:54:00:3a:00:99");
    must(&format!("ip -n {c} addr add 10.99.0.90/24 dev {ifc}"));
    let side = lab.add_side_link("10.98.0.1/24", "10.98.0.2/24");
    let (on, off) = (lab.dir.join("served.log"), lab.dir.join("other.log"));
    lab.spawn(&c, LISTEN, &on);
    lab.spawn(&side, LISTEN, &off);
    let ready = |p: &std::path::Path| {
        (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("listening")
        })
    };
    assert!(ready(&on) && ready(&off));
    let out = cli(&lab, &tok, &format!("hosts wake {mac}"));
    assert!(out.contains("magic packet sent on br0"), "{out}");
    let got = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let t = std::fs::read_to_string(&on).unwrap_or_default();
            t.lines().nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no magic packet on the served segment"));
    let hexmac = mac.replace(':', "");
    assert_eq!(got, format!("102 {}{}", "ff".repeat(6), hexmac.repeat(16)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::fs::read_to_string(&off)
            .unwrap_or_default()
            .lines()
            .nth(1)
            .is_none(),
        "nothing leaves by another interface"
    );
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{mac}"));
    assert!(
        h["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "wake-on-lan"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("by token:campaign-test")),
        "{h}"
    );
    let audit = api_json(&lab, &tok, "/api/v1/audit").to_string();
    assert!(audit.contains("\"wake\""), "{audit}");
    // The controller inventory through the CLI: imported, listed without the secret.
    let bmc = lab.dir.join("bmc.csv");
    std::fs::write(
        &bmc,
        format!("mac,kind,address,fingerprint,user,secret\n{mac},wol,,,,\n52:54:00:3a:00:02,redfish,10.99.0.91,sha256:{},root,Calvin-123\n52:54:00:3a:00:03,ipmi,,,ADMIN,x\n", "ab".repeat(32)),
    )
    .unwrap();
    let o = lab.exec(&format!(
        "{} bmc import {} --server http://{SERVER_IP}:8080 --token {tok}",
        unbrick(),
        bmc.display()
    ));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(
        out.contains("1 created, 1 updated, 1 rows refused") && out.contains("line 4"),
        "{out}"
    );
    let list = cli(&lab, &tok, "bmc list");
    assert!(
        list.contains("redfish at 10.99.0.91:443 (TLS, pinned), user root, secret sealed")
            && list.contains("wol")
            && !list.contains("Calvin-123"),
        "{list}"
    );
    assert!(!lab.server_log().contains("Calvin-123"));
    // An unknown host is refused with the reason; a read-only token cannot wake.
    let o = lab.exec(&format!(
        "{} hosts wake 52:54:00:3a:00:77 --server http://{SERVER_IP}:8080 --token {tok}",
        unbrick()
    ));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("unknown host"),
        "{o:?}"
    );
}

/// Where the test's helper scripts are.
pub(crate) fn helper(name: &str) -> String {
    format!(
        "{}/tests/blackbox/helpers/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The Python with sushy-tools and bcrypt (install-deps' private venv).
const VENV: &str = "/var/tmp/unbrick-venv/bin";

/// A self-signed certificate for `ip` (EC P-256), its key, and its `sha256:` fingerprint.
pub(crate) fn self_signed(dir: &std::path::Path, name: &str, ip: &str) -> (String, String, String) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    must(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} -days 30 -subj /CN={name} -addext subjectAltName=IP:{ip} 2>&1",
        key.display(),
        crt.display()
    ));
    let fp = must(&format!(
        "openssl x509 -in {} -outform der | sha256sum | cut -d' ' -f1",
        crt.display()
    ));
    (
        crt.display().to_string(),
        key.display().to_string(),
        format!("sha256:{}", fp.trim()),
    )
}

/// A CA, and a certificate it signed for `ip`: (CA file, certificate, key).
fn ca_signed(dir: &std::path::Path, ip: &str) -> (String, String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    must(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} -days 30 -subj /CN=test-bmc-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>&1",
        p("ca.key"),
        p("ca.crt")
    ));
    must(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} -subj /CN=bmc 2>&1",
        p("leaf.key"),
        p("leaf.csr")
    ));
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    must(&format!(
        "openssl x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 30 -extfile {} -out {} 2>&1",
        p("leaf.csr"),
        p("ca.crt"),
        p("ca.key"),
        p("leaf.ext"),
        p("leaf.crt")
    ));
    (p("ca.crt"), p("leaf.crt"), p("leaf.key"))
}

/// ipmi_sim's configuration: one BMC at `addr`:623, user admin / `password`, its chassis
/// control through chassis.py on `chassis`.
pub(crate) fn ipmi_sim_conf(
    dir: &std::path::Path,
    addr: &str,
    password: &str,
    chassis: &std::path::Path,
) -> (String, String) {
    let lan = dir.join(format!("lan-{addr}.conf"));
    let emu = dir.join("ipmi.emu");
    std::fs::write(
        &lan,
        format!(
            "name \"ub{}\"\nset_working_mc 0x20\n  startlan 1\n    addr {addr} 623\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"python3 {} ipmi {} 0x20\"\n  user 2 true \"admin\" \"{password}\" admin 10 none md2 md5 straight\n",
            addr.replace('.', ""),
            helper("chassis.py"),
            chassis.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &emu,
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
    )
    .unwrap();
    (lan.display().to_string(), emu.display().to_string())
}

/// sushy-emulator's configuration: the fake driver with one system, basic auth root /
/// `password` (bcrypt, as sushy requires), HTTPS with `cert`/`key` when given.
pub(crate) fn sushy_conf(
    dir: &std::path::Path,
    name: &str,
    addr: &str,
    port: u16,
    password: &str,
    systems: &str,
    notify: Option<&str>,
) -> String {
    let htpasswd = dir.join(format!("{name}.htpasswd"));
    must(&format!(
        "{VENV}/python -c 'import bcrypt; print(\"root:\" + bcrypt.hashpw(b\"{password}\", bcrypt.gensalt()).decode())' > {}",
        htpasswd.display()
    ));
    let conf = dir.join(format!("{name}.py"));
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '{addr}'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_SYSTEMS = {systems}\nEXTERNAL_NOTIFICATION_URL = '{}'\n",
            htpasswd.display(),
            dir.join(format!("{name}.state")).display(),
            notify.unwrap_or("http://127.0.0.1:9/none")
        ),
    )
    .unwrap();
    conf.display().to_string()
}

fn wait_for(p: &std::path::Path, needle: &str) -> bool {
    (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains(needle)
    })
}

fn json_lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every controller kind against a real peer or a stand-in, all in a management namespace the
/// test made: `bmc test` reads each (and names each failure: wrong password, digest refused,
/// certificate not the pinned one, 500, no answer, unreachable), `hosts netboot` sets the
/// one-time PXE boot on each good one in its protocol's order, every step lands on the host's
/// timeline, the audit log has the action, and no secret is anywhere it should not be.
#[test]
fn controllers_are_read_and_told_to_network_boot_through_their_protocols() {
    let mut lab = Lab::new("bm");
    lab.init();
    lab.serve("--dhcp off --bmc-timeout-secs 2 --bmc-attempts 2");
    let tok = token(&lab);
    let mgmt = lab.add_side_link("10.97.0.1/24", "10.97.0.2/24");
    for a in [3, 4, 5, 6] {
        must(&format!("ip -n {mgmt} addr add 10.97.0.{a}/24 dev eth0"));
    }
    let d = lab.dir.clone();
    let chassis = d.join("chassis");
    std::fs::create_dir_all(&chassis).unwrap();
    // IPMI: Debian's ipmi_sim.
    let (lan, emu) = ipmi_sim_conf(&d, "10.97.0.2", "Ipmi-Pa55", &chassis);
    lab.spawn(
        &mgmt,
        &format!(
            "ipmi_sim -n -c {lan} -f {emu} -s {}",
            d.join("ipmi-state").display()
        ),
        &d.join("ipmi_sim.log"),
    );
    // Redfish: sushy-emulator (fake driver) over HTTPS with a self-signed certificate (pinned).
    let (crt, key, sushy_fp) = self_signed(&d, "sushy", "10.97.0.3");
    let conf = sushy_conf(
        &d,
        "sushy",
        "10.97.0.3",
        8443,
        "Calvin-123",
        "[{'uuid': '5a1e0000-0000-4000-8000-525400b00002', 'name': 'pc2', 'power_state': 'On', 'external_notifier': False, 'nics': [{'mac': '52:54:00:b0:00:02', 'ip': '10.99.0.2'}]}]",
        None,
    );
    lab.spawn(
        &mgmt,
        &format!("{VENV}/sushy-emulator --config {conf} --ssl-certificate {crt} --ssl-key {key}"),
        &d.join("sushy.log"),
    );
    // Redfish with sessions and ETags: the stand-in, its certificate from a CA (ca_file).
    let (ca, leaf, leaf_key) = ca_signed(&d, "10.97.0.4");
    let rf_log = d.join("redfish.jsonl");
    let rf = |port: u16, mode: &str, log: &std::path::Path| {
        format!(
            "python3 {} 10.97.0.4 {port} root Stand-1n-Pw --cert {leaf} --key {leaf_key} --log {} {mode}",
            helper("redfish_standin.py"),
            log.display()
        )
    };
    lab.spawn(&mgmt, &rf(443, "--refuse-mode", &rf_log), &d.join("rf.out"));
    lab.spawn(
        &mgmt,
        &rf(8444, "--fail500", &d.join("rf500.jsonl")),
        &d.join("rf500.out"),
    );
    let hang = format!(
        "python3 {} 10.97.0.6 443 root x --cert {leaf} --key {leaf_key} --log {} --hang",
        helper("redfish_standin.py"),
        d.join("hang.jsonl").display()
    );
    lab.spawn(&mgmt, &hang, &d.join("hang.out"));
    // AMT: the stand-in, digest auth.
    let amt_log = d.join("amt.jsonl");
    lab.spawn(
        &mgmt,
        &format!(
            "python3 {} 10.97.0.5 16992 admin P@ssw0rd-1 --log {}",
            helper("amt_standin.py"),
            amt_log.display()
        ),
        &d.join("amt.out"),
    );
    assert!(wait_for(&d.join("rf.out"), "listening"), "redfish stand-in");
    assert!(wait_for(&d.join("amt.out"), "listening"), "amt stand-in");
    assert!(wait_for(&d.join("hang.out"), "hanging"));
    assert!(
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            lab.exec_in(&mgmt, "curl -sk -m 1 -o /dev/null -w %{http_code} https://10.97.0.3:8443/redfish/v1/")
                .stdout
                .starts_with(b"2")
                || lab.exec_in(&mgmt, "curl -sk -m 1 -o /dev/null -w %{http_code} https://10.97.0.3:8443/redfish/v1/").stdout.starts_with(b"4")
        }),
        "sushy-emulator did not come up:\n{}",
        std::fs::read_to_string(d.join("sushy.log")).unwrap_or_default()
    );
    let wrong_fp = format!("sha256:{}", "ab".repeat(32));
    let csv = format!(
        "mac,kind,address,port,tls,fingerprint,ca_file,user,secret\n\
         52:54:00:b0:00:01,ipmi,10.97.0.2,,,,,admin,Ipmi-Pa55\n\
         52:54:00:b0:00:02,redfish,10.97.0.3,8443,yes,{sushy_fp},,root,Calvin-123\n\
         52:54:00:b0:00:03,redfish,10.97.0.4,443,yes,,{ca},root,Stand-1n-Pw\n\
         52:54:00:b0:00:04,amt,10.97.0.5,,no,,,admin,P@ssw0rd-1\n\
         52:54:00:b0:00:05,ipmi,10.97.0.2,,,,,admin,Wrong-Ipmi\n\
         52:54:00:b0:00:06,amt,10.97.0.5,,no,,,admin,Wrong-Amt\n\
         52:54:00:b0:00:07,redfish,10.97.0.3,8443,yes,{wrong_fp},,root,Calvin-123\n\
         52:54:00:b0:00:08,redfish,10.97.0.4,8444,yes,,{ca},root,Stand-1n-Pw\n\
         52:54:00:b0:00:09,redfish,10.97.0.6,443,yes,,{ca},root,Hang-Pw\n\
         52:54:00:b0:00:0a,ipmi,10.97.0.9,,,,,admin,Gone-Pw\n\
         52:54:00:b0:00:0b,wol,,,,,,,\n"
    );
    let file = d.join("bmc.csv");
    std::fs::write(&file, csv).unwrap();
    let out = cli(&lab, &tok, &format!("bmc import {}", file.display()));
    assert!(
        out.contains("11 created, 0 updated, 0 rows refused"),
        "{out}"
    );
    // The read-only test of every controller: named failures, nothing hangs.
    let t = std::time::Instant::now();
    let o = lab.exec(&format!(
        "{} bmc test --server http://{SERVER_IP}:8080 --token {tok}",
        unbrick()
    ));
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        !o.status.success(),
        "bmc test must fail when a controller does:\n{out}"
    );
    let line = |n: u8| -> String {
        let mac = format!("52:54:00:b0:00:{n:02x}");
        out.lines()
            .find(|l| l.starts_with(&mac))
            .unwrap_or_else(|| panic!("{mac} missing:\n{out}"))
            .to_string()
    };
    for (n, ok, want) in [
        (1, true, "IPMI: power on"),
        (2, true, "Redfish: power on; can force a network (PXE) boot"),
        (3, true, "Redfish: power on; can force a network (PXE) boot"),
        (4, true, "AMT: power on; can force a PXE boot"),
        (
            5,
            false,
            "IPMI at 10.97.0.2: IPMI login refused (wrong password)",
        ),
        (6, false, "AMT at 10.97.0.5: digest auth refused"),
        (7, false, "is not the pinned one"),
        (
            8,
            false,
            "Redfish at 10.97.0.4:8444: the service root answered 500",
        ),
        (
            9,
            false,
            "Redfish at 10.97.0.6: no answer (10.97.0.6:443 did not answer within 2 s)",
        ),
        (10, false, "IPMI at 10.97.0.9: no answer within 2 s"),
    ] {
        let l = line(n);
        let status = l.split_whitespace().nth(1).unwrap_or("");
        assert!(
            l.contains(want) && status == if ok { "ok" } else { "FAILED" },
            "host {n}: {l} (wanted {want})\n{out}"
        );
    }
    assert!(
        !out.contains("52:54:00:b0:00:0b"),
        "a Wake-on-LAN host has nothing to test: {out}"
    );
    assert!(took < Duration::from_secs(90), "bmc test took {took:?}");
    // Network boot once through each good controller.
    let out = cli(
        &lab,
        &tok,
        "hosts netboot 52:54:00:b0:00:01 52:54:00:b0:00:02 52:54:00:b0:00:03 52:54:00:b0:00:04",
    );
    assert!(out.contains("IPMI: one-time PXE boot set"), "{out}");
    assert!(
        out.contains("Redfish: one-time PXE boot set, reset (ForceRestart)"),
        "{out}"
    );
    assert!(
        out.contains("AMT: one-time PXE boot set, reset (master bus reset)"),
        "{out}"
    );
    // IPMI: ipmi_sim handed the PXE flag to the chassis.
    let ipmi = std::fs::read_to_string(chassis.join("ipmi.log")).unwrap_or_default();
    assert!(ipmi.contains("set boot pxe"), "{ipmi}");
    // sushy: the system now boots Pxe (read with curl, sushy's own view).
    let sys = lab.exec_in(&mgmt, "curl -sk -u root:Calvin-123 https://10.97.0.3:8443/redfish/v1/Systems/5a1e0000-0000-4000-8000-525400b00002");
    let sys: serde_json::Value = serde_json::from_slice(&sys.stdout).unwrap_or_default();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    // The stand-in: a session, If-Match on the PATCH, the Mode refused and dropped, the
    // session deleted.
    let rf = json_lines(&rf_log);
    let patches: Vec<&serde_json::Value> = rf.iter().filter(|e| e["method"] == "PATCH").collect();
    assert_eq!(patches.len(), 2, "{rf:?}");
    assert!(patches
        .iter()
        .all(|p| p["if_match"].as_str().is_some() && p["token"] == true));
    assert!(patches[0]["body"]["Boot"]
        .get("BootSourceOverrideMode")
        .is_some());
    assert!(patches[1]["body"]["Boot"]
        .get("BootSourceOverrideMode")
        .is_none());
    assert!(rf.iter().any(|e| e["session"] == "deleted"), "{rf:?}");
    assert!(rf.iter().any(|e| e["body"]["ResetType"] == "ForceRestart"));
    // AMT: Intel's order, the role and the InstanceIDs.
    let amt: Vec<serde_json::Value> = json_lines(&amt_log)
        .into_iter()
        .filter(|e| e.get("action").is_some())
        .collect();
    let order: Vec<&str> = amt.iter().map(|e| e["action"].as_str().unwrap()).collect();
    let tail: Vec<&str> = order[order.len() - 8..].to_vec();
    assert_eq!(
        tail,
        [
            "Get",
            "Enumerate",
            "Pull",
            "ChangeBootOrder",
            "Put",
            "SetBootConfigRole",
            "ChangeBootOrder",
            "RequestPowerStateChange"
        ],
        "{amt:?}"
    );
    let n = amt.len();
    assert_eq!(amt[n - 5]["source"], serde_json::Value::Null);
    assert_eq!(amt[n - 3]["role"], "1");
    assert_eq!(amt[n - 3]["config"], "Intel(r) AMT: Boot Configuration 0");
    assert_eq!(amt[n - 2]["source"], "Intel(r) AMT: Force PXE Boot");
    assert_eq!(amt[n - 1]["power_state"], 10);
    assert!(amt[n - 4]["data"]["InstanceID"] == "Intel(r) AMT:BootSettingData 0");
    // Timelines carry every step; the audit log the action.
    let events =
        |mac: &str| api_json(&lab, &tok, &format!("/api/v1/hosts/{mac}"))["events"].to_string();
    let h1 = events("52:54:00:b0:00:01");
    assert!(
        h1.contains("netboot done: IPMI: one-time PXE boot set")
            && h1.contains("Set System Boot Options: boot flags (once, force PXE): ok"),
        "{h1}"
    );
    let h5 = events("52:54:00:b0:00:05");
    assert!(
        h5.contains("power-status failed: IPMI at 10.97.0.2: IPMI login refused (wrong password)"),
        "{h5}"
    );
    let audit = api_json(&lab, &tok, "/api/v1/audit").to_string();
    assert!(
        audit.contains("\"netboot\"") && audit.contains("\"power-status\""),
        "{audit}"
    );
    // A read-only token may not network-boot anything.
    let ro = must(&format!(
        "{} tokens create --name viewer --read-only --data-dir {}",
        unbrick(),
        lab.data().display()
    ));
    let o = lab.exec(&format!(
        "{} hosts netboot 52:54:00:b0:00:01 --server http://{SERVER_IP}:8080 --token {}",
        unbrick(),
        ro.trim()
    ));
    assert!(
        !o.status.success(),
        "a read-only token network-booted a machine"
    );
    // No secret anywhere it should not be.
    let everything = format!(
        "{}{}{}{}",
        lab.server_log(),
        audit,
        (1..=11)
            .map(|n| events(&format!("52:54:00:b0:00:{n:02x}")))
            .collect::<String>(),
        cli(&lab, &tok, "bmc list")
    );
    for s in [
        "Ipmi-Pa55",
        "Calvin-123",
        "Stand-1n-Pw",
        "P@ssw0rd-1",
        "Wrong-Ipmi",
        "Wrong-Amt",
        "Hang-Pw",
        "Gone-Pw",
    ] {
        assert!(!everything.contains(s), "secret {s} leaked");
    }
}

/// A guest whose disk loops (its MBR resets the machine at once) run by chassis.py as its
/// power supply, on a tap of the lab's bridge; returns the chassis folder.
fn looping_guest(lab: &mut Lab, name: &str, mac: &str) -> std::path::PathBuf {
    let bad = unbrick_lab::disks::channel_file(5, 20_000);
    let disk = unbrick_lab::disks::make_disk(
        &lab.dir,
        name,
        unbrick_lab::disks::Table::Mbr,
        &[unbrick_lab::disks::Volume {
            label: "WINDOWS".into(),
            dirty: false,
            files: vec![unbrick_lab::disks::File {
                path: "Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys"
                    .into(),
                data: bad,
                mtime: "2024-07-19 04:09:00 UTC".into(),
            }],
        }],
    );
    // The boot code: wait 5 s (BIOS int 15h, AH 86h), then pulse the keyboard controller's
    // reset line (the machine resets, as a PC in a boot loop does; a loop much faster than a
    // real one would use up a boot override between the controller's two commands), then halt.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.path)
        .unwrap();
    std::io::Write::write_all(
        &mut f,
        &[
            0xb4, 0x86, 0xb9, 0x4c, 0x00, 0xba, 0x40, 0x4b, 0xcd, 0x15, 0xb0, 0xfe, 0xe6, 0x64,
            0xf4, 0xeb, 0xfd,
        ],
    )
    .unwrap();
    drop(f);
    let spec = unbrick_lab::qemu::GuestSpec {
        name: name.into(),
        mac: mac.into(),
        fw: unbrick_lab::qemu::Firmware::Bios,
        disk: Some((disk.path.clone(), unbrick_lab::qemu::Bus::Virtio)),
        accel: crate::firmware::accel(),
        smbios_serial: format!("UB-{name}"),
        dir: lab.dir.clone(),
    };
    lab.add_tap(&spec.tap());
    let dir = lab.dir.join(format!("chassis-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ns = lab.ns.clone();
    lab.spawn(
        &ns,
        &format!(
            "python3 {} supervise {} -- qemu-system-x86_64 {}",
            helper("chassis.py"),
            dir.display(),
            spec.args().join(" ")
        ),
        &dir.join("supervisor.log"),
    );
    dir
}

fn chassis_events(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
        .collect()
}

/// Three boot-looping machines, one behind each kind of controller (ipmi_sim, sushy-emulator,
/// the AMT stand-in), in a campaign of waves 1 and 2 with `--trigger oob` and concurrency 2:
/// before it starts nobody network-boots; then, with no test step touching a guest, each is
/// network-booted once through its controller (the canary alone first), remediated, and boots
/// its disk again, never more than two at once. (The limit with more hosts than slots is
/// covered by the unit tests and the fleet simulator; concurrency 2 lets wave 2's guests run
/// together, a minute less of emulation.)
#[test]
fn a_campaign_network_boots_its_waves_through_their_controllers() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("ob");
    lab.init();
    crate::payload::build_image(&lab);
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --bmc-timeout-secs 5");
    let tok = token(&lab);
    let mgmt = lab.add_side_link("10.97.0.1/24", "10.97.0.2/24");
    for a in [3, 5] {
        must(&format!("ip -n {mgmt} addr add 10.97.0.{a}/24 dev eth0"));
    }
    let macs = [
        "52:54:00:0b:00:01",
        "52:54:00:0b:00:02",
        "52:54:00:0b:00:03",
    ];
    let dirs: Vec<std::path::PathBuf> = ["obi", "obr", "oba"]
        .iter()
        .zip(macs)
        .map(|(n, m)| looping_guest(&mut lab, n, m))
        .collect();
    let d = lab.dir.clone();
    // IPMI for the first, through ipmi_sim whose chassis control is the first supervisor.
    let (lan, emu) = ipmi_sim_conf(&d, "10.97.0.2", "Ipmi-Pa55", &dirs[0]);
    lab.spawn(
        &mgmt,
        &format!(
            "ipmi_sim -n -c {lan} -f {emu} -s {}",
            d.join("ipmi-state").display()
        ),
        &d.join("ipmi_sim.log"),
    );
    // Redfish for the second: sushy-emulator's fake driver, its notifier into chassis.py.
    let (crt, key, fp) = self_signed(&d, "sushy", "10.97.0.3");
    lab.spawn(
        &mgmt,
        &format!(
            "python3 {} sushy {} 10.97.0.3 9999",
            helper("chassis.py"),
            dirs[1].display()
        ),
        &d.join("notifier.log"),
    );
    let conf = sushy_conf(
        &d,
        "sushy",
        "10.97.0.3",
        8443,
        "Calvin-123",
        "[{'uuid': '5a1e0000-0000-4000-8000-5254000b0002', 'name': 'obr', 'power_state': 'On', 'external_notifier': True, 'nics': [{'mac': '52:54:00:0b:00:02', 'ip': '10.99.0.2'}]}]",
        Some("http://10.97.0.3:9999/"),
    );
    lab.spawn(
        &mgmt,
        &format!("{VENV}/sushy-emulator --config {conf} --ssl-certificate {crt} --ssl-key {key}"),
        &d.join("sushy.log"),
    );
    // AMT for the third: the stand-in, writing to the third supervisor.
    lab.spawn(
        &mgmt,
        &format!(
            "python3 {} 10.97.0.5 16992 admin P@ssw0rd-1 --log {} --chassis {}",
            helper("amt_standin.py"),
            d.join("amt.jsonl").display(),
            dirs[2].display()
        ),
        &d.join("amt.out"),
    );
    assert!(
        wait_for(&d.join("notifier.log"), "listening") && wait_for(&d.join("amt.out"), "listening")
    );
    let inv = d.join("hosts.csv");
    std::fs::write(
        &inv,
        format!(
            "mac,hostname,site,tags\n{},pc-ipmi,hq,canary\n{},pc-redfish,hq,\n{},pc-amt,hq,\n",
            macs[0], macs[1], macs[2]
        ),
    )
    .unwrap();
    cli(&lab, &tok, &format!("hosts import {}", inv.display()));
    let bmc = d.join("bmc.csv");
    std::fs::write(
        &bmc,
        format!(
            "mac,kind,address,port,tls,fingerprint,user,secret\n{},ipmi,10.97.0.2,,,,admin,Ipmi-Pa55\n{},redfish,10.97.0.3,8443,yes,{fp},root,Calvin-123\n{},amt,10.97.0.5,,no,,admin,P@ssw0rd-1\n",
            macs[0], macs[1], macs[2]
        ),
    )
    .unwrap();
    cli(&lab, &tok, &format!("bmc import {}", bmc.display()));
    // sushy up?
    assert!(
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            !lab.exec_in(
                &mgmt,
                "curl -sk -m 1 -o /dev/null -w %{http_code} https://10.97.0.3:8443/redfish/v1/",
            )
            .stdout
            .starts_with(b"000")
        }),
        "sushy-emulator did not come up"
    );
    // The machines loop on their disks; unbrick hears nothing from them.
    for (m, dir) in macs.iter().zip(&dirs) {
        let looped = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            chassis_events(dir)
                .iter()
                .filter(|e| e.as_str() == "start c")
                .count()
                >= 2
        });
        assert!(
            looped,
            "{m} should be looping on its disk: {:?}",
            chassis_events(dir)
        );
    }
    for m in macs {
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        assert!(
            h["host"]["client"].is_null(),
            "{m} asked for an address before the trigger: {h}"
        );
    }
    let id = cli(
        &lab,
        &tok,
        "campaign create --name oob3 --all --waves 1,100% --concurrency 2 --min-success 1 --max-failure-rate 0 --trigger oob --trigger-wait-minutes 4",
    );
    cli(&lab, &tok, &format!("campaign start {id}"));
    crate::campaign::wait_for(
        "all three remediated",
        600,
        || {
            macs.iter()
                .all(|m| crate::campaign::state(&lab, &tok, m) == "remediated")
        },
        &lab,
    );
    // Each network-booted once, then booted its disk again.
    for (m, dir) in macs.iter().zip(&dirs) {
        // A network boot that ran. A boot-looping machine may restart by itself between the
        // boot override and the reset: that start uses the override up and the reset cuts it
        // short ("start once=n", "reset"), as on real hardware, and the campaign tries again
        // after its wait. Such a cut-short start is not a network boot.
        let network_boots = |ev: &[String]| -> Vec<usize> {
            ev.iter()
                .enumerate()
                .filter(|(i, e)| {
                    e.as_str() == "start once=n"
                        && ev.get(i + 1).map(String::as_str) != Some("reset")
                })
                .map(|(i, _)| i)
                .collect()
        };
        // The agent reboots after its report: wait for the start after the last network boot
        // (not after a cut-short one, which is followed by a disk start too).
        let rebooted = |ev: &[String]| {
            network_boots(ev)
                .last()
                .is_some_and(|&i| ev[i + 1..].iter().any(|e| e == "start c"))
        };
        for _ in 0..600 {
            if rebooted(&chassis_events(dir)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ev = chassis_events(dir);
        let once = network_boots(&ev);
        assert_eq!(once.len(), 1, "{m}: one network boot: {ev:?}");
        assert!(
            ev[once[0] + 1..].iter().any(|e| e == "start c"),
            "{m}: the boot after the fix is from its disk: {ev:?}"
        );
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        let events = h["events"].to_string();
        assert!(
            events.contains("netboot done: ") && events.contains("by campaign oob3"),
            "{m}: {events}"
        );
    }
    // Never two in the payload at once: each host's order came after the previous one's result.
    let event_time = |m: &str, needle: &str| {
        let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"));
        h["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["message"].as_str().unwrap_or("").contains(needle))
            .and_then(|e| e["time_ms"].as_u64())
            .unwrap_or_else(|| panic!("{m}: no event {needle:?}: {h}"))
    };
    let ordered = |m: &str| event_time(m, "netboot done: ");
    let remediated = |m: &str| event_time(m, "-> remediated");
    let spans: Vec<(u64, u64)> = macs.iter().map(|m| (ordered(m), remediated(m))).collect();
    // The canary alone first: the wave-2 hosts were ordered after its result.
    assert!(
        spans[1].0 >= spans[0].1 && spans[2].0 >= spans[0].1,
        "the canary first: {spans:?}"
    );
    // Never more than the concurrency (2) in flight at once.
    let mut edges: Vec<(u64, i32)> = spans
        .iter()
        .flat_map(|(a, b)| [(*a, 1), (*b, -1)])
        .collect();
    edges.sort();
    let (mut cur, mut peak) = (0, 0);
    for (_, d) in edges {
        cur += d;
        peak = peak.max(cur);
    }
    assert!(
        peak <= 2,
        "more in flight than the concurrency allows: {spans:?}"
    );
    let audit = api_json(&lab, &tok, "/api/v1/audit").to_string();
    assert!(audit.contains("campaign oob3"), "{audit}");
}
