//! The HTTPS listener: rustls with the ring provider, the certificate `unbrick init` made. The
//! agent pins the certificate's SHA-256 fingerprint, so no CA is involved.
//!
//! Handshakes run in their own tasks (with a deadline) and finished connections are handed to
//! axum through [`TlsListener`], so one slow or hostile client cannot stall the accept loop.
use crate::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// SHA-256 of the first certificate in a PEM file, as `sha256:<hex>` (what the agent pins).
pub fn cert_fingerprint(cert_pem: &Path) -> Result<String, Error> {
    let certs = read_certs(cert_pem)?;
    let first = certs.first().ok_or_else(|| {
        Error::Tls(format!(
            "{}: no certificate in the file",
            cert_pem.display()
        ))
    })?;
    Ok(format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, first.as_ref()))
    ))
}

/// The certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: not a PEM certificate: {e}", path.display())))
}

/// Loads the certificate and key into a rustls server configuration (HTTP/1.1 only).
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = read_certs(cert_pem)?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in the file",
            cert_pem.display()
        )));
    }
    let pem =
        std::fs::read(key_pem).map_err(|e| Error::Tls(format!("{}: {e}", key_pem.display())))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Tls(format!("{}: {e}", key_pem.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key in the file", key_pem.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Tls(format!(
                "{} and {} do not make a usable TLS identity: {e}",
                cert_pem.display(),
                key_pem.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Agents open a connection per request: resumed sessions skip the certificate signature.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    Ok(Arc::new(cfg))
}

/// Accepted and handshaken TLS connections, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes run concurrently with a deadline each.
    pub fn new(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("HTTPS accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (it never does on its own): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Makes a self-signed certificate (ECDSA P-256, ten years) for the server's HTTPS listener and
/// writes `cert` (0644) and `key` (0600). Never overwrites. Returns the fingerprint.
pub fn generate_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<String, Error> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Tls(format!("TLS key generation: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Tls(format!("TLS certificate names {names:?}: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "unbrick recovery server");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let c = params
        .self_signed(&kp)
        .map_err(|e| Error::Tls(format!("TLS certificate: {e}")))?;
    if let Some(d) = cert.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Tls(format!("{}: {e}", d.display())))?;
    }
    let write = |path: &Path, data: &str, mode: u32| -> Result<(), Error> {
        signing::keys::create_exclusive(path, data.as_bytes(), mode)
            .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
    };
    write(key, &kp.serialize_pem(), 0o600)?;
    write(cert, &c.pem(), 0o644)?;
    cert_fingerprint(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_and_is_never_overwritten() {
        let d = std::env::temp_dir().join(format!("unbrick-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
        let fp = generate_self_signed(&c, &k, &["unbrick".into()]).unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);
        assert_eq!(cert_fingerprint(&c).unwrap(), fp);
        server_config(&c, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(generate_self_signed(&c, &k, &["unbrick".into()]).is_err());
        std::fs::write(&k, "garbage").unwrap();
        assert!(server_config(&c, &k)
            .unwrap_err()
            .to_string()
            .contains("no private key"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
