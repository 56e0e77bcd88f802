//! The Windows computer name from a volume's SYSTEM hive (`Windows\System32\config\SYSTEM`),
//! read-only with the nt-hive crate: `Select\Current` names the control set, whose
//! `Control\ComputerName\ComputerName` key holds the `ComputerName` value.
//!
//! The name is what the disk says about itself, so anyone who can write the disk chooses it:
//! the server shows it and lets an admin search by it, and never uses it to decide anything
//! (a key release goes by the host's claim and token, never by this name).

use fleet::agent::MAX_NAME;

/// The largest hive read (SYSTEM hives are tens of MiB; a larger file is not read whole).
pub const MAX_HIVE_BYTES: u64 = 256 << 20;

/// The computer name in a SYSTEM hive's bytes. A hive whose sequence numbers differ (Windows
/// did not close it, as after a crash; its logs are not replayed here) is read as it is.
///
/// The hive is whatever the disk holds: should the reader panic on a malformed one (nt-hive
/// asserts on some offsets), that is an error here, never the end of the agent's run.
pub fn computer_name(bytes: &[u8]) -> Result<String, String> {
    std::panic::catch_unwind(|| read(bytes))
        .unwrap_or_else(|_| Err("the hive reader failed on this malformed hive".into()))
}

/// The Windows version in a SOFTWARE hive's bytes (`Microsoft\Windows NT\CurrentVersion`):
/// product name, display version, build and update build revision, edition. What the disk
/// says about itself: shown and grouped by, never used to decide.
pub fn windows_version(bytes: &[u8]) -> Result<fleet::agent::WindowsVersion, String> {
    std::panic::catch_unwind(|| read_version(bytes))
        .unwrap_or_else(|_| Err("the hive reader failed on this malformed hive".into()))
}

fn read_version(bytes: &[u8]) -> Result<fleet::agent::WindowsVersion, String> {
    let hive = open(bytes)?;
    let err = |what: &str, e: nt_hive::NtHiveError| format!("{what}: {e}");
    let root = hive.root_key_node().map_err(|e| err("root key", e))?;
    let path = "Microsoft\\Windows NT\\CurrentVersion";
    let key = root
        .subpath(path)
        .ok_or_else(|| format!("no {path} key"))?
        .map_err(|e| err(path, e))?;
    let text = |name: &str| -> Option<String> {
        let v = key.value(name)?.ok()?.string_data().ok()?;
        let v = clean(&v);
        (!v.is_empty()).then_some(v)
    };
    let build = text("CurrentBuild")
        .or_else(|| text("CurrentBuildNumber"))
        .and_then(|b| b.parse::<u32>().ok());
    let ubr = key
        .value("UBR")
        .and_then(|v| v.ok())
        .and_then(|v| v.dword_data().ok());
    let v = fleet::agent::WindowsVersion {
        product: text("ProductName"),
        display_version: text("DisplayVersion").or_else(|| text("ReleaseId")),
        build,
        ubr,
        edition: text("EditionID"),
    };
    if v.product.is_none() && v.build.is_none() {
        return Err(format!("{path} names neither a product nor a build"));
    }
    Ok(v)
}

/// A hive, read as it is when only its sequence numbers disagree (Windows did not close it,
/// as after a crash; its logs are not replayed here).
fn open(bytes: &[u8]) -> Result<nt_hive::Hive<&[u8]>, String> {
    match nt_hive::Hive::new(bytes) {
        Ok(h) => Ok(h),
        Err(nt_hive::NtHiveError::SequenceNumberMismatch { .. }) => {
            let h = nt_hive::Hive::without_validation(bytes).map_err(|e| format!("{e}"))?;
            // Everything but the sequence numbers must still hold: sequence numbers are the
            // one check a hive left open fails.
            if h.major_version() != 1 || h.minor_version() < 3 {
                return Err(format!(
                    "unsupported hive version {}.{}",
                    h.major_version(),
                    h.minor_version()
                ));
            }
            Ok(h)
        }
        Err(e) => Err(format!("not a readable hive: {e}")),
    }
}

