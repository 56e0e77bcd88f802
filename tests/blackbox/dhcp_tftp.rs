//! Real DHCP clients (ISC dhclient, busybox udhcpc), real TFTP clients (atftp, curl) and curl
//! for HTTP, against `unbrick serve` in a namespace.
use crate::lab::*;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub(crate) const PROBE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/blackbox/helpers/dhcp_probe.py"
);

fn start_capture(ns: &str, file: &Path) -> Child {
    let c = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-i", "eth0", "-U", "-n", "-w",
        ])
        .arg(file)
        .args(["udp", "port", "67", "or", "udp", "port", "68"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(800));
    c
}

fn stop_capture(mut c: Child) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = sh(&format!("kill -INT {}", c.id()));
    let _ = c.wait();
}

/// DHCP replies from our server (source port 67, server id 10.99.0.1) in a capture.
fn server_replies(file: &Path) -> Vec<Message> {
    pcap_udp_payloads(file)
        .into_iter()
        .filter(|(sport, _)| *sport == 67)
        .filter_map(|(_, p)| Message::decode(&mut Decoder::new(&p)).ok())
        .filter(|m| {
            m.opts().get(OptionCode::ServerIdentifier)
                == Some(&DhcpOption::ServerIdentifier(SERVER_IP.parse().unwrap()))
        })
        .collect()
}

fn file_field(m: &Message) -> String {
    m.fname_str()
        .and_then(|r| r.ok())
        .unwrap_or("")
        .trim_end_matches('\0')
        .to_string()
}

