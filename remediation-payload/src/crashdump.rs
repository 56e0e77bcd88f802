//! The header of a Windows kernel crash dump (`Windows\Minidump\*.dmp`, `Windows\MEMORY.DMP`):
//! the bugcheck code and its four parameters, when it was written, the kind of dump and the
//! Windows build. Read from the first 8 KiB only (the header is 4 KiB for 32-bit dumps and 8
//! KiB for 64-bit ones); nothing else of the dump is looked at.
//!
//! Layout (`DUMP_HEADER64`, little-endian): `PAGE` `DU64` at 0, MajorVersion at 0x08 (0xf: a
//! free build), MinorVersion at 0x0c (the build number), BugCheckCode at 0x38, the four
//! parameters as u64 at 0x40, DumpType at 0xf98, SystemTime (FILETIME) at 0xfa8. `DUMP_HEADER32`
//! (`PAGE` `DUMP`): BugCheckCode at 0x20, the parameters as u32 at 0x24; its time is not read.

/// What a dump's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpHeader {
    /// 64 or 32 (bits).
    pub bits: u8,
    /// The Windows build (MinorVersion).
    pub build: u32,
    /// The bugcheck (stop) code.
    pub bugcheck: u32,
    /// Its four parameters.
    pub parameters: [u64; 4],
    /// When the dump was written, Unix seconds (64-bit dumps; `None` when the field is empty).
    pub time_unix: Option<i64>,
    /// The kind of dump, in words (`full`, `kernel`, `small (minidump)`, `bitmap`, ...).
    pub kind: String,
}

/// How many bytes of a dump [`parse`] needs.
pub const HEADER_BYTES: usize = 0x2000;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// FILETIME (100 ns since 1601-01-01) to Unix seconds.
fn filetime_to_unix(ft: u64) -> Option<i64> {
    const EPOCH_DIFF_S: i64 = 11_644_473_600;
    if ft == 0 || ft == u64::MAX {
        return None;
    }
    i64::try_from(ft / 10_000_000)
        .ok()
        .map(|s| s - EPOCH_DIFF_S)
}

fn kind_name(dump_type: u32) -> String {
    match dump_type {
        1 => "full".into(),
        2 => "kernel (summary)".into(),
        3 => "header only".into(),
        4 => "small (minidump)".into(),
        5 => "bitmap (full or kernel)".into(),
        6 => "bitmap (kernel)".into(),
        n => format!("type {n}"),
    }
}

/// The bugcheck's name for the codes that crash fleets (the rest by number).
pub fn bugcheck_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0x0000_000A => "IRQL_NOT_LESS_OR_EQUAL",
        0x0000_001E => "KMODE_EXCEPTION_NOT_HANDLED",
        0x0000_003B => "SYSTEM_SERVICE_EXCEPTION",
        0x0000_0050 => "PAGE_FAULT_IN_NONPAGED_AREA",
        0x0000_007B => "INACCESSIBLE_BOOT_DEVICE",
        0x0000_007E | 0x1000_007E => "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
        0x0000_007F => "UNEXPECTED_KERNEL_MODE_TRAP",
        0x0000_00C2 => "BAD_POOL_CALLER",
        0x0000_00D1 => "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        0x0000_00EF => "CRITICAL_PROCESS_DIED",
        0x0000_0133 => "DPC_WATCHDOG_VIOLATION",
        0x0000_0139 => "KERNEL_SECURITY_CHECK_FAILURE",
        _ => return None,
    })
}

/// How much of a small (triage) dump [`faulting_driver`] reads: Windows writes them at 256 KiB
/// to a few MiB; a bigger file is read only this far.
pub const TRIAGE_MAX_BYTES: usize = 16 << 20;

