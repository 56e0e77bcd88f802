//! QEMU guests that network-boot like the fleet's machines: SeaBIOS with iPXE, OVMF with iPXE,
//! OVMF's own PXE, OVMF with Secure Boot on (Microsoft keys); one NIC on a tap of the lab's
//! bridge, a disk on virtio, SATA, NVMe or USB, the serial console to a file.
use crate::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The guest's firmware and how it network-boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS + the NIC's iPXE option ROM.
    Bios,
    /// OVMF + the NIC's iPXE EFI ROM.
    Uefi,
    /// OVMF's own PXE (no option ROM): EDK2 fetches the NBP by TFTP.
    UefiFw,
    /// OVMF with Secure Boot on (Microsoft keys), EDK2 PXE.
    UefiSb,
    /// OVMF with Secure Boot on whose db trusts only Microsoft's Windows CAs (Windows
    /// Production PCA 2011, Windows UEFI CA 2023), not the third-party UEFI CA that signs shim:
    /// a Secured-core PC. Its variable store is made with virt-fw-vars ([`WINDOWS_ONLY_VARS`]).
    UefiSbWindowsOnly,
}

/// The variable store of [`Firmware::UefiSbWindowsOnly`]: made once per machine by
/// [`windows_only_vars`].
pub const WINDOWS_ONLY_VARS: &str = "/var/tmp/unbrick-ovmf/OVMF_VARS_4M.windows-only.fd";

/// virt-fw-vars (PyPI virt-firmware, installed by scripts/install-deps.sh).
pub const VIRT_FW_VARS: &str = "/var/tmp/unbrick-venv/bin/virt-fw-vars";

/// Makes [`WINDOWS_ONLY_VARS`] from OVMF's empty store if it is not there: a generated PK,
/// Microsoft's KEK CA 2011, and a db of only the Windows CAs (`--microsoft-db win11`).
pub fn windows_only_vars() -> Result<PathBuf, Error> {
    let out = PathBuf::from(WINDOWS_ONLY_VARS);
    if out.exists() {
        return Ok(out);
    }
    let dir = out.parent().expect("a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    let tmp = out.with_extension("tmp");
    let st = Command::new(VIRT_FW_VARS)
        .args(["-i", "/usr/share/OVMF/OVMF_VARS_4M.fd", "-o"])
        .arg(&tmp)
        .args([
            "--enroll-generate",
            "unbrick lab platform key",
            "--microsoft-kek",
            "2011",
            "--microsoft-db",
            "win11",
            "--sb",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| {
            Error::Io(format!(
                "{VIRT_FW_VARS}: {e} (scripts/install-deps.sh installs it)"
            ))
        })?;
    if !st.success() {
        return Err(Error::Io(format!("{VIRT_FW_VARS} failed: {st}")));
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::Io(e.to_string()))?;
    Ok(out)
}

impl Firmware {
    /// In words, for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Bios => "SeaBIOS + iPXE",
            Self::Uefi => "OVMF + iPXE",
            Self::UefiFw => "OVMF PXE",
            Self::UefiSb => "OVMF with Secure Boot",
            Self::UefiSbWindowsOnly => "OVMF with Secure Boot, Windows CAs only",
        }
    }
}

/// How a guest's disk is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    /// virtio-blk.
    Virtio,
    /// AHCI.
    Sata,
    /// NVMe.
    Nvme,
    /// USB mass storage on xHCI.
    Usb,
    /// USB mass storage behind a USB hub on xHCI (a dock, a hub in a keyboard).
    UsbHub,
}

/// One guest: what it is and where its files go.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Short name (tap `t<name>`, serial log `<name>.serial`).
    pub name: String,
    /// The NIC's MAC address.
    pub mac: String,
    /// Firmware.
    pub fw: Firmware,
    /// The disk and its bus, if any.
    pub disk: Option<(PathBuf, Bus)>,
    /// `-accel` (tcg here; kvm where there is one).
    pub accel: String,
    /// SMBIOS serial number (type 1).
    pub smbios_serial: String,
    /// Folder for the serial log and the UEFI variable store.
    pub dir: PathBuf,
}

impl GuestSpec {
    /// The tap device the guest's NIC uses.
    pub fn tap(&self) -> String {
        format!("t{}", self.name)
    }

    /// Where the serial console goes.
    pub fn serial(&self) -> PathBuf {
        self.dir.join(format!("{}.serial", self.name))
    }

    fn vars(&self) -> PathBuf {
        self.dir.join(format!("{}.vars.fd", self.name))
    }

