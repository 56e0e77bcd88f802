//! BitLocker volumes made by Windows (../shared/testdata: cryptsetup's test images, the
//! decrypted area formatted NTFS through dislocker and populated with the bad channel file) on
//! real guests' disks, one running campaign:
//! - pc-bl1: aes-xts-128 and aes-cbc-128 volumes, keys imported from an Active Directory CSV:
//!   each unlocked with cryptsetup in the guest and remediated; checked afterwards by decrypting
//!   the disk on the host.
//! - pc-bl2: an aes-xts-256 volume whose escrowed key is wrong, a partially encrypted one, and
//!   an aes-cbc-elephant-128 (Windows 7) volume that unlocks (dislocker cannot write through the
//!   diffuser, so it holds no file system and is reported as not mountable), and a suspended
//!   one (clear key): needs attention, with each reason.
//! - pc-bl3: an aes-cbc-256 volume with no escrowed key: the host waits in needs-attention,
//!   an admin pastes the key in the console's form, the agent picks it up and the volume is
//!   remediated.
//!
//! A second request for a released key is refused (here and in web-console/tests/api.rs).
use crate::campaign::{api_json, cli, state, token, wait_for};
use crate::disks::{channel_file, ntfs_ls, ntfs_read};
use crate::firmware::{start_guest, Bus, Firmware};
use crate::lab::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CS: &str = "Windows/System32/drivers/CrowdStrike";
const BAD: &str = "C-00000291-00000000-00000032.sys";

/// `images.conf` of the test data: image name -> key -> value.
fn images_conf(dir: &Path) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut cur = String::new();
    for l in std::fs::read_to_string(dir.join("images.conf"))
        .unwrap()
        .lines()
    {
        if let Some(n) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            cur = n.to_string();
        } else if let Some((k, v)) = l.split_once('=') {
            out.entry(cur.clone())
                .or_default()
                .insert(k.into(), v.into());
        }
    }
    out
}

/// A FUSE mount (dislocker, ntfs-3g) taken down when dropped, also when a step panics.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sh(&format!("umount {}", self.0.display()));
    }
}

/// `vol` decrypted by dislocker-fuse at `mnt` (`mnt/dislocker-file` is the plain volume),
/// read-only or not; unmounted when the guard drops.
fn dislocker(vol: &Path, rp: &str, mnt: &Path, read_only: bool) -> Mounted {
    std::fs::create_dir_all(mnt).unwrap();
    must(&format!(
        "dislocker-fuse {}-V {} -p{rp} -- {}",
        if read_only { "-r " } else { "" },
        vol.display(),
        mnt.display()
    ));
    Mounted(mnt.to_path_buf())
}

/// A copy of a Windows-made BitLocker image whose decrypted area now holds NTFS with Windows'
/// layout and the bad channel file (written through dislocker-fuse and ntfs-3g on the host).
fn encrypted_windows_volume(lab: &Lab, imgs: &Path, image: &str, rp: &str, seed: u8) -> PathBuf {
    let out = lab.dir.join(format!("{image}.vol"));
    must(&format!(
        "cp --sparse=always {} {}",
        imgs.join(format!("{image}.img")).display(),
        out.display()
    ));
    let (m1, m2) = (
        lab.dir.join(format!("{image}.m1")),
        lab.dir.join(format!("{image}.m2")),
    );
    std::fs::create_dir_all(&m2).unwrap();
    let outer = dislocker(&out, rp, &m1, false);
    let plain = m1.join("dislocker-file");
    must(&format!(
        "mkntfs -F -Q -q -L WINDOWS {} 2>/dev/null",
        plain.display()
    ));
    must(&format!("ntfs-3g {} {}", plain.display(), m2.display()));
    let inner = Mounted(m2.clone());
    let cs = m2.join(CS);
    std::fs::create_dir_all(&cs).unwrap();
    std::fs::write(cs.join(BAD), channel_file(seed, 20_000)).unwrap();
    // The rules match the bad file's time (04:09 UTC on 19 July 2024).
    must(&format!(
        "touch -d '2024-07-19 04:09:00 UTC' {}",
        cs.join(BAD).display()
    ));
    std::fs::write(m2.join("Windows/System32/ntoskrnl.exe"), b"MZ").unwrap();
    drop(inner);
    drop(outer);
    out
}

