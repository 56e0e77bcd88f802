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

fn read(bytes: &[u8]) -> Result<String, String> {
    let hive = match nt_hive::Hive::new(bytes) {
        Ok(h) => h,
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
            h
        }
        Err(e) => return Err(format!("not a readable hive: {e}")),
    };
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
    let name: String = name
        .trim_end_matches('\0')
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        return Err(format!("ComputerName in {path} is empty"));
    }
    Ok(name)
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
