//! Kernel module selection: resolve the modules the agent needs, with their dependencies, from
//! `modules.dep`, in load order (dependencies first).
use std::collections::{BTreeMap, BTreeSet};

/// Modules the payload cannot work without (QEMU's and the commonest real hardware's NIC and
/// storage, and NTFS). A missing one is an error.
pub const REQUIRED: &[&str] = &[
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "ahci",
    "sd_mod",
    "nvme",
    "ntfs3",
    "efivarfs",
];

/// BitLocker unlock (cryptsetup's BITLK): device-mapper, dm-crypt, dm-zero for the metadata
/// areas, and XTS (Windows 10+ default; CBC and the elephant diffuser are built into the kernel
/// and dm-crypt). Required, and always loaded, unless the image is built without BitLocker.
pub const BITLOCKER: &[&str] = &["dm_mod", "dm_crypt", "dm_zero", "xts"];

/// Real-hardware drivers; missing ones are reported but not fatal.
pub const HARDWARE: &[&str] = &[
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "r8169",
    "mlx5_core",
    "hv_netvsc",
    "vmxnet3",
    "atlantic",
    "vmd",
    "megaraid_sas",
    "mpt3sas",
    "smartpqi",
    "hpsa",
    "vmw_pvscsi",
    "hv_storvsc",
    "uas",
    "usb_storage",
    "xhci_pci",
    "xhci_hcd",
    // AES instructions for dm-crypt, loaded by CPU alias where the processor has them.
    "aesni_intel",
];

/// Module name as the kernel sees it: file stem, `-` and `_` equivalent.
pub fn canonical(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Parsed `modules.dep`: name -> (relative path, direct dependencies' names).
#[derive(Debug, Default)]
pub struct ModuleDep {
    /// Each module: its path and direct dependencies.
    pub modules: BTreeMap<String, (String, Vec<String>)>,
}

impl ModuleDep {
    /// Parses `modules.dep`.
    pub fn parse(text: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(canonical).collect();
            modules.insert(canonical(path), (path.trim().to_string(), deps));
        }
        Self { modules }
    }

    /// The closure of `wanted` in load order (dependencies before dependants). Names that are
    /// neither in modules.dep nor in `builtin` are returned as missing.
    pub fn resolve(
        &self,
        wanted: &[&str],
        builtin: &BTreeSet<String>,
    ) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        fn visit(m: &ModuleDep, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
            if !seen.insert(name.to_string()) {
                return;
            }
            if let Some((_, deps)) = m.modules.get(name) {
                for d in deps {
                    visit(m, d, seen, order);
                }
                order.push(name.to_string());
            }
        }
        for w in wanted {
            let c = canonical(w);
            if self.modules.contains_key(&c) {
                visit(self, &c, &mut seen, &mut order);
            } else if !builtin.contains(&c) {
                missing.push(c);
            }
        }
        (order, missing)
    }

    /// A module's direct dependencies.
    pub fn deps(&self, name: &str) -> &[String] {
        self.modules
            .get(name)
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[])
    }

    /// A module's path relative to /lib/modules/<kernel>/.
    pub fn path(&self, name: &str) -> Option<&str> {
        self.modules.get(name).map(|(p, _)| p.as_str())
    }
}

/// Modules loaded whatever the hardware: file systems and the SCSI disk driver that storage
/// controllers hand their disks to.
pub const ALWAYS: &[&str] = &["ntfs3", "efivarfs", "sd_mod"];

/// `modules.alias` lines (`alias PATTERN MODULE`) for the given modules only.
pub fn parse_alias(text: &str, keep: &BTreeSet<String>) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("alias")).then_some(())?;
            let pat = w.next()?;
            let m = canonical(w.next()?);
            keep.contains(&m).then(|| (pat.to_string(), m))
        })
        .collect()
}