fn dhclient_conf(dir: &Path, name: &str, pxe_arch: Option<u16>) -> std::path::PathBuf {
    let mut s = String::from("timeout 8;\nretry 1;\ninitial-interval 1;\noption pxe-arch code 93 = unsigned integer 16;\n");
    if let Some(a) = pxe_arch {
        s += &format!("send vendor-class-identifier \"PXEClient:Arch:{a:05}:UNDI:002001\";\nsend pxe-arch {a};\n");
    }
    s += "request subnet-mask, routers, domain-name-servers;\nalso request tftp-server-name, bootfile-name;\n";
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

fn dhclient(lab: &Lab, ns: &str, conf: &Path, tag: &str) -> (bool, String) {
    let lease = lab.dir.join(format!("{tag}.leases"));
    let pid = lab.dir.join(format!("{tag}.pid"));
    let o = lab.exec_in(
        ns,
        &format!(
            "timeout 30 dhclient -1 -v -cf {} -lf {} -pf {} -sf /bin/true eth0",
            conf.display(),
            lease.display(),
            pid.display()
        ),
    );
    // dhclient daemonizes once bound; stop it by its PID.
    if let Ok(p) = std::fs::read_to_string(&pid) {
        let _ = sh(&format!("kill -TERM {} 2>/dev/null", p.trim()));
    }
    (
        o.status.success(),
        std::fs::read_to_string(&lease).unwrap_or_default(),
    )
}

pub(crate) fn udhcpc(lab: &Lab, ns: &str, args: &str, tag: &str) -> (bool, String) {
    let env = lab.dir.join(format!("{tag}.env"));
    let script = lab.dir.join(format!("{tag}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\nif [ \"$1\" = bound ]; then env > {}; ip addr add $ip/$mask dev $interface; fi\nexit 0\n", env.display())).unwrap();
    must(&format!("chmod +x {}", script.display()));
    let o = lab.exec_in(
        ns,
        &format!(
            "timeout 30 udhcpc -i eth0 -f -q -n -t 3 -T 1 -A 1 -s {} {args}",
            script.display()
        ),
    );
    (
        o.status.success(),
        std::fs::read_to_string(&env).unwrap_or_default(),
    )
}

#[test]
fn proxy_mode_answers_pxe_clients_only() {
    let mut lab = Lab::new("px");
    lab.init();
    lab.serve("--dhcp proxy");
    let (bios, _) = lab.add_client("52:54:00:aa:00:01");
    let (uefi, _) = lab.add_client("52:54:00:aa:00:02");
    let (plain, _) = lab.add_client("52:54:00:aa:00:03");
    let (win, _) = lab.add_client("52:54:00:aa:00:04");

    // ISC dhclient as BIOS PXE firmware: a proxy offer with undionly.kpxe and no address.
    let cap = lab.dir.join("bios.pcap");
    let t = start_capture(&bios, &cap);
    let conf = dhclient_conf(&lab.dir, "bios.conf", Some(0));
    let (bound, _) = dhclient(&lab, &bios, &conf, "bios");
    stop_capture(t);
    assert!(!bound, "nobody hands out addresses in proxy mode");
    let replies = server_replies(&cap);
    assert!(
        !replies.is_empty(),
        "dhclient received no proxy offer; server log:\n{}",
        lab.server_log()
    );
    for m in &replies {
        // dhclient (unlike PXE firmware) goes on to REQUEST the proxy offer on :67; that is never
        // acknowledged, or it would bind to 0.0.0.0.
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert!(
            m.yiaddr().is_unspecified(),
            "proxy offer must not carry an address"
        );
        assert_eq!(m.siaddr().to_string(), SERVER_IP);
        assert_eq!(file_field(m), "undionly.kpxe");
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            m.opts().get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
    }

    // busybox udhcpc as UEFI x64 firmware: shim.
    let cap = lab.dir.join("uefi.pcap");
    let t = start_capture(&uefi, &cap);
    let (bound, _) = udhcpc(
        &lab,
        &uefi,
        "-V PXEClient:Arch:00007:UNDI:003000 -x 0x5d:0007",
        "uefi",
    );
    stop_capture(t);
    assert!(!bound);
    let replies = server_replies(&cap);
    assert!(!replies.is_empty(), "udhcpc received no proxy offer");
    assert!(replies.iter().all(|m| file_field(m) == "shimx64.efi"));

    // Plain clients and Windows belong to the office DHCP server: never answered.
    let cap = lab.dir.join("plain.pcap");
    let t = start_capture(&plain, &cap);
    let conf = dhclient_conf(&lab.dir, "plain.conf", None);
    let _ = dhclient(&lab, &plain, &conf, "plain");
    stop_capture(t);
    assert!(
        server_replies(&cap).is_empty(),
        "a non-PXE client was answered in proxy mode"
    );
    let cap = lab.dir.join("win.pcap");
    let t = start_capture(&win, &cap);
    let _ = udhcpc(&lab, &win, "-V 'MSFT 5.0'", "win");
    stop_capture(t);
    assert!(
        server_replies(&cap).is_empty(),
        "Windows was answered in proxy mode"
    );

    // The PXE boot-server exchange on :4011, answered by unicast.
    must(&format!("ip -n {uefi} addr add 10.99.0.50/24 dev eth0"));
    let out = lab.exec_in(
        &uefi,
        &format!("python3 {PROBE} pxe4011 {SERVER_IP} 52:54:00:aa:00:02"),
    );
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains("from=10.99.0.1:4011")
            && out.contains("type=5")
            && out.contains("file=shimx64.efi")
            && out.contains("yiaddr=0.0.0.0"),
        "{out}\n{}",
        lab.server_log()
    );

    // A burst of malformed packets is dropped and the server keeps serving.
    let out = lab.exec_in(&uefi, &format!("python3 {PROBE} burst {SERVER_IP} 400"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.exec_in(
        &uefi,
        &format!("python3 {PROBE} pxe4011 {SERVER_IP} 52:54:00:aa:00:02"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("file=shimx64.efi"),
        "server stopped answering after malformed packets\n{}",
        lab.server_log()
    );

    assert!(lab.stop_server().success());
    for mac in ["52:54:00:aa:00:01", "52:54:00:aa:00:02"] {
        let h = lab.host_json(mac);
        assert_eq!(h["host"]["state"], "seen", "{mac} recorded as seen: {h}");
    }
    // The plain client and Windows, neither network-booting nor imported, leave no record.
    for mac in ["52:54:00:aa:00:03", "52:54:00:aa:00:04"] {
        let o = sh(&format!(
            "{} hosts show {mac} --json --data-dir {}",
            unbrick(),
            lab.data().display()
        ));
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no host"),
            "{mac} should leave no record: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let ev = lab.events("52:54:00:aa:00:01");
    assert!(
        ev.iter().any(|e| e.starts_with("dhcp-discover")
            && e.contains("decision payload")
            && e.contains("undionly.kpxe")),
        "{ev:?}"
    );
    // Windows was seen (the log says so at debug level) but nothing was kept for it.
    assert!(
        lab.server_log()
            .contains("from 52:54:00:aa:00:04 (Windows)"),
        "{}",
        lab.server_log()
    );
}

#[test]
fn full_mode_leases_to_real_clients() {
    let mut lab = Lab::new("fu");
    lab.init();
    // The ordinary client (b) is a known host, so its leases are on its timeline; an unknown
    // one leaves no record.
    let inv = lab.dir.join("hosts.csv");
    std::fs::write(&inv, "mac,hostname\n52:54:00:bb:00:02,pc-b\n").unwrap();
    must(&format!(
        "{} hosts import {} --data-dir {}",
        unbrick(),
        inv.display(),
        lab.data().display()
    ));
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.120 --router 10.99.0.1 --lease-secs 600");
    let (a, _) = lab.add_client("52:54:00:bb:00:01");
    let (b, _) = lab.add_client("52:54:00:bb:00:02");
    let (c, _) = lab.add_client("52:54:00:bb:00:03");

    // dhclient as BIOS PXE: address and boot file together.
    let conf = dhclient_conf(&lab.dir, "a.conf", Some(0));
    let (bound, lease) = dhclient(&lab, &a, &conf, "a");
    assert!(
        bound,
        "dhclient got no lease:\n{lease}\n{}",
        lab.server_log()
    );
    assert!(lease.contains("fixed-address 10.99.0.1"), "{lease}");
    assert!(lease.contains("filename \"undionly.kpxe\""), "{lease}");
    assert!(
        lease.contains("option dhcp-server-identifier 10.99.0.1;"),
        "{lease}"
    );
    assert!(lease.contains("option dhcp-lease-time 600;"), "{lease}");

    // udhcpc as UEFI: address, shim, next-server.
    let (bound, env) = udhcpc(
        &lab,
        &b,
        "-V PXEClient:Arch:00007:UNDI:003000 -x 0x5d:0007",
        "b1",
    );
    assert!(bound, "udhcpc got no lease:\n{}", lab.server_log());
    let ip_b = env
        .lines()
        .find_map(|l| l.strip_prefix("ip="))
        .unwrap()
        .to_string();
    assert!(ip_b.starts_with("10.99.0.1"), "{env}");
    assert!(env.contains("boot_file=shimx64.efi"), "{env}");
    assert!(env.contains("siaddr=10.99.0.1"), "{env}");
    assert!(env.contains("router=10.99.0.1"), "{env}");

    // dhclient that remembers a foreign address: INIT-REBOOT, NAK, then a fresh lease.
    let stale = lab.dir.join("c.leases");
    std::fs::write(&stale, "lease {\n  interface \"eth0\";\n  fixed-address 192.168.77.7;\n  option subnet-mask 255.255.255.0;\n  option dhcp-server-identifier 10.99.0.1;\n  renew 4 2037/01/01 00:00:00;\n  rebind 4 2037/01/01 00:00:00;\n  expire 4 2037/01/01 00:00:00;\n}\n").unwrap();
    let conf = dhclient_conf(&lab.dir, "c.conf", None);
    let (bound, lease) = dhclient(&lab, &c, &conf, "c");
    assert!(bound, "{lease}\n{}", lab.server_log());
    assert!(
        lab.server_log()
            .contains("NAK: requested address is not in this server's pool"),
        "{}",
        lab.server_log()
    );
    assert!(
        lease.matches("fixed-address 10.99.0.1").count() >= 1,
        "{lease}"
    );

    // Leases survive a restart: the same client gets the same address back.
    assert!(lab.stop_server().success());
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.120 --router 10.99.0.1 --lease-secs 600");
    let (bound, env) = udhcpc(
        &lab,
        &b,
        "-V PXEClient:Arch:00007:UNDI:003000 -x 0x5d:0007",
        "b2",
    );
    assert!(bound);
    assert!(
        env.contains(&format!("ip={ip_b}")),
        "lease not kept across restart: {env}"
    );
    // RELEASE (busybox 1.35's -R does not put one on the wire here, so the probe sends it).
    let _ = lab.exec_in(&b, &format!("ip addr add {ip_b}/24 dev eth0"));
    let o = lab.exec_in(
        &b,
        &format!("python3 {PROBE} release {SERVER_IP} 52:54:00:bb:00:02 {ip_b}"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        lab.wait_log(&format!("released {ip_b}"), Duration::from_secs(5)),
        "RELEASE not handled:\n{}",
        lab.server_log()
    );
    assert!(lab.stop_server().success());
    let ev = lab.events("52:54:00:bb:00:02");
    assert!(
        ev.iter()
            .any(|e| e.starts_with("dhcp-request") && e.contains(&format!("leased {ip_b}"))),
        "{ev:?}"
    );
}

#[test]
fn sigterm_lets_a_transfer_in_flight_finish() {
    let mut lab = Lab::new("st");
    lab.init();
    let img = lab.data().join("image");
    // Big enough to be cut by the stop, small enough to finish within the 10 s grace when the
    // machine is busy with the other tests (24 MiB did not, once, beside the slowloris test).
    let big: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(img.join("big.bin"), &big).unwrap();
    must(&format!("{} image sign {}", unbrick(), img.display()));
    lab.serve("--dhcp off");
    let (c, _) = lab.add_client("52:54:00:dd:00:01");
    must(&format!("ip -n {c} addr add 10.99.0.50/24 dev eth0"));
    let out = lab.dir.join("big.out");
    // Lock-step 512-byte blocks: tens of thousands of round trips, long enough to be cut by a stop.
    let mut dl = Command::new("ip")
        .args(["netns", "exec", &c, "atftp", "-g", "-r", "big.bin", "-l"])
        .arg(&out)
        .arg(SERVER_IP)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 512 * 1024
        && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < big.len() as u64,
        "transfer finished before the stop; make the file bigger"
    );
    let st = lab.stop_server();
    assert!(st.success(), "graceful stop: {st}");
    assert!(
        dl.wait().unwrap().success(),
        "the transfer in flight was not allowed to finish:\n{}",
        lab.server_log()
    );
    assert!(std::fs::read(&out).unwrap() == big, "file differs");
    assert!(
        lab.server_log().contains("shutting down"),
        "{}",
        lab.server_log()
    );
}

#[test]
fn tftp_and_http_with_real_clients() {
    let mut lab = Lab::new("tf");
    lab.init();
    lab.serve("--dhcp off");
    let (c, _) = lab.add_client("52:54:00:cc:00:01");
    must(&format!("ip -n {c} addr add 10.99.0.50/24 dev eth0"));
    let img = lab.data().join("image");
    let out = lab.dir.join("dl");
    std::fs::create_dir_all(&out).unwrap();

    // The iPXE script request tells the server which MAC this address belongs to.
    let o = String::from_utf8_lossy(
        &lab.exec_in(
            &c,
            &format!("curl -sS http://{SERVER_IP}:8080/boot/52:54:00:cc:00:01.ipxe"),
        )
        .stdout,
    )
    .to_string();
    assert!(
        o.starts_with("#!ipxe") && o.contains("no recovery image yet"),
        "{o}"
    );
    // atftp with blksize, windowsize and tsize.
    let o = lab.exec_in(&c, &format!("atftp --option 'blksize 1468' --option 'windowsize 16' --option 'tsize 0' -g -r ipxe.efi -l {}/ipxe.efi {SERVER_IP}", out.display()));
    assert!(
        o.status.success(),
        "atftp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out.join("ipxe.efi")),
        sha256_file(&img.join("ipxe.efi"))
    );
    // curl, blksize 1468 and the RFC 1350 default.
    let o = lab.exec_in(
        &c,
        &format!(
            "curl -sS --tftp-blksize 1468 -o {}/undionly.kpxe tftp://{SERVER_IP}/undionly.kpxe",
            out.display()
        ),
    );
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out.join("undionly.kpxe")),
        sha256_file(&img.join("undionly.kpxe"))
    );
    let o = lab.exec_in(
        &c,
        &format!(
            "curl -sS --tftp-no-options -o {}/grubx64.efi tftp://{SERVER_IP}/grubx64.efi",
            out.display()
        ),
    );
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out.join("grubx64.efi")),
        sha256_file(&img.join("grubx64.efi"))
    );
    // grub's stub configuration.
    let o = lab.exec_in(&c, &format!("curl -sS tftp://{SERVER_IP}/grub/grub.cfg"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("configfile /grub/host-${net_default_mac}.cfg")
    );

    // Hostile paths: traversal refused, absolute paths only inside the root, writes refused.
    let o = lab.exec_in(
        &c,
        &format!(
            "atftp -g -r ../../etc/passwd -l {}/passwd {SERVER_IP}",
            out.display()
        ),
    );
    assert!(!o.status.success());
    assert!(
        std::fs::metadata(out.join("passwd"))
            .map(|m| m.len() == 0)
            .unwrap_or(true),
        "traversal returned data"
    );
    let o = lab.exec_in(
        &c,
        &format!(
            "curl -sS -o {}/p2 tftp://{SERVER_IP}/etc/passwd",
            out.display()
        ),
    );
    assert!(
        !o.status.success(),
        "/etc/passwd must not exist under the TFTP root"
    );
    std::fs::write(out.join("up"), b"x").unwrap();
    let o = lab.exec_in(
        &c,
        &format!("atftp -p -l {}/up -r up {SERVER_IP}", out.display()),
    );
    assert!(!o.status.success(), "a write request was accepted");
    assert!(
        lab.server_log().contains("path traversal refused"),
        "{}",
        lab.server_log()
    );
    assert!(
        lab.server_log().contains("read-only"),
        "{}",
        lab.server_log()
    );

    // Malformed burst, then service as before.
    let o = lab.exec_in(&c, &format!("python3 {PROBE} burst {SERVER_IP} 300"));
    assert!(o.status.success());
    let o = lab.exec_in(
        &c,
        &format!(
            "atftp --option 'blksize 1468' -g -r snponly.efi -l {}/snponly.efi {SERVER_IP}",
            out.display()
        ),
    );
    assert!(
        o.status.success(),
        "TFTP stopped after malformed packets: {}",
        lab.server_log()
    );
    assert_eq!(
        sha256_file(&out.join("snponly.efi")),
        sha256_file(&img.join("snponly.efi"))
    );

    // HTTP: Content-Length, HEAD, Range, no redirects, nothing outside the image.
    let len = std::fs::metadata(img.join("ipxe.efi")).unwrap().len();
    let o = String::from_utf8_lossy(
        &lab.exec_in(
            &c,
            &format!("curl -sSI http://{SERVER_IP}:8080/image/ipxe.efi"),
        )
        .stdout,
    )
    .to_lowercase();
    assert!(
        o.starts_with("http/1.1 200")
            && o.contains(&format!("content-length: {len}"))
            && o.contains("accept-ranges: bytes"),
        "{o}"
    );
    let o = lab.exec_in(
        &c,
        &format!(
            "curl -sS -r 100-199 -D {}/h -o {}/part http://{SERVER_IP}:8080/image/ipxe.efi",
            out.display(),
            out.display()
        ),
    );
    assert!(o.status.success());
    let part = std::fs::read(out.join("part")).unwrap();
    assert_eq!(part, std::fs::read(img.join("ipxe.efi")).unwrap()[100..200]);
    let h = std::fs::read_to_string(out.join("h"))
        .unwrap()
        .to_lowercase();
    assert!(
        h.starts_with("http/1.1 206") && h.contains(&format!("content-range: bytes 100-199/{len}")),
        "{h}"
    );
    let o = String::from_utf8_lossy(&lab.exec_in(&c, &format!("curl -s -o /dev/null -w '%{{http_code}}' -r {len}- http://{SERVER_IP}:8080/image/ipxe.efi")).stdout).to_string();
    assert_eq!(o, "416");
    for bad in [
        "/image/..%2Fkeys%2Fsigning.key",
        "/image/manifest.json.sig",
        "/image/nothing",
    ] {
        let o = String::from_utf8_lossy(
            &lab.exec_in(
                &c,
                &format!("curl -s -o /dev/null -w '%{{http_code}}' 'http://{SERVER_IP}:8080{bad}'"),
            )
            .stdout,
        )
        .to_string();
        assert_eq!(o, "404", "{bad}");
    }
    let o = String::from_utf8_lossy(
        &lab.exec_in(
            &c,
            &format!("curl -s -w ' %{{http_code}}' http://{SERVER_IP}:8080/boot/zz.ipxe"),
        )
        .stdout,
    )
    .to_string();
    assert!(
        o.ends_with(" 400") && o.contains("not a MAC address"),
        "{o}"
    );
    // The drivers' counters are in /metrics (admin token, over HTTPS: a token sent in clear
    // from another machine is refused).
    let tok = must(&format!(
        "{} tokens create --name metrics --read-only --data-dir {}",
        unbrick(),
        lab.data().display()
    ));
    let m = String::from_utf8_lossy(
        &lab.exec_in(
            &c,
            &format!(
                "curl -sSk -H 'Authorization: Bearer {}' https://{SERVER_IP}:8443/metrics",
                tok.trim()
            ),
        )
        .stdout,
    )
    .to_string();
    let counter = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{m}"))
    };
    assert!(counter("unbrick_tftp_requests_total") >= 3, "{m}");
    assert!(counter("unbrick_tftp_completed_total") >= 3, "{m}");
    assert!(m.contains("# TYPE unbrick_tftp_busy_total counter"), "{m}");

    assert!(lab.stop_server().success(), "graceful stop");
    let ev = lab.events("52:54:00:cc:00:01");
    assert!(
        ev.iter().any(|e| e.contains("ipxe.efi")
            && e.contains("complete")
            && e.contains("windowsize 16")),
        "TFTP transfer recorded for the host: {ev:?}"
    );
}

