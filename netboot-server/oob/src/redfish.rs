//! Redfish (DMTF DSP0266): find the computer system, read its power state and boot override,
//! set a one-time PXE override with `If-Match` on its ETag, read it back (some BMCs answer 200
//! and keep the old value), retry without `BootSourceOverrideMode` where a BMC refuses it, then
//! `ComputerSystem.Reset`. Logs in with a session (`X-Auth-Token`, deleted at the end) when the
//! service offers one, else with basic auth on every request.
use crate::{
    Credentials, Failure, Http, HttpReply, HttpRequest, Machine, Op, Outcome, Power, Trace,
};
use base64::Engine as _;
use serde_json::{json, Value};

/// How requests are authenticated.
enum Auth {
    Basic(String),
    Session { token: String, location: String },
}

struct Client<'a> {
    http: &'a mut dyn Http,
    auth: Auth,
    trace: &'a mut Trace,
}

impl Client<'_> {
    fn send(&mut self, req: HttpRequest) -> Result<HttpReply, Failure> {
        let req = match &self.auth {
            Auth::Basic(b) => req.header("Authorization", format!("Basic {b}")),
            Auth::Session { token, .. } => req.header("X-Auth-Token", token.clone()),
        };
        let what = format!("{} {}", req.method, req.path);
        let r = self.http.call(&req)?;
        self.trace
            .step(format!("{what}: {} {}", r.status, reason(r.status)));
        match r.status {
            401 => Err(Failure::fatal(format!("{what}: credentials refused (401)"))),
            403 => Err(Failure::fatal(format!(
                "{what}: the account may not do this (403{})",
                message(&r).map(|m| format!(": {m}")).unwrap_or_default()
            ))),
            500..=599 => Err(Failure::transient(format!(
                "{what}: the BMC answered {}{}",
                r.status,
                message(&r).map(|m| format!(" ({m})")).unwrap_or_default()
            ))),
            _ => Ok(r),
        }
    }

    fn get(&mut self, path: &str) -> Result<(Value, Option<String>), Failure> {
        let r = self.send(HttpRequest::new("GET", path))?;
        if r.status != 200 {
            return Err(Failure::fatal(format!(
                "GET {path}: {}{}",
                r.status,
                message(&r).map(|m| format!(" ({m})")).unwrap_or_default()
            )));
        }
        let v = r.json();
        if !v.is_object() {
            return Err(Failure::fatal(format!(
                "GET {path}: the answer is not JSON"
            )));
        }
        let etag = r
            .header("ETag")
            .map(str::to_string)
            .or_else(|| v["@odata.etag"].as_str().map(str::to_string));
        Ok((v, etag))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        _ => "",
    }
}

/// The error message of a Redfish answer (`error.message`, or the first extended message).
fn message(r: &HttpReply) -> Option<String> {
    let v = r.json();
    let e = &v["error"];
    let ext = e["@Message.ExtendedInfo"][0]["Message"].as_str();
    ext.or_else(|| e["message"].as_str())
        .map(|s| s.chars().take(200).collect())
        .or_else(|| {
            let t = String::from_utf8_lossy(&r.body);
            let t = t.trim();
            (!t.is_empty() && !t.starts_with('{') && !t.starts_with('<'))
                .then(|| t.chars().take(200).collect())
        })
}

fn link(v: &Value, key: &str) -> Option<String> {
    v[key]["@odata.id"].as_str().map(str::to_string)
}

fn power_of(v: &Value) -> Option<Power> {
    v["PowerState"].as_str().map(|s| match s {
        "On" => Power::On,
        "Off" => Power::Off,
        other => Power::Other(other.to_string()),
    })
}

fn allowed<'v>(v: &'v Value, key: &str) -> Option<Vec<&'v str>> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
}

