//! Wake-on-LAN: the magic packet (6 bytes 0xFF, then the MAC 16 times) as a UDP broadcast to
//! port 9, sent out of the served interface only (SO_BINDTODEVICE). A woken machine boots its
//! normal boot order, unless its firmware has a "wake to network boot" setting.
use fleet::Mac;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The magic packet for `mac`.
pub fn magic_packet(mac: Mac) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

/// Sends magic packets on one interface.
#[derive(Debug, Clone)]
pub struct Waker {
    /// The served interface.
    pub device: String,
}

impl Waker {
    /// Sends the magic packet for `mac` (twice); says what was sent, or why not.
    pub fn send(&self, mac: Mac) -> Result<String, String> {
        let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 9);
        let sock = crate::net::udp_socket(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            Some(&self.device),
            true,
        )
        .map_err(|e| format!("Wake-on-LAN on {}: {e}", self.device))?;
        // Twice: a lost broadcast is the common failure, and a second packet wakes nothing twice.
        for _ in 0..2 {
            sock.send_to(&magic_packet(mac), dest)
                .map_err(|e| format!("Wake-on-LAN on {}: {e}", self.device))?;
        }
        Ok(format!(
            "Wake-on-LAN magic packet sent on {} (the machine boots its normal order unless its firmware wakes to network boot)",
            self.device
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_is_sync_then_sixteen_macs() {
        let mac = Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        let p = magic_packet(mac);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac.0);
        }
    }
}