/// Connections are kept between requests (the agent reuses its connection) and closed by the
/// server after the idle limit, on both listeners; seen by Python's HTTP and OpenSSL stacks.
#[test]
fn http_connections_kept_and_idle_ones_closed() {
    let mut lab = Lab::new("ka");
    lab.init();
    lab.serve("--dhcp off --idle-timeout-secs 3");
    let (c, _) = lab.add_client("52:54:00:cc:00:09");
    must(&format!("ip -n {c} addr add 10.99.0.51/24 dev eth0"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/blackbox/helpers/keepalive.py"
    );
    let o = lab.exec_in(&c, &format!("python3 {script} {SERVER_IP}"));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for scheme in ["http", "https"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{scheme} ")))
            .unwrap_or_else(|| panic!("no {scheme} line in {out}"));
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w[1..4], ["200", "200", "closed-after"], "{line}");
        let secs: f64 = w[4].parse().unwrap();
        // The limit counts from the last response; 1 s of slack for a loaded machine.
        assert!((2.5..=4.5).contains(&secs), "{line}");
    }
}

/// Sends `n` TFTP read requests for `file` with `timeout 255`, each from its own port, and
/// never acknowledges anything; prints, per request, what came back first (OACK options or the
/// ERROR text).
const STALL: &str = r#"python3 -c '
import socket, sys
server, n, f = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(3)
    s.sendto(b"\x00\x01" + f.encode() + b"\x00octet\x00timeout\x00255\x00blksize\x001468\x00", (server, 69))
    socks.append(s)
