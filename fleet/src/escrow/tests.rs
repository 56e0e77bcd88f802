use super::*;
use crate::HostRecord;
use proptest::prelude::*;

const RP: &str = "235818-357951-253979-013365-241120-245575-342914-591910";
const ID: &str = "64311dea-4587-4029-924a-ba299647998e";
const ID2: &str = "83abdb8f-3218-4bfd-aced-215e1e189bdf";

#[test]
fn recovery_passwords() {
    let p = RecoveryPassword::parse(RP).unwrap();
    assert_eq!(p.expose(), RP);
    // Spaces, no separators, surrounding blanks: the same password.
    assert_eq!(RecoveryPassword::parse(&RP.replace('-', " ")).unwrap(), p);
    assert_eq!(RecoveryPassword::parse(&RP.replace('-', "")).unwrap(), p);
    assert_eq!(RecoveryPassword::parse(&format!("  {RP}\n")).unwrap(), p);
    // Every image of the test data is valid.
    for rp in [
        "042647-302313-590458-071500-554323-116567-412181-516978",
        "404558-436711-420860-678557-638220-018909-039941-695321",
        "529573-278784-259347-197835-171457-264044-610280-313269",
    ] {
        RecoveryPassword::parse(rp).unwrap();
    }
    let bad = [
        ("235818-357951", "48 digits"),
        (
            &RP.replace("357951", "357952"),
            "group 2 is not a multiple of 11",
        ),
        (&RP.replace("591910", "99999x"), "only digits"),
        (&format!("{RP}-000000"), "48 digits"),
        // 720907 = 11 * 65537: a multiple of 11 but not a 16-bit value.
        (&RP.replace("591910", "720907"), "out of range"),
    ];
    for (s, want) in bad {
        let e = RecoveryPassword::parse(s).unwrap_err();
        assert!(e.to_string().contains(want), "{s}: {e}");
        assert!(
            !e.to_string().contains("235818"),
            "an error never shows the digits: {e}"
        );
    }
    assert_eq!(format!("{p:?}"), "RecoveryPassword(<hidden>)");
}

proptest! {
    #[test]
    fn every_well_formed_password_is_accepted_and_a_changed_digit_is_caught(
        groups in proptest::collection::vec(0u32..65536, 8),
        at in 0usize..48,
        delta in 1u32..10,
    ) {
        let s: Vec<String> = groups.iter().map(|g| format!("{:06}", g * 11)).collect();
        let s = s.join("-");
        let p = RecoveryPassword::parse(&s).unwrap();
        prop_assert_eq!(p.expose(), s.as_str());
        // Change one digit: the group stays a multiple of 11 only if the change was a
        // multiple of 11 in value, which a single-digit change (1..9 times a power of ten) is
        // not.
        let mut digits: Vec<u8> = s.replace('-', "").into_bytes();
        digits[at] = b'0' + ((digits[at] - b'0') as u32 + delta) as u8 % 10;
        let changed = String::from_utf8(digits).unwrap();
        prop_assert!(RecoveryPassword::parse(&changed).is_err());
    }

    #[test]
    fn garbage_never_panics(s in "\\PC{0,80}") {
        let _ = RecoveryPassword::parse(&s);
        let _ = protector_id(&s);
        let _ = parse_export(s.as_bytes());
    }
}

#[test]
fn protector_ids() {
    assert_eq!(
        protector_id("{64311DEA-4587-4029-924A-BA299647998E}").unwrap(),
        ID
    );
    assert_eq!(protector_id(&format!(" {ID} ")).unwrap(), ID);
    for b in [
        "",
        "64311dea",
        "64311dea-4587-4029-924a-ba299647998g",
        "ééééé",
    ] {
        assert!(protector_id(b).is_err(), "{b}");
    }
    assert!(same_host("PC042", "pc042.corp.example"));
    assert!(!same_host("PC042", "PC0420"));
    assert!(!same_host("", ""));
}

