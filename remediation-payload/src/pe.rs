//! The version resource of a PE file (a Windows driver, DLL or program): company, product,
//! file version, description, read from the `RT_VERSION` resource (`VS_VERSIONINFO`, its
//! `VS_FIXEDFILEINFO` and the first `StringFileInfo` table) as Microsoft's PE/COFF
//! specification and the VERSIONINFO resource documentation lay them out.
//!
//! Pure and bounded: every offset is checked against the bytes given, nesting is limited, and a
//! file that is not PE or has no version resource is `Ok(None)`; a damaged one is an error
//! with the reason. What it returns is what the file says about itself: shown to the admin,
//! never trusted for a decision.

/// What a PE file's version resource says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionInfo {
    /// `VS_FIXEDFILEINFO`'s file version, `a.b.c.d`.
    pub fixed_version: Option<String>,
    /// The `FileVersion` string.
    pub file_version: Option<String>,
    /// `ProductName`.
    pub product: Option<String>,
    /// `CompanyName`.
    pub company: Option<String>,
    /// `FileDescription`.
    pub description: Option<String>,
}

/// The longest string kept from the resource.
pub const MAX_STRING: usize = 128;

const RT_VERSION: u32 = 16;
const FIXED_SIGNATURE: u32 = 0xFEEF_04BD;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Whether `bytes` start like a PE file (`MZ`, then `PE\0\0` where `e_lfanew` points).
pub fn is_pe(bytes: &[u8]) -> bool {
    bytes.starts_with(b"MZ")
        && u32_at(bytes, 0x3c)
            .and_then(|o| bytes.get(o as usize..(o as usize).checked_add(4)?))
            .is_some_and(|s| s == b"PE\0\0")
}

struct Section {
    va: u32,
    vsize: u32,
    raw_size: u32,
    raw_ptr: u32,
}

/// The version resource of the PE file in `bytes`: `Ok(None)` when it is not a PE file or has
/// no version resource.
pub fn version_info(bytes: &[u8]) -> Result<Option<VersionInfo>, String> {
    if !is_pe(bytes) {
        return Ok(None);
    }
    let bad = |what: &str| format!("damaged PE file: {what}");
    let pe = u32_at(bytes, 0x3c).ok_or_else(|| bad("e_lfanew"))? as usize;
    let coff = pe + 4;
    let sections = u16_at(bytes, coff + 2).ok_or_else(|| bad("COFF header"))? as usize;
    let opt_size = u16_at(bytes, coff + 16).ok_or_else(|| bad("COFF header"))? as usize;
    let opt = coff + 20;
    let (count_at, dirs_at) = match u16_at(bytes, opt).ok_or_else(|| bad("optional header"))? {
        0x10b => (92, 96),
        0x20b => (108, 112),
        m => return Err(bad(&format!("optional header magic 0x{m:x}"))),
    };
    let dirs = u32_at(bytes, opt + count_at).ok_or_else(|| bad("optional header"))?;
    if dirs <= 2 || opt_size < dirs_at + 3 * 8 {
        return Ok(None);
    }
    let res_rva = u32_at(bytes, opt + dirs_at + 16).ok_or_else(|| bad("data directory"))?;
    let res_size = u32_at(bytes, opt + dirs_at + 20).ok_or_else(|| bad("data directory"))?;
    if res_rva == 0 || res_size == 0 {
        return Ok(None);
    }
    let table = opt + opt_size;
    let mut secs = Vec::new();
    for i in 0..sections.min(96) {
        let s = table + i * 40;
        secs.push(Section {
            vsize: u32_at(bytes, s + 8).ok_or_else(|| bad("section table"))?,
            va: u32_at(bytes, s + 12).ok_or_else(|| bad("section table"))?,
            raw_size: u32_at(bytes, s + 16).ok_or_else(|| bad("section table"))?,
            raw_ptr: u32_at(bytes, s + 20).ok_or_else(|| bad("section table"))?,
        });
    }
    // A relative virtual address as an offset into the file (within its section's raw data).
    let file_off = |rva: u32| -> Option<usize> {
        secs.iter().find_map(|s| {
            let span = s.vsize.max(s.raw_size);
            (rva >= s.va && rva - s.va < span && rva - s.va < s.raw_size)
                .then(|| s.raw_ptr as usize + (rva - s.va) as usize)
        })
    };
    let root = file_off(res_rva).ok_or_else(|| bad("resource directory outside every section"))?;
    // One level of the resource tree: the entry with `id` (or the first when `None`), as
    // (is a subdirectory, offset from the resource root).
    let entry = |dir_off: usize, id: Option<u32>| -> Result<Option<(bool, usize)>, String> {
        let d = root + dir_off;
        let named = u16_at(bytes, d + 12).ok_or_else(|| bad("resource directory"))? as usize;
        let ids = u16_at(bytes, d + 14).ok_or_else(|| bad("resource directory"))? as usize;
        for i in 0..(named + ids).min(4096) {
            let e = d + 16 + i * 8;
            let name = u32_at(bytes, e).ok_or_else(|| bad("resource entry"))?;
            let to = u32_at(bytes, e + 4).ok_or_else(|| bad("resource entry"))?;
            if id.is_none_or(|want| name == want) {
                return Ok(Some((to & 0x8000_0000 != 0, (to & 0x7fff_ffff) as usize)));
            }
        }
        Ok(None)
    };
    let Some((true, types)) = entry(0, Some(RT_VERSION))? else {
        return Ok(None);
    };
    let Some((true, names)) = entry(types, None)? else {
        return Err(bad("version resource without a name level"));
    };
    let Some((false, data_entry)) = entry(names, None)? else {
        return Err(bad("version resource without a language level"));
    };
    let data_rva = u32_at(bytes, root + data_entry).ok_or_else(|| bad("resource data entry"))?;
    let data_len =
        u32_at(bytes, root + data_entry + 4).ok_or_else(|| bad("resource data entry"))?;
    let start = file_off(data_rva).ok_or_else(|| bad("version data outside every section"))?;
    let data = bytes
        .get(start..start.saturating_add(data_len as usize).min(bytes.len()))
        .ok_or_else(|| bad("version data past the end of the file"))?;
    parse_version_block(data).map(Some)
}

