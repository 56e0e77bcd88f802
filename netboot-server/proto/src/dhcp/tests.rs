//! Table tests of the DHCP decision core.
use super::decide::*;
use super::pool::LeasePool;
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use fleet::{BootDecision, DefaultPolicy, HostRecord, HostState, Mac};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn cfg(mode: Mode) -> DhcpConfig {
    DhcpConfig {
        mode,
        server_ip: SERVER,
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: vec![],
        lease_secs: 3600,
        http_base: "http://10.99.0.1:8080".into(),
        secure_boot_off: false,
    }
}

#[derive(Clone, Copy)]
enum C {
    BiosRom,
    BiosIpxe,
    UefiPxe,
    UefiIpxe,
    Http,
    Windows,
    Plain,
}

fn packet(c: C, t: MessageType, extra: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0xdead_beef,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(t));
    let (vc, arch): (&[u8], Option<u16>) = match c {
        C::BiosRom | C::BiosIpxe => (b"PXEClient:Arch:00000:UNDI:002001", Some(0)),
        C::UefiPxe | C::UefiIpxe => (b"PXEClient:Arch:00007:UNDI:003000", Some(7)),
        C::Http => (b"HTTPClient:Arch:00016:UNDI:003000", Some(16)),
        C::Windows => (b"MSFT 5.0", None),
        C::Plain => (b"", None),
    };
    if !vc.is_empty() {
        o.insert(DhcpOption::ClassIdentifier(vc.to_vec()));
    }
    if let Some(a) = arch {
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
    }
    if matches!(c, C::BiosIpxe | C::UefiIpxe) {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0x13, 1, 1],
        )));
    }
    o.insert(DhcpOption::ClientMachineIdentifier(
        [&[0u8][..], &[7u8; 16]].concat(),
    ));
    for e in extra {
        o.insert(e);
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn run(
    c: C,
    t: MessageType,
    port: u16,
    mode: Mode,
    host: Option<&HostRecord>,
    pool: Option<&mut LeasePool>,
    extra: Vec<DhcpOption>,
) -> Outcome {
    let inb = parse(&packet(c, t, extra)).unwrap();
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 50), 68);
    decide(
        &inb,
        Via { port, src },
        host,
        &DefaultPolicy::default(),
        &cfg(mode),
        pool,
        1_000,
    )
}

fn file_of(o: &Outcome) -> Option<String> {
    let m = &o.reply.as_ref()?.msg;
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => Some(String::from_utf8(f.clone()).unwrap()),
        _ => None,
    }
}

fn msg_type(o: &Outcome) -> MessageType {
    o.reply.as_ref().unwrap().msg.opts().msg_type().unwrap()
}

#[test]
fn proxy_offers_boot_files_per_client_kind() {
    let cases = [
        (C::BiosRom, Some("undionly.kpxe")),
        (
            C::BiosIpxe,
            Some("http://10.99.0.1:8080/boot/52:54:00:12:34:56.ipxe"),
        ),
        (C::UefiPxe, Some("shimx64.efi")),
        (
            C::UefiIpxe,
            Some("http://10.99.0.1:8080/boot/52:54:00:12:34:56.ipxe"),
        ),
        (C::Http, Some("http://10.99.0.1:8080/image/ipxe.efi")),
        (C::Windows, None),
        (C::Plain, None),
    ];
    for (c, want) in cases {
        let o = run(
            c,
            MessageType::Discover,
            67,
            Mode::Proxy,
            None,
            None,
            vec![],
        );
        assert_eq!(file_of(&o).as_deref(), want);
        if let Some(r) = &o.reply {
            let m = &r.msg;
            assert_eq!(msg_type(&o), MessageType::Offer);
            assert_eq!(m.opcode(), Opcode::BootReply);
            assert_eq!(m.xid(), 0xdead_beef);
            assert!(
                m.yiaddr().is_unspecified(),
                "a proxy offer carries no address"
            );
            assert_eq!(m.siaddr(), SERVER);
            assert_eq!(
                m.opts().get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(SERVER))
            );
            let vc = if matches!(c, C::Http) {
                &b"HTTPClient"[..]
            } else {
                b"PXEClient"
            };
            assert_eq!(
                m.opts().get(OptionCode::ClassIdentifier),
                Some(&DhcpOption::ClassIdentifier(vc.to_vec()))
            );
            assert!(
                m.opts().get(OptionCode::ClientMachineIdentifier).is_some(),
                "option 97 echoed"
            );
            assert_eq!(r.dest, Dest::Broadcast);
            assert_eq!(o.decision, Some(BootDecision::Payload));
        }
    }
    let mut c = cfg(Mode::Proxy);
    c.secure_boot_off = true;
    let inb = parse(&packet(C::UefiPxe, MessageType::Discover, vec![])).unwrap();
    let o = decide(
        &inb,
        Via {
            port: 67,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        },
        None,
        &DefaultPolicy::default(),
        &c,
        None,
        0,
    );
    assert_eq!(file_of(&o).as_deref(), Some("snponly.efi"));
}

