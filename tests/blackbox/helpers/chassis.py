#!/usr/bin/env python3
"""The "hardware" behind the test's management controllers: QEMU's firmware reads no IPMI or
Redfish boot flags, so this stands between the controller and the guest.

  chassis.py supervise DIR -- qemu-system-x86_64 ARGS...   run the guest as its power supply:
      start it when DIR/power is 1, stop it at 0, restart it when DIR/reset appears or when it
      exits by itself (a reset under -no-reboot is a reboot); each start boots its disk
      (-boot c) unless DIR/boot says pxe, which is used up by that one start (-boot once=n).
      Starts, stops and exits are lines in DIR/events.
  chassis.py ipmi DIR DEVICE get PARM... | set PARM VALUE...   ipmi_sim's chassis_control.
  chassis.py sushy DIR ADDRESS PORT   takes sushy-emulator's fake-driver notifications (PUT,
      the system as JSON): a boot device written as Pxe arms the next start, a pending power
      change restarts the guest.
"""
import http.server
import json
import os
import signal
import subprocess
import sys
import time


def read(d, name, default=""):
    try:
        with open(os.path.join(d, name)) as f:
            return f.read().strip()
    except OSError:
        return default


def write(d, name, value):
    tmp = os.path.join(d, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(value)
    os.replace(tmp, os.path.join(d, name))


def event(d, what):
    with open(os.path.join(d, "events"), "a") as f:
        f.write("%.3f %s\n" % (time.time(), what))


def supervise(d, argv):
    proc = None
    stopping = []

    def stop(*_):
        stopping.append(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    write(d, "supervised", "1")

    def start():
        pxe = read(d, "boot") == "pxe"
        if pxe:
            write(d, "boot", "none")
        args = []
        it = iter(argv)
        for a in it:
            if a == "-boot":
                next(it, None)
                args += ["-boot", "once=n" if pxe else "c"]
            else:
                args.append(a)
        event(d, "start " + ("once=n" if pxe else "c"))
        return subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                stdout=open(os.path.join(d, "qemu.log"), "a"),
                                stderr=subprocess.STDOUT)

    def kill(p):
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    while not stopping:
        want = read(d, "power", "1") == "1"
        if os.path.exists(os.path.join(d, "reset")):
            os.unlink(os.path.join(d, "reset"))
            if proc is not None:
                kill(proc)
                proc = None
                event(d, "reset")
            write(d, "power", "1")
            want = True
        if proc is not None and proc.poll() is not None:
            event(d, "exit %d" % proc.returncode)
            proc = None
        if want and proc is None:
            proc = start()
        elif not want and proc is not None:
            kill(proc)
            proc = None
            event(d, "stop")
        write(d, "running", "1" if proc is not None else "0")
        time.sleep(0.1)
    if proc is not None:
        kill(proc)
    event(d, "supervisor stopped")


def ipmi(d, argv):
    # argv: DEVICE get|set ...
    op, rest = argv[1], argv[2:]
    supervised = os.path.exists(os.path.join(d, "supervised"))
    with open(os.path.join(d, "ipmi.log"), "a") as f:
        f.write(" ".join(argv) + "\n")
    if op == "get":
        for p in rest:
            if p == "power":
                v = read(d, "running" if supervised else "power", "1")
                print("power:%s" % (v or "0"))
            elif p == "boot":
                print("boot:%s" % ("pxe" if read(d, "boot") == "pxe" else "none"))
        return 0
    if op == "set":
        for p, v in zip(rest[0::2], rest[1::2]):
            if p == "power":
                write(d, "power", "1" if v == "1" else "0")
                if not supervised:
                    write(d, "running", "1" if v == "1" else "0")
            elif p == "reset":
                write(d, "reset", "1")
            elif p == "boot":
                write(d, "boot", "pxe" if v == "pxe" else "none")
        return 0
    print("unknown operation %s" % op)
    return 1


def sushy(d, address, port):
    last = {}

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_PUT(self):
            n = int(self.headers.get("Content-Length", "0"))
            system = json.loads(self.rfile.read(n) or b"{}")
            with open(os.path.join(d, "sushy.log"), "a") as f:
                f.write(json.dumps(system) + "\n")
            pending = system.get("pending_power")
            prev = last.get(system.get("uuid"), {})
            if pending:
                # A reset or power-on: the supply restarts the guest now.
                write(d, "reset", "1")
            elif (system.get("boot_device") == "Pxe"
                  and system.get("power_state") == prev.get("power_state")):
                # A boot device write (not a power change being applied).
                write(d, "boot", "pxe")
            last[system.get("uuid")] = system
            self.send_response(204)
            self.end_headers()

    srv = http.server.HTTPServer((address, int(port)), H)
    print("chassis notifier listening", flush=True)
    srv.serve_forever()


def main():
    mode, d = sys.argv[1], sys.argv[2]
    os.makedirs(d, exist_ok=True)
    if mode == "supervise":
        i = sys.argv.index("--")
        return supervise(d, sys.argv[i + 1:])
    if mode == "ipmi":
        return ipmi(d, sys.argv[3:])
    if mode == "sushy":
        return sushy(d, sys.argv[3], sys.argv[4])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main() or 0)