#[test]
fn active_directory_export() {
    // As `Get-ADObject -Filter 'objectClass -eq "msFVE-RecoveryInformation"' -Properties
    // msFVE-RecoveryPassword,msFVE-RecoveryGuid | Export-Csv` writes it, with a BOM, quotes and
    // CRLF; the computer is the parent object in the DN.
    let csv = format!(
        "\u{feff}\"DistinguishedName\",\"msFVE-RecoveryGuid\",\"msFVE-RecoveryPassword\",\"Name\"\r\n\
         \"CN=2024-07-19T08:15:00-00:00{{64311DEA-4587-4029-924A-BA299647998E}},CN=PC042,OU=Laptops,DC=corp,DC=example\",\"64311DEA-4587-4029-924A-BA299647998E\",\"{RP}\",\"2024-07-19T08:15:00-00:00{{64311DEA-4587-4029-924A-BA299647998E}}\"\r\n\
         \"CN=2024-07-19T08:16:00-00:00{{83ABDB8F-3218-4BFD-ACED-215E1E189BDF}},CN=PC043,OU=Laptops,DC=corp,DC=example\",\"\",\"404558-436711-420860-678557-638220-018909-039941-695321\",\"x\"\r\n\
         \"CN=bad,CN=PC044,DC=corp\",\"not-a-guid\",\"{RP}\",\"y\"\r\n\
         \"CN=x{{B9859A34-8139-4D5E-A628-412BEF9BA206}},CN=PC045,DC=corp\",\"B9859A34-8139-4D5E-A628-412BEF9BA206\",\"616319-601744-502117-534017-367994-176748-607299-663202\",\"z\"\r\n"
    );
    let p = parse_export(csv.as_bytes()).unwrap();
    assert_eq!(p.source, Source::ActiveDirectory);
    assert_eq!(p.rows.len(), 2, "{:?}", p.errors);
    assert_eq!(p.rows[0].protector_id, ID);
    assert_eq!(p.rows[0].hostname.as_deref(), Some("PC042"));
    assert_eq!(p.rows[0].password.expose(), RP);
    // The GUID taken from the DN when the column is empty.
    assert_eq!(p.rows[1].protector_id, ID2);
    assert_eq!(p.rows[1].hostname.as_deref(), Some("PC043"));
    assert_eq!(p.errors.len(), 2, "{:?}", p.errors);
    assert_eq!(p.errors[0].0, 4, "{:?}", p.errors);
    assert!(p.errors[0].1.contains("not a key protector ID"));
    assert_eq!(p.errors[1].0, 5);
    assert!(p.errors[1].1.contains("multiple of 11"));
    assert!(p.errors.iter().all(|(_, e)| !e.contains("616319")));
}

#[test]
fn ad_export_with_computer_name_column() {
    let csv =
        format!("ComputerName,msFVE-RecoveryGuid,msFVE-RecoveryPassword\nPC042,{{{ID}}},{RP}\n");
    let p = parse_export(csv.as_bytes()).unwrap();
    assert_eq!(p.source, Source::ActiveDirectory);
    assert_eq!(p.rows[0].hostname.as_deref(), Some("PC042"));
    assert_eq!(p.rows[0].protector_id, ID);
}

#[test]
fn entra_export() {
    let csv = format!(
        "Device name,Key ID,Recovery key,Volume type,Created\n\
         LAPTOP-7,{ID},{RP},Operating system drive,2024-07-19\n\
         LAPTOP-8,{ID2},12345,Operating system drive,2024-07-19\n"
    );
    let p = parse_export(csv.as_bytes()).unwrap();
    assert_eq!(p.source, Source::Entra);
    assert_eq!(p.rows.len(), 1);
    assert_eq!(p.rows[0].hostname.as_deref(), Some("LAPTOP-7"));
    assert_eq!(p.errors, vec![(3, format!("a recovery password has 48 digits (8 groups of 6), this one has 5 (protector {ID2})"))]);
    // Semicolons (a European spreadsheet).
    let p = parse_export(csv.replace(',', ";").as_bytes()).unwrap();
    assert_eq!(p.rows.len(), 1);
}

#[test]
fn plain_with_and_without_header() {
    let with = format!("protector_id,recovery_password,hostname\n{ID},{RP},PC1\n{ID2},{RP}\n\n");
    let p = parse_export(with.as_bytes()).unwrap();
    assert_eq!(p.source, Source::Plain);
    assert_eq!(p.rows.len(), 2);
    assert_eq!(p.rows[1].hostname, None);
    let without = format!("{ID},{RP},PC1\nnonsense\n{ID2},{RP}\n{ID},{RP},PC9\n");
    let p = parse_export(without.as_bytes()).unwrap();
    assert_eq!(p.source, Source::Plain);
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.errors[0].0, 2);
    // The same ID twice: the later row wins.
    assert_eq!(p.rows.len(), 2);
    let r = p.rows.iter().find(|r| r.protector_id == ID).unwrap();
    assert_eq!((r.line, r.hostname.as_deref()), (4, Some("PC9")));
    // Files that are not exports at all.
    assert!(parse_export(b"").unwrap_err().to_string().contains("empty"));
    assert!(parse_export(b"\xff\xfe")
        .unwrap_err()
        .to_string()
        .contains("UTF-8"));
    assert!(parse_export(b"name,site\nPC1,HQ\n")
        .unwrap_err()
        .to_string()
        .contains("no recovery password column"));
    assert!(parse_export(b"recovery_password\n1\n")
        .unwrap_err()
        .to_string()
        .contains("protector ID column"));
}

fn rec(id: &str, host: Option<&str>) -> EscrowRecord {
    EscrowRecord {
        protector_id: id.into(),
        hostname: host.map(str::to_string),
        source: Source::Plain,
        imported_ms: 1,
        sealed: String::new(),
        releases: vec![],
        manual_grant: None,
        reveals: 0,
    }
}

