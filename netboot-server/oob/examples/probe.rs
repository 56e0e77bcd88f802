//! Runs one operation against one controller, for trying a BMC by hand:
//! `UNBRICK_BMC_SECRET=pw cargo run -p unbrick-oob --example probe -- ipmi 10.0.0.5 623 admin power-status`
use fleet::bmc::{ControllerKind, Op};
use unbrick_oob::drive::{run, Limits, Target};
use unbrick_oob::{Credentials, Machine, Trace};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 5 {
        eprintln!(
            "usage: probe KIND ADDRESS PORT USER OP [sha256:FP] (secret in UNBRICK_BMC_SECRET)"
        );
        std::process::exit(2);
    }
    let kind: ControllerKind = a[0].parse().expect("kind");
    let op = match a[4].as_str() {
        "power-status" => Op::Status,
        "netboot" => Op::NetbootOnce,
        "boot-disk" => Op::BootDisk,
        "power-cycle" => Op::PowerCycle,
        o => panic!("op {o}"),
    };
    let target = Target {
        kind,
        address: a[1].parse().expect("address"),
        port: a[2].parse().expect("port"),
        tls: a.get(5).is_some(),
        fingerprint: a.get(5).cloned(),
        ca_file: None,
    };
    let cred = Credentials {
        user: a[3].clone(),
        secret: zeroize::Zeroizing::new(std::env::var("UNBRICK_BMC_SECRET").unwrap_or_default()),
    };
    let mut t = Trace::default();
    let r = run(
        &target,
        &cred,
        &Machine {
            uefi: true,
            uuid: None,
        },
        op,
        &Limits::default(),
        &mut t,
    );
    for s in &t.0 {
        println!("  {s}");
    }
    match r {
        Ok(o) => println!("ok: {}", o.summary),
        Err(e) => {
            println!("failed: {e}");
            std::process::exit(1)
        }
    }
}
