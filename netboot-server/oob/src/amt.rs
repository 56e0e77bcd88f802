//! Intel AMT over WS-Management (SOAP over HTTP with digest auth, port 16992, 16993 with TLS):
//! the one-time PXE boot as Intel documents it. Read `AMT_BootCapabilities` (ForcePXEBoot),
//! read the power state, clear the boot order (`CIM_BootConfigSetting.ChangeBootOrder` with no
//! source), put `AMT_BootSettingData` (no BIOS pause or setup, no IDE-R or SOL),
//! `CIM_BootService.SetBootConfigRole` ("Intel(r) AMT: Boot Configuration 0", role 1),
//! `ChangeBootOrder` with "Intel(r) AMT: Force PXE Boot", then
//! `CIM_PowerManagementService.RequestPowerStateChange` (10, master bus reset, when on; 2, on,
//! when off). Each method's ReturnValue is checked; the first non-zero one stops the sequence.
use crate::xml;
use crate::{Credentials, Failure, Http, HttpReply, HttpRequest, Op, Outcome, Power, Trace};

const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";
const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";
const PUT: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put";
const ENUMERATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";
const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";

/// The boot configuration AMT applies to the next boot.
pub const BOOT_CONFIG: &str = "Intel(r) AMT: Boot Configuration 0";
/// The boot source that forces a PXE boot.
pub const FORCE_PXE: &str = "Intel(r) AMT: Force PXE Boot";
/// AMT's boot setting data instance.
pub const BOOT_SETTING_DATA: &str = "Intel(r) AMT:BootSettingData 0";

/// Builds one WS-Management envelope.
struct Envelope<'a> {
    action: &'a str,
    resource: String,
    selectors: Vec<(&'a str, &'a str)>,
    body: String,
}

impl Envelope<'_> {
    fn render(&self, message_id: &str) -> String {
        let mut sel = String::new();
        if !self.selectors.is_empty() {
            sel.push_str("<w:SelectorSet>");
            for (k, v) in &self.selectors {
                sel.push_str(&format!(
                    "<w:Selector Name=\"{k}\">{}</w:Selector>",
                    xml::escape(v)
                ));
            }
            sel.push_str("</w:SelectorSet>");
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<Envelope xmlns=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"{ADDRESSING}\" xmlns:w=\"{WSMAN}\">\
<Header><a:Action>{action}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{resource}</w:ResourceURI>\
<a:MessageID>{message_id}</a:MessageID><a:ReplyTo><a:Address>{ANONYMOUS}</a:Address></a:ReplyTo>\
<w:OperationTimeout>PT60S</w:OperationTimeout>{sel}</Header><Body>{body}</Body></Envelope>",
            action = self.action,
            resource = self.resource,
            body = self.body,
        )
    }
}

/// An endpoint reference to a CIM instance by InstanceID (for method parameters).
fn reference(class_uri: &str, selectors: &[(&str, &str)]) -> String {
    let mut s = format!(
        "<Address xmlns=\"{ADDRESSING}\">{ADDRESSING}</Address><ReferenceParameters xmlns=\"{ADDRESSING}\">\
<ResourceURI xmlns=\"{WSMAN}\">{class_uri}</ResourceURI><SelectorSet xmlns=\"{WSMAN}\">"
    );
    for (k, v) in selectors {
        s.push_str(&format!(
            "<Selector Name=\"{k}\">{}</Selector>",
            xml::escape(v)
        ));
    }
    s.push_str("</SelectorSet></ReferenceParameters>");
    s
}

/// Wraps a transport with HTTP digest authentication (RFC 7616; AMT asks for MD5, qop=auth):
/// the first request draws the challenge, later ones answer the same nonce with a counted nc
/// until the server asks again (stale).
pub struct Digest<'a> {
    inner: &'a mut dyn Http,
    cred: &'a Credentials,
    challenge: Option<digest_auth::WwwAuthenticateHeader>,
}

impl<'a> Digest<'a> {
    /// Over `inner`, as `cred`.
    pub fn new(inner: &'a mut dyn Http, cred: &'a Credentials) -> Self {
        Self {
            inner,
            cred,
            challenge: None,
        }
    }

