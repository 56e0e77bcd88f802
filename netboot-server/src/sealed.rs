//! The verified image held in a sealed memfd, and a TCP stream that sends its bytes with
//! `sendfile(2)` instead of copying them through user space.
//!
//! The artefacts are written once into an anonymous memory file, which is then sealed against
//! writing, shrinking and growing (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`):
//! from then on no process, this one included, can change a byte of it. The image is verified
//! against its signed manifest *after* sealing, from the mapping that is served, so what goes
//! out is exactly what was verified. Every artefact is a [`Bytes`] slice of that read-only
//! mapping (TFTP reads it, HTTP hands it to hyper as the body).
//!
//! [`ZeroCopy`] wraps the plain-HTTP listener's TCP streams: when hyper writes a buffer that
//! lies inside a sealed mapping (an artefact body), the stream sends those pages from the memfd
//! with `sendfile` (the kernel references the pages; no copy into user space and back), and
//! everything else (headers, boot scripts) with ordinary writes. TLS streams are not wrapped:
//! rustls must encrypt every byte.
// The one mapping: created, read through a slice, unmapped; see the SAFETY notes.
#![allow(unsafe_code)]

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};

/// A sealed, read-only memory file and its mapping.
#[derive(Debug)]
pub struct Sealed {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and its file is sealed against writes, so the memory never
// changes while it is mapped; it is unmapped only when the last reference goes.
unsafe impl Send for Sealed {}
// SAFETY: as above: shared references only ever read immutable memory.
unsafe impl Sync for Sealed {}

/// Bytes sent with `sendfile` from sealed mappings, since the start.
pub static SENDFILE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The sealed mappings alive in this process, for [`locate`].
static MAPPINGS: Mutex<Vec<Weak<Sealed>>> = Mutex::new(Vec::new());

impl Sealed {
    /// A sealed memory file holding `parts` one after another; returns it with each part's
    /// range in it.
    pub fn new<'a>(
        name: &str,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<(Arc<Self>, Vec<std::ops::Range<usize>>)> {
        let cname = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
        let fd = memfd_create(
            &cname,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        let mut ranges = Vec::new();
        let mut at = 0;
        for p in parts {
            file.write_all(p)?;
            ranges.push(at..at + p.len());
            at += p.len();
        }
        // A mapping cannot be empty: an image of empty files still maps one byte.
        if at == 0 {
            file.write_all(&[0])?;
        }
        let len = at.max(1);
        let fd = OwnedFd::from(file);
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let nz = NonZeroUsize::new(len).unwrap_or(NonZeroUsize::MIN);
        // SAFETY: a fresh read-only shared mapping of the whole (sealed) file; nothing else
        // is mapped at an address the kernel picks. Populated at once: the first transfers
        // take no page faults.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                &fd,
                0,
            )?
        };
        let me = Arc::new(Self {
            fd,
            ptr: ptr.cast(),
            len,
        });
        let mut m = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(&me));
        Ok((me, ranges))
    }

    /// The whole mapping.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives, and the sealed
        // file cannot be written or shrunk, so the bytes are initialised and never change.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// `range` of the mapping as [`Bytes`] that keep the mapping alive.
    pub fn bytes(self: &Arc<Self>, range: std::ops::Range<usize>) -> Bytes {
        Bytes::from_owner(Owner(self.clone())).slice(range)
    }

    /// Whether the file really is sealed against every change (what [`Sealed::new`] asked for).
    pub fn is_sealed(&self) -> bool {
        let seals = fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            FcntlArg::F_GET_SEALS,
        )
        .unwrap_or(0);
        let want = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
        SealFlag::from_bits_truncate(seals).contains(want)
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no slice of it outlives `self`
        // (every `Bytes` of it holds an `Arc<Sealed>`).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
        if let Ok(mut m) = MAPPINGS.lock() {
            m.retain(|w| w.strong_count() > 0);
        }
    }
}

