//! `unbrick image build`: the recovery kernel and an initramfs written here (deterministic cpio
//! newc, gzip) holding the static agent as `/init`, the kernel modules it needs (resolved from
//! modules.dep, dependencies first, kept compressed) and the agent's configuration.
use crate::cpio::Archive;
use crate::Error;
use remediation_payload::modules;
use remediation_payload::modules::{parse_builtin, ModuleDep, BITLOCKER, HARDWARE, REQUIRED};
use std::path::{Path, PathBuf};

/// What an image build needs.
pub struct BuildInput<'a> {
    /// A directory holding `boot/vmlinuz-<version>` and `lib/modules/<version>/` (a Debian
    /// linux-image package unpacked with `dpkg-deb -x`).
    pub kernel_root: &'a Path,
    /// The static agent binary (becomes /init).
    pub agent: &'a Path,
    /// The key the agent trusts for the rules.
    pub public_key: &'a signing::PublicKey,
    /// The image's version.
    pub image_version: &'a str,
    /// `sha256:<hex>` of the server's TLS certificate, pinned by the agent.
    pub server_cert_sha256: Option<String>,
    /// The oldest rules version the agent runs.
    pub min_rules_version: u64,
    /// Ship BitLocker unlocking (cryptsetup, its libraries, dm-crypt): the default.
    pub bitlocker: bool,
    /// cryptsetup to ship (default: the build machine's, see [`CRYPTSETUP`]).
    pub cryptsetup: Option<&'a Path>,
}

/// A built image.
pub struct Built {
    /// The kernel's release.
    pub kernel_version: String,
    /// The kernel, as Debian signed it.
    pub vmlinuz: Vec<u8>,
    /// The compressed initramfs.
    pub initrd: Vec<u8>,
    /// The initramfs's size before compression.
    pub uncompressed: usize,
    /// The kernel modules put in.
    pub modules: Vec<String>,
    /// Hardware drivers asked for that the kernel package lacks.
    pub missing_hardware: Vec<String>,
}