    fn authorise(&mut self, req: &HttpRequest) -> Result<HttpRequest, Failure> {
        let Some(ch) = self.challenge.as_mut() else {
            return Ok(req.clone());
        };
        let ctx = digest_auth::AuthContext::new_with_method(
            self.cred.user.as_str(),
            self.cred.secret.as_str(),
            req.path.as_str(),
            Some(req.body.as_slice()),
            digest_auth::HttpMethod::from(req.method),
        );
        let h = ch
            .respond(&ctx)
            .map_err(|e| Failure::fatal(format!("digest auth: {e}")))?;
        Ok(req.clone().header("Authorization", h.to_header_string()))
    }
}

impl Http for Digest<'_> {
    fn call(&mut self, req: &HttpRequest) -> Result<HttpReply, Failure> {
        let first = self.authorise(req)?;
        let r = self.inner.call(&first)?;
        if r.status != 401 {
            return Ok(r);
        }
        let Some(www) = r.header("WWW-Authenticate").filter(|h| {
            h.trim_start()
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case("digest"))
        }) else {
            return Err(Failure::fatal(
                "digest auth refused (401 without a digest challenge)",
            ));
        };
        let fresh = self.challenge.is_none();
        let parsed = digest_auth::parse(www)
            .map_err(|e| Failure::fatal(format!("digest auth: bad challenge ({e})")))?;
        let stale = parsed.stale;
        self.challenge = Some(parsed);
        if !fresh && !stale {
            // We answered a challenge and it was refused: the credentials are wrong.
            return Err(Failure::fatal("digest auth refused"));
        }
        let again = self.authorise(req)?;
        let r = self.inner.call(&again)?;
        if r.status == 401 {
            return Err(Failure::fatal("digest auth refused"));
        }
        Ok(r)
    }
}

struct Session<'a, 'b> {
    http: &'a mut Digest<'b>,
    trace: &'a mut Trace,
    run_id: String,
    n: u32,
}

impl Session<'_, '_> {
    /// Sends one envelope; returns the answer's body after checking for HTTP errors and faults.
    fn send(&mut self, what: &str, env: Envelope<'_>) -> Result<Vec<u8>, Failure> {
        self.n += 1;
        let id = format!("uuid:{}-{:04}", self.run_id, self.n);
        let req = HttpRequest {
            method: "POST",
            path: "/wsman".into(),
            headers: Vec::new(),
            body: env.render(&id).into_bytes(),
            content_type: "application/soap+xml;charset=UTF-8",
        };
        let r = self.http.call(&req)?;
        if let Some(f) = xml::fault(&r.body) {
            self.trace.step(format!("{what}: fault: {f}"));
            return Err(Failure::fatal(format!("{what}: AMT answered a fault: {f}")));
        }
        match r.status {
            200 => {}
            500..=599 => {
                self.trace.step(format!("{what}: HTTP {}", r.status));
                return Err(Failure::transient(format!(
                    "{what}: AMT answered HTTP {}",
                    r.status
                )));
            }
            s => {
                self.trace.step(format!("{what}: HTTP {s}"));
                return Err(Failure::fatal(format!("{what}: AMT answered HTTP {s}")));
            }
        }
        Ok(r.body)
    }

    /// Calls a method and checks its ReturnValue.
    fn invoke(&mut self, what: &str, env: Envelope<'_>) -> Result<(), Failure> {
        let body = self.send(what, env)?;
        let rv = xml::text(&body, "ReturnValue")
            .map_err(|e| Failure::fatal(format!("{what}: {e}")))?
            .ok_or_else(|| Failure::fatal(format!("{what}: the answer has no ReturnValue")))?;
        self.trace.step(format!("{what}: ReturnValue {rv}"));
        if rv.trim() != "0" {
            return Err(Failure::fatal(format!(
                "{what}: AMT refused it (ReturnValue {}: {})",
                rv.trim(),
                return_value(rv.trim())
            )));
        }
        Ok(())
    }
}

/// CIM's method return codes in words.
fn return_value(rv: &str) -> &'static str {
    match rv {
        "1" => "not supported",
        "2" => "unknown or unspecified error",
        "3" => "timeout",
        "4" => "failed",
        "5" => "invalid parameter",
        "6" => "in use",
        _ => "see the AMT SDK's return codes",
    }
}

fn get(class: &str, uri_base: &str) -> Envelope<'static> {
    Envelope {
        action: GET,
        resource: format!("{uri_base}{class}"),
        selectors: vec![],
        body: String::new(),
    }
}

