//! The offline commands: signing keys, the recovery image, the rules, admin tokens.
use crate::cli::{ImageCmd, KeysCmd, RulesCmd, TokensCmd};
use crate::config::DataDir;
use crate::{client, image_version_now, now_unix, Fail};
use std::path::{Path, PathBuf};

pub(crate) fn keys(k: KeysCmd) -> Result<(), Fail> {
    match k {
        KeysCmd::Generate { out } => {
            let kp = signing::KeyPair::generate()?;
            kp.write_to_dir(&out)?;
            println!(
                "wrote {} (private, mode 0600) and {}",
                out.join("signing.key").display(),
                out.join("signing.pub").display()
            );
            println!("fingerprint {}", kp.public_key().fingerprint());
        }
        k @ (KeysCmd::ImportBitlocker { .. }
        | KeysCmd::ListBitlocker { .. }
        | KeysCmd::RevealBitlocker { .. }) => return client::bitlocker_keys(k),
        KeysCmd::Show {
            data_dir,
            key,
            json,
        } => {
            let path = key.unwrap_or_else(|| DataDir(data_dir).public_key());
            let data =
                std::fs::read(&path).map_err(|e| Fail(format!("{}: {e}", path.display())))?;
            let pk = match signing::PublicKey::parse(&data) {
                Ok(pk) => pk,
                Err(_) => signing::KeyPair::from_pkcs8(&data)
                    .map_err(|e| {
                        Fail(format!(
                            "{}: neither a public nor a private key: {e}",
                            path.display()
                        ))
                    })?
                    .public_key(),
            };
            if json {
                let v = serde_json::json!({"path": path, "fingerprint": pk.fingerprint()});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", pk.fingerprint());
            }
        }
    }
    Ok(())
}

fn sibling_key(dir: &Path, name: &str) -> PathBuf {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    abs.parent()
        .unwrap_or(Path::new("."))
        .join("keys")
        .join(name)
}

fn default_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Only the static musl build: target/debug/unbrick-agent next to a development binary is a
    // dynamically linked host build that cannot run as /init.
    let candidates = [
        dir.join("../x86_64-unknown-linux-musl/agent/unbrick-agent"),
        dir.join("../../x86_64-unknown-linux-musl/agent/unbrick-agent"),
        PathBuf::from("/usr/lib/unbrick/unbrick-agent"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[candidates.len() - 1].clone())
}

