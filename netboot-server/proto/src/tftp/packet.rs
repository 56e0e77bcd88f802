//! TFTP packets (RFC 1350) with the option extension (RFC 2347).

/// Read request.
pub const OP_RRQ: u16 = 1;
/// Write request.
pub const OP_WRQ: u16 = 2;
/// Data.
pub const OP_DATA: u16 = 3;
/// Acknowledgement.
pub const OP_ACK: u16 = 4;
/// Error.
pub const OP_ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// RFC 1350 error codes (and 8, RFC 2347 option negotiation refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined; see the message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionsRefused = 8,
}

/// A TFTP datagram (RFC 1350, 2347).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A read request.
    Rrq {
        /// The file asked for.
        filename: String,
        /// octet or netascii.
        mode: String,
        /// Options asked for.
        options: Vec<(String, String)>,
    },
    /// A write request (always refused).
    Wrq {
        /// The file.
        filename: String,
        /// The mode.
        mode: String,
    },
    /// A block of data.
    Data {
        /// The block number.
        block: u16,
        /// Its bytes.
        data: &'a [u8],
    },
    /// An acknowledgement of a block.
    Ack(u16),
    /// An error.
    Error {
        /// The code.
        code: u16,
        /// The message.
        message: String,
    },
    /// The options accepted.
    Oack(Vec<(String, String)>),
}

/// Why a datagram did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed TFTP packet: {0}")]
pub struct ParseError(pub &'static str);

fn strings(body: &[u8]) -> Result<Vec<String>, ParseError> {
    if body.last() != Some(&0) {
        return Err(ParseError("string fields are not NUL-terminated"));
    }
    body[..body.len() - 1]
        .split(|b| *b == 0)
        .map(|s| {
            std::str::from_utf8(s)
                .map(str::to_string)
                .map_err(|_| ParseError("string field is not UTF-8"))
        })
        .collect()
}

fn pairs(fields: &[String]) -> Result<Vec<(String, String)>, ParseError> {
    if !fields.len().is_multiple_of(2) {
        return Err(ParseError("option without a value"));
    }
    Ok(fields
        .chunks(2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect())
}

impl<'a> Packet<'a> {
    /// Parses a datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < 4 {
            return Err(ParseError("shorter than 4 bytes"));
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match op {
            OP_RRQ | OP_WRQ => {
                let f = strings(body)?;
                if f.len() < 2 || f[0].is_empty() {
                    return Err(ParseError("request without file name and mode"));
                }
                let mode = f[1].to_ascii_lowercase();
                if op == OP_WRQ {
                    return Ok(Packet::Wrq {
                        filename: f[0].clone(),
                        mode,
                    });
                }
                Ok(Packet::Rrq {
                    filename: f[0].clone(),
                    mode,
                    options: pairs(&f[2..])?,
                })
            }
            OP_DATA => Ok(Packet::Data {
                block: u16::from_be_bytes([body[0], body[1]]),
                data: &body[2..],
            }),
            OP_ACK if body.len() == 2 => Ok(Packet::Ack(u16::from_be_bytes([body[0], body[1]]))),
            OP_ACK => Err(ParseError("ACK is not 4 bytes")),
            OP_ERROR => {
                let code = u16::from_be_bytes([body[0], body[1]]);
                // Some clients omit the trailing NUL; accept the message either way.
                let msg = &body[2..];
                let msg = msg.strip_suffix(&[0]).unwrap_or(msg);
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(msg).into_owned(),
                })
            }
            OP_OACK => Ok(Packet::Oack(pairs(&strings(body)?)?)),
            _ => Err(ParseError("unknown opcode")),
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put_str = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        match self {
            Packet::Rrq {
                filename,
                mode,
                options,
            } => {
                out.extend_from_slice(&OP_RRQ.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, mode);
                for (k, v) in options {
                    put_str(&mut out, k);
                    put_str(&mut out, v);
                }
            }
            Packet::Wrq { filename, mode } => {
                out.extend_from_slice(&OP_WRQ.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, mode);
            }
            Packet::Data { block, data } => return data_packet(*block, data),
            Packet::Ack(b) => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&b.to_be_bytes());
            }
            Packet::Error { code, message } => return error_packet(*code, message),
            Packet::Oack(opts) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                for (k, v) in opts {
                    put_str(&mut out, k);
                    put_str(&mut out, v);
                }
            }
        }
        out
    }
}

/// A DATA datagram.
pub fn data_packet(block: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// An ERROR datagram.
pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rrq_with_options() {
        let raw = b"\x00\x01/grub/grub.cfg\x00octet\x00blksize\x001468\x00TSIZE\x000\x00";
        match Packet::parse(raw).unwrap() {
            Packet::Rrq {
                filename,
                mode,
                options,
            } => {
                assert_eq!(filename, "/grub/grub.cfg");
                assert_eq!(mode, "octet");
                assert_eq!(
                    options,
                    [
                        ("blksize".into(), "1468".into()),
                        ("tsize".into(), "0".into())
                    ]
                );
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn malformed() {
        for raw in [
            &b""[..],
            b"\x00\x01",
            b"\x00\x01abc",
            b"\x00\x09\x00\x00",
            b"\x00\x04\x00\x01\x00",
            b"\x00\x01\x00octet\x00",
            b"\x00\x01f\x00octet\x00blksize\x00",
        ] {
            assert!(Packet::parse(raw).is_err(), "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::parse(&data);
        }

        #[test]
        fn round_trip(block: u16, data in prop::collection::vec(any::<u8>(), 0..600), code in 0u16..9, msg in "[a-z ]{0,40}",
                      name in "[a-zA-Z0-9/._-]{1,40}", opts in prop::collection::vec(("[a-z]{1,8}", "[0-9]{1,5}"), 0..4)) {
            let pk = [
                Packet::Data { block, data: &data },
                Packet::Ack(block),
                Packet::Error { code, message: msg.clone() },
                Packet::Rrq { filename: name.clone(), mode: "octet".into(), options: opts.clone() },
                Packet::Oack(opts.clone()),
            ];
            for p in pk {
                if matches!(&p, Packet::Oack(o) if o.is_empty()) { continue; }
                let bytes = p.encode();
                prop_assert_eq!(Packet::parse(&bytes).unwrap(), p);
            }
        }
    }
}
