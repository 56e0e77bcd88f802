//! The network: the agent's own DHCP client and its requests to the server (JSON to the
//! HTTPS agent API with the certificate pinned, files over HTTP), retried with backoff.
use super::{say, Ctx};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use unbrick_http as http;

pub(super) struct Lease {
    pub(super) ip: Ipv4Addr,
    pub(super) mask: Ipv4Addr,
    pub(super) router: Option<Ipv4Addr>,
}

/// A small DHCP client (dhcproto): DISCOVER, OFFER, REQUEST, ACK, broadcast replies requested so
/// nothing needs an address before it has one. Identifies itself with the agent's vendor class.
pub(super) fn dhcp(ifname: &str, mac: [u8; 6]) -> Result<Lease, String> {
    use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| e.to_string())?;
    s.set_reuse_address(true).ok();
    s.set_broadcast(true).map_err(|e| e.to_string())?;
    s.bind_device(Some(ifname.as_bytes()))
        .map_err(|e| format!("bind to {ifname}: {e}"))?;
    s.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
        .map_err(|e| format!("bind :68: {e}"))?;
    let s: std::net::UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let vendor = format!("{}/{}", "unbrick-agent", crate::AGENT_VERSION).into_bytes();
    let build = |t: MessageType, xid: u32, extra: Vec<DhcpOption>| {
        request_message(t, xid, &mac, &vendor, extra)
    };
    let dest = std::net::SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let mut buf = [0u8; 1500];
    for attempt in 0..20u32 {
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
            ^ attempt.wrapping_mul(0x9e37_79b9)
            ^ std::process::id();
        s.send_to(&build(MessageType::Discover, xid, vec![]), dest)
            .map_err(|e| format!("send DISCOVER: {e}"))?;
        let wait_for = |want: MessageType, deadline: Instant, buf: &mut [u8]| -> Option<Message> {
            while Instant::now() < deadline {
                let Ok((n, _)) = s.recv_from(buf) else {
                    continue;
                };
                if let Some(m) = answer_to(&buf[..n], xid, &mac, want) {
                    return Some(m);
                }
            }
            None
        };
        let wait = Duration::from_millis(400 + 400 * u64::from(attempt.min(8)));
        let Some(offer) = wait_for(MessageType::Offer, Instant::now() + wait, &mut buf) else {
            continue;
        };
        if offer.yiaddr().is_unspecified() {
            continue;
        }
        let Some(DhcpOption::ServerIdentifier(server)) =
            offer.opts().get(OptionCode::ServerIdentifier).cloned()
        else {
            continue;
        };
        say(&format!(
            "DHCP offer of {} from {server} (attempt {})",
            offer.yiaddr(),
            attempt + 1
        ));
        s.send_to(
            &build(
                MessageType::Request,
                xid,
                vec![
                    DhcpOption::RequestedIpAddress(offer.yiaddr()),
                    DhcpOption::ServerIdentifier(server),
                ],
            ),
            dest,
        )
        .map_err(|e| format!("send REQUEST: {e}"))?;
        let Some(ack) = wait_for(MessageType::Ack, Instant::now() + wait, &mut buf) else {
            continue;
        };
        if ack.opts().msg_type() != Some(MessageType::Ack) {
            continue;
        }
        return Ok(lease_of(&ack));
    }
    Err(format!("no DHCP lease on {ifname} after 20 attempts"))
}

/// A DISCOVER or REQUEST from `mac`: broadcast replies asked for (nothing has an address yet),
/// the agent's vendor class, the options it needs.
fn request_message(
    t: dhcproto::v4::MessageType,
    xid: u32,
    mac: &[u8; 6],
    vendor: &[u8],
    extra: Vec<dhcproto::v4::DhcpOption>,
) -> Vec<u8> {
    use dhcproto::v4::{DhcpOption, Flags, Message, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    // The BOOTP header is decoded from bytes rather than made with `Message::new_with_id`:
    // dhcproto's constructors fill in `Message::default()`, whose `rand::random()` xid seeds a
    // generator from getrandom(2), which blocks until the kernel's entropy pool is ready: about
    // a second after boot under emulation, measured as the first DISCOVER leaving 1.0-1.5 s
    // after the link had carrier. Decoding draws no random numbers.
    let mut head = [0u8; 241];
    head[..4].copy_from_slice(&[1, 1, 6, 0]); // BOOTREQUEST, Ethernet, 6-byte address, 0 hops
    head[4..8].copy_from_slice(&xid.to_be_bytes());
    head[28..34].copy_from_slice(mac);
    head[236..240].copy_from_slice(&[99, 130, 83, 99]); // the DHCP magic cookie
    head[240] = 255; // no options yet
    let mut m = Message::decode(&mut Decoder::new(&head)).expect("a BOOTP header decodes");
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(t));
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    for o in extra {
        m.opts_mut().insert(o);
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))
        .expect("DHCP request encodes");
    buf
}

