//! BitLocker volumes: the key protectors from the volume's own metadata, the recovery
//! password from the server's release policy, and cryptsetup's BITLK to open and close them.
use super::{say, Ctx};
use fleet::agent::VolumeReport;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unbrick_http as http;

/// What became of a BitLocker volume before remediation.
pub(super) enum Bitlk {
    /// Unlocked: `mapper` is the plain view (remediate it like NTFS), closed afterwards.
    Open {
        name: String,
        mapper: String,
        detail: String,
        protectors: Vec<String>,
    },
    /// Left locked, with the reason (the host needs attention).
    Locked(Box<VolumeReport>),
}

pub(super) fn locked(dev: &str, status: &str, detail: String, protectors: Vec<String>) -> Bitlk {
    Bitlk::Locked(Box::new(VolumeReport {
        device: dev.into(),
        kind: "bitlocker".into(),
        status: status.into(),
        detail,
        protectors,
        computer_name: None,
        crash_dumps: vec![],
        windows_version: None,
        inspected: vec![],
        event_log: None,
    }))
}

/// A BitLocker volume: its key protectors from its own metadata (our parser of the FVE
/// header), the recovery password of a recovery-password protector from the server (the
/// release policy decides; an admin may paste one while the agent waits), then cryptsetup's
/// BITLK with the password on stdin. Partially encrypted, suspended (clear key), Vista and
/// recovery-password-less volumes are reported, never guessed at.
pub(super) fn bitlocker_unlock(ctx: &Ctx, dev: &str) -> Bitlk {
    let mut f = match std::fs::File::open(format!("/dev/{dev}")) {
        Ok(f) => f,
        Err(e) => {
            return locked(
                dev,
                "bitlocker-unreadable",
                format!("BitLocker volume; cannot read it: {e}"),
                vec![],
            )
        }
    };
    let info = crate::bitlk::read(&mut |off, len| {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(off))?;
        let mut b = vec![0u8; len];
        let n = f.read(&mut b)?;
        b.truncate(n);
        Ok(b)
    });
    let i = match info {
        Ok(i) => i,
        Err(e) => {
            return locked(
                dev,
                "bitlocker-unsupported",
                format!("BitLocker volume: {e}"),
                vec![],
            )
        }
    };
    let protectors: Vec<String> = i
        .protectors
        .iter()
        .map(|p| format!("{} {}", p.guid, p.kind))
        .collect();
    let what = format!(
        "BitLocker volume {} ({}{})",
        i.volume_guid,
        i.method_name(),
        i.description
            .as_deref()
            .map(|d| format!(", \"{d}\""))
            .unwrap_or_default()
    );
    if i.partially_encrypted {
        return locked(dev, "bitlocker-partial", format!("{what} is only partially encrypted (conversion not finished); unbrick does not unlock it. Let Windows finish the conversion, or repair it by hand"), protectors);
    }
    if i.protectors
        .iter()
        .any(|p| p.kind == crate::bitlk::ProtectorKind::ClearKey)
    {
        return locked(dev, "bitlocker-suspended", format!("{what}: BitLocker protection is suspended (a clear key is stored on the disk); unbrick does not unlock suspended volumes. Repair it by hand or resume protection"), protectors);
    }
    if !cryptsetup_path().exists() {
        // Checked before asking: a key must not leave escrow for an image that cannot use it.
        return locked(dev, "bitlocker-locked", format!("{what}: this recovery image was built without BitLocker unlocking (image build --no-bitlocker); recovery key ID {}", i.recovery_ids().join(", ")), protectors);
    }
    let ids: Vec<String> = i.recovery_ids().iter().map(|s| s.to_string()).collect();
    if ids.is_empty() {
        let kinds: Vec<String> = i.protectors.iter().map(|p| p.kind.to_string()).collect();
        return locked(dev, "bitlocker-no-recovery-password", format!("{what} is protected only by {} and has no recovery-password protector, so no key can be escrowed for it; unlock it by hand", kinds.join(", ")), protectors);
    }
    ctx.step(
        "volume",
        &format!(
            "{dev}: {what}; asking the server for the recovery key of protector {}",
            ids.join(", ")
        ),
    );
    let (id, password) = match request_key(ctx, dev, &ids) {
        Ok(k) => k,
        Err((status, why)) => return locked(dev, status, format!("{what}: {why}"), protectors),
    };
    let name = format!("unbrick-{dev}");
    let mut password = zeroize::Zeroizing::new(password);
    let opened = cryptsetup_open(dev, &name, &password);
    zeroize::Zeroize::zeroize(&mut *password);
    match opened {
        Ok(ms) => {
            let detail = format!(
                "{what} unlocked with the recovery key of protector {id} in {ms} ms (key derivation included)"
            );
            ctx.step(fleet::agent::STEP_UNLOCKED, &format!("{dev}: {detail}"));
            Bitlk::Open {
                mapper: format!("/dev/mapper/{name}"),
                name,
                detail,
                protectors,
            }
        }
        Err((status, why)) => locked(dev, status, format!("{what}: {why}"), protectors),
    }
}

