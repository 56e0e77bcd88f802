#!/usr/bin/env python3
"""A small Redfish service for what sushy-emulator lacks (it sends no ETag and has no
sessions), written from DMTF DSP0266 and independent of unbrick's client.

HTTPS with the given certificate. Sessions are required (POST SessionService/Sessions with
UserName/Password gives X-Auth-Token and Location; basic auth is refused with 401); a PATCH of
the system needs If-Match with its current ETag (428 without, 412 on a stale one). Modes:
--refuse-mode answers 400 to a PATCH that carries BootSourceOverrideMode, --revert answers 204
and keeps nothing, --fail500 answers 500 to everything, --hang accepts connections and never
answers. Every request is a JSON line in --log; with --chassis DIR a reset with a one-time PXE
override pending writes DIR/boot=pxe and asks for a reset (the override is then used up).

usage: redfish_standin.py ADDRESS PORT USER PASSWORD --cert C --key K --log F [mode...]
"""
import argparse
import http.server
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time

SYS = "/redfish/v1/Systems/System.Embedded.1"
SESSIONS = "/redfish/v1/SessionService/Sessions"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--log", required=True)
    p.add_argument("--chassis")
    p.add_argument("--power", default="On")
    p.add_argument("--refuse-mode", action="store_true")
    p.add_argument("--revert", action="store_true")
    p.add_argument("--fail500", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--plain", action="store_true", help="HTTP, no TLS")
    p.add_argument("--fleet", action="store_true",
                   help="one system per local address the request came to (bind 0.0.0.0)")
    p.add_argument("--announce", action="store_true",
                   help="print 'reset ADDRESS pxe|none' for each reset")
    args = p.parse_args()
    ctx = None
    if not args.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)

    if args.hang:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.address, args.port))
        s.listen(64)
        print("redfish stand-in hanging", flush=True)
        held = []
        while True:
            c, _ = s.accept()
            held.append(c)  # never read, never answered

    if args.fleet:
        # Run by the fleet simulator with a pipe on stdin: when the simulator ends (or dies),
        # so does the stand-in.
        def watch():
            sys.stdin.read()
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()

    lock = threading.Lock()
    systems = {}

    def state_of(handler):
        key = handler.connection.getsockname()[0] if args.fleet else ""
        with lock:
            if key not in systems:
                systems[key] = {"etag": 1, "target": "Hdd", "enabled": "Disabled", "mode": "UEFI",
                                "power": args.power, "tokens": {}, "n": 0, "address": key}
            return systems[key]

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

        def send(self, code, obj=None, headers=()):
            data = json.dumps(obj).encode() if obj is not None else b""
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            if obj is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, code, msg):
            self.send(code, {"error": {"code": "Base.1.8.GeneralError", "message": msg,
                                       "@Message.ExtendedInfo": [{"Message": msg}]}})

        def body(self):
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return None

        def handle_any(self, method):
            st = state_of(self)
            b = self.body() if method in ("POST", "PATCH") else {}
            tok = self.headers.get("X-Auth-Token")
            entry = {"method": method, "path": self.path, "token": bool(tok),
                     "basic": self.headers.get("Authorization", "").startswith("Basic "),
                     "if_match": self.headers.get("If-Match")}
            if method == "PATCH":
                entry["body"] = b
            if method == "POST" and self.path != SESSIONS:
                entry["body"] = b
            log(entry)
            if args.fail500:
                return self.error(500, "internal error (stand-in told to fail)")
            if b is None:
                return self.error(400, "malformed JSON")
            if method == "GET" and self.path in ("/redfish/v1", "/redfish/v1/"):
                return self.send(200, {"@odata.id": "/redfish/v1/", "RedfishVersion": "1.11.0",
                                       "Systems": {"@odata.id": "/redfish/v1/Systems"},
                                       "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                                       "Links": {"Sessions": {"@odata.id": SESSIONS}}})
            if method == "POST" and self.path == SESSIONS:
                if b.get("UserName") != args.user or b.get("Password") != args.password:
                    return self.error(401, "invalid credentials")
                with lock:
                    st["n"] += 1
                    t = secrets.token_hex(16)
                    st["tokens"][t] = "%s/%d" % (SESSIONS, st["n"])
                    loc = st["tokens"][t]
                return self.send(201, {"@odata.id": loc, "UserName": args.user},
                                 [("X-Auth-Token", t), ("Location", loc)])
            with lock:
                session = st["tokens"].get(tok)
            if session is None:
                return self.error(401, "a session is required (X-Auth-Token)")
            if method == "DELETE" and self.path.startswith(SESSIONS + "/"):
                with lock:
                    if self.path != session:
                        return self.error(403, "not your session")
                    del st["tokens"][tok]
                log({"session": "deleted", "path": self.path})
                return self.send(204)
            if method == "GET" and self.path == "/redfish/v1/Systems":
                return self.send(200, {"Members": [{"@odata.id": SYS}], "Members@odata.count": 1})
            if self.path == SYS and method == "GET":
                with lock:
                    etag = 'W/"%d"' % st["etag"]
                    obj = {"@odata.id": SYS, "Id": "System.Embedded.1", "PowerState": st["power"],
                           "Boot": {"BootSourceOverrideTarget": st["target"],
                                    "BootSourceOverrideEnabled": st["enabled"],
                                    "BootSourceOverrideMode": st["mode"],
                                    "BootSourceOverrideTarget@Redfish.AllowableValues":
                                        ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]},
                           "Actions": {"#ComputerSystem.Reset": {
                               "target": SYS + "/Actions/ComputerSystem.Reset",
                               "ResetType@Redfish.AllowableValues":
                                   ["On", "ForceOff", "ForceRestart", "GracefulRestart"]}}}
                return self.send(200, obj, [("ETag", etag)])
            if self.path == SYS and method == "PATCH":
                im = self.headers.get("If-Match")
                with lock:
                    etag = 'W/"%d"' % st["etag"]
                if im is None:
                    return self.error(428, "If-Match is required")
                if im != etag:
                    return self.error(412, "the resource changed (ETag %s)" % etag)
                boot = b.get("Boot") or {}
                if args.refuse_mode and "BootSourceOverrideMode" in boot:
                    return self.error(400, "BootSourceOverrideMode is read-only on this system")
                if args.revert:
                    return self.send(204)
                with lock:
                    st["target"] = boot.get("BootSourceOverrideTarget", st["target"])
                    st["enabled"] = boot.get("BootSourceOverrideEnabled", st["enabled"])
                    st["mode"] = boot.get("BootSourceOverrideMode", st["mode"])
                    st["etag"] += 1
                return self.send(204)
            if self.path == SYS + "/Actions/ComputerSystem.Reset" and method == "POST":
                rt = b.get("ResetType")
                if rt not in ("On", "ForceOff", "ForceRestart", "GracefulRestart"):
                    return self.error(400, "ResetType %r is not allowed" % rt)
                with lock:
                    if rt == "On" and st["power"] == "On":
                        return self.error(409, "already on")
                    pxe = st["target"] == "Pxe" and st["enabled"] in ("Once", "Continuous")
                    if st["enabled"] == "Once":
                        st["target"], st["enabled"] = "None", "Disabled"
                        st["etag"] += 1
                    st["power"] = "Off" if rt == "ForceOff" else "On"
                if rt != "ForceOff":
                    chassis("boot", "pxe" if pxe else "none")
                    chassis("reset", "1")
                    if args.announce:
                        # One write per line under the lock: print() writes the text and the
                        # newline apart, and threads interleave them.
                        with lock:
                            sys.stdout.write("reset %s %s\n" % (st["address"], "pxe" if pxe else "none"))
                            sys.stdout.flush()
                return self.send(204)
            return self.error(404, "no such resource")

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_PATCH(self):
            self.handle_any("PATCH")

        def do_DELETE(self):
            self.handle_any("DELETE")

    http.server.ThreadingHTTPServer.request_queue_size = 512
    srv = http.server.ThreadingHTTPServer((args.address, args.port), H)
    srv.daemon_threads = True
    if ctx is not None:
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("redfish stand-in listening", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
