//! Trust at the boot edge, tried as an attacker on the same LAN would: a machine with its own
//! MAC and address asks for the victim's boot configuration and speaks the agent API with the
//! victim's token; a second machine spoofs the victim's MAC at layer 2 as well. Also: the
//! console and the admin API over plain HTTP from another machine.
use crate::campaign::{api_json, cli, token};
use crate::lab::*;

const VICTIM: &str = "52:54:00:1d:00:01";
const ATTACKER: &str = "52:54:00:1d:00:66";
const PROTECTOR: &str = "{4A6B3C1D-2E5F-4071-8293-A4B5C6D7E8F9}";
const PASSWORD: &str = "111111-222222-333333-444444-555555-666666-123453-000011";

/// `curl` in namespace `ns`: the body and, after a space, the status.
fn curl(lab: &Lab, ns: &str, args: &str) -> (String, u16) {
    let o = lab.exec_in(ns, &format!("curl -sSk -m 30 -w ' %{{http_code}}' {args}"));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once(' ').unwrap_or((&out, "0"));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        // No answer at all: what curl says, for the assertion's message.
        return (format!("curl: {}", String::from_utf8_lossy(&o.stderr)), 0);
    }
    (body.to_string(), code)
}

fn agent(lab: &Lab, ns: &str, path: &str, body: &str) -> (String, u16) {
    curl(
        lab,
        ns,
        &format!(
            "-H 'content-type: application/json' -d '{body}' https://{SERVER_IP}:8443/agent/v1/{path}"
        ),
    )
}

fn script_token(script: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("unbrick.token="))
        .map(str::to_string)
}

