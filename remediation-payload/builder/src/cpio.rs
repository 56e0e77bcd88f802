//! A deterministic cpio "newc" writer (the initramfs format, see the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst): entries sorted by path, every
//! mtime 0, uid/gid 0, inode numbers in order, so the same inputs always give the same bytes.
use std::collections::BTreeMap;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Its content.
        data: Vec<u8>,
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node (e.g. /dev/console 5:1, so PID 1 has a console from the start).
    CharDev {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
}

/// An initramfs under construction: path (no leading `/`) -> entry. Parent directories are
/// added automatically.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut p = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            self.entries.entry(p.clone()).or_insert(Entry::Dir);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        self.add_parents(path);
        self.entries.insert(path.to_string(), Entry::Dir);
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let path = path.trim_matches('/');
        self.add_parents(path);
        self.entries
            .insert(path.to_string(), Entry::File { data, mode });
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_matches('/');
        self.add_parents(path);
        self.entries
            .insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        let path = path.trim_matches('/');
        self.add_parents(path);
        self.entries
            .insert(path.to_string(), Entry::CharDev { major, minor });
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every path, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The uncompressed cpio bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, e)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | (mode & 0o7777), data, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir) { 2 } else { 1 };
            header(
                &mut out,
                i as u32 + 1,
                mode,
                nlink,
                data.len() as u32,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_determinism() {
        let mut a = Archive::new();
        a.file("init", b"#!agent".to_vec(), 0o755);
        a.file(
            "lib/modules/6.12/kernel/fs/ntfs3/ntfs3.ko.xz",
            vec![1, 2, 3],
            0o644,
        );
        a.symlink("sbin/init", "/init");
        let paths: Vec<&str> = a.paths().collect();
        assert_eq!(
            paths,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "lib/modules/6.12/kernel",
                "lib/modules/6.12/kernel/fs",
                "lib/modules/6.12/kernel/fs/ntfs3",
                "lib/modules/6.12/kernel/fs/ntfs3/ntfs3.ko.xz",
                "sbin",
                "sbin/init"
            ]
        );
        let b = a.to_bytes();
        assert_eq!(b.len() % 4, 0);
        assert!(b.starts_with(b"070701"));
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(b, a.clone().to_bytes(), "same input, same bytes");
    }

    /// GNU cpio reads what we write (list and extract).
    #[test]
    fn gnu_cpio_reads_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!("cpio is needed for this test (scripts/install-deps.sh installs it)");
        }
        let mut a = Archive::new();
        a.file("init", b"hello".to_vec(), 0o755);
        a.file("etc/unbrick/agent.json", b"{}".to_vec(), 0o644);
        a.symlink("bin/sh", "/init");
        let dir = std::env::temp_dir().join(format!("unbrick-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.cpio"), a.to_bytes()).unwrap();
        let o = std::process::Command::new("sh").arg("-c").arg(format!("cd {} && cpio -idm --quiet < a.cpio && cat init && readlink bin/sh && stat -c %a init", dir.display())).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "hello/init\n755\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
