//! Drives a `Transfer` against a simulated client over a lossy link on a virtual clock, so loss,
//! duplicates, timeouts and block-number rollover are tested in microseconds.
use super::packet::{Packet, OP_ACK, OP_DATA, OP_ERROR, OP_OACK};
use super::transfer::{negotiate, Limits, Outcome, Transfer};
use bytes::Bytes;
use proptest::prelude::*;

/// A RFC 7440-style client: acknowledges each full window, or the last in-order block on a gap.
struct Client {
    blksize: usize,
    window: u16,
    expected: u64,
    in_window: u16,
    got: Vec<u8>,
    done: bool,
    last_ack: Option<Vec<u8>>,
    timeout_ms: u64,
    deadline_ms: u64,
}

impl Client {
    fn new(blksize: usize, window: u16) -> Self {
        Self {
            blksize,
            window,
            expected: 1,
            in_window: 0,
            got: Vec::new(),
            done: false,
            last_ack: None,
            timeout_ms: 700,
            deadline_ms: 700,
        }
    }
    fn ack(&mut self, n: u64, now: u64) -> Vec<u8> {
        let a = Packet::Ack((n & 0xffff) as u16).encode();
        self.last_ack = Some(a.clone());
        self.in_window = 0;
        self.deadline_ms = now + self.timeout_ms;
        a
    }
    fn on_packet(&mut self, p: &[u8], now: u64) -> Vec<Vec<u8>> {
        match Packet::parse(p).unwrap() {
            Packet::Oack(opts) => {
                for (k, v) in opts {
                    match k.as_str() {
                        "blksize" => self.blksize = v.parse().unwrap(),
                        "windowsize" => self.window = v.parse().unwrap(),
                        _ => {}
                    }
                }
                vec![self.ack(0, now)]
            }
            Packet::Data { block, data } => {
                if self.done {
                    // Dally (RFC 1350): a retransmitted last block means our final ACK was lost.
                    return self.last_ack.clone().into_iter().collect();
                }
                if block == (self.expected & 0xffff) as u16 {
                    self.got.extend_from_slice(data);
                    self.expected += 1;
                    self.in_window += 1;
                    self.deadline_ms = now + self.timeout_ms;
                    if data.len() < self.blksize {
                        self.done = true;
                        return vec![self.ack(self.expected - 1, now)];
                    }
                    if self.in_window == self.window {
                        return vec![self.ack(self.expected - 1, now)];
                    }
                    vec![]
                } else if self.in_window > 0 || block != ((self.expected - 1) & 0xffff) as u16 {
                    // A gap: tell the server where we are (RFC 7440 section 4).
                    vec![self.ack(self.expected - 1, now)]
                } else {
                    vec![]
                }
            }
            Packet::Error { .. } => {
                self.done = true;
                vec![]
            }
            p => panic!("client got {p:?}"),
        }
    }
    fn on_timeout(&mut self, now: u64) -> Vec<Vec<u8>> {
        if self.done || now < self.deadline_ms {
            return vec![];
        }
        self.deadline_ms = now + self.timeout_ms;
        self.last_ack.clone().into_iter().collect()
    }
}

struct Run {
    outcome: Outcome,
    got: Vec<u8>,
    server_packets: usize,
    elapsed_ms: u64,
}

