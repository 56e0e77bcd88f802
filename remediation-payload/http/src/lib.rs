//! A minimal HTTP/1.1 client for the agent and the CLI: enough for JSON to and from unbrick,
//! without an async stack in PID 1. The last connection is kept open and reused for the next
//! request to the same server (one TLS handshake per agent run instead of one per request); a
//! kept connection that the server closed meanwhile is replaced once, transparently, when it
//! produced no byte of a response. `https://` URLs need the server certificate's SHA-256
//! fingerprint: the certificate is pinned, no CA is consulted, and its validity dates are
//! ignored (a boot-looping machine's clock may be anywhere).
use std::io::{Read, Write};

/// Why a request failed. The text says what and to whom; the kind tells a caller whether to
/// retry (connect and transport failures may pass, a bad URL or pin will not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not http:// or https://, or https lacks a fingerprint.
    #[error("{0}")]
    Url(String),
    /// The certificate fingerprint is malformed.
    #[error("{0}")]
    Pin(String),
    /// The server could not be reached.
    #[error("{0}")]
    Connect(String),
    /// TLS could not be set up (or the certificate is not the pinned one).
    #[error("{0}")]
    Tls(String),
    /// Sending or reading failed, or the server closed without a response.
    #[error("{0}")]
    Transport(String),
    /// The response is malformed.
    #[error("{0}")]
    Response(String),
}
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A response.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// The header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first header field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn split_url(url: &str) -> Result<(String, String), Error> {
    let (rest, port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(Error::Url(format!(
            "{url}: only http:// and https:// are supported"
        )));
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
    /// The largest response accepted, header and body (default [`MAX_RESPONSE`]).
    pub max_response: Option<usize>,
    /// For https without a pin: a PEM file of CA certificates that must verify the server's
    /// certificate for its IP address (a management controller's own CA).
    pub ca_file: Option<&'a str>,
    /// Do not keep the connection for the next request (`Connection: close`).
    pub close: bool,
}

/// The largest response accepted by default (an export of 100,000 hosts fits many times).
pub const MAX_RESPONSE: usize = 256 << 20;

/// Plain request (`https://` fails: it needs a pinned certificate, see [`request_with`]).
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, Error> {
    request_with(method, url, body, timeout, &Options::default())
}

/// One request with a timeout and options (pin, headers, content type), on a kept connection when there is one.
pub fn request_with(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    opt: &Options<'_>,
) -> Result<Response, Error> {
    let tls = url.starts_with("https://");
    let (host, path) = split_url(url)?;
    let trust = if !tls {
        None
    } else if let Some(pin) = opt.pin {
        Some(Trust::Pin(pin))
    } else if let Some(ca) = opt.ca_file {
        Some(Trust::Ca(ca))
    } else {
        return Err(Error::Url(format!(
            "{url}: https needs the server certificate's fingerprint or a CA file"
        )));
    };
    let body = body.unwrap_or(&[]);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: unbrick/{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        opt.content_type.unwrap_or("application/json"),
        body.len()
    );
    for (k, v) in &opt.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if opt.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let key = match trust {
        None => format!("{host} "),
        Some(Trust::Pin(p)) => format!("{host} {p}"),
        Some(Trust::Ca(c)) => format!("{host} ca:{c}"),
    };
    let limit = opt.max_response.unwrap_or(MAX_RESPONSE);
    // A kept connection to the same server with the same pin, if there is one.
    let kept = {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        idle.iter()
            .position(|c| c.key == key)
            .map(|i| idle.remove(i))
    };
    if let Some(mut c) = kept {
        match c.exchange(&head, body, timeout, &host, limit) {
            Ok((r, keep)) => {
                c.keep_if(keep);
                return Ok(r);
            }
            // The server closed the idle connection before reading this request: a new one.
            Err(Failure::Closed) => {}
            Err(Failure::Other(e)) => return Err(e),
        }
    }
    let mut c = Conn::open(&host, trust, timeout, key)?;
    match c.exchange(&head, body, timeout, &host, limit) {
        Ok((r, keep)) => {
            c.keep_if(keep);
            Ok(r)
        }
        Err(Failure::Closed) => Err(Error::Url(format!(
            "read from {host}: closed without a response"
        ))),
        Err(Failure::Other(e)) => Err(e),
    }
}

