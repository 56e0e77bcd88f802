//! BitLocker (BITLK) volume metadata, read-only and pure: the volume GUID, the encryption
//! method and the key protectors (their GUIDs are what escrowed recovery keys are filed under:
//! Active Directory's `msFVE-RecoveryGuid`, Entra ID's key ID, the "Key ID" on the recovery
//! screen). Layout as documented by the libbde project and implemented by cryptsetup's
//! `bitlkDump`, which the tests compare against on real Windows-made volumes.
use crate::Error;
use std::fmt;

/// The BitLocker volume-header GUID at 0xA0 (Windows 7 and later), in on-disk order.
const FVE_GUID: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
/// The GUID Windows writes at 0xA0 while encryption or decryption is in progress: the volume is
/// only partially encrypted.
const PARTIAL_GUID: [u8; 16] = [
    0x3b, 0x4d, 0xa8, 0x92, 0x80, 0xdd, 0x0e, 0x4d, 0x9e, 0x4e, 0xb1, 0xe3, 0x28, 0x4e, 0xae, 0xd8,
];
/// BitLocker To Go (a FAT-looking volume, OEM name `MSWIN4.1`) keeps the same GUID at 0x1A8 and
/// the metadata offsets at 0x1B8.
const TOGO_GUID_AT: usize = 0x1a8;

/// What protects one copy of the volume master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectorKind {
    /// The key is stored in the clear (protection suspended).
    ClearKey,
    /// TPM only.
    Tpm,
    /// A startup key on a USB stick.
    StartupKey,
    /// TPM and PIN.
    TpmAndPin,
    /// A 48-digit recovery password.
    RecoveryPassword,
    /// A password.
    Password,
    /// A smart card.
    SmartCard,
    /// A kind this parser does not name.
    Other(u16),
}

impl ProtectorKind {
    fn from_u16(v: u16) -> Self {
        match v {
            0x0000 => Self::ClearKey,
            0x0100 => Self::Tpm,
            0x0200 => Self::StartupKey,
            0x0500 => Self::TpmAndPin,
            0x0800 => Self::RecoveryPassword,
            0x1000 => Self::SmartCard,
            0x2000 => Self::Password,
            n => Self::Other(n),
        }
    }
}

impl fmt::Display for ProtectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClearKey => f.write_str("clear key"),
            Self::Tpm => f.write_str("TPM"),
            Self::StartupKey => f.write_str("startup key"),
            Self::TpmAndPin => f.write_str("TPM and PIN"),
            Self::RecoveryPassword => f.write_str("recovery password"),
            Self::Password => f.write_str("password"),
            Self::SmartCard => f.write_str("smart card"),
            Self::Other(n) => write!(f, "protection 0x{n:04x}"),
        }
    }
}

/// One key protector of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protector {
    /// Lower-case GUID, e.g. `64311dea-4587-4029-924a-ba299647998e`.
    pub guid: String,
    /// Its kind.
    pub kind: ProtectorKind,
}

/// What a BitLocker volume's FVE metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The volume's GUID.
    pub volume_guid: String,
    /// Encryption method code (e.g. 0x8004 AES-XTS-128).
    pub method: u16,
    /// The description Windows wrote (computer name, drive, date).
    pub description: Option<String>,
    /// Its key protectors.
    pub protectors: Vec<Protector>,
    /// A BitLocker To Go volume.
    pub to_go: bool,
    /// Encryption or decryption was in progress (the header carries the transition GUID; cryptsetup
    /// calls it "encrypt-on-write" and will not activate it): the volume is partly plain, partly
    /// encrypted. unbrick refuses to unlock such a volume.
    pub partially_encrypted: bool,
}

impl Info {
    /// The protectors an escrowed recovery password can open.
    pub fn recovery_ids(&self) -> Vec<&str> {
        self.protectors
            .iter()
            .filter(|p| p.kind == ProtectorKind::RecoveryPassword)
            .map(|p| p.guid.as_str())
            .collect()
    }

    /// The encryption method's name (`AES-XTS-128`).
    pub fn method_name(&self) -> &'static str {
        match self.method {
            0x8000 => "aes-cbc-128 with diffuser (elephant)",
            0x8001 => "aes-cbc-256 with diffuser (elephant)",
            0x8002 => "aes-cbc-128",
            0x8003 => "aes-cbc-256",
            0x8004 => "aes-xts-128",
            0x8005 => "aes-xts-256",
            _ => "unknown",
        }
    }
}

/// Formats a GUID stored the Microsoft way (first three fields little-endian).
pub fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Whether a boot sector is a BitLocker volume (either layout).
pub fn is_bitlocker(boot: &[u8]) -> bool {
    boot.get(3..11) == Some(b"-FVE-FS-")
        || boot.get(TOGO_GUID_AT..TOGO_GUID_AT + 16) == Some(&FVE_GUID[..])
}