/// The kernel a build reads; its scratch copy goes when the build ends, failed or not.
struct Kernel {
    root: PathBuf,
    scratch: Option<PathBuf>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(t) = &self.scratch {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

pub(crate) fn image_build(
    data_dir: &Path,
    kernel_deb: Option<PathBuf>,
    kernel_dir: Option<PathBuf>,
    agent: Option<PathBuf>,
    version: Option<String>,
    bitlocker: bool,
) -> Result<(), Fail> {
    let d = DataDir(data_dir.to_path_buf());
    let trusted = signing::PublicKey::load(&d.public_key()).map_err(|e| {
        Fail(format!(
            "{e} (run `unbrick init --data-dir {}` first)",
            data_dir.display()
        ))
    })?;
    let mut bars = crate::progress::Bars::default();
    // The unpacked kernel (a scratch directory removed after the build).
    let kernel = match (kernel_deb, kernel_dir) {
        (Some(deb), _) => {
            let tmp = std::env::temp_dir().join(format!("unbrick-kernel-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            bars.stage(&format!("unpacking {}", deb.display()));
            payload_builder::build::unpack_deb(&deb, &tmp)?;
            Kernel {
                root: tmp.clone(),
                scratch: Some(tmp),
            }
        }
        (None, Some(dir)) => Kernel {
            root: dir,
            scratch: None,
        },
        (None, None) => {
            bars.stage("kernel: looking for the newest Debian-signed 6.12 or later (installed, cached, or from bookworm-backports)");
            let f = crate::kernel::find(data_dir, &mut |m| bars.note(m))?;
            println!(
                "kernel {} ({}): signed by Debian, has ntfs3",
                f.release, f.source
            );
            Kernel {
                root: f.root,
                scratch: f.scratch,
            }
        }
    };
    let root = kernel.root.clone();
    let agent = agent.unwrap_or_else(default_agent);
    let version = version.unwrap_or_else(image_version_now);
    let (fingerprint, _) = d.ensure_tls().map_err(Fail)?;
    println!("the agent will pin the server certificate {fingerprint}");
    // The agent refuses rules older than the active set: a substituted older signed file,
    // still unexpired, cannot undo a corrected rule.
    let min_rules_version =
        match netboot_server::image::SignedRules::load(&d.rules(), &trusted, now_unix()) {
            Ok(r) => {
                println!(
                    "the agent will refuse rules older than {} v{}",
                    r.rules.id, r.rules.version
                );
                r.rules.version
            }
            Err(e) => {
                println!("no valid active rules ({e}): the agent takes any signed rules version");
                0
            }
        };
    let built = payload_builder::build::build(
        &payload_builder::build::BuildInput {
            kernel_root: &root,
            agent: &agent,
            public_key: &trusted,
            image_version: &version,
            server_cert_sha256: Some(fingerprint),
            min_rules_version,
            bitlocker,
            cryptsetup: None,
        },
        &mut |p| bars.build_report(p),
    )?;
    let img = d.image();
    for (name, data) in [("vmlinuz", &built.vmlinuz), ("initrd.img", &built.initrd)] {
        signing::image_dir::write_replacing(&img, name, data).map_err(Fail)?;
    }
    drop(kernel);
    match signing::KeyPair::load(&d.private_key()) {
        Ok(k) => {
            bars.stage("signing the image (SHA-256 of every artefact, Ed25519)");
            let m = signing::image_dir::sign_dir(&img, netboot_server::proto::boot::KERNEL, &k, &version, now_unix())?;
            bars.finish();
            println!("signed {} (version {}, kernel {}, {} artefacts); restart `unbrick serve` to serve it", img.display(), m.image_version, m.kernel_version, m.artefacts.len());
        }
        Err(_) => println!("NOT SIGNED: no private key in {}; sign {} on the offline machine (unbrick image sign) and copy the manifest back", d.keys().display(), img.display()),
    }
    println!(
        "image size: initrd {} bytes compressed ({} uncompressed), kernel {} bytes",
        built.initrd.len(),
        built.uncompressed,
        built.vmlinuz.len()
    );
    Ok(())
}

pub(crate) fn image(i: ImageCmd) -> Result<(), Fail> {
    match i {
        ImageCmd::Build {
            data_dir,
            kernel_deb,
            kernel_dir,
            agent,
            image_version,
            no_bitlocker,
        } => image_build(
            &data_dir,
            kernel_deb,
            kernel_dir,
            agent,
            image_version,
            !no_bitlocker,
        )?,
        ImageCmd::Kernel { data_dir, json } => {
            let mut bars = crate::progress::Bars::default();
            if !json {
                bars.stage("kernel: looking for the newest Debian-signed 6.12 or later (installed, cached, or from bookworm-backports)");
            }
            let f = crate::kernel::find(&data_dir, &mut |m| {
                if !json {
                    bars.note(m)
                }
            });
            bars.finish();
            let f = f?;
            let _scratch = Kernel {
                root: f.root.clone(),
                scratch: f.scratch.clone(),
            };
            if json {
                let v = serde_json::json!({
                    "release": f.release,
                    "source": f.source,
                    "signed_by_debian": true,
                    "ntfs3": true,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "kernel {} ({}): signed by Debian, has ntfs3; `unbrick image build --data-dir {}` will use it",
                    f.release,
                    f.source,
                    data_dir.display()
                );
            }
        }
        ImageCmd::Sign {
            dir,
            key,
            image_version,
        } => {
            let key = key.unwrap_or_else(|| sibling_key(&dir, "signing.key"));
            let kp = signing::KeyPair::load(&key)?;
            let m = signing::image_dir::sign_dir(
                &dir,
                netboot_server::proto::boot::KERNEL,
                &kp,
                &image_version.unwrap_or_else(image_version_now),
                now_unix(),
            )?;
            println!(
                "signed {} artefacts in {} as version {} (kernel {}) with {}",
                m.artefacts.len(),
                dir.display(),
                m.image_version,
                m.kernel_version,
                m.key_fingerprint
            );
            for a in &m.artefacts {
                println!("  {:<16} {:>10}  {}", a.name, a.size, a.sha256);
            }
        }
        ImageCmd::Verify { dir, pubkey, json } => {
            let pubkey = pubkey.unwrap_or_else(|| sibling_key(&dir, "signing.pub"));
            let pk = signing::PublicKey::load(&pubkey)?;
            let r = netboot_server::image::Image::load(&dir, &pk);
            if json {
                let v = match &r {
                    Ok(img) => serde_json::json!({
                        "ok": true, "dir": dir, "image_version": img.manifest.image_version,
                        "artefacts": img.manifest.artefacts.len(), "signed_by": pk.fingerprint(),
                    }),
                    Err(problems) => serde_json::json!({
                        "ok": false, "dir": dir, "problems": problems, "trusted_key": pk.fingerprint(),
                    }),
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            match r {
                Ok(_) if json => {}
                Ok(img) => println!(
                    "OK: {} version {} ({} artefacts) signed by {}",
                    dir.display(),
                    img.manifest.image_version,
                    img.manifest.artefacts.len(),
                    pk.fingerprint()
                ),
                Err(problems) => {
                    return Err(Fail::found(format!(
                        "{} fails verification:\n  {}",
                        dir.display(),
                        problems.join("\n  ")
                    )))
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn rules(r: RulesCmd) -> Result<(), Fail> {
    match r {
        RulesCmd::Sign { file, key } => {
            let kp = signing::KeyPair::load(&key)?;
            let doc = std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig = signing::RuleSet::sign_document(&kp, &doc)
                .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&sig_path, sig.to_text())
                .map_err(|e| Fail(format!("{}: {e}", sig_path.display())))?;
            let rs = signing::RuleSet::parse(&doc)?;
            println!(
                "signed {} ({} v{}, {} rules, expires {}) -> {}",
                file.display(),
                rs.id,
                rs.version,
                rs.rules.len(),
                rs.expires,
                sig_path.display()
            );
        }
        RulesCmd::Verify { file, pubkey, json } => {
            let pk = signing::PublicKey::load(&pubkey)?;
            let doc = std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            let sig = std::fs::read(&sig_path)
                .map_err(|e| Fail(format!("{}: {e}", sig_path.display())))?;
            let rs = match signing::RuleSet::verify_signed(&pk, &doc, &sig, now_unix()) {
                Ok(rs) => rs,
                Err(e) => {
                    if json {
                        let v = serde_json::json!({"ok": false, "file": file, "problem": e.to_string()});
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    }
                    return Err(Fail::found(format!("{}: {e}", file.display())));
                }
            };
            if json {
                let v = serde_json::json!({
                    "ok": true, "file": file, "id": rs.id, "version": rs.version,
                    "signed_by": pk.fingerprint(), "expires": rs.expires,
                    "rules": rs.rules.iter().map(|r| serde_json::json!({
                        "id": r.id, "action": format!("{:?}", r.action), "path": r.path,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "OK: {} v{} signed by {}, expires {}",
                rs.id,
                rs.version,
                pk.fingerprint(),
                rs.expires
            );
            for r in &rs.rules {
                println!("  {:<20} {:?} {}", r.id, r.action, r.path);
            }
        }
        RulesCmd::Default { days } => {
            let rs = signing::RuleSet::default_crowdstrike(now_unix() + days * 86400);
            print!("{}", String::from_utf8_lossy(&rs.to_json()));
        }
    }
    Ok(())
}

pub(crate) fn tokens(t: TokensCmd) -> Result<(), Fail> {
    match t {
        TokensCmd::Create {
            name,
            read_only,
            data_dir,
        } => {
            let d = DataDir(data_dir);
            if !d.0.exists() {
                return Err(Fail(format!(
                    "{} does not exist; run `unbrick init --data-dir {}` first",
                    d.0.display(),
                    d.0.display()
                )));
            }
            let book = web_console::tokens::TokenBook::new(&d.tokens());
            let secret = book.create(&name, read_only, now_unix())?;
            eprintln!(
                "token {name:?} ({}) created; it is shown only this once:",
                if read_only {
                    "read-only"
                } else {
                    "full access"
                }
            );
            println!("{secret}");
        }
        TokensCmd::List { data_dir, json } => {
            let book = web_console::tokens::TokenBook::new(&DataDir(data_dir).tokens());
            let all = book.list()?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "read_only": t.read_only,
                            "created": signing::time::format_utc(t.created_unix),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{:<24}  {:<11}  CREATED", "NAME", "SCOPE");
            for t in &all {
                println!(
                    "{:<24}  {:<11}  {}",
                    t.name,
                    if t.read_only { "read-only" } else { "full" },
                    signing::time::format_utc(t.created_unix)
                );
            }
            println!("{} tokens", all.len());
        }
        TokensCmd::Revoke { name, data_dir } => {
            let book = web_console::tokens::TokenBook::new(&DataDir(data_dir).tokens());
            if !book.revoke(&name)? {
                return Err(Fail(format!(
                    "no token named {name:?} (see: unbrick tokens list)"
                )));
            }
            println!("revoked {name:?}");
        }
    }
    Ok(())
}