/// One block of a version resource: its key, its value's bytes and its children's bytes.
struct Block<'a> {
    key: String,
    value: &'a [u8],
    value_words: usize,
    is_text: bool,
    children: &'a [u8],
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The block at the start of `b` and the length it takes (aligned), or `None` when damaged.
fn block(b: &[u8]) -> Option<(Block<'_>, usize)> {
    let len = u16_at(b, 0)? as usize;
    let value_len = u16_at(b, 2)? as usize;
    let kind = u16_at(b, 4)?;
    if len < 6 || len > b.len() {
        return None;
    }
    let b = &b[..len];
    let mut key = Vec::new();
    let mut at = 6;
    loop {
        let c = u16_at(b, at)?;
        at += 2;
        if c == 0 {
            break;
        }
        key.push(c);
    }
    let value_at = align4(at).min(len);
    // Text values count their length in 16-bit words, binary ones in bytes (some tools write
    // bytes for text too: a text value is cut at its NUL). Containers (StringFileInfo, a
    // string table) have no value, whatever their type says.
    let value_bytes = if kind == 1 {
        value_len.saturating_mul(2)
    } else {
        value_len
    }
    .min(len - value_at);
    let value = &b[value_at..value_at + value_bytes];
    let children_at = align4(value_at + value_bytes).min(len);
    Some((
        Block {
            key: String::from_utf16_lossy(&key),
            value,
            value_words: value_len,
            is_text: kind == 1,
            children: &b[children_at..],
        },
        align4(len),
    ))
}

/// The blocks in `b`, one after the other.
fn blocks(mut b: &[u8]) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    while b.len() >= 6 && out.len() < 256 {
        let Some((blk, used)) = block(b) else { break };
        out.push(blk);
        b = b.get(used..).unwrap_or(&[]);
    }
    out
}

fn text(v: &[u8]) -> String {
    let words: Vec<u16> = v
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf16_lossy(&words)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_STRING)
        .collect::<String>()
        .trim()
        .to_string()
}