/// Files under a directory of an encrypted volume (decrypted on the host with dislocker).
fn ls_encrypted(vol: &Path, rp: &str, dir: &str) -> Vec<String> {
    let m = vol.with_extension("check");
    let _mounted = dislocker(vol, rp, &m, true);
    let plain = m.join("dislocker-file");
    let mut out = ntfs_ls(&plain, dir);
    if out.is_empty() {
        out = vec![format!(
            "(nothing; ntfscat of {BAD}: {:?})",
            ntfs_read(&plain, &format!("{CS}/{BAD}")).map(|b| b.len())
        )];
    }
    out
}

/// A GPT disk holding `vols` as partitions 1..n; returns the path and each start sector.
fn disk_of(lab: &Lab, name: &str, vols: &[&Path]) -> (PathBuf, Vec<u64>) {
    let disk = lab.dir.join(format!("{name}.img"));
    let mb: u64 = vols
        .iter()
        .map(|v| std::fs::metadata(v).unwrap().len().div_ceil(1 << 20) + 1)
        .sum::<u64>()
        + 4;
    must(&format!("truncate -s {mb}M {}", disk.display()));
    // Explicit first and last sectors: each partition exactly its volume's size (sgdisk rounds
    // "+size" ends down to its alignment, which would cut the NTFS backup boot sector off).
    let mut args = String::from("-o");
    let mut at = 2048u64;
    for (i, v) in vols.iter().enumerate() {
        let sectors = std::fs::metadata(v).unwrap().len() / 512;
        args += &format!(" -n {}:{at}:{} -t {}:0700", i + 1, at + sectors - 1, i + 1);
        at = (at + sectors).div_ceil(2048) * 2048;
    }
    must(&format!("sgdisk {args} {}", disk.display()));
    let mut starts = Vec::new();
    for (i, v) in vols.iter().enumerate() {
        let start: u64 = must(&format!("sgdisk -i {} {}", i + 1, disk.display()))
            .lines()
            .find_map(|l| l.strip_prefix("First sector: "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        must(&format!(
            "dd if={} of={} bs=1M seek={} oflag=seek_bytes conv=notrunc,sparse status=none",
            v.display(),
            disk.display(),
            start * 512
        ));
        starts.push(start);
    }
    (disk, starts)
}

/// Copies partition `start` (of `len` bytes) out of a disk after the guest ran.
fn extract(disk: &Path, start: u64, len: u64, out: &Path) {
    must(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        disk.display(),
        out.display(),
        start * 512,
        len
    ));
}

#[test]
fn bitlocker_volumes_unlocked_with_escrowed_and_pasted_keys() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("bl");
    lab.init();
    crate::payload::build_image(&lab);
    // The image carries cryptsetup and stays within 10 MB compressed.
    let initrd = std::fs::metadata(lab.data().join("image/initrd.img"))
        .unwrap()
        .len();
    eprintln!("initrd with cryptsetup: {:.2} MB", initrd as f64 / 1e6);
    assert!(initrd < 10_000_000, "initrd is {initrd} bytes");
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff");
    let tok = token(&lab);
    let tar = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/bitlk-images.tar.xz");
    must(&format!(
        "tar xJf {} -C {}",
        tar.display(),
        lab.dir.display()
    ));
    let imgs = lab.dir.join("bitlk-images");
    let conf = images_conf(&imgs);
    let rp = |i: &str| conf[i]["RP"].clone();
    let rid = |i: &str| conf[i]["RP_VMK_GUID"].clone();

    let v1: Vec<(&str, PathBuf)> = ["bitlk-aes-xts-128", "bitlk-aes-cbc-128"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                *n,
                encrypted_windows_volume(&lab, &imgs, n, &rp(n), i as u8 + 1),
            )
        })
        .collect();
    let v2 = encrypted_windows_volume(
        &lab,
        &imgs,
        "bitlk-aes-xts-256",
        &rp("bitlk-aes-xts-256"),
        4,
    );
    let partial = imgs.join("bitlk-partially-encrypted-aes-cbc-128.img");
    let v3 = encrypted_windows_volume(
        &lab,
        &imgs,
        "bitlk-aes-cbc-256",
        &rp("bitlk-aes-cbc-256"),
        5,
    );
    let (d1, s1) = disk_of(
        &lab,
        "pc-bl1",
        &v1.iter().map(|(_, p)| p.as_path()).collect::<Vec<_>>(),
    );
    let elephant = lab.dir.join("elephant.vol");
    must(&format!(
        "cp --sparse=always {} {}",
        imgs.join("bitlk-aes-cbc-elephant-128.img").display(),
        elephant.display()
    ));
    // Suspended protection: Windows stored a clear key (refused, never guessed at).
    let suspended = imgs.join("bitlk-aes-xts-128-clearkey-only.img");
    let (d2, _) = disk_of(&lab, "pc-bl2", &[&v2, &partial, &elephant, &suspended]);
    let (d3, s3) = disk_of(&lab, "pc-bl3", &[&v3]);

    // The fleet and the keys: an Active Directory export (computer name, msFVE-RecoveryGuid in
    // braces, msFVE-RecoveryPassword). pc-bl2's row carries a valid-looking but wrong key.
    let macs = [
        "52:54:00:b1:00:01",
        "52:54:00:b1:00:02",
        "52:54:00:b1:00:03",
    ];
    let fleet = lab.dir.join("fleet.csv");
    std::fs::write(
        &fleet,
        format!(
            "mac,hostname,site,tags\n{},PC-BL1,hq,bitlocker\n{},PC-BL2,hq,bitlocker\n{},PC-BL3,hq,bitlocker\n",
            macs[0], macs[1], macs[2]
        ),
    )
    .unwrap();
    cli(&lab, &tok, &format!("hosts import {}", fleet.display()));
    let mut ad = String::from(
        "\u{feff}\"ComputerName\",\"msFVE-RecoveryGuid\",\"msFVE-RecoveryPassword\"\r\n",
    );
    for (n, _) in &v1 {
        ad += &format!(
            "\"PC-BL1\",\"{{{}}}\",\"{}\"\r\n",
            rid(n).to_uppercase(),
            rp(n)
        );
    }
    ad += &format!(
        "\"PC-BL2\",\"{{{}}}\",\"{}\"\r\n",
        rid("bitlk-aes-xts-256").to_uppercase(),
        rp("bitlk-aes-xts-128")
    );
    ad += &format!(
        "\"PC-BL2\",\"{{{}}}\",\"{}\"\r\n",
        rid("bitlk-aes-cbc-elephant-128").to_uppercase(),
        rp("bitlk-aes-cbc-elephant-128")
    );
    let adf = lab.dir.join("ad-keys.csv");
    std::fs::write(&adf, ad).unwrap();
    let out = cli(
        &lab,
        &tok,
        &format!("keys import-bitlocker {}", adf.display()),
    );
    assert!(
        out.contains("4 keys imported") && out.contains("active-directory"),
        "{out}"
    );
    // A file with only bad rows: nothing imported, a non-zero exit, each row by line.
    let bad = lab.dir.join("bad-keys.csv");
    std::fs::write(
        &bad,
        "Device name,Key ID,Recovery key\nPC-X,not-a-guid,1\nPC-Y,64311dea-4587-4029-924a-ba299647998e,123456-123456\n",
    )
    .unwrap();
    let o = lab.exec(&format!(
        "{} keys import-bitlocker {} --server http://{SERVER_IP}:8080 --token {tok}",
        unbrick(),
        bad.display()
    ));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() && text.contains("line 2") && text.contains("line 3"),
        "{text}"
    );
    let listed = cli(&lab, &tok, "keys list-bitlocker");
    assert!(
        listed.contains(&rid("bitlk-aes-xts-128")) && !listed.contains(&rp("bitlk-aes-xts-128")),
        "{listed}"
    );

    let id = cli(
        &lab,
        &tok,
        "campaign create --name bitlocker --tag bitlocker --waves 100% --concurrency 3 --min-success 1 --max-failure-rate 1",
    );
    cli(&lab, &tok, &format!("campaign start {id}"));

    let mut guests: Vec<_> = [(&d1, 0), (&d2, 1), (&d3, 2)]
        .iter()
        .map(|(d, i)| {
            start_guest(
                &lab,
                &format!("bl{i}"),
                Firmware::Bios,
                macs[*i],
                Some((d, Bus::Virtio)),
            )
        })
        .collect();
    let t0 = Instant::now();

    // pc-bl3 waits for a key that was never escrowed.
    wait_for(
        "pc-bl3 waiting for its key",
        400,
        || {
            api_json(&lab, &tok, &format!("/api/v1/hosts/{}", macs[2]))["host"]["bitlocker_waiting"]
                [0]
                == serde_json::json!(rid("bitlk-aes-cbc-256"))
        },
        &lab,
    );
    assert_eq!(state(&lab, &tok, macs[2]), "needs-attention");
    let waited = t0.elapsed();
    // An admin pastes it in the console: log in, open the host page, submit its form.
    let jar = lab.dir.join("cookies");
    // Over HTTPS: the session cookie is __Host- and Secure.
    let base = format!("https://{SERVER_IP}:8443");
    lab.exec(&format!(
        "curl -sk -m 10 -c {} -d token={tok} {base}/login",
        jar.display()
    ));
    let page = lab.exec(&format!(
        "curl -sk -m 10 -b {} {base}/hosts/{}",
        jar.display(),
        macs[2]
    ));
    let page = String::from_utf8_lossy(&page.stdout).to_string();
    assert!(
        page.contains("Waiting for a BitLocker recovery key"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{page}"));
    let paste = lab.exec(&format!(
        "curl -sk -m 10 -o /dev/null -w '%{{http_code}}' -b {} --data-urlencode csrf={csrf} --data-urlencode protector_id={} --data-urlencode recovery_password={} {base}/ui/hosts/{}/bitlocker-key",
        jar.display(),
        rid("bitlk-aes-cbc-256"),
        rp("bitlk-aes-cbc-256"),
        macs[2]
    ));
    assert_eq!(String::from_utf8_lossy(&paste.stdout), "303", "{paste:?}");
    for (i, g) in guests.iter_mut().enumerate() {
        assert!(
            g.wait_exit(Instant::now() + Duration::from_secs(300)),
            "guest {i}:\n{}\n{}",
            g.serial_text(),
            lab.server_log()
        );
    }
    eprintln!(
        "three BitLocker guests done in {:.0} s (pc-bl3 waited from {:.0} s)",
        t0.elapsed().as_secs_f64(),
        waited.as_secs_f64()
    );
    let host = |m: &str| api_json(&lab, &tok, &format!("/api/v1/hosts/{m}"))["host"].clone();

    // pc-bl1: three ciphers unlocked and remediated.
    let h1 = host(macs[0]);
    assert_eq!(h1["state"], "remediated", "{h1}");
    assert_eq!(h1["rotate_bitlocker_key"], true);
    let vols = h1["last_report"]["volumes"].as_array().unwrap();
    for (v, method) in vols.iter().zip(["aes-xts-128", "aes-cbc-128"]) {
        assert_eq!(
            (v["kind"].as_str(), v["status"].as_str()),
            (Some("bitlocker"), Some("remediated")),
            "{v}"
        );
        let d = v["detail"].as_str().unwrap();
        assert!(
            d.contains(method) && d.contains("unlocked with the recovery key"),
            "{d}"
        );
        let ms = unlock_ms(d);
        eprintln!(
            "unlock {method}: {ms} ms (key derivation included, accel {})",
            crate::firmware::accel()
        );
    }
    assert_eq!(
        h1["last_report"]["files"].as_array().unwrap().len(),
        2,
        "{h1}"
    );
    // On the disk, decrypted on the host: the channel file moved to the quarantine.
    for (i, (n, vol)) in v1.iter().enumerate() {
        let part = lab.dir.join(format!("after-{n}.vol"));
        extract(&d1, s1[i], std::fs::metadata(vol).unwrap().len(), &part);
        let cs = ls_encrypted(&part, &rp(n), CS);
        assert!(!cs.iter().any(|f| f == BAD), "{n}: {cs:?}");
        let q = ls_encrypted(&part, &rp(n), "unbrick-quarantine");
        assert!(
            !q.is_empty() && !q[0].starts_with("(nothing"),
            "{n}: quarantine {q:?}"
        );
    }

    // pc-bl2: the wrong key and the partial volume, each with its reason.
    let h2 = host(macs[1]);
    assert_eq!(h2["state"], "needs-attention", "{h2}");
    let r2 = h2["reason"].as_str().unwrap();
    assert!(r2.contains("does not unlock"), "{r2}");
    assert!(r2.contains("only partially encrypted"), "{r2}");
    assert!(r2.contains("protection is suspended"), "{r2}");
    let v2s = h2["last_report"]["volumes"].as_array().unwrap();
    let el = v2s
        .iter()
        .find(|v| v["detail"].as_str().unwrap_or("").contains("with diffuser"))
        .unwrap_or_else(|| panic!("{h2}"));
    let d = el["detail"].as_str().unwrap();
    assert!(
        d.contains("unlocked with the recovery key") && el["status"] == "mount-failed",
        "{el}"
    );
    let ms = unlock_ms(d);
    eprintln!("unlock aes-cbc-128 with diffuser (elephant): {ms} ms");

    // pc-bl3: the pasted key unlocked it.
    let h3 = host(macs[2]);
    assert_eq!(h3["state"], "remediated", "{h3}");
    let part = lab.dir.join("after-bl3.vol");
    extract(&d3, s3[0], std::fs::metadata(&v3).unwrap().len(), &part);
    assert!(!ls_encrypted(&part, &rp("bitlk-aes-cbc-256"), CS)
        .iter()
        .any(|f| f == BAD));

    // Every release is in the audit log, never a password; the export flags key rotation.
    let audit = lab.exec(&format!(
        "curl -s -m 5 -H 'Authorization: Bearer {tok}' http://{SERVER_IP}:8080/api/v1/audit"
    ));
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    assert_eq!(audit.matches("bitlocker-release").count(), 5, "{audit}");
    assert!(audit.contains("bitlocker-paste"));
    for n in ["bitlk-aes-xts-128", "bitlk-aes-cbc-256"] {
        assert!(!audit.contains(&rp(n)), "a password in the audit log");
        assert!(
            !lab.server_log().contains(&rp(n)),
            "a password in the server log"
        );
    }
    let export = lab.exec(&format!("curl -s -m 5 -H 'Authorization: Bearer {tok}' 'http://{SERVER_IP}:8080/api/v1/export?format=csv'"));
    let export = String::from_utf8_lossy(&export.stdout).to_string();
    assert_eq!(
        export
            .lines()
            .filter(|l| l
                .rsplit_once(',')
                .is_some_and(|(rest, _name_on_disk)| rest.ends_with(",yes")))
            .count(),
        3,
        "{export}"
    );
}

/// The unlock time in a volume's report detail ("... unlocked with the recovery key ... in N ms").
fn unlock_ms(detail: &str) -> u64 {
    detail
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