/// Runs a transfer; `drop_s2c(i)` / `drop_c2s(i)` decide whether the i-th packet in each
/// direction is lost.
fn run(
    file: &[u8],
    opts: &[(&str, &str)],
    mut drop_s2c: impl FnMut(usize) -> bool,
    mut drop_c2s: impl FnMut(usize) -> bool,
) -> Run {
    let limits = Limits::default();
    let opts: Vec<(String, String)> = opts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut now = 0u64;
    let (mut t, first) = Transfer::start(Bytes::copy_from_slice(file), &opts, &limits, now);
    let mut client = Client::new(512, 1);
    let (mut si, mut ci) = (0usize, 0usize);
    let mut to_client: Vec<Vec<u8>> = first;
    let mut server_packets = to_client.len();
    for _ in 0..5_000_000 {
        let mut to_server = Vec::new();
        for p in to_client.drain(..) {
            si += 1;
            if !drop_s2c(si) {
                to_server.extend(client.on_packet(&p, now));
            }
        }
        for p in to_server {
            ci += 1;
            if !drop_c2s(ci) {
                let out = t.on_packet(&p, now);
                server_packets += out.len();
                to_client.extend(out);
            }
        }
        if t.is_finished() {
            break;
        }
        if to_client.is_empty() {
            // Nothing in flight: advance the virtual clock to the next timer.
            let next = t.deadline_ms().unwrap().min(if client.done {
                u64::MAX
            } else {
                client.deadline_ms
            });
            now = next.max(now + 1);
            let out = t.on_timeout(now);
            server_packets += out.len();
            to_client.extend(out);
            for p in client.on_timeout(now) {
                ci += 1;
                if !drop_c2s(ci) {
                    let out = t.on_packet(&p, now);
                    server_packets += out.len();
                    to_client.extend(out);
                }
            }
        }
    }
    Run {
        outcome: t.outcome().cloned().expect("transfer finished"),
        got: client.got,
        server_packets,
        elapsed_ms: now,
    }
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn lock_step_exact_multiple_ends_with_empty_block() {
    let f = file(512 * 4);
    let r = run(&f, &[], |_| false, |_| false);
    assert_eq!(r.outcome, Outcome::Complete);
    assert_eq!(r.got, f);
    assert_eq!(r.server_packets, 5, "4 full blocks and one empty block");
}

#[test]
fn options_negotiated_and_windowed() {
    let f = file(100_000);
    let r = run(
        &f,
        &[("blksize", "1468"), ("tsize", "0"), ("windowsize", "16")],
        |_| false,
        |_| false,
    );
    assert_eq!(r.outcome, Outcome::Complete);
    assert_eq!(r.got, f);
    assert_eq!(r.server_packets, 1 + 100_000 / 1468 + 1);
}

#[test]
fn oack_lists_only_understood_options() {
    let opts = [
        ("blksize".to_string(), "99999".to_string()),
        ("tsize".into(), "0".into()),
        ("bogus".into(), "1".into()),
        ("windowsize".into(), "500".into()),
    ];
    let (_, out) = Transfer::start(Bytes::from_static(b"hello"), &opts, &Limits::default(), 0);
    assert_eq!(out[0][..2], OP_OACK.to_be_bytes());
    let Packet::Oack(o) = Packet::parse(&out[0]).unwrap() else {
        panic!()
    };
    assert_eq!(
        o,
        [
            ("tsize".to_string(), "5".to_string()),
            ("windowsize".into(), "64".into())
        ]
    );
}

#[test]
fn a_fifth_of_data_packets_lost_still_completes() {
    let f = file(50_000);
    // Pseudo-random rather than periodic loss: a period that divides the window size would drop
    // the same block of every retransmitted window, which no real network does.
    let lossy = |i: usize| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59 < 6;
    for opts in [
        &[][..],
        &[("windowsize", "8")][..],
        &[("blksize", "1024"), ("windowsize", "4")][..],
    ] {
        let r = run(&f, opts, lossy, |_| false);
        assert_eq!(r.outcome, Outcome::Complete, "{opts:?}");
        assert_eq!(r.got, f, "{opts:?}");
    }
}

#[test]
fn lost_acks_still_complete() {
    let f = file(20_000);
    let r = run(
        &f,
        &[("windowsize", "4")],
        |_| false,
        |i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59 < 10,
    );
    assert_eq!(r.outcome, Outcome::Complete);
    assert_eq!(r.got, f);
}

#[test]
fn duplicate_ack_does_not_resend() {
    let f = file(2000);
    let (mut t, out) = Transfer::start(Bytes::copy_from_slice(&f), &[], &Limits::default(), 0);
    assert_eq!(out.len(), 1);
    let ack1 = Packet::Ack(1).encode();
    assert_eq!(t.on_packet(&ack1, 1).len(), 1, "block 2 follows ACK 1");
    assert!(
        t.on_packet(&ack1, 2).is_empty(),
        "a duplicate ACK 1 must not resend block 2 (Sorcerer's Apprentice)"
    );
}

#[test]
fn error_after_oack_ends_at_once() {
    let (mut t, out) = Transfer::start(
        Bytes::from_static(b"x"),
        &[("tsize".into(), "0".into())],
        &Limits::default(),
        0,
    );
    assert_eq!(out[0][..2], OP_OACK.to_be_bytes());
    let err = Packet::Error {
        code: 8,
        message: "User aborted the transfer".into(),
    }
    .encode();
    assert!(t.on_packet(&err, 5).is_empty(), "never answer an ERROR");
    assert!(t.is_finished());
    assert_eq!(
        t.outcome(),
        Some(&Outcome::ClientError {
            code: 8,
            message: "User aborted the transfer".into()
        })
    );
    assert!(t.on_timeout(100_000).is_empty());
    assert_eq!(t.deadline_ms(), None);
}

#[test]
fn a_long_timeout_option_is_not_acknowledged() {
    let opts = [
        ("timeout".to_string(), "255".to_string()),
        ("timeout".to_string(), "3".to_string()),
    ];
    let n = negotiate(&opts[..1], 3, &Limits::default());
    assert_eq!(
        n.timeout_s, None,
        "255 s is beyond the 5 s the server accepts"
    );
    let n = negotiate(&opts[1..], 3, &Limits::default());
    assert_eq!(n.timeout_s, Some(3));
}

#[test]
fn silent_client_times_out_with_backoff() {
    let (mut t, _) = Transfer::start(Bytes::from_static(b"abc"), &[], &Limits::default(), 0);
    let mut times = Vec::new();
    while let Some(d) = t.deadline_ms() {
        let out = t.on_timeout(d);
        times.push(d);
        if t.is_finished() {
            assert_eq!(out[0][..2], OP_ERROR.to_be_bytes());
        } else {
            assert_eq!(out[0][..2], OP_DATA.to_be_bytes());
        }
    }
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [2000, 4000, 5000, 5000, 5000, 5000],
        "exponential backoff, capped at the largest timeout a client may ask for"
    );
    assert!(
        times.last().unwrap() < &30_000,
        "a silent client holds its slot under 30 s"
    );
}

