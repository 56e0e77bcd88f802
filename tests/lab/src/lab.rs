//! A throw-away network lab: a server namespace with a bridge (10.99.0.1/24, no uplink), client
//! namespaces attached by veth, and `unbrick serve` running inside. Everything is removed by
//! PID and namespace name on drop.
use crate::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server's address on the lab's bridge.
pub const SERVER_IP: &str = "10.99.0.1";
static SEQ: AtomicU32 = AtomicU32::new(0);
static QEMU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// QEMU tests take turns: firmware PXE timers give up when eight TCG guests share two cores.
/// How long a test waited for its turn and held it goes to the timing log ([`note_time`]).
pub fn qemu_turn() -> Turn {
    take(&QEMU, "QEMU")
}

fn take(m: &'static std::sync::Mutex<()>, what: &'static str) -> Turn {
    let asked = Instant::now();
    let guard = m.lock().unwrap_or_else(|e| e.into_inner());
    note_time(&format!("waited for the {what} turn"), asked.elapsed());
    Turn {
        _guard: guard,
        what,
        since: Instant::now(),
    }
}

/// A test's turn; the turn passes on when it is dropped.
pub struct Turn {
    _guard: std::sync::MutexGuard<'static, ()>,
    what: &'static str,
    since: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        note_time(
            &format!("held the {} turn", self.what),
            self.since.elapsed(),
        );
    }
}

/// Appends "test, what, seconds" to the file named by `UNBRICK_TEST_TIMES` (the test command
/// prints it as a table after the tests: where the wall time of a run goes). Written to the
/// file directly, so it is kept for passing tests whose output the harness swallows.
pub fn note_time(what: &str, took: Duration) {
    use std::io::Write;
    let Some(path) = std::env::var_os("UNBRICK_TEST_TIMES") else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_string();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{test}\t{what}\t{:.1}", took.as_secs_f64());
    }
}

/// Runs a shell command; its output, whatever the status.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

/// Runs a command; its standard output, or an error naming the command and its output.
pub fn run(cmd: &str) -> Result<String, Error> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| Error::Io(format!("{cmd}: {e}")))?;
    if !o.status.success() {
        return Err(Error::Command {
            cmd: cmd.to_string(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs a command and panics with its output when it fails (tests).
pub fn must(cmd: &str) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// A namespace `ns` with loopback up and bridge `br0` at [`SERVER_IP`]/24: no uplink, nothing
/// of the machine's own interfaces in it. Any namespace of that name is replaced.
pub fn bridge_namespace(ns: &str) -> Result<(), Error> {
    let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
    run(&format!("ip netns add {ns}"))?;
    run(&format!("ip -n {ns} link set lo up"))?;
    // A fixed address: a bridge without one takes the lowest MAC of its ports, so adding a
    // client later could change the server's MAC under its peers' ARP caches (their next
    // connections then time out until the entry ages).
    run(&format!(
        "ip -n {ns} link add br0 address 02:75:62:00:00:01 type bridge stp_state 0 forward_delay 0"
    ))?;
    run(&format!("ip -n {ns} addr add {SERVER_IP}/24 dev br0"))?;
    run(&format!("ip -n {ns} link set br0 up")).map(drop)
}

/// A tap device `name` on `ns`'s bridge, for a QEMU guest.
pub fn add_tap(ns: &str, name: &str) -> Result<(), Error> {
    run(&format!("ip -n {ns} tuntap add dev {name} mode tap"))?;
    run(&format!("ip -n {ns} link set {name} master br0 up")).map(drop)
}

/// Kills every process left in `ns` by PID, then deletes the namespace.
pub fn remove_namespace(ns: &str) {
    let pids = sh(&format!("ip netns pids {ns}"));
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = sh(&format!("kill -KILL {pid}"));
    }
    let _ = sh(&format!("ip netns del {ns}"));
}

/// The `unbrick` binary the lab runs: `UNBRICK_BIN`, else this program itself when it is
/// `unbrick` (the demo), else the `unbrick` beside cargo's `deps/` folder (a test binary).
pub fn unbrick() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("UNBRICK_BIN") {
            return p;
        }
        let exe = std::env::current_exe().expect("current executable");
        if exe.file_name().is_some_and(|n| n == "unbrick") {
            return exe.to_string_lossy().into_owned();
        }
        let dir = exe.parent().expect("a folder");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("target profile folder")
        } else {
            dir
        };
        dir.join("unbrick").to_string_lossy().into_owned()
    })
}

