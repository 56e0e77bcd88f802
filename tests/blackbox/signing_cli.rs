//! The signing CLI and the server's refusal to serve what fails verification.
use crate::lab::*;

fn unbrick_out(args: &str) -> (i32, String) {
    let o = sh(&format!("{} {args} 2>&1", unbrick()));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn image_verify_names_every_tamper_case() {
    let dir = std::env::temp_dir().join(format!("unbrick-sig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out) = unbrick_out(&format!("keys generate --out {}/keys", dir.display()));
    assert_eq!(code, 0, "{out}");
    let (code, out) = unbrick_out(&format!("keys generate --out {}/keys", dir.display()));
    assert_ne!(code, 0, "refuses to overwrite a key");
    assert!(out.contains("refusing to overwrite"), "{out}");
    let img = dir.join("image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("vmlinuz"), vec![7u8; 100_000]).unwrap();
    std::fs::write(img.join("initrd.img"), vec![9u8; 5000]).unwrap();
    let (code, out) = unbrick_out(&format!("image sign {}", img.display()));
    assert_eq!(code, 0, "{out}");
    let (code, out) = unbrick_out(&format!("image verify {}", img.display()));
    assert_eq!(code, 0, "{out}");

    let reset = || {
        std::fs::write(img.join("vmlinuz"), vec![7u8; 100_000]).unwrap();
        std::fs::write(img.join("initrd.img"), vec![9u8; 5000]).unwrap();
        let _ = std::fs::remove_file(img.join("extra.bin"));
        must(&format!("{} image sign {}", unbrick(), img.display()));
    };
    type Tamper<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Tamper<'_>> = vec![
        (
            "missing file",
            Box::new(|| std::fs::remove_file(img.join("initrd.img")).unwrap()),
            "initrd.img is listed in the manifest but missing",
        ),
        (
            "changed byte",
            Box::new(|| {
                let mut d = std::fs::read(img.join("vmlinuz")).unwrap();
                d[500] ^= 1;
                std::fs::write(img.join("vmlinuz"), d).unwrap();
            }),
            "vmlinuz: SHA-256 is",
        ),
        (
            "extra file",
            Box::new(|| std::fs::write(img.join("extra.bin"), b"x").unwrap()),
            "extra.bin is not listed in the signed manifest",
        ),
        (
            "wrong key",
            Box::new(|| {
                let _ = std::fs::remove_dir_all(dir.join("k2"));
                must(&format!(
                    "{} keys generate --out {}/k2",
                    unbrick(),
                    dir.display()
                ));
                must(&format!(
                    "{} image sign {} --key {}/k2/signing.key",
                    unbrick(),
                    img.display(),
                    dir.display()
                ));
            }),
            "but the trusted key is",
        ),
        (
            "truncated signature",
            Box::new(|| {
                let s = std::fs::read(img.join("manifest.json.sig")).unwrap();
                std::fs::write(img.join("manifest.json.sig"), &s[..s.len() - 30]).unwrap();
            }),
            "signature file is malformed",
        ),
        (
            "malformed manifest",
            Box::new(|| std::fs::write(img.join("manifest.json"), b"{not json").unwrap()),
            "manifest.json",
        ),
        (
            "edited manifest",
            Box::new(|| {
                let m = std::fs::read_to_string(img.join("manifest.json")).unwrap();
                std::fs::write(
                    img.join("manifest.json"),
                    m.replace("\"size\": 5000", "\"size\": 5001"),
                )
                .unwrap();
            }),
            "signature does not match",
        ),
    ];
    for (name, tamper, expect) in cases {
        reset();
        tamper();
        // Exit code 1: the check ran and found a problem (2 is for errors).
        let (code, out) = unbrick_out(&format!("image verify {}", img.display()));
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(expect), "{name}: expected {expect:?} in {out}");
        let o = sh(&format!(
            "{} image verify --json {}",
            unbrick(),
            img.display()
        ));
        assert_eq!(o.status.code(), Some(1), "{name}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(v["ok"], false, "{name}: {v}");
        assert!(v["problems"].to_string().contains(expect), "{name}: {v}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rules_sign_verify_and_tamper() {
    let dir = std::env::temp_dir().join(format!("unbrick-rules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    must(&format!(
        "{} keys generate --out {}",
        unbrick(),
        dir.display()
    ));
    let rules = dir.join("rules.json");
    must(&format!(
        "{} rules default --days 10 > {}",
        unbrick(),
        rules.display()
    ));
    let (code, out) = unbrick_out(&format!(
        "rules sign {} --key {}/signing.key",
        rules.display(),
        dir.display()
    ));
    assert_eq!(code, 0, "{out}");
    let (code, out) = unbrick_out(&format!(
        "rules verify {} --pubkey {}/signing.pub",
        rules.display(),
        dir.display()
    ));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("C-00000291*.sys"), "{out}");
    let o = sh(&format!(
        "{} rules verify --json {} --pubkey {}/signing.pub",
        unbrick(),
        rules.display(),
        dir.display()
    ));
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["rules"][0]["path"]
            .as_str()
            .unwrap()
            .contains("C-00000291*.sys"),
        "{v}"
    );
    let o = sh(&format!(
        "{} keys show --json --key {}/signing.pub",
        unbrick(),
        dir.display()
    ));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        v["fingerprint"].as_str().unwrap().starts_with("ed25519:"),
        "{v}"
    );
    let doc = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, doc.replace("05:27:00", "09:27:00")).unwrap();
    let (code, out) = unbrick_out(&format!(
        "rules verify {} --pubkey {}/signing.pub",
        rules.display(),
        dir.display()
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not match"), "{out}");
    // Expired rules are refused.
    must(&format!(
        "{} rules default --days 0 > {}",
        unbrick(),
        rules.display()
    ));
    let doc = std::fs::read_to_string(&rules).unwrap();
    let expired = doc
        .lines()
        .map(|l| {
            if l.contains("\"expires\"") {
                "  \"expires\": \"2024-01-01T00:00:00Z\",".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rules, expired).unwrap();
    must(&format!(
        "{} rules sign {} --key {}/signing.key",
        unbrick(),
        rules.display(),
        dir.display()
    ));
    let (code, out) = unbrick_out(&format!(
        "rules verify {} --pubkey {}/signing.pub",
        rules.display(),
        dir.display()
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expired at 2024-01-01T00:00:00Z"), "{out}");
    // A file that cannot be read is an error, not a finding.
    let (code, out) = unbrick_out(&format!(
        "rules verify {}/nothing.json --pubkey {}/signing.pub",
        dir.display(),
        dir.display()
    ));
    assert_eq!(code, 2, "{out}");
    // A rule that names a path outside the volume cannot even be signed.
    std::fs::write(
        &rules,
        doc.replace(r"Windows\\System32", r"..\\..\\Windows"),
    )
    .unwrap();
    let (code, out) = unbrick_out(&format!(
        "rules sign {} --key {}/signing.key",
        rules.display(),
        dir.display()
    ));
    assert_eq!(code, 2, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `unbrick serve ARGS` in the lab, which must refuse to start (exit code 2): its error.
fn refused(lab: &Lab, args: &str) -> String {
    let o = lab.exec(&format!(
        "{} serve --data-dir {} {args}",
        unbrick(),
        lab.data().display()
    ));
    assert_eq!(o.status.code(), Some(2), "{args}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn server_refuses_to_start_with_a_tampered_image() {
    let mut lab = Lab::new("tp");
    lab.init();
    let shim = lab.data().join("image/shimx64.efi");
    let mut d = std::fs::read(&shim).unwrap();
    d[1000] ^= 0x40;
    std::fs::write(&shim, d).unwrap();
    let o = lab.exec(&format!(
        "{} serve --data-dir {} --interface br0 --dhcp proxy",
        unbrick(),
        lab.data().display()
    ));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing to serve") && err.contains("shimx64.efi: SHA-256 is"),
        "{err}"
    );
    // Tampered rules are refused too.
    must(&format!(
        "{} image sign {}",
        unbrick(),
        lab.data().join("image").display()
    ));
    let rules = lab.data().join("rules/active.json");
    let doc = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, doc.replace("quarantine", "delete")).unwrap();
    let o = lab.exec(&format!(
        "{} serve --data-dir {} --interface br0 --dhcp proxy",
        unbrick(),
        lab.data().display()
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("signature does not match"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Clear one-line errors for configuration mistakes: exit code 2 and the reason.
    std::fs::write(&rules, doc).unwrap();
    for (args, expect) in [
        (
            "--interface nope9 --dhcp proxy",
            "interface nope9 not found",
        ),
        (
            "--interface br0 --dhcp full --pool 10.1.0.10-10.1.0.20",
            "is not inside br0's subnet",
        ),
        ("--interface br0 --dhcp full", "needs --pool"),
        (
            "--interface br0 --dhcp off --kernel-cmdline unbrick.token=forged",
            "kernel command line: \"unbrick.token=forged\": the server sets unbrick.token",
        ),
    ] {
        let err = refused(&lab, args);
        assert!(err.contains(expect), "{args}: {err}");
    }
    // The flags' ranges hold in the configuration file too (settings::range), named with the file.
    let conf = lab.data().join("unbrick.toml");
    let kept = std::fs::read(&conf).ok();
    for (file, expect) in [
        (
            "waiting_room_poll_secs = 0",
            "[serve] waiting_room_poll_secs = 0: must be 5 to 600 seconds",
        ),
        (
            "idle_timeout_secs = 0",
            "[serve] idle_timeout_secs = 0: must be 1 to 86400 seconds",
        ),
        (
            "max_tftp_transfers = 0",
            "[serve] max_tftp_transfers = 0: must be 1 to 4096",
        ),
    ] {
        std::fs::write(&conf, format!("[serve]\n{file}\n")).unwrap();
        let err = refused(&lab, "--interface br0 --dhcp off");
        assert!(
            err.contains(expect) && err.contains("unbrick.toml"),
            "{file}: {err}"
        );
    }
    // A flag out of range is refused by its parser, before anything is read.
    let err = refused(&lab, "--interface br0 --dhcp off --lease-secs 5");
    assert!(err.contains("5 is not in 60..=31536000"), "{err}");
    match kept {
        Some(k) => std::fs::write(&conf, k).unwrap(),
        None => std::fs::remove_file(&conf).unwrap(),
    }
    // A port in use.
    let hold = lab.dir.join("hold.log");
    let ns = lab.ns.clone();
    lab.spawn(&ns, "python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"10.99.0.1\", 8080)); s.listen(); print(\"held\", flush=True); time.sleep(60)'", &hold);
    for _ in 0..50 {
        if std::fs::read_to_string(&hold)
            .unwrap_or_default()
            .contains("held")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let err = refused(&lab, "--interface br0 --dhcp off");
    assert!(
        err.contains("port 8080 on 10.99.0.1 is already in use"),
        "{err}"
    );
    // Configuration from the environment.
    let o = lab.exec(&format!(
        "UNBRICK_INTERFACE=nope7 UNBRICK_DHCP=proxy {} serve --data-dir {}",
        unbrick(),
        lab.data().display()
    ));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interface nope7 not found"));
}

/// `--help` names the exit codes; `init` says what to run next (and leaves out what is done);
/// `tokens list` speaks JSON.
#[test]
fn help_names_exit_codes_and_init_names_the_next_steps() {
    let (code, out) = unbrick_out("--help");
    assert_eq!(code, 0);
    assert!(
        out.contains("Exit codes:") && out.contains("1  a check ran and found a problem"),
        "{out}"
    );
    let dir = std::env::temp_dir().join(format!("unbrick-next-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out) = unbrick_out(&format!("init --data-dir {}", dir.display()));
    assert_eq!(code, 0, "{out}");
    let next = out.split("next:").nth(1).unwrap_or_else(|| panic!("{out}"));
    for step in [
        "unbrick image build --data-dir",
        "unbrick tokens create --name admin",
        "unbrick keys import-bitlocker",
        "unbrick serve --data-dir",
    ] {
        assert!(next.contains(step), "{step}: {out}");
    }
    let (code, out) = unbrick_out(&format!(
        "tokens create --name ops --data-dir {}",
        dir.display()
    ));
    assert_eq!(code, 0, "{out}");
    let (_, out) = unbrick_out(&format!("init --data-dir {}", dir.display()));
    assert!(!out.contains("unbrick tokens create"), "{out}");
    let o = sh(&format!(
        "{} tokens list --json --data-dir {}",
        unbrick(),
        dir.display()
    ));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v[0]["name"], "ops", "{v}");
    assert_eq!(v[0]["read_only"], false, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `campaign create --hosts-file`: a bad entry is named by file and line, a missing or empty
/// file is named, and none of them gets as far as the server (there is none here: the error is
/// the file's, not a connection's).
#[test]
fn a_bad_hosts_file_is_named_before_anything_is_sent() {
    let dir = std::env::temp_dir().join(format!("unbrick-hostsfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(
        &bad,
        "# from diagnose\n52:54:00:aa:00:01\n52:54:00:aa:00:0g\n",
    )
    .unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    let create = |f: &std::path::Path| {
        unbrick_out(&format!(
            "campaign create --name x --waves 100% --hosts-file {} --server http://127.0.0.1:9 --token t",
            f.display()
        ))
    };
    let (code, out) = create(&bad);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{}: line 3: \"52:54:00:aa:00:0g\" is not a MAC address",
            bad.display()
        )),
        "{out}"
    );
    let (code, out) = create(&empty);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("empty.txt: no MAC address in it"), "{out}");
    let (code, out) = create(&dir.join("missing.txt"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("missing.txt: No such file"), "{out}");
    // --hosts-file is a list of MACs, not a selector beside --site or --tag.
    let (code, out) = unbrick_out(&format!(
        "campaign create --name x --waves 100% --tag t --hosts-file {}",
        bad.display()
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `unbrick image kernel` (what `image build` with no kernel named does first): with nothing
/// installed or cached it fetches the newest signed 6.12+ kernel from bookworm-backports (the
/// Debian archive is the peer), checks and caches it; the second run takes the cache. A
/// corrupt package in the cache is named with what to do, and nothing else is touched.
#[test]
fn image_kernel_is_fetched_checked_and_cached() {
    let dir = std::env::temp_dir().join(format!("unbrick-kernel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    must(&format!("{} init --data-dir {}", unbrick(), data.display()));
    let (code, out) = unbrick_out(&format!("image kernel --data-dir {}", data.display()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("downloading linux-image-6."), "{out}");
    assert!(out.contains("signed by Debian, has ntfs3"), "{out}");
    let cached: Vec<String> = std::fs::read_dir(data.join("kernel-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        cached.len() == 1
            && cached[0].starts_with("linux-image-6.")
            && cached[0].ends_with("_amd64.deb"),
        "{cached:?}"
    );
    let o = sh(&format!(
        "{} image kernel --json --data-dir {}",
        unbrick(),
        data.display()
    ));
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        v["source"]
            .as_str()
            .unwrap()
            .contains("kernel-cache/linux-image-6."),
        "the second run takes the cache: {v}"
    );
    assert!(v["release"].as_str().unwrap().starts_with("6."), "{v}");
    // A newer-looking package that is not one: named, with the fix; the good one stays.
    let bad = data
        .join("kernel-cache")
        .join("linux-image-6.99.0+deb12-amd64_6.99.0-1_amd64.deb");
    std::fs::write(&bad, b"garbage").unwrap();
    let (code, out) = unbrick_out(&format!("image kernel --data-dir {}", data.display()));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is not a usable kernel package: remove it and run again")
            && out.contains("6.99.0"),
        "{out}"
    );
    assert!(data.join("kernel-cache").join(&cached[0]).exists());
    std::fs::remove_file(&bad).unwrap();
    let (code, out) = unbrick_out(&format!("image kernel --data-dir {}", data.display()));
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
