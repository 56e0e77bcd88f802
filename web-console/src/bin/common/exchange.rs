//! One HTTP/1.1 request/response on a connected TCP stream, plain or TLS (certificate pinned by
//! the connector), for the load generator and the fleet simulator. `Connection: close`: the
//! response is everything until the server closes.
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn exchange(
    tcp: tokio::net::TcpStream,
    tls: Option<(&tokio_rustls::TlsConnector, std::net::IpAddr)>,
    head: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut raw = Vec::new();
    match tls {
        Some((c, ip)) => {
            let mut s = c
                .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(body).await.map_err(|e| e.to_string())?;
            // A server that closes without close_notify after a complete response is fine:
            // parse_response checks the length.
            if let Err(e) = s.read_to_end(&mut raw).await {
                if raw.is_empty() {
                    return Err(e.to_string());
                }
            }
        }
        None => {
            let mut s = tcp;
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(body).await.map_err(|e| e.to_string())?;
            s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        }
    }
    let r = remediation_payload::http::parse_response(&raw)?;
    Ok((r.status, r.body))
}
