//! `unbrick demo`: the recovery on a machine without a real LAN. A network namespace with a
//! bridge and no uplink, `unbrick serve` inside it (full DHCP), N QEMU guests network-booting in
//! a loop with Windows-like NTFS disks holding the bad CrowdStrike channel file, and the console
//! forwarded to 127.0.0.1:8080 on the host. Ctrl-C stops everything by PID and deletes the
//! namespace.
use crate::cli::DemoArgs;
use crate::config::DataDir;
use crate::Fail;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const NS: &str = "unbrick-demo";
use unbrick_lab::lab::SERVER_IP;

fn prerequisites(accel: &str) -> Result<(), Fail> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(Fail(
            "the demo needs root (network namespace, bridge, tap devices): run it with sudo".into(),
        ));
    }
    let mut missing = Vec::new();
    for (what, package) in [
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("sgdisk", "gdisk"),
        ("mkntfs", "ntfs-3g"),
        ("ntfs-3g", "ntfs-3g"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(what).exists()))
            .unwrap_or(false);
        if !found {
            missing.push(package);
        }
    }
    for (file, package) in [
        ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"),
        ("/usr/share/seabios/bios-256k.bin", "seabios"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
        (
            "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
            "grub-efi-amd64-signed",
        ),
    ] {
        if !Path::new(file).exists() {
            missing.push(package);
        }
    }
    missing.dedup();
    if !missing.is_empty() {
        return Err(Fail(format!(
            "the demo needs: apt-get install {} (or run scripts/install-deps.sh, which also fetches the kernel)",
            missing.join(" ")
        )));
    }
    if accel == "kvm" && !Path::new("/dev/kvm").exists() {
        return Err(Fail(
            "--accel kvm but there is no /dev/kvm; use --accel tcg".into(),
        ));
    }
    Ok(())
}

/// A request to connect to an address, and where to send the connection.
type ConnectRequest = (SocketAddr, mpsc::Sender<std::io::Result<TcpStream>>);

/// Opens TCP connections from inside the namespace: a thread that entered it once.
fn ns_connector() -> Result<mpsc::Sender<ConnectRequest>, Fail> {
    let f = std::fs::File::open(format!("/run/netns/{NS}"))
        .map_err(|e| Fail(format!("/run/netns/{NS}: {e}")))?;
    let (tx, rx) = mpsc::channel::<ConnectRequest>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = ready_tx.send(r.map_err(|e| e.to_string()));
        for (addr, reply) in rx {
            let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        }
    });
    ready_rx
        .recv()
        .map_err(|e| Fail(e.to_string()))?
        .map_err(|e| Fail(format!("entering namespace {NS}: {e}")))?;
    Ok(tx)
}

/// Forwards `listen` on the host to SERVER_IP:8080 inside the namespace.
fn forward_console(listen: SocketAddr) -> Result<(), Fail> {
    let connector = ns_connector()?;
    let l = TcpListener::bind(listen).map_err(|e| {
        Fail(format!(
            "cannot listen on {listen} for the console: {e} (pass --console 127.0.0.1:PORT)"
        ))
    })?;
    let target: SocketAddr = format!("{SERVER_IP}:8080").parse().unwrap();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let (rtx, rrx) = mpsc::channel();
            if connector.send((target, rtx)).is_err() {
                break;
            }
            let Ok(Ok(server)) = rrx.recv() else { continue };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(())
}

/// A GPT disk laid out like Windows (ESP, MSR, one NTFS volume), written with ntfs-3g (no loop
/// devices) by the lab's disk maker. `bad`: also the 04:09 UTC channel file the rules
/// quarantine.
fn make_disk(work: &Path, name: &str, bad: bool) -> Result<PathBuf, Fail> {
    use unbrick_lab::disks::{channel_file, try_make_disk, File, Table, Volume};
    let cs = "Windows/System32/drivers/CrowdStrike";
    let mut files = vec![
        File {
            path: format!("{cs}/C-00000291-00000000-00000033.sys"),
            data: channel_file(0x33, 40_000),
            mtime: "2024-07-19 05:27:00 UTC".into(),
        },
        File {
            path: "Windows/System32/ntoskrnl.exe".into(),
            data: b"MZ demo kernel".to_vec(),
            mtime: "2024-07-01 00:00:00 UTC".into(),
        },
    ];
    if bad {
        files.push(File {
            path: format!("{cs}/C-00000291-00000000-00000032.sys"),
            data: channel_file(0x32, 40_000),
            mtime: "2024-07-19 04:09:00 UTC".into(),
        });
    }
    let vols = [Volume {
        label: "WINDOWS".into(),
        files,
        dirty: false,
    }];
    Ok(try_make_disk(work, name, Table::Gpt, &vols)?.path)
}

