//! Socket set-up shared by the DHCP, TFTP and HTTP drivers, and interface look-up.
use crate::Error;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// An IPv4 interface: name, index, address and prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its first IPv4 address.
    pub addr: Ipv4Addr,
    /// That address's prefix length.
    pub prefix_len: u8,
}

impl Interface {
    /// The subnet mask.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }
    /// Whether `ip` is in the interface's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask());
        u32::from(ip) & m == u32::from(self.addr) & m
    }
    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.netmask()))
    }
}

/// Finds `name`'s first IPv4 address. Errors name the interfaces that do exist.
pub fn find_interface(name: &str) -> Result<Interface, Error> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::Interface(format!("cannot list network interfaces: {e}")))?;
    let mut names = std::collections::BTreeSet::new();
    let mut found_name = false;
    for a in addrs {
        names.insert(a.interface_name.clone());
        if a.interface_name != name {
            continue;
        }
        found_name = true;
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let (Some(sin), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) else {
            continue;
        };
        let index = nix::net::if_::if_nametoindex(name)
            .map_err(|e| Error::Interface(format!("interface {name}: {e}")))?;
        return Ok(Interface {
            name: name.to_string(),
            index,
            addr: sin.ip(),
            prefix_len: u32::from(m.ip()).count_ones() as u8,
        });
    }
    if found_name {
        Err(Error::Interface(format!("interface {name} has no IPv4 address; add one (ip addr add 10.0.0.1/24 dev {name}) or pick another interface")))
    } else {
        let list: Vec<String> = names.into_iter().collect();
        Err(Error::Interface(format!(
            "interface {name} not found; pass --interface with one of: {}",
            list.join(", ")
        )))
    }
}

/// A UDP socket bound to `addr` on interface `device` (SO_BINDTODEVICE), non-blocking.
pub fn udp_socket(
    addr: SocketAddrV4,
    device: Option<&str>,
    broadcast: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if broadcast {
        s.set_broadcast(true)?;
    }
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))?;
    }
    // Large buffers keep bursts (windowed TFTP, DHCP storms) from being dropped by the kernel.
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    Ok(s.into())
}

/// A TCP listener whose accepted connections get 4 MiB send buffers (artefacts are megabytes,
/// served from memory), with address reuse so a restart does not wait for TIME_WAIT, and a deep
/// accept queue: a fleet's agents reporting at the same moment must not see their SYNs dropped
/// (each drop costs the client a 1 s retransmission); the kernel caps it at net.core.somaxconn.
pub fn tcp_listener(addr: SocketAddrV4) -> std::io::Result<tokio::net::TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    s.listen(8192)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Explains a bind failure in one line.
pub fn bind_error(what: &str, addr: SocketAddrV4, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("{what}: port {} on {} is already in use (another DHCP/TFTP/HTTP server running? stop it or pick another port)", addr.port(), addr.ip()),
        std::io::ErrorKind::PermissionDenied => format!("{what}: binding {addr} needs root or CAP_NET_BIND_SERVICE"),
        std::io::ErrorKind::AddrNotAvailable => format!("{what}: {} is not an address of this machine", addr.ip()),
        _ => format!("{what}: cannot bind {addr}: {e}"),
    }
}

/// [`bind_error`] as the server's error.
pub fn bind_error_of(what: &str, addr: SocketAddrV4, e: &std::io::Error) -> Error {
    Error::Bind(bind_error(what, addr, e))
}

/// The layer-2 view of the served segment: the kernel's neighbour (ARP) table on one interface.
/// What a request from an address proves about the machine behind it comes from here.
///
/// The table is read from `/proc/net/arp` into a snapshot that is at most [`SNAPSHOT_MS`] old
/// (a fleet polling its waiting room asks hundreds of times a second, and the text of a table
/// with thousands of entries costs the kernel a millisecond to write); an address the snapshot
/// lacks is looked up in a fresh read.
#[derive(Debug, Clone)]
pub struct Neighbours {
    /// The served interface.
    pub device: String,
    /// Its subnet: only addresses on it can have a neighbour entry (behind a relay there is
    /// none, and no layer-2 view).
    pub iface: Option<Interface>,
    /// The last snapshot of the table on `device`, and when it was read.
    pub snapshot: std::sync::Arc<std::sync::Mutex<Snapshot>>,
}

/// A read of the neighbour table.
#[derive(Debug, Default)]
pub struct Snapshot {
    read: Option<std::time::Instant>,
    table: std::collections::HashMap<Ipv4Addr, fleet::Mac>,
}

/// How old a neighbour-table snapshot may be when it answers.
pub const SNAPSHOT_MS: u64 = 250;

