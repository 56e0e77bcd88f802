//! A full disk: the data directory on its own small ext4 file system (a loop device made by the
//! test), filled by another writer while a machine is in the payload. Nothing is acknowledged
//! that is not durable (the agent's report gets 503 with Retry-After, a new full-mode DHCP
//! client gets no ACK), the console says "the store cannot write: disk full" with the free
//! space, and once the space is freed everything goes on without a restart; afterwards the
//! store opens cleanly with everything that was acknowledged.
use crate::lab::*;
use std::time::Duration;

/// A loop-mounted file system, unmounted (by its mount point) when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", self.0.display()));
    }
}

/// Bytes free for an unprivileged writer (what the store's guard reads).
fn avail(dir: &std::path::Path) -> u64 {
    must(&format!(
        "df -B1 --output=avail {} | tail -1",
        dir.display()
    ))
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn a_full_disk_refuses_what_it_cannot_keep_and_resumes_when_space_is_freed() {
    let mut lab = Lab::new("df");
    let img = lab.dir.join("fs.img");
    std::fs::create_dir_all(lab.data()).unwrap();
    must(&format!(
        "truncate -s 48M {0} && mkfs.ext4 -q -F {0} && mount -o loop {0} {1}",
        img.display(),
        lab.data().display()
    ));
    let _mounted = Mounted(lab.data());
    lab.init();
    lab.stand_in_image(64 * 1024);
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --store-reserve-mb 8");
    let admin = crate::campaign::token(&lab);

    // A machine network-boots (its lease, its script with a token) and its agent says hello.
    let mac = "52:54:00:df:00:01";
    let (ns, _ifc) = lab.add_client(mac);
    let (other, _) = lab.add_client("52:54:00:df:00:02");
    let (ok, env) = crate::dhcp_tftp::udhcpc(&lab, &ns, "", "df-a");
    assert!(ok, "the first machine gets a lease: {env}");
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
    // (status line and headers, body)
    let post = |path: &str, body: &str| {
        let o = lab.exec_in(&ns, &format!(
            "curl -sk -D - -H 'content-type: application/json' -d '{body}' https://{SERVER_IP}:8443{path}"
        ));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let hello = format!(
        r#"{{"token":"{t}","mac":"{mac}","uuid":null,"serial":null,"firmware":"bios","secure_boot":null,"lockdown":null,"agent_version":"test","kernel":"6.12"}}"#
    );
    assert!(post("/agent/v1/hello", &hello).starts_with("HTTP/1.1 200"));

    // Another writer fills the file system, leaving 2 MiB (under the 8 MiB reserve).
    let free = avail(&lab.data());
    let filler = lab.data().join("filler");
    must(&format!(
        "fallocate -l {} {}",
        free - (2 << 20),
        filler.display()
    ));
    let left = avail(&lab.data());
    assert!(left < 8 << 20, "{left} bytes still free");
    std::thread::sleep(Duration::from_millis(400));

    // The report cannot be kept: 503, Retry-After, and no record of it.
    let report = format!(
        r#"{{"token":"{t}","mac":"{mac}","report_id":"df-1","result":"remediated","reason":null,"volumes":[],"files":[],"rules_id":null,"rules_version":null,"agent_ms":1}}"#
    );
    let r = post("/agent/v1/report", &report);
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: "), "{r}");
    assert!(r.contains("the store cannot write: disk full"), "{r}");
    let h = crate::campaign::api_json(&lab, &admin, &format!("/api/v1/hosts/{mac}"));
    assert_eq!(h["host"]["state"], "agent-up", "{h}");
    assert!(h["host"]["last_report"].is_null(), "{h}");
    // A new machine in full mode gets no lease that could not be written.
    let (ok, env) = crate::dhcp_tftp::udhcpc(&lab, &other, "", "df-b");
    assert!(!ok, "no DHCP ACK while the lease cannot be written: {env}");
    // The console says so, with the free space, on every page; /metrics too.
    let jar = lab.dir.join("cookies");
    lab.exec(&format!(
        "curl -sk -c {} -d token={admin} https://{SERVER_IP}:8443/login -o /dev/null",
        jar.display()
    ));
    let page = |path: &str| {
        String::from_utf8_lossy(
            &lab.exec(&format!(
                "curl -sk -b {} https://{SERVER_IP}:8443{path}",
                jar.display()
            ))
            .stdout,
        )
        .to_string()
    };
    for path in ["/", "/campaigns", &format!("/hosts/{mac}")] {
        let html = page(path);
        assert!(
            html.contains("id=\"store-alert\"")
                && html.contains("the store cannot write: disk full (")
                && html.contains(" MiB free on "),
            "{path}: {html}"
        );
    }
    let metrics = String::from_utf8_lossy(
        &lab.exec(&format!(
            "curl -s -H 'Authorization: Bearer {admin}' http://{SERVER_IP}:8080/metrics"
        ))
        .stdout,
    )
    .to_string();
    assert!(metrics.contains("unbrick_store_writable 0"), "{metrics}");

    // Space is freed: the same report is taken, the second machine gets its lease, the console
    // is quiet again. No restart.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let r = post("/agent/v1/report", &report);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let (ok, env) = crate::dhcp_tftp::udhcpc(&lab, &other, "", "df-c");
    assert!(ok, "a lease once space is free: {env}");
    assert!(!page("/").contains("store-alert"));
    let h = crate::campaign::api_json(&lab, &admin, &format!("/api/v1/hosts/{mac}"));
    assert_eq!(h["host"]["state"], "remediated", "{h}");
    assert_eq!(h["host"]["last_report"]["report_id"], "df-1", "{h}");

    // Nothing is corrupted: the store opens cleanly and holds what was acknowledged.
    assert!(lab.stop_server().success(), "{}", lab.server_log());
    let h = lab.host_json(mac);
    assert_eq!(h["host"]["state"], "remediated", "{h}");
    assert!(
        lab.events(mac)
            .iter()
            .any(|e| e.contains("report: Remediated")),
        "{:?}",
        lab.events(mac)
    );
    lab.restart_server();
    let h = crate::campaign::api_json(&lab, &admin, &format!("/api/v1/hosts/{mac}"));
    assert_eq!(h["host"]["state"], "remediated", "{h}");
    assert!(
        lab.server_log().contains("disk full"),
        "the server said why it refused"
    );
}