fn guest(work: &Path, i: u32, accel: &str) -> Result<Child, Fail> {
    use unbrick_lab::qemu::{Bus, Firmware, GuestSpec};
    let name = format!("pc{i}");
    // Every fourth machine is already fine (only the good file): it comes out "clean".
    let img = make_disk(work, &name, !i.is_multiple_of(4))?;
    let spec = GuestSpec {
        mac: format!("52:54:00:de:00:{i:02x}"),
        fw: if i % 2 == 1 {
            Firmware::Bios
        } else {
            Firmware::UefiSb
        },
        disk: Some((img, Bus::Virtio)),
        accel: accel.into(),
        smbios_serial: format!("DEMO-{name}"),
        dir: work.to_path_buf(),
        name,
    };
    unbrick_lab::lab::add_tap(NS, &spec.tap())?;
    let child = spec.spawn(NS, &work.join(format!("{}.qemu.log", spec.name)))?;
    println!(
        "demo: {} ({}, {}) boot-loops into the network; serial console {}",
        spec.name,
        spec.fw.label(),
        spec.mac,
        spec.serial().display()
    );
    Ok(child)
}

fn stop(children: &mut [Child]) {
    for c in children.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for _ in 0..50 {
        if children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub(crate) fn run(a: DemoArgs) -> Result<(), Fail> {
    prerequisites(&a.accel)?;
    let exe = std::env::current_exe()?;
    let d = DataDir(a.data_dir.clone());
    let kernel_dir = a
        .kernel_dir
        .clone()
        .or_else(|| {
            let p = PathBuf::from("target/kernel/root");
            p.exists().then_some(p)
        })
        .ok_or_else(|| Fail("no recovery kernel: pass --kernel-dir (scripts/install-deps.sh unpacks Debian's into target/kernel/root)".into()))?;
    // Every demo starts with a fresh fleet: the machines' disks are new, so a host remembered as
    // remediated from an earlier run must not be sent to its local disk. Keys, certificate and
    // image stay.
    if d.store().exists() {
        std::fs::remove_dir_all(d.store())
            .map_err(|e| Fail(format!("{}: {e}", d.store().display())))?;
    }
    crate::init::run(&a.data_dir, None).map_err(Fail)?;
    crate::commands::image_build(
        &a.data_dir,
        None,
        Some(kernel_dir),
        a.agent.clone(),
        None,
        true,
    )?;
    let book = web_console::tokens::TokenBook::new(&d.tokens());
    let _ = book.revoke("demo-admin");
    let token = book.create("demo-admin", false, crate::now_unix())?;

    let work = std::env::temp_dir().join(format!("unbrick-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    unbrick_lab::lab::bridge_namespace(NS)?;
    let mut children: Vec<Child> = Vec::new();
    let result = (|| -> Result<(), Fail> {
        let server = Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(&exe)
            .args(["serve", "--data-dir"])
            .arg(&a.data_dir)
            .args([
                "--interface",
                "br0",
                "--dhcp",
                "full",
                "--pool",
                "10.99.0.100-10.99.0.199",
                "--kernel-cmdline",
                "unbrick.poweroff",
            ])
            .env(
                "UNBRICK_LOG",
                std::env::var("UNBRICK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Fail(format!("unbrick serve: {e}")))?;
        children.push(server);
        forward_console(a.console)?;
        // Wait for the console to answer through the forwarder.
        let mut up = false;
        for _ in 0..100 {
            if let Ok(r) = unbrick_http::request(
                "GET",
                &format!("http://{}/healthz", a.console),
                None,
                Duration::from_secs(1),
            ) {
                if r.status == 200 {
                    up = true;
                    break;
                }
            }
            if let Ok(Some(st)) = children[0].try_wait() {
                return Err(Fail(format!(
                    "unbrick serve exited ({st}) before it was up; see its log above"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !up {
            return Err(Fail("the server did not come up within 20 s".into()));
        }
        println!();
        println!("  console:  http://{}/", a.console);
        println!("  token:    {token}");
        println!("  (log in with the token; it is also valid for the API: curl -H 'Authorization: Bearer {token}' http://{}/api/v1/summary)", a.console);
        println!();
        for i in 1..=a.guests {
            children.push(guest(&work, i, &a.accel)?);
            std::thread::sleep(Duration::from_secs(3));
        }
        println!("demo: {} machines are boot-looping; watch them recover in the console. Ctrl-C stops everything.", a.guests);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let console = a.console;
        let token2 = token.clone();
        rt.block_on(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut last = String::new();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = tick.tick() => {
                        let t = token2.clone();
                        let line = tokio::task::spawn_blocking(move || summary_line(console, &t)).await.unwrap_or_default();
                        if !line.is_empty() && line != last {
                            println!("demo: {line}");
                            last = line;
                        }
                    }
                }
            }
            Ok::<_, Fail>(())
        })
    })();
    println!(
        "\ndemo: stopping {} processes by PID and deleting namespace {NS}",
        children.len()
    );
    stop(&mut children);
    unbrick_lab::lab::remove_namespace(NS);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn summary_line(console: SocketAddr, token: &str) -> String {
    let opts = unbrick_http::Options {
        headers: vec![("Authorization", format!("Bearer {token}"))],
        ..Default::default()
    };
    let Ok(r) = unbrick_http::request_with(
        "GET",
        &format!("http://{console}/api/v1/summary"),
        None,
        Duration::from_secs(3),
        &opts,
    ) else {
        return String::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let counts: Vec<String> = v["by_state"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(s, n)| format!("{s} {n}"))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} of {} done; {}",
        v["done"],
        v["total"],
        counts.join(", ")
    )
}