#[test]
fn proxy_pxe_port_and_requests() {
    let o = run(
        C::UefiPxe,
        MessageType::Request,
        PXE_PORT,
        Mode::Proxy,
        None,
        None,
        vec![],
    );
    assert_eq!(msg_type(&o), MessageType::Ack);
    assert_eq!(
        o.reply.unwrap().dest,
        Dest::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 50), 68))
    );
    let other = DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 99, 0, 254));
    assert!(run(
        C::UefiPxe,
        MessageType::Request,
        67,
        Mode::Proxy,
        None,
        None,
        vec![other]
    )
    .reply
    .is_none());
    let us = DhcpOption::ServerIdentifier(SERVER);
    assert!(
        run(
            C::UefiPxe,
            MessageType::Request,
            67,
            Mode::Proxy,
            None,
            None,
            vec![us]
        )
        .reply
        .is_none(),
        "a proxy offer is never acknowledged on :67"
    );
    assert!(run(
        C::BiosRom,
        MessageType::Release,
        67,
        Mode::Proxy,
        None,
        None,
        vec![]
    )
    .reply
    .is_none());
}

#[test]
fn finished_hosts_boot_locally() {
    let mut h = HostRecord::new(Mac(MAC), 0);
    h.state = HostState::Remediated;
    let o = run(
        C::BiosRom,
        MessageType::Discover,
        67,
        Mode::Proxy,
        Some(&h),
        None,
        vec![],
    );
    assert!(
        o.reply.is_none(),
        "firmware of a fixed host is left to boot from disk"
    );
    assert_eq!(o.decision, Some(BootDecision::LocalBoot));
    let o = run(
        C::BiosIpxe,
        MessageType::Discover,
        67,
        Mode::Proxy,
        Some(&h),
        None,
        vec![],
    );
    assert!(
        file_of(&o).unwrap().ends_with(".ipxe"),
        "iPXE gets the script, which says exit"
    );
}

#[test]
fn relayed_requests_go_back_to_the_relay() {
    let mut bytes = packet(C::BiosRom, MessageType::Discover, vec![]);
    bytes[24..28].copy_from_slice(&[10, 50, 0, 1]);
    let inb = parse(&bytes).unwrap();
    let o = decide(
        &inb,
        Via {
            port: 67,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 50, 0, 1), 67),
        },
        None,
        &DefaultPolicy::default(),
        &cfg(Mode::Proxy),
        None,
        0,
    );
    let r = o.reply.unwrap();
    assert_eq!(
        r.dest,
        Dest::Relay(SocketAddrV4::new(Ipv4Addr::new(10, 50, 0, 1), 67))
    );
    assert_eq!(r.msg.giaddr(), Ipv4Addr::new(10, 50, 0, 1));
    // Full mode has no pool for the relay's subnet: silent rather than a wrong address.
    let mut pool = LeasePool::new(
        Ipv4Addr::new(10, 99, 0, 100),
        Ipv4Addr::new(10, 99, 0, 110),
        SERVER,
        vec![],
    );
    let o = decide(
        &inb,
        Via {
            port: 67,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 50, 0, 1), 67),
        },
        None,
        &DefaultPolicy::default(),
        &cfg(Mode::Full),
        Some(&mut pool),
        0,
    );
    assert!(o.reply.is_none());
}

