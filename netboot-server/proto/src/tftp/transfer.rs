//! One read transfer as a deterministic state machine (sans-IO, no clock).
//!
//! The driver feeds it packets from the client's transfer ID and timer expiries, both with the
//! current time in milliseconds, and sends whatever datagrams it returns. Implements RFC 1350
//! (lock-step DATA/ACK), RFC 2347 (OACK, client ERROR 8 after OACK), RFC 2348 (blksize), RFC 2349
//! (tsize, timeout) and RFC 7440 (windowsize).
use super::packet::{data_packet, error_packet, ErrorCode, Packet};
use bytes::Bytes;

/// Server-side limits applied to what a client asks for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest blksize accepted (RFC 2348).
    pub max_blksize: usize,
    /// Largest windowsize accepted (RFC 7440).
    pub max_windowsize: u16,
    /// Initial retransmission timeout when the client does not ask for one.
    pub default_timeout_ms: u64,
    /// Retransmissions of the same window before giving up.
    pub max_retries: u32,
    /// Hard cap on one transfer's duration.
    pub max_duration_ms: u64,
    /// Largest `timeout` option acknowledged (RFC 2349 lets the server only accept or ignore
    /// the client's value: a longer one is not acknowledged and the default applies, so a
    /// client that never ACKs holds its slot seconds, not minutes).
    pub max_timeout_s: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blksize: 65464,
            max_windowsize: 64,
            default_timeout_ms: 1000,
            max_retries: 6,
            max_duration_ms: 15 * 60 * 1000,
            max_timeout_s: 5,
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Complete,
    /// The client sent an ERROR (EDK2 ends its tsize probe this way with code 8).
    ClientError {
        /// The error code.
        code: u16,
        /// The message.
        message: String,
    },
    /// No acknowledgement after every retransmission.
    TimedOut,
    /// Every block was sent and every block but the last acknowledged by a client that had
    /// answered in this transfer; the last block's acknowledgement never came. Clients that
    /// leave once they have the file do this when their final ACK is lost (grub and firmware
    /// do not linger to answer a retransmission, as RFC 1350's dally would have them).
    Unconfirmed,
    /// The per-transfer duration cap was reached.
    TooLong,
    /// The client sent something that makes no sense for a read transfer.
    Protocol(String),
    /// The client asked for the same file again (a new request from the same address) while
    /// this transfer waited for its acknowledgement: it gave this one up. Set by the driver,
    /// which sees the requests.
    Abandoned,
}

impl Outcome {
    /// The outcome's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::ClientError { .. } => "client-error",
            Self::TimedOut => "timed-out",
            Self::Unconfirmed => "unconfirmed",
            Self::TooLong => "too-long",
            Self::Protocol(_) => "protocol-error",
            Self::Abandoned => "abandoned",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Oack,
    /// Sending data.
    Data,
    Finished,
}

/// A read transfer of one in-memory file.
#[derive(Debug)]
pub struct Transfer {
    file: Bytes,
    blksize: usize,
    windowsize: u16,
    timeout_ms: u64,
    limits: Limits,
    oack: Option<Vec<u8>>,
    phase: Phase,
    /// Highest block (1-based, not wrapped) the client acknowledged.
    acked: u64,
    /// Highest block sent in the current window.
    sent_upto: u64,
    total_blocks: u64,
    retries: u32,
    deadline_ms: u64,
    started_ms: u64,
    bytes_sent: u64,
    outcome: Option<Outcome>,
    /// The client acknowledged something in this transfer (the OACK or a block).
    heard: bool,
}

/// The options negotiated for a request; `None` fields were not asked for or not accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// blksize asked for.
    pub blksize: Option<usize>,
    /// windowsize asked for.
    pub windowsize: Option<u16>,
    /// timeout asked for, seconds.
    pub timeout_s: Option<u8>,
    /// tsize asked for (0: tell me the size).
    pub tsize: Option<u64>,
}