/// Which bugcheck parameter holds the address of the faulting code, per the bugcheck
/// reference (the `0x1000_0000` "_M" variants mean the same).
fn fault_address(h: &DumpHeader) -> Option<u64> {
    let i = match h.bugcheck & !0x1000_0000 {
        0x1E | 0x3B | 0x7E | 0x8E => 1,
        0x50 => 2,
        0x0A | 0xD1 => 3,
        _ => return None,
    };
    Some(h.parameters[i]).filter(|&a| a != 0)
}

/// The driver a 64-bit small (triage) dump names as the one the crash happened in: the
/// loaded module whose image holds the faulting address of the bugcheck (its base name,
/// `csagent.sys`), else `None` (another kind of dump, a bugcheck with no such address, an
/// address in no listed module, or a list that does not fit the file).
///
/// Layout (after the 8 KiB `DUMP_HEADER64`, `TRIAGE_DUMP64` at 0x2000): `DriverListOffset` at
/// +0x30, `DriverCount` at +0x34, `StringPoolOffset` at +0x38 and `StringPoolSize` at +0x3c,
/// offsets from the start of the file. Each `DUMP_DRIVER_ENTRY64` is 0x90 bytes: the offset of
/// its name (a `DUMP_STRING`: u32 length in UTF-16 units, then the units) at 0, and the
/// module's `KLDR_DATA_TABLE_ENTRY64` at 8, whose `DllBase` is at +0x30 and `SizeOfImage` at
/// +0x40.
pub fn faulting_driver(b: &[u8], h: &DumpHeader) -> Option<String> {
    const TRIAGE: usize = 0x2000;
    const ENTRY: usize = 0x90;
    const MAX_DRIVERS: usize = 4096;
    if h.bits != 64 || !h.kind.starts_with("small") {
        return None;
    }
    let addr = fault_address(h)?;
    let list = usize::try_from(u32_at(b, TRIAGE + 0x30)?).ok()?;
    let count = usize::try_from(u32_at(b, TRIAGE + 0x34)?).ok()?;
    if count == 0 || count > MAX_DRIVERS || list < TRIAGE {
        return None;
    }
    for i in 0..count {
        let e = list.checked_add(i * ENTRY)?;
        let base = u64_at(b, e + 8 + 0x30)?;
        let size = u64::from(u32_at(b, e + 8 + 0x40)?);
        if base == 0 || !(base..base.saturating_add(size)).contains(&addr) {
            continue;
        }
        let name_at = usize::try_from(u32_at(b, e)?).ok()?;
        let units = usize::try_from(u32_at(b, name_at)?).ok()?.min(260);
        let raw = b.get(name_at + 4..name_at + 4 + 2 * units)?;
        let wide: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let full = String::from_utf16_lossy(&wide);
        let name: String = full
            .rsplit(['\\', '/'])
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(fleet::agent::MAX_NAME)
            .collect();
        return (!name.is_empty()).then_some(name);
    }
    None
}