for s in socks:
    try:
        d, _ = s.recvfrom(2048)
    except socket.timeout:
        print("nothing"); continue
    op = d[1]
    if op == 6:
        print("oack " + " ".join(x.decode() for x in d[2:].split(b"\x00") if x))
    elif op == 5:
        print("error " + d[4:].split(b"\x00")[0].decode())
    else:
        print("data")
print("holding", flush=True)
import time; time.sleep(20)
' "#;

/// One address holds stalled transfers (it asks for `timeout 255` and never ACKs): it gets
/// at most 4, the `timeout` beyond 5 s is not acknowledged, a transfer whose client asked for
/// the file again is given up early, and other machines still download with real clients
/// meanwhile.
#[test]
fn a_peer_with_stalled_transfers_cannot_hold_the_tftp_server() {
    let mut lab = Lab::new("ts");
    lab.init();
    lab.serve("--dhcp off");
    let (hog, _) = lab.add_client("52:54:00:cd:00:01");
    must(&format!("ip -n {hog} addr add 10.99.0.60/24 dev eth0"));
    let (good, _) = lab.add_client("52:54:00:cd:00:02");
    must(&format!("ip -n {good} addr add 10.99.0.61/24 dev eth0"));
    let log = lab.dir.join("stall.log");
    lab.spawn(&hog, &format!("{STALL} {SERVER_IP} 12 undionly.kpxe"), &log);
    let held = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("holding")
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(held, "{text}");
    let oacks = text.lines().filter(|l| l.starts_with("oack")).count();
    let refused = text
        .lines()
        .filter(|l| l.contains("too many transfers from your address"))
        .count();
    assert_eq!((oacks, refused), (4, 8), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with("oack"))
            .all(|l| !l.contains("timeout")),
        "timeout 255 must not be acknowledged: {text}"
    );
    // Each request asked for the same file again: a transfer that the peer has asked for again
    // since it began is given up at its next retransmission (about 3 s), not after the whole
    // back-off. The requests are handled on tasks of their own, so the fourth transfer may
    // start before or after the refused requests: three or all four end so.
    assert!(
        lab.wait_log("\"abandoned\"", Duration::from_secs(10)),
        "{}",
        lab.server_log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let abandoned = lab.server_log().matches("\"abandoned\"").count();
    assert!(
        (3..=4).contains(&abandoned),
        "{abandoned}: {}",
        lab.server_log()
    );
    // Meanwhile another machine downloads, with curl and with atftp.
    let out = lab.dir.join("dl");
    std::fs::create_dir_all(&out).unwrap();
    let img = lab.data().join("image");
    let o = lab.exec_in(
        &good,
        &format!(
            "curl -sS -m 20 --tftp-blksize 1468 -o {}/undionly.kpxe tftp://{SERVER_IP}/undionly.kpxe",
            out.display()
        ),
    );
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out.join("undionly.kpxe")),
        sha256_file(&img.join("undionly.kpxe"))
    );
    let o = lab.exec_in(
        &good,
        &format!(
            "atftp -g -r ipxe.efi -l {}/ipxe.efi {SERVER_IP}",
            out.display()
        ),
    );
    assert!(
        o.status.success(),
        "atftp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out.join("ipxe.efi")),
        sha256_file(&img.join("ipxe.efi"))
    );
    // A stalled transfer not given up so ends on the server's own schedule (default timeout,
    // retries), well before the 255 s the client asked for.
    if abandoned < 4 {
        assert!(
            lab.wait_log("timed out waiting", Duration::from_secs(1))
                || lab.wait_log("\"timed-out\"", Duration::from_secs(45)),
            "{}",
            lab.server_log()
        );
    }
}