fn read(bytes: &[u8]) -> Result<String, String> {
    let hive = open(bytes)?;
    let err = |what: &str, e: nt_hive::NtHiveError| format!("{what}: {e}");
    let root = hive.root_key_node().map_err(|e| err("root key", e))?;
    let current = root
        .subpath("Select")
        .ok_or("no Select key")?
        .map_err(|e| err("Select", e))?
        .value("Current")
        .ok_or("no Select\\Current value")?
        .map_err(|e| err("Select\\Current", e))?
        .dword_data()
        .map_err(|e| err("Select\\Current", e))?;
    if !(1..=999).contains(&current) {
        return Err(format!("Select\\Current is {current}, not a control set"));
    }
    let path = format!("ControlSet{current:03}\\Control\\ComputerName\\ComputerName");
    let key = root
        .subpath(&path)
        .ok_or_else(|| format!("no {path} key"))?
        .map_err(|e| err(&path, e))?;
    let value = key
        .value("ComputerName")
        .ok_or_else(|| format!("no ComputerName value in {path}"))?
        .map_err(|e| err("ComputerName", e))?;
    let name = value.string_data().map_err(|e| err("ComputerName", e))?;
    let name = clean(&name);
    if name.is_empty() {
        return Err(format!("ComputerName in {path} is empty"));
    }
    Ok(name)
}

/// A registry string as the report carries it: without the terminating NULs, surrounding
/// blanks and control characters, at most `MAX_NAME` characters.
fn clean(v: &str) -> String {
    v.trim_end_matches('\0')
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by tests/blackbox/helpers/make_system_hive.py (Python, from the format's
    // description; it shares nothing with nt-hive): no Windows-made SYSTEM hive can be shipped.
    const CLEAN: &[u8] = include_bytes!("../testdata/SYSTEM");
    const DIRTY_CS2: &[u8] = include_bytes!("../testdata/SYSTEM-dirty-cs2");
    const NO_NAME: &[u8] = include_bytes!("../testdata/SYSTEM-no-name");

    #[test]
    fn the_windows_version_of_a_software_hive() {
        // Written by the same helper with --software.
        let v = windows_version(include_bytes!("../testdata/SOFTWARE")).unwrap();
        assert_eq!(v.product.as_deref(), Some("Windows 10 Pro"));
        assert_eq!(v.display_version.as_deref(), Some("23H2"));
        assert_eq!((v.build, v.ubr), (Some(22631), Some(3880)));
        assert_eq!(v.edition.as_deref(), Some("Professional"));
        // A SYSTEM hive is no SOFTWARE hive: said so.
        let e = windows_version(CLEAN).unwrap_err();
        assert!(
            e.contains("no Microsoft\\Windows NT\\CurrentVersion key"),
            "{e}"
        );
        assert!(windows_version(b"junk").is_err());
    }

    #[test]
    fn the_name_of_the_current_control_set() {
        assert_eq!(computer_name(CLEAN).unwrap(), "WKS-0042");
    }

    #[test]
    fn a_hive_left_open_is_read_and_select_current_is_followed() {
        // ControlSet001 of this hive holds a stale name; Select\Current is 2.
        assert_eq!(computer_name(DIRTY_CS2).unwrap(), "LAB-PC-17");
    }

    #[test]
    fn bad_hives_say_what_is_wrong() {
        let e = computer_name(NO_NAME).unwrap_err();
        assert!(e.contains("no ComputerName value"), "{e}");
        let e = computer_name(b"not a hive at all").unwrap_err();
        assert!(e.contains("not a readable hive"), "{e}");
        let mut bad = CLEAN.to_vec();
        bad[100] ^= 0xff; // inside the checksummed base block
        let e = computer_name(&bad).unwrap_err();
        assert!(e.contains("not a readable hive"), "{e}");
        // Truncated in its bins: an error, never a panic.
        let e = computer_name(&CLEAN[..4096 + 64]).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn any_damage_to_the_bins_is_an_error_or_a_name_never_a_panic() {
        for i in 4096..CLEAN.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = CLEAN.to_vec();
                b[i] ^= flip;
                if let Ok(n) = computer_name(&b) {
                    assert!(n.chars().count() <= MAX_NAME && !n.is_empty());
                }
            }
        }
    }
}
