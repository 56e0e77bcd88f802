//! `unbrick hosts ...`: against the running server's admin API (`--server URL --token T`), or,
//! without `--server`, directly on the data directory's store (the server must be stopped: sled
//! allows one process).
use crate::cli::{BmcCmd, CampaignCmd, HostsCmd, KeysCmd, Target};
use crate::config::DataDir;
use crate::Fail;
use fleet::Store as _;
use std::path::Path;
use std::time::Duration;
use unbrick_http as http;
use web_console::query;

struct Api {
    base: String,
    token: String,
    pin: Option<String>,
}

impl Api {
    fn from(t: &Target) -> Result<Option<Self>, Fail> {
        let Some(server) = &t.server else {
            return Ok(None);
        };
        let token = t.token.clone().ok_or_else(|| {
            Fail("--server needs --token (or UNBRICK_TOKEN); make one with `unbrick tokens create --name NAME`".into())
        })?;
        let base = server.trim_end_matches('/').to_string();
        let pin = if base.starts_with("https://") {
            Some(match &t.fingerprint {
                Some(f) => f.clone(),
                None => netboot_server::tls::cert_fingerprint(&DataDir(t.data_dir.clone()).tls_cert())
                    .map_err(|e| Fail(format!("{e}; pass --fingerprint sha256:... (printed by `unbrick init` and in the server log) for https")))?,
            })
        } else {
            None
        };
        Ok(Some(Self { base, token, pin }))
    }

    fn call(&self, method: &str, path: &str, body: Option<(&[u8], &str)>) -> Result<Vec<u8>, Fail> {
        let url = format!("{}{path}", self.base);
        let opts = http::Options {
            pin: self.pin.as_deref(),
            headers: vec![("Authorization", format!("Bearer {}", self.token))],
            content_type: body.map(|b| b.1),
            ..Default::default()
        };
        let r = http::request_with(
            method,
            &url,
            body.map(|b| b.0),
            // Controller actions on many hosts take a while (timeouts and retries inside).
            Duration::from_secs(300),
            &opts,
        )
        .map_err(|e| Fail(format!("{url}: {e}")))?;
        if !(200..300).contains(&r.status) {
            let msg = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_string());
            // An import that refused every row still has its per-line errors to show.
            if r.status == 422 {
                let lines = import_errors(&r.body);
                return Err(Fail(format!(
                    "nothing imported:\n{}",
                    if lines.is_empty() {
                        format!("  {msg}")
                    } else {
                        lines
                    }
                )));
            }
            return Err(Fail(format!("{method} {path}: {} {msg}", r.status)));
        }
        Ok(r.body)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<(&[u8], &str)>,
    ) -> Result<serde_json::Value, Fail> {
        let b = self.call(method, path, body)?;
        serde_json::from_slice(&b)
            .map_err(|e| Fail(format!("{path}: the server sent bad JSON: {e}")))
    }
}