/// The header of a dump from its first bytes (at least [`HEADER_BYTES`] for a 64-bit dump).
pub fn parse(b: &[u8]) -> Result<DumpHeader, String> {
    if b.len() < 8 || &b[..4] != b"PAGE" {
        return Err("not a Windows kernel dump (no PAGE signature)".into());
    }
    match &b[4..8] {
        b"DU64" => {
            if b.len() < 0xfb0 {
                return Err(format!("64-bit dump header cut short ({} bytes)", b.len()));
            }
            let p = |i: usize| u64_at(b, 0x40 + 8 * i).unwrap_or(0);
            Ok(DumpHeader {
                bits: 64,
                build: u32_at(b, 0x0c).unwrap_or(0),
                bugcheck: u32_at(b, 0x38).unwrap_or(0),
                parameters: [p(0), p(1), p(2), p(3)],
                time_unix: u64_at(b, 0xfa8).and_then(filetime_to_unix),
                kind: kind_name(u32_at(b, 0xf98).unwrap_or(0)),
            })
        }
        b"DUMP" => {
            if b.len() < 0x34 {
                return Err(format!("32-bit dump header cut short ({} bytes)", b.len()));
            }
            let p = |i: usize| u64::from(u32_at(b, 0x24 + 4 * i).unwrap_or(0));
            Ok(DumpHeader {
                bits: 32,
                build: u32_at(b, 0x0c).unwrap_or(0),
                bugcheck: u32_at(b, 0x20).unwrap_or(0),
                parameters: [p(0), p(1), p(2), p(3)],
                time_unix: None,
                kind: "32-bit".into(),
            })
        }
        other => Err(format!(
            "unknown dump signature PAGE{}",
            String::from_utf8_lossy(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump64(code: u32, params: [u64; 4], dump_type: u32, filetime: u64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        b[..8].copy_from_slice(b"PAGEDU64");
        b[0x08..0x0c].copy_from_slice(&0xfu32.to_le_bytes());
        b[0x0c..0x10].copy_from_slice(&19045u32.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&code.to_le_bytes());
        for (i, p) in params.iter().enumerate() {
            b[0x40 + 8 * i..0x48 + 8 * i].copy_from_slice(&p.to_le_bytes());
        }
        b[0xf98..0xf9c].copy_from_slice(&dump_type.to_le_bytes());
        b[0xfa8..0xfb0].copy_from_slice(&filetime.to_le_bytes());
        b
    }

    #[test]
    fn a_64_bit_minidump_header() {
        // 2024-07-19 04:09:00 UTC as FILETIME.
        let ft = (1_721_362_140u64 + 11_644_473_600) * 10_000_000;
        let b = dump64(
            0x50,
            [0xffff_840e_1234_0000, 0, 0xffff_f807_6a2b_1c3d, 2],
            4,
            ft,
        );
        let h = parse(&b).unwrap();
        assert_eq!(h.bits, 64);
        assert_eq!(h.build, 19045);
        assert_eq!(h.bugcheck, 0x50);
        assert_eq!(h.parameters[2], 0xffff_f807_6a2b_1c3d);
        assert_eq!(h.time_unix, Some(1_721_362_140));
        assert_eq!(h.kind, "small (minidump)");
        assert_eq!(
            bugcheck_name(h.bugcheck),
            Some("PAGE_FAULT_IN_NONPAGED_AREA")
        );
    }

    #[test]
    fn bad_dumps_say_what_is_wrong() {
        assert!(parse(b"MDMP\x93\xa7").unwrap_err().contains("no PAGE"));
        assert!(parse(b"PAGEXXXX").unwrap_err().contains("PAGEXXXX"));
        let b = dump64(0x7e, [0; 4], 1, 0);
        assert!(parse(&b[..0x100]).unwrap_err().contains("cut short"));
        assert_eq!(parse(&b).unwrap().time_unix, None);
        // Any bytes after the signature: an answer or an error, never a panic.
        for n in 0..64 {
            let _ = parse(&b[..n]);
        }
    }

    /// A small dump whose driver list has `drivers` (name, base, size), in the layout
    /// Windows 10 writes (checked against a real 19041 triage dump).
    fn triage64(code: u32, params: [u64; 4], drivers: &[(&str, u64, u32)]) -> Vec<u8> {
        let mut b = dump64(code, params, 4, 0);
        b.resize(0x3000, 0);
        let list = 0x2100usize;
        let pool = list + 0x90 * drivers.len();
        b[0x2030..0x2034].copy_from_slice(&(list as u32).to_le_bytes());
        b[0x2034..0x2038].copy_from_slice(&(drivers.len() as u32).to_le_bytes());
        b.resize(pool, 0);
        for (i, (name, base, size)) in drivers.iter().enumerate() {
            let e = list + 0x90 * i;
            let at = b.len() as u32;
            b[e..e + 4].copy_from_slice(&at.to_le_bytes());
            b[e + 0x38..e + 0x40].copy_from_slice(&base.to_le_bytes());
            b[e + 0x48..e + 0x4c].copy_from_slice(&size.to_le_bytes());
            let wide: Vec<u16> = name.encode_utf16().chain([0]).collect();
            b.extend_from_slice(&(wide.len() as u32 - 1).to_le_bytes());
            b.extend(wide.iter().flat_map(|u| u.to_le_bytes()));
        }
        b
    }

    #[test]
    fn a_small_dump_names_the_driver_that_holds_the_faulting_address() {
        let drivers = [
            (
                r"\SystemRoot\system32\ntoskrnl.exe",
                0xffff_f804_7ba0_0000,
                0x104_6000,
            ),
            (
                r"\SystemRoot\System32\drivers\CrowdStrike\csagent.sys",
                0xffff_f807_6a20_0000,
                0x20_0000,
            ),
            (
                r"\SystemRoot\System32\drivers\amdppm.sys",
                0xffff_f804_8b58_0000,
                0x3_b000,
            ),
        ];
        // 0x50: the third parameter is the faulting instruction.
        let b = triage64(
            0x50,
            [0xffff_840e_1234_0000, 0, 0xffff_f807_6a2b_1c3d, 2],
            &drivers,
        );
        let h = parse(&b).unwrap();
        assert_eq!(faulting_driver(&b, &h).as_deref(), Some("csagent.sys"));
        // 0x1000007E (as in the real dump): the second parameter.
        let b = triage64(
            0x1000_007e,
            [0xffff_ffff_c000_0005, 0xffff_f804_8b58_334c, 1, 2],
            &drivers,
        );
        let h = parse(&b).unwrap();
        assert_eq!(faulting_driver(&b, &h).as_deref(), Some("amdppm.sys"));
        // An address in no module, a bugcheck without one, a full dump: no name.
        let b = triage64(0x50, [0, 0, 0x1234, 0], &drivers);
        assert_eq!(faulting_driver(&b, &parse(&b).unwrap()), None);
        let b = triage64(0xef, [0xffff_f804_8b58_334c; 4], &drivers);
        assert_eq!(faulting_driver(&b, &parse(&b).unwrap()), None);
        let mut h = parse(&b).unwrap();
        h.kind = "full".into();
        assert_eq!(faulting_driver(&b, &h), None);
    }

    #[test]
    fn a_cut_or_hostile_driver_list_gives_no_name_and_no_panic() {
        let drivers = [(r"\d\x.sys", 0x1000, 0x1000)];
        let b = triage64(0x7e, [0, 0x1800, 0, 0], &drivers);
        let h = parse(&b).unwrap();
        assert_eq!(faulting_driver(&b, &h).as_deref(), Some("x.sys"));
        for n in (0..b.len()).step_by(7) {
            let _ = faulting_driver(&b[..n], &h);
        }
        // A count past the bound, a list before the triage header, a name offset past the end.
        for (off, v) in [(0x2034, 100_000u32), (0x2030, 0x10), (0x2100, u32::MAX)] {
            let mut bad = b.clone();
            bad[off..off + 4].copy_from_slice(&v.to_le_bytes());
            assert_eq!(faulting_driver(&bad, &h), None, "{off:#x}");
        }
    }

    #[test]
    fn a_32_bit_dump_header() {
        let mut b = vec![0u8; 0x1000];
        b[..8].copy_from_slice(b"PAGEDUMP");
        b[0x20..0x24].copy_from_slice(&0xd1u32.to_le_bytes());
        b[0x24..0x28].copy_from_slice(&0x10u32.to_le_bytes());
        let h = parse(&b).unwrap();
        assert_eq!((h.bits, h.bugcheck, h.parameters[0]), (32, 0xd1, 0x10));
        assert_eq!(bugcheck_name(0xd1), Some("DRIVER_IRQL_NOT_LESS_OR_EQUAL"));
    }
}
