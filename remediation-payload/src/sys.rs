//! The agent's only unsafe code: three interface ioctls that nix does not wrap (bring a link up,
//! set an IPv4 address and netmask, add a default route). Each block passes a zero-initialised,
//! correctly sized `ifreq`/`rtentry` to the kernel for the duration of the call only.
#![allow(unsafe_code)]

use nix::libc;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

fn socket() -> std::io::Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)
}

fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is the documented way to
    // pass an IPv4 address through the generic sockaddr field.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn check(r: libc::c_int, what: &str, name: &str) -> std::io::Result<()> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("{what} on {name}: {e}"),
        ));
    }
    Ok(())
}

/// `ip link set NAME up`. The kernel makes an interface's sysfs directory (where the agent finds
/// it) before it lists the interface by name, so for a moment after it appears the ioctls answer
/// "No such device": that answer is retried every 10 ms for up to `wait`.
pub(crate) fn link_up(name: &str, wait: std::time::Duration) -> std::io::Result<()> {
    let s = socket()?;
    let mut r = ifreq(name)?;
    let start = std::time::Instant::now();
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `r`, a valid ifreq that outlives the call.
    unsafe {
        while libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut r) < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODEV) || start.elapsed() >= wait {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("SIOCGIFFLAGS on {name}: {e}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(
            libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &r),
            "SIOCSIFFLAGS",
            name,
        )
    }
}

/// `ip addr add ADDR/MASK dev NAME`.
pub(crate) fn set_ipv4(name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> std::io::Result<()> {
    let s = socket()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read `r`, a valid ifreq that outlives the call.
    unsafe {
        check(
            libc::ioctl(s.as_raw_fd(), libc::SIOCSIFADDR as _, &r),
            "SIOCSIFADDR",
            name,
        )?
    };
    r.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    unsafe {
        check(
            libc::ioctl(s.as_raw_fd(), libc::SIOCSIFNETMASK as _, &r),
            "SIOCSIFNETMASK",
            name,
        )
    }
}

/// `ip route add default via GW`.
pub(crate) fn default_route(gw: Ipv4Addr) -> std::io::Result<()> {
    let s = socket()?;
    // SAFETY: rtentry is plain old data; all-zero is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads `rt`, valid for the call.
    unsafe {
        check(
            libc::ioctl(s.as_raw_fd(), libc::SIOCADDRT as _, &rt),
            "SIOCADDRT",
            "default",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn an_interface_that_never_registers_is_waited_for_then_named() {
        let t = Instant::now();
        let e = super::link_up("ubnosuch0", Duration::from_millis(150)).unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        assert!(msg.contains("SIOCGIFFLAGS on ubnosuch0"), "{msg}");
        assert!(msg.contains("No such device"), "{msg}");
    }

    #[test]
    fn a_bad_name_fails_at_once() {
        let e = super::link_up(&"x".repeat(40), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