/// How an https server is trusted.
#[derive(Clone, Copy)]
enum Trust<'a> {
    /// Exactly the certificate with this fingerprint.
    Pin(&'a str),
    /// A certificate the CAs in this PEM file verify for the server's IP address.
    Ca(&'a str),
}

/// A client configuration that trusts the CA certificates of the PEM file `path` (and checks
/// the certificate's dates and its IP address, as WebPKI does).
pub fn ca_config(path: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::Pin(format!("CA file {path}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|e| Error::Pin(format!("CA file {path}: {e}")))?;
        roots
            .add(c)
            .map_err(|e| Error::Pin(format!("CA file {path}: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::Pin(format!(
            "CA file {path}: no PEM certificate in it"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Pin(format!("CA file {path}: {e}")))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Pin(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Idle connections kept for reuse, one per server (the agent talks to the agent API over HTTPS
/// and fetches files over plain HTTP).
static IDLE: Mutex<Vec<Conn>> = Mutex::new(Vec::new());
/// At most this many are kept; the oldest goes first.
const MAX_IDLE: usize = 4;

/// Closes the kept connections (TLS close_notify, then FIN): the agent calls this before it
/// reboots the machine, so the server does not wait for a peer that is gone.
pub fn close_idle() {
    let kept = std::mem::take(&mut *IDLE.lock().unwrap_or_else(|e| e.into_inner()));
    for c in kept {
        if let Stream::Tls(mut t) = c.stream {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

struct Conn {
    /// `host:port` and pin: a connection is reused only for the same pair.
    key: String,
    stream: Stream,
}

enum Failure {
    /// Not one byte of a response before the connection ended.
    Closed,
    Other(Error),
}

impl Conn {
    fn open(
        host: &str,
        trust: Option<Trust<'_>>,
        timeout: Duration,
        key: String,
    ) -> Result<Self, Error> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| Error::Connect(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| Error::Connect(format!("{host}: no address")))?;
        let s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::Connect(format!("connect {host}: {e}")))?;
        s.set_nodelay(true).ok();
        let stream = match trust {
            Some(trust) => {
                let cfg = match trust {
                    Trust::Pin(pin) => cached_config(pin)?,
                    Trust::Ca(ca) => ca_config(ca)?,
                };
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let conn = rustls::ClientConnection::new(cfg, name)
                    .map_err(|e| Error::Tls(format!("TLS to {host}: {e}")))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
            }
            None => Stream::Plain(s),
        };
        Ok(Self { key, stream })
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    fn keep_if(self, keep: bool) {
        if keep {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(self);
        }
    }

    /// Sends one request and reads its response. Returns the response and whether the
    /// connection may be used again.
    fn exchange(
        &mut self,
        head: &str,
        body: &[u8],
        timeout: Duration,
        host: &str,
        limit: usize,
    ) -> Result<(Response, bool), Failure> {
        self.tcp().set_read_timeout(Some(timeout)).ok();
        self.tcp().set_write_timeout(Some(timeout)).ok();
        let sent = match &mut self.stream {
            Stream::Plain(s) => s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)),
            Stream::Tls(t) => t
                .write_all(head.as_bytes())
                .and_then(|_| t.write_all(body))
                .and_then(|_| t.flush()),
        };
        if let Err(e) = sent {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    Failure::Closed
                }
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    Failure::Other(Error::Transport(format!(
                        "{host} did not answer within {} s",
                        timeout.as_secs()
                    )))
                }
                // rustls reports a refused certificate or handshake as invalid data.
                std::io::ErrorKind::InvalidData => {
                    Failure::Other(Error::Tls(format!("TLS with {host}: {e}")))
                }
                _ => Failure::Other(Error::Transport(format!("send to {host}: {e}"))),
            });
        }
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if raw.len() > limit {
                return Err(Failure::Other(Error::Response(format!(
                    "the response from {host} is larger than {limit} bytes; refused"
                ))));
            }
            match response_len(&raw) {
                Ok(Some(n)) => {
                    let r = parse_response(&raw[..n]).map_err(Failure::Other)?;
                    let keep = n == raw.len() && !closes(&raw[..n]);
                    return Ok((r, keep));
                }
                Ok(None) => {}
                // No length: the body ends when the server closes.
                Err(_) => {}
            }
            let got = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut chunk),
                Stream::Tls(t) => t.read(&mut chunk),
            };
            match got {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A server that closes without close_notify ends the stream like a close.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e)
                    if raw.is_empty()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                        ) =>
                {
                    return Err(Failure::Closed)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Failure::Other(Error::Transport(format!(
                        "{host} did not answer within {} s",
                        timeout.as_secs()
                    ))))
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(Failure::Other(Error::Tls(format!("TLS with {host}: {e}"))))
                }
                Err(e) => {
                    return Err(Failure::Other(Error::Transport(format!(
                        "read from {host}: {e}"
                    ))))
                }
            }
        }
        if raw.is_empty() {
            return Err(Failure::Closed);
        }
        // The server closed: whatever arrived is the response (parse_response checks a length).
        parse_response(&raw)
            .map(|r| (r, false))
            .map_err(Failure::Other)
    }
}

