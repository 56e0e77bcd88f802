//! HTTP/1.1 requests on a TCP stream, plain or TLS (certificate pinned by the connector), for the
//! load generator and the fleet simulator. A connection may carry several requests in turn
//! (keep-alive, as the agent does); the response framing is the agent's own
//! (`unbrick_http::response_len`).
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A connection, plain or TLS.
pub enum Io {
    /// Plain TCP.
    Plain(tokio::net::TcpStream),
    /// TLS with the pinned certificate.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Io {
    /// Wraps a connected stream, doing the TLS handshake when `tls` is given.
    pub async fn new(
        tcp: tokio::net::TcpStream,
        tls: Option<(&tokio_rustls::TlsConnector, std::net::IpAddr)>,
    ) -> Result<Self, String> {
        Ok(match tls {
            Some((c, ip)) => Self::Tls(Box::new(
                c.connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )),
            None => Self::Plain(tcp),
        })
    }

    /// One request and its response: (status, body, whether the connection may be reused).
    pub async fn roundtrip(
        &mut self,
        head: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, bool), String> {
        match self {
            Self::Plain(s) => roundtrip(s, head, body).await,
            Self::Tls(s) => roundtrip(s.as_mut(), head, body).await,
        }
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>, bool), String> {
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 16384];
    loop {
        if let Ok(Some(n)) = unbrick_http::response_len(&raw) {
            let r = unbrick_http::parse_response(&raw[..n]).map_err(|e| e.to_string())?;
            let keep = n == raw.len() && !unbrick_http::closes(&raw[..n]);
            return Ok((r.status, r.body, keep));
        }
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A server that closes without close_notify after a complete response is fine:
            // parse_response checks the length.
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    if raw.is_empty() {
        return Err("connection closed without a response".into());
    }
    let r = unbrick_http::parse_response(&raw).map_err(|e| e.to_string())?;
    Ok((r.status, r.body, false))
}

/// A request on a kept connection, as the agent sends them: reuses `conn` when there is one and
/// it still works, otherwise opens a new one with `open`; keeps the connection for the next
/// request unless the server closes it.
pub async fn on_kept<F, Fut>(
    conn: &mut Option<Io>,
    open: F,
    head: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Io, String>>,
{
    if let Some(mut io) = conn.take() {
        if let Ok((status, body, keep)) = io.roundtrip(head, body).await {
            if keep {
                *conn = Some(io);
            }
            return Ok((status, body));
        }
    }
    let mut io = open().await?;
    let (status, body, keep) = io.roundtrip(head, body).await?;
    if keep {
        *conn = Some(io);
    }
    Ok((status, body))
}

/// One request on a new connection (`head` says `Connection: close`).
pub async fn exchange(
    tcp: tokio::net::TcpStream,
    tls: Option<(&tokio_rustls::TlsConnector, std::net::IpAddr)>,
    head: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut io = Io::new(tcp, tls).await?;
    let (status, body, _) = io.roundtrip(head, body).await?;
    Ok((status, body))
}
