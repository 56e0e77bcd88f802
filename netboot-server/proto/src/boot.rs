//! Boot scripts: the per-host iPXE script and grub configuration. Pure rendering: the decision,
//! the token and the addresses come in as arguments.
use fleet::{BootDecision, Mac};

/// Names of the recovery kernel and initrd inside the image.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs's name in the image.
pub const INITRD: &str = "initrd.img";

/// What a boot script needs besides the decision.
#[derive(Debug, Clone)]
pub struct BootParams<'a> {
    /// `http://ip:port`
    pub http_base: &'a str,
    /// `https://ip:port`: the agent API (certificate pinned by the agent).
    pub https_base: &'a str,
    /// The server's address on the recovery LAN.
    pub server_ip: std::net::Ipv4Addr,
    /// The machine.
    pub mac: Mac,
    /// The per-boot token put on the kernel command line.
    pub token: &'a str,
    /// Whether the image holds a kernel and an initrd.
    pub image_ready: bool,
    /// Extra kernel command-line words from the configuration.
    pub extra_cmdline: &'a str,
    /// Seconds between a waiting machine's polls (the waiting room, no image yet).
    pub poll_secs: u32,
}

/// The recovery kernel's command line. `initrd=` lets the EFI stub find the initrd under iPXE.
/// Restore mode is not put here: the unsigned command line decides nothing; the agent learns
/// its mode from the hello reply over the pinned channel.
pub fn kernel_cmdline(p: &BootParams<'_>) -> String {
    let mut s = format!(
        "initrd={INITRD} unbrick.server={} unbrick.api={} unbrick.token={} unbrick.mac={} console=tty0 console=ttyS0,115200n8 panic=30",
        p.http_base, p.https_base, p.token, p.mac
    );
    if !p.extra_cmdline.trim().is_empty() {
        s.push(' ');
        s.push_str(p.extra_cmdline.trim());
    }
    s
}

/// The longest extra command line taken (the kernel's own limit on x86 is 2,048 bytes, and
/// the server's words take about 300).
pub const MAX_EXTRA_CMDLINE: usize = 1024;

/// Whether `extra` may be added to the recovery kernel's command line: it goes unquoted into
/// iPXE scripts and grub configurations, so it is held to the characters kernel and module
/// options use (letters, digits, `. _ - = , : / + @ % ~ *`, words separated by spaces), and it
/// may not set what the server sets per boot (`initrd=`, `unbrick.server/api/token/mac`: a later
/// word would win over the server's). The error names the first word at fault.
pub fn check_extra_cmdline(extra: &str) -> Result<(), String> {
    if extra.len() > MAX_EXTRA_CMDLINE {
        return Err(format!(
            "{} bytes; at most {MAX_EXTRA_CMDLINE}",
            extra.len()
        ));
    }
    for word in extra.split(' ').filter(|w| !w.is_empty()) {
        if let Some(c) = word
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !"._-=,:/+@%~*".contains(*c))
        {
            return Err(format!(
                "{word:?}: {c:?} is not allowed (letters, digits and . _ - = , : / + @ % ~ * only)"
            ));
        }
        let key = word.split('=').next().unwrap_or(word);
        if matches!(
            key,
            "initrd" | "unbrick.server" | "unbrick.api" | "unbrick.token" | "unbrick.mac"
        ) {
            return Err(format!("{word:?}: the server sets {key} for each boot"));
        }
    }
    Ok(())
}

/// The default of [`BootParams::poll_secs`].
pub const POLL_SECONDS: u32 = 30;

/// The iPXE script for decision `d`.
pub fn ipxe_script(d: &BootDecision, p: &BootParams<'_>) -> String {
    let mac = p.mac;
    let poll = p.poll_secs;
    let again = format!("{}/boot/{mac}.ipxe", p.http_base);
    match d {
        BootDecision::Payload | BootDecision::Restore if p.image_ready => format!(
            "#!ipxe\n\
             echo unbrick: booting the recovery payload{what} for {mac}\n\
             kernel {base}/image/{KERNEL}?host={mac} {cmdline} || goto failed\n\
             initrd --name {INITRD} {base}/image/{INITRD}?host={mac} || goto failed\n\
             boot || goto failed\n\
             :failed\n\
             echo unbrick: could not boot the recovery payload; trying again in 10 seconds\n\
             sleep 10\n\
             chain --autofree {again} || goto failed\n",
            base = p.http_base,
            cmdline = kernel_cmdline(p),
            what = if *d == BootDecision::Restore { " (restore mode: undo the quarantine)" } else { "" },
        ),
        BootDecision::Payload | BootDecision::Restore => format!(
            "#!ipxe\n\
             echo unbrick: this machine ({mac}) will be repaired, but the server has no recovery image yet.\n\
             echo unbrick: the administrator must run: unbrick image build\n\
             echo unbrick: checking again in {poll} seconds\n\
             :poll\n\
             sleep {poll}\n\
             chain --autofree {again} || goto poll\n"
        ),
        BootDecision::WaitingRoom { reason } => format!(
            "#!ipxe\n\
             echo unbrick: {reason}\n\
             echo unbrick: this machine ({mac}) will be repaired automatically; leave it switched on.\n\
             :poll\n\
             sleep {poll}\n\
             chain --autofree {again} || goto poll\n"
        ),
        BootDecision::LocalBoot | BootDecision::Ignore => format!(
            "#!ipxe\n\
             echo unbrick: nothing to do for {mac}; booting from the local disk\n\
             exit 0\n"
        ),
    }
}

