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
