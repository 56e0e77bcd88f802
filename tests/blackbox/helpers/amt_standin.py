#!/usr/bin/env python3
"""A stand-in for Intel AMT's WS-Management service (no emulator exists), written from Intel's
documented message shapes and independent of unbrick's client.

HTTP digest auth (MD5, qop=auth) on POST /wsman. It answers Get AMT_BootCapabilities,
Enumerate/Pull of CIM_ServiceAvailableToElement (PowerState), ChangeBootOrder, Put
AMT_BootSettingData, SetBootConfigRole and RequestPowerStateChange, and refuses a one-time boot
set up out of order or incompletely (ReturnValue 1 for a step out of order, 2 for a power change
after an incomplete boot configuration). Every accepted call is a JSON line in --log; with
--chassis DIR a power change with the PXE boot armed writes DIR/boot=pxe and asks for a reset.

usage: amt_standin.py ADDRESS PORT USER PASSWORD --log FILE [--power 2|8] [--chassis DIR]
"""
import argparse
import hashlib
import http.server
import json
import os
import re
import secrets
import xml.etree.ElementTree as ET

CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
AMT = "http://intel.com/wbem/wscim/1/amt-schema/1/"
REALM = "Digest:F3EB554784E729164447A89F60B641C5"


def local(tag):
    return tag.rsplit("}", 1)[-1]


def find(el, name):
    for e in el.iter():
        if local(e.tag) == name:
            return e
    return None


def find_all(el, name):
    return [e for e in el.iter() if local(e.tag) == name]


class State:
    def __init__(self, power):
        self.power = power
        # The one-time boot: cleared -> settings put -> role set -> PXE source set.
        self.step = "none"
        self.nonces = set()
        self.contexts = set()


def envelope(body, action):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:g="' + CIM + 'X" xmlns:h="' + AMT + 'Y">'
        "<a:Header><b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>"
        "<b:Action>" + action + "Response</b:Action>"
        "<b:MessageID>uuid:" + secrets.token_hex(8) + "</b:MessageID></a:Header>"
        "<a:Body>" + body + "</a:Body></a:Envelope>"
    )


def fault(reason):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope"><a:Body><a:Fault>'
        "<a:Code><a:Value>a:Sender</a:Value></a:Code>"
        '<a:Reason><a:Text xml:lang="en-US">' + reason + "</a:Text></a:Reason>"
        "</a:Fault></a:Body></a:Envelope>"
    )


def method_out(name, rv):
    return "<g:%s_OUTPUT><g:ReturnValue>%d</g:ReturnValue></g:%s_OUTPUT>" % (name, rv, name)


