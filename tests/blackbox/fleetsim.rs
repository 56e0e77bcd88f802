//! The campaign at scale without VMs: `unbrick-fleetsim` runs 2,000 simulated machines in a client
//! namespace against the server (full DHCP on a /16), speaking real DHCP, TFTP, HTTP and the
//! agent API over HTTPS: a campaign of 4 waves with a 200-host concurrency limit. It prints the
//! timeline and the server's peak RSS, and fails if a host got the payload outside its wave, the
//! limit was exceeded, or a host was lost.
use crate::lab::*;

fn sim_binary() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = env!("CARGO_MANIFEST_DIR");
    must(&format!(
        "cd {dir} && {cargo} build -q --release -p unbrick-testtools --bin unbrick-fleetsim"
    ));
    format!("{dir}/target/release/unbrick-fleetsim")
}

/// Linux keeps at most `gc_thresh3` (default 1024) ARP entries for all namespaces together; the
/// server needs one per machine it answers, so 2,000 machines overflow it ("neighbor table
/// overflow": replies dropped). A real deployment of that size needs the same (README). Raised
/// for the test and put back afterwards.
/// The limits are global and two simulations may run at once: the first raises them, the last
/// to finish puts the old values back.
struct NeighTable;

static RAISED: std::sync::Mutex<(usize, Option<[String; 3]>)> = std::sync::Mutex::new((0, None));

impl NeighTable {
    fn raise() -> Self {
        let mut g = RAISED.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == 0 {
            let f = |i: usize| format!("/proc/sys/net/ipv4/neigh/default/gc_thresh{i}");
            let old = [1, 2, 3].map(|i| std::fs::read_to_string(f(i)).unwrap().trim().to_string());
            for (i, v) in [(1, "4096"), (2, "8192"), (3, "16384")] {
                if old[i - 1].parse::<u64>().unwrap_or(0) < v.parse::<u64>().unwrap() {
                    std::fs::write(f(i), v).unwrap();
                }
            }
            g.1 = Some(old);
        }
        g.0 += 1;
        Self
    }
}

impl Drop for NeighTable {
    fn drop(&mut self) {
        let mut g = RAISED.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 {
            if let Some(old) = g.1.take() {
                for i in [3, 2, 1] {
                    let _ = std::fs::write(
                        format!("/proc/sys/net/ipv4/neigh/default/gc_thresh{i}"),
                        &old[i - 1],
                    );
                }
            }
        }
    }
}

#[test]
fn two_thousand_simulated_hosts_in_four_waves() {
    simulate(None);
}

/// The same fleet behind simulated Redfish controllers (the Python stand-in, one system per
/// address): the campaign triggers each wave out of band, 200 at a time, and no machine boots
/// before its controller was told to.
#[test]
fn two_thousand_hosts_network_booted_through_their_controllers() {
    simulate(Some(format!(
        "{}/tests/blackbox/helpers/redfish_standin.py",
        env!("CARGO_MANIFEST_DIR")
    )));
}

fn simulate(oob: Option<String>) {
    let sim = sim_binary();
    let _neigh = NeighTable::raise();
    let mut lab = Lab::new("fs");
    lab.init();
    // A /16, so the pool holds 2,000 machines.
    must(&format!("ip -n {} addr flush dev br0", lab.ns));
    must(&format!("ip -n {} addr add {SERVER_IP}/16 dev br0", lab.ns));
    lab.stand_in_image(256 * 1024);
    let init = must(&format!(
        "{} init --data-dir {}",
        unbrick(),
        lab.data().display()
    ));
    let fp = init
        .lines()
        .find(|l| l.contains("cert.pem"))
        .and_then(|l| l.split('(').nth(1))
        .map(|s| s.trim_end_matches(')').to_string())
        .expect("certificate fingerprint in init's output");
    lab.serve("--dhcp full --pool 10.99.1.0-10.99.12.255 --lease-secs 7200");
    let tok = must(&format!(
        "{} tokens create --name fleetsim --data-dir {}",
        unbrick(),
        lab.data().display()
    ))
    .trim()
    .to_string();
    let (cns, ifc) = lab.add_client("52:54:0f:ff:ff:ff");
    // The simulator's own address (for the admin API); each machine adds its lease.
    must(&format!("ip -n {cns} addr add 10.99.0.2/16 dev {ifc}"));
    let env = oob
        .map(|p| format!("FLEETSIM_OOB={p} "))
        .unwrap_or_default();
    let o = lab.exec_in(
        &cns,
        &format!(
            "{env}{sim} {ifc} {tok} {fp} 2000 5%,25%,50%,100% 200 5 {} 2>&1",
            lab.server_pid()
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(
        o.status.success()
            && out.contains("OK: no host outside its wave")
            && (env.is_empty() || out.contains("out of band: 2000 of 2000 machines reset")),
        "fleet simulation failed:\n{out}\n{}",
        lab.server_log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
