//! Management controllers: what reaches a host's machine out of band (Intel AMT, a Redfish or
//! IPMI BMC, or only Wake-on-LAN), as the admin imports them. Pure: parsing and validation; the
//! secret arrives in the clear from the import and is sealed by the store's writer before it is
//! kept (AES-256-GCM under its own key file, like the BitLocker escrow).
use crate::inventory::RowError;
use crate::Mac;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ControllerKind {
    /// Intel AMT (vPro): WS-Management over HTTP digest, 16992 (16993 with TLS).
    Amt,
    /// A Redfish BMC (iDRAC, iLO, XCC, Supermicro): HTTPS, 443.
    Redfish,
    /// IPMI 2.0 over LAN (RMCP+), UDP 623.
    Ipmi,
    /// No controller: Wake-on-LAN magic packets on the served interface only.
    Wol,
}

impl ControllerKind {
    /// `amt`, `redfish`, `ipmi`, `wol`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amt => "amt",
            Self::Redfish => "redfish",
            Self::Ipmi => "ipmi",
            Self::Wol => "wol",
        }
    }

    /// The protocol's port when the import names none.
    pub fn default_port(self, tls: bool) -> Option<u16> {
        match (self, tls) {
            (Self::Amt, false) => Some(16992),
            (Self::Amt, true) => Some(16993),
            (Self::Redfish, true) => Some(443),
            (Self::Redfish, false) => Some(80),
            (Self::Ipmi, _) => Some(623),
            (Self::Wol, _) => None,
        }
    }
}

impl std::str::FromStr for ControllerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "amt" | "vpro" => Self::Amt,
            "redfish" => Self::Redfish,
            "ipmi" => Self::Ipmi,
            "wol" | "wake-on-lan" => Self::Wol,
            other => return Err(format!("kind {other:?}: one of amt, redfish, ipmi, wol")),
        })
    }
}

/// What an admin (or a campaign's trigger) asks of a machine's controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Read-only: reachable, authenticated, power state, can it force a network boot.
    Status,
    /// A one-time network (PXE) boot override, then a reset (or power-on when off).
    NetbootOnce,
    /// No override (the normal boot order, i.e. the disk), then a reset or power-on.
    BootDisk,
    /// A reset when on, power-on when off; the boot order as it is.
    PowerCycle,
}

impl Op {
    /// The action's name in the API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "power-status",
            Self::NetbootOnce => "netboot",
            Self::BootDisk => "boot-disk",
            Self::PowerCycle => "power-cycle",
        }
    }
}

/// A host's management controller as kept: the secret only sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    /// What kind.
    pub kind: ControllerKind,
    /// Its IPv4 address (none for Wake-on-LAN).
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
    /// Its port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Spoken over TLS (AMT 16993, Redfish HTTPS).
    #[serde(default)]
    pub tls: bool,
    /// `sha256:<hex>` of its certificate, pinned (else `ca_file` must verify it).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// A CA file that verifies its certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The user to log in as.
    #[serde(default)]
    pub user: Option<String>,
    /// The password, sealed (hex of nonce ++ ciphertext ++ tag; associated data `bmc:<mac>`).
    #[serde(default)]
    pub sealed_secret: Option<String>,
}

impl fmt::Display for Controller {
    /// What an admin may see: never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if let Some(a) = self.address {
            write!(f, " at {a}")?;
            if let Some(p) = self.port {
                write!(f, ":{p}")?;
            }
        }
        if self.tls {
            match (&self.fingerprint, &self.ca_file) {
                (Some(_), _) => f.write_str(" (TLS, pinned)")?,
                (None, Some(ca)) => write!(f, " (TLS, CA {ca})")?,
                (None, None) => f.write_str(" (TLS)")?,
            }
        }
        if let Some(u) = &self.user {
            write!(f, ", user {u}")?;
        }
        if self.sealed_secret.is_some() {
            f.write_str(", secret sealed")?;
        }
        Ok(())
    }
}

/// The associated data a controller's secret is sealed with.
pub fn secret_aad(mac: Mac) -> String {
    format!("bmc:{mac}")
}

/// One checked row of a controller import; the secret in the clear until it is sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct ControllerImport {
    /// Its line in the file.
    pub line: usize,
    /// The host.
    pub mac: Mac,
    /// The controller, without its secret.
    pub controller: Controller,
    /// The password, wiped when dropped.
    pub secret: Option<zeroize::Zeroizing<String>>,
}

impl fmt::Debug for ControllerImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} {}: {}", self.line, self.mac, self.controller)
    }
}