/// Panics unless root (namespaces need it).
pub fn require_root() {
    let uid = must("id -u");
    assert_eq!(uid.trim(), "0", "the black-box tests create network namespaces and need root (run the README's test command as root)");
}

/// A lab: a server namespace with a bridge, client namespaces, `unbrick serve` inside.
pub struct Lab {
    /// The server namespace.
    pub ns: String,
    /// Client namespaces.
    pub clients: Vec<String>,
    /// The lab's folder (data directory, logs, disks).
    pub dir: PathBuf,
    server: Option<Child>,
    /// The server's log.
    pub log: PathBuf,
    extra_children: Vec<Child>,
    /// How the server was last started (prefix, arguments), for [`Self::restart_server`].
    serve_cmd: Option<(Vec<String>, String)>,
    /// When it was made (its lifetime goes to the timing log).
    made: Instant,
}

impl Lab {
    /// A server namespace `ub<tag><n>-<pid>` with bridge br0 at 10.99.0.1/24 and a data dir.
    pub fn new(tag: &str) -> Self {
        require_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let ns = format!("ub{tag}{n}-{}", std::process::id());
        bridge_namespace(&ns).unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("unbrick-lab-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        Self {
            ns,
            clients: Vec::new(),
            dir,
            server: None,
            log,
            extra_children: Vec::new(),
            serve_cmd: None,
            made: Instant::now(),
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `unbrick init` into the lab's data dir.
    pub fn init(&self) {
        must(&format!(
            "{} init --data-dir {}",
            unbrick(),
            self.data().display()
        ));
    }

    /// A stand-in kernel and initrd of `len` bytes each, signed into the lab's image, so that boot
    /// scripts hand out the payload (and a per-boot token) without a real kernel.
    pub fn stand_in_image(&self, len: usize) {
        let img = self.data().join("image");
        std::fs::write(img.join("vmlinuz"), vec![7u8; len]).unwrap();
        std::fs::write(img.join("initrd.img"), vec![9u8; len]).unwrap();
        must(&format!(
            "{} image sign {} --key {}",
            unbrick(),
            img.display(),
            self.data().join("keys/signing.key").display()
        ));
    }

    /// A client namespace joined to the bridge by a veth pair; returns (namespace, interface).
    pub fn add_client(&mut self, mac: &str) -> (String, String) {
        let i = self.clients.len();
        let cns = format!("{}c{i}", self.ns);
        let _ = sh(&format!("ip netns del {cns} 2>/dev/null"));
        must(&format!("ip netns add {cns}"));
        must(&format!("ip -n {cns} link set lo up"));
        must(&format!(
            "ip -n {} link add h{i} type veth peer name eth0 netns {cns}",
            self.ns
        ));
        must(&format!("ip -n {} link set h{i} master br0 up", self.ns));
        must(&format!("ip -n {cns} link set eth0 address {mac} up"));
        self.clients.push(cns.clone());
        (cns, "eth0".into())
    }

    /// A namespace joined to the server's namespace by its own veth pair, not to the bridge (an
    /// interface the server does not serve): `addr` on the server's side, `peer` on the
    /// namespace's `eth0`. Removed with the lab.
    pub fn add_side_link(&mut self, addr: &str, peer: &str) -> String {
        let i = self.clients.len();
        let ns = format!("{}s{i}", self.ns);
        let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        must(&format!("ip netns add {ns}"));
        must(&format!("ip -n {ns} link set lo up"));
        must(&format!(
            "ip -n {} link add side{i} type veth peer name eth0 netns {ns}",
            self.ns
        ));
        must(&format!("ip -n {} addr add {addr} dev side{i}", self.ns));
        must(&format!("ip -n {} link set side{i} up", self.ns));
        must(&format!("ip -n {ns} addr add {peer} dev eth0"));
        must(&format!("ip -n {ns} link set eth0 up"));
        self.clients.push(ns.clone());
        ns
    }

    /// A tap device on the bridge for a QEMU guest.
    pub fn add_tap(&self, name: &str) {
        add_tap(&self.ns, name).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts `unbrick serve` inside the namespace and waits until HTTP answers.
    pub fn serve(&mut self, args: &str) {
        self.serve_as(&[], args)
    }

    /// [`Self::serve`] under a command that execs it (`prlimit ... setpriv ... --`): the
    /// server keeps the child's PID.
    pub fn serve_as(&mut self, prefix: &[&str], args: &str) {
        // A restart appends to the log of the runs before it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(self.serve_cmd.is_some())
            .write(true)
            .truncate(self.serve_cmd.is_none())
            .open(&self.log)
            .unwrap();
        self.serve_cmd = Some((
            prefix.iter().map(|p| p.to_string()).collect(),
            args.to_string(),
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(prefix)
            .args([unbrick(), "serve", "--data-dir"])
            .arg(self.data())
            .args(["--interface", "br0"])
            .args(args.split_whitespace())
            .env(
                "UNBRICK_LOG",
                "info,netboot_server=debug,fleet_service=debug",
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unbrick serve");
        self.server = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.exec_ok(&format!("curl -sf -m 1 http://{SERVER_IP}:8080/healthz")) {
                return;
            }
            if let Some(Ok(Some(st))) = self.server.as_mut().map(|c| c.try_wait()) {
                panic!("unbrick serve exited with {st}:\n{}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("unbrick serve did not come up:\n{}", self.server_log());
    }

    /// Starts a helper process (kept until the lab is dropped).
    pub fn spawn(&mut self, ns: &str, cmd: &str, log: &Path) {
        let f = std::fs::File::create(log).unwrap();
        let c = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.extra_children.push(c);
    }

    /// The running server's PID (`ip netns exec` execs it, so it is the child's).
    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().expect("server running").id()
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command in the server namespace.
    pub fn exec(&self, cmd: &str) -> Output {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.ns,
            cmd.replace('\'', r"'\''")
        ))
    }

    /// Whether a command in the server namespace succeeds.
    pub fn exec_ok(&self, cmd: &str) -> bool {
        self.exec(cmd).status.success()
    }

    /// Runs a command in namespace `ns`.
    pub fn exec_in(&self, ns: &str, cmd: &str) -> Output {
        sh(&format!(
            "ip netns exec {ns} sh -c '{}'",
            cmd.replace('\'', r"'\''")
        ))
    }

    /// Kills the server with SIGKILL (by its PID: a power cut, as far as the store can tell) and
    /// reaps it.
    pub fn kill_server(&mut self) {
        let mut c = self.server.take().expect("server running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the server again as it was last started (a restart by systemd), waiting until it
    /// answers; its output goes on in the same log.
    pub fn restart_server(&mut self) {
        let (prefix, args) = self
            .serve_cmd
            .clone()
            .expect("the server was started before");
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        self.serve_as(&prefix, &args);
    }

    /// Stops the server with SIGTERM (graceful: transfers finish, store flushed) and waits.
    pub fn stop_server(&mut self) -> std::process::ExitStatus {
        let mut c = self.server.take().expect("server running");
        let _ = sh(&format!("kill -TERM {}", c.id()));
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!(
                    "unbrick serve did not stop within 20 s of SIGTERM:\n{}",
                    self.server_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `unbrick hosts show MAC --json` (the server must be stopped: sled holds a lock).
    pub fn host_json(&self, mac: &str) -> serde_json::Value {
        let out = must(&format!(
            "{} hosts show {mac} --json --data-dir {}",
            unbrick(),
            self.data().display()
        ));
        serde_json::from_str(&out).unwrap()
    }

    /// A host's history as "kind message" lines (the server must be stopped).
    pub fn events(&self, mac: &str) -> Vec<String> {
        let v = self.host_json(mac);
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["kind"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Waits up to `timeout` for `needle` in the server's log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.server_log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.extra_children.iter_mut() {
            let _ = sh(&format!("kill -TERM {} 2>/dev/null", c.id()));
            let _ = c.wait();
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &self.clients {
            // Processes left in a client namespace (dhclient daemons) are killed by PID.
            remove_namespace(c);
        }
        remove_namespace(&self.ns);
        note_time(&format!("lab {}", self.ns), self.made.elapsed());
        if std::env::var_os("UNBRICK_KEEP_LABS").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// UDP payloads of the packets in a pcap file (Ethernet, IPv4, UDP), with their UDP source port.
pub fn pcap_udp_payloads(path: &Path) -> Vec<(u16, Vec<u8>)> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let mut i = 24;
    while i + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[i + 8..i + 12].try_into().unwrap()) as usize;
        let pkt = &data[i + 16..(i + 16 + incl).min(data.len())];
        i += 16 + incl;
        if pkt.len() < 14 + 20 + 8 || pkt[12..14] != [0x08, 0x00] || pkt[23] != 17 {
            continue;
        }
        let ihl = (pkt[14] & 0x0f) as usize * 4;
        let udp = &pkt[14 + ihl..];
        if udp.len() < 8 {
            continue;
        }
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        out.push((sport, udp[8..].to_vec()));
    }
    out
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let d = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    hex(ring::digest::digest(&ring::digest::SHA256, &d).as_ref())
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