fn change_boot_order(source: Option<&str>) -> Envelope<'static> {
    let cls = format!("{CIM}CIM_BootConfigSetting");
    let inner = source
        .map(|s| {
            format!(
                "<h:Source>{}</h:Source>",
                reference(&format!("{CIM}CIM_BootSourceSetting"), &[("InstanceID", s)])
            )
        })
        .unwrap_or_default();
    Envelope {
        action: "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootConfigSetting/ChangeBootOrder",
        body: format!("<h:ChangeBootOrder_INPUT xmlns:h=\"{cls}\">{inner}</h:ChangeBootOrder_INPUT>"),
        resource: cls,
        selectors: vec![("InstanceID", BOOT_CONFIG)],
    }
}

fn set_boot_config_role() -> Envelope<'static> {
    let cls = format!("{CIM}CIM_BootService");
    Envelope {
        action: "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootService/SetBootConfigRole",
        body: format!(
            "<h:SetBootConfigRole_INPUT xmlns:h=\"{cls}\"><h:BootConfigSetting>{}</h:BootConfigSetting><h:Role>1</h:Role></h:SetBootConfigRole_INPUT>",
            reference(&format!("{CIM}CIM_BootConfigSetting"), &[("InstanceID", BOOT_CONFIG)])
        ),
        resource: cls,
        selectors: vec![
            ("CreationClassName", "CIM_BootService"),
            ("Name", "Intel(r) AMT Boot Service"),
            ("SystemCreationClassName", "CIM_ComputerSystem"),
            ("SystemName", "Intel(r) AMT"),
        ],
    }
}

/// The boot setting data for a plain one-time boot: nothing paused, redirected or locked.
fn put_boot_setting_data() -> Envelope<'static> {
    let cls = format!("{AMT}AMT_BootSettingData");
    let fields = [
        ("BIOSLastStatus", None),
        ("BIOSPause", Some("false")),
        ("BIOSSetup", Some("false")),
        ("BootMediaIndex", Some("0")),
        ("ConfigurationDataReset", Some("false")),
        (
            "ElementName",
            Some("Intel(r) AMT Boot Configuration Settings"),
        ),
        ("EnforceSecureBoot", Some("false")),
        ("FirmwareVerbosity", Some("0")),
        ("ForcedProgressEvents", Some("false")),
        ("IDERBootDevice", Some("0")),
        ("InstanceID", Some(BOOT_SETTING_DATA)),
        ("LockKeyboard", Some("false")),
        ("LockPowerButton", Some("false")),
        ("LockResetButton", Some("false")),
        ("LockSleepButton", Some("false")),
        ("OwningEntity", Some("Intel(r) AMT")),
        ("ReflashBIOS", Some("false")),
        ("SecureErase", Some("false")),
        ("UseIDER", Some("false")),
        ("UseSOL", Some("false")),
        ("UseSafeMode", Some("false")),
        ("UserPasswordBypass", Some("false")),
    ];
    let mut body = format!("<h:AMT_BootSettingData xmlns:h=\"{cls}\">");
    for (k, v) in fields {
        if let Some(v) = v {
            body.push_str(&format!("<h:{k}>{}</h:{k}>", xml::escape(v)));
        }
    }
    body.push_str("</h:AMT_BootSettingData>");
    Envelope {
        action: PUT,
        resource: cls,
        selectors: vec![],
        body,
    }
}

fn request_power_state_change(state: u32) -> Envelope<'static> {
    let cls = format!("{CIM}CIM_PowerManagementService");
    Envelope {
        action: "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChange",
        body: format!(
            "<h:RequestPowerStateChange_INPUT xmlns:h=\"{cls}\"><h:PowerState>{state}</h:PowerState><h:ManagedElement>{}</h:ManagedElement></h:RequestPowerStateChange_INPUT>",
            reference(
                &format!("{CIM}CIM_ComputerSystem"),
                &[("CreationClassName", "CIM_ComputerSystem"), ("Name", "ManagedSystem")]
            )
        ),
        resource: cls,
        selectors: vec![
            ("CreationClassName", "CIM_PowerManagementService"),
            ("Name", "Intel(r) AMT Power Management Service"),
            ("SystemCreationClassName", "CIM_ComputerSystem"),
            ("SystemName", "Intel(r) AMT"),
        ],
    }
}

/// CIM power states: 2 on; 3, 4 sleeping; 6, 8, 12, 13 off; 7 hibernating.
fn power_of(code: &str) -> Power {
    match code.trim() {
        "2" => Power::On,
        "6" | "8" | "12" | "13" => Power::Off,
        "3" | "4" => Power::Other("sleeping".into()),
        "7" => Power::Other("hibernating".into()),
        other => Power::Other(format!("power state {other}")),
    }
}