/// Most rows one import may carry.
pub const MAX_ROWS: usize = 100_000;

fn field(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn check_text(what: &str, v: &Option<String>, max: usize) -> Result<(), String> {
    match v {
        Some(s) if s.len() > max => Err(format!("{what} is longer than {max} characters")),
        Some(s) if s.chars().any(char::is_control) => {
            Err(format!("{what} contains control characters"))
        }
        _ => Ok(()),
    }
}

/// Checks one row's fields. Errors name the field, never the secret.
#[allow(clippy::too_many_arguments)]
fn check_row(
    line: usize,
    mac: &str,
    kind: &str,
    address: Option<&str>,
    port: Option<&str>,
    tls: Option<&str>,
    fingerprint: Option<&str>,
    ca_file: Option<&str>,
    user: Option<&str>,
    secret: Option<&str>,
) -> Result<ControllerImport, RowError> {
    let err = |error: String| RowError { line, error };
    let mac: Mac = mac.trim().parse().map_err(err)?;
    let kind: ControllerKind = kind.parse().map_err(err)?;
    let tls = match field(tls)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => matches!(kind, ControllerKind::Redfish),
        Some("yes" | "true" | "1") => true,
        Some("no" | "false" | "0") => false,
        Some(other) => return Err(err(format!("tls {other:?}: yes or no"))),
    };
    if tls && matches!(kind, ControllerKind::Ipmi | ControllerKind::Wol) {
        return Err(err(format!("tls: {} has no TLS", kind.name())));
    }
    let address = match field(address) {
        None if kind == ControllerKind::Wol => None,
        None => {
            return Err(err(format!(
                "address: a {} controller needs its IPv4 address",
                kind.name()
            )))
        }
        Some(_) if kind == ControllerKind::Wol => {
            return Err(err(
                "address: Wake-on-LAN has none (the packet goes out of the served interface)"
                    .into(),
            ))
        }
        Some(a) => Some(a.parse::<std::net::Ipv4Addr>().map_err(|_| {
            err(format!(
                "address {a:?}: an IPv4 address (management traffic goes to addresses, not names)"
            ))
        })?),
    };
    let port = match field(port) {
        None => kind.default_port(tls),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && kind != ControllerKind::Wol => Some(n),
            _ => return Err(err(format!("port {p:?}: 1 to 65535 (none for wol)"))),
        },
    };
    let fingerprint = match field(fingerprint) {
        None => None,
        Some(f) => {
            let hexpart = f.strip_prefix("sha256:").unwrap_or(&f).replace(':', "");
            if hexpart.len() != 64 || !hexpart.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err("fingerprint: sha256:<64 hex digits>".into()));
            }
            Some(format!("sha256:{}", hexpart.to_ascii_lowercase()))
        }
    };
    let ca_file = field(ca_file);
    check_text("ca_file", &ca_file, 4096).map_err(err)?;
    if !tls && (fingerprint.is_some() || ca_file.is_some()) {
        return Err(err("fingerprint/ca_file: only with tls = yes".into()));
    }
    let user = field(user);
    check_text("user", &user, 128).map_err(err)?;
    let secret = field(secret);
    if let Some(s) = &secret {
        if s.len() > 256 || s.chars().any(char::is_control) {
            return Err(err("secret: at most 256 printable characters".into()));
        }
    }
    if kind != ControllerKind::Wol && (user.is_none() || secret.is_none()) {
        return Err(err(format!(
            "user and secret: a {} controller needs both",
            kind.name()
        )));
    }
    if kind == ControllerKind::Wol && (user.is_some() || secret.is_some()) {
        return Err(err("user/secret: Wake-on-LAN has none".into()));
    }
    if tls && fingerprint.is_none() && ca_file.is_none() {
        return Err(err(
            "tls: a pinned fingerprint or a CA file is needed (an unverified certificate would hand the password to whoever answers)"
                .into(),
        ));
    }
    Ok(ControllerImport {
        line,
        mac,
        controller: Controller {
            kind,
            address,
            port,
            tls,
            fingerprint,
            ca_file,
            user,
            sealed_secret: None,
        },
        secret: secret.map(zeroize::Zeroizing::new),
    })
}

