//! Idle limit for HTTP connections: hyper, as axum runs it, keeps a kept-alive connection open
//! for as long as the peer does. Agents keep their connection between requests (and reconnect
//! when it was closed); a machine that rebooted without closing its connection, or a client
//! that opens connections and goes quiet, must not hold sockets and tasks for ever.
use std::future::Future as _;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

/// By default a connection on which nothing is read or written for this long is closed.
/// Server-sent events write a keep-alive comment every 15 s, downloads write continuously.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listener whose connections end after the given time without traffic.
pub struct IdleListener<L>(pub L, pub Duration);

impl<L> axum::serve::Listener for IdleListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = Idle<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (Idle::new(io, self.1), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written on it for `timeout`
/// (hyper, as axum runs it, has no idle limit of its own).
pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    /// Wraps `inner`, which is closed after `timeout` without reads or writes.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
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
                }
                Poll::Ready(r)
            }
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
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
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
            b.write_all(b"x").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_secs(50)).await;
            s.write_all(b"y").await.unwrap();
            assert_eq!(b.read(&mut buf).await.unwrap(), 1);
        }
        let t = tokio::time::Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed().as_secs(), 60);
    }
}