#[test]
fn an_impostor_gets_no_token_no_key_and_no_say() {
    let mut lab = Lab::new("im");
    lab.init();
    // init keeps the data directory and its keys to their owner.
    for d in [lab.data(), lab.data().join("keys")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    lab.stand_in_image(1024);
    lab.serve("--dhcp proxy");
    let tok = token(&lab);
    // The victim is imported with its host name; its BitLocker key is escrowed for that name;
    // a campaign covering it runs (its gate tolerates failures: a disputed host needs attention,
    // which would otherwise halt it).
    let inv = lab.dir.join("hosts.csv");
    // A second member that never boots keeps the wave open.
    std::fs::write(
        &inv,
        format!("mac,hostname\n{VICTIM},PC-V1\n52:54:00:1d:00:02,PC-V2\n"),
    )
    .unwrap();
    cli(&lab, &tok, &format!("hosts import {}", inv.display()));
    let keys = lab.dir.join("keys.csv");
    std::fs::write(
        &keys,
        format!("protector_id,recovery_password,hostname\n{PROTECTOR},{PASSWORD},PC-V1\n"),
    )
    .unwrap();
    cli(
        &lab,
        &tok,
        &format!("keys import-bitlocker {}", keys.display()),
    );
    let id = cli(
        &lab,
        &tok,
        &format!("campaign create --name trust --hosts {VICTIM},52:54:00:1d:00:02 --waves 100% --concurrency 5 --min-success 0 --max-failure-rate 1"),
    )
    .trim()
    .to_string();
    cli(&lab, &tok, &format!("campaign start {id}"));

    let (vns, vif) = lab.add_client(VICTIM);
    must(&format!("ip -n {vns} addr add 10.99.0.71/24 dev {vif}"));
    let (ans, aif) = lab.add_client(ATTACKER);
    must(&format!("ip -n {ans} addr add 10.99.0.72/24 dev {aif}"));

    // The victim boots: its script carries a token.
    let boot = format!("http://{SERVER_IP}:8080/boot/{VICTIM}.ipxe");
    let (script, code) = curl(&lab, &vns, &boot);
    assert_eq!(code, 200);
    let t = script_token(&script).unwrap_or_else(|| panic!("no token: {script}"));
    // The attacker asks for the victim's script: no token.
    let (script, code) = curl(&lab, &ans, &boot);
    assert_eq!(code, 200, "{script}");
    assert!(script_token(&script).is_none(), "{script}");
    assert!(script.contains("did not come from"), "{script}");
    // The attacker holds the victim's token anyway (sniffed): hello, step, report and key
    // request from its machine are all refused.
    let hello = format!(
        r#"{{"token":"{t}","mac":"{VICTIM}","uuid":null,"serial":null,"firmware":"bios","secure_boot":null,"lockdown":null,"agent_version":"x","kernel":"6.12"}}"#
    );
    let step = format!(r#"{{"token":"{t}","mac":"{VICTIM}","step":"scanning","message":"x"}}"#);
    let report = format!(
        r#"{{"token":"{t}","mac":"{VICTIM}","report_id":"forged","result":"failed","reason":"forged","volumes":[],"files":[],"rules_id":null,"rules_version":null,"agent_ms":1}}"#
    );
    let key = format!(
        r#"{{"token":"{t}","mac":"{VICTIM}","volume":"vda3","protectors":["{PROTECTOR}"]}}"#
    );
    for (path, body) in [
        ("hello", &hello),
        ("step", &step),
        ("report", &report),
        ("bitlocker-key", &key),
    ] {
        let (b, code) = agent(&lab, &ans, path, body);
        assert_eq!(code, 401, "{path}: {b}");
        assert!(!b.contains(PASSWORD));
    }
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{VICTIM}"));
    assert_eq!(
        h["host"]["state"], "booting",
        "nothing the attacker sent counted: {h}"
    );
    let events = h["events"].as_array().unwrap();
    let attempt = format!("IP 10.99.0.72 (MAC {ATTACKER})");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "impersonation"
                && e["message"].as_str().unwrap().contains(&attempt)),
        "the victim's timeline names the attempt: {h}"
    );
    let audit = api_json(&lab, &tok, "/api/v1/audit").to_string();
    assert!(
        audit.contains(&format!("agent {VICTIM} from {attempt}")),
        "the audit log has the requester's IP and MAC: {audit}"
    );

    // A second machine that spoofs the victim's MAC at layer 2 too: a conflict, no token.
    let (sns, sif) = lab.add_client(VICTIM);
    must(&format!("ip -n {sns} addr add 10.99.0.73/24 dev {sif}"));
    let (script, _) = curl(&lab, &sns, &boot);
    assert!(script_token(&script).is_none(), "{script}");
    must(&format!("ip -n {sns} link set {sif} down"));
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{VICTIM}"));
    assert_eq!(h["host"]["state"], "needs-attention", "{h}");
    let reason = h["host"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains(&format!("two machines claimed MAC {VICTIM}"))
            && reason.contains("10.99.0.71")
            && reason.contains("10.99.0.73"),
        "{reason}"
    );
    assert!(h["host"]["claim_conflict"].is_string(), "{h}");
    // The CLI shows it.
    let list = cli(&lab, &tok, "hosts list --state needs-attention");
    assert!(list.contains("two machines claimed"), "{list}");
    // The first claimant's agent asks for the key: no automatic release now.
    let (b, code) = agent(&lab, &vns, "hello", &hello);
    assert_eq!(code, 200, "{b}");
    let (b, code) = agent(&lab, &vns, "bitlocker-key", &key);
    assert_eq!(code, 202, "an admin must approve: {b}");
    assert!(!b.contains(PASSWORD), "{b}");
    assert!(b.contains("approval"), "{b}");
    // An admin approves it for this host: released.
    cli(&lab, &tok, &format!("hosts approve-key {VICTIM}"));
    let (b, code) = agent(&lab, &vns, "bitlocker-key", &key);
    assert_eq!(code, 200, "{b}");
    assert!(b.contains(PASSWORD));
    // The final report spends the token: a later request with it is refused.
    let report = report
        .replace("forged", "r1")
        .replace("\"failed\"", "\"remediated\"");
    let (b, code) = agent(&lab, &vns, "report", &report);
    assert_eq!(code, 200, "{b}");
    let (b, code) = agent(&lab, &vns, "report", &report);
    assert_eq!(code, 200, "a retried report is acknowledged: {b}");
    let (b, code) = agent(&lab, &vns, "hello", &hello);
    assert_eq!(code, 401, "{b}");
    assert!(b.contains("spent"), "{b}");
    let h = api_json(&lab, &tok, &format!("/api/v1/hosts/{VICTIM}"));
    assert_eq!(
        h["host"]["state"], "needs-attention",
        "a disputed host's report is recorded, not acted on: {h}"
    );

    // The console and the admin API from another machine over plain HTTP: browsers are sent to
    // HTTPS, a bearer token in clear is refused; over HTTPS it works.
    let (b, code) = curl(
        &lab,
        &ans,
        &format!("-o /dev/null http://{SERVER_IP}:8080/"),
    );
    assert_eq!(code, 308, "{b}\n{}", lab.server_log());
    let loc = lab.exec_in(
        &ans,
        &format!("curl -s -m 30 -o /dev/null -w '%{{redirect_url}}' http://{SERVER_IP}:8080/hosts"),
    );
    assert_eq!(
        String::from_utf8_lossy(&loc.stdout),
        format!("https://{SERVER_IP}:8443/hosts")
    );
    let bearer = format!("-H 'Authorization: Bearer {tok}'");
    let (b, code) = curl(
        &lab,
        &ans,
        &format!("{bearer} http://{SERVER_IP}:8080/api/v1/summary"),
    );
    assert_eq!(code, 403, "{b}");
    let (_, code) = curl(
        &lab,
        &ans,
        &format!("{bearer} https://{SERVER_IP}:8443/api/v1/summary"),
    );
    assert_eq!(code, 200);
    // Firmware's paths stay on plain HTTP.
    let (_, code) = curl(
        &lab,
        &ans,
        &format!("-o /dev/null http://{SERVER_IP}:8080/image/vmlinuz"),
    );
    assert_eq!(code, 200);
    lab.stop_server();
}

