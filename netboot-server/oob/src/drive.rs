//! The blocking I/O under the sequences: HTTP(S) to Redfish and AMT (a pinned certificate or a
//! CA file; never an unverified TLS connection), UDP to IPMI, with a timeout per exchange and
//! retries with backoff for failures that may pass. Failures name the controller
//! ("AMT at 10.1.2.3: digest auth refused") and never carry a secret.
use crate::{amt, ipmi, redfish};
use crate::{Credentials, Failure, Http, HttpReply, HttpRequest, Machine, Op, Outcome, Trace};
use fleet::bmc::ControllerKind;
use ring::rand::SecureRandom;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// Where a controller is and how it is trusted.
#[derive(Debug, Clone)]
pub struct Target {
    /// Redfish, AMT or IPMI.
    pub kind: ControllerKind,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// HTTPS (Redfish, AMT on 16993).
    pub tls: bool,
    /// `sha256:<hex>` of its certificate.
    pub fingerprint: Option<String>,
    /// A CA file that verifies it.
    pub ca_file: Option<String>,
}

impl Target {
    /// "AMT at 10.1.2.3" (the port when it is not the protocol's usual one).
    pub fn label(&self) -> String {
        let kind = match self.kind {
            ControllerKind::Amt => "AMT",
            ControllerKind::Redfish => "Redfish",
            ControllerKind::Ipmi => "IPMI",
            ControllerKind::Wol => "Wake-on-LAN",
        };
        if self.kind.default_port(self.tls) == Some(self.port) {
            format!("{kind} at {}", self.address)
        } else {
            format!("{kind} at {}:{}", self.address, self.port)
        }
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For one exchange (connect, send, answer).
    pub timeout: Duration,
    /// Attempts of a whole sequence when it fails in a way that may pass.
    pub attempts: u32,
    /// The wait before the second attempt; doubled each time.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_secs(2),
        }
    }
}

struct HttpDriver<'a> {
    target: &'a Target,
    timeout: Duration,
}

impl Http for HttpDriver<'_> {
    fn call(&mut self, req: &HttpRequest) -> Result<HttpReply, Failure> {
        let scheme = if self.target.tls { "https" } else { "http" };
        let url = format!(
            "{scheme}://{}:{}{}",
            self.target.address, self.target.port, req.path
        );
        let opt = unbrick_http::Options {
            pin: self.target.fingerprint.as_deref(),
            ca_file: self.target.ca_file.as_deref(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect(),
            content_type: Some(req.content_type),
            max_response: Some(8 << 20),
            close: false,
        };
        let body = (!req.body.is_empty() || req.method != "GET").then_some(req.body.as_slice());
        match unbrick_http::request_with(req.method, &url, body, self.timeout, &opt) {
            Ok(r) => Ok(HttpReply {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(unbrick_http::Error::Connect(e)) => {
                Err(Failure::transient(format!("unreachable ({e})")))
            }
            Err(unbrick_http::Error::Transport(e)) => {
                Err(Failure::transient(format!("no answer ({e})")))
            }
            Err(unbrick_http::Error::Tls(e)) | Err(unbrick_http::Error::Pin(e)) => {
                Err(Failure::fatal(format!(
                    "TLS refused: {}",
                    e.replace("unexpected error: ", "")
                )))
            }
            Err(e) => Err(Failure::fatal(e.to_string())),
        }
    }
}

struct UdpDriver {
    sock: UdpSocket,
    timeout: Duration,
}

impl ipmi::Datagram for UdpDriver {
    fn exchange(
        &mut self,
        packet: &[u8],
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, Failure> {
        // Three sends within the timeout: a lost datagram is the usual failure.
        let per = self.timeout / 3;
        let mut buf = [0u8; 1024];
        for _ in 0..3 {
            self.sock
                .send(packet)
                .map_err(|e| Failure::transient(format!("unreachable ({e})")))?;
            let until = Instant::now() + per;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock.set_read_timeout(Some(left)).ok();
                match self.sock.recv(&mut buf) {
                    // Not RMCP (or an ASF pong): keep waiting.
                    Ok(n) if n >= 16 && buf[..4] == [0x06, 0x00, 0xff, 0x07] => {
                        if wanted(&buf[..n]) {
                            return Ok(buf[..n].to_vec());
                        }
                        // A late answer to an earlier request: keep waiting for ours.
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(Failure::transient(
                            "unreachable (port 623 refused: no BMC listens there)",
                        ))
                    }
                    Err(e) => return Err(Failure::transient(format!("no answer ({e})"))),
                }
            }
        }
        Err(Failure::transient(format!(
            "no answer within {} s",
            self.timeout.as_secs()
        )))
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).ok();
    hex::encode(b)
}

fn once(
    target: &Target,
    cred: &Credentials,
    machine: &Machine,
    op: Op,
    limits: &Limits,
    trace: &mut Trace,
) -> Result<Outcome, Failure> {
    match target.kind {
        ControllerKind::Redfish | ControllerKind::Amt => {
            if target.tls && target.fingerprint.is_none() && target.ca_file.is_none() {
                return Err(Failure::fatal(
                    "TLS without a pinned fingerprint or a CA file is refused (import one)",
                ));
            }
            let mut h = HttpDriver {
                target,
                timeout: limits.timeout,
            };
            if target.kind == ControllerKind::Redfish {
                redfish::run(&mut h, cred, machine, op, trace)
            } else {
                amt::run(&mut h, cred, op, &random_hex(8), trace)
            }
        }
        ControllerKind::Ipmi => {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
                .map_err(|e| Failure::transient(format!("UDP socket: {e}")))?;
            sock.connect(SocketAddrV4::new(target.address, target.port))
                .map_err(|e| Failure::transient(format!("unreachable ({e})")))?;
            let mut d = UdpDriver {
                sock,
                timeout: limits.timeout,
            };
            let rng = ring::rand::SystemRandom::new();
            let mut random = |b: &mut [u8]| {
                rng.fill(b).ok();
            };
            ipmi::run(&mut d, cred, machine.uefi, op, trace, &mut random)
        }
        ControllerKind::Wol => Err(Failure::fatal(
            "Wake-on-LAN has no controller to ask: use wake",
        )),
    }
}

/// Runs `op` on the controller, retrying failures that may pass (with backoff); the failure
/// names the controller. Every attempt's steps are in `trace`.
pub fn run(
    target: &Target,
    cred: &Credentials,
    machine: &Machine,
    op: Op,
    limits: &Limits,
    trace: &mut Trace,
) -> Result<Outcome, Failure> {
    let mut wait = limits.backoff;
    let attempts = limits.attempts.max(1);
    for n in 1..=attempts {
        if attempts > 1 {
            trace.step(format!("attempt {n} of {attempts}"));
        }
        match once(target, cred, machine, op, limits, trace) {
            Ok(o) => return Ok(o),
            Err(e) if e.transient && n < attempts => {
                trace.step(format!("{e}; again in {} s", wait.as_secs()));
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(e) => {
                return Err(Failure {
                    transient: e.transient,
                    message: format!("{}: {}", target.label(), e.message),
                })
            }
        }
    }
    unreachable!("the last attempt returns")
}
