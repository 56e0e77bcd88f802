//! `unbrick doctor` in a lab namespace: the DHCP probe against a real DHCP server (dnsmasq) on
//! the segment, a port in use, rules about to expire, and the same checks in serve's log.
use crate::lab::*;
use std::time::Duration;

fn doctor(lab: &Lab, args: &str) -> (i32, String) {
    let o = lab.exec(&format!(
        "{} doctor --data-dir {} --interface br0 {args} 2>&1",
        unbrick(),
        lab.data().display()
    ));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|r| r.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

#[test]
fn doctor_names_each_problem_with_its_fix() {
    let mut lab = Lab::new("dr");
    lab.init();
    // Alone on the segment: proxy mode would leave machines without addresses, full mode fits.
    let (code, out) = doctor(&lab, "--dhcp proxy");
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "interface").starts_with("ok   interface: br0 10.99.0.1/24"),
        "{out}"
    );
    assert!(
        line(&out, "dhcp").starts_with("WARN dhcp: no DHCP server answered"),
        "{out}"
    );
    assert!(line(&out, "dhcp").contains("fix: use --dhcp full"), "{out}");
    assert!(line(&out, "ports").starts_with("ok  "), "{out}");
    assert!(
        line(&out, "image").starts_with("WARN image: no recovery kernel yet"),
        "{out}"
    );
    assert!(line(&out, "image").contains("unbrick image build"), "{out}");
    assert!(line(&out, "rules").starts_with("ok   rules: "), "{out}");
    assert!(
        line(&out, "rules").contains("in 89 days") || line(&out, "rules").contains("in 90 days"),
        "{out}"
    );
    assert!(line(&out, "shim").contains("Microsoft"), "{out}");
    assert!(line(&out, "store").contains("MiB free"), "{out}");
    for check in ["arp table", "tls", "clock"] {
        line(&out, check);
    }
    assert_eq!(
        line(&out, "cmdline"),
        "ok   cmdline: no extra words for the recovery kernel",
        "{out}"
    );
    // A kernel command line serve would refuse fails here first, with the word and the fix.
    let (code, out) = doctor(
        &lab,
        "--dhcp proxy --kernel-cmdline unbrick.mac=52:54:00:00:00:01",
    );
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "cmdline");
    assert!(
        l.starts_with(
            "FAIL cmdline: \"unbrick.mac=52:54:00:00:00:01\": the server sets unbrick.mac"
        ) && l.contains("fix: set --kernel-cmdline"),
        "{out}"
    );
    let (code, out) = doctor(&lab, "--dhcp full --pool 10.99.0.100-10.99.0.150");
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "dhcp").starts_with("ok   dhcp: no other DHCP server answers here"),
        "{out}"
    );

    // An office DHCP server on the segment: dnsmasq on a machine of its own on the bridge.
    let (office_ns, office_if) = lab.add_client("52:54:00:dd:00:02");
    must(&format!(
        "ip -n {office_ns} addr add 10.99.0.2/24 dev {office_if}"
    ));
    let ns = lab.ns.clone();
    let office = format!(
        "dnsmasq --keep-in-foreground --port=0 --interface={office_if} --bind-interfaces --listen-address=10.99.0.2 --dhcp-range=10.99.0.160,10.99.0.200,255.255.255.0,1h --dhcp-leasefile={} --pid-file={} --log-dhcp --log-facility=-",
        lab.dir.join("office.leases").display(),
        lab.dir.join("office.pid").display()
    );
    let log = lab.dir.join("office.log");
    lab.spawn(&office_ns, &office, &log);
    std::thread::sleep(Duration::from_millis(500));
    let (code, out) = doctor(&lab, "--dhcp full --pool 10.99.0.100-10.99.0.150");
    assert_eq!(
        code, 1,
        "full mode beside another DHCP server fails:\n{out}"
    );
    let l = line(&out, "dhcp");
    assert!(
        l.starts_with(
            "FAIL dhcp: another DHCP server gives addresses here (10.99.0.2 offers 10.99.0.1"
        ),
        "{out}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(l.contains("fix: beside it use --dhcp proxy"), "{out}");
    assert!(out.contains("checks failed"), "{out}");
    let (code, out) = doctor(&lab, "--dhcp proxy");
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "dhcp").starts_with("ok   dhcp: 10.99.0.2 offers"),
        "{out}"
    );
    assert!(line(&out, "dhcp").contains("proxy mode fits"), "{out}");

    // Rules that expire in 5 days: a warning naming the renewal; still exit 0.
    let rules = lab.data().join("rules/active.json");
    must(&format!(
        "{} rules default --days 5 > {} && {} rules sign {} --key {}",
        unbrick(),
        rules.display(),
        unbrick(),
        rules.display(),
        lab.data().join("keys/signing.key").display()
    ));
    let (code, out) = doctor(&lab, "--dhcp proxy");
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "rules");
    assert!(
        l.starts_with("WARN rules: ") && (l.contains("(in 4 days)") || l.contains("(in 5 days)")),
        "{out}"
    );
    assert!(l.contains("unbrick rules sign active.json"), "{out}");

    // A port in use: named, with what to do.
    let hold = lab.dir.join("hold.log");
    lab.spawn(&ns, "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"10.99.0.1\", 8443)); s.listen(); print(\"held\", flush=True); time.sleep(60)'", &hold);
    for _ in 0..50 {
        if std::fs::read_to_string(&hold)
            .unwrap_or_default()
            .contains("held")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out) = doctor(&lab, "--dhcp proxy --https-port 8443");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL ports: HTTPS: port 8443 on 10.99.0.1 is already in use"),
        "{out}"
    );

    // A running server logs the same checks at start; doctor beside it leaves its ports alone.
    lab.serve("--dhcp proxy --https-port 9443");
    assert!(
        lab.wait_log("doctor: WARN rules: ", Duration::from_secs(5)),
        "{}",
        lab.server_log()
    );
    // The console says it on every page, /metrics has the expiry and the count.
    let admin = crate::campaign::token(&lab);
    let jar = lab.dir.join("cookies");
    lab.exec(&format!(
        "curl -sk -c {} -d token={admin} https://{SERVER_IP}:9443/login -o /dev/null",
        jar.display()
    ));
    for path in ["/", "/campaigns"] {
        let html = String::from_utf8_lossy(
            &lab.exec(&format!(
                "curl -sk -b {} https://{SERVER_IP}:9443{path}",
                jar.display()
            ))
            .stdout,
        )
        .to_string();
        let banner = html
            .split("id=\"health-alert\"")
            .nth(1)
            .unwrap_or_else(|| panic!("{path}: no health banner:\n{html}"));
        assert!(
            banner.contains("WARN rules: ") && banner.contains("unbrick rules sign"),
            "{path}: {banner}"
        );
    }
    // A fresh server: the dashboard's first-run panel names all three steps, in order.
    let html = String::from_utf8_lossy(
        &lab.exec(&format!(
            "curl -sk -b {} https://{SERVER_IP}:9443/",
            jar.display()
        ))
        .stdout,
    )
    .to_string();
    let at = |id: &str| {
        html.find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id}:\n{html}"))
    };
    assert!(at("step-image") < at("step-netboot") && at("step-netboot") < at("step-campaign"));
    assert!(
        html.contains("options 66") && html.contains("F12"),
        "{html}"
    );
    let metrics = String::from_utf8_lossy(
        &lab.exec(&format!(
            "curl -s -H 'Authorization: Bearer {admin}' http://{SERVER_IP}:8080/metrics"
        ))
        .stdout,
    )
    .to_string();
    let exp = metrics
        .lines()
        .find_map(|l| l.strip_prefix("unbrick_expiry_timestamp_seconds{what=\"rules\"} "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let exp: u64 = exp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        exp > now + 4 * 86_400 && exp <= now + 5 * 86_400 + 60,
        "{exp} vs {now}"
    );
    assert!(
        metrics.contains("unbrick_expiry_timestamp_seconds{what=\"tls\"} "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("unbrick_checks{level=\"warn\"} 0"),
        "{metrics}"
    );
    let (_, out) = doctor(&lab, "--dhcp proxy --https-port 9443");
    assert!(
        line(&out, "ports").contains("unbrick serve is running on this data directory"),
        "{out}"
    );
    assert!(
        line(&out, "store").contains("held by the running server"),
        "{out}"
    );
    assert!(
        line(&out, "tls").starts_with("ok   tls: ") && line(&out, "tls").contains("valid"),
        "{out}"
    );

    // Not a data directory: said, with the command that makes one.
    let o = lab.exec(&format!(
        "{} doctor --data-dir /nonexistent-unbrick --interface br0 2>&1",
        unbrick()
    ));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("unbrick init --data-dir /nonexistent-unbrick")
    );
}