#[test]
fn full_mode_dora_nak_release_decline_inform() {
    let mut pool = LeasePool::new(
        Ipv4Addr::new(10, 99, 0, 100),
        Ipv4Addr::new(10, 99, 0, 110),
        SERVER,
        vec![],
    );
    let o = run(
        C::Plain,
        MessageType::Discover,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![],
    );
    let offer = o.reply.clone().unwrap().msg;
    assert_eq!(msg_type(&o), MessageType::Offer);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
    assert!(
        file_of(&o).is_none(),
        "plain clients get an address, no boot file"
    );
    assert!(matches!(&o.lease_changes[..], [LeaseChange::Put(l)] if l.offered_only));
    let req = vec![
        DhcpOption::ServerIdentifier(SERVER),
        DhcpOption::RequestedIpAddress(offer.yiaddr()),
    ];
    let o = run(
        C::Plain,
        MessageType::Request,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        req,
    );
    assert_eq!(msg_type(&o), MessageType::Ack);
    let ack = o.reply.unwrap().msg;
    assert_eq!(
        ack.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        ack.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert!(matches!(&o.lease_changes[..], [LeaseChange::Put(l)] if !l.offered_only));
    // A PXE client on the same pool gets address and boot file together.
    let o = run(
        C::BiosRom,
        MessageType::Discover,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![],
    );
    assert_eq!(file_of(&o).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        o.reply.unwrap().msg.yiaddr(),
        Ipv4Addr::new(10, 99, 0, 100),
        "same MAC keeps its lease"
    );
    // INIT-REBOOT asking for a foreign address is NAKed.
    let o = run(
        C::Plain,
        MessageType::Request,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 168, 1, 9,
        ))],
    );
    assert_eq!(msg_type(&o), MessageType::Nak);
    assert_eq!(o.reply.unwrap().dest, Dest::Broadcast);
    // INFORM: configuration without an address.
    let o = run(
        C::Plain,
        MessageType::Inform,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![],
    );
    assert_eq!(msg_type(&o), MessageType::Ack);
    assert!(o.reply.unwrap().msg.yiaddr().is_unspecified());
    // Choosing another server frees our offer.
    let o = run(
        C::Plain,
        MessageType::Request,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 99, 0, 254))],
    );
    assert!(o.reply.is_none());
    assert_eq!(
        o.lease_changes,
        [LeaseChange::Remove(Ipv4Addr::new(10, 99, 0, 100))]
    );
    // DECLINE holds the address back.
    let o = run(
        C::Plain,
        MessageType::Discover,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![],
    );
    let ip = o.reply.unwrap().msg.yiaddr();
    let o = run(
        C::Plain,
        MessageType::Decline,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![DhcpOption::RequestedIpAddress(ip)],
    );
    assert!(o.reply.is_none() && o.lease_changes.len() == 1);
    let o = run(
        C::Plain,
        MessageType::Discover,
        67,
        Mode::Full,
        None,
        Some(&mut pool),
        vec![],
    );
    assert_ne!(o.reply.unwrap().msg.yiaddr(), ip);
}

