//! A minimal HTTP/1.1 client for the agent and the CLI (one request per connection): enough for
//! JSON to and from unbrick, without an async stack in PID 1. `https://` URLs need the server
//! certificate's SHA-256 fingerprint: the certificate is pinned, no CA is consulted, and its
//! validity dates are ignored (a boot-looping machine's clock may be anywhere).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn split_url(url: &str) -> Result<(String, String), String> {
    let (rest, port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(format!("{url}: only http:// and https:// are supported"));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    Ok((host, path.to_string()))
}

/// A request's options beyond method and URL.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// `sha256:<hex>` of the server certificate; required for https.
    pub pin: Option<&'a str>,
    /// Extra header lines, e.g. `("Authorization", "Bearer ...")`.
    pub headers: Vec<(&'a str, String)>,
    /// Content-Type of the body (default `application/json`).
    pub content_type: Option<&'a str>,
}

/// Plain request (`https://` fails: it needs a pinned certificate, see [`request_with`]).
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    request_with(method, url, body, timeout, &Options::default())
}

pub fn request_with(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    opt: &Options<'_>,
) -> Result<Response, String> {
    let tls = url.starts_with("https://");
    let (host, path) = split_url(url)?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {host}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    s.set_nodelay(true).ok();
    let body = body.unwrap_or(&[]);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: unbrick/{}\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        crate::AGENT_VERSION,
        opt.content_type.unwrap_or("application/json"),
        body.len()
    );
    for (k, v) in &opt.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = Vec::new();
    if tls {
        let pin = opt
            .pin
            .ok_or_else(|| format!("{url}: https needs the server certificate's fingerprint"))?;
        let cfg = cached_config(pin)?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn =
            rustls::ClientConnection::new(cfg, name).map_err(|e| format!("TLS to {host}: {e}"))?;
        let mut t = rustls::StreamOwned::new(conn, s);
        t.write_all(head.as_bytes())
            .and_then(|_| t.write_all(body))
            .and_then(|_| t.flush())
            .map_err(|e| format!("send to {host}: {e}"))?;
        if let Err(e) = t.read_to_end(&mut raw) {
            // A server that closes without close_notify after a complete response is fine:
            // parse_response checks the length.
            if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
                return Err(format!("read from {host}: {e}"));
            }
        }
    } else {
        let mut s = s;
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(body))
            .map_err(|e| format!("send to {host}: {e}"))?;
        s.read_to_end(&mut raw)
            .map_err(|e| format!("read from {host}: {e}"))?;
    }
    parse_response(&raw)
}

/// Parses `sha256:<64 hex>`.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let h = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("certificate fingerprint {pin:?} must start with sha256:"))?;
    let v = hex::decode(h).map_err(|_| format!("certificate fingerprint {pin:?} is not hex"))?;
    v.try_into()
        .map_err(|_| format!("certificate fingerprint {pin:?} is not 32 bytes"))
}

/// The client configuration for `pin`, made once per process: reusing it lets rustls resume TLS
/// sessions across the agent's one-request connections.
fn cached_config(pin: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    static CACHE: std::sync::Mutex<Option<(String, Arc<rustls::ClientConfig>)>> =
        std::sync::Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, cfg)) = c.as_ref() {
        if p == pin {
            return Ok(cfg.clone());
        }
    }
    let cfg = pinned_config(pin)?;
    *c = Some((pin.to_string(), cfg.clone()));
    Ok(cfg)
}

pub fn pinned_config(pin: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        sha256: parse_pin(pin)?,
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// (Also used by the load generator, with tokio-rustls.)
/// Accepts exactly one certificate: the one whose SHA-256 is pinned. Handshake signatures are
/// still verified (the server must hold the certificate's key).
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate sha256:{} is not the pinned one",
                hex::encode(got.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response (no header end)")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut len = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                len = v.trim().parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match len {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => {
                return Err(format!(
                    "response body truncated: {} of {n} bytes",
                    rest.len()
                ))
            }
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let e = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..e])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .map_err(|_| "bad chunk size")?;
        b = &b[e + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert_eq!(
            split_url("http://10.0.0.1:8080/agent/v1/hello").unwrap(),
            ("10.0.0.1:8080".into(), "/agent/v1/hello".into())
        );
    }
}
