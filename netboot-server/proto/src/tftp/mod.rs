//! TFTP: packet codec, the per-transfer state machine and request checks.
pub mod packet;
pub mod transfer;

#[cfg(test)]
mod sim_tests;

pub use packet::{ErrorCode, Packet};
pub use transfer::{Limits, Outcome, Transfer};

/// Why a request is refused, with the TFTP error code to send (the TFTP side's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// The ERROR datagram.
    pub fn packet(&self) -> Vec<u8> {
        packet::error_packet(self.code as u16, &self.message)
    }
}

/// A checked read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Normalized path: `/`-separated, relative to the TFTP root, no empty, `.` or `..` parts.
    pub path: String,
    /// Mode netascii (line ends converted).
    pub netascii: bool,
    /// RFC 2347 options, in the order sent.
    pub options: Vec<(String, String)>,
}

/// Normalizes a client's file name. Backslashes (Windows-style loaders) become `/`; a leading `/`
/// is taken relative to the TFTP root (as tftpd-hpa's secure mode does), so nothing outside the
/// root can even be named; `..` is refused outright rather than resolved.
pub fn normalize_path(name: &str) -> Result<String, Refusal> {
    if name.len() > 512 || name.contains('\0') {
        return Err(Refusal::new(
            ErrorCode::AccessViolation,
            "file name refused",
        ));
    }
    let unified = name.replace('\\', "/");
    if unified.len() >= 2 && unified.as_bytes()[1] == b':' {
        return Err(Refusal::new(
            ErrorCode::AccessViolation,
            "drive letters are not allowed",
        ));
    }
    let mut parts = Vec::new();
    for part in unified.split('/') {
        match part {
            "" | "." => continue,
            ".." => {
                return Err(Refusal::new(
                    ErrorCode::AccessViolation,
                    "path traversal refused",
                ))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(Refusal::new(ErrorCode::FileNotFound, "no file name"));
    }
    Ok(parts.join("/"))
}

/// Checks a first datagram on the server port: only RRQ in octet or netascii mode is accepted.
pub fn check_request(datagram: &[u8]) -> Result<ReadRequest, Refusal> {
    match Packet::parse(datagram) {
        Ok(Packet::Rrq {
            filename,
            mode,
            options,
        }) => {
            let netascii = match mode.as_str() {
                "octet" => false,
                "netascii" => true,
                m => {
                    return Err(Refusal::new(
                        ErrorCode::IllegalOperation,
                        format!("transfer mode {m:?} is not supported"),
                    ))
                }
            };
            Ok(ReadRequest {
                path: normalize_path(&filename)?,
                netascii,
                options,
            })
        }
        Ok(Packet::Wrq { .. }) => Err(Refusal::new(
            ErrorCode::AccessViolation,
            "this server is read-only",
        )),
        Ok(_) => Err(Refusal::new(
            ErrorCode::IllegalOperation,
            "expected a read request",
        )),
        Err(e) => Err(Refusal::new(ErrorCode::IllegalOperation, e.to_string())),
    }
}

/// RFC 1350 netascii: LF -> CR LF, CR -> CR NUL.
pub fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_table() {
        let ok = [
            ("undionly.kpxe", "undionly.kpxe"),
            ("/grub/grub.cfg", "grub/grub.cfg"),
            ("\\EFI\\boot\\grubx64.efi", "EFI/boot/grubx64.efi"),
            ("grub//./grub.cfg", "grub/grub.cfg"),
            ("/etc/passwd", "etc/passwd"),
        ];
        for (i, o) in ok {
            assert_eq!(normalize_path(i).unwrap(), o);
        }
        for bad in [
            "../../etc/passwd",
            "grub/../../x",
            "..\\x",
            "C:\\Windows",
            "/",
            "",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalize_path("a/../b").unwrap_err().code,
            ErrorCode::AccessViolation
        );
    }

    #[test]
    fn request_checks() {
        let wrq = Packet::Wrq {
            filename: "x".into(),
            mode: "octet".into(),
        }
        .encode();
        assert_eq!(
            check_request(&wrq).unwrap_err().code,
            ErrorCode::AccessViolation
        );
        let mail = Packet::Rrq {
            filename: "x".into(),
            mode: "mail".into(),
            options: vec![],
        }
        .encode();
        assert_eq!(
            check_request(&mail).unwrap_err().code,
            ErrorCode::IllegalOperation
        );
        assert!(check_request(b"\x00\x03\x00\x01data").is_err());
        let r = check_request(
            &Packet::Rrq {
                filename: "A\\B".into(),
                mode: "NetASCII".into(),
                options: vec![],
            }
            .encode(),
        )
        .unwrap();
        assert_eq!((r.path.as_str(), r.netascii), ("A/B", true));
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
    }
}