/// Parses `sha256:<64 hex>`.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], Error> {
    let h = pin.strip_prefix("sha256:").ok_or_else(|| {
        Error::Pin(format!(
            "certificate fingerprint {pin:?} must start with sha256:"
        ))
    })?;
    let v = hex::decode(h)
        .map_err(|_| Error::Pin(format!("certificate fingerprint {pin:?} is not hex")))?;
    v.try_into()
        .map_err(|_| Error::Pin(format!("certificate fingerprint {pin:?} is not 32 bytes")))
}

/// The client configuration for `pin`, made once per process: reusing it lets rustls resume TLS
/// sessions when a connection has to be opened again.
fn cached_config(pin: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    static CACHE: Mutex<Option<(String, Arc<rustls::ClientConfig>)>> = Mutex::new(None);
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

/// A rustls client configuration that accepts only the certificate with fingerprint `pin`.
pub fn pinned_config(pin: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        sha256: parse_pin(pin)?,
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Pin(e.to_string()))?
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

/// A response's header: what framing needs.
struct Head {
    /// The status line (for error messages) and its code, if it parses.
    status_line: String,
    status: Option<u16>,
    len: Option<usize>,
    chunked: bool,
    /// `Connection: close`.
    close: bool,
    /// Where the body starts.
    body: usize,
}

/// The header at the start of `raw`, once it is complete.
fn head(raw: &[u8]) -> Option<Head> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line =
        String::from_utf8_lossy(raw[..end].split(|&b| b == b'\r').next()?).to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let mut h = Head {
        status_line,
        status,
        len: None,
        chunked: false,
        close: false,
        body: end + 4,
    };
    for (k, v) in raw[..end].split(|&b| b == b'\n').skip(1).filter_map(|l| {
        let (k, v) = std::str::from_utf8(l).ok()?.split_once(':')?;
        Some((k.trim().to_ascii_lowercase(), v.trim()))
    }) {
        match k.as_str() {
            "content-length" => h.len = v.parse().ok(),
            "transfer-encoding" if v.to_ascii_lowercase().contains("chunked") => h.chunked = true,
            "connection" if v.eq_ignore_ascii_case("close") => h.close = true,
            _ => {}
        }
    }
    Some(h)
}

/// Whether the response's header says the server closes the connection.
pub fn closes(response: &[u8]) -> bool {
    head(response).is_some_and(|h| h.close)
}

/// Walks the chunks of a chunked body, handing each chunk's data to `data`. Returns the length of
/// the body with its last chunk and trailer (`None` while incomplete) and whether the last
/// (zero-size) chunk was reached.
fn walk_chunks(b: &[u8], mut data: impl FnMut(&[u8])) -> Result<(Option<usize>, bool), Error> {
    let line = |at: usize| b[at..].windows(2).position(|w| w == b"\r\n");
    let mut at = 0;
    loop {
        let Some(e) = line(at) else {
            return Ok((None, false));
        };
        let size = std::str::from_utf8(&b[at..at + e])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .filter(|n| *n <= MAX_RESPONSE)
            .ok_or_else(|| Error::Response("bad chunk size".into()))?;
        at += e + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let Some(e) = line(at) else {
                    return Ok((None, true));
                };
                at += e + 2;
                if e == 0 {
                    return Ok((Some(at), true));
                }
            }
        }
        // Checked: a size near usize::MAX must not wrap around.
        let end = at
            .checked_add(size)
            .and_then(|n| n.checked_add(2))
            .ok_or_else(|| Error::Response("bad chunk size".into()))?;
        if b.len() < end {
            return Ok((None, false));
        }
        if &b[at + size..end] != b"\r\n" {
            return Err(Error::Response("chunk without its CRLF".into()));
        }
        data(&b[at..at + size]);
        at = end;
    }
}