#[test]
fn release_policy() {
    let mut h = HostRecord::new("52:54:00:00:00:01".parse().unwrap(), 0);
    h.hostname = Some("PC042".into());
    let ids = vec![ID.to_string()];
    let ok = ReleaseDecision::Release {
        protector_id: ID.into(),
        manual: false,
    };
    // Not in a campaign.
    assert!(
        matches!(decide(&ids, &[Some(rec(ID, None))], &h, None, false), ReleaseDecision::Refuse { reason, .. } if reason.contains("not in an active campaign"))
    );
    // Escrowed without a host name: only on an admin's approval.
    assert!(
        matches!(decide(&ids, &[Some(rec(ID, None))], &h, Some("c1"), false), ReleaseDecision::Approval { reason, .. } if reason.contains("not bound to this host's imported host name"))
    );
    // A host without an imported name: the same.
    let mut anon = h.clone();
    anon.hostname = None;
    assert!(matches!(
        decide(
            &ids,
            &[Some(rec(ID, Some("PC042")))],
            &anon,
            Some("c1"),
            false
        ),
        ReleaseDecision::Approval { .. }
    ));
    // For this host (FQDN, other case): released.
    assert_eq!(
        decide(
            &ids,
            &[Some(rec(ID, Some("pc042.corp")))],
            &h,
            Some("c1"),
            false
        ),
        ok
    );
    // Escrowed for another machine: refused.
    assert!(
        matches!(decide(&ids, &[Some(rec(ID, Some("PC043")))], &h, Some("c1"), false), ReleaseDecision::Refuse { reason, .. } if reason.contains("escrowed for another host") && !reason.contains("PC04"))
    );
    // The campaign asks for approval, or the claim is disputed: approval first, then released.
    let named = |id| Some(rec(id, Some("PC042")));
    assert!(matches!(
        decide(&ids, &[named(ID)], &h, Some("c1"), true),
        ReleaseDecision::Approval { reason, .. } if reason.contains("only on an admin's approval")
    ));
    let mut disputed = h.clone();
    disputed.claim_conflict = Some("two machines claimed MAC x".into());
    assert!(matches!(
        decide(&ids, &[named(ID)], &disputed, Some("c1"), false),
        ReleaseDecision::Approval { reason, .. } if reason.contains("two machines claimed")
    ));
    let mut ok_h = h.clone();
    ok_h.key_release_approved = Some("c1".into());
    assert_eq!(decide(&ids, &[named(ID)], &ok_h, Some("c1"), true), ok);
    assert!(
        matches!(
            decide(&ids, &[named(ID)], &ok_h, Some("c2"), true),
            ReleaseDecision::Approval { .. }
        ),
        "an approval holds for its campaign scope only"
    );
    // Not escrowed: wait for a paste.
    assert!(
        matches!(decide(&ids, &[None], &h, Some("c1"), false), ReleaseDecision::Wait { missing, .. } if missing == ids)
    );
    // No recovery-password protector at all.
    assert!(matches!(
        decide(&[], &[], &h, Some("c1"), false),
        ReleaseDecision::Refuse { .. }
    ));
    // Inventory: a host whose known protectors do not include this one.
    let mut inv = h.clone();
    inv.protector_ids = vec![ID2.into()];
    assert!(
        matches!(decide(&ids, &[Some(rec(ID, None))], &inv, Some("c1"), false), ReleaseDecision::Refuse { reason, .. } if reason.contains("inventory") && !reason.contains(ID2))
    );
    inv.protector_ids.push(ID.into());
    assert_eq!(
        decide(
            &ids,
            &[Some(rec(ID, Some("PC042")))],
            &inv,
            Some("c1"),
            false
        ),
        ok
    );
    // Once per host per campaign.
    let mut r = rec(ID, Some("PC042"));
    r.releases.push(Release {
        mac: h.mac,
        scope: "c1".into(),
        time_ms: 5,
        manual: false,
    });
    assert!(
        matches!(decide(&ids, &[Some(r.clone())], &h, Some("c1"), false), ReleaseDecision::Refuse { reason, already_released: true } if reason.contains("already released"))
    );
    assert_eq!(
        decide(&ids, &[Some(r.clone())], &h, Some("c2"), false),
        ok,
        "a new campaign"
    );
    assert_eq!(
        decide(&ids, &[Some(r.clone())], &h, Some("c1:rollback"), false),
        ok,
        "the rollback phase"
    );
    let mut other = HostRecord::new("52:54:00:00:00:02".parse().unwrap(), 0);
    other.hostname = Some("PC042".into());
    assert_eq!(
        decide(&ids, &[Some(r.clone())], &other, Some("c1"), false),
        ok
    );
    // An admin's paste for this host allows one more.
    r.manual_grant = Some(h.mac);
    assert_eq!(
        decide(&ids, &[Some(r.clone())], &h, Some("c1"), false),
        ReleaseDecision::Release {
            protector_id: ID.into(),
            manual: true
        }
    );
    // Two protectors: the escrowed one is used, the other ignored.
    let two = vec![ID2.to_string(), ID.to_string()];
    assert_eq!(
        decide(
            &two,
            &[None, Some(rec(ID, Some("PC042")))],
            &h,
            Some("c1"),
            false
        ),
        ok
    );
}