    /// QEMU's arguments (pure: [`GuestSpec::spawn`] also copies the UEFI variable store).
    pub fn args(&self) -> Vec<String> {
        let uuid = format!("5a1e0000-0000-4000-8000-{}", self.mac.replace(':', ""));
        // RDRAND, as on every x86 PC since 2012-2015: the kernel seeds its random pool from it
        // at boot. Without it (QEMU's default CPU model) the pool is ready only about a second
        // after boot under emulation, and the agent's first TLS handshake (getrandom) waits
        // for it; a real machine does not. SSSE3/SSE4, AES-NI and the SHA extensions, as on
        // the PCs being repaired: cryptsetup's BitLocker key derivation (a million SHA-256
        // rounds) and dm-crypt's AES take them where the CPU has them.
        let mut args: Vec<String> = format!(
            "-accel {} -cpu qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt,+aes,+pclmulqdq,+sha-ni -m 1024 -smp 1 -nodefaults -display none -no-reboot -boot n -serial file:{} -uuid {uuid} -smbios type=1,serial={}",
            self.accel,
            self.serial().display(),
            self.smbios_serial
        )
        .split_whitespace()
        .map(String::from)
        .collect();
        let fw = self.fw;
        // QEMU's default ROM for virtio-net (iPXE's efi-virtio.rom, found through its search
        // path) serves SeaBIOS and OVMF; naming the same file by absolute path left SeaBIOS
        // without PXE here.
        let rom = match fw {
            Firmware::Bios | Firmware::Uefi => "",
            Firmware::UefiFw | Firmware::UefiSb | Firmware::UefiSbWindowsOnly => ",romfile=",
        };
        if fw != Firmware::Bios {
            let (code, _) = ovmf(fw);
            if matches!(fw, Firmware::UefiSb | Firmware::UefiSbWindowsOnly) {
                args.extend(
                    [
                        "-machine",
                        "q35,smm=on",
                        "-global",
                        "driver=cfi.pflash01,property=secure,value=on",
                    ]
                    .map(String::from),
                );
            } else {
                args.extend(["-machine", "q35"].map(String::from));
            }
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ));
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                self.vars().display()
            ));
        }
        args.push("-netdev".into());
        args.push(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            self.tap()
        ));
        args.push("-device".into());
        // SeaBIOS skips the NIC's ROM when it carries a bootindex; OVMF needs it to try PXE
        // first.
        let bootindex = if fw == Firmware::Bios {
            ""
        } else {
            ",bootindex=1"
        };
        args.push(format!(
            "virtio-net-pci,netdev=n0,mac={}{rom}{bootindex}",
            self.mac
        ));
        if let Some((d, bus)) = &self.disk {
            args.push("-drive".into());
            args.push(format!("file={},format=raw,if=none,id=d0", d.display()));
            let dev: &[&str] = match bus {
                Bus::Virtio => &["-device", "virtio-blk-pci,drive=d0"],
                Bus::Sata => &[
                    "-device",
                    "ahci,id=ahci0",
                    "-device",
                    "ide-hd,bus=ahci0.0,drive=d0",
                ],
                Bus::Nvme => &["-device", "nvme,serial=UB0001,drive=d0"],
                Bus::Usb => &[
                    "-device",
                    "qemu-xhci,id=xhci0",
                    "-device",
                    "usb-storage,bus=xhci0.0,drive=d0",
                ],
                Bus::UsbHub => &[
                    "-device",
                    "qemu-xhci,id=xhci0",
                    "-device",
                    "usb-hub,bus=xhci0.0,port=1",
                    "-device",
                    "usb-storage,bus=xhci0.0,port=1.1,drive=d0",
                ],
            };
            args.extend(dev.iter().map(|s| (*s).to_string()));
        }
        args
    }

    /// Starts the guest inside namespace `ns` (its tap must exist), output to `log`.
    pub fn spawn(&self, ns: &str, log: &Path) -> Result<Child, Error> {
        if self.fw == Firmware::UefiSbWindowsOnly {
            let vars = windows_only_vars()?;
            std::fs::copy(&vars, self.vars())
                .map_err(|e| Error::Io(format!("{}: {e}", vars.display())))?;
        } else if self.fw != Firmware::Bios {
            let (_, vars) = ovmf(self.fw);
            std::fs::copy(vars, self.vars()).map_err(|e| Error::Io(format!("{vars}: {e}")))?;
        }
        let out =
            std::fs::File::create(log).map_err(|e| Error::Io(format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| Error::Io(e.to_string()))?;
        Command::new("ip")
            .args(["netns", "exec", ns, "qemu-system-x86_64"])
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Io(format!("qemu-system-x86_64: {e}")))
    }
}

/// OVMF's code and variable-store templates for `fw` (Debian's ovmf package).
fn ovmf(fw: Firmware) -> (&'static str, &'static str) {
    if matches!(fw, Firmware::UefiSb | Firmware::UefiSbWindowsOnly) {
        (
            "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        )
    } else {
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fw: Firmware, disk: Option<(PathBuf, Bus)>) -> GuestSpec {
        GuestSpec {
            name: "pc1".into(),
            mac: "52:54:00:de:00:01".into(),
            fw,
            disk,
            accel: "tcg".into(),
            smbios_serial: "DEMO-pc1".into(),
            dir: PathBuf::from("/tmp/x"),
        }
    }

    #[test]
    fn seabios_keeps_the_nic_rom_without_bootindex() {
        let a = spec(Firmware::Bios, Some((PathBuf::from("/d.img"), Bus::Virtio))).args();
        assert!(a.contains(&"virtio-net-pci,netdev=n0,mac=52:54:00:de:00:01".to_string()));
        assert!(!a.iter().any(|x| x.contains("pflash")));
        assert!(a.contains(&"virtio-blk-pci,drive=d0".to_string()));
    }

    #[test]
    fn secure_boot_has_smm_microsoft_vars_and_no_option_rom() {
        let a = spec(Firmware::UefiSb, None).args();
        assert!(a.contains(&"q35,smm=on".to_string()));
        assert!(a.iter().any(|x| x.contains("OVMF_CODE_4M.secboot.fd")));
        assert!(a.iter().any(|x| x.ends_with("/tmp/x/pc1.vars.fd")));
        assert!(a.contains(
            &"virtio-net-pci,netdev=n0,mac=52:54:00:de:00:01,romfile=,bootindex=1".to_string()
        ));
        assert!(a.contains(&"type=1,serial=DEMO-pc1".to_string()));
    }
}