/// fnmatch(3) as modules.alias uses it: `*`, `?` and `[...]` classes (with ranges and `!`).
pub fn alias_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while i < s.len() {
        let step = if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some(p);
                    mark = i;
                    p += 1;
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => class(pat, p, s[i]),
                c if c == s[i] => Some(p + 1),
                _ => None,
            }
        } else {
            None
        };
        match step {
            Some(np) => {
                p = np;
                i += 1;
            }
            None => match star {
                Some(sp) => {
                    p = sp + 1;
                    mark += 1;
                    i = mark;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `pat[p] == '['`; returns the index after `]`.
fn class(pat: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut j = p + 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    while j < pat.len() && (pat[j] != b']' || first) {
        first = false;
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            hit |= pat[j] <= c && c <= pat[j + 2];
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    if j >= pat.len() {
        return None;
    }
    (hit != negate).then_some(j + 1)
}

/// Which modules to load for the devices present: every module whose alias matches a device's
/// modalias, plus `always`, closed under dependencies, in the image's load order.
pub fn select(
    modaliases: &[String],
    aliases: &[(String, String)],
    always: &[String],
    deps: &BTreeMap<String, Vec<String>>,
    order: &[String],
) -> Vec<String> {
    let mut want: BTreeSet<String> = always.iter().cloned().collect();
    for m in modaliases {
        for (pat, module) in aliases {
            if alias_match(pat.as_bytes(), m.as_bytes()) {
                want.insert(module.clone());
            }
        }
    }
    let mut stack: Vec<String> = want.iter().cloned().collect();
    while let Some(m) = stack.pop() {
        for d in deps.get(&m).into_iter().flatten() {
            if want.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    order
        .iter()
        .filter(|m| want.contains(*m))
        .cloned()
        .collect()
}

/// Runs `load` for every module of `todo` (in dependency order, as [`select`] returns it) on a
/// thread of its own, each as soon as the modules of `todo` it depends on have finished (a
/// module outside `todo` is already loaded or built in), so that a chain (the NIC's driver
/// after `failover` and `net_failover`) waits for nothing but its own links. Returns each module
/// with its result, in `todo`'s order. A dependency on a module later in `todo` (a circle, which
/// `depmod` does not write) is not waited for.
pub fn in_parallel<R: Send>(
    todo: &[String],
    deps: &BTreeMap<String, Vec<String>>,
    load: impl Fn(&str) -> R + Sync,
) -> Vec<(String, R)> {
    let index: BTreeMap<&str, usize> = todo
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    // Each module waits for the earlier modules of `todo` it depends on.
    let waits: Vec<Vec<usize>> = todo
        .iter()
        .enumerate()
        .map(|(i, m)| {
            deps.get(m)
                .into_iter()
                .flatten()
                .filter_map(|d| index.get(d.as_str()).copied())
                .filter(|&j| j < i)
                .collect()
        })
        .collect();
    let finished = std::sync::Mutex::new(vec![false; todo.len()]);
    let changed = std::sync::Condvar::new();
    let (load, waits, finished, changed) = (&load, &waits, &finished, &changed);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..todo.len())
            .map(|i| {
                s.spawn(move || {
                    let mut f = finished.lock().unwrap_or_else(|e| e.into_inner());
                    while !waits[i].iter().all(|&j| f[j]) {
                        f = changed.wait(f).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(f);
                    // Marked finished even if `load` panics, so that no dependant waits for ever.
                    struct Done<'a>(
                        &'a std::sync::Mutex<Vec<bool>>,
                        &'a std::sync::Condvar,
                        usize,
                    );
                    impl Drop for Done<'_> {
                        fn drop(&mut self) {
                            self.0.lock().unwrap_or_else(|e| e.into_inner())[self.2] = true;
                            self.1.notify_all();
                        }
                    }
                    let _done = Done(finished, changed, i);
                    load(&todo[i])
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| h.join().ok().map(|r| (todo[i].clone(), r)))
            .collect()
    })
}

/// What the kernel command line says about loadable modules, as `modprobe` reads it from
/// `/proc/cmdline` (the kernel applies `module.param=value` only to built-in code; for a loadable
/// module it is the loader's job): each module's parameters, and the modules not to load at all
/// (`modprobe.blacklist=a,b`; the kernel's own `module_blacklist=` it enforces itself).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CmdlineOptions {
    /// Module (canonical name) -> its parameters as `init_module` takes them (`p=v q=w`).
    pub params: BTreeMap<String, String>,
    /// Modules the command line says not to load (canonical names).
    pub blacklist: BTreeSet<String>,
}

impl CmdlineOptions {
    /// Reads the module options from a kernel command line. Words with `"` quotes keep their
    /// spaces (`mod.p="a b"`); a word without a module part (`quiet`, `console=ttyS0`) or of
    /// the agent's own (`unbrick.*`) is not an option.
    pub fn parse(cmdline: &str) -> Self {
        let mut out = Self::default();
        for word in cmdline_words(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            let Some((module, param)) = key.split_once('.') else {
                continue;
            };
            if module.is_empty() || param.is_empty() || module == "unbrick" {
                continue;
            }
            let module = canonical(module);
            if module == "modprobe" {
                if param == "blacklist" {
                    out.blacklist.extend(
                        value
                            .unwrap_or("")
                            .split(',')
                            .filter(|m| !m.is_empty())
                            .map(canonical),
                    );
                }
                continue;
            }
            let one = match value {
                Some(v) if v.contains(' ') => format!("{param}=\"{v}\""),
                Some(v) => format!("{param}={v}"),
                None => param.to_string(),
            };
            let e = out.params.entry(module).or_default();
            if !e.is_empty() {
                e.push(' ');
            }
            e.push_str(&one);
        }
        out
    }
}

/// The words of a kernel command line, as the kernel splits it: at spaces, except inside `"`
/// quotes, which are dropped.
fn cmdline_words(cmdline: &str) -> Vec<String> {
    let (mut words, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Whether `now` (sorted modaliases) has a USB hub interface (class 09) that `before` had not.
pub fn new_usb_hub(before: &[String], now: &[String]) -> bool {
    now.iter()
        .any(|m| m.starts_with("usb:") && m.contains("ic09isc") && before.binary_search(m).is_err())
}

/// The marker that ends a module with an appended signature (`scripts/sign-file` output).
pub const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// Drops a module's appended signature (the PKCS#7 blob, the 12-byte `struct
/// module_signature` that gives its length, and the marker), leaving the ELF image as it was
/// before signing. Returns whether there was one; a malformed trailer (length beyond the file)
/// is left as it is, for the kernel to judge.
pub fn strip_signature(module: &mut Vec<u8>) -> bool {
    let n = module.len();
    if n < SIGNATURE_MARKER.len() + 12 || !module.ends_with(SIGNATURE_MARKER) {
        return false;
    }
    let info = n - SIGNATURE_MARKER.len() - 12;
    let sig_len = u32::from_be_bytes([
        module[info + 8],
        module[info + 9],
        module[info + 10],
        module[info + 11],
    ]) as usize;
    match info.checked_sub(sig_len) {
        Some(end) => {
            module.truncate(end);
            true
        }
        None => false,
    }
}

/// Whether the running kernel loads a module without a signature: it is not locked down (the
/// `lockdown` file says `none`; Debian's kernel locks itself down under Secure Boot) and
/// `module.sig_enforce` is off. Anything unknown counts as no.
pub fn signatures_optional(lockdown: Option<&str>, sig_enforce: Option<&str>) -> bool {
    lockdown == Some("none") && sig_enforce == Some("N")
}

/// Names from `modules.builtin` (built into the kernel: nothing to load).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_options_come_from_the_command_line_as_modprobe_reads_them() {
        let o = CmdlineOptions::parse(
            "BOOT_IMAGE=/vmlinuz initrd=initrd.img console=ttyS0,115200n8 quiet \
             usb-storage.delay_use=0 nvme_core.default_ps_max_latency_us=0 \
             libata.force=1.00:noncq,2.00:nolpm usb_storage.quirks=0bc2:2320:u \
             e1000e.SmartPowerDownEnable unbrick.server=http://10.99.0.1:8080 unbrick.poweroff \
             mlx5_core.x=\"a b\" modprobe.blacklist=nouveau,r8169 .x=1 y.=2 =3",
        );
        let p = |m: &str| o.params.get(m).map(String::as_str);
        assert_eq!(p("usb_storage"), Some("delay_use=0 quirks=0bc2:2320:u"));
        assert_eq!(p("nvme_core"), Some("default_ps_max_latency_us=0"));
        assert_eq!(p("libata"), Some("force=1.00:noncq,2.00:nolpm"));
        assert_eq!(p("e1000e"), Some("SmartPowerDownEnable"));
        assert_eq!(p("mlx5_core"), Some("x=\"a b\""));
        // Not modules: the agent's own words, plain words, console=, empty halves.
        assert_eq!(o.params.len(), 5, "{o:?}");
        assert_eq!(
            o.blacklist.iter().map(String::as_str).collect::<Vec<_>>(),
            ["nouveau", "r8169"]
        );
        assert_eq!(CmdlineOptions::parse(""), CmdlineOptions::default());
    }

    #[test]
    fn a_new_usb_hub_is_noticed_and_nothing_else() {
        let hub = "usb:v1D6Bp0003d0612dc09dsc00dp03ic09isc00ip00in00".to_string();
        let stick = "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00".to_string();
        let pci = "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30".to_string();
        let mut before = vec![pci.clone()];
        let mut now = vec![hub.clone(), pci.clone()];
        now.sort();
        assert!(new_usb_hub(&before, &now));
        before = now.clone();
        assert!(!new_usb_hub(&before, &now), "the same hub again");
        let mut later = vec![hub, pci, stick];
        later.sort();
        assert!(
            !new_usb_hub(&before, &later),
            "a storage device is not a hub"
        );
        assert!(!new_usb_hub(&[], &[]));
    }

    #[test]
    fn an_appended_signature_is_dropped_and_nothing_else() {
        let elf = b"\x7fELF the module's image".to_vec();
        let sig = vec![0x30u8; 103];
        let mut signed = elf.clone();
        signed.extend_from_slice(&sig);
        // algo, hash, id_type (2 = PKCS#7), signer_len, key_id_len, pad[3], sig_len (BE)
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(SIGNATURE_MARKER);
        let mut m = signed.clone();
        assert!(strip_signature(&mut m));
        assert_eq!(m, elf);
        // Unsigned: untouched.
        let mut m = elf.clone();
        assert!(!strip_signature(&mut m));
        assert_eq!(m, elf);
        // A length beyond the file, a marker alone, or a cut trailer: untouched.
        let mut bad = signed.clone();
        let at = bad.len() - SIGNATURE_MARKER.len() - 4;
        bad[at..at + 4].copy_from_slice(&100_000u32.to_be_bytes());
        let mut m = bad.clone();
        assert!(!strip_signature(&mut m));
        assert_eq!(m, bad);
        for short in [
            SIGNATURE_MARKER.to_vec(),
            signed[signed.len() - 35..].to_vec(),
        ] {
            let mut m = short.clone();
            assert!(!strip_signature(&mut m));
            assert_eq!(m, short);
        }
    }

    /// A real module of the image's kernel, where one is at hand: signed by Debian, its
    /// stripped image is an ELF file that ends where the PKCS#7 blob began.
    #[test]
    fn a_real_debian_module_loses_exactly_its_signature() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/kernel/root/lib/modules"
        );
        let Some(ko) = std::fs::read_dir(dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| {
                let p = e.ok()?.path().join("kernel/fs/efivarfs/efivarfs.ko.xz");
                p.exists().then_some(p)
            })
        else {
            eprintln!("no Debian kernel under {dir}: scripts/install-deps.sh fetches it");
            return;
        };
        let out = std::process::Command::new("xz")
            .arg("-dc")
            .arg(&ko)
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut m = out.stdout.clone();
        assert!(strip_signature(&mut m));
        assert!(m.starts_with(b"\x7fELF"));
        // What was cut is a DER blob (Debian's build key: ECDSA, ~100 bytes), its info block
        // and the marker, nothing more: the ELF section headers end inside what is left.
        let cut = out.stdout.len() - m.len();
        assert!((40 + 64..40 + 1024).contains(&cut), "{cut} bytes cut");
        assert_eq!(
            out.stdout[m.len()],
            0x30,
            "a DER SEQUENCE starts the signature"
        );
        let u = |at: usize, n: usize| {
            m[at..at + n]
                .iter()
                .rev()
                .fold(0usize, |a, b| (a << 8) | *b as usize)
        };
        let (shoff, shentsize, shnum) = (u(0x28, 8), u(0x3a, 2), u(0x3c, 2));
        assert!(shoff + shentsize * shnum <= m.len());
        assert!(!m.ends_with(SIGNATURE_MARKER));
    }

    #[test]
    fn signatures_are_optional_only_without_lockdown_and_enforcement() {
        assert!(signatures_optional(Some("none"), Some("N")));
        assert!(!signatures_optional(Some("integrity"), Some("N")));
        assert!(!signatures_optional(Some("confidentiality"), Some("N")));
        assert!(!signatures_optional(Some("none"), Some("Y")));
        assert!(!signatures_optional(None, Some("N")));
        assert!(!signatures_optional(Some("none"), None));
    }

    #[test]
    fn independent_modules_load_together_and_dependents_after_their_dependencies() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        // ahci needs libahci needs libata; virtio_net and e1000 need nothing in the list;
        // x and y depend on each other (a circle depmod would not write).
        let deps: BTreeMap<String, Vec<String>> = [
            ("ahci", vec!["libahci", "libata"]),
            ("libahci", vec!["libata"]),
            ("virtio_net", vec!["virtio", "net_failover"]),
            ("x", vec!["y"]),
            ("y", vec!["x"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let todo: Vec<String> = ["libata", "e1000", "libahci", "ahci", "virtio_net", "x", "y"]
            .map(String::from)
            .to_vec();
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let finished = Mutex::new(Vec::new());
        let out = in_parallel(&todo, &deps, |m| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            running.fetch_sub(1, Ordering::SeqCst);
            finished.lock().unwrap().push(m.to_string());
            m.len()
        });
        // Every module once, in todo's order, with its own result; a module that panics is
        // left out and nothing waits for it for ever.
        assert_eq!(
            out.iter()
                .map(|(m, r)| (m.as_str(), *r))
                .collect::<Vec<_>>(),
            todo.iter()
                .map(|m| (m.as_str(), m.len()))
                .collect::<Vec<_>>()
        );
        let f = finished.into_inner().unwrap();
        let at = |m: &str| f.iter().position(|x| x == m).unwrap();
        assert!(
            at("libata") < at("libahci") && at("libahci") < at("ahci"),
            "{f:?}"
        );
        // libata, e1000 and virtio_net (and the circle) have nothing to wait for.
        assert!(most.load(Ordering::SeqCst) >= 3, "{f:?}");
        assert!(in_parallel(&[], &deps, |_| ()).is_empty());

        // A chain does not wait for a slow module it does not depend on (waves would).
        let deps: BTreeMap<String, Vec<String>> = [
            ("net_failover", vec!["failover"]),
            ("virtio_net", vec!["net_failover"]),
            ("sd_mod", vec!["nvme"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let todo: Vec<String> = ["failover", "nvme", "net_failover", "sd_mod", "virtio_net"]
            .map(String::from)
            .to_vec();
        let finished = Mutex::new(Vec::new());
        in_parallel(&todo, &deps, |m| {
            let ms = if m == "nvme" { 1_000 } else { 20 };
            std::thread::sleep(std::time::Duration::from_millis(ms));
            finished.lock().unwrap().push(m.to_string());
        });
        assert_eq!(
            finished.into_inner().unwrap(),
            ["failover", "net_failover", "virtio_net", "nvme", "sd_mod"]
        );
    }

    #[test]
    fn alias_patterns() {
        let m = |p: &str, s: &str| alias_match(p.as_bytes(), s.as_bytes());
        assert!(m("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(!m("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(m(
            "pci:v*d*sv*sd*bc01sc08i02*",
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"
        ));
        assert!(m(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
        ));
        assert!(m("scsi:t-0x0[0-7]*", "scsi:t-0x05"));
        assert!(!m("scsi:t-0x0[!0-7]*", "scsi:t-0x05"));
        assert!(m("acpi*:PNP0A0[38]:*", "acpi:PNP0A08:"));
        assert!(!m("abc", "abcd"));
        assert!(m("a?c", "abc"));
    }

    #[test]
    fn selection_follows_devices_and_dependencies() {
        let aliases = vec![
            ("virtio:d00000001v*".to_string(), "virtio_net".to_string()),
            ("pci:v*d*sv*sd*bc01sc08i02*".into(), "nvme".into()),
            (
                "pci:v00008086d000010D3sv*sd*bc*sc*i*".into(),
                "e1000e".into(),
            ),
        ];
        let deps: BTreeMap<String, Vec<String>> = [
            ("virtio_net".to_string(), vec!["net_failover".to_string()]),
            ("net_failover".into(), vec!["failover".into()]),
            ("nvme".into(), vec!["nvme_core".into()]),
        ]
        .into_iter()
        .collect();
        let order: Vec<String> = [
            "failover",
            "net_failover",
            "virtio_net",
            "nvme_core",
            "nvme",
            "e1000e",
            "ntfs3",
        ]
        .map(String::from)
        .to_vec();
        let got = select(
            &[
                "virtio:d00000001v00001AF4".into(),
                "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02".into(),
            ],
            &aliases,
            &["ntfs3".into()],
            &deps,
            &order,
        );
        assert_eq!(
            got,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "nvme_core",
                "nvme",
                "ntfs3"
            ]
        );
    }

    #[test]
    fn dependency_order() {
        let dep = ModuleDep::parse(
            "kernel/fs/ntfs3/ntfs3.ko.xz:\n\
             kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
             kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n\
             kernel/net/core/failover.ko.xz:\n\
             kernel/drivers/md/dm-crypt.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n\
             kernel/drivers/md/dm-mod.ko.xz:\n",
        );
        let builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n");
        let (order, missing) = dep.resolve(
            &["virtio-net", "ntfs3", "dm_crypt", "virtio_blk", "nope"],
            &builtin,
        );
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "ntfs3",
                "dm_mod",
                "dm_crypt"
            ]
        );
        assert_eq!(missing, ["nope"]);
        assert_eq!(dep.path("dm_mod"), Some("kernel/drivers/md/dm-mod.ko.xz"));
    }
}
