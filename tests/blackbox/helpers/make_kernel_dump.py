#!/usr/bin/env python3
"""Writes the first 8 KiB of a 64-bit Windows kernel crash dump (DUMP_HEADER64, "PAGEDU64")
for the black-box tests: bugcheck code, its four parameters, the build, the dump type and the
time, at the offsets of the published layout, followed by filler; with --driver, the triage
header of a small dump (TRIAGE_DUMP64 at 0x2000) and its list of loaded drivers
(DUMP_DRIVER_ENTRY64, 0x90 bytes each: name offset, then KLDR_DATA_TABLE_ENTRY64 with DllBase
at +0x30 and SizeOfImage at +0x40) and their names (DUMP_STRING: u32 length in UTF-16 units,
the units, a NUL). Written from the format's description; it shares nothing with the agent's
Rust reader.

usage: make_kernel_dump.py OUT --bugcheck 0x50 [--param 0x...]x4 [--build 19045]
                           [--time 2024-07-19T04:09:00Z] [--type 4] [--size BYTES]
                           [--driver '\\SystemRoot\\...\\csagent.sys:0xfffff80769000000:0x200000']...
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
    ap.add_argument("--driver", action="append", default=[], help="NAME:BASE:SIZE")
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
    body = bytearray(head) + bytes((i * 7) & 0xFF for i in range(max(0, a.size - len(head))))
    if a.driver:
        drivers = []
        for d in a.driver:
            name, base, size = d.rsplit(":", 2)
            drivers.append((name, int(base, 0), int(size, 0)))
        list_at = 0x2100
        pool_at = list_at + 0x90 * len(drivers)
        pool = bytearray()
        entries = bytearray(0x90 * len(drivers))
        for i, (name, base, size) in enumerate(drivers):
            wide = name.encode("utf-16-le")
            struct.pack_into("<I", entries, 0x90 * i, pool_at + len(pool))
            struct.pack_into("<QI", entries, 0x90 * i + 8 + 0x30, base, 0)
            struct.pack_into("<I", entries, 0x90 * i + 8 + 0x40, size)
            pool += struct.pack("<I", len(wide) // 2) + wide + b"\0\0"
        end = pool_at + len(pool)
        if len(body) < end:
            body += bytes(end - len(body))
        struct.pack_into("<4I", body, 0x2030, list_at, len(drivers), pool_at, len(pool))
        body[list_at:pool_at] = entries
        body[pool_at:end] = pool
    with open(a.out, "wb") as f:
        f.write(body)


if __name__ == "__main__":
    main()
