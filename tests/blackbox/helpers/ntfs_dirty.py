#!/usr/bin/env python3
"""Marks an NTFS volume image dirty (as Windows does when it did not shut down cleanly): sets
VOLUME_IS_DIRTY in $Volume's $VOLUME_INFORMATION (MFT record 3), keeping the record's update
sequence fixups valid.   usage: ntfs_dirty.py PARTITION_IMAGE"""
import struct, sys

def mark(f, off, rec, bps):
    f.seek(off)
    r = bytearray(f.read(rec))
    assert r[:4] == b"FILE", "MFT record 3 is not a FILE record"
    usa_off, usa_cnt = struct.unpack_from("<HH", r, 4)
    usn = bytes(r[usa_off:usa_off + 2])
    for i in range(1, usa_cnt):
        pos = i * bps - 2
        r[pos:pos + 2] = r[usa_off + 2 * i:usa_off + 2 * i + 2]
    a = struct.unpack_from("<H", r, 0x14)[0]
    while True:
        t, l = struct.unpack_from("<II", r, a)
        if t == 0xFFFFFFFF:
            sys.exit("no $VOLUME_INFORMATION attribute")
        if t == 0x70:
            co = struct.unpack_from("<H", r, a + 0x14)[0]
            flags_off = a + co + 10
            struct.pack_into("<H", r, flags_off, struct.unpack_from("<H", r, flags_off)[0] | 1)
            break
        a += l
    for i in range(1, usa_cnt):
        pos = i * bps - 2
        r[usa_off + 2 * i:usa_off + 2 * i + 2] = r[pos:pos + 2]
        r[pos:pos + 2] = usn
    f.seek(off)
    f.write(r)


with open(sys.argv[1], "r+b") as f:
    bs = f.read(512)
    bps = struct.unpack_from("<H", bs, 11)[0]
    spc = bs[13]
    cpr = struct.unpack_from("<b", bs, 0x40)[0]
    rec = 2 ** (-cpr) if cpr < 0 else cpr * bps * spc
    # $Volume is record 3 of $MFT and of its mirror $MFTMirr (which holds records 0-3); Windows
    # keeps both in step, and ntfs-3g refuses a volume whose copies differ.
    for lcn_off in (0x30, 0x38):
        mark(f, struct.unpack_from("<q", bs, lcn_off)[0] * bps * spc + 3 * rec, rec, bps)
print("marked dirty")