/// Slowloris on both listeners (5 addresses x 100 connections each, 1,000 in all, a header byte
/// every 2 s, never finished): the server keeps at most 64 per address, ends every dribbling header 10 s
/// after it began, and meanwhile firmware clients still get their boot script, artefacts over
/// HTTP and files over TFTP.
#[test]
fn slowloris_cannot_stop_boot_scripts_artefacts_or_tftp() {
    let mut lab = Lab::new("sl");
    lab.init();
    lab.stand_in_image(4 << 20);
    lab.serve("--dhcp off");
    let (bad, _) = lab.add_client("52:54:00:ce:00:01");
    let srcs: Vec<String> = (70..75).map(|i| format!("10.99.0.{i}")).collect();
    for s in &srcs {
        must(&format!("ip -n {bad} addr add {s}/24 dev eth0"));
    }
    let (good, _) = lab.add_client("52:54:00:ce:00:02");
    must(&format!("ip -n {good} addr add 10.99.0.61/24 dev eth0"));
    let script = format!(
        "{}/tests/blackbox/helpers/slowloris.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let (l80, l443) = (
        lab.dir.join("slow-http.log"),
        lab.dir.join("slow-https.log"),
    );
    lab.spawn(
        &bad,
        &format!(
            "python3 {script} {SERVER_IP} 8080 100 2 --from {} --hold 25",
            srcs.join(",")
        ),
        &l80,
    );
    lab.spawn(
        &bad,
        &format!(
            "python3 {script} {SERVER_IP} 8443 100 2 --tls --from {} --hold 25",
            srcs.join(",")
        ),
        &l443,
    );
    let opened = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains("opened")
    };
    assert!(
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            opened(&l80) && opened(&l443)
        }),
        "the attack did not start"
    );
    // During the attack: the boot script, the artefacts, TFTP.
    let out = lab.dir.join("dl");
    std::fs::create_dir_all(&out).unwrap();
    for _ in 0..3 {
        let o = lab.exec_in(&good, &format!("curl -sS -m 5 -o /dev/null -w %{{http_code}} http://{SERVER_IP}:8080/boot/52:54:00:ce:00:02.ipxe"));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "200",
            "boot script during the attack: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = lab.exec_in(&good, &format!("curl -sS -m 10 -o {}/vmlinuz http://{SERVER_IP}:8080/image/vmlinuz?host=52:54:00:ce:00:02", out.display()));
        assert!(
            o.status.success(),
            "kernel during the attack: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::metadata(out.join("vmlinuz")).unwrap().len(),
            4 << 20
        );
        let o = lab.exec_in(
            &good,
            &format!(
                "curl -sS -m 10 -o {}/undionly.kpxe tftp://{SERVER_IP}/undionly.kpxe",
                out.display()
            ),
        );
        assert!(
            o.status.success(),
            "TFTP during the attack: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let done = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains("closed at once")
    };
    assert!(
        (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            done(&l80) && done(&l443)
        }),
        "the attack did not end"
    );
    for p in [&l80, &l443] {
        let t = std::fs::read_to_string(p).unwrap();
        let nums: Vec<f64> = t
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .filter_map(|w| w.parse().ok())
            .collect();
        // opened N (F failed to open) in T s / open 5 s after ...: at most P per address, A in
        // all / closed at once X, closed later L (last after S s), still open O
        let (per, last, still) = (nums[4], nums[8], nums[9]);
        assert!(per <= 64.0, "at most 64 per address kept: {t}");
        assert_eq!(still, 0.0, "every dribbling connection was ended: {t}");
        assert!(last <= 13.0, "headers end 10 s after they began: {t}");
    }
}

