//! `unbrick demo`: the recovery on a machine without a real LAN. A network namespace with a
//! bridge and no uplink, `unbrick serve` inside it (full DHCP), N QEMU guests network-booting in
//! a loop with Windows-like NTFS disks holding the bad CrowdStrike channel file, and the console
//! forwarded to 127.0.0.1:8080 on the host. Ctrl-C stops everything by PID and deletes the
//! namespace.
use crate::config::DataDir;
use crate::Fail;
use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const NS: &str = "unbrick-demo";
const SERVER_IP: &str = "10.99.0.1";

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// How many boot-looping machines (odd: SeaBIOS + iPXE, even: OVMF with Secure Boot).
    #[arg(long, default_value_t = 4)]
    guests: u32,
    /// Where the demo keeps its data directory (kept between runs).
    #[arg(long, default_value = "/var/tmp/unbrick-demo")]
    data_dir: PathBuf,
    /// The unpacked Debian kernel for the recovery image (scripts/install-deps.sh puts one in
    /// target/kernel/root).
    #[arg(long)]
    kernel_dir: Option<PathBuf>,
    /// The static agent (default: the musl build next to this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Where the console is reachable on this machine.
    #[arg(long, default_value = "127.0.0.1:8080")]
    console: SocketAddr,
    /// QEMU accelerator (tcg works everywhere; kvm where /dev/kvm exists).
    #[arg(long, default_value = "tcg")]
    accel: String,
}

fn run_cmd(cmd: &mut Command) -> Result<(), Fail> {
    let out = cmd
        .output()
        .map_err(|e| Fail(format!("{:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Fail(format!(
            "{:?} {:?}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn sh(program: &str, args: &[&str]) -> Result<(), Fail> {
    run_cmd(Command::new(program).args(args))
}

/// Checks what the demo needs and says what to install.
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

/// A 256 MiB GPT disk with one NTFS volume laid out like Windows, written with ntfs-3g (no loop
/// devices). `bad`: also the 04:09 UTC channel file the rules quarantine.
fn make_disk(img: &Path, work: &Path, bad: bool) -> Result<(), Fail> {
    let part = work.join("part.ntfs");
    let mnt = work.join("mnt");
    let _ = std::fs::remove_file(img);
    std::fs::File::create(img)?.set_len(256 << 20)?;
    sh(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+64M",
            "-t",
            "1:0700",
            &img.to_string_lossy(),
        ],
    )?;
    let _ = std::fs::remove_file(&part);
    std::fs::File::create(&part)?.set_len(64 << 20)?;
    sh(
        "mkntfs",
        &[
            "-F",
            "-Q",
            "-q",
            "-s",
            "512",
            "-L",
            "WINDOWS",
            "-p",
            "2048",
            "-H",
            "255",
            "-S",
            "63",
            &part.to_string_lossy(),
        ],
    )?;
    std::fs::create_dir_all(&mnt)?;
    sh(
        "ntfs-3g",
        &[&part.to_string_lossy(), &mnt.to_string_lossy()],
    )?;
    let r = (|| -> Result<(), Fail> {
        let cs = mnt.join("Windows/System32/drivers/CrowdStrike");
        std::fs::create_dir_all(&cs)?;
        let mut files = vec![(
            "C-00000291-00000000-00000033.sys",
            "2024-07-19 05:27:00 UTC",
        )];
        if bad {
            files.push((
                "C-00000291-00000000-00000032.sys",
                "2024-07-19 04:09:00 UTC",
            ));
        }
        for (name, when) in files {
            let mut data = b"\xaa\xaa\xaa\xaa\x01\x00\x23\x01".to_vec();
            let mut noise = vec![0u8; 40_000];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut noise)?;
            data.extend_from_slice(&noise);
            std::fs::write(cs.join(name), &data)?;
            sh("touch", &["-d", when, &cs.join(name).to_string_lossy()])?;
        }
        std::fs::write(mnt.join("Windows/System32/ntoskrnl.exe"), b"MZ demo kernel")?;
        Ok(())
    })();
    sh("umount", &[&mnt.to_string_lossy()])?;
    r?;
    // Copy the volume into the partition at sector 2048.
    let vol = std::fs::read(&part)?;
    let mut f = std::fs::OpenOptions::new().write(true).open(img)?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(2048 * 512))?;
    f.write_all(&vol)?;
    f.sync_all()?;
    std::fs::remove_file(&part)?;
    Ok(())
}

fn guest(work: &Path, i: u32, accel: &str) -> Result<Child, Fail> {
    let name = format!("pc{i}");
    let mac = format!("52:54:00:de:00:{i:02x}");
    let img = work.join(format!("{name}.img"));
    // Every fourth machine is already fine (only the good file): it comes out "clean".
    make_disk(&img, work, !i.is_multiple_of(4))?;
    let tap = format!("t{name}");
    sh(
        "ip",
        &["-n", NS, "tuntap", "add", "dev", &tap, "mode", "tap"],
    )?;
    sh(
        "ip",
        &["-n", NS, "link", "set", &tap, "master", "br0", "up"],
    )?;
    let serial = work.join(format!("{name}.serial"));
    let mut args: Vec<String> = vec![
        "netns",
        "exec",
        NS,
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-boot",
        "n",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.push("-serial".into());
    args.push(format!("file:{}", serial.display()));
    args.push("-smbios".into());
    args.push(format!("type=1,serial=DEMO-{name}"));
    args.push("-netdev".into());
    args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    args.push("-drive".into());
    args.push(format!("file={},format=raw,if=none,id=d0", img.display()));
    args.push("-device".into());
    args.push("virtio-blk-pci,drive=d0".into());
    let fw = if i % 2 == 1 {
        args.push("-device".into());
        args.push(format!("virtio-net-pci,netdev=n0,mac={mac}"));
        "SeaBIOS + iPXE"
    } else {
        let vars = work.join(format!("{name}.vars.fd"));
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", &vars)?;
        for a in [
            "-machine".to_string(),
            "q35,smm=on".into(),
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
            "-drive".into(),
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
                .into(),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
        ] {
            args.push(a);
        }
        "OVMF with Secure Boot"
    };
    let child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Fail(format!("qemu: {e}")))?;
    println!(
        "demo: {name} ({fw}, {mac}) boot-loops into the network; serial console {}",
        serial.display()
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
    crate::image_build(
        &a.data_dir,
        None,
        Some(kernel_dir),
        a.agent.clone(),
        None,
        true,
    )?;
    let book = web_console::tokens::TokenBook::new(&d.tokens());
    let _ = book.revoke("demo-admin");
    let token = book
        .create("demo-admin", false, crate::now_unix())
        .map_err(Fail)?;

    let work = std::env::temp_dir().join(format!("unbrick-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    sh("ip", &["netns", "add", NS])?;
    let mut children: Vec<Child> = Vec::new();
    let result = (|| -> Result<(), Fail> {
        sh("ip", &["-n", NS, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &[
                "-n",
                NS,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                NS,
                "addr",
                "add",
                &format!("{SERVER_IP}/24"),
                "dev",
                "br0",
            ],
        )?;
        sh("ip", &["-n", NS, "link", "set", "br0", "up"])?;
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
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
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