#[test]
fn a_last_block_never_acknowledged_is_unconfirmed_not_timed_out() {
    let exhaust = |t: &mut Transfer| {
        while let Some(d) = t.deadline_ms() {
            t.on_timeout(d);
        }
    };
    // grub's way: options, ACK 0, the only block, then gone.
    let opts = [("blksize".to_string(), "1024".to_string())];
    let (mut t, _) = Transfer::start(
        Bytes::from_static(b"50 bytes of initrd"),
        &opts,
        &Limits::default(),
        0,
    );
    let data = t.on_packet(b"\x00\x04\x00\x00", 1);
    assert_eq!(data.len(), 1);
    exhaust(&mut t);
    assert_eq!(t.outcome(), Some(&Outcome::Unconfirmed));
    assert_eq!(t.outcome().unwrap().name(), "unconfirmed");
    // Two blocks, the first acknowledged, the last not.
    let (mut t, _) = Transfer::start(Bytes::from(vec![7u8; 700]), &[], &Limits::default(), 0);
    t.on_packet(b"\x00\x04\x00\x01", 1);
    exhaust(&mut t);
    assert_eq!(t.outcome(), Some(&Outcome::Unconfirmed));
    // The first of two blocks never acknowledged: it stopped there.
    let (mut t, _) = Transfer::start(Bytes::from(vec![7u8; 700]), &[], &Limits::default(), 0);
    exhaust(&mut t);
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    // A client that never answered at all, even for a one-block file: timed out.
    let (mut t, _) = Transfer::start(Bytes::from_static(b"abc"), &[], &Limits::default(), 0);
    exhaust(&mut t);
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    // The OACK never acknowledged: timed out.
    let (mut t, _) = Transfer::start(Bytes::from_static(b"abc"), &opts, &Limits::default(), 0);
    exhaust(&mut t);
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
}