/// Parses a controller CSV: header `mac,kind,address,port,tls,fingerprint,ca_file,user,secret`
/// (only `mac` and `kind` are required as columns; header names are case-insensitive). Bad rows
/// are reported by line, the rest come back.
pub fn parse_csv(text: &str) -> Result<(Vec<ControllerImport>, Vec<RowError>), String> {
    let crate::inventory::CsvRead {
        headers,
        records,
        unreadable: mut bad,
    } = crate::inventory::read_csv(text, MAX_ROWS)?;
    let col = |name: &str| {
        headers.iter().position(|h| {
            h.trim_start_matches('\u{feff}')
                .trim()
                .eq_ignore_ascii_case(name)
        })
    };
    let (Some(mac_col), Some(kind_col)) = (col("mac"), col("kind")) else {
        return Err(format!(
            "the CSV header needs 'mac' and 'kind' (found: {}); expected mac,kind,address,port,tls,fingerprint,ca_file,user,secret",
            headers.iter().collect::<Vec<_>>().join(",")
        ));
    };
    let cols = [
        "address",
        "port",
        "tls",
        "fingerprint",
        "ca_file",
        "user",
        "secret",
    ]
    .map(col);
    let mut ok = Vec::new();
    for (line, rec) in records {
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c));
        match check_row(
            line,
            get(Some(mac_col)).unwrap_or_default(),
            get(Some(kind_col)).unwrap_or_default(),
            get(cols[0]),
            get(cols[1]),
            get(cols[2]),
            get(cols[3]),
            get(cols[4]),
            get(cols[5]),
            get(cols[6]),
        ) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(e),
        }
    }
    // Unreadable rows and refused ones, in file order.
    bad.sort_by_key(|e| e.line);
    Ok((ok, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn rows_are_checked_and_bad_ones_named_by_line_without_the_secret() {
        let csv = format!(
            "MAC,Kind,Address,Port,TLS,Fingerprint,CA_File,User,Secret\n\
             52:54:00:00:00:01,amt,10.1.2.3,,yes,{FP},,admin,s3cret!\n\
             52:54:00:00:00:02,redfish,10.1.2.4,8443,,,/etc/ca.pem,root,hunter2\n\
             52:54:00:00:00:03,ipmi,10.1.2.5,,,,,ADMIN,pw\n\
             52:54:00:00:00:04,wol,,,,,,,\n\
             52:54:00:00:00:05,amt,bmc.example.com,,,,,admin,topsecret\n\
             52:54:00:00:00:06,ipmi,10.1.2.6,,yes,,,u,topsecret\n\
             52:54:00:00:00:07,redfish,10.1.2.7,,,,,root,\n\
             zz,amt,10.1.2.8,,,,,a,topsecret\n\
             52:54:00:00:00:09,kvm,10.1.2.9,,,,,a,topsecret\n\
             52:54:00:00:00:0a,wol,10.1.2.10,,,,,,\n\
             52:54:00:00:00:0b,redfish,10.1.2.11,,,sha256:12,,root,topsecret\n"
        );
        let (ok, bad) = parse_csv(&csv).unwrap();
        assert_eq!(ok.len(), 4, "{bad:?}");
        assert_eq!(ok[0].controller.port, Some(16993));
        assert_eq!(
            ok[0].controller.to_string(),
            "amt at 10.1.2.3:16993 (TLS, pinned), user admin"
        );
        assert!(
            ok[1].controller.tls,
            "Redfish is HTTPS unless told otherwise"
        );
        assert_eq!(ok[1].controller.port, Some(8443));
        assert_eq!(ok[2].controller.port, Some(623));
        assert_eq!(ok[3].controller.kind, ControllerKind::Wol);
        assert_eq!(ok[3].controller.address, None);
        assert_eq!(ok[0].secret.as_deref().map(String::as_str), Some("s3cret!"));
        assert!(
            !format!("{ok:?}").contains("s3cret"),
            "Debug never shows a secret"
        );
        let lines: Vec<usize> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7, 8, 9, 10, 11, 12]);
        let text = format!("{bad:?}");
        assert!(!text.contains("topsecret"), "{text}");
        assert!(bad[0].error.contains("IPv4 address"), "{}", bad[0].error);
        assert!(bad[1].error.contains("ipmi has no TLS"));
        assert!(bad[2].error.contains("needs both"));
        assert!(bad[4].error.contains("one of amt, redfish, ipmi, wol"));
        assert!(bad[6].error.contains("fingerprint"));
        assert!(parse_csv("host,name\nx,y\n")
            .unwrap_err()
            .contains("'mac' and 'kind'"));
    }

    #[test]
    fn bad_rows_are_named_by_their_line_in_the_file_past_blank_lines() {
        let csv = "mac,kind\n\n52:54:00:00:00:01,wol\n\n\nzz,wol\n";
        let (ok, bad) = parse_csv(csv).unwrap();
        assert_eq!(ok[0].line, 3);
        assert_eq!(bad[0].line, 6, "{bad:?}");
    }
}