/// Runs `op` against the Redfish service behind `http`.
pub fn run(
    http: &mut dyn Http,
    cred: &Credentials,
    machine: &Machine,
    op: Op,
    trace: &mut Trace,
) -> Result<Outcome, Failure> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        cred.user,
        cred.secret.as_str()
    ));
    let mut c = Client {
        http,
        auth: Auth::Basic(basic),
        trace,
    };
    // The service root needs no credentials (DSP0266); a service that wants them anyway gets
    // basic auth on a second try.
    let root = match c.http.call(&HttpRequest::new("GET", "/redfish/v1/"))? {
        r if r.status == 200 => {
            c.trace.step("GET /redfish/v1/: 200 OK");
            r.json()
        }
        r if r.status == 401 => {
            c.trace
                .step("GET /redfish/v1/: 401 without credentials; again with them");
            c.get("/redfish/v1/")?.0
        }
        r => {
            c.trace.step(format!("GET /redfish/v1/: {}", r.status));
            return Err(if r.status >= 500 {
                Failure::transient(format!("the service root answered {}", r.status))
            } else {
                Failure::fatal(format!(
                    "the service root answered {} (is this a Redfish service?)",
                    r.status
                ))
            });
        }
    };
    if !root.is_object() {
        return Err(Failure::fatal(
            "the service root is not JSON (is this a Redfish service?)",
        ));
    }
    if let Some(sessions) = root["Links"]["Sessions"]["@odata.id"].as_str() {
        login(&mut c, sessions, cred)?;
    }
    let result = sequence(&mut c, &root, machine, op);
    if let Auth::Session { location, .. } = &c.auth {
        let location = location.clone();
        // The session ends whatever happened; a failure to delete it is noted, not fatal
        // (the BMC times it out).
        match c.send(HttpRequest::new("DELETE", &location)) {
            Ok(r) if (200..300).contains(&r.status) => c.trace.step("session closed"),
            Ok(r) => c.trace.step(format!(
                "the session could not be deleted ({}); the BMC will time it out",
                r.status
            )),
            Err(e) => c.trace.step(format!(
                "the session could not be deleted ({e}); the BMC will time it out"
            )),
        }
    }
    result
}

fn login(c: &mut Client<'_>, sessions: &str, cred: &Credentials) -> Result<(), Failure> {
    let body = json!({"UserName": cred.user, "Password": cred.secret.as_str()});
    let r = c.send(HttpRequest::new("POST", sessions).json(&body))?;
    match r.status {
        200 | 201 => {
            let token = r.header("X-Auth-Token").map(str::to_string);
            let location = r
                .header("Location")
                .map(|l| match l.find("/redfish/") {
                    // An absolute URL: keep its path.
                    Some(i) if l.contains("://") => l[i..].to_string(),
                    _ => l.to_string(),
                })
                .or_else(|| r.json()["@odata.id"].as_str().map(str::to_string));
            match (token, location) {
                (Some(token), Some(location)) => {
                    c.trace.step("session opened");
                    c.auth = Auth::Session { token, location };
                }
                _ => c
                    .trace
                    .step("the session answer has no token or location: basic auth instead"),
            }
            Ok(())
        }
        // No session service after all: basic auth on every request.
        404 | 405 | 501 => {
            c.trace.step("no sessions here: basic auth");
            Ok(())
        }
        s => Err(Failure::fatal(format!(
            "POST {sessions}: login refused ({s}{})",
            message(&r).map(|m| format!(": {m}")).unwrap_or_default()
        ))),
    }
}

/// Finds the computer system: the only one, or the one whose UUID is the machine's.
fn find_system(c: &mut Client<'_>, root: &Value, machine: &Machine) -> Result<String, Failure> {
    let systems = link(root, "Systems")
        .ok_or_else(|| Failure::fatal("the service root names no Systems collection"))?;
    let (col, _) = c.get(&systems)?;
    let members: Vec<String> = col["Members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match members.len() {
        0 => Err(Failure::fatal("the BMC lists no computer system")),
        1 => Ok(members[0].clone()),
        n => {
            let Some(want) = &machine.uuid else {
                return Err(Failure::fatal(format!(
                    "the BMC lists {n} systems and the host's UUID is not known yet (it is learnt from its first PXE request): cannot tell which one is this machine"
                )));
            };
            for m in &members {
                let (s, _) = c.get(m)?;
                if s["UUID"]
                    .as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(want))
                {
                    return Ok(m.clone());
                }
            }
            Err(Failure::fatal(format!(
                "none of the BMC's {n} systems has the host's UUID {want}"
            )))
        }
    }
}

