//! Limits for HTTP connections that hyper, as axum runs it, does not set: an idle limit (a
//! kept-alive connection stays open for as long as the peer keeps it), a deadline for each
//! request's header (a client dribbling a byte at a time, slowloris, would otherwise hold its
//! connection for ever), and caps on connections in all and per address. Agents keep their
//! connection between requests (and reconnect when it was closed); a machine that rebooted
//! without closing its connection, or a client that opens connections and goes quiet, must not
//! hold sockets and tasks for ever.
use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

/// A request's header must be complete this long after its first byte (the first request's
/// after the connection opened).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at once on one listener, by default.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections at once from one address, by default (a machine needs one or two; a NAT in
/// front of many, a few dozen).
pub const MAX_PER_ADDRESS: usize = 64;

/// Counts a listener's open connections, in all and per address.
#[derive(Debug)]
pub struct Caps {
    max: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Connections closed at once because a cap was reached.
    pub refused: AtomicU64,
}

impl Caps {
    /// At most `max` connections, `per_address` from one address.
    pub fn new(max: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_address,
            open: Mutex::new((0, HashMap::new())),
            refused: AtomicU64::new(0),
        })
    }

    /// Counts a new connection from `ip`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        let n = per.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || n >= self.per_address {
            return None;
        }
        *total += 1;
        per.insert(ip, n + 1);
        Some(Slot {
            caps: self.clone(),
            ip,
        })
    }
}

/// One counted connection; uncounted when the connection is dropped.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// By default a connection on which nothing is read or written for this long is closed.
/// Server-sent events write a keep-alive comment every 15 s, downloads write continuously.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listener whose connections end after `idle` without traffic or when a request's header
/// takes longer than [`HEAD_TIMEOUT`], and that closes connections beyond its caps at once.
pub struct IdleListener<L> {
    inner: L,
    idle: Duration,
    caps: Arc<Caps>,
}

impl<L> IdleListener<L> {
    /// Over `inner`, with these limits.
    pub fn new(inner: L, idle: Duration, caps: Arc<Caps>) -> Self {
        Self { inner, idle, caps }
    }
}

impl<L> axum::serve::Listener for IdleListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = Idle<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.caps.admit(addr.ip()) {
                Some(slot) => {
                    let mut c = Idle::new(io, self.idle);
                    c.slot = Some(slot);
                    return (c, addr);
                }
                None => {
                    // Closed at once: the cap protects everyone else's connections.
                    let n = self.caps.refused.fetch_add(1, Ordering::Relaxed);
                    if n.is_multiple_of(1000) {
                        tracing::warn!(peer = %addr, "HTTP: connection cap reached (at most {} in all, {} per address); closing new connections ({} so far)", self.caps.max, self.caps.per_address, n + 1);
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written on it for `timeout`
/// (hyper, as axum runs it, has no idle limit of its own).
pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The last read or write. The timer is moved to `last + timeout` only when it fires (a
    /// download makes thousands of writes: no timer operation for each).
    last: tokio::time::Instant,
    /// Reading a request's header: its deadline (none before its first byte on a kept
    /// connection), and the last bytes read (the end, CRLF CRLF, may span two reads).
    in_head: bool,
    head_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    tail: [u8; 3],
    slot: Option<Slot>,
}

impl<S> Idle<S> {
    /// Wraps `inner`, which is closed after `timeout` without reads or writes, or when a
    /// request's header is not complete [`HEAD_TIMEOUT`] after it began (the first one's after
    /// the connection opened).
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            last: tokio::time::Instant::now(),
            in_head: true,
            head_deadline: Some(Box::pin(tokio::time::sleep(HEAD_TIMEOUT))),
            tail: [0; 3],
            slot: None,
        }
    }

    /// Follows the request head through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if !self.in_head || bytes.is_empty() {
            return;
        }
        if self.head_deadline.is_none() {
            self.head_deadline = Some(Box::pin(tokio::time::sleep(HEAD_TIMEOUT)));
        }
        // The end, CRLF CRLF, may span the previous read: the kept tail and this read's first
        // three bytes, then this read alone. No copy of the read itself.
        let k = bytes.len().min(3);
        let mut edge = [0u8; 6];
        edge[..3].copy_from_slice(&self.tail);
        edge[3..3 + k].copy_from_slice(&bytes[..k]);
        let end = |w: &[u8]| w == b"\r\n\r\n";
        if edge[..3 + k].windows(4).any(end) || bytes.windows(4).any(end) {
            self.in_head = false;
            self.head_deadline = None;
        }
        // The last three bytes of tail ++ bytes.
        let joined = &edge[..3 + k];
        if bytes.len() >= 3 {
            self.tail.copy_from_slice(&bytes[bytes.len() - 3..]);
        } else {
            self.tail.copy_from_slice(&joined[joined.len() - 3..]);
        }
    }

    fn head_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.in_head
            && self
                .head_deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    fn active(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.timeout;
            if tokio::time::Instant::now() >= due {
                return true;
            }
            // Traffic since the timer was set: it fires again `timeout` after the last.
            self.deadline.as_mut().reset(due);
        }
    }

    /// After a write: traffic, and a response means the next bytes read begin a new header.
    fn wrote(&mut self, r: &std::io::Result<usize>) {
        if matches!(r, Ok(n) if *n > 0) {
            self.active();
            if !self.in_head {
                self.in_head = true;
                self.head_deadline = None;
                self.tail = [0; 3];
            }
        }
    }
}

fn head_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request header not complete in time",
    )
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Idle<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                    if self.in_head {
                        self.saw(&buf.filled()[before..]);
                    }
                    if self.head_expired(cx) {
                        return Poll::Ready(Err(head_error()));
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.head_expired(cx) => Poll::Ready(Err(head_error())),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                self.wrote(&r);
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    // Vectored writes pass through: without them hyper copies every body chunk into its own
    // buffer before writing (its "flatten" strategy), a second copy of each artefact's bytes.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.wrote(&r);
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            r => r,
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Traffic either way keeps a connection; silence longer than the limit ends it.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_end_and_busy_ones_stay() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Idle::new(a, Duration::from_secs(60));
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            b.write_all(b"x\r\n\r\n").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 5);
            tokio::time::sleep(Duration::from_secs(50)).await;
            s.write_all(b"y").await.unwrap();
            assert_eq!(b.read(&mut buf).await.unwrap(), 1);
        }
        let t = tokio::time::Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed().as_secs(), 60);
    }

    /// A header dribbled a byte at a time ends 10 s after it began, however lively the
    /// dribble; a whole one, and the next on the same connection, pass.
    #[tokio::test(start_paused = true)]
    async fn a_slow_request_header_ends_and_whole_ones_pass() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut s = Idle::new(a, Duration::from_secs(60));
        let mut buf = [0u8; 256];
        b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // The next request split over two reads, \r\n | \r\n.
        tokio::time::sleep(Duration::from_secs(30)).await;
        b.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        b.write_all(b"\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Slowloris: a byte every 2 s.
        let t = tokio::time::Instant::now();
        let err = loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = b.write_all(b"X").await;
            match s.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() <= Duration::from_secs(13), "{:?}", t.elapsed());
    }

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let caps = Caps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = caps.admit(a).unwrap();
        let _s2 = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "two per address");
        let _s3 = caps.admit(b).unwrap();
        assert!(
            caps.admit("10.0.0.3".parse().unwrap()).is_none(),
            "three in all"
        );
        drop(s1);
        assert!(
            caps.admit(a).is_some(),
            "a closed connection frees its place"
        );
    }
}