/// `/grub/grub.cfg`: grub cannot ask us by MAC, so this stub loads the per-host file by the
/// MAC of the interface it booted from.
pub fn grub_stub() -> String {
    "set timeout=0\n\
     if [ -n \"${net_default_mac}\" ]; then\n\
     \x20 configfile /grub/host-${net_default_mac}.cfg\n\
     fi\n\
     echo \"unbrick: cannot tell this machine's MAC address; booting from the local disk\"\n\
     sleep 5\n\
     exit\n"
        .to_string()
}

/// The iPXE script for a request refused because it did not come from the machine `mac`: no
/// token; the firmware goes on to its next boot device.
pub fn ipxe_refused(mac: Mac) -> String {
    format!(
        "#!ipxe\n\
         echo unbrick: this request did not come from {mac}; no recovery payload for it\n\
         exit 1\n"
    )
}

/// The grub configuration for a refused request (see [`ipxe_refused`]).
pub fn grub_refused(mac: Mac) -> String {
    format!(
        "echo \"unbrick: this request did not come from {mac}; no recovery payload for it\"\n\
         sleep 5\n\
         exit\n"
    )
}

/// grub's name for our HTTP listener, `(http,10.0.0.1:8080)`, from `http://10.0.0.1:8080`
/// (grub 2.06 as Debian builds it takes a port in the device name).
fn grub_http_device(http_base: &str) -> Option<String> {
    let host = http_base.strip_prefix("http://")?.trim_end_matches('/');
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b));
    ok.then(|| format!("(http,{host})"))
}