/// The owner of [`Sealed::bytes`].
struct Owner(Arc<Sealed>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// The sealed mapping `buf` lies in, with `buf`'s offset in its file.
pub fn locate(buf: &[u8]) -> Option<(Arc<Sealed>, u64)> {
    let start = buf.as_ptr() as usize;
    let end = start.checked_add(buf.len())?;
    let m = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
    m.iter().filter_map(Weak::upgrade).find_map(|s| {
        let base = s.ptr.as_ptr() as usize;
        (start >= base && end <= base + s.len).then(|| (s.clone(), (start - base) as u64))
    })
}

/// A TCP stream whose writes of sealed bytes go out with `sendfile`.
#[derive(Debug)]
pub struct ZeroCopy(pub tokio::net::TcpStream);

impl ZeroCopy {
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        from: &Sealed,
        offset: u64,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            let r = self.0.try_io(tokio::io::Interest::WRITABLE, || {
                let mut off = offset as i64;
                nix::sys::sendfile::sendfile64(self.0.as_fd(), from.fd.as_fd(), Some(&mut off), len)
                    .map_err(std::io::Error::from)
            });
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(n) => {
                    SENDFILE_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncRead for ZeroCopy {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ZeroCopy {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match locate(buf) {
            Some((s, off)) => self.poll_sendfile(cx, &s, off, buf.len()),
            None => std::pin::Pin::new(&mut self.0).poll_write(cx, buf),
        }
    }

    // hyper hands over [head, body]: the plain buffers before the first sealed one go out in one
    // vectored write, a sealed one by itself with sendfile; hyper calls again for the rest.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some((s, off)) = locate(&bufs[first]) {
            return self.poll_sendfile(cx, &s, off, bufs[first].len());
        }
        let plain = bufs[first..]
            .iter()
            .position(|b| !b.is_empty() && locate(b).is_some())
            .map_or(bufs.len(), |n| first + n);
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, &bufs[first..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`ZeroCopy`] streams.
#[derive(Debug)]
pub struct ZeroCopyListener(pub tokio::net::TcpListener);

impl axum::serve::Listener for ZeroCopyListener {
    type Io = ZeroCopy;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (ZeroCopy(io), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn sealed_bytes_cannot_be_changed_and_are_found_by_address() {
        let (s, ranges) = Sealed::new("t", [&b"kernel"[..], b"", b"initrd!"]).unwrap();
        assert_eq!(ranges, vec![0..6, 6..6, 6..13]);
        assert!(s.is_sealed());
        assert_eq!(&s.bytes(ranges[2].clone())[..], b"initrd!");
        // Neither this process nor anyone with the descriptor can write, grow or shrink it.
        let mut f = std::fs::File::from(s.fd.try_clone().unwrap());
        assert!(f.write_all(b"X").is_err());
        assert!(f.set_len(1).is_err() && f.set_len(100).is_err());
        assert_eq!(&s.as_slice()[..6], b"kernel");
        let b = s.bytes(ranges[2].clone());
        let (found, off) = locate(&b[2..]).unwrap();
        assert!(Arc::ptr_eq(&found, &s));
        assert_eq!(off, 8);
        assert!(locate(b"kernel").is_none());
        let (e, r) = Sealed::new("empty", [&b""[..]]).unwrap();
        assert_eq!((r.len(), r[0].clone(), e.as_slice().len()), (1, 0..0, 1));
    }

    #[tokio::test]
    async fn a_stream_sends_sealed_bytes_and_plain_bytes_in_order() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (s, r) = Sealed::new("t", [&big[..]]).unwrap();
        let body = s.bytes(r[0].clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let sent = SENDFILE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        let mut w = ZeroCopy(tokio::net::TcpStream::connect(addr).await.unwrap());
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let bufs = [&head[..], &body[..10], &body[10..], b"tail"];
        // As hyper does: vectored writes, advancing past what was written.
        let (mut i, mut at) = (0, 0);
        while i < bufs.len() {
            let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&bufs[i][at..])
                .chain(bufs[i + 1..].iter().copied())
                .map(std::io::IoSlice::new)
                .collect();
            let mut n = w.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 && i < bufs.len() {
                let left = bufs[i].len() - at;
                if n >= left {
                    n -= left;
                    i += 1;
                    at = 0;
                } else {
                    at += n;
                    n = 0;
                }
            }
        }
        w.shutdown().await.unwrap();
        drop(w);
        let got = reader.await.unwrap();
        let mut want = head.clone();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        // The body went out with sendfile, not through write.
        assert!(
            SENDFILE_BYTES.load(std::sync::atomic::Ordering::Relaxed) - sent >= big.len() as u64
        );
    }
}