/// The systemd unit's user, capabilities and limits, applied the way systemd applies them
/// (setpriv, prlimit): the server starts unprivileged, binds :67, :69 and :4011 on the served
/// interface, opens its layer-2 witness, answers PXE clients and serves TFTP and HTTPS, with
/// exactly those two capabilities and no core dumps.
#[test]
fn the_server_runs_as_the_unit_says_unprivileged() {
    let unit = include_str!("../../dist/unbrick.service");
    let val = |k: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k}= in the unit"))
            .trim()
            .to_string()
    };
    assert_eq!(val("User"), "unbrick");
    assert_eq!(val("LimitCORE"), "0");
    assert_eq!(val("CapabilityBoundingSet"), val("AmbientCapabilities"));
    let caps: Vec<String> = val("AmbientCapabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    assert_eq!(caps, ["net_bind_service", "net_raw"]);
    let set = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut lab = Lab::new("up");
    lab.init();
    lab.stand_in_image(1024);
    // A user with no other rights (systemd's User=unbrick), owning the data directory as
    // StateDirectory= makes it.
    let uid = 64_123;
    must(&format!("chown -R {uid}:{uid} {}", lab.dir.display()));
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let (inh, amb, bound) = (
        format!("--inh-caps=-all,{set}"),
        format!("--ambient-caps=-all,{set}"),
        format!("--bounding-set=-all,{set}"),
    );
    // (LimitNOFILE is not applied here: this sandbox may not raise its own hard limit.)
    let prefix = [
        "prlimit",
        "--core=0:0",
        "setpriv",
        &reuid,
        &regid,
        "--clear-groups",
        &inh,
        &amb,
        &bound,
        "--no-new-privs",
        "--",
    ];
    lab.serve_as(&prefix, "--dhcp proxy");
    let pid = lab.server_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("Uid:"), uid.to_string(), "{status}");
    // CAP_NET_BIND_SERVICE is bit 10, CAP_NET_RAW bit 13: nothing else is effective.
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        (1 << 10) | (1 << 13),
        "{status}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );
    let log = lab.server_log();
    assert!(
        !log.contains("no layer-2 view"),
        "the witness needs CAP_NET_RAW only: {log}"
    );
    // It serves: a PXE client's :4011 request, TFTP, HTTPS.
    let (c, ifc) = lab.add_client("52:54:00:1d:00:40");
    must(&format!("ip -n {c} addr add 10.99.0.74/24 dev {ifc}"));
    let o = lab.exec_in(
        &c,
        &format!(
            "python3 {} pxe4011 {SERVER_IP} 52:54:00:1d:00:40",
            crate::dhcp_tftp::PROBE
        ),
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("file="),
        "{o:?}\n{}",
        lab.server_log()
    );
    let o = lab.exec_in(
        &c,
        &format!(
            "curl -sf -m 10 -o /dev/null -w '%{{size_download}}' tftp://{SERVER_IP}/undionly.kpxe"
        ),
    );
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .parse::<u64>()
            .unwrap_or(0)
            > 10_000,
        "{o:?}"
    );
    let (_, code) = curl(&lab, &c, &format!("https://{SERVER_IP}:8443/healthz"));
    assert_eq!(code, 200);
    assert!(lab.stop_server().success());
}
