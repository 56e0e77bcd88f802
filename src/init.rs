//! `unbrick init`: a data directory with configuration, signing key, boot loaders, a signed
//! manifest, signed default rules and the store. Never overwrites anything that exists.
use crate::config::{ConfigFile, DataDir, DEFAULT_CONFIG};
use signing::{KeyPair, PublicKey, RuleSet};
use std::path::{Path, PathBuf};

/// (name in the image, Debian package, default path)
pub(crate) const BOOT_LOADERS: &[(&str, &str, &str)] = &[
    ("undionly.kpxe", "ipxe", "/usr/lib/ipxe/undionly.kpxe"),
    ("snponly.efi", "ipxe", "/usr/lib/ipxe/snponly.efi"),
    ("ipxe.efi", "ipxe", "/usr/lib/ipxe/ipxe.efi"),
    (
        "shimx64.efi",
        "shim-signed",
        "/usr/lib/shim/shimx64.efi.signed",
    ),
    (
        "grubx64.efi",
        "grub-efi-amd64-signed",
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    ),
];

/// Default rule lifetime when `init` signs the built-in rules.
const RULES_LIFETIME_DAYS: u64 = 90;

pub(crate) fn run(dir: &Path, signing_key: Option<&Path>) -> Result<(), String> {
    let d = DataDir(dir.to_path_buf());
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Keys, tokens, escrowed BitLocker keys and the store live here: the owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let say = |what: String| println!("  {what}");
    println!("unbrick init: {}", dir.display());

    if d.config().exists() {
        say(format!("kept     {}", d.config().display()));
    } else {
        std::fs::write(d.config(), DEFAULT_CONFIG)
            .map_err(|e| format!("{}: {e}", d.config().display()))?;
        say(format!("wrote    {}", d.config().display()));
    }
    let cfg = ConfigFile::load(&d.config())?;

    // Signing key: given, configured, already there, or made now.
    std::fs::create_dir_all(d.keys()).map_err(|e| format!("{}: {e}", d.keys().display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.keys(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", d.keys().display()))?;
    }
    let key_path: Option<PathBuf> = signing_key
        .map(Path::to_path_buf)
        .or(cfg.signing_key.clone());
    let key: Option<KeyPair> = match &key_path {
        Some(p) => Some(KeyPair::load(p).map_err(|e| e.to_string())?),
        None if d.private_key().exists() => {
            Some(KeyPair::load(&d.private_key()).map_err(|e| e.to_string())?)
        }
        None if d.public_key().exists() => None,
        None => {
            let k = KeyPair::generate().map_err(|e| e.to_string())?;
            k.write_to_dir(&d.keys()).map_err(|e| e.to_string())?;
            say(format!(
                "made     signing key {} ({})",
                d.private_key().display(),
                k.public_key().fingerprint()
            ));
            Some(k)
        }
    };
    if let Some(k) = &key {
        if !d.public_key().exists() {
            signing::keys::write_new(&d.public_key(), k.public_key().as_bytes(), 0o644)
                .map_err(|e| e.to_string())?;
            say(format!("wrote    {}", d.public_key().display()));
        }
    }
    let trusted = PublicKey::load(&d.public_key()).map_err(|e| e.to_string())?;
    if let Some(k) = &key {
        if k.public_key() != trusted {
            return Err(format!(
                "the signing key {} does not match {} ({}); move one of them away",
                key_path.as_deref().unwrap_or(&d.private_key()).display(),
                d.public_key().display(),
                trusted.fingerprint()
            ));
        }
    }
    say(format!("trusted  key {}", trusted.fingerprint()));

    // Boot loaders from Debian packages.
    std::fs::create_dir_all(d.image()).map_err(|e| format!("{}: {e}", d.image().display()))?;
    let configured = |name: &str| -> Option<PathBuf> {
        let b = &cfg.boot_loaders;
        match name {
            "undionly.kpxe" => b.undionly_kpxe.clone(),
            "snponly.efi" => b.snponly_efi.clone(),
            "ipxe.efi" => b.ipxe_efi.clone(),
            "shimx64.efi" => b.shimx64_efi.clone(),
            "grubx64.efi" => b.grubx64_efi.clone(),
            _ => None,
        }
    };
    let mut added = false;
    let mut missing = Vec::new();
    for (name, package, default) in BOOT_LOADERS {
        let dest = d.image().join(name);
        if dest.exists() {
            say(format!("kept     {}", dest.display()));
            continue;
        }
        let src = configured(name).unwrap_or_else(|| PathBuf::from(default));
        match std::fs::copy(&src, &dest) {
            Ok(_) => {
                added = true;
                say(format!("copied   {} -> {}", src.display(), dest.display()));
            }
            Err(_) => missing.push(format!(
                "{name} ({} not found: apt-get install {package})",
                src.display()
            )),
        }
    }
    let manifest_exists = d.image().join(signing::manifest::MANIFEST_FILE).exists();
    if added || !manifest_exists {
        match &key {
            Some(k) => {
                let m = signing::image_dir::sign_dir(&d.image(), netboot_server::proto::boot::KERNEL, k, &crate::image_version_now(), crate::now_unix())?;
                say(format!("signed   {} ({} artefacts)", d.image().join("manifest.json").display(), m.artefacts.len()));
            }
            None => say(format!("NOT SIGNED {}: the signing key is offline; sign the image there (unbrick image sign) and copy the manifest back", d.image().display())),
        }
    }

    // Default remediation rules, signed.
    std::fs::create_dir_all(d.rules()).map_err(|e| format!("{}: {e}", d.rules().display()))?;
    let rules = d.rules().join(netboot_server::image::RULES_FILE);
    if rules.exists() {
        say(format!("kept     {}", rules.display()));
    } else if let Some(k) = &key {
        let doc =
            RuleSet::default_crowdstrike(crate::now_unix() + RULES_LIFETIME_DAYS * 86400).to_json();
        let sig = RuleSet::sign_document(k, &doc).map_err(|e| e.to_string())?;
        std::fs::write(&rules, &doc).map_err(|e| format!("{}: {e}", rules.display()))?;
        std::fs::write(rules.with_extension("json.sig"), sig.to_text())
            .map_err(|e| format!("{}: {e}", rules.display()))?;
        say(format!("wrote    {} (default CrowdStrike C-00000291 rules, signed, expire in {RULES_LIFETIME_DAYS} days)", rules.display()));
    }

    // The HTTPS certificate (the agent pins its fingerprint, built into the image).
    let (fp, made) = d.ensure_tls()?;
    say(format!(
        "{} {} ({fp})",
        if made { "made    " } else { "kept    " },
        d.tls_cert().display()
    ));

    // The key that seals escrowed BitLocker recovery passwords.
    let had = d.escrow_key().exists();
    fleet::escrow::vault::Vault::open(&d.escrow_key(), true).map_err(|e| e.to_string())?;
    say(format!(
        "{} {} (seals escrowed BitLocker keys; back it up apart from the store)",
        if had { "kept    " } else { "made    " },
        d.escrow_key().display()
    ));

    // The store.
    let existed = d.store().exists();
    let store = fleet::SledStore::open(&d.store()).map_err(|e| e.to_string())?;
    store.flush().map_err(|e| e.to_string())?;
    say(format!(
        "{}  {}",
        if existed { "kept    " } else { "created " },
        d.store().display()
    ));

    for m in &missing {
        eprintln!("unbrick init: warning: boot loader {m}");
    }
    print!("{}", next_steps(dir, &d, &store));
    Ok(())
}

/// What to run after `init`, in order, leaving out what is already done.
fn next_steps(dir: &Path, d: &DataDir, store: &fleet::SledStore) -> String {
    let dd = dir.display();
    let mut steps = Vec::new();
    if !d.image().join(netboot_server::proto::boot::KERNEL).exists() {
        steps.push(format!(
            "unbrick image build --data-dir {dd}                      # the recovery kernel and agent, signed"
        ));
    }
    let tokens = web_console::tokens::TokenBook::new(&d.tokens())
        .list()
        .map(|t| t.len())
        .unwrap_or(0);
    if tokens == 0 {
        steps.push(format!(
            "unbrick tokens create --name admin --data-dir {dd}       # a token for the console and API"
        ));
    }
    if store.escrows().map(|e| e.is_empty()).unwrap_or(true) {
        steps.push(format!(
            "unbrick keys import-bitlocker KEYS.csv --data-dir {dd}   # escrowed recovery keys (AD, Entra ID, CSV)"
        ));
    }
    if store.hosts().map(|h| h.is_empty()).unwrap_or(true) {
        steps.push(format!(
            "unbrick hosts import HOSTS.csv --data-dir {dd}           # optional: names, sites, canary tags"
        ));
    }
    steps.push(format!(
        "unbrick serve --data-dir {dd} --interface IFACE --dhcp proxy   # beside the office DHCP server (or --dhcp full --pool A-B on a recovery VLAN)"
    ));
    steps.push("then open https://SERVER:8443/ and log in with the token".into());
    let mut out = String::from("next:\n");
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!("  {}. {s}\n", i + 1));
    }
    out
}

use fleet::Store as _;
