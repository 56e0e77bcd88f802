//! Format stability and tamper resistance of signed documents.
use proptest::prelude::*;
use signing::{sig::verify_detached, KeyPair, Manifest, Purpose, RuleSet, SignatureFile};
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The committed key, rules document and signature must keep verifying, and signing the same
/// document with the same key must give the same bytes (Ed25519 is deterministic). If this test
/// fails, the signature format drifted: every signed file in the field would stop verifying.
/// Regenerate only for a deliberate format change: `UNBRICK_REGENERATE_GOLDEN=1 cargo test`.
#[test]
fn golden_vector() {
    if std::env::var_os("UNBRICK_REGENERATE_GOLDEN").is_some() {
        let kp = KeyPair::generate().unwrap();
        std::fs::write(golden("key.pk8"), kp.pkcs8()).unwrap();
        let doc = RuleSet::default_crowdstrike(4_102_444_800).to_json();
        std::fs::write(golden("rules.json"), &doc).unwrap();
        let sig = RuleSet::sign_document(&kp, &doc).unwrap().to_text();
        std::fs::write(golden("rules.json.sig"), sig).unwrap();
        let m = Manifest::new(
            "golden",
            1_721_366_820,
            "6.12",
            &kp.public_key(),
            &[("vmlinuz", b"k")],
        )
        .unwrap();
        std::fs::write(golden("manifest.json"), m.to_canonical()).unwrap();
        std::fs::write(golden("manifest.json.sig"), m.sign(&kp).to_text()).unwrap();
    }
    let kp = KeyPair::from_pkcs8(&std::fs::read(golden("key.pk8")).unwrap()).unwrap();
    let doc = std::fs::read(golden("rules.json")).unwrap();
    let sig = std::fs::read(golden("rules.json.sig")).unwrap();
    let rules = RuleSet::verify_signed(&kp.public_key(), &doc, &sig, 1_800_000_000).unwrap();
    assert_eq!(rules, RuleSet::default_crowdstrike(4_102_444_800));
    assert_eq!(rules.to_json(), doc, "rules serialization drifted");
    assert_eq!(
        RuleSet::sign_document(&kp, &doc)
            .unwrap()
            .to_text()
            .as_bytes(),
        &sig[..]
    );

    let mdoc = std::fs::read(golden("manifest.json")).unwrap();
    let msig = std::fs::read(golden("manifest.json.sig")).unwrap();
    let m = Manifest::verify_signed(&kp.public_key(), &mdoc, &msig).unwrap();
    let again = Manifest::new(
        "golden",
        1_721_366_820,
        "6.12",
        &kp.public_key(),
        &[("vmlinuz", b"k")],
    )
    .unwrap();
    assert_eq!(
        again.to_canonical(),
        mdoc,
        "manifest canonical form drifted"
    );
    assert_eq!(m, again);
}

fn fixture() -> (KeyPair, Vec<u8>, Vec<u8>) {
    let kp = KeyPair::from_pkcs8(&std::fs::read(golden("key.pk8")).unwrap()).unwrap();
    let doc = std::fs::read(golden("rules.json")).unwrap();
    let sig = std::fs::read(golden("rules.json.sig")).unwrap();
    (kp, doc, sig)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Flipping any single bit of a signed rules document makes verification fail.
    #[test]
    fn any_flipped_byte_in_document_fails(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (kp, mut doc, sig) = fixture();
        let i = pos.index(doc.len());
        doc[i] ^= 1 << bit;
        prop_assert!(verify_detached(&kp.public_key(), Purpose::Rules, &doc, &sig).is_err());
    }

    /// Flipping any single bit of the signature file makes verification fail.
    #[test]
    fn any_flipped_byte_in_signature_fails(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (kp, doc, mut sig) = fixture();
        let i = pos.index(sig.len());
        sig[i] ^= 1 << bit;
        // A flip inside trailing white space that still parses to the same signature is the
        // only way to keep a valid file; the parser rejects trailing garbage, so none exists.
        prop_assert!(verify_detached(&kp.public_key(), Purpose::Rules, &doc, &sig).is_err());
    }

    /// Arbitrary bytes never panic the parsers.
    #[test]
    fn parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = SignatureFile::parse(&data);
        let _ = Manifest::parse(&data);
        let _ = RuleSet::parse(&data);
    }
}