/// Unpacks a linux-image .deb into `dest` with dpkg-deb.
pub fn unpack_deb(deb: &Path, dest: &Path) -> Result<(), Error> {
    let o = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .output()
        .map_err(|e| Error::Tool(format!("dpkg-deb: {e} (apt-get install dpkg)")))?;
    if !o.status.success() {
        return Err(Error::Tool(format!(
            "dpkg-deb -x {}: {}",
            deb.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(())
}

fn find_kernel(root: &Path) -> Result<(PathBuf, String), Error> {
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(|e| {
            Error::Kernel(format!(
                "{}: {e}: expected an unpacked Debian kernel package (boot/vmlinuz-*)",
                boot.display()
            ))
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => {
            let v = one
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string();
            Ok((one.clone(), v))
        }
        [] => Err(Error::Kernel(format!(
            "no kernel (boot/vmlinuz-*) in {}",
            root.display()
        ))),
        many => Err(Error::Kernel(format!(
            "{} kernels in {}; keep one",
            many.len(),
            boot.display()
        ))),
    }
}

/// Where `cryptsetup` is looked for on the build machine (Debian's `cryptsetup-bin`).
pub const CRYPTSETUP: &[&str] = &["/usr/sbin/cryptsetup", "/sbin/cryptsetup"];

/// The path of `cryptsetup` inside the image (the agent runs it to unlock BitLocker).
pub use remediation_payload::IMAGE_CRYPTSETUP;

/// The shared libraries `bin` needs, as absolute paths (the dynamic loader's answer, `ldd`),
/// the loader itself included.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, Error> {
    let o = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| Error::Tool(format!("ldd: {e} (apt-get install libc-bin)")))?;
    if !o.status.success() {
        return Err(Error::Tool(format!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.contains("not found") {
            return Err(Error::Tool(format!(
                "{}: a library is missing: {}",
                bin.display(),
                line.trim()
            )));
        }
        // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// cryptsetup and every library it loads, at the same paths in the image (symlinks followed:
/// each is a regular file there).
fn add_cryptsetup(a: &mut Archive, bin: &Path) -> Result<usize, Error> {
    let mut total = 0;
    let data = std::fs::read(bin).map_err(|e| Error::Input(format!("{}: {e}", bin.display())))?;
    total += data.len();
    a.file(IMAGE_CRYPTSETUP, data, 0o755);
    for lib in shared_libraries(bin)? {
        let data =
            std::fs::read(&lib).map_err(|e| Error::Input(format!("{}: {e}", lib.display())))?;
        total += data.len();
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        a.file(&rel, data, 0o755);
    }
    Ok(total)
}

/// zstd (the kernel unpacks zstd initramfs; smaller than gzip -9 by a fifth and faster to
/// unpack under emulation, measured: 3.4 s against 3.9 s to the first init) at level 18 on
/// every core: on the 39 MB cpio measured here (two cores) 14.4 s and 9.66 MB, against 26.5 s
/// and 9.61 MB for level 19 on one core (level 16: 5.9 s but 10.2 MB, over the 10 MB target).
/// zstd's output does not depend on the number of threads, so the build stays reproducible.
fn zstd(data: &[u8], report: &mut dyn FnMut(Progress<'_>)) -> Result<Vec<u8>, Error> {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new("zstd")
        .args(["-18", "-T0", "-q", "-c", "--no-progress"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("zstd: {e} (apt-get install zstd)")))?;
    // The output is read on a thread while this one feeds the input a MiB at a time and
    // reports how far it is (zstd's own progress line is off: it is not a terminal's).
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let errs = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        e
    });
    let mut stdin = child.stdin.take().expect("piped");
    let total = data.len() as u64;
    let mut fed = Ok(());
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        report(Progress::Count {
            done: (i as u64) << 20,
            total,
            bytes: true,
        });
        fed = stdin.write_all(chunk);
        if fed.is_err() {
            break;
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| Error::Tool(format!("zstd: {e}")))?;
    let out = reader
        .join()
        .map_err(|_| Error::Tool("zstd: reader panicked".into()))?
        .map_err(|e| Error::Tool(format!("zstd: {e}")))?;
    let errs = errs.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Tool(format!("zstd: {}", errs.trim())));
    }
    fed.map_err(|e| Error::Tool(format!("zstd: {e}")))?;
    report(Progress::Count {
        done: total,
        total,
        bytes: true,
    });
    Ok(out)
}

/// A module's bytes, decompressed when it is `.ko.xz` (the initramfs is compressed as a whole,
/// and in-kernel xz decompression is the slowest part of loading under emulation). `xz -d`
/// leaves the appended module signature intact, so Secure Boot lockdown still accepts it.
fn read_module(mdir: &Path, rel: &str) -> Result<(Vec<u8>, String), Error> {
    let path = mdir.join(rel);
    match rel.strip_suffix(".xz") {
        Some(plain) => {
            let o = std::process::Command::new("xz")
                .arg("-dc")
                .arg(&path)
                .output()
                .map_err(|e| Error::Tool(format!("xz: {e} (apt-get install xz-utils)")))?;
            if !o.status.success() {
                return Err(Error::Input(format!(
                    "xz -d {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
            Ok((o.stdout, plain.to_string()))
        }
        None => std::fs::read(&path)
            .map(|d| (d, rel.to_string()))
            .map_err(|e| Error::Input(e.to_string())),
    }
}

/// What a build reports as it goes: a stage begins, a remark, or how far a counted stage is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress<'a> {
    /// A stage begins ("[2/5] modules for ...").
    Stage(&'a str),
    /// A remark within the stage.
    Note(&'a str),
    /// `done` of `total` units (modules, bytes) of the current stage.
    Count {
        /// Done so far.
        done: u64,
        /// All of them.
        total: u64,
        /// The units are bytes (else items).
        bytes: bool,
    },
}

/// Builds the initramfs around the agent and the kernel's modules; `report` hears each step.
pub fn build(input: &BuildInput<'_>, report: &mut dyn FnMut(Progress<'_>)) -> Result<Built, Error> {
    report(Progress::Stage("[1/5] kernel"));
    let (kpath, kver) = find_kernel(input.kernel_root)?;
    let vmlinuz =
        std::fs::read(&kpath).map_err(|e| Error::Input(format!("{}: {e}", kpath.display())))?;
    let mdir = input.kernel_root.join("lib/modules").join(&kver);
    if !mdir.is_dir() {
        return Err(Error::Kernel(format!(
            "{}: no modules for kernel {kver}",
            mdir.display()
        )));
    }
    if !mdir.join("modules.dep").exists() {
        report(Progress::Note(
            "running depmod (the .deb ships no modules.dep)",
        ));
        let o = std::process::Command::new("depmod")
            .arg("-b")
            .arg(input.kernel_root)
            .arg(&kver)
            .output()
            .map_err(|e| Error::Tool(format!("depmod: {e} (apt-get install kmod)")))?;
        if !o.status.success() {
            return Err(Error::Input(format!(
                "depmod: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
    }
    report(Progress::Stage(&format!("[2/5] modules for {kver}")));
    let dep = ModuleDep::parse(
        &std::fs::read_to_string(mdir.join("modules.dep"))
            .map_err(|e| Error::Input(format!("modules.dep: {e}")))?,
    );
    let builtin =
        parse_builtin(&std::fs::read_to_string(mdir.join("modules.builtin")).unwrap_or_default());
    let required: Vec<&str> = REQUIRED
        .iter()
        .chain(if input.bitlocker { BITLOCKER } else { &[] })
        .copied()
        .collect();
    let (_, missing_required) = dep.resolve(&required, &builtin);
    if !missing_required.is_empty() {
        return Err(Error::Kernel(format!("kernel {kver} lacks modules the payload needs: {} (use Debian's 6.12 kernel from bookworm-backports; bookworm's 6.1 has no ntfs3)", missing_required.join(", "))));
    }
    let wanted: Vec<&str> = required.iter().chain(HARDWARE).copied().collect();
    let (order, missing_hardware) = dep.resolve(&wanted, &builtin);
    let mut mods = Vec::new();
    let mut deps = std::collections::BTreeMap::new();
    let mut a = Archive::new();
    for (i, m) in order.iter().enumerate() {
        report(Progress::Count {
            done: i as u64,
            total: order.len() as u64,
            bytes: false,
        });
        let rel = dep.path(m).expect("resolved modules have paths");
        let (data, rel) = read_module(&mdir, rel)
            .map_err(|e| Error::Input(format!("module {m} ({rel}): {e}")))?;
        let rel = rel.as_str();
        a.file(&format!("lib/modules/{kver}/{rel}"), data, 0o644);
        mods.push((m.clone(), rel.to_string()));
        deps.insert(m.clone(), dep.deps(m).to_vec());
    }
    let keep: std::collections::BTreeSet<String> = order.iter().cloned().collect();
    let aliases = modules::parse_alias(
        &std::fs::read_to_string(mdir.join("modules.alias")).unwrap_or_default(),
        &keep,
    );
    report(Progress::Note(&format!(
        "{} modules ({} hardware drivers not in this kernel: {})",
        order.len(),
        missing_hardware.len(),
        if missing_hardware.is_empty() {
            "none".into()
        } else {
            missing_hardware.join(" ")
        }
    )));
    report(Progress::Stage("[3/5] agent"));
    let agent = std::fs::read(input.agent).map_err(|e| Error::Input(format!("{}: {e} (build it: cargo build --profile agent --target x86_64-unknown-linux-musl -p remediation-payload --bin unbrick-agent)", input.agent.display())))?;
    if agent.get(..4) != Some(b"\x7fELF") {
        return Err(Error::Input(format!(
            "{} is not an ELF binary",
            input.agent.display()
        )));
    }
    a.file("init", agent, 0o755);
    let cfg = remediation_payload::AgentConfig {
        signing_public_key: hex::encode(input.public_key.as_bytes()),
        image_version: input.image_version.into(),
        kernel_version: kver.clone(),
        modules: mods,
        deps,
        aliases,
        always: modules::ALWAYS
            .iter()
            .chain(if input.bitlocker { BITLOCKER } else { &[] })
            .map(|s| s.to_string())
            .collect(),
        server_cert_sha256: input.server_cert_sha256.clone(),
        min_rules_version: input.min_rules_version,
    };
    a.file(
        remediation_payload::AGENT_CONFIG_PATH,
        serde_json::to_vec_pretty(&cfg).expect("config serializes"),
        0o644,
    );
    if input.bitlocker {
        report(Progress::Note(
            "cryptsetup with its libraries (BitLocker unlock)",
        ));
        let cs = input
            .cryptsetup
            .map(Path::to_path_buf)
            .or_else(|| CRYPTSETUP.iter().map(PathBuf::from).find(|p| p.exists()))
            .ok_or_else(|| Error::Input("cryptsetup is not installed on this machine; the image needs it to unlock BitLocker (apt-get install cryptsetup-bin, or build with --no-bitlocker)".into()))?;
        let cs_bytes = add_cryptsetup(&mut a, &cs)?;
        report(Progress::Note(&format!(
            "{} and its libraries: {:.1} MB",
            cs.display(),
            cs_bytes as f64 / 1e6
        )));
    } else {
        report(Progress::Note("without BitLocker unlocking (--no-bitlocker): encrypted volumes are reported, not opened"));
    }
    a.char_dev("dev/console", 5, 1);
    for d in [
        "proc", "sys", "run", "tmp", "mnt", "usr", "usr/sbin", "lib", "lib64",
    ] {
        a.dir(d);
    }
    report(Progress::Stage("[4/5] initramfs (cpio newc, zstd -18)"));
    let raw = a.to_bytes();
    let initrd = zstd(&raw, report)?;
    report(Progress::Stage(&format!("[5/5] done: vmlinuz {:.1} MB, initrd {:.1} MB compressed ({:.1} MB uncompressed, {} entries)", vmlinuz.len() as f64 / 1e6, initrd.len() as f64 / 1e6, raw.len() as f64 / 1e6, a.len())));
    Ok(Built {
        kernel_version: kver,
        vmlinuz,
        initrd,
        uncompressed: raw.len(),
        modules: cfg.modules.iter().map(|(_, p)| p.clone()).collect(),
        missing_hardware,
    })
}