fn power_state(s: &mut Session<'_, '_>) -> Result<Power, Failure> {
    let cls = format!("{CIM}CIM_ServiceAvailableToElement");
    let body = s.send(
        "Enumerate CIM_ServiceAvailableToElement",
        Envelope {
            action: ENUMERATE,
            resource: cls.clone(),
            selectors: vec![],
            body: format!("<Enumerate xmlns=\"{ENUMERATION}\"/>"),
        },
    )?;
    let ctx = xml::text(&body, "EnumerationContext")
        .map_err(Failure::fatal)?
        .ok_or_else(|| Failure::fatal("Enumerate: no EnumerationContext in the answer"))?;
    let body = s.send(
        "Pull CIM_ServiceAvailableToElement",
        Envelope {
            action: PULL,
            resource: cls,
            selectors: vec![],
            body: format!(
                "<Pull xmlns=\"{ENUMERATION}\"><EnumerationContext>{}</EnumerationContext><MaxElements>999</MaxElements><MaxCharacters>99999</MaxCharacters></Pull>",
                xml::escape(&ctx)
            ),
        },
    )?;
    let code = xml::text(&body, "PowerState")
        .map_err(Failure::fatal)?
        .ok_or_else(|| Failure::fatal("Pull: no PowerState in the answer"))?;
    let p = power_of(&code);
    s.trace.step(format!("power state {} ({p})", code.trim()));
    Ok(p)
}

