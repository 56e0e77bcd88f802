//! The layer-2 witness: the Ethernet source address of every DHCP request on the served
//! interface. The DHCP sockets are UDP and see no link layer; this packet socket (CAP_NET_RAW)
//! sees the same requests with their frame's source, so a decision that matters (Windows is
//! back: the host recovered) can check that the frame came from the MAC the packet names.
//!
//! A classic BPF filter passes only IPv4 UDP to port 67 (unfragmented), so the socket copies
//! nothing else. The parsing is pure ([`request_key`]) and unit-tested.
// The packet socket and its BPF filter have no safe binding (nix has no SO_ATTACH_FILTER); the
// unsafe calls are these five, each with its reason.
#![allow(unsafe_code)]

use fleet::Mac;
use nix::libc;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests remembered (the oldest is forgotten first).
const KEEP: usize = 8192;

/// What the witness saw: (xid, chaddr) -> the frame's Ethernet source.
#[derive(Default)]
struct Seen {
    by_key: HashMap<(u32, Mac), Mac>,
    order: VecDeque<(u32, Mac)>,
}

/// The Ethernet sources of recent DHCP requests on one interface.
#[derive(Clone, Default)]
pub struct Witness(Arc<Mutex<Seen>>);

impl Witness {
    /// Opens a packet socket on interface `ifindex` and records requests on a thread until the
    /// process ends. Fails without CAP_NET_RAW.
    pub fn start(ifindex: u32) -> std::io::Result<Self> {
        let fd = open(ifindex)?;
        let w = Self::default();
        let me = w.clone();
        std::thread::Builder::new()
            .name("unbrick-l2".into())
            .spawn(move || me.run(fd))?;
        Ok(w)
    }

    fn run(&self, fd: OwnedFd) {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: a zeroed sockaddr_ll is a valid out-parameter for recvfrom.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from outlive the call; their sizes are passed.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(
                    "layer-2 witness stopped: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            if from.sll_halen != 6 {
                continue;
            }
            let mut src = [0u8; 6];
            src.copy_from_slice(&from.sll_addr[..6]);
            if let Some(key) = request_key(&buf[..n as usize]) {
                self.record(key, Mac(src));
            }
        }
    }

    fn record(&self, key: (u32, Mac), src: Mac) {
        let mut s = self.0.lock().unwrap();
        if s.by_key.insert(key, src).is_none() {
            s.order.push_back(key);
            if s.order.len() > KEEP {
                if let Some(old) = s.order.pop_front() {
                    s.by_key.remove(&old);
                }
            }
        }
    }

    /// The Ethernet source of the request `(xid, chaddr)`, if the packet socket saw it.
    pub fn source(&self, xid: u32, chaddr: Mac) -> Option<Mac> {
        self.0.lock().unwrap().by_key.get(&(xid, chaddr)).copied()
    }

    /// [`Self::source`], waiting up to `wait` for the packet socket (it races the UDP socket).
    pub async fn source_within(&self, xid: u32, chaddr: Mac, wait: Duration) -> Option<Mac> {
        let t = Instant::now();
        loop {
            if let Some(m) = self.source(xid, chaddr) {
                return Some(m);
            }
            if t.elapsed() >= wait {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The (xid, chaddr) of a BOOTREQUEST in an IPv4 packet (from its IP header on), if it is one.
pub fn request_key(ip: &[u8]) -> Option<(u32, Mac)> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != 67 {
        return None;
    }
    let b = udp.get(8..)?;
    // op 1 (request), htype 1, hlen 6.
    if b.len() < 34 || b[0] != 1 || b[1] != 1 || b[2] != 6 {
        return None;
    }
    let xid = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[28..34]);
    Some((xid, Mac(m)))
}

fn open(ifindex: u32) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // IPv4 UDP to port 67, not a fragment: the whole packet; anything else: nothing.
    let code = [
        libc::sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 9,
        }, // ldb [9] (protocol)
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 6,
            k: 17,
        }, // jeq udp
        libc::sock_filter {
            code: 0x28,
            jt: 0,
            jf: 0,
            k: 6,
        }, // ldh [6] (fragment)
        libc::sock_filter {
            code: 0x45,
            jt: 4,
            jf: 0,
            k: 0x1fff,
        }, // jset -> drop
        libc::sock_filter {
            code: 0xb1,
            jt: 0,
            jf: 0,
            k: 0,
        }, // ldxb 4*([0]&0xf)
        libc::sock_filter {
            code: 0x48,
            jt: 0,
            jf: 0,
            k: 2,
        }, // ldh [x+2] (dst port)
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 67,
        }, // jeq 67
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }, // accept
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }, // drop
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `code`, alive for the call (the kernel copies it).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_ll with family, protocol and index set is a valid address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(dport: u16, op: u8, hlen: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
        p.resize(20, 0);
        p.extend_from_slice(&68u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        let mut b = vec![op, 1, hlen, 0, 0xde, 0xad, 0xbe, 0xef];
        b.resize(28, 0);
        b.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        b.resize(240, 0);
        p.extend_from_slice(&b);
        p
    }

    #[test]
    fn requests_are_keyed_by_xid_and_chaddr() {
        assert_eq!(
            request_key(&packet(67, 1, 6)),
            Some((0xdeadbeef, Mac([0x52, 0x54, 0, 1, 2, 3])))
        );
        assert_eq!(request_key(&packet(68, 1, 6)), None, "to the client port");
        assert_eq!(request_key(&packet(67, 2, 6)), None, "a reply");
        assert_eq!(request_key(&packet(67, 1, 16)), None, "not Ethernet");
        let mut tcp = packet(67, 1, 6);
        tcp[9] = 6;
        assert_eq!(request_key(&tcp), None);
        for n in 0..60 {
            let _ = request_key(&packet(67, 1, 6)[..n]);
        }
    }

    #[test]
    fn the_witness_forgets_the_oldest() {
        let w = Witness::default();
        for i in 0..(KEEP as u32 + 10) {
            w.record((i, Mac([0; 6])), Mac([1; 6]));
        }
        assert_eq!(w.source(0, Mac([0; 6])), None);
        assert_eq!(w.source(KEEP as u32 + 9, Mac([0; 6])), Some(Mac([1; 6])));
    }
}