/// A flood of PXE DISCOVERs from spoofed MACs: no more host records than the new-MAC rate
/// allows, and a real (imported) PXE client still gets its offers within 1 s. Prints the flood
/// rate, the records made and the server's peak RSS.
#[test]
fn a_flood_of_spoofed_macs_fills_nothing_and_real_clients_get_offers() {
    let mut lab = Lab::new("fl");
    lab.init();
    lab.serve("--dhcp proxy --max-hosts 3000 --new-hosts-per-sec 100");
    let tok = crate::campaign::token(&lab);
    let real = "52:54:00:cf:00:02";
    let inv = lab.dir.join("hosts.csv");
    std::fs::write(&inv, format!("mac,hostname\n{real},pc-real\n")).unwrap();
    crate::campaign::cli(&lab, &tok, &format!("hosts import {}", inv.display()));
    let (flooder, _) = lab.add_client("52:54:00:cf:00:01");
    let (client, _) = lab.add_client(real);
    let flood_log = lab.dir.join("flood.log");
    lab.spawn(
        &flooder,
        &format!("python3 {PROBE} flood 3000 12"),
        &flood_log,
    );
    std::thread::sleep(Duration::from_secs(2));
    let o = lab.exec_in(&client, &format!("python3 {PROBE} pxetime {real} 10"));
    let offers = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&flood_log)
                .unwrap_or_default()
                .contains("sent")
        }),
        "the flood did not end"
    );
    let flood = std::fs::read_to_string(&flood_log).unwrap();
    let times: Vec<&str> = offers
        .trim()
        .trim_start_matches("offers ms: ")
        .split(' ')
        .collect();
    assert_eq!(times.len(), 10, "{offers}");
    for t in &times {
        let ms: f64 = t.parse().unwrap_or_else(|_| {
            panic!("a real client got no offer within 1 s during the flood: {offers}")
        });
        assert!(ms < 1000.0, "{offers}");
    }
    let sum = crate::campaign::api_json(&lab, &tok, "/api/v1/summary");
    let total = sum["total"].as_u64().unwrap_or_else(|| panic!("{sum}"));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", lab.server_pid()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0)
                / 1024
        })
        .unwrap_or(0);
    println!(
        "{}; host records {total}; real client's offers (ms) {}; server peak RSS {rss} MB",
        flood.trim(),
        times.join(" ")
    );
    // 100 a second for ~12 s plus the burst of 1,000, and the imported host.
    assert!(
        total <= 100 * 14 + 1000 + 1,
        "{total} records from a flood: {flood}"
    );
    assert!(
        total > 1,
        "the flood made no record at all: is it reaching the server? {flood}"
    );
    assert!(rss < 200, "server peak RSS {rss} MB");
    assert!(lab
        .server_log()
        .contains("new host refused: more than 100 new MACs a second"));
}