/// Runs `op` against the AMT behind `http` (digest auth is added here). `run_id` makes the
/// message IDs unique.
pub fn run(
    http: &mut dyn Http,
    cred: &Credentials,
    op: Op,
    run_id: &str,
    trace: &mut Trace,
) -> Result<Outcome, Failure> {
    let mut digest = Digest::new(http, cred);
    let mut s = Session {
        http: &mut digest,
        trace,
        run_id: run_id.to_string(),
        n: 0,
    };
    let caps = s.send("Get AMT_BootCapabilities", get("AMT_BootCapabilities", AMT))?;
    let pxe = xml::text(&caps, "ForcePXEBoot")
        .map_err(Failure::fatal)?
        .map(|v| v.trim().eq_ignore_ascii_case("true"));
    s.trace.step(format!(
        "AMT_BootCapabilities: ForcePXEBoot {}",
        pxe.map(|b| b.to_string())
            .unwrap_or_else(|| "not listed".into())
    ));
    let power = power_state(&mut s)?;
    let mut outcome = Outcome {
        power: Some(power.clone()),
        can_netboot: pxe,
        summary: String::new(),
    };
    // Master bus reset when running, power on otherwise.
    let (state, did) = match power {
        Power::On => (10, "reset (master bus reset)"),
        _ => (2, "powered on"),
    };
    match op {
        Op::Status => {
            outcome.summary = format!(
                "AMT: power {power}; {}",
                if pxe == Some(true) {
                    "can force a PXE boot"
                } else {
                    "cannot force a PXE boot (ForcePXEBoot is not offered)"
                }
            );
            return Ok(outcome);
        }
        Op::NetbootOnce => {
            if pxe != Some(true) {
                return Err(Failure::fatal(
                    "AMT_BootCapabilities does not offer ForcePXEBoot",
                ));
            }
            s.invoke("ChangeBootOrder (clear)", change_boot_order(None))?;
            s.send("Put AMT_BootSettingData", put_boot_setting_data())?;
            s.trace.step("AMT_BootSettingData put");
            s.invoke("SetBootConfigRole", set_boot_config_role())?;
            s.invoke(
                "ChangeBootOrder (Force PXE Boot)",
                change_boot_order(Some(FORCE_PXE)),
            )?;
        }
        Op::BootDisk => {
            s.invoke("ChangeBootOrder (clear)", change_boot_order(None))?;
            s.invoke("SetBootConfigRole", set_boot_config_role())?;
        }
        Op::PowerCycle => {}
    }
    s.invoke(
        &format!("RequestPowerStateChange {state}"),
        request_power_state_change(state),
    )?;
    outcome.summary = match op {
        Op::NetbootOnce => format!("AMT: one-time PXE boot set, {did}"),
        Op::BootDisk => format!("AMT: boot order cleared (disk), {did}"),
        _ => format!("AMT: {did}"),
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AMT that answers from the envelope's action, recording them.
    struct Fake {
        actions: Vec<String>,
        bodies: Vec<String>,
        power: &'static str,
        fail: Option<&'static str>,
    }

    impl Http for Fake {
        fn call(&mut self, req: &HttpRequest) -> Result<HttpReply, Failure> {
            let body = String::from_utf8(req.body.clone()).unwrap();
            if !req.headers.iter().any(|(k, _)| k == "Authorization") {
                return Ok(HttpReply {
                    status: 401,
                    headers: vec![(
                        "WWW-Authenticate".into(),
                        r#"Digest realm="Digest:0000", nonce="abc", stale="false", qop="auth""#
                            .into(),
                    )],
                    body: vec![],
                });
            }
            let action = xml::text(body.as_bytes(), "Action").unwrap().unwrap();
            self.actions
                .push(action.rsplit('/').next().unwrap().to_string());
            self.bodies.push(body);
            let method = action.rsplit('/').next().unwrap();
            let out = match method {
                "Get" => "<g:AMT_BootCapabilities><g:ForcePXEBoot>true</g:ForcePXEBoot></g:AMT_BootCapabilities>".to_string(),
                "Enumerate" => "<g:EnumerateResponse><g:EnumerationContext>ctx-1</g:EnumerationContext></g:EnumerateResponse>".into(),
                "Pull" => format!("<g:PullResponse><g:Items><h:CIM_AssociatedPowerManagementService><h:PowerState>{}</h:PowerState></h:CIM_AssociatedPowerManagementService></g:Items></g:PullResponse>", self.power),
                "Put" => "<g:AMT_BootSettingData/>".into(),
                m => format!(
                    "<g:{m}_OUTPUT><g:ReturnValue>{}</g:ReturnValue></g:{m}_OUTPUT>",
                    if self.fail == Some(m) { 1 } else { 0 }
                ),
            };
            Ok(HttpReply {
                status: 200,
                headers: vec![],
                body: format!("<a:Envelope xmlns:a=\"s\" xmlns:g=\"x\" xmlns:h=\"y\"><a:Body>{out}</a:Body></a:Envelope>").into_bytes(),
            })
        }
    }

    fn cred() -> Credentials {
        Credentials {
            user: "admin".into(),
            secret: zeroize::Zeroizing::new("P@ssw0rd".into()),
        }
    }

    #[test]
    fn the_pxe_sequence_is_intels_order() {
        let mut f = Fake {
            actions: vec![],
            bodies: vec![],
            power: "2",
            fail: None,
        };
        let mut t = Trace::default();
        let o = run(&mut f, &cred(), Op::NetbootOnce, "r1", &mut t).unwrap();
        assert_eq!(
            f.actions,
            [
                "Get",
                "Enumerate",
                "Pull",
                "ChangeBootOrder",
                "Put",
                "SetBootConfigRole",
                "ChangeBootOrder",
                "RequestPowerStateChange"
            ]
        );
        assert!(!f.bodies[3].contains("<h:Source>"));
        assert!(f.bodies[6].contains(FORCE_PXE));
        assert!(f.bodies[5].contains("<h:Role>1</h:Role>") && f.bodies[5].contains(BOOT_CONFIG));
        assert!(f.bodies[4].contains("<h:UseSOL>false</h:UseSOL>"));
        assert!(f.bodies[7].contains("<h:PowerState>10</h:PowerState>"));
        assert_eq!(
            o.summary,
            "AMT: one-time PXE boot set, reset (master bus reset)"
        );
        assert!(!t.0.join("\n").contains("P@ssw0rd"));
    }

    #[test]
    fn an_off_machine_is_powered_on_and_a_refusal_stops_the_sequence() {
        let mut f = Fake {
            actions: vec![],
            bodies: vec![],
            power: "8",
            fail: None,
        };
        run(&mut f, &cred(), Op::NetbootOnce, "r", &mut Trace::default()).unwrap();
        assert!(f
            .bodies
            .last()
            .unwrap()
            .contains("<h:PowerState>2</h:PowerState>"));
        let mut f = Fake {
            actions: vec![],
            bodies: vec![],
            power: "2",
            fail: Some("SetBootConfigRole"),
        };
        let e = run(&mut f, &cred(), Op::NetbootOnce, "r", &mut Trace::default()).unwrap_err();
        assert!(
            e.message
                .contains("SetBootConfigRole: AMT refused it (ReturnValue 1"),
            "{e}"
        );
        assert_eq!(f.actions.last().unwrap(), "SetBootConfigRole");
    }
}