/// Reads the metadata. `read_at(offset, len)` reads from the volume (a partition device or an
/// image file). The first metadata copy that parses wins (Windows keeps three).
pub fn read(
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> Result<Info, Error> {
    let boot = read_at(0, 512).map_err(|e| Error::Metadata(format!("boot sector: {e}")))?;
    let mut partial = false;
    let (offsets_at, to_go) =
        if boot.get(3..11) == Some(b"-FVE-FS-") {
            match boot.get(0xa0..0xb0) {
                Some(g) if g == FVE_GUID => {}
                Some(g) if g == PARTIAL_GUID => partial = true,
                _ => return Err(Error::Metadata(
                    "BitLocker volume with an unsupported header (Windows Vista era?); not touched"
                        .into(),
                )),
            }
            (0xb0, false)
        } else if boot.get(TOGO_GUID_AT..TOGO_GUID_AT + 16) == Some(&FVE_GUID[..]) {
            (0x1b8, true)
        } else {
            return Err(Error::Metadata("not a BitLocker volume".into()));
        };
    let mut last = String::from("no metadata copy");
    for k in 0..3 {
        let off = u64_at(&boot, offsets_at + 8 * k)
            .ok_or_else(|| Error::Metadata("short boot sector".into()))?;
        if off == 0 {
            continue;
        }
        match read_at(off, 64 * 1024)
            .map_err(|e| Error::Metadata(format!("metadata at {off}: {e}")))
            .and_then(|b| parse_block(&b, to_go))
        {
            Ok(mut i) => {
                i.partially_encrypted = partial;
                return Ok(i);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(Error::Metadata(format!(
        "no readable BitLocker metadata: {last}"
    )))
}

/// One FVE metadata block: 64-byte block header, 48-byte metadata header, entries.
fn parse_block(b: &[u8], to_go: bool) -> Result<Info, Error> {
    if b.get(0..8) != Some(b"-FVE-FS-") {
        return Err(Error::Metadata(
            "metadata block without its signature".into(),
        ));
    }
    let version = u16_at(b, 10).ok_or_else(|| Error::Metadata("short block".into()))?;
    if version != 2 {
        return Err(Error::Metadata(format!(
            "metadata version {version} (only 2, Windows 7 and later)"
        )));
    }
    let h = 64;
    let size = u32_at(b, h).ok_or_else(|| Error::Metadata("short header".into()))? as usize;
    let header_size =
        u32_at(b, h + 8).ok_or_else(|| Error::Metadata("short header".into()))? as usize;
    if header_size != 48 || size < 48 || h + size > b.len() {
        return Err(Error::Metadata(format!(
            "metadata header size {header_size}, size {size}: malformed"
        )));
    }
    let volume_guid = guid(&b[h + 16..h + 32]);
    let method = u16_at(b, h + 36).ok_or_else(|| Error::Metadata("short header".into()))?;
    let mut protectors = Vec::new();
    let mut description = None;
    let mut at = h + 48;
    let end = h + size;
    while at + 8 <= end {
        let len = u16_at(b, at).unwrap_or(0) as usize;
        if len < 8 || at + len > end {
            break;
        }
        let etype = u16_at(b, at + 2).unwrap_or(0);
        let vtype = u16_at(b, at + 4).unwrap_or(0);
        let data = &b[at + 8..at + len];
        match (etype, vtype) {
            // Volume master key: protector GUID, time, flags, protection type.
            (2, 8) if data.len() >= 28 => protectors.push(Protector {
                guid: guid(&data[..16]),
                kind: ProtectorKind::from_u16(u16_at(data, 26).unwrap_or(0xffff)),
            }),
            // Description: UTF-16LE.
            (7, 2) => {
                let u: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|c| *c != 0)
                    .collect();
                description = Some(String::from_utf16_lossy(&u));
            }
            _ => {}
        }
        at += len;
    }
    if protectors.is_empty() {
        return Err(Error::Metadata("metadata lists no key protector".into()));
    }
    Ok(Info {
        volume_guid,
        method,
        description,
        protectors,
        to_go,
        partially_encrypted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    /// The real Windows-made headers of ../shared/testdata (cryptsetup's test images), unpacked
    /// once per test run into the build's own folder (target/), which keeps it: no copy is left
    /// in /tmp by each run.
    fn images() -> Option<PathBuf> {
        static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let tar = root.join("../../shared/testdata/bitlk-images.tar.xz");
            if !tar.exists() {
                return None;
            }
            let dir = root.join("../target/bitlk-test-images");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let st = std::process::Command::new("tar")
                .arg("xJf")
                .arg(&tar)
                .arg("-C")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
            Some(dir.join("bitlk-images"))
        })
        .clone()
    }

    fn read_file(p: &Path) -> Result<Info, Error> {
        let mut f = std::fs::File::open(p).unwrap();
        read(&mut |off, len| {
            f.seek(SeekFrom::Start(off))?;
            let mut b = vec![0u8; len];
            let n = f.read(&mut b)?;
            b.truncate(n);
            Ok(b)
        })
    }

    #[test]
    fn every_windows_image_matches_images_conf_and_cryptsetup() {
        let Some(dir) = images() else {
            panic!("../shared/testdata/bitlk-images.tar.xz is missing");
        };
        let conf = std::fs::read_to_string(dir.join("images.conf")).unwrap();
        let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for l in conf.lines() {
            if let Some(n) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((n.to_string(), Vec::new()));
            } else if let Some((k, v)) = l.split_once('=') {
                sections
                    .last_mut()
                    .unwrap()
                    .1
                    .push((k.to_string(), v.to_string()));
            }
        }
        let mut checked = 0;
        for (name, kv) in &sections {
            let img = dir.join(format!("{name}.img"));
            if !img.exists() {
                continue;
            }
            let get = |k: &str| {
                kv.iter()
                    .find(|(x, _)| x == k)
                    .map(|(_, v)| v.to_lowercase())
                    .filter(|v| !v.is_empty())
            };
            let info = read_file(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
            // cryptsetup refuses to activate both ("encrypt-on-write"): the header says the
            // conversion is not finished.
            assert_eq!(
                info.partially_encrypted,
                name.contains("partially") || name.ends_with("-eow"),
                "{name}"
            );
            assert_eq!(info.to_go, name.contains("togo"), "{name}");
            if let Some(g) = get("GUID") {
                assert_eq!(info.volume_guid, g, "{name}: volume GUID");
            }
            if let Some(rp) = get("RP_VMK_GUID") {
                assert!(
                    info.recovery_ids().contains(&rp.as_str()),
                    "{name}: {info:?}"
                );
            }
            if let Some(pw) = get("PW_VMK_GUID") {
                assert!(
                    info.protectors
                        .iter()
                        .any(|p| p.guid == pw && p.kind == ProtectorKind::Password),
                    "{name}: {info:?}"
                );
            }
            if let Some(ck) = get("CLEARKEY_VMK_GUID") {
                assert!(
                    info.protectors
                        .iter()
                        .any(|p| p.guid == ck && p.kind == ProtectorKind::ClearKey),
                    "{name}: {info:?}"
                );
            }
            // The same protectors as cryptsetup's bitlkDump (a real peer).
            let dump = std::process::Command::new("cryptsetup")
                .arg("bitlkDump")
                .arg(&img)
                .output();
            if let Ok(o) = dump {
                if o.status.success() {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let theirs: Vec<String> = text
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("GUID:"))
                        .map(|g| g.trim().to_string())
                        .skip(1) // the volume GUID
                        .collect();
                    let ours: Vec<String> =
                        info.protectors.iter().map(|p| p.guid.clone()).collect();
                    assert_eq!(ours, theirs, "{name}: protectors differ from bitlkDump");
                }
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} images checked");
    }

    #[test]
    fn not_bitlocker_and_damaged_headers_are_errors() {
        let mut zero = |_: u64, len: usize| Ok(vec![0u8; len]);
        assert!(read(&mut zero)
            .unwrap_err()
            .to_string()
            .contains("not a BitLocker"));
        let mut vista = |_: u64, len: usize| {
            let mut b = vec![0u8; len];
            b[3..11].copy_from_slice(b"-FVE-FS-");
            Ok(b)
        };
        assert!(read(&mut vista).unwrap_err().to_string().contains("Vista"));
        let mut broken = |off: u64, len: usize| {
            let mut b = vec![0u8; len];
            if off == 0 {
                b[3..11].copy_from_slice(b"-FVE-FS-");
                b[0xa0..0xb0].copy_from_slice(&FVE_GUID);
                b[0xb0..0xb8].copy_from_slice(&4096u64.to_le_bytes());
            } else {
                b[0..8].copy_from_slice(b"-FVE-FS-");
                b[10] = 2;
                b[64..68].copy_from_slice(&60_000u32.to_le_bytes());
            }
            Ok(b)
        };
        assert!(read(&mut broken)
            .unwrap_err()
            .to_string()
            .contains("malformed"));
        assert_eq!(guid(&FVE_GUID), "4967d63b-2e29-4ad8-8399-f6a339e3d001");
    }
}