/// A client behind a path that drops frames over 1,000 bytes (its bridge port has MTU 1000; the
/// bridge and the server stay at 1500): curl's TFTP at blksize 1468 stops at block 1. After two
/// such stalls unbrick offers that address blksize 512 (a smaller OACK, RFC 2348) and curl gets
/// the whole file; another client at full size is not affected.
#[test]
fn a_peer_whose_path_drops_large_blocks_is_offered_512_after_two_stalls() {
    let mut lab = Lab::new("mt");
    lab.init();
    lab.serve("--dhcp off");
    let (c, _) = lab.add_client("52:54:00:cd:00:01");
    let (ok, _) = lab.add_client("52:54:00:cd:00:02");
    must(&format!("ip -n {c} addr add 10.99.0.60/24 dev eth0"));
    must(&format!("ip -n {ok} addr add 10.99.0.61/24 dev eth0"));
    // The client's bridge port (h0) takes frames of at most 1,000 bytes.
    must(&format!("ip -n {} link set h0 mtu 1000", lab.ns));
    must(&format!("ip -n {} link set br0 mtu 1500", lab.ns));
    let img = lab.data().join("image");
    let out = lab.dir.join("narrow");
    std::fs::create_dir_all(&out).unwrap();
    let get = |ns: &str, n: usize| {
        lab.exec_in(
            ns,
            &format!(
                "curl -sS -m 6 --tftp-blksize 1468 -o {}/ipxe.efi.{n} tftp://{SERVER_IP}/ipxe.efi",
                out.display()
            ),
        )
    };
    let timed_out = |lab: &Lab| {
        lab.server_log()
            .lines()
            .filter(|l| {
                l.contains("TFTP transfer")
                    && l.contains("10.99.0.60:")
                    && l.contains("ipxe.efi")
                    && l.contains("\"timed-out\"")
            })
            .count()
    };
    for n in 1..=2 {
        let o = get(&c, n);
        assert!(
            !o.status.success(),
            "try {n} got through MTU 1000 at blksize 1468"
        );
        // The server gives up on the silent client (its retransmissions) and records the stall.
        let t = Instant::now();
        while timed_out(&lab) < n && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(timed_out(&lab), n, "{}", lab.server_log());
    }
    assert!(
        lab.server_log().contains("offering this peer blksize 512"),
        "{}",
        lab.server_log()
    );
    let o = get(&c, 3);
    assert!(
        o.status.success(),
        "third try: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        lab.server_log()
    );
    assert_eq!(
        sha256_file(&out.join("ipxe.efi.3")),
        sha256_file(&img.join("ipxe.efi"))
    );
    // The cap is that address's alone.
    let o = get(&ok, 4);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = |log: &str, peer: &str| {
        log.lines()
            .filter(|l| {
                l.contains("TFTP transfer")
                    && l.contains(&format!("{peer}:"))
                    && l.contains("\"complete\"")
            })
            .count()
    };
    // curl exits on sending the last ACK; the server logs the transfer when it reads it.
    let t = Instant::now();
    let mut log = lab.server_log();
    while line(&log, "10.99.0.61") == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        log = lab.server_log();
    }
    assert_eq!(
        (line(&log, "10.99.0.60"), line(&log, "10.99.0.61")),
        (1, 1),
        "{log}"
    );
    assert!(lab.stop_server().success());
}
