//! TFTP: the packet codec (parse, and parse after encode gives the same packet), the request
//! check (no path the check accepts may leave the root), and a whole transfer driven by the
//! input: the first bytes are a read request, the rest a script of client datagrams and timer
//! expiries. Every datagram the server sends must parse, no block may be longer than the
//! negotiated blksize, and a finished transfer sends nothing more.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use netboot_proto::tftp::{check_request, Limits, Packet, Transfer};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(rest.len());
    let (request, script) = rest.split_at(split);

    // The codec on its own.
    for bytes in [request, script] {
        if let Ok(p) = Packet::parse(bytes) {
            let again = p.encode();
            assert_eq!(
                Packet::parse(&again).as_ref(),
                Ok(&p),
                "encode/parse round trip"
            );
        }
    }

    let Ok(req) = check_request(request) else {
        return;
    };
    assert!(
        !req.path.starts_with('/'),
        "absolute path accepted: {}",
        req.path
    );
    assert!(
        !req.path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".."),
        "path with empty, . or .. parts accepted: {}",
        req.path
    );

    // A file whose size comes from the script's length, so small and multi-block files (and
    // exact multiples of the block size) are both reached.
    let len = script.len() * 7 % 5000;
    let file = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
    let limits = Limits {
        max_duration_ms: 60_000,
        ..Limits::default()
    };
    let mut now = 0u64;
    let (mut t, first) = Transfer::start(file, &req.options, &limits, now);
    let blksize = t.blksize();
    let check = |out: &[Vec<u8>]| {
        for d in out {
            match Packet::parse(d) {
                Ok(Packet::Data { data, .. }) => assert!(data.len() <= blksize),
                Ok(_) => {}
                Err(e) => panic!("server sent a datagram that does not parse: {e}"),
            }
        }
    };
    check(&first);
    let mut i = 0;
    while i < script.len() {
        let op = script[i];
        i += 1;
        let was_finished = t.is_finished();
        let out = if op & 1 == 0 {
            // A timer expiry some time later.
            now += u64::from(op) * 40;
            t.on_timeout(now)
        } else {
            // A client datagram of the next (op >> 1) bytes; short ACKs are likeliest.
            let n = usize::from(op >> 1).min(script.len() - i);
            let d = &script[i..i + n];
            i += n;
            now += 1;
            t.on_packet(d, now)
        };
        if was_finished {
            assert!(out.is_empty(), "a finished transfer sent more");
        }
        check(&out);
    }
    assert!(t.bytes_sent() <= 1 << 40);
});
