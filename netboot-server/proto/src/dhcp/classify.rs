//! Who is asking: firmware PXE, iPXE, UEFI HTTP boot, Windows, our agent, or anyone else.
use dhcproto::v4::{DhcpOption, Message, OptionCode};
use fleet::{Arch, ClientKind};

/// The vendor class our recovery agent sends (option 60).
pub const AGENT_VENDOR_CLASS: &str = "unbrick-agent";

fn vendor_class(msg: &Message) -> Option<&[u8]> {
    match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v),
        _ => None,
    }
}

/// Option 93, else the `Arch:NNNNN` field of a PXE/HTTP vendor class, else BIOS.
pub fn arch(msg: &Message) -> Arch {
    if let Some(DhcpOption::ClientSystemArchitecture(a)) =
        msg.opts().get(OptionCode::ClientSystemArchitecture)
    {
        return Arch::from_option93(u16::from(*a));
    }
    if let Some(vc) = vendor_class(msg) {
        let s = String::from_utf8_lossy(vc);
        if let Some(rest) = s.split(':').skip_while(|p| *p != "Arch").nth(1) {
            if let Ok(n) = rest.parse::<u16>() {
                return Arch::from_option93(n);
            }
        }
    }
    Arch::Bios
}

/// Whether the client is iPXE: user class (77) containing `iPXE` or iPXE's encapsulated
/// options (175) present.
pub fn is_ipxe(msg: &Message) -> bool {
    let user_class = matches!(msg.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(v)) if v.windows(4).any(|w| w == b"iPXE"));
    user_class || msg.opts().get(OptionCode::Unknown(175)).is_some()
}

/// What kind of client sent `msg` (options 60, 77, 93, 175).
pub fn classify(msg: &Message) -> ClientKind {
    let vc = vendor_class(msg).unwrap_or(&[]);
    if vc.starts_with(b"MSFT 5.0") {
        return ClientKind::Windows;
    }
    if vc.starts_with(AGENT_VENDOR_CLASS.as_bytes()) {
        return ClientKind::Agent;
    }
    if vc.starts_with(b"HTTPClient") {
        return ClientKind::HttpBoot(arch(msg));
    }
    if vc.starts_with(b"PXEClient") {
        return if is_ipxe(msg) {
            ClientKind::Ipxe(arch(msg))
        } else {
            ClientKind::Pxe(arch(msg))
        };
    }
    ClientKind::Other
}

/// Option 97 (client machine identifier, RFC 4578): type 0 followed by the 16-byte SMBIOS UUID
/// in SMBIOS byte order (first three fields little-endian). Returned in the usual text form,
/// as Linux's /sys/class/dmi/id/product_uuid shows it.
pub fn machine_uuid(msg: &Message) -> Option<String> {
    let Some(DhcpOption::ClientMachineIdentifier(v)) =
        msg.opts().get(OptionCode::ClientMachineIdentifier)
    else {
        return None;
    };
    let b: &[u8; 16] = v.strip_prefix(&[0])?.try_into().ok()?;
    if b.iter().all(|x| *x == 0) {
        return None;
    }
    let s = format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    );
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, UnknownOption};
    use std::net::Ipv4Addr;

    fn msg(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 0, 1],
        );
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }
    fn vc(s: &str) -> DhcpOption {
        DhcpOption::ClassIdentifier(s.as_bytes().to_vec())
    }
    fn a(n: u16) -> DhcpOption {
        DhcpOption::ClientSystemArchitecture(Architecture::from(n))
    }

    /// Option sets seen from real clients (../shared/lab/LAB.md), plus edge cases.
    #[test]
    fn table_from_real_clients() {
        let ipxe175 = DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e],
        ));
        let cases: Vec<(&str, Vec<DhcpOption>, ClientKind)> = vec![
            (
                "BIOS iPXE ROM",
                vec![
                    vc("PXEClient:Arch:00000:UNDI:002001"),
                    a(0),
                    DhcpOption::UserClass(b"iPXE".to_vec()),
                    ipxe175.clone(),
                ],
                ClientKind::Ipxe(Arch::Bios),
            ),
            (
                "UEFI iPXE",
                vec![
                    vc("PXEClient:Arch:00007:UNDI:003010"),
                    a(7),
                    DhcpOption::UserClass(b"iPXE".to_vec()),
                ],
                ClientKind::Ipxe(Arch::UefiX64),
            ),
            (
                "iPXE with only 175",
                vec![vc("PXEClient:Arch:00007:UNDI:003010"), a(7), ipxe175],
                ClientKind::Ipxe(Arch::UefiX64),
            ),
            (
                "OVMF PXE",
                vec![vc("PXEClient:Arch:00007:UNDI:003000"), a(7)],
                ClientKind::Pxe(Arch::UefiX64),
            ),
            (
                "x64 as 9",
                vec![vc("PXEClient:Arch:00009:UNDI:003000"), a(9)],
                ClientKind::Pxe(Arch::UefiX64),
            ),
            (
                "IA32 UEFI",
                vec![vc("PXEClient:Arch:00006:UNDI:003000"), a(6)],
                ClientKind::Pxe(Arch::UefiIa32),
            ),
            (
                "ARM64",
                vec![vc("PXEClient:Arch:00011:UNDI:003000"), a(11)],
                ClientKind::Pxe(Arch::UefiArm64),
            ),
            (
                "ARM32",
                vec![vc("PXEClient:Arch:00010:UNDI:003000"), a(10)],
                ClientKind::Pxe(Arch::UefiArm32),
            ),
            (
                "OVMF HTTP boot",
                vec![vc("HTTPClient:Arch:00016:UNDI:003000"), a(16)],
                ClientKind::HttpBoot(Arch::UefiHttpX64),
            ),
            (
                "no option 93, arch from 60",
                vec![vc("PXEClient:Arch:00007:UNDI:003000")],
                ClientKind::Pxe(Arch::UefiX64),
            ),
            (
                "bare PXEClient",
                vec![vc("PXEClient")],
                ClientKind::Pxe(Arch::Bios),
            ),
            ("Windows", vec![vc("MSFT 5.0")], ClientKind::Windows),
            ("agent", vec![vc("unbrick-agent/0.1")], ClientKind::Agent),
            ("dhclient", vec![], ClientKind::Other),
            ("udhcpc", vec![vc("udhcp 1.35.0")], ClientKind::Other),
        ];
        for (name, opts, want) in cases {
            assert_eq!(classify(&msg(opts)), want, "{name}");
        }
    }

    #[test]
    fn uuid_byte_order() {
        // SMBIOS order: 0x33221100-0x5544-0x7766-8899-aabbccddeeff
        let raw = [
            0u8, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
            0xdd, 0xee, 0xff,
        ];
        let m = msg(vec![DhcpOption::ClientMachineIdentifier(raw.to_vec())]);
        assert_eq!(
            machine_uuid(&m).unwrap(),
            "33221100-5544-7766-8899-aabbccddeeff"
        );
        assert_eq!(
            machine_uuid(&msg(vec![])),
            None,
            "missing option 97 is accepted"
        );
        assert_eq!(
            machine_uuid(&msg(vec![DhcpOption::ClientMachineIdentifier(vec![
                0, 1, 2
            ])])),
            None
        );
    }
}