def make_handler(args, state):
    def log(entry):
        with open(args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def chassis(name, value):
        if args.chassis:
            with open(os.path.join(args.chassis, name), "w") as f:
                f.write(value)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, code, body, extra=()):
            data = body.encode()
            self.send_response(code)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/soap+xml; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def challenge(self, stale=False):
            nonce = secrets.token_hex(16)
            state.nonces.add(nonce)
            h = 'Digest realm="%s", nonce="%s", stale="%s", qop="auth"' % (
                REALM, nonce, "true" if stale else "false")
            log({"auth": "challenge"})
            self.reply(401, "", [("WWW-Authenticate", h)])

        def authorised(self):
            h = self.headers.get("Authorization", "")
            if not h.startswith("Digest "):
                return False
            f = {k: (a or b) for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', h[7:])}
            if f.get("nonce") not in state.nonces or f.get("realm") != REALM:
                return False
            if f.get("username") != args.user or f.get("qop") != "auth":
                log({"auth": "refused", "user": f.get("username")})
                return False
            ha1 = hashlib.md5(("%s:%s:%s" % (args.user, REALM, args.password)).encode()).hexdigest()
            ha2 = hashlib.md5(("POST:%s" % f.get("uri")).encode()).hexdigest()
            want = hashlib.md5(("%s:%s:%s:%s:%s:%s" % (
                ha1, f["nonce"], f.get("nc"), f.get("cnonce"), "auth", ha2)).encode()).hexdigest()
            if want != f.get("response"):
                log({"auth": "refused", "user": f.get("username")})
                return False
            return True

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n)
            if self.path != "/wsman":
                return self.reply(404, "")
            if not self.authorised():
                return self.challenge()
            try:
                doc = ET.fromstring(raw)
            except ET.ParseError as e:
                return self.reply(400, fault("malformed XML: %s" % e))
            action = (find(doc, "Action").text or "").strip()
            resource = (find(doc, "ResourceURI").text or "").strip()
            header = find(doc, "Header")
            selectors = {s.get("Name"): (s.text or "") for s in find_all(header, "Selector")}
            body = find(doc, "Body")
            verb = action.rsplit("/", 1)[-1]
            entry = {"action": verb, "resource": resource.rsplit("/", 1)[-1],
                     "selectors": selectors}
            if not find(doc, "MessageID").text.startswith("uuid:"):
                return self.reply(400, fault("MessageID must be a uuid: URI"))
            if verb == "Get" and resource == AMT + "AMT_BootCapabilities":
                log(entry)
                return self.reply(200, envelope(
                    "<h:AMT_BootCapabilities><h:ElementName>Intel(r) AMT: Boot Capabilities</h:ElementName>"
                    "<h:ForcePXEBoot>true</h:ForcePXEBoot><h:ForceHardDriveBoot>true</h:ForceHardDriveBoot>"
                    "<h:IDER>true</h:IDER><h:SOL>true</h:SOL></h:AMT_BootCapabilities>", action))
            if verb == "Enumerate" and resource.endswith("CIM_ServiceAvailableToElement"):
                ctx = secrets.token_hex(4)
                state.contexts.add(ctx)
                log(entry)
                return self.reply(200, envelope(
                    "<g:EnumerateResponse><g:EnumerationContext>%s</g:EnumerationContext></g:EnumerateResponse>" % ctx,
                    action))
            if verb == "Pull" and resource.endswith("CIM_ServiceAvailableToElement"):
                ctx = (find(body, "EnumerationContext").text or "").strip()
                if ctx not in state.contexts:
                    return self.reply(400, fault("unknown enumeration context"))
                state.contexts.discard(ctx)
                log(entry)
                return self.reply(200, envelope(
                    "<g:PullResponse><g:Items><h:CIM_AssociatedPowerManagementService>"
                    "<h:PowerState>%d</h:PowerState></h:CIM_AssociatedPowerManagementService>"
                    "</g:Items><g:EndOfSequence/></g:PullResponse>" % state.power, action))
            if verb == "ChangeBootOrder" and resource == CIM + "CIM_BootConfigSetting":
                if selectors.get("InstanceID") != "Intel(r) AMT: Boot Configuration 0":
                    return self.reply(400, fault("no such boot configuration"))
                source = find(body, "Source")
                if source is None:
                    state.step = "cleared"
                    entry["source"] = None
                    rv = 0
                else:
                    sid = {s.get("Name"): s.text for s in find_all(source, "Selector")}
                    entry["source"] = sid.get("InstanceID")
                    if state.step != "role" or sid.get("InstanceID") != "Intel(r) AMT: Force PXE Boot":
                        rv = 1
                    else:
                        state.step = "pxe"
                        rv = 0
                entry["return"] = rv
                log(entry)
                return self.reply(200, envelope(method_out("ChangeBootOrder", rv), action))
            if verb == "Put" and resource == AMT + "AMT_BootSettingData":
                data = {local(e.tag): (e.text or "") for e in list(find(body, "AMT_BootSettingData"))}
                entry["data"] = data
                bad = [k for k in ("BIOSPause", "BIOSSetup", "UseIDER", "UseSOL") if data.get(k) != "false"]
                if state.step != "cleared" or bad or data.get("InstanceID") != "Intel(r) AMT:BootSettingData 0":
                    log(entry)
                    return self.reply(400, fault("boot setting data refused: %s" % (bad or state.step)))
                state.step = "settings"
                log(entry)
                return self.reply(200, envelope(
                    "<h:AMT_BootSettingData>" + "".join(
                        "<h:%s>%s</h:%s>" % (k, v, k) for k, v in data.items()) + "</h:AMT_BootSettingData>",
                    action))
            if verb == "SetBootConfigRole" and resource == CIM + "CIM_BootService":
                role = (find(body, "Role").text or "").strip()
                ref = {s.get("Name"): s.text for s in find_all(find(body, "BootConfigSetting"), "Selector")}
                entry["role"] = role
                entry["config"] = ref.get("InstanceID")
                ok = (state.step in ("settings", "cleared") and role == "1"
                      and ref.get("InstanceID") == "Intel(r) AMT: Boot Configuration 0")
                rv = 0 if ok else 1
                if ok:
                    state.step = "role"
                entry["return"] = rv
                log(entry)
                return self.reply(200, envelope(method_out("SetBootConfigRole", rv), action))
            if verb == "RequestPowerStateChange" and resource == CIM + "CIM_PowerManagementService":
                want = int((find(body, "PowerState").text or "0").strip())
                entry["power_state"] = want
                # A boot configuration begun and not finished is refused.
                if state.step not in ("none", "pxe", "role"):
                    rv = 2
                elif want == 10 and state.power != 2:
                    rv = 2
                elif want == 2 and state.power == 2:
                    rv = 2
                else:
                    rv = 0
                entry["return"] = rv
                log(entry)
                if rv == 0:
                    chassis("boot", "pxe" if state.step == "pxe" else "none")
                    chassis("reset", "1")
                    state.power = 2
                    state.step = "none"
                return self.reply(200, envelope(method_out("RequestPowerStateChange", rv), action))
            log(dict(entry, refused="unknown"))
            return self.reply(400, fault("unsupported: %s %s" % (verb, resource)))

    return H


def main():
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--log", required=True)
    p.add_argument("--power", type=int, default=2)
    p.add_argument("--chassis")
    args = p.parse_args()
    state = State(args.power)
    srv = http.server.ThreadingHTTPServer((args.address, args.port), make_handler(args, state))
    print("amt stand-in listening", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