/// How many bytes at the start of `raw` make the first complete response: `Ok(None)` while more
/// are needed, `Err` when the response has no length (its body ends when the server closes).
pub fn response_len(raw: &[u8]) -> Result<Option<usize>, Error> {
    let Some(h) = head(raw) else {
        if raw.len() > 64 * 1024 {
            return Err(Error::Response(
                "HTTP response header longer than 64 KiB".into(),
            ));
        }
        return Ok(None);
    };
    let status = h.status.unwrap_or(0);
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(h.body));
    }
    if h.chunked {
        return Ok(walk_chunks(&raw[h.body..], |_| {})?.0.map(|n| h.body + n));
    }
    match h.len {
        Some(n) if n > MAX_RESPONSE => Err(Error::Response(format!(
            "Content-Length {n} is larger than {MAX_RESPONSE} bytes"
        ))),
        Some(n) if raw.len() >= h.body + n => Ok(Some(h.body + n)),
        Some(_) => Ok(None),
        None => Err(Error::Response("response without a length".into())),
    }
}

/// Parses one whole response (status line, headers, body).
pub fn parse_response(raw: &[u8]) -> Result<Response, Error> {
    let h = head(raw)
        .ok_or_else(|| Error::Response("malformed HTTP response (no header end)".into()))?;
    let status = h
        .status
        .ok_or_else(|| Error::Response(format!("malformed status line {:?}", h.status_line)))?;
    let rest = &raw[h.body..];
    let body = if h.chunked {
        let mut out = Vec::new();
        if !walk_chunks(rest, |d| out.extend_from_slice(d))?.1 {
            return Err(Error::Response("truncated chunk".into()));
        }
        out
    } else {
        match h.len {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => {
                return Err(Error::Response(format!(
                    "response body truncated: {} of {n} bytes",
                    rest.len()
                )))
            }
            None => rest.to_vec(),
        }
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let headers = raw[..end]
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|l| {
            let (k, v) = std::str::from_utf8(l).ok()?.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Response {
        status,
        body,
        headers,
    })
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
        // Framing for kept connections.
        let one = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(response_len(&one[..10]).unwrap(), None);
        assert_eq!(response_len(&one[..one.len() - 1]).unwrap(), None);
        assert_eq!(response_len(one).unwrap(), Some(one.len()));
        let two = [&one[..], &one[..]].concat();
        assert_eq!(response_len(&two).unwrap(), Some(one.len()));
        let ch =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..ch.len() {
            assert_eq!(response_len(&ch[..cut]).unwrap(), None, "{cut}");
        }
        assert_eq!(response_len(ch).unwrap(), Some(ch.len()));
        assert_eq!(
            response_len(b"HTTP/1.1 204 No Content\r\n\r\nHTTP").unwrap(),
            Some(27)
        );
        assert!(response_len(b"HTTP/1.1 200 OK\r\n\r\nuntil close").is_err());
        assert!(
            response_len(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(closes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(!closes(one));
    }

    /// A real socket: two requests share a connection; when the server then closes it, the
    /// third request goes out again on a new one without the caller noticing.
    #[test]
    fn keeps_and_replaces_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut accepted = 0;
            for answers in [2, 1] {
                let (mut s, _) = l.accept().unwrap();
                accepted += 1;
                let mut buf = Vec::new();
                for i in 0..answers {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut c = [0u8; 512];
                        let n = s.read(&mut c).unwrap();
                        assert!(n > 0, "client closed early");
                        buf.extend_from_slice(&c[..n]);
                    }
                    buf.clear();
                    let body = format!("{{\"n\":{i}}}");
                    write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                }
            }
            accepted
        });
        let t = Duration::from_secs(5);
        let a = request("GET", &url, None, t).unwrap();
        let b = request("GET", &url, None, t).unwrap();
        // The server has closed the first connection by now, or will when it reads this.
        std::thread::sleep(Duration::from_millis(50));
        let c = request("GET", &url, None, t).unwrap();
        assert_eq!(
            [a.body, b.body, c.body],
            [
                b"{\"n\":0}".to_vec(),
                b"{\"n\":1}".to_vec(),
                b"{\"n\":0}".to_vec()
            ]
        );
        assert_eq!(server.join().unwrap(), 2);
        assert_eq!(
            split_url("http://10.0.0.1:8080/agent/v1/hello").unwrap(),
            ("10.0.0.1:8080".into(), "/agent/v1/hello".into())
        );
    }

    #[test]
    fn chunk_sizes_that_would_wrap_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffe\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        ] {
            assert!(
                response_len(bad.as_bytes()).is_err() || parse_response(bad.as_bytes()).is_err(),
                "{bad:?}"
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", usize::MAX);
        assert!(response_len(huge.as_bytes()).is_err());
    }
}
