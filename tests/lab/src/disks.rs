//! Test disks as ../shared/lab/LAB.md describes, without loop devices or kernel NTFS on the host:
//! sparse images partitioned with sgdisk (GPT) or sfdisk (MBR), NTFS made by mkntfs on a
//! partition-sized file, populated through ntfs-3g (FUSE), then copied into place.
use crate::lab::{must, run, sh};
use crate::Error;
use std::path::{Path, PathBuf};

/// The first bytes of a CrowdStrike channel file (what the rules match).
pub const MAGIC: [u8; 8] = [0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01];
const DIRTY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/blackbox/helpers/ntfs_dirty.py"
);

/// A file to put on a volume: path (with `/`), content, last-write time (UTC, `touch -d` syntax).
pub struct File {
    /// Path on the volume, `/`-separated.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Last-write time (`touch -d` syntax, UTC).
    pub mtime: String,
}

/// One NTFS volume to make.
pub struct Volume {
    /// Its label.
    pub label: String,
    /// Its files.
    pub files: Vec<File>,
    /// Mark it dirty (as a crashed Windows leaves it).
    pub dirty: bool,
}

/// The partition table.
#[derive(Clone, Copy, PartialEq)]
pub enum Table {
    /// GPT with ESP and MSR first.
    Gpt,
    /// MBR.
    Mbr,
}

/// A made disk image.
pub struct Disk {
    /// The image file.
    pub path: PathBuf,
    /// (start sector, sector count) of each NTFS volume, in order.
    pub parts: Vec<(u64, u64)>,
}

/// A channel file of `len` bytes after the magic, its content a function of `seed`.
pub fn channel_file(seed: u8, len: usize) -> Vec<u8> {
    MAGIC
        .iter()
        .copied()
        .chain((0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)))
        .collect()
}

/// Makes a 320 MiB disk: on GPT an ESP and an MSR first (as Windows lays it out), then one
/// 64 MiB NTFS partition per volume; on MBR just the NTFS partitions.
pub fn try_make_disk(dir: &Path, name: &str, table: Table, vols: &[Volume]) -> Result<Disk, Error> {
    let path = dir.join(format!("{name}.img"));
    let _ = std::fs::remove_file(&path);
    run(&format!("truncate -s 320M {}", path.display()))?;
    let mut parts = Vec::new();
    let size: u64 = 64 * 2048;
    match table {
        Table::Gpt => {
            let mut cmd = String::from("sgdisk -o -n 1:2048:+16M -t 1:ef00 -n 2:0:+16M -t 2:0c01");
            for i in 0..vols.len() {
                cmd += &format!(" -n {}:0:+64M -t {}:0700", i + 3, i + 3);
            }
            run(&format!("{cmd} {}", path.display()))?;
            for i in 0..vols.len() {
                let info = run(&format!("sgdisk -i {} {}", i + 3, path.display()))?;
                let first: u64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix("First sector: "))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        Error::Io(format!("sgdisk -i {}: no first sector in {info:?}", i + 3))
                    })?;
                parts.push((first, size));
            }
        }
        Table::Mbr => {
            let mut script = String::from("label: dos\n");
            for i in 0..vols.len() {
                script += &format!("{},{},7\n", 2048 + i as u64 * (size + 2048), size);
                parts.push((2048 + i as u64 * (size + 2048), size));
            }
            std::fs::write(dir.join(format!("{name}.sfdisk")), script)
                .map_err(|e| Error::Io(e.to_string()))?;
            run(&format!(
                "sfdisk -q {} < {}",
                path.display(),
                dir.join(format!("{name}.sfdisk")).display()
            ))?;
        }
    }
    for (v, (start, count)) in vols.iter().zip(&parts) {
        let part = dir.join(format!("{name}-{}.ntfs", v.label));
        let mnt = dir.join(format!("{name}-{}.mnt", v.label));
        let _ = std::fs::remove_file(&part);
        std::fs::create_dir_all(&mnt).map_err(|e| Error::Io(e.to_string()))?;
        run(&format!("truncate -s {} {}", count * 512, part.display()))?;
        run(&format!(
            "mkntfs -F -Q -q -s 512 -L {} -p {start} -H 255 -S 63 {}",
            v.label,
            part.display()
        ))?;
        run(&format!("ntfs-3g {} {}", part.display(), mnt.display()))?;
        // The FUSE mount comes down whatever happens while the files are written.
        let written = v.files.iter().try_for_each(|f| {
            let p = mnt.join(&f.path);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::Io(e.to_string()))?;
            }
            std::fs::write(&p, &f.data).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
            run(&format!("touch -d '{}' '{}'", f.mtime, p.display())).map(drop)
        });
        run(&format!("umount {}", mnt.display()))?;
        written?;
        if v.dirty {
            run(&format!("python3 {DIRTY} {}", part.display()))?;
        }
        run(&format!(
            "dd if={} of={} bs=1M seek={} oflag=seek_bytes conv=notrunc,sparse status=none",
            part.display(),
            path.display(),
            start * 512
        ))?;
        std::fs::remove_file(&part).map_err(|e| Error::Io(e.to_string()))?;
    }
    Ok(Disk { path, parts })
}

/// [`try_make_disk`] for tests: panics with the failing command.
pub fn make_disk(dir: &Path, name: &str, table: Table, vols: &[Volume]) -> Disk {
    try_make_disk(dir, name, table, vols).unwrap_or_else(|e| panic!("{e}"))
}

impl Disk {
    /// Makes volume `i` unmountable but still recognisably NTFS: its boot sector stays, the
    /// first records of $MFT and of $MFTMirr are zeroed (ntfs3 then refuses to mount it).
    pub fn break_mft(&self, i: usize) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let (start, _) = self.parts[i];
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let base = start * 512;
        let mut boot = [0u8; 512];
        f.seek(SeekFrom::Start(base)).unwrap();
        f.read_exact(&mut boot).unwrap();
        assert_eq!(&boot[3..11], b"NTFS    ");
        let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
        for off in [0x30, 0x38] {
            let lcn = u64::from_le_bytes(boot[off..off + 8].try_into().unwrap());
            f.seek(SeekFrom::Start(base + lcn * cluster)).unwrap();
            f.write_all(&[0u8; 16 * 1024]).unwrap();
        }
        f.sync_all().unwrap();
    }

    /// Copies volume `i` out of the disk (after the guest ran) for ntfsprogs.
    pub fn extract(&self, i: usize) -> PathBuf {
        let (start, count) = self.parts[i];
        let out = self.path.with_extension(format!("part{i}"));
        must(&format!(
            "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
            self.path.display(),
            out.display(),
            start * 512,
            count * 512
        ));
        out
    }
}

/// `ntfscat -f` of a path on an extracted volume, or None when it does not exist.
pub fn ntfs_read(part: &Path, path: &str) -> Option<Vec<u8>> {
    let o = sh(&format!("ntfscat -f {} '{}'", part.display(), path));
    o.status.success().then_some(o.stdout)
}

/// The names in `dir` of the NTFS file system in `part` (ntfsls).
pub fn ntfs_ls(part: &Path, dir: &str) -> Vec<String> {
    let o = sh(&format!("ntfsls -f -p '{}' {}", dir, part.display()));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