/// A datagram that answers our request: same transaction, our MAC, the message type we wait
/// for (or a NAK). Anything else on the wire is someone else's.
fn answer_to(
    datagram: &[u8],
    xid: u32,
    mac: &[u8; 6],
    want: dhcproto::v4::MessageType,
) -> Option<dhcproto::v4::Message> {
    use dhcproto::v4::{Message, MessageType};
    use dhcproto::{Decodable, Decoder};
    // dhcproto 0.13 panics on some hostile input (chaddr() with hlen > 16, some option
    // decoders): it sees only a checked header and the options the agent reads.
    let clean = sanitize_reply(datagram)?;
    let m = Message::decode(&mut Decoder::new(&clean)).ok()?;
    (m.xid() == xid
        && m.chaddr() == mac
        && (m.opts().msg_type() == Some(want) || m.opts().msg_type() == Some(MessageType::Nak)))
    .then_some(m)
}

/// Options a reply may carry that the agent reads, with their lengths (`0`: a non-empty
/// multiple of 4, for lists of addresses).
const REPLY_OPTIONS: [(u8, usize); 5] = [(1, 4), (3, 0), (51, 4), (53, 1), (54, 4)];

/// A DHCP reply checked by hand before dhcproto sees it: a BOOTREPLY for Ethernet (hlen 6)
/// with the magic cookie, every option inside the packet, the options the agent reads of the
/// right length, and nothing else kept. `None` for anything else.
pub(super) fn sanitize_reply(d: &[u8]) -> Option<Vec<u8>> {
    const COOKIE: [u8; 4] = [99, 130, 83, 99];
    if d.len() < 240 || d.len() > 1500 || d[0] != 2 || d[1] != 1 || d[2] != 6 {
        return None;
    }
    if d[236..240] != COOKIE {
        return None;
    }
    let mut out = d[..240].to_vec();
    let mut i = 240;
    while i < d.len() {
        match d[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *d.get(i + 1)? as usize;
                let end = i + 2 + len;
                if end > d.len() {
                    return None;
                }
                if let Some((_, want)) = REPLY_OPTIONS.iter().find(|(c, _)| *c == code) {
                    let ok = match want {
                        0 => len >= 4 && len.is_multiple_of(4),
                        n => len == *n,
                    };
                    if !ok {
                        return None;
                    }
                    out.extend_from_slice(&d[i..end]);
                }
                i = end;
            }
        }
    }
    out.push(255);
    Some(out)
}

/// The lease an ACK gives: address, mask (a /24 when the server sent none), first router.
fn lease_of(ack: &dhcproto::v4::Message) -> Lease {
    use dhcproto::v4::{DhcpOption, OptionCode};
    let mask = match ack.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match ack.opts().get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    Lease {
        ip: ack.yiaddr(),
        mask,
        router,
    }
}

