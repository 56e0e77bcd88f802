//! The recovery image directory: loaded into memory, verified against its signed manifest, and
//! served only from that verified copy. Also the signed remediation rules.
use crate::Error;
use signing::image_dir::read_files;
use signing::manifest::{MANIFEST_FILE, SIGNATURE_FILE};
use signing::{Manifest, PublicKey, RuleSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A verified image held in memory: a sealed memfd (see [`crate::sealed`]), verified after
/// sealing, so that the bytes served are the bytes verified and nothing can change them.
#[derive(Debug)]
pub struct Image {
    /// Where it was loaded from.
    pub dir: PathBuf,
    /// Its verified manifest.
    pub manifest: Manifest,
    files: BTreeMap<String, bytes::Bytes>,
}

impl Image {
    /// Loads and verifies `dir`. Every problem is reported, each naming its file.
    pub fn load(dir: &Path, trusted: &PublicKey) -> Result<Self, Vec<String>> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                vec![format!(
                    "{}: {e} (run `unbrick image sign {}`)",
                    dir.join(name).display(),
                    dir.display()
                )]
            })
        };
        let mbytes = read(MANIFEST_FILE)?;
        let sbytes = read(SIGNATURE_FILE)?;
        let manifest = Manifest::verify_signed(trusted, &mbytes, &sbytes)
            .map_err(|e| vec![format!("{}: {e}", dir.join(MANIFEST_FILE).display())])?;
        let read = read_files(dir).map_err(|e| vec![e])?;
        let (sealed, ranges) =
            crate::sealed::Sealed::new("unbrick-image", read.iter().map(|(_, d)| d.as_slice()))
                .map_err(|e| {
                    vec![format!(
                        "{}: cannot seal the image in memory: {e}",
                        dir.display()
                    )]
                })?;
        let files: BTreeMap<String, bytes::Bytes> = read
            .into_iter()
            .zip(ranges)
            .map(|((n, _), r)| (n, sealed.bytes(r)))
            .collect();
        // Verified from the sealed mapping itself: what is served is what was checked.
        let problems: Vec<String> = manifest
            .check_all(files.iter().map(|(n, d)| (n.as_str(), &d[..])))
            .into_iter()
            .map(|e| format!("{}: {e}", dir.display()))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            files,
        })
    }

    /// An artefact's bytes (the verified copy).
    pub fn get(&self, name: &str) -> Option<bytes::Bytes> {
        self.files.get(name).cloned().or_else(|| {
            // Firmware and loaders are not consistent about case; names are unique regardless.
            self.files
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    }

    /// Every artefact's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Whether the image can boot the payload (kernel and initrd present).
    pub fn payload_ready(&self) -> bool {
        self.files.contains_key(netboot_proto::boot::KERNEL)
            && self.files.contains_key(netboot_proto::boot::INITRD)
    }

    /// Compares the files on disk with the verified copy in memory; returns the differences.
    /// The server keeps serving the verified copy either way.
    pub fn changed_on_disk(&self) -> Vec<String> {
        let on_disk = match read_files(&self.dir) {
            Ok(f) => f,
            Err(e) => return vec![e],
        };
        self.manifest
            .check_all(on_disk.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }
}

/// Signed remediation rules as served to agents: the exact signed bytes and the signature.
#[derive(Debug, Clone)]
pub struct SignedRules {
    /// The verified rules.
    pub rules: RuleSet,
    /// The document as signed (served to agents as is).
    pub document: Arc<[u8]>,
    /// Its signature file.
    pub signature: Arc<[u8]>,
    /// SHA-256 (hex) of the document, named in the hello reply.
    pub sha256: String,
}

/// The rules document's name in the rules folder.
pub const RULES_FILE: &str = "active.json";

impl SignedRules {
    /// Loads and verifies the rules in `dir` with `trusted`; expired rules are refused.
    pub fn load(dir: &Path, trusted: &PublicKey, now_unix: u64) -> Result<Self, Error> {
        let doc_path = dir.join(RULES_FILE);
        let sig_path = dir.join(format!("{RULES_FILE}.sig"));
        let document = std::fs::read(&doc_path)
            .map_err(|e| Error::Rules(format!("{}: {e}", doc_path.display())))?;
        let signature = std::fs::read(&sig_path).map_err(|e| {
            Error::Rules(format!(
                "{}: {e} (sign the rules with `unbrick rules sign {}`)",
                sig_path.display(),
                doc_path.display()
            ))
        })?;
        let rules = RuleSet::verify_signed(trusted, &document, &signature, now_unix)
            .map_err(|e| Error::Rules(format!("{}: {e}", doc_path.display())))?;
        Ok(Self {
            rules,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &document)),
            document: Arc::from(document),
            signature: Arc::from(signature),
        })
    }
}