impl Neighbours {
    /// The view of `device` (subnet `iface`).
    pub fn new(device: &str, iface: Option<Interface>) -> Self {
        Self {
            device: device.to_string(),
            iface,
            snapshot: Default::default(),
        }
    }

    /// The hardware address the neighbour table holds for `ip` on the served interface, if it
    /// has a complete entry.
    pub fn lookup(&self, ip: std::net::IpAddr) -> Option<fleet::Mac> {
        let std::net::IpAddr::V4(v4) = ip.to_canonical() else {
            return None;
        };
        let mut s = self.snapshot.lock().unwrap();
        let age = s.read.map(|t| t.elapsed().as_millis() as u64);
        if age.is_some_and(|a| a <= SNAPSHOT_MS) {
            if let Some(m) = s.table.get(&v4) {
                return Some(*m);
            }
            // A miss within a few milliseconds of a read is a miss (no re-read storm for
            // addresses that have no entry, e.g. behind a relay).
            if age.is_some_and(|a| a < 20) {
                return None;
            }
        }
        let text = std::fs::read_to_string("/proc/net/arp").ok()?;
        s.table = arp_table(&text, &self.device);
        s.read = Some(std::time::Instant::now());
        s.table.get(&v4).copied()
    }

    /// Whether `ip` is on the served subnet (so a neighbour entry is expected for it).
    pub fn on_link(&self, ip: std::net::IpAddr) -> bool {
        match (ip.to_canonical(), &self.iface) {
            (std::net::IpAddr::V4(v4), Some(i)) => i.contains(v4) && v4 != i.addr,
            _ => false,
        }
    }

    /// [`Self::lookup`], and for an on-link address without an entry (a UDP request from an
    /// address that never answered ARP), asks the kernel to resolve it (one datagram to the
    /// discard port) and waits up to 200 ms for the answer. Blocking: call off the runtime.
    pub fn resolve(&self, ip: std::net::IpAddr) -> Option<fleet::Mac> {
        if let Some(m) = self.lookup(ip) {
            return Some(m);
        }
        if !self.on_link(ip) {
            return None;
        }
        let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        let _ = probe.send_to(&[], (ip, 9));
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if let Some(m) = self.lookup(ip) {
                return Some(m);
            }
        }
        None
    }
}

/// The complete entries on `device` in the text of `/proc/net/arp`
/// (`IP address  HW type  Flags  HW address  Mask  Device`; flags 0x2 = complete).
pub fn arp_table(table: &str, device: &str) -> std::collections::HashMap<Ipv4Addr, fleet::Mac> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, _hw, flags, mac, _mask, dev] = f.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if *dev != device || flags & 0x2 == 0 {
                return None;
            }
            let mac: fleet::Mac = mac.parse().ok()?;
            (mac.0 != [0; 6]).then_some((addr.parse().ok()?, mac))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_entry(table: &str, ip: Ipv4Addr, device: &str) -> Option<fleet::Mac> {
        arp_table(table, device).get(&ip).copied()
    }

    #[test]
    fn arp_table_parsing() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.99.0.5        0x1         0x2         52:54:00:aa:00:05     *        br0\n\
                 10.99.0.6        0x1         0x0         00:00:00:00:00:00     *        br0\n\
                 10.99.0.7        0x1         0x2         52:54:00:aa:00:07     *        eth9\n\
                 10.99.0.8        0x1         0x6         52:54:00:aa:00:08     *        br0\n";
        let ip = |n| Ipv4Addr::new(10, 99, 0, n);
        assert_eq!(
            arp_entry(t, ip(5), "br0"),
            Some("52:54:00:aa:00:05".parse().unwrap())
        );
        assert_eq!(arp_entry(t, ip(6), "br0"), None, "incomplete");
        assert_eq!(arp_entry(t, ip(7), "br0"), None, "another interface");
        assert_eq!(
            arp_entry(t, ip(8), "br0"),
            Some("52:54:00:aa:00:08".parse().unwrap()),
            "permanent"
        );
        assert_eq!(arp_entry(t, ip(9), "br0"), None);
        assert_eq!(arp_entry("garbage", ip(5), "br0"), None);
    }

    #[test]
    fn subnet_math() {
        let i = Interface {
            name: "x".into(),
            index: 1,
            addr: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 24,
        };
        assert_eq!(i.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(i.contains(Ipv4Addr::new(10, 99, 0, 200)));
        assert!(!i.contains(Ipv4Addr::new(10, 99, 1, 1)));
        assert_eq!(i.broadcast(), Ipv4Addr::new(10, 99, 0, 255));
        assert!(find_interface("lo").is_ok());
        assert!(find_interface("nope0")
            .unwrap_err()
            .to_string()
            .contains("lo"));
    }
}