/// Asks for the key until it comes, is refused, or the wait for an admin's paste runs out.
pub(super) fn request_key(
    ctx: &Ctx,
    dev: &str,
    ids: &[String],
) -> Result<(String, String), (&'static str, String)> {
    let req = fleet::agent::KeyRequest {
        token: ctx.cmd.token.clone(),
        mac: ctx.mac.clone(),
        volume: dev.into(),
        protectors: ids.to_vec(),
    };
    let data = serde_json::to_vec(&req).expect("serializes");
    let t = Instant::now();
    let mut told = None::<Instant>;
    let mut errors = 0;
    loop {
        let r = http::request_with(
            "POST",
            &ctx.api_url("/agent/v1/bitlocker-key"),
            Some(&data),
            Duration::from_secs(15),
            &ctx.opts(),
        );
        let waiting = match r {
            Ok(mut r) => {
                errors = 0;
                let reply: Option<fleet::agent::KeyReply> = serde_json::from_slice(&r.body).ok();
                // A release's bytes held the password: wiped once parsed.
                if r.status == 200 {
                    zeroize::Zeroize::zeroize(&mut r.body);
                }
                match (r.status, reply) {
                    (200, Some(k)) => match (k.protector_id, k.recovery_password) {
                        (Some(id), Some(pw)) => return Ok((id, pw)),
                        _ => {
                            return Err((
                                "bitlocker-locked",
                                "the server's key answer was incomplete".into(),
                            ))
                        }
                    },
                    (202, Some(k)) => k.waiting.unwrap_or_default(),
                    (_, Some(k)) if k.refused.is_some() => {
                        return Err((
                            "bitlocker-key-refused",
                            format!(
                                "the server refused the key: {}",
                                k.refused.unwrap_or_default()
                            ),
                        ))
                    }
                    (s, _) if (400..500).contains(&s) => {
                        return Err((
                            "bitlocker-key-refused",
                            format!(
                                "the server refused the key request: {s} {}",
                                String::from_utf8_lossy(&r.body).trim()
                            ),
                        ))
                    }
                    (s, _) => format!("the server answered {s}"),
                }
            }
            Err(e) => {
                errors += 1;
                if errors > 20 {
                    return Err(("bitlocker-locked", format!("the key request failed: {e}")));
                }
                e.to_string()
            }
        };
        if t.elapsed() > Duration::from_secs(ctx.cmd.key_wait_secs) {
            return Err((
                "bitlocker-no-key",
                format!(
                    "no recovery key for protector {} after waiting {} s: {waiting}",
                    ids.join(", "),
                    ctx.cmd.key_wait_secs
                ),
            ));
        }
        if told.is_none_or(|w| w.elapsed() > Duration::from_secs(300)) {
            ctx.step(
                "bitlocker-wait",
                &format!("{dev}: waiting for a recovery key ({waiting}); polling every 5 s"),
            );
            say(&format!(
                "{dev}: {waiting}; waiting for an admin to paste the key in the console"
            ));
            told = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// `cryptsetup open --type bitlk` with the recovery password on stdin (never in argv or the
/// environment). Returns the milliseconds it took (the key derivation is most of it).
pub(super) fn cryptsetup_open(
    dev: &str,
    name: &str,
    password: &str,
) -> Result<u128, (&'static str, String)> {
    use std::io::Write;
    use std::process::Stdio;
    let _ = std::fs::create_dir_all("/run/cryptsetup");
    let t = Instant::now();
    let child = cryptsetup()
        // --debug: cryptsetup 2.6 says why BITLK failed only there ("No more VMKs to try": the
        // key opened no protector); exit 1 also covers other errors. Keys are not in it.
        .args([
            "open",
            "--type",
            "bitlk",
            "--key-file=-",
            "--disable-keyring",
            "--debug",
        ])
        .arg(format!("/dev/{dev}"))
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err(("bitlocker-locked", format!("cryptsetup: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(password.as_bytes());
    }
    let o = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Err(("bitlocker-locked", format!("cryptsetup: {e}"))),
    };
    let ms = t.elapsed().as_millis();
    if o.status.success() {
        return Ok(ms);
    }
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // What a person would read: cryptsetup's own messages, not its debug lines.
    let err = all
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // Exit code 2 (no key slot opened, cryptsetup(8)), or BITLK's "no VMK opened" (exit 1).
    if o.status.code() == Some(2)
        || all.contains("No more VMKs to try")
        || all.contains("No key available")
    {
        Err(("bitlocker-key-rejected", format!("the recovery key released for this volume does not unlock it (wrong key escrowed?): cryptsetup: {err}")))
    } else {
        Err((
            "bitlocker-locked",
            format!("cryptsetup could not unlock it ({}): {err}", o.status),
        ))
    }
}

/// cryptsetup as the image ships it.
pub(super) fn cryptsetup_path() -> PathBuf {
    Path::new("/").join(crate::IMAGE_CRYPTSETUP)
}

/// A cryptsetup command for this image: no udev here (libdevmapper makes the /dev/mapper node
/// itself), C locale.
pub(super) fn cryptsetup() -> std::process::Command {
    let mut c = std::process::Command::new(cryptsetup_path());
    c.env("DM_DISABLE_UDEV", "1").env("LC_ALL", "C");
    c
}

/// Closes an unlocked mapping (retried: a just-unmounted file system may still hold it).
pub(super) fn cryptsetup_close(name: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..10 {
        match cryptsetup().args(["close", name]).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("cryptsetup close {name}: {last}"))
}