#[test]
fn a_new_request_ends_only_a_transfer_that_waits_on_a_retransmission() {
    let data = Bytes::from(file(5000));
    let (mut t, _) = Transfer::start(data, &[], &Limits::default(), 0);
    // Acknowledged so far: a request from its address (spoofed or not) leaves it alone.
    assert!(t.on_packet(&Packet::Ack(1).encode(), 10).len() == 1);
    assert_eq!(t.abandon(), None);
    assert!(!t.is_finished());
    // Its client fell silent: after one retransmission the new request ends it.
    let d = t.deadline_ms().unwrap();
    assert_eq!(t.on_timeout(d).len(), 1);
    let err = t.abandon().expect("an ERROR for the old transfer ID");
    assert_eq!(err[..2], OP_ERROR.to_be_bytes());
    assert_eq!(t.outcome(), Some(&Outcome::Abandoned));
    assert_eq!(t.bytes_acked(), 512, "where the client stopped");
    assert_eq!(t.abandon(), None, "once");
}

#[test]
fn block_number_rollover_over_32_mib() {
    let f = file(33 * 1024 * 1024 + 17);
    let r = run(&f, &[], |i| i == 70_000, |_| false);
    assert_eq!(r.outcome, Outcome::Complete);
    assert!(r.got == f, "file differs after rollover");
    let r = run(&f, &[("windowsize", "16")], |i| i % 9_999 == 0, |_| false);
    assert_eq!(r.outcome, Outcome::Complete);
    assert!(r.got == f, "file differs after rollover with windowsize");
}

#[test]
fn unexpected_packet_ends_with_error() {
    let (mut t, _) = Transfer::start(Bytes::from_static(b"abc"), &[], &Limits::default(), 0);
    let out = t.on_packet(
        &Packet::Data {
            block: 1,
            data: b"x",
        }
        .encode(),
        1,
    );
    assert_eq!(out[0][..2], OP_ERROR.to_be_bytes());
    assert!(matches!(t.outcome(), Some(Outcome::Protocol(_))));
    // Garbage is ignored, not fatal.
    let (mut t, _) = Transfer::start(Bytes::from_static(b"abc"), &[], &Limits::default(), 0);
    assert!(t.on_packet(b"\x00", 1).is_empty());
    assert!(!t.is_finished());
    assert_eq!(OP_ACK, 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Under any loss pattern short of total loss, the client ends up with exactly the file.
    #[test]
    fn random_loss_never_corrupts(len in 0usize..40_000, seed: u64, loss in 0u64..30, window in 1u16..20, blk in prop::sample::select(vec![512usize, 1024, 1468])) {
        let f = file(len);
        let mut x = seed | 1;
        let mut rnd = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x % 100 };
        let mut rnd2 = { let mut y = seed.rotate_left(17) | 1; move || { y ^= y << 13; y ^= y >> 7; y ^= y << 17; y % 100 } };
        let w = window.to_string();
        let b = blk.to_string();
        let r = run(&f, &[("windowsize", &w), ("blksize", &b)], |_| rnd() < loss, |_| rnd2() < loss);
        match r.outcome {
            Outcome::Complete => prop_assert_eq!(r.got, f),
            Outcome::TimedOut => prop_assert!(loss > 0 && r.elapsed_ms > 0),
            // Every block but the last acknowledged: the client has all but at most that one.
            Outcome::Unconfirmed => {
                prop_assert!(loss > 0);
                prop_assert!(f.starts_with(&r.got[..r.got.len().min(f.len())]));
            }
            o => prop_assert!(false, "unexpected outcome {:?}", o),
        }
    }
}
