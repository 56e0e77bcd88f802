#!/usr/bin/env python3
"""Writes the first 8 KiB of a 64-bit Windows kernel crash dump (DUMP_HEADER64, "PAGEDU64")
for the black-box tests: bugcheck code, its four parameters, the build, the dump type and the
time, at the offsets of the published layout, followed by filler. Written from the format's
description; it shares nothing with the agent's Rust reader.

usage: make_kernel_dump.py OUT --bugcheck 0x50 [--param 0x...]x4 [--build 19045]
                           [--time 2024-07-19T04:09:00Z] [--type 4] [--size BYTES]
"""
import argparse
import datetime
import struct

FILETIME_EPOCH = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--bugcheck", type=lambda s: int(s, 0), required=True)
    ap.add_argument("--param", type=lambda s: int(s, 0), action="append", default=[])
    ap.add_argument("--build", type=int, default=19045)
    ap.add_argument("--time", default="2024-07-19T04:09:00Z")
    ap.add_argument("--type", type=int, default=4)
    ap.add_argument("--size", type=int, default=65536)
    a = ap.parse_args()
    params = (a.param + [0, 0, 0, 0])[:4]
    when = datetime.datetime.strptime(a.time, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    filetime = int((when - FILETIME_EPOCH).total_seconds()) * 10_000_000
    head = bytearray(b"PAGE" * (0x2000 // 4))  # unused fields hold "PAGE", as Windows leaves them
    head[0:8] = b"PAGEDU64"
    struct.pack_into("<II", head, 0x08, 0xF, a.build)
    struct.pack_into("<II", head, 0x38, a.bugcheck, 0)
    struct.pack_into("<4Q", head, 0x40, *params)
    struct.pack_into("<I", head, 0xF98, a.type)
    struct.pack_into("<Q", head, 0xFA8, filetime)
    body = bytes(head) + bytes((i * 7) & 0xFF for i in range(max(0, a.size - len(head))))
    with open(a.out, "wb") as f:
        f.write(body)


if __name__ == "__main__":
    main()
