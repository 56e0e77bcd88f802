//! DHCP: a datagram from anyone on the segment goes through the sanitiser and dhcproto
//! (`netboot_proto::dhcp::parse`), then the decision in both modes, on both ports, for an
//! unknown host and for a known one, with a lease pool; every reply must encode.
#![no_main]
use dhcproto::{Encodable, Encoder};
use fleet::{DefaultPolicy, HostRecord};
use libfuzzer_sys::fuzz_target;
use netboot_proto::dhcp::decide::Via;
use netboot_proto::dhcp::pool::LeasePool;
use netboot_proto::dhcp::{decide, parse, DhcpConfig, Mode};
use std::net::{Ipv4Addr, SocketAddrV4};

fuzz_target!(|data: &[u8]| {
    let Ok(inb) = parse(data) else { return };
    let server = Ipv4Addr::new(10, 99, 0, 1);
    let known = HostRecord::new(inb.mac, 0);
    for mode in [Mode::Proxy, Mode::Full] {
        let cfg = DhcpConfig {
            mode,
            server_ip: server,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(server),
            dns: vec![server],
            lease_secs: 3600,
            http_base: "http://10.99.0.1:8080".into(),
            secure_boot_off: data.len() % 2 == 0,
        };
        for port in [67, 4011] {
            for host in [None, Some(&known)] {
                let mut pool = LeasePool::new(
                    Ipv4Addr::new(10, 99, 0, 100),
                    Ipv4Addr::new(10, 99, 0, 103),
                    server,
                    Vec::new(),
                );
                let via = Via {
                    port,
                    src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
                };
                let pool = (mode == Mode::Full).then_some(&mut pool);
                let out = decide(
                    &inb,
                    via,
                    host,
                    &DefaultPolicy::default(),
                    &cfg,
                    pool,
                    1_000,
                );
                if let Some(reply) = out.reply {
                    let mut buf = Vec::new();
                    reply
                        .msg
                        .encode(&mut Encoder::new(&mut buf))
                        .expect("a reply we built must encode");
                }
            }
        }
    }
});