fn parse_version_block(data: &[u8]) -> Result<VersionInfo, String> {
    let (root, _) = block(data).ok_or("damaged version resource")?;
    if root.key != "VS_VERSION_INFO" {
        return Err(format!("version resource key {:?}", root.key));
    }
    let mut info = VersionInfo::default();
    if root.value.len() >= 52 && u32_at(root.value, 0) == Some(FIXED_SIGNATURE) {
        let ms = u32_at(root.value, 8).unwrap_or(0);
        let ls = u32_at(root.value, 12).unwrap_or(0);
        info.fixed_version = Some(format!(
            "{}.{}.{}.{}",
            ms >> 16,
            ms & 0xffff,
            ls >> 16,
            ls & 0xffff
        ));
    }
    for sfi in blocks(root.children)
        .into_iter()
        .filter(|b| b.key == "StringFileInfo")
    {
        // The first string table (one per language) is the one shown.
        let Some(table) = blocks(sfi.children).into_iter().next() else {
            continue;
        };
        for s in blocks(table.children) {
            let v = if s.is_text || s.value_words > 0 {
                text(s.value)
            } else {
                String::new()
            };
            if v.is_empty() {
                continue;
            }
            let slot = match s.key.as_str() {
                "FileVersion" => &mut info.file_version,
                "ProductName" => &mut info.product,
                "CompanyName" => &mut info.company,
                "FileDescription" => &mut info.description,
                _ => continue,
            };
            slot.get_or_insert(v);
        }
        break;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE linked by GNU binutils for Windows (x86_64-w64-mingw32-ld) with a VERSIONINFO
    /// resource compiled by windres: made by the tools at test time, so the layout read here is
    /// theirs, not ours. The test command installs them (binutils-mingw-w64-x86-64).
    fn windres_driver(dir: &std::path::Path) -> Vec<u8> {
        let rc = r#"1 VERSIONINFO
FILEVERSION 7,11,18110,0
PRODUCTVERSION 7,11,0,0
FILEOS 0x40004
FILETYPE 3
BEGIN
  BLOCK "StringFileInfo"
  BEGIN
    BLOCK "040904b0"
    BEGIN
      VALUE "CompanyName", "Example Security Ltd."
      VALUE "FileDescription", "Example sensor driver"
      VALUE "FileVersion", "7.11.18110.0"
      VALUE "ProductName", "Example Sensor"
    END
  END
  BLOCK "VarFileInfo"
  BEGIN
    VALUE "Translation", 0x409, 1200
  END
END
"#;
        std::fs::write(dir.join("v.rc"), rc).unwrap();
        std::fs::write(dir.join("s.s"), ".globl start\nstart:\n  ret\n").unwrap();
        let run = |cmd: &str| {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir)
                .output()
                .expect("sh");
            assert!(
                o.status.success(),
                "{cmd}: {} (the test command installs binutils-mingw-w64-x86-64)",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run("x86_64-w64-mingw32-windres --preprocessor=cpp -O coff v.rc -o v.o");
        run("x86_64-w64-mingw32-as s.s -o s.o");
        run("x86_64-w64-mingw32-ld --subsystem native -e start -o sensor.sys s.o v.o");
        std::fs::read(dir.join("sensor.sys")).unwrap()
    }

    #[test]
    fn reads_the_version_resource_binutils_wrote() {
        let dir = std::env::temp_dir().join(format!("unbrick-pe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pe = windres_driver(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(is_pe(&pe));
        let v = version_info(&pe).unwrap().expect("a version resource");
        assert_eq!(v.fixed_version.as_deref(), Some("7.11.18110.0"));
        assert_eq!(v.file_version.as_deref(), Some("7.11.18110.0"));
        assert_eq!(v.company.as_deref(), Some("Example Security Ltd."));
        assert_eq!(v.product.as_deref(), Some("Example Sensor"));
        assert_eq!(v.description.as_deref(), Some("Example sensor driver"));
        // Every cut of it is an answer or an error, never a panic.
        for n in (0..pe.len()).step_by(7) {
            let _ = version_info(&pe[..n]);
        }
        let mut bent = pe.clone();
        for i in (0x80..bent.len()).step_by(13) {
            bent[i] ^= 0x5a;
            let _ = version_info(&bent);
        }
    }

    #[test]
    fn not_pe_or_no_resource_is_none() {
        assert_eq!(version_info(b"AAAAAAAA01002301 channel file"), Ok(None));
        assert_eq!(version_info(b""), Ok(None));
        // MZ without a PE header.
        let mut mz = vec![0u8; 0x100];
        mz[..2].copy_from_slice(b"MZ");
        mz[0x3c] = 0x80;
        assert_eq!(version_info(&mz), Ok(None));
    }
}
