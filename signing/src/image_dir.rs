//! The recovery image directory on disk: its files read in name order, signed into
//! `manifest.json` + `.sig`, and written by rename so no reader sees half a file. Loading and
//! verifying it for serving is the server's job (`netboot_server::image`).
use crate::manifest::{MANIFEST_FILE, SIGNATURE_FILE};
use crate::{KeyPair, Manifest};
use std::path::Path;

/// Reads every regular file of `dir` except the manifest and its signature.
pub fn read_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE || name == SIGNATURE_FILE || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "{}: only plain files belong in an image directory",
                path.display()
            ));
        }
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push((name, data));
    }
    out.sort();
    Ok(out)
}

/// The kernel release string inside a bzImage (setup header `kernel_version`, boot protocol 2.00+).
pub fn bzimage_version(data: &[u8]) -> Option<String> {
    if data.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([*data.get(0x20e)?, *data.get(0x20f)?]) as usize + 0x200;
    let tail = data.get(off..)?;
    let end = tail.iter().position(|b| *b == 0)?;
    let s = std::str::from_utf8(&tail[..end]).ok()?;
    s.split_whitespace().next().map(str::to_string)
}

/// Signs `dir`: writes `manifest.json` and `manifest.json.sig` over every file in it.
/// `kernel` names the kernel artefact whose release goes into the manifest.
pub fn sign_dir(
    dir: &Path,
    kernel: &str,
    key: &KeyPair,
    version: &str,
    now_unix: u64,
) -> Result<Manifest, String> {
    let files = read_files(dir)?;
    let kernel_version = files
        .iter()
        .find(|(n, _)| n == kernel)
        .and_then(|(_, d)| bzimage_version(d))
        .unwrap_or_else(|| "none".into());
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let m = Manifest::new(version, now_unix, &kernel_version, &key.public_key(), &refs)
        .map_err(|e| e.to_string())?;
    write_replacing(dir, MANIFEST_FILE, &m.to_canonical())?;
    write_replacing(dir, SIGNATURE_FILE, m.sign(key).to_text().as_bytes())?;
    Ok(m)
}

/// Writes `dir/name` through a temporary file and a rename, so a reader (or a crash) never sees
/// half a file.
pub fn write_replacing(dir: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
}