/// The per-host grub configuration. Kernel and initrd come over HTTP where grub has the `http`
/// module (TCP instead of lock-step TFTP); should either fail, both come over TFTP from the
/// directory grub was loaded from. Debian 12's signed grubnetx64 has no `http` module: it fails
/// at once ("disk not found") and takes the TFTP path. The paths are quoted so that grub does
/// not expand the `?` as a wildcard.
pub fn grub_config(d: &BootDecision, p: &BootParams<'_>) -> String {
    let mac = p.mac;
    match d {
        BootDecision::Payload | BootDecision::Restore if p.image_ready => {
            let cmdline = kernel_cmdline(p);
            let tftp = format!(
                "linux /{KERNEL} {cmdline}\n\
                 initrd /{INITRD}\n"
            );
            let body = match grub_http_device(p.http_base) {
                Some(dev) => format!(
                    "set unbrick_http=0\n\
                     if linux \"{dev}/image/{KERNEL}?host={mac}\" {cmdline}; then\n\
                     \x20 if initrd \"{dev}/image/{INITRD}?host={mac}\"; then\n\
                     \x20   set unbrick_http=1\n\
                     \x20 fi\n\
                     fi\n\
                     if [ \"$unbrick_http\" != 1 ]; then\n\
                     \x20 echo \"unbrick: HTTP from {dev} failed; loading the payload over TFTP\"\n\
                     {tftp}\
                     fi\n"
                ),
                None => tftp,
            };
            format!(
                "set timeout=0\n\
                 echo \"unbrick: booting the recovery payload for {mac}\"\n\
                 {body}\
                 boot\n"
            )
        }
        BootDecision::Payload | BootDecision::Restore => format!(
            "echo \"unbrick: {mac} will be repaired, but the server has no recovery image yet (unbrick image build)\"\n\
             sleep {}\n\
             configfile /grub/host-{mac}.cfg\n",
            p.poll_secs
        ),
        BootDecision::WaitingRoom { reason } => format!(
            "echo \"unbrick: {}\"\n\
             echo \"unbrick: this machine ({mac}) will be repaired automatically; leave it switched on.\"\n\
             sleep {}\n\
             configfile /grub/host-{mac}.cfg\n",
            reason.replace('"', "'"),
            p.poll_secs
        ),
        BootDecision::LocalBoot | BootDecision::Ignore => format!(
            "echo \"unbrick: nothing to do for {mac}; booting from the local disk\"\n\
             exit\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_command_lines_hold_only_option_words() {
        for ok in [
            "",
            "unbrick.poweroff",
            "usb_storage.delay_use=0 libata.force=1.00:noncq,2.00:nolpm",
            "modprobe.blacklist=nouveau unbrick.dirty=skip unbrick.keywait=600 pci=nomsi",
        ] {
            assert_eq!(check_extra_cmdline(ok), Ok(()), "{ok}");
        }
        for (bad, want) in [
            ("quiet\nkernel http://evil/x", "'\\n' is not allowed"),
            ("a=$x", "'$' is not allowed"),
            ("a;reboot", "';' is not allowed"),
            ("x=\"a b\"", "'\"' is not allowed"),
            ("unbrick.token=forged", "the server sets unbrick.token"),
            ("initrd=/other.img", "the server sets initrd"),
            (
                "unbrick.server=http://10.0.0.9:8080",
                "the server sets unbrick.server",
            ),
        ] {
            let e = check_extra_cmdline(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let long = "a".repeat(MAX_EXTRA_CMDLINE + 1);
        assert!(check_extra_cmdline(&long)
            .unwrap_err()
            .contains("at most 1024"));
    }

    fn p(ready: bool) -> BootParams<'static> {
        BootParams {
            http_base: "http://10.99.0.1:8080",
            https_base: "https://10.99.0.1:8443",
            server_ip: "10.99.0.1".parse().unwrap(),
            mac: "52:54:00:12:34:56".parse().unwrap(),
            token: "t0k",
            image_ready: ready,
            extra_cmdline: "unbrick.poweroff",
            poll_secs: POLL_SECONDS,
        }
    }

    #[test]
    fn ipxe_payload_script() {
        let s = ipxe_script(&BootDecision::Payload, &p(true));
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.99.0.1:8080/image/vmlinuz?host=52:54:00:12:34:56 initrd=initrd.img unbrick.server=http://10.99.0.1:8080 unbrick.api=https://10.99.0.1:8443 unbrick.token=t0k"));
        assert!(s.contains("unbrick.poweroff"));
        assert!(s.contains("initrd --name initrd.img http://10.99.0.1:8080/image/initrd.img"));
        assert!(ipxe_script(&BootDecision::Payload, &p(false)).contains("no recovery image yet"));
        assert!(ipxe_script(&BootDecision::LocalBoot, &p(true)).contains("exit"));
        let w = ipxe_script(
            &BootDecision::WaitingRoom {
                reason: "waiting for wave 2".into(),
            },
            &p(true),
        );
        assert!(w.contains("waiting for wave 2") && w.contains("sleep 30") && w.contains("chain"));
        // A server that is restarting does not answer a poll: the machine polls again instead
        // of falling back to its (boot-looping) disk.
        assert!(w.contains(":poll\nsleep 30\nchain --autofree http://10.99.0.1:8080/boot/52:54:00:12:34:56.ipxe || goto poll\n"));
        let f = ipxe_script(&BootDecision::Payload, &p(true));
        assert!(f.contains(":failed\n") && f.ends_with(".ipxe || goto failed\n"));
    }

    #[test]
    fn the_waiting_room_polls_at_the_configured_interval() {
        let q = BootParams {
            poll_secs: 7,
            ..p(true)
        };
        let wait = BootDecision::WaitingRoom {
            reason: "waiting for wave 2".into(),
        };
        assert!(ipxe_script(&wait, &q).contains(":poll\nsleep 7\nchain --autofree "));
        assert!(grub_config(&wait, &q)
            .contains("sleep 7\nconfigfile /grub/host-52:54:00:12:34:56.cfg\n"));
        let none = BootParams {
            image_ready: false,
            ..q
        };
        let s = ipxe_script(&BootDecision::Payload, &none);
        assert!(
            s.contains("checking again in 7 seconds") && s.contains("sleep 7\n"),
            "{s}"
        );
        assert!(grub_config(&BootDecision::Payload, &none).contains("sleep 7\n"));
    }

    #[test]
    fn grub_configs() {
        assert!(grub_stub().contains("configfile /grub/host-${net_default_mac}.cfg"));
        let g = grub_config(&BootDecision::Payload, &p(true));
        assert!(g.contains("linux /vmlinuz initrd=initrd.img unbrick.server=http://10.99.0.1:8080 unbrick.api=https://10.99.0.1:8443 unbrick.token=t0k"));
        assert!(g.contains("initrd /initrd.img"));
        // HTTP first, the TFTP lines only when it failed.
        let http = g
            .find("if linux \"(http,10.99.0.1:8080)/image/vmlinuz?host=52:54:00:12:34:56\" initrd=initrd.img unbrick.server=")
            .expect(&g);
        assert!(g.contains(
            "if initrd \"(http,10.99.0.1:8080)/image/initrd.img?host=52:54:00:12:34:56\"; then"
        ));
        let fallback = g.find("if [ \"$unbrick_http\" != 1 ]; then").unwrap();
        assert!(http < fallback && fallback < g.find("linux /vmlinuz").unwrap());
        assert!(g.ends_with("fi\nboot\n"));
        // No HTTP device grub could name: TFTP only.
        let mut q = p(true);
        q.http_base = "http://10.99.0.1:8080/\"; reboot; \"";
        let t = grub_config(&BootDecision::Payload, &q);
        assert!(!t.contains("(http") && t.contains("linux /vmlinuz"), "{t}");
        assert_eq!(grub_http_device("https://x:1"), None);
        assert_eq!(
            grub_http_device("http://[fd00::1]:8080/").as_deref(),
            Some("(http,[fd00::1]:8080)")
        );
        assert!(grub_config(&BootDecision::LocalBoot, &p(true)).contains("exit"));
    }
}
