//! The recovery kernel for `unbrick image build` when none is named: the newest Debian-signed
//! linux-image 6.12 or later (ntfs3 came in 6.2; bookworm's own 6.1 lacks it), taken from what
//! is installed, from a cached package, or fetched with `apt-get download` through a private APT
//! configuration for bookworm-backports (the system's sources are not edited), then cached in
//! DATA/kernel-cache.
use crate::Fail;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest kernel the payload runs on (ntfs3 with the fixes the agent relies on; what
/// bookworm-backports carries).
pub(crate) const MIN: (u32, u32) = (6, 12);

/// A kernel found: an unpacked root ready for the builder.
#[derive(Debug)]
pub(crate) struct Found {
    /// A directory with boot/vmlinuz-<release> and lib/modules/<release>.
    pub root: PathBuf,
    /// The kernel release, e.g. 6.12.95+deb12-amd64.
    pub release: String,
    /// Where it came from, in words.
    pub source: String,
    /// A scratch directory to remove after the build.
    pub scratch: Option<PathBuf>,
}

/// The numeric part of a kernel release: 6.12.95+deb12-amd64 -> [6, 12, 95].
pub(crate) fn release_numbers(release: &str) -> Vec<u32> {
    release
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The kernel release a package file or name carries, when it is a plain signed amd64 kernel:
/// `linux-image-6.12.95+deb12-amd64_6.12.95-1~bpo12+1_amd64.deb` -> `6.12.95+deb12-amd64`.
/// Unsigned, debug, cloud and realtime flavours are not candidates (cloud kernels lack the
/// hardware drivers, unsigned ones fail Secure Boot).
pub(crate) fn release_of_package(name: &str) -> Option<String> {
    let pkg = name.split('_').next()?;
    let release = pkg.strip_prefix("linux-image-")?;
    if !release.ends_with("-amd64")
        || ["unsigned", "dbg", "cloud", "-rt-"]
            .iter()
            .any(|w| release.contains(w))
    {
        return None;
    }
    let n = release_numbers(release);
    (n.len() >= 2).then(|| release.to_string())
}

/// Whether `release` is new enough.
pub(crate) fn new_enough(release: &str) -> bool {
    let n = release_numbers(release);
    n.len() >= 2 && (n[0], n[1]) >= MIN
}

/// A candidate: a cached .deb or an installed kernel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Candidate {
    Deb(PathBuf),
    Installed,
}

/// The newest acceptable candidate among `(release, candidate)`; an installed kernel wins a tie
/// (nothing to unpack).
pub(crate) fn newest(mut found: Vec<(String, Candidate)>) -> Option<(String, Candidate)> {
    found.retain(|(r, _)| new_enough(r));
    found.sort_by(|(a, ca), (b, cb)| {
        release_numbers(a)
            .cmp(&release_numbers(b))
            .then((ca == &Candidate::Installed).cmp(&(cb == &Candidate::Installed)))
    });
    found.pop()
}

/// Kernels on this machine: installed (dpkg says so and /boot and /lib/modules hold it) and
/// packages in `dirs`.
fn local_candidates(dirs: &[PathBuf]) -> Vec<(String, Candidate)> {
    let mut out = Vec::new();
    if let Ok(o) = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Package} ${db:Status-Abbrev}\n",
            "linux-image-*",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut w = line.split_whitespace();
            let (Some(pkg), Some(status)) = (w.next(), w.next()) else {
                continue;
            };
            if status != "ii" {
                continue;
            }
            if let Some(r) = release_of_package(pkg) {
                if Path::new("/boot").join(format!("vmlinuz-{r}")).exists()
                    && Path::new("/lib/modules")
                        .join(&r)
                        .join("modules.dep")
                        .exists()
                {
                    out.push((r, Candidate::Installed));
                }
            }
        }
    }
    for d in dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with("_amd64.deb") {
                continue;
            }
            if let Some(r) = release_of_package(&name) {
                out.push((r, Candidate::Deb(e.path())));
            }
        }
    }
    out
}

