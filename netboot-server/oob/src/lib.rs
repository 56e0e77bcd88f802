//! Clients for the management controllers that make a machine network-boot once without anybody
//! at it: a Redfish BMC, Intel AMT (WS-Management) and an IPMI 2.0 BMC (RMCP+).
//!
//! Each protocol's sequence ([`redfish`], [`amt`], [`ipmi`]) is written against an exchange
//! trait ([`Http`], [`ipmi::Datagram`]) and reads no clock, so its order, its checks and its
//! failures are tested with recorded answers; [`drive`] holds the blocking I/O (timeouts,
//! retries with backoff, TLS with a pinned certificate or a CA file, digest auth).
//!
//! Every request and answer is written to a [`Trace`] in words: it ends up on the host's
//! timeline. Secrets never appear in it.
pub mod amt;
pub mod drive;
pub mod ipmi;
pub mod redfish;
mod xml;

use std::fmt;

pub use fleet::bmc::Op;

/// The machine's power as its controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    /// Running.
    On,
    /// Off (soft or hard).
    Off,
    /// Something else, in the controller's words (sleeping, powering on, ...).
    Other(String),
}

impl fmt::Display for Power {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::On => f.write_str("on"),
            Self::Off => f.write_str("off"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// What a sequence found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The power state before anything was changed.
    pub power: Option<Power>,
    /// Whether the controller offers a network-boot override (None: it does not say).
    pub can_netboot: Option<bool>,
    /// One line for the admin.
    pub summary: String,
}

/// Why a sequence failed, in words an admin can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether trying again later may help (unreachable, timeout, a 5xx answer).
    pub transient: bool,
    /// The reason, without the controller's address (the driver adds it).
    pub message: String,
}

impl Failure {
    /// A failure that another attempt may not change (refused, unsupported, bad answer).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            transient: false,
            message: message.into(),
        }
    }

    /// A failure that may pass (no answer, 5xx).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            transient: true,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The steps of one run, in words (for the host's timeline).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trace(pub Vec<String>);

impl Trace {
    /// Records one step.
    pub fn step(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
}

/// An HTTP request of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// GET, POST, PATCH, DELETE.
    pub method: &'static str,
    /// The path on the controller (`/redfish/v1/Systems`).
    pub path: String,
    /// Extra header fields.
    pub headers: Vec<(String, String)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
    /// Its type.
    pub content_type: &'static str,
}

impl HttpRequest {
    /// A request without a body.
    pub fn new(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            content_type: "application/json",
        }
    }

    /// With a JSON body.
    pub fn json(mut self, v: &serde_json::Value) -> Self {
        self.body = v.to_string().into_bytes();
        self.content_type = "application/json";
        self
    }

    /// With a header field.
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP exchange with a controller: the driver sends it (TLS, timeouts, retries of a
/// connection that failed); a sequence sees only the answer.
pub trait Http {
    /// Sends `req` and returns the answer, whatever its status; `Err` when none came.
    fn call(&mut self, req: &HttpRequest) -> Result<HttpReply, Failure>;
}

/// A user and password for a controller; the password is wiped when dropped.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub secret: zeroize::Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.user)
    }
}

/// What a sequence needs to know about the machine beyond its controller.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// It boots UEFI (else legacy BIOS).
    pub uefi: bool,
    /// Its SMBIOS UUID when known (DHCP option 97): picks the system on a BMC with several.
    pub uuid: Option<String>,
}