/// Applies RFC 2348/2349/7440 to the client's options. Unknown or out-of-range options are left
/// out of the OACK (RFC 2347: the server simply does not acknowledge them).
pub fn negotiate(options: &[(String, String)], file_len: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated::default();
    for (k, v) in options {
        let Ok(val) = v.trim().parse::<u64>() else {
            continue;
        };
        match k.as_str() {
            "blksize" if (8..=65464).contains(&val) => {
                n.blksize = Some((val as usize).min(limits.max_blksize))
            }
            "windowsize" if (1..=65535).contains(&val) => {
                n.windowsize = Some((val as u16).min(limits.max_windowsize))
            }
            "timeout" if (1..=u64::from(limits.max_timeout_s)).contains(&val) => {
                n.timeout_s = Some(val as u8)
            }
            "tsize" => n.tsize = Some(file_len),
            _ => {}
        }
    }
    n
}

impl Transfer {
    /// Starts a transfer; returns it with the first datagrams to send (an OACK, or the first
    /// window of data when no option was accepted).
    pub fn start(
        file: Bytes,
        options: &[(String, String)],
        limits: &Limits,
        now_ms: u64,
    ) -> (Self, Vec<Vec<u8>>) {
        let n = negotiate(options, file.len() as u64, limits);
        let mut oack = Vec::new();
        if let Some(b) = n.blksize {
            oack.push(("blksize".to_string(), b.to_string()));
        }
        if let Some(t) = n.tsize {
            oack.push(("tsize".to_string(), t.to_string()));
        }
        if let Some(t) = n.timeout_s {
            oack.push(("timeout".to_string(), t.to_string()));
        }
        if let Some(w) = n.windowsize {
            oack.push(("windowsize".to_string(), w.to_string()));
        }
        let blksize = n.blksize.unwrap_or(512);
        let timeout_ms = n
            .timeout_s
            .map_or(limits.default_timeout_ms, |s| u64::from(s) * 1000);
        let mut t = Self {
            total_blocks: file.len() as u64 / blksize as u64 + 1,
            file,
            blksize,
            windowsize: n.windowsize.unwrap_or(1),
            timeout_ms,
            limits: limits.clone(),
            oack: (!oack.is_empty()).then(|| Packet::Oack(oack).encode()),
            phase: Phase::Oack,
            acked: 0,
            sent_upto: 0,
            retries: 0,
            deadline_ms: now_ms + timeout_ms,
            started_ms: now_ms,
            bytes_sent: 0,
            outcome: None,
            heard: false,
        };
        let out = match &t.oack {
            Some(o) => vec![o.clone()],
            None => {
                t.phase = Phase::Data;
                t.send_window(now_ms)
            }
        };
        (t, out)
    }