/// The private APT configuration (bookworm with backports, the system's own mirror), under
/// `state`; returns the APT_CONFIG file.
fn apt_config(state: &Path) -> Result<PathBuf, Fail> {
    std::fs::create_dir_all(state.join("lists/partial"))?;
    std::fs::create_dir_all(state.join("archives/partial"))?;
    let mut mirror = "http://deb.debian.org/debian".to_string();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    files.extend(
        std::fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    'found: for f in files {
        for word in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace())
        {
            let w = word.trim_end_matches('/');
            if (w.starts_with("http://") || w.starts_with("https://")) && w.ends_with("/debian") {
                mirror = w.to_string();
                break 'found;
            }
        }
    }
    let sources = state.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb {mirror} bookworm main\ndeb {mirror} bookworm-backports main\n"),
    )?;
    let conf = state.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::SourceList \"{}\";\nDir::Etc::SourceParts \"/nonexistent\";\nDir::State::Lists \"{}\";\nDir::Cache::Archives \"{}\";\n",
            sources.display(),
            state.join("lists").display(),
            state.join("archives").display()
        ),
    )?;
    Ok(conf)
}

fn apt(conf: &Path, dir: &Path, args: &[&str]) -> Result<String, Fail> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("APT_CONFIG", conf)
        .current_dir(dir)
        .output()
        .map_err(|e| Fail(format!("{}: {e} (apt is Debian's package tool)", args[0])))?;
    if !o.status.success() {
        return Err(Fail(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// Fetches the newest signed kernel package from bookworm-backports into `cache`.
fn fetch(state: &Path, cache: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf, Fail> {
    let conf = apt_config(state)?;
    say("reading the package lists of bookworm and bookworm-backports");
    apt(
        &conf,
        cache,
        &["apt-get", "update", "-q", "-o", "Acquire::Retries=3"],
    )
    .map_err(|e| Fail(format!("{}\n(no network? copy a linux-image-6.12.*-amd64 .deb into {} and run again, or pass --kernel-deb)", e.0, cache.display())))?;
    let deps = apt(
        &conf,
        cache,
        &[
            "apt-cache",
            "depends",
            "-t",
            "bookworm-backports",
            "linux-image-amd64",
        ],
    )?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| release_of_package(p).is_some_and(|r| new_enough(&r)))
        .ok_or_else(|| {
            Fail(format!(
                "bookworm-backports offers no signed kernel {}.{} or later (apt-cache depends linux-image-amd64 said: {})",
                MIN.0,
                MIN.1,
                deps.trim()
            ))
        })?
        .to_string();
    say(&format!("downloading {pkg} (apt-get download)"));
    apt(&conf, cache, &["apt-get", "download", "-q", &pkg])?;
    local_candidates(&[cache.to_path_buf()])
        .into_iter()
        .find_map(|(r, c)| match c {
            Candidate::Deb(p) if pkg.ends_with(&r) => Some(p),
            _ => None,
        })
        .ok_or_else(|| {
            Fail(format!(
                "apt-get download {pkg} left no package in {}",
                cache.display()
            ))
        })
}

/// Finds (or fetches) the kernel, unpacks it when it is a package, and checks it: a new
/// enough release, ntfs3 among its modules, and a vmlinuz signed by Debian's Secure Boot CA.
pub(crate) fn find(data_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<Found, Fail> {
    let cache = data_dir.join("kernel-cache");
    std::fs::create_dir_all(&cache)?;
    let dirs = [cache.clone(), PathBuf::from("/var/cache/apt/archives")];
    let found = match newest(local_candidates(&dirs)) {
        Some(f) => f,
        None => {
            say(&format!(
                "no signed kernel {}.{} or later installed or in {}: fetching one from bookworm-backports",
                MIN.0,
                MIN.1,
                cache.display()
            ));
            let deb = fetch(&data_dir.join("apt"), &cache, say)?;
            let name = deb
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            (
                release_of_package(&name).unwrap_or_default(),
                Candidate::Deb(deb),
            )
        }
    };
    let (release, cand) = found;
    let (root, source, scratch) = match cand {
        Candidate::Installed => {
            // The builder reads boot/ and lib/modules/ under a root: one holding links to this
            // kernel only (the machine may have several installed).
            let tmp = std::env::temp_dir().join(format!("unbrick-kernel-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(tmp.join("boot"))?;
            std::fs::create_dir_all(tmp.join("lib/modules"))?;
            std::os::unix::fs::symlink(
                format!("/boot/vmlinuz-{release}"),
                tmp.join("boot").join(format!("vmlinuz-{release}")),
            )?;
            std::os::unix::fs::symlink(
                format!("/lib/modules/{release}"),
                tmp.join("lib/modules").join(&release),
            )?;
            (
                tmp.clone(),
                format!("installed (linux-image-{release})"),
                Some(tmp),
            )
        }
        Candidate::Deb(deb) => {
            // Keep a copy in the cache: the next build needs no network.
            let cached = cache.join(deb.file_name().unwrap_or_default());
            if !cached.exists() {
                std::fs::copy(&deb, &cached)?;
            }
            let tmp = std::env::temp_dir().join(format!("unbrick-kernel-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            say(&format!("unpacking {}", cached.display()));
            if let Err(e) = payload_builder::build::unpack_deb(&cached, &tmp) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Fail(format!(
                    "{e}\n{} is not a usable kernel package: remove it and run again (the next newest, or a fresh download, is used)",
                    cached.display()
                )));
            }
            (
                tmp.clone(),
                format!("package {}", cached.display()),
                Some(tmp),
            )
        }
    };
    let f = Found {
        root,
        release,
        source,
        scratch,
    };
    check(&f)?;
    Ok(f)
}

/// The checks on a found kernel.
pub(crate) fn check(f: &Found) -> Result<(), Fail> {
    if !new_enough(&f.release) {
        return Err(Fail(format!(
            "kernel {} is older than {}.{} (no ntfs3): use bookworm-backports' linux-image-amd64",
            f.release, MIN.0, MIN.1
        )));
    }
    let mdir = f.root.join("lib/modules").join(&f.release);
    let dep = std::fs::read_to_string(mdir.join("modules.dep")).unwrap_or_default();
    let builtin = std::fs::read_to_string(mdir.join("modules.builtin")).unwrap_or_default();
    let has = |text: &str| {
        text.lines()
            .any(|l| l.split(':').next().unwrap_or("").contains("/ntfs3.ko"))
    };
    // A package without modules.dep (depmod runs in the build) is searched by file.
    let unlisted = dep.is_empty()
        && mdir
            .join("kernel/fs/ntfs3")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some());
    if !has(&dep) && !has(&builtin) && !unlisted {
        return Err(Fail(format!(
            "kernel {} has no ntfs3 module (the agent mounts NTFS with it)",
            f.release
        )));
    }
    let vmlinuz = f.root.join("boot").join(format!("vmlinuz-{}", f.release));
    let pe = std::fs::read(&vmlinuz).map_err(|e| Fail(format!("{}: {e}", vmlinuz.display())))?;
    let issuers = crate::doctor::signature_issuers(&pe)
        .map_err(|e| Fail(format!("{}: {e}; Secure Boot machines would refuse it: use the signed linux-image package, not -unsigned", vmlinuz.display())))?;
    if !issuers.iter().any(|i| i.contains("Debian Secure Boot")) {
        return Err(Fail(format!(
            "{}: not signed by Debian's Secure Boot CA (signers: {}); shim would refuse it",
            vmlinuz.display(),
            if issuers.is_empty() {
                "none".into()
            } else {
                issuers.join("; ")
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_give_their_release_and_only_plain_signed_flavours() {
        assert_eq!(
            release_of_package("linux-image-6.12.95+deb12-amd64_6.12.95-1~bpo12+1_amd64.deb")
                .as_deref(),
            Some("6.12.95+deb12-amd64")
        );
        assert_eq!(
            release_of_package("linux-image-6.1.0-40-amd64").as_deref(),
            Some("6.1.0-40-amd64")
        );
        for no in [
            "linux-image-6.12.95+deb12-amd64-unsigned_6.12.95-1_amd64.deb",
            "linux-image-6.12.95+deb12-cloud-amd64_6.12.95-1_amd64.deb",
            "linux-image-6.12.95+deb12-rt-amd64_6.12.95-1_amd64.deb",
            "linux-image-6.12.95+deb12-amd64-dbg_6.12.95-1_amd64.deb",
            "linux-image-amd64_6.12.95-1_amd64.deb",
            "linux-headers-6.12.95+deb12-amd64_6.12.95-1_amd64.deb",
        ] {
            assert_eq!(release_of_package(no), None, "{no}");
        }
    }

    #[test]
    fn the_newest_new_enough_kernel_is_chosen_an_installed_one_on_a_tie() {
        let deb = |s: &str| Candidate::Deb(PathBuf::from(s));
        let pick = newest(vec![
            ("6.1.0-40-amd64".into(), Candidate::Installed),
            ("6.12.9+deb12-amd64".into(), deb("a")),
            ("6.12.95+deb12-amd64".into(), deb("b")),
            ("6.12.41+deb12-amd64".into(), Candidate::Installed),
        ])
        .unwrap();
        assert_eq!(pick, ("6.12.95+deb12-amd64".into(), deb("b")));
        let pick = newest(vec![
            ("6.12.95+deb12-amd64".into(), deb("b")),
            ("6.12.95+deb12-amd64".into(), Candidate::Installed),
        ])
        .unwrap();
        assert_eq!(pick.1, Candidate::Installed);
        // Only 6.1: nothing (bookworm's own kernel has no ntfs3).
        assert_eq!(
            newest(vec![("6.1.0-40-amd64".into(), Candidate::Installed)]),
            None
        );
        assert!(new_enough("7.0.1-amd64") && !new_enough("6.11.2-amd64"));
    }

    /// A root with boot/vmlinuz-R (`vmlinuz` bytes) and, when `ntfs3`, the module listed.
    fn root(name: &str, vmlinuz: &[u8], ntfs3: bool) -> Found {
        let r = "6.12.95+deb12-amd64";
        let d = std::env::temp_dir().join(format!("unbrick-kcheck-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("boot")).unwrap();
        let m = d.join("lib/modules").join(r);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(d.join("boot").join(format!("vmlinuz-{r}")), vmlinuz).unwrap();
        let dep = if ntfs3 {
            "kernel/fs/ntfs3/ntfs3.ko.xz:\nkernel/fs/fat/vfat.ko.xz:\n"
        } else {
            "kernel/fs/fat/vfat.ko.xz:\n"
        };
        std::fs::write(m.join("modules.dep"), dep).unwrap();
        Found {
            root: d.clone(),
            release: r.into(),
            source: "test".into(),
            scratch: Some(d),
        }
    }

    #[test]
    fn a_kernel_without_ntfs3_or_without_debians_signature_is_refused_by_name() {
        let f = root("nontfs", b"MZ", false);
        let e = check(&f).unwrap_err().0;
        assert!(e.contains("has no ntfs3 module"), "{e}");
        let f = root("unsigned", b"\x7fELF not a PE", true);
        let e = check(&f).unwrap_err().0;
        assert!(
            e.contains("not a PE file") && e.contains("Secure Boot machines would refuse it"),
            "{e}"
        );
        let old = Found {
            release: "6.1.0-40-amd64".into(),
            ..root("old", b"MZ", true)
        };
        let e = check(&old).unwrap_err().0;
        assert!(e.contains("older than 6.12 (no ntfs3)"), "{e}");
        for n in ["nontfs", "unsigned", "old"] {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("unbrick-kcheck-{n}-{}", std::process::id())),
            );
        }
    }
}