fn sequence(
    c: &mut Client<'_>,
    root: &Value,
    machine: &Machine,
    op: Op,
) -> Result<Outcome, Failure> {
    let path = find_system(c, root, machine)?;
    let (sys, etag) = c.get(&path)?;
    let power = power_of(&sys);
    let targets = allowed(
        &sys["Boot"],
        "BootSourceOverrideTarget@Redfish.AllowableValues",
    );
    let can_netboot = targets.as_ref().map(|t| t.contains(&"Pxe"));
    let state = |p: &Option<Power>| {
        p.as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    c.trace.step(format!(
        "system {path}: power {}, boot override {} {}",
        state(&power),
        sys["Boot"]["BootSourceOverrideEnabled"]
            .as_str()
            .unwrap_or("?"),
        sys["Boot"]["BootSourceOverrideTarget"]
            .as_str()
            .unwrap_or("?")
    ));
    let mut outcome = Outcome {
        power: power.clone(),
        can_netboot,
        summary: String::new(),
    };
    match op {
        Op::Status => {
            outcome.summary = format!(
                "Redfish: power {}; {}",
                state(&power),
                match can_netboot {
                    Some(true) => "can force a network (PXE) boot",
                    Some(false) => "offers no PXE boot override",
                    None => "does not list its boot overrides (PXE assumed)",
                }
            );
            return Ok(outcome);
        }
        Op::NetbootOnce => {
            if can_netboot == Some(false) {
                return Err(Failure::fatal(format!(
                    "the BMC offers no PXE boot override (it allows {})",
                    targets.unwrap_or_default().join(", ")
                )));
            }
            set_override(c, &path, etag, "Pxe", machine.uefi)?;
        }
        Op::BootDisk => {
            let target = match &targets {
                Some(t) if !t.contains(&"Hdd") => "None",
                _ => "Hdd",
            };
            set_override(c, &path, etag, target, false)?;
        }
        Op::PowerCycle => {}
    }
    let reset = reset(c, &path, &sys, &power)?;
    outcome.summary = match op {
        Op::NetbootOnce => format!("Redfish: one-time PXE boot set, {reset}"),
        Op::BootDisk => format!("Redfish: boot override cleared (disk), {reset}"),
        _ => format!("Redfish: {reset}"),
    };
    Ok(outcome)
}

/// PATCHes the one-time override to `target` and reads it back.
fn set_override(
    c: &mut Client<'_>,
    path: &str,
    mut etag: Option<String>,
    target: &str,
    uefi: bool,
) -> Result<(), Failure> {
    let mut with_mode = uefi;
    let mut refreshed = false;
    loop {
        let mut boot = json!({
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": "Once",
        });
        if with_mode {
            boot["BootSourceOverrideMode"] = json!("UEFI");
        }
        let mut req = HttpRequest::new("PATCH", path).json(&json!({ "Boot": boot }));
        if let Some(e) = &etag {
            req = req.header("If-Match", e.clone());
        }
        let r = c.send(req)?;
        match r.status {
            200 | 202 | 204 => break,
            412 if !refreshed => {
                // Changed since we read it: read the new ETag and try once more.
                refreshed = true;
                etag = c.get(path)?.1;
                c.trace.step("the ETag changed meanwhile: read again");
            }
            400 if with_mode => {
                with_mode = false;
                c.trace.step(format!(
                    "the BMC refused BootSourceOverrideMode ({}): again without it",
                    message(&r).unwrap_or_else(|| "400".into())
                ));
            }
            s => {
                return Err(Failure::fatal(format!(
                    "PATCH {path}: the boot override was refused ({s}{})",
                    message(&r).map(|m| format!(": {m}")).unwrap_or_default()
                )))
            }
        }
    }
    // Read back: some BMCs answer 200 and keep the old value.
    let (after, _) = c.get(path)?;
    let got = after["Boot"]["BootSourceOverrideTarget"]
        .as_str()
        .unwrap_or("");
    let enabled = after["Boot"]["BootSourceOverrideEnabled"]
        .as_str()
        .unwrap_or("");
    if got != target && !(target == "None" && got.is_empty()) {
        return Err(Failure::fatal(format!(
            "the BMC accepted the boot override and did not keep it (BootSourceOverrideTarget reads {:?}, not {target})",
            got
        )));
    }
    match enabled {
        "Once" => c
            .trace
            .step(format!("read back: BootSourceOverrideTarget {got}, once")),
        "Disabled" if target != "None" => {
            return Err(Failure::fatal(
                "the BMC accepted the boot override and disabled it again",
            ))
        }
        other => c.trace.step(format!(
            "read back: BootSourceOverrideTarget {got}, but the override reads {other:?}, not Once: this BMC keeps it; the machine is answered \"boot the disk\" once it is done"
        )),
    }
    Ok(())
}

/// Resets the system (ForceRestart when on, On when off); says what it did.
fn reset(
    c: &mut Client<'_>,
    path: &str,
    sys: &Value,
    power: &Option<Power>,
) -> Result<String, Failure> {
    let action = &sys["Actions"]["#ComputerSystem.Reset"];
    let target = action["target"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{}/Actions/ComputerSystem.Reset",
                path.trim_end_matches('/')
            )
        });
    let types = allowed(action, "ResetType@Redfish.AllowableValues");
    let ok = |t: &str| types.as_ref().is_none_or(|v| v.contains(&t));
    let kind = match power {
        Some(Power::Off) => "On",
        _ if ok("ForceRestart") => "ForceRestart",
        _ if ok("PowerCycle") => "PowerCycle",
        _ if ok("GracefulRestart") => "GracefulRestart",
        _ => {
            return Err(Failure::fatal(format!(
                "the BMC offers no restart (it allows {})",
                types.unwrap_or_default().join(", ")
            )))
        }
    };
    let r = c.send(HttpRequest::new("POST", &target).json(&json!({ "ResetType": kind })))?;
    if !(200..300).contains(&r.status) {
        return Err(Failure::fatal(format!(
            "POST {target} {kind}: refused ({}{})",
            r.status,
            message(&r).map(|m| format!(": {m}")).unwrap_or_default()
        )));
    }
    Ok(match kind {
        "On" => "powered on".into(),
        k => format!("reset ({k})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// One scripted answer: status, header fields, JSON body (`Null`: none).
    type Answer = (u16, Vec<(&'static str, &'static str)>, Value);

    /// Answers from a script, recording what was asked.
    struct Script {
        answers: VecDeque<Answer>,
        asked: Vec<HttpRequest>,
    }

    impl Http for Script {
        fn call(&mut self, req: &HttpRequest) -> Result<HttpReply, Failure> {
            self.asked.push(req.clone());
            let (status, headers, body) = self
                .answers
                .pop_front()
                .ok_or_else(|| Failure::transient("no more answers"))?;
            Ok(HttpReply {
                status,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: if body.is_null() {
                    Vec::new()
                } else {
                    body.to_string().into_bytes()
                },
            })
        }
    }

    fn cred() -> Credentials {
        Credentials {
            user: "admin".into(),
            secret: zeroize::Zeroizing::new("pw".into()),
        }
    }

    fn system(target: &str, enabled: &str, power: &str) -> Value {
        json!({"PowerState": power, "Boot": {"BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": enabled,
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]},
            "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}}})
    }

    fn root(sessions: bool) -> Value {
        let mut r = json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}});
        if sessions {
            r["Links"] = json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
        }
        r
    }

    fn members() -> Value {
        json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
    }

    #[test]
    fn netboot_with_a_session_uses_if_match_reads_back_and_deletes_the_session() {
        let mut s = Script {
            answers: VecDeque::from([
                (200, vec![], root(true)),
                (
                    201,
                    vec![
                        ("X-Auth-Token", "tok"),
                        (
                            "Location",
                            "https://10.0.0.1/redfish/v1/SessionService/Sessions/7",
                        ),
                    ],
                    Value::Null,
                ),
                (200, vec![], members()),
                (
                    200,
                    vec![("ETag", "W/\"1\"")],
                    system("Hdd", "Disabled", "On"),
                ),
                (204, vec![], Value::Null),
                (200, vec![], system("Pxe", "Once", "On")),
                (204, vec![], Value::Null),
                (204, vec![], Value::Null),
            ]),
            asked: vec![],
        };
        let mut t = Trace::default();
        let m = Machine {
            uefi: true,
            uuid: None,
        };
        let o = run(&mut s, &cred(), &m, Op::NetbootOnce, &mut t).unwrap();
        assert_eq!(o.power, Some(Power::On));
        assert!(
            o.summary
                .contains("one-time PXE boot set, reset (ForceRestart)"),
            "{o:?}"
        );
        let patch = &s.asked[4];
        assert_eq!(patch.method, "PATCH");
        assert!(patch
            .headers
            .contains(&("If-Match".into(), "W/\"1\"".into())));
        assert!(patch
            .headers
            .contains(&("X-Auth-Token".into(), "tok".into())));
        let body: Value = serde_json::from_slice(&patch.body).unwrap();
        assert_eq!(body["Boot"]["BootSourceOverrideMode"], "UEFI");
        assert_eq!(body["Boot"]["BootSourceOverrideEnabled"], "Once");
        let reset: Value = serde_json::from_slice(&s.asked[6].body).unwrap();
        assert_eq!(reset["ResetType"], "ForceRestart");
        assert_eq!(s.asked[7].method, "DELETE");
        assert_eq!(s.asked[7].path, "/redfish/v1/SessionService/Sessions/7");
        // The password went only into the login body, never into the trace.
        assert!(!t.0.iter().any(|l| l.contains("pw")));
    }

    #[test]
    fn a_refused_mode_is_retried_without_it_and_an_off_machine_is_powered_on() {
        let mut s = Script {
            answers: VecDeque::from([
                (200, vec![], root(false)),
                (200, vec![], members()),
                (200, vec![], system("Hdd", "Disabled", "Off")),
                (
                    400,
                    vec![],
                    json!({"error": {"message": "BootSourceOverrideMode is read-only"}}),
                ),
                (200, vec![], Value::Null),
                (200, vec![], system("Pxe", "Once", "Off")),
                (202, vec![], Value::Null),
            ]),
            asked: vec![],
        };
        let mut t = Trace::default();
        let m = Machine {
            uefi: true,
            uuid: None,
        };
        let o = run(&mut s, &cred(), &m, Op::NetbootOnce, &mut t).unwrap();
        assert!(o.summary.ends_with("powered on"), "{o:?}");
        let second: Value = serde_json::from_slice(&s.asked[4].body).unwrap();
        assert!(second["Boot"].get("BootSourceOverrideMode").is_none());
        assert!(
            s.asked[0].headers.is_empty(),
            "the service root is asked without credentials"
        );
        assert!(s.asked[1].headers[0].1.starts_with("Basic "));
        let reset: Value = serde_json::from_slice(&s.asked[6].body).unwrap();
        assert_eq!(reset["ResetType"], "On");
    }

    #[test]
    fn an_override_the_bmc_drops_is_a_failure_and_no_reset_follows() {
        let mut s = Script {
            answers: VecDeque::from([
                (200, vec![], root(false)),
                (200, vec![], members()),
                (200, vec![], system("Hdd", "Disabled", "On")),
                (200, vec![], Value::Null),
                (200, vec![], system("Hdd", "Disabled", "On")),
            ]),
            asked: vec![],
        };
        let e = run(
            &mut s,
            &cred(),
            &Machine::default(),
            Op::NetbootOnce,
            &mut Trace::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("did not keep it"), "{e}");
        assert_eq!(s.asked.len(), 5, "no reset after a failed override");
    }

    #[test]
    fn refusals_say_what_happened() {
        let mut s = Script {
            answers: VecDeque::from([(401, vec![], Value::Null), (401, vec![], Value::Null)]),
            asked: vec![],
        };
        let e = run(
            &mut s,
            &cred(),
            &Machine::default(),
            Op::Status,
            &mut Trace::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("credentials refused"), "{e}");
        assert!(!e.transient);
        let mut s = Script {
            answers: VecDeque::from([(503, vec![], Value::Null)]),
            asked: vec![],
        };
        let e = run(
            &mut s,
            &cred(),
            &Machine::default(),
            Op::Status,
            &mut Trace::default(),
        )
        .unwrap_err();
        assert!(e.transient, "{e}");
        // Two systems and no UUID known: refused rather than guessed.
        let mut s = Script {
            answers: VecDeque::from([
                (200, vec![], root(false)),
                (
                    200,
                    vec![],
                    json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}, {"@odata.id": "/redfish/v1/Systems/2"}]}),
                ),
            ]),
            asked: vec![],
        };
        let e = run(
            &mut s,
            &cred(),
            &Machine::default(),
            Op::Status,
            &mut Trace::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("2 systems"), "{e}");
    }

    #[test]
    fn several_systems_are_told_apart_by_uuid() {
        let mut two = system("Hdd", "Disabled", "Off");
        two["UUID"] = json!("AAAA-BB");
        let mut one = system("Hdd", "Disabled", "On");
        one["UUID"] = json!("1111");
        let mut s = Script {
            answers: VecDeque::from([
                (200, vec![], root(false)),
                (
                    200,
                    vec![],
                    json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}, {"@odata.id": "/redfish/v1/Systems/2"}]}),
                ),
                (200, vec![], one),
                (200, vec![], two.clone()),
                (200, vec![], two),
            ]),
            asked: vec![],
        };
        let m = Machine {
            uefi: false,
            uuid: Some("aaaa-bb".into()),
        };
        let o = run(&mut s, &cred(), &m, Op::Status, &mut Trace::default()).unwrap();
        assert_eq!(o.power, Some(Power::Off));
        assert_eq!(s.asked[4].path, "/redfish/v1/Systems/2");
    }
}