pub(super) fn post_json<T: serde::Serialize>(
    ctx: &Ctx,
    path: &str,
    body: &T,
    tries: u32,
) -> Result<Vec<u8>, String> {
    let data = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    for _ in 0..tries {
        match http::request_with(
            "POST",
            &ctx.api_url(path),
            Some(&data),
            Duration::from_secs(10),
            &ctx.opts(),
        ) {
            Ok(r) if r.status == 200 => return Ok(r.body),
            // A refusal (bad token, wrong host) will not change by retrying.
            Ok(r) if (400..500).contains(&r.status) => {
                return Err(format!(
                    "server refused {path}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                ))
            }
            Ok(r) => last = format!("server answered {path} with {}", r.status),
            Err(e) => last = e.to_string(),
        }
        say(&format!("{last}; retrying in {} ms", delay.as_millis()));
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(15));
    }
    Err(last)
}

/// A GET on the agent API's pinned HTTPS channel (the rules: their substitution on the way
/// would be refused by the signature only if no older signed set exists).
pub(super) fn get(ctx: &Ctx, path: &str) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for i in 0..8u32 {
        match http::request_with(
            "GET",
            &ctx.api_url(path),
            None,
            Duration::from_secs(10),
            &ctx.opts(),
        ) {
            Ok(r) if r.status == 200 => return Ok(r.body),
            Ok(r) => last = format!("GET {path}: {}", r.status),
            Err(e) => last = e.to_string(),
        }
        let delay = Duration::from_millis(500 << i.min(5));
        say(&format!("{last}; retrying in {} ms", delay.as_millis()));
        std::thread::sleep(delay);
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn reply(xid: u32, mac: &[u8; 6], t: MessageType, opts: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 99, 0, 20),
            Ipv4Addr::new(10, 99, 0, 1),
            Ipv4Addr::UNSPECIFIED,
            mac,
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(t));
        for o in opts {
            m.opts_mut().insert(o);
        }
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    #[test]
    fn discover_asks_for_broadcast_and_names_the_agent() {
        let b = request_message(
            MessageType::Discover,
            7,
            &MAC,
            b"unbrick-agent/0.1.0",
            vec![],
        );
        let m = Message::decode(&mut Decoder::new(&b)).unwrap();
        assert_eq!(m.xid(), 7);
        assert_eq!(m.chaddr(), MAC);
        assert!(m.flags().broadcast());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(
                b"unbrick-agent/0.1.0".to_vec()
            ))
        );
        // Field for field what dhcproto's own constructor makes (which the agent avoids: it
        // draws a random xid first).
        let mut want = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        want.set_flags(dhcproto::v4::Flags::default().set_broadcast());
        for o in m.opts().iter().map(|(_, o)| o.clone()).collect::<Vec<_>>() {
            want.opts_mut().insert(o);
        }
        assert_eq!(m, want);
        assert_eq!(b.len(), {
            let mut wb = Vec::new();
            want.encode(&mut Encoder::new(&mut wb)).unwrap();
            wb.len()
        });
    }

    #[test]
    fn only_our_transaction_is_an_answer() {
        let offer = reply(7, &MAC, MessageType::Offer, vec![]);
        assert!(answer_to(&offer, 7, &MAC, MessageType::Offer).is_some());
        assert!(
            answer_to(&offer, 8, &MAC, MessageType::Offer).is_none(),
            "other xid"
        );
        assert!(
            answer_to(&offer, 7, &[2, 0, 0, 0, 0, 1], MessageType::Offer).is_none(),
            "other MAC"
        );
        assert!(
            answer_to(&offer, 7, &MAC, MessageType::Ack).is_none(),
            "not what we wait for"
        );
        let nak = reply(7, &MAC, MessageType::Nak, vec![]);
        assert!(
            answer_to(&nak, 7, &MAC, MessageType::Ack).is_some(),
            "a NAK ends the wait"
        );
        assert!(
            answer_to(&offer[..100], 7, &MAC, MessageType::Offer).is_none(),
            "truncated"
        );
        let mut long_hw = offer.clone();
        long_hw[2] = 200;
        assert!(
            answer_to(&long_hw, 7, &MAC, MessageType::Offer).is_none(),
            "hlen > 16"
        );
    }

    #[test]
    fn lease_defaults_to_a_slash_24_without_a_mask() {
        let ack = reply(
            7,
            &MAC,
            MessageType::Ack,
            vec![DhcpOption::Router(vec![Ipv4Addr::new(10, 99, 0, 254)])],
        );
        let m = Message::decode(&mut Decoder::new(&ack)).unwrap();
        let l = lease_of(&m);
        assert_eq!(l.ip, Ipv4Addr::new(10, 99, 0, 20));
        assert_eq!(l.mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 99, 0, 254)));
        let ack = reply(
            7,
            &MAC,
            MessageType::Ack,
            vec![DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0))],
        );
        let m = Message::decode(&mut Decoder::new(&ack)).unwrap();
        assert_eq!(lease_of(&m).mask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(lease_of(&m).router, None);
    }

    #[test]
    fn hostile_replies_are_dropped_before_dhcproto() {
        let offer = reply(7, &MAC, MessageType::Offer, vec![]);
        // An option running past the end, a bad length for a read option, an unknown option
        // (121, whose decoder can panic) that is dropped, not decoded.
        let mut past = offer.clone();
        past.truncate(past.len() - 1);
        past.extend_from_slice(&[54, 200, 1]);
        assert!(sanitize_reply(&past).is_none());
        let mut bad_len = offer[..240].to_vec();
        bad_len.extend_from_slice(&[53, 1, 2, 1, 3, 10, 0, 0, 255]);
        assert!(sanitize_reply(&bad_len).is_none(), "a 3-byte mask");
        let mut classless = offer[..240].to_vec();
        classless.extend_from_slice(&[53, 1, 2, 121, 3, 33, 1, 2, 255]);
        let clean = sanitize_reply(&classless).unwrap();
        assert_eq!(&clean[240..], &[53, 1, 2, 255]);
        let mut request = offer.clone();
        request[0] = 1;
        assert!(sanitize_reply(&request).is_none(), "not a reply");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_and_mutated_replies_never_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            at in 0usize..600,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = answer_to(&noise, 7, &MAC, MessageType::Offer);
            let mut m = reply(7, &MAC, MessageType::Offer, vec![]);
            if at < m.len() {
                m[at] = byte;
            }
            m.extend_from_slice(&noise);
            let _ = answer_to(&m, 7, &MAC, MessageType::Offer);
        }
    }
}