fn import_errors(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "  line {}: {}",
                        e["line"],
                        e["error"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn open_store(data_dir: &Path) -> Result<fleet::SledStore, Fail> {
    let d = DataDir(data_dir.to_path_buf());
    if !d.store().exists() {
        return Err(Fail(format!(
            "{} has no store; run `unbrick init --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        )));
    }
    fleet::SledStore::open(&d.store()).map_err(|e| {
        Fail(format!(
            "{e} (while `unbrick serve` runs it holds the store: pass --server http://IP:8080 --token T to ask its API)"
        ))
    })
}

fn table_header() {
    println!(
        "{:<17}  {:<16}  {:<15}  {:<20}  {:>5}  {:<16}  REASON",
        "MAC", "STATE", "IP", "LAST SEEN", "BOOTS", "HOSTNAME"
    );
}

#[allow(clippy::too_many_arguments)]
fn table_row(mac: &str, state: &str, ip: &str, last: &str, boots: u64, host: &str, reason: &str) {
    println!("{mac:<17}  {state:<16}  {ip:<15}  {last:<20}  {boots:>5}  {host:<16}  {reason}");
}

fn s(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// One line per host of a bulk action's answer: MAC, `ok` or `not_ok`, the message.
fn print_results(v: &serde_json::Value, not_ok: &str) {
    for r in v["results"].as_array().into_iter().flatten() {
        println!(
            "{}  {}  {}",
            s(&r["mac"]),
            if r["ok"].as_bool() == Some(true) {
                "ok    "
            } else {
                not_ok
            },
            s(&r["message"])
        );
    }
}

pub(crate) fn hosts(h: HostsCmd) -> Result<(), Fail> {
    let action = match &h {
        HostsCmd::ApproveKey { .. } => fleet_service::Action::ApproveKey,
        HostsCmd::Wake { .. } => fleet_service::Action::Wake,
        HostsCmd::Netboot { .. } => fleet_service::Action::Netboot,
        HostsCmd::BootDisk { .. } => fleet_service::Action::BootDisk,
        HostsCmd::PowerCycle { .. } => fleet_service::Action::PowerCycle,
        HostsCmd::PowerStatus { .. } => fleet_service::Action::PowerStatus,
        _ => fleet_service::Action::Retry,
    };
    match h {
        HostsCmd::List {
            target,
            state,
            site,
            tag,
            search,
            flag,
            json,
        } => {
            let filter = query::Filter {
                state,
                site,
                tag,
                q: search,
                flag,
                page: None,
                per_page: None,
            };
            filter.validate().map_err(Fail)?;
            if let Some(api) = Api::from(&target)? {
                let mut all = Vec::new();
                let mut page = 1;
                loop {
                    let mut qs = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in filter.query_pairs() {
                        qs.append_pair(k, v);
                    }
                    qs.append_pair("per_page", "500");
                    qs.append_pair("page", &page.to_string());
                    let v = api.json("GET", &format!("/api/v1/hosts?{}", qs.finish()), None)?;
                    all.extend(v["hosts"].as_array().cloned().unwrap_or_default());
                    if page >= v["pages"].as_u64().unwrap_or(1) as usize {
                        break;
                    }
                    page += 1;
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                    return Ok(());
                }
                table_header();
                for h in &all {
                    table_row(
                        s(&h["mac"]),
                        s(&h["state"]),
                        s(&h["ip"]),
                        s(&h["last_seen"]),
                        h["payload_boots"].as_u64().unwrap_or(0),
                        &host_name(h["hostname"].as_str(), h["name_on_disk"].as_str()),
                        h["reason"].as_str().unwrap_or(""),
                    );
                }
                println!("{} hosts", all.len());
                return Ok(());
            }
            let store = open_store(&target.data_dir)?;
            let hosts = store.hosts()?;
            let mut hits: Vec<_> = hosts.iter().filter(|h| filter.matches(h)).collect();
            hits.sort_by_key(|h| h.mac);
            if json {
                let views: Vec<_> = hits.iter().map(|h| web_console::api::view(h)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(());
            }
            table_header();
            for h in &hits {
                table_row(
                    &h.mac.to_string(),
                    h.state.name(),
                    &h.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    &query::iso(h.last_seen_ms),
                    h.payload_boots as u64,
                    &host_name(h.hostname.as_deref(), h.name_on_disk.as_deref()),
                    h.state.reason().unwrap_or(""),
                );
            }
            println!("{} hosts", hits.len());
        }
        HostsCmd::Show { mac, target, json } => {
            let mac: fleet::Mac = mac.parse().map_err(Fail)?;
            let v = if let Some(api) = Api::from(&target)? {
                api.json("GET", &format!("/api/v1/hosts/{mac}"), None)?
            } else {
                let store = open_store(&target.data_dir)?;
                let host = store
                    .host(mac)?
                    .ok_or_else(|| Fail(format!("no host {mac} in the store")))?;
                let events = store.events(mac)?;
                serde_json::json!({
                    "host": web_console::api::view(&host),
                    "events": events.iter().map(web_console::api::event_view).collect::<Vec<_>>(),
                })
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let h = &v["host"];
            println!(
                "{}  {}  state {}{}  since {}",
                s(&h["mac"]),
                host_name(h["hostname"].as_str(), h["name_on_disk"].as_str()),
                s(&h["state"]),
                h["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                s(&h["state_since"])
            );
            for f in h["last_report"]["files"].as_array().into_iter().flatten() {
                println!(
                    "  file  {} {}:{} sha256 {}",
                    s(&f["action"]),
                    s(&f["volume"]),
                    s(&f["path"]),
                    s(&f["sha256"])
                );
            }
            for e in v["events"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {:<6}  {:<14}  {}",
                    s(&e["time"]),
                    s(&e["source"]),
                    s(&e["kind"]),
                    s(&e["message"])
                );
            }
        }
        HostsCmd::Import { file, target } => {
            let data =
                std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let is_json = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            if let Some(api) = Api::from(&target)? {
                let ct = if is_json {
                    "application/json"
                } else {
                    "text/csv"
                };
                let v = api.json("POST", "/api/v1/hosts/import", Some((&data, ct)))?;
                println!(
                    "{} created, {} updated, {} rows refused",
                    v["created"],
                    v["updated"],
                    v["errors"].as_array().map(Vec::len).unwrap_or(0)
                );
                let errs = import_errors(&serde_json::to_vec(&v)?);
                if !errs.is_empty() {
                    println!("{errs}");
                }
                return Ok(());
            }
            let text = String::from_utf8(data)
                .map_err(|_| Fail(format!("{}: not UTF-8 text", file.display())))?;
            let (rows, errors) = if is_json {
                query::parse_json(&text)
            } else {
                query::parse_csv(&text)
            }
            .map_err(Fail)?;
            let fl = local_fleet(&target.data_dir)?;
            let origin = file.display().to_string();
            let n = block_on(fl.import_inventory(
                &local_actor(),
                &rows,
                errors.len(),
                Some(&origin),
                fleet_service::now_ms(),
            ))?;
            let (created, updated) = (n.created, n.updated);
            println!(
                "{created} created, {updated} updated, {} rows refused",
                errors.len()
            );
            for e in &errors {
                println!("  line {}: {}", e.line, e.error);
            }
            if rows.is_empty() && !errors.is_empty() {
                return Err(Fail("nothing imported".into()));
            }
        }
        HostsCmd::Retry { macs, target }
        | HostsCmd::ApproveKey { macs, target }
        | HostsCmd::Wake { macs, target }
        | HostsCmd::Netboot { macs, target }
        | HostsCmd::BootDisk { macs, target }
        | HostsCmd::PowerCycle { macs, target }
        | HostsCmd::PowerStatus { macs, target } => {
            if let Some(api) = Api::from(&target)? {
                let body = serde_json::to_vec(
                    &serde_json::json!({"action": action.name(), "macs": macs}),
                )?;
                let v = api.json(
                    "POST",
                    "/api/v1/hosts/actions",
                    Some((&body, "application/json")),
                )?;
                print_results(&v, "REFUSED");
                if v["failed"].as_u64().unwrap_or(0) > 0 {
                    return Err(Fail(format!(
                        "{} of {} hosts refused",
                        v["failed"],
                        macs.len()
                    )));
                }
                return Ok(());
            }
            let fl = std::sync::Arc::new(local_fleet(&target.data_dir)?);
            let r =
                block_on(fl.admin_action(&local_actor(), action, &macs, fleet_service::now_ms()))?;
            for o in &r.results {
                println!(
                    "{}  {}  {}",
                    o.mac,
                    if o.ok { "ok    " } else { "REFUSED" },
                    o.message
                );
            }
            let failed = r.failed;
            if failed > 0 {
                return Err(Fail(format!("{failed} of {} hosts refused", macs.len())));
            }
        }
        HostsCmd::Export {
            target,
            format,
            out,
        } => {
            let data = if let Some(api) = Api::from(&target)? {
                api.call("GET", &format!("/api/v1/export?format={format}"), None)?
            } else {
                let store = open_store(&target.data_dir)?;
                let mut rows: Vec<_> = store.hosts()?.iter().map(query::report_row).collect();
                rows.sort_by(|a, b| a.mac.cmp(&b.mac));
                if format == "csv" {
                    query::export_csv(&rows).into_bytes()
                } else {
                    serde_json::to_vec_pretty(&rows)?
                }
            };
            match out {
                Some(p) => {
                    std::fs::write(&p, &data).map_err(|e| Fail(format!("{}: {e}", p.display())))?;
                    eprintln!("wrote {} ({} bytes)", p.display(), data.len());
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&data)?;
                }
            }
        }
    }
    Ok(())
}

fn need_api(t: &Target) -> Result<Api, Fail> {
    Api::from(t)?.ok_or_else(|| {
        Fail("campaigns run in the server: pass --server http://IP:8080 --token T (or UNBRICK_SERVER, UNBRICK_TOKEN)".into())
    })
}

fn print_campaign(v: &serde_json::Value) {
    println!(
        "{}  {}  {}{}  rules {}  {} hosts, {} in the payload (limit {}), wave {} of {}",
        s(&v["id"]),
        s(&v["name"]),
        s(&v["state"]),
        v["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        s(&v["rules"]),
        v["members"],
        v["in_payload"],
        v["concurrency"],
        v["current_wave"],
        v["waves"].as_array().map(Vec::len).unwrap_or(0)
    );
}

pub(crate) fn campaign(c: CampaignCmd) -> Result<(), Fail> {
    let act = |id: &str, t: &Target, action: &str| -> Result<(), Fail> {
        let v = need_api(t)?.json(
            "POST",
            &format!("/api/v1/campaigns/{id}/{action}"),
            Some((b"", "application/json")),
        )?;
        println!("{}", s(&v["result"]));
        Ok(())
    };
    match c {
        CampaignCmd::Create {
            name,
            all,
            site,
            tag,
            mut hosts,
            hosts_file,
            waves,
            concurrency,
            min_success,
            max_failure_rate,
            soak_minutes,
            verify_minutes,
            host_timeout_minutes,
            key_release,
            trigger,
            power_cycles,
            trigger_wait_minutes,
            target,
        } => {
            if let Some(f) = &hosts_file {
                hosts.extend(read_hosts_file(f)?);
            }
            let targets = if let Some(s) = site {
                serde_json::json!({ "site": s })
            } else if let Some(t) = tag {
                serde_json::json!({ "tag": t })
            } else if !hosts.is_empty() {
                serde_json::json!({ "macs": hosts })
            } else if all {
                serde_json::json!({ "all": true })
            } else {
                return Err(Fail(
                    "say which hosts: --all, --site S, --tag T or --hosts MAC,MAC".into(),
                ));
            };
            let body = serde_json::json!({
                "name": name, "targets": targets, "waves": waves, "concurrency": concurrency,
                "gate": { "min_success": min_success, "max_failure_rate": max_failure_rate, "min_soak_minutes": soak_minutes },
                "host_timeout_minutes": host_timeout_minutes, "verify_window_minutes": verify_minutes,
                "key_release": key_release, "trigger": trigger, "power_cycles": power_cycles,
                "trigger_wait_minutes": trigger_wait_minutes,
            });
            let v = need_api(&target)?.json(
                "POST",
                "/api/v1/campaigns",
                Some((&serde_json::to_vec(&body)?, "application/json")),
            )?;
            println!("{}", s(&v["id"]));
            eprintln!(
                "created (a draft); start it with: unbrick campaign start {}",
                s(&v["id"])
            );
        }
        CampaignCmd::List { target, json } => {
            let v = need_api(&target)?.json("GET", "/api/v1/campaigns", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for c in v.as_array().into_iter().flatten() {
                print_campaign(c);
            }
        }
        CampaignCmd::Show { id, target, json } => {
            let v = need_api(&target)?.json("GET", &format!("/api/v1/campaigns/{id}"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            print_campaign(&v);
            for w in v["waves"].as_array().into_iter().flatten() {
                println!(
                    "  wave {}: {} hosts, {} succeeded, {} failed, {} pending; opened {}, closed {} {}",
                    w["number"], w["hosts"], w["succeeded"], w["failed"], w["pending"],
                    w["opened"].as_str().unwrap_or("-"), w["closed"].as_str().unwrap_or("-"),
                    w["gate_note"].as_str().unwrap_or("")
                );
                let members: Vec<&str> = w["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str())
                    .collect();
                if !members.is_empty() {
                    let more = members.len().saturating_sub(12);
                    println!(
                        "    {}{}",
                        members[..members.len() - more].join(" "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            for l in v["log"].as_array().into_iter().flatten() {
                println!("  {}  {}", s(&l[0]), s(&l[1]));
            }
        }
        CampaignCmd::Start { id, target } => act(&id, &target, "start")?,
        CampaignCmd::Pause { id, target } => act(&id, &target, "pause")?,
        CampaignCmd::Resume { id, target } => act(&id, &target, "resume")?,
        CampaignCmd::Abort { id, target } => act(&id, &target, "abort")?,
        CampaignCmd::Rollback { id, target } => act(&id, &target, "rollback")?,
        CampaignCmd::ApproveKeys { id, target } => act(&id, &target, "approve-keys")?,
    }
    Ok(())
}

/// Runs one of the fleet's async operations (they wait for the group commit) on a small
/// runtime: the CLI's offline commands share the server's code paths.
fn block_on<T>(f: impl std::future::Future<Output = fleet_service::Result<T>>) -> Result<T, Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
        .map_err(|e| Fail(e.to_string()))
}

/// A fleet over the data directory's store (server stopped) with the escrow key: the offline
/// commands write through the same single writer, events and audit entries as the server.
fn local_fleet(data_dir: &Path) -> Result<fleet_service::FleetIo, Fail> {
    let store = std::sync::Arc::new(open_store(data_dir)?);
    let vault =
        fleet::escrow::vault::Vault::open(&DataDir(data_dir.to_path_buf()).escrow_key(), true)?;
    let bmc = fleet::escrow::vault::Vault::open(&DataDir(data_dir.to_path_buf()).bmc_key(), true)?;
    let policy = std::sync::Arc::new(fleet::DefaultPolicy::default());
    Ok(fleet_service::FleetIo::new(store, policy)
        .map_err(|e| Fail(e.to_string()))?
        .with_vault(vault)
        .with_bmc_vault(bmc))
}

fn local_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "root".into())
    )
}

/// `unbrick keys import-bitlocker|list-bitlocker|reveal-bitlocker`.
pub(crate) fn bitlocker_keys(k: KeysCmd) -> Result<(), Fail> {
    match k {
        KeysCmd::ImportBitlocker { file, target } => {
            let data =
                std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let r: fleet_service::escrow::ImportResult = if let Some(api) = Api::from(&target)? {
                serde_json::from_value(api.json(
                    "POST",
                    "/api/v1/bitlocker/keys",
                    Some((&data, "text/csv")),
                )?)
                .map_err(|e| Fail(format!("the server's import answer: {e}")))?
            } else {
                let parsed = fleet::escrow::parse_export(&data)
                    .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
                let fl = local_fleet(&target.data_dir)?;
                let r = fl
                    .escrow_import(&parsed, &local_actor(), crate::now_unix() * 1000)
                    .map_err(|e| Fail(e.to_string()))?;
                fl.store().flush().map_err(|e| Fail(e.to_string()))?;
                r
            };
            println!("{}", r.summary());
            for e in &r.errors {
                println!("  line {}: {}", e.line, e.error);
            }
            if r.stored() == 0 {
                return Err(Fail(format!("{}: no key imported", file.display())));
            }
            Ok(())
        }
        KeysCmd::ListBitlocker { target, json } => {
            let keys = if let Some(api) = Api::from(&target)? {
                api.json("GET", "/api/v1/bitlocker/keys", None)?["keys"].clone()
            } else {
                serde_json::to_value(
                    local_fleet(&target.data_dir)?
                        .escrow_list()
                        .map_err(|e| Fail(e.to_string()))?,
                )?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            println!(
                "{:<38} {:<20} {:<17} {:>8} {:>7}",
                "protector ID", "host", "source", "released", "reveals"
            );
            for k in keys.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<38} {:<20} {:<17} {:>8} {:>7}",
                    k["protector_id"].as_str().unwrap_or(""),
                    k["hostname"].as_str().unwrap_or("-"),
                    k["source"].as_str().unwrap_or(""),
                    k["releases"].as_array().map(Vec::len).unwrap_or(0),
                    k["reveals"]
                );
            }
            Ok(())
        }
        KeysCmd::RevealBitlocker {
            protector_id,
            target,
        } => {
            let id = fleet::escrow::protector_id(&protector_id)?;
            let pw = if let Some(api) = Api::from(&target)? {
                api.json("POST", &format!("/api/v1/bitlocker/keys/{id}/reveal"), None)?
                    ["recovery_password"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            } else {
                let fl = local_fleet(&target.data_dir)?;
                let pw = fl
                    .escrow_reveal(&id, &local_actor(), crate::now_unix() * 1000)
                    .map_err(|e| Fail(e.to_string()))?
                    .ok_or_else(|| Fail(format!("no key is escrowed for protector {id}")))?;
                fl.store().flush().map_err(|e| Fail(e.to_string()))?;
                pw.expose().to_string()
            };
            println!("{pw}");
            Ok(())
        }
        _ => unreachable!("only the BitLocker key commands come here"),
    }
}

/// `unbrick bmc`: controller imports and the list, over the API or on the stopped store.
/// `unbrick diagnose`: the boot-chain diagnosis from the server's API or the data directory.
pub(crate) fn diagnose(target: &Target, json: bool) -> Result<(), Fail> {
    let v: serde_json::Value = if let Some(api) = Api::from(target)? {
        api.json("GET", "/api/v1/diagnosis", None)?
    } else {
        let fl = local_fleet(&target.data_dir)?;
        let d = web_console::diagnosis::of_fleet(&fl, fleet_service::now_ms())?;
        serde_json::to_value(d)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", diagnosis_text(&v));
    }
    let problems = v["boot"].as_array().map_or(0, Vec::len);
    if problems > 0 {
        return Err(Fail::found(format!(
            "{problems} boot-chain problem(s) found (see above)"
        )));
    }
    Ok(())
}

/// The MACs of a `--hosts-file` ("-": standard input), checked, in file order, each once.
fn read_hosts_file(f: &Path) -> Result<Vec<String>, Fail> {
    let text = if f == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Fail(format!("standard input: {e}")))?
    } else {
        std::fs::read_to_string(f).map_err(|e| Fail(format!("{}: {e}", f.display())))?
    };
    let macs = parse_hosts_list(&text).map_err(|e| Fail(format!("{}: {e}", f.display())))?;
    if macs.is_empty() {
        return Err(Fail(format!("{}: no MAC address in it", f.display())));
    }
    Ok(macs)
}

/// One or more MACs per line, separated by commas or white space; blank lines and `#` comments
/// skipped. The first bad entry is an error naming its line; duplicates are kept once.
fn parse_hosts_list(text: &str) -> Result<Vec<String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for w in line.split(|c: char| c == ',' || c.is_whitespace()) {
            if w.is_empty() {
                continue;
            }
            let mac: fleet::Mac = w
                .parse()
                .map_err(|e: String| format!("line {}: {e}", n + 1))?;
            if seen.insert(mac) {
                out.push(mac.to_string());
            }
        }
    }
    Ok(out)
}

/// `unbrick diagnose --draft-rule SHA256`: the drafted rules document and the steps.
pub(crate) fn draft_rule(
    target: &Target,
    sha256: &str,
    path: Option<&str>,
    (out, hosts_out): (Option<&Path>, Option<&Path>),
    json: bool,
) -> Result<(), Fail> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Fail(format!("{sha256:?} is not a SHA-256 (64 hex digits)")));
    }
    let v: serde_json::Value = if let Some(api) = Api::from(target)? {
        let mut q = format!("/api/v1/diagnosis/draft-rule?sha256={sha256}");
        if let Some(p) = path {
            q += "&path=";
            q += &query::urlenc(p);
        }
        api.json("GET", &q, None)?
    } else {
        let fl = local_fleet(&target.data_dir)?;
        let d = web_console::diagnosis::draft(&fl, sha256, path, fleet_service::now_ms() / 1000)
            .map_err(Fail)?
            .ok_or_else(|| {
                Fail(format!(
                    "no scanned host has a file with SHA-256 {sha256}{}",
                    path.map(|p| format!(" at {p}")).unwrap_or_default()
                ))
            })?;
        serde_json::to_value(d)?
    };
    if let Some(o) = hosts_out {
        let hosts = v["hosts"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut list = String::new();
        for h in hosts {
            list += h.as_str().unwrap_or_default();
            list.push('\n');
        }
        std::fs::write(o, list).map_err(|e| Fail(format!("{}: {e}", o.display())))?;
        eprintln!("wrote {} ({} host(s))", o.display(), hosts.len());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let doc = v["document"].as_str().unwrap_or_default();
    match out {
        Some(o) => {
            std::fs::write(o, doc).map_err(|e| Fail(format!("{}: {e}", o.display())))?;
            eprintln!("wrote {} (not signed)", o.display());
        }
        None => print!("{doc}"),
    }
    for l in v["steps"].as_array().into_iter().flatten() {
        eprintln!("{}", l.as_str().unwrap_or_default());
    }
    Ok(())
}

fn diagnosis_text(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let mut out = format!(
        "{} host(s) network-booted and are not done (as of {}).\n",
        v["looked_at"].as_u64().unwrap_or(0),
        s(&v["generated"])
    );
    for g in v["crashes"].as_array().into_iter().flatten() {
        let driver = g["driver"]
            .as_str()
            .map_or(" (the dumps name no driver)".to_string(), |d| {
                format!(" in {d}")
            });
        out += &format!(
            "\n{} host(s): bugcheck {} {}{driver} ({} dumps)\n",
            g["hosts"].as_u64().unwrap_or(0),
            s(&g["bugcheck"]),
            s(&g["name"]),
            g["dumps"].as_u64().unwrap_or(0)
        );
        for h in g["examples"].as_array().into_iter().flatten() {
            out += &format!("  {}  {}\n", s(&h["mac"]), s(&h["detail"]));
        }
    }
    for g in v["events"].as_array().into_iter().flatten() {
        out += &format!(
            "\n{} host(s): System log {} {} ({} events)\n",
            g["hosts"].as_u64().unwrap_or(0),
            s(&g["kind"]),
            g["bugcheck"].as_str().unwrap_or("(no bugcheck named)"),
            g["events"].as_u64().unwrap_or(0)
        );
        for h in g["examples"].as_array().into_iter().flatten() {
            out += &format!("  {}  {}\n", s(&h["mac"]), s(&h["detail"]));
        }
    }
    let files = &v["files"];
    if files["scanned_hosts"].as_u64().unwrap_or(0) > 0 {
        out += &format!(
            "\nRead-only scan: {} host(s), {} with a crash dump.\n",
            files["scanned_hosts"].as_u64().unwrap_or(0),
            files["crashing_hosts"].as_u64().unwrap_or(0)
        );
        for g in files["files"].as_array().into_iter().flatten().take(20) {
            out += &format!(
                "  {} {}  sha256 {}  {} bytes  on {} crashing / {} other host(s)\n",
                if g["suspect"].as_bool() == Some(true) {
                    "SUSPECT"
                } else {
                    "       "
                },
                s(&g["path"]),
                s(&g["sha256"]),
                g["size"].as_u64().unwrap_or(0),
                g["crashing_hosts"].as_u64().unwrap_or(0),
                g["hosts_without_crashes"].as_u64().unwrap_or(0)
            );
        }
        if let Some(g) = files["files"]
            .as_array()
            .and_then(|f| f.first())
            .filter(|g| g["suspect"].as_bool() == Some(true))
        {
            out += &format!(
                "  Draft a rule for the suspect: unbrick diagnose --draft-rule {} --out active.json\n",
                s(&g["sha256"])
            );
        }
    }
    let groups = v["boot"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        out += "No boot-chain problem: each of them reached the agent or is within the time its next step may take.\n";
    }
    for g in groups {
        out += &format!(
            "\n{} host(s): {} [{}]\n  {}\n",
            g["hosts"].as_u64().unwrap_or(0),
            s(&g["title"]),
            s(&g["problem"]),
            s(&g["advice"])
        );
        let names: std::collections::HashMap<String, String> = v["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| (s(&h["mac"]), s(&h["name"])))
            .collect();
        for h in g["examples"].as_array().into_iter().flatten() {
            let mac = s(&h["mac"]);
            let name = names.get(&mac).cloned().unwrap_or_default();
            out += &format!("  {mac}  {name:<16} {}\n", s(&h["detail"]));
        }
    }
    out
}

pub(crate) fn bmc(b: BmcCmd) -> Result<(), Fail> {
    match b {
        BmcCmd::Import { file, target } => {
            let data =
                std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let (created, updated, errors) = if let Some(api) = Api::from(&target)? {
                let v = api.json("POST", "/api/v1/bmc/import", Some((&data, "text/csv")))?;
                (
                    v["created"].as_u64().unwrap_or(0) as usize,
                    v["updated"].as_u64().unwrap_or(0) as usize,
                    import_errors(&serde_json::to_vec(&v)?),
                )
            } else {
                let text = String::from_utf8(data)
                    .map_err(|_| Fail(format!("{}: not UTF-8 text", file.display())))?;
                let (rows, errs) = fleet::bmc::parse_csv(&text).map_err(Fail)?;
                let refused = errs.len();
                let lines: Vec<String> = errs
                    .iter()
                    .map(|e| format!("  line {}: {}", e.line, e.error))
                    .collect();
                if rows.is_empty() {
                    return Err(Fail(format!("nothing imported\n{}", lines.join("\n"))));
                }
                let fl = local_fleet(&target.data_dir)?;
                let origin = file.display().to_string();
                let n = block_on(fl.import_controllers(
                    &local_actor(),
                    rows,
                    refused,
                    Some(&origin),
                    fleet_service::now_ms(),
                ))?;
                (n.created, n.updated, lines.join("\n"))
            };
            let refused = errors.lines().filter(|l| !l.trim().is_empty()).count();
            println!("{created} created, {updated} updated, {refused} rows refused");
            if !errors.is_empty() {
                println!("{errors}");
            }
            if created + updated == 0 {
                return Err(Fail("nothing imported".into()));
            }
        }
        BmcCmd::List { target, json } => {
            let rows: Vec<serde_json::Value> = if let Some(api) = Api::from(&target)? {
                api.json("GET", "/api/v1/bmc", None)?["controllers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            } else {
                local_fleet(&target.data_dir)?
                    .controllers()
                    .into_iter()
                    .map(|(m, h, c)| serde_json::json!({"mac": m.to_string(), "hostname": h, "summary": c.to_string()}))
                    .collect()
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    println!(
                        "{}  {:<16} {}",
                        s(&r["mac"]),
                        s(&r["hostname"]),
                        s(&r["summary"])
                    );
                }
                println!("{} controllers", rows.len());
            }
        }
        BmcCmd::Test { macs, target, json } => {
            let api = Api::from(&target)?.ok_or_else(|| {
                Fail(
                    "controllers are reached by the running server: give --server and --token"
                        .into(),
                )
            })?;
            let macs: Vec<String> = if macs.is_empty() {
                api.json("GET", "/api/v1/bmc", None)?["controllers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["kind"] != "wol")
                    .filter_map(|c| c["mac"].as_str().map(str::to_string))
                    .collect()
            } else {
                macs
            };
            if macs.is_empty() {
                return Err(Fail(
                    "no host has a controller to test (unbrick bmc import)".into(),
                ));
            }
            let body =
                serde_json::to_vec(&serde_json::json!({"action": "power-status", "macs": macs}))?;
            let v = api.json(
                "POST",
                "/api/v1/hosts/actions",
                Some((&body, "application/json")),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_results(&v, "FAILED");
            }
            let failed = v["failed"].as_u64().unwrap_or(0);
            if failed > 0 {
                return Err(Fail::found(format!(
                    "{failed} of {} controllers failed",
                    macs.len()
                )));
            }
        }
    }
    Ok(())
}

/// The Host column: the imported name, else the name read from the disk (marked so, as it is
/// the disk's word), else `-`.
fn host_name(imported: Option<&str>, on_disk: Option<&str>) -> String {
    match (imported.filter(|s| !s.is_empty()), on_disk) {
        (Some(n), _) => n.to_string(),
        (None, Some(d)) if !d.is_empty() => format!("{d} (on disk)"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_hosts_list;

    #[test]
    fn a_hosts_list_takes_lines_commas_comments_and_each_mac_once() {
        let text = "# hosts with the file\n52:54:00:AA:00:01\n\n52-54-00-aa-00-02, 525400aa0003\n  52:54:00:aa:00:01  \n";
        assert_eq!(
            parse_hosts_list(text).unwrap(),
            [
                "52:54:00:aa:00:01",
                "52:54:00:aa:00:02",
                "52:54:00:aa:00:03"
            ]
        );
        assert!(parse_hosts_list("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn a_bad_entry_names_its_line() {
        let e = parse_hosts_list("52:54:00:aa:00:01\n52:54:00:aa:00:zz\n").unwrap_err();
        assert!(
            e.starts_with("line 2: \"52:54:00:aa:00:zz\" is not a MAC address"),
            "{e}"
        );
    }
}
