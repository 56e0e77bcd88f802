//! BitLocker volumes made by Windows (../shared/testdata, cryptsetup's test images) on a real
//! guest's disk: the agent reads the key protectors from each volume's own metadata, reports the
//! recovery key ID, and refuses a partially encrypted volume with its reason. (Unlocking is not
//! built yet.)
use crate::firmware::{start_guest, Bus, Firmware};
use crate::lab::*;
use std::time::{Duration, Instant};

#[test]
fn agent_reports_bitlocker_protectors_from_real_windows_volumes() {
    let _turn = qemu_turn();
    let mut lab = Lab::new("bl");
    lab.init();
    crate::payload::build_image(&lab);
    lab.serve("--dhcp full --pool 10.99.0.100-10.99.0.150 --kernel-cmdline unbrick.poweroff");
    let tar = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/bitlk-images.tar.xz");
    must(&format!(
        "tar xJf {} -C {}",
        tar.display(),
        lab.dir.display()
    ));
    let imgs = lab.dir.join("bitlk-images");
    // A GPT disk: partition 1 the aes-xts-128 volume, partition 2 the partially encrypted one.
    let disk = lab.dir.join("bitlk.img");
    must(&format!("truncate -s 260M {}", disk.display()));
    must(&format!(
        "sgdisk -o -n 1:2048:+100M -t 1:0700 -n 2:0:+100M -t 2:0700 {}",
        disk.display()
    ));
    let start2: u64 = must(&format!("sgdisk -i 2 {}", disk.display()))
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    for (img, sector) in [
        ("bitlk-aes-xts-128.img", 2048u64),
        ("bitlk-partially-encrypted-aes-cbc-128.img", start2),
    ] {
        must(&format!(
            "dd if={} of={} bs=1M seek={} oflag=seek_bytes conv=notrunc,sparse status=none",
            imgs.join(img).display(),
            disk.display(),
            sector * 512
        ));
    }
    let mac = "52:54:00:b1:00:01";
    let mut g = start_guest(&lab, "bl", Firmware::Bios, mac, Some((&disk, Bus::Virtio)));
    assert!(
        g.wait_exit(Instant::now() + Duration::from_secs(240)),
        "{}\n{}",
        g.serial_text(),
        lab.server_log()
    );
    drop(g);
    lab.stop_server();
    let h = lab.host_json(mac);
    assert_eq!(h["host"]["state"], "needs-attention", "{h}");
    // Both volumes' recovery-password protectors (images.conf RP_VMK_GUID of each image).
    assert_eq!(
        h["host"]["protector_ids"],
        serde_json::json!([
            "64311dea-4587-4029-924a-ba299647998e",
            "bf563c45-4036-42f4-b04a-46f2c9862570"
        ]),
        "{h}"
    );
    let vols = h["host"]["last_report"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    let by = |st: &str| vols.iter().find(|v| v["status"] == st).cloned();
    let locked = by("bitlocker-locked").unwrap_or_else(|| panic!("{vols:?}"));
    assert!(
        locked["detail"].as_str().unwrap().contains("aes-xts-128"),
        "{locked}"
    );
    assert!(
        locked["protectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "3e55195c-8811-4d9b-97b4-2b9e5f8f5384 password"),
        "{locked}"
    );
    let partial = by("bitlocker-partial").unwrap_or_else(|| panic!("{vols:?}"));
    assert!(
        partial["detail"]
            .as_str()
            .unwrap()
            .contains("only partially encrypted"),
        "{partial}"
    );
}