    /// The wait after the current send: the timeout doubled per retry, at most the largest
    /// timeout a client may ask for (so a silent client is given up on within about half a
    /// minute, not two).
    fn backoff_ms(&self) -> u64 {
        let cap = (u64::from(self.limits.max_timeout_s) * 1000).max(self.timeout_ms);
        (self.timeout_ms << self.retries.min(6)).min(cap)
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Whether it has ended.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// When the driver must call [`Transfer::on_timeout`] next.
    pub fn deadline_ms(&self) -> Option<u64> {
        (self.phase != Phase::Finished).then_some(self.deadline_ms)
    }

    /// Bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes the client acknowledged (where a transfer that stopped stopped).
    pub fn bytes_acked(&self) -> u64 {
        (self.acked * self.blksize as u64).min(self.file.len() as u64)
    }

    /// The negotiated block size.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// The negotiated window size.
    pub fn windowsize(&self) -> u16 {
        self.windowsize
    }

    fn block(&self, n: u64) -> Vec<u8> {
        let start = ((n - 1) * self.blksize as u64) as usize;
        let end = (start + self.blksize).min(self.file.len());
        let data = if start <= self.file.len() {
            &self.file[start..end]
        } else {
            &[][..]
        };
        // Block numbers wrap from 65535 to 0 (the convention of atftp, curl, tftp-hpa and iPXE).
        data_packet((n & 0xffff) as u16, data)
    }

    /// Sends blocks acked+1 ..= acked+windowsize.
    fn send_window(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        let last = (self.acked + u64::from(self.windowsize)).min(self.total_blocks);
        let out: Vec<Vec<u8>> = (self.acked + 1..=last).map(|n| self.block(n)).collect();
        self.bytes_sent += out.iter().map(|p| p.len() as u64 - 4).sum::<u64>();
        self.sent_upto = last;
        self.deadline_ms = now_ms + self.backoff_ms();
        out
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Finished;
        self.outcome = Some(outcome);
    }

    /// The client asked for the file again from a new transfer ID: ends this transfer if it
    /// has been waiting on a retransmission (no acknowledgement since its last timeout), so a
    /// client that gave it up does not hold its slot for the whole back-off. A transfer whose
    /// client is acknowledging goes on: a request spoofed from its address cannot end it.
    /// Returns the ERROR to send when it ended.
    pub fn abandon(&mut self) -> Option<Vec<u8>> {
        if self.phase == Phase::Finished || self.retries == 0 {
            return None;
        }
        self.finish(Outcome::Abandoned);
        Some(error_packet(
            ErrorCode::NotDefined as u16,
            "you asked for this file again: this transfer is given up",
        ))
    }

    /// Handles one datagram from the client's transfer ID.
    pub fn on_packet(&mut self, datagram: &[u8], now_ms: u64) -> Vec<Vec<u8>> {
        if self.phase == Phase::Finished {
            return Vec::new();
        }
        if now_ms.saturating_sub(self.started_ms) > self.limits.max_duration_ms {
            self.finish(Outcome::TooLong);
            return vec![error_packet(
                ErrorCode::NotDefined as u16,
                "transfer took too long",
            )];
        }
        match Packet::parse(datagram) {
            Ok(Packet::Error { code, message }) => {
                // RFC 2347: the client may end the transfer after the OACK; never answer an ERROR.
                self.finish(Outcome::ClientError { code, message });
                Vec::new()
            }
            Ok(Packet::Ack(wire)) => self.on_ack(wire, now_ms),
            Ok(other) => {
                let why = format!("unexpected {} during a read transfer", kind(&other));
                self.finish(Outcome::Protocol(why.clone()));
                vec![error_packet(ErrorCode::IllegalOperation as u16, &why)]
            }
            // A garbled datagram is ignored; the retransmission timer covers it.
            Err(_) => Vec::new(),
        }
    }

    fn on_ack(&mut self, wire: u16, now_ms: u64) -> Vec<Vec<u8>> {
        if self.phase == Phase::Oack {
            if wire != 0 {
                return Vec::new();
            }
            self.phase = Phase::Data;
            self.retries = 0;
            self.heard = true;
            return self.send_window(now_ms);
        }
        // Map the 16-bit block number onto the blocks in flight (acked ..= sent_upto).
        let Some(n) = (self.acked..=self.sent_upto)
            .rev()
            .find(|n| (n & 0xffff) as u16 == wire)
        else {
            // An old duplicate ACK: ignoring it avoids the Sorcerer's Apprentice bug (RFC 1123 4.2.3.1).
            return Vec::new();
        };
        if n == self.acked {
            // Duplicate of what we already had.
            return Vec::new();
        }
        self.acked = n;
        self.retries = 0;
        self.heard = true;
        if self.acked == self.total_blocks {
            self.finish(Outcome::Complete);
            return Vec::new();
        }
        // Either the whole window arrived, or (RFC 7440) only part of it did: in both cases the
        // next window starts right after the acknowledged block.
        self.send_window(now_ms)
    }

    /// The retransmission timer fired.
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        if self.phase == Phase::Finished || now_ms < self.deadline_ms {
            return Vec::new();
        }
        if self.retries >= self.limits.max_retries {
            let only_last_open = self.phase == Phase::Data
                && self.heard
                && self.sent_upto == self.total_blocks
                && self.acked + 1 == self.total_blocks;
            self.finish(if only_last_open {
                Outcome::Unconfirmed
            } else {
                Outcome::TimedOut
            });
            return vec![error_packet(
                ErrorCode::NotDefined as u16,
                "timed out waiting for ACK",
            )];
        }
        self.retries += 1;
        match self.phase {
            Phase::Oack => {
                self.deadline_ms = now_ms + self.backoff_ms();
                vec![self.oack.clone().unwrap_or_default()]
            }
            _ => self.send_window(now_ms),
        }
    }
}

fn kind(p: &Packet<'_>) -> &'static str {
    match p {
        Packet::Rrq { .. } => "RRQ",
        Packet::Wrq { .. } => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack(_) => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack(_) => "OACK",
    }
}