#[test]
fn replies_encode_and_decode() {
    let o = run(
        C::UefiPxe,
        MessageType::Discover,
        67,
        Mode::Proxy,
        None,
        None,
        vec![],
    );
    let mut buf = Vec::new();
    o.reply
        .unwrap()
        .msg
        .encode(&mut Encoder::new(&mut buf))
        .unwrap();
    let back = Message::decode(&mut Decoder::new(&buf)).unwrap();
    // dhcproto keeps the terminating NUL of the 128-byte file field when decoding.
    assert_eq!(
        back.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "shimx64.efi"
    );
    assert_eq!(
        back.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    assert!(matches!(parse(b""), Err(Drop::Malformed(_))));
    let mut huge_hlen = packet(C::BiosRom, MessageType::Discover, vec![]);
    huge_hlen[2] = 41;
    assert_eq!(parse(&huge_hlen).unwrap_err(), Drop::NotEthernet);
    // Option 121 with a prefix length over 32 panics inside dhcproto; it never gets there.
    let mut routes = packet(C::BiosRom, MessageType::Discover, vec![]);
    let end = routes.len() - 1;
    routes.splice(end..end, [121u8, 5, 40, 10, 0, 0, 1]);
    assert!(parse(&routes).is_ok());
    let mut cut = packet(C::BiosRom, MessageType::Discover, vec![]);
    let end = cut.len() - 1;
    cut.truncate(end);
    cut.extend_from_slice(&[60, 200, b'x']);
    assert!(matches!(parse(&cut), Err(Drop::Malformed(_))));
    // Option 94 (client network interface) is 3 bytes; dhcproto debug-asserts it (found by
    // mutated_requests_never_panic: 94 with length 7 panicked a debug build).
    for len in [0u8, 2, 7] {
        let mut nic = packet(C::UefiPxe, MessageType::Discover, vec![]);
        let end = nic.len() - 1;
        let mut opt = vec![94u8, len];
        opt.extend(std::iter::repeat_n(1u8, len as usize));
        nic.splice(end..end, opt);
        assert_eq!(
            parse(&nic).unwrap_err(),
            Drop::Malformed(format!("option 94 is {len} bytes long; it must be 3"))
        );
    }
    let mut nic = packet(C::UefiPxe, MessageType::Discover, vec![]);
    let end = nic.len() - 1;
    nic.splice(end..end, [94u8, 3, 1, 3, 0]);
    assert!(parse(&nic).is_ok());
    // Two well-formed copies of option 94: dhcproto joins repeated options (RFC 3396) and its
    // decoder saw 6 bytes. Found by the `dhcp` fuzz target (fuzz/); its input is kept whole.
    let mut twice = packet(C::UefiPxe, MessageType::Discover, vec![]);
    let end = twice.len() - 1;
    twice.splice(end..end, [94u8, 3, 1, 0, 7, 94, 3, 1, 2, 1]);
    assert_eq!(
        parse(&twice).unwrap_err(),
        Drop::Malformed("option 94 appears more than once".into())
    );
    let found = include_bytes!("fuzz-regressions/repeated-option-94");
    assert_eq!(
        parse(found).unwrap_err(),
        Drop::Malformed("option 94 appears more than once".into())
    );
    let mut reply = packet(C::BiosRom, MessageType::Discover, vec![]);
    reply[0] = 2;
    assert_eq!(parse(&reply).unwrap_err(), Drop::NotARequest);
    let mut bootp = packet(C::BiosRom, MessageType::Discover, vec![]);
    bootp.truncate(240);
    bootp.push(255);
    assert_eq!(parse(&bootp).unwrap_err(), Drop::NoMessageType);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..700)) {
        if let Ok(inb) = parse(&data) {
            let mut pool = LeasePool::new(Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 110), SERVER, vec![]);
            for port in [67, PXE_PORT] {
                for mode in [Mode::Proxy, Mode::Full] {
                    let _ = decide(&inb, Via { port, src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68) }, None, &DefaultPolicy::default(), &cfg(mode), Some(&mut pool), 0);
                }
            }
        }
    }

    /// Valid-looking requests with random options and fields still never panic, and every reply
    /// encodes.
    #[test]
    fn mutated_requests_never_panic(flip in prop::collection::vec((0usize..400, any::<u8>()), 0..8), tail in prop::collection::vec(any::<u8>(), 0..64), kind in 0u8..7, t in 1u8..9) {
        let c = [C::BiosRom, C::BiosIpxe, C::UefiPxe, C::UefiIpxe, C::Http, C::Windows, C::Plain][kind as usize];
        let mut bytes = packet(c, MessageType::from(t), vec![]);
        for (pos, v) in flip {
            let i = pos % bytes.len();
            if i > 0 { bytes[i] = v; }
        }
        let end = bytes.len() - 1;
        bytes.splice(end..end, tail);
        if let Ok(inb) = parse(&bytes) {
            let mut pool = LeasePool::new(Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 110), SERVER, vec![]);
            let o = decide(&inb, Via { port: 67, src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68) }, None, &DefaultPolicy::default(), &cfg(Mode::Full), Some(&mut pool), 0);
            if let Some(r) = o.reply {
                let mut buf = Vec::new();
                r.msg.encode(&mut Encoder::new(&mut buf)).unwrap();
            }
        }
    }
}
